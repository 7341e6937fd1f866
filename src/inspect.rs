//! `arbor inspect tree|node|registry|events`: one look at a running tree through its introspection server,
//! human-readable by default, `--json` for machines (one JSON document; one object a line for `events`), and
//! `tree --dot` for Graphviz.
//!
//! One rule for every JSON output: a time is an RFC 3339 string to the millisecond (`at`, `captured_at`,
//! `history_since`, a tunnel's `last_heartbeat`), a duration a whole number of milliseconds in a field whose
//! name ends in `_ms` (`uptime_ms`, `shutdown_timeout_ms`), numbers are numbers, and names are the
//! lower-case words the text form prints (`running`, `dynamic`, `transient`, `brutal_kill`, `exited`).

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use arbor_actors::supervisor::{ChildKind, ChildStatus, Restart, TreeSnapshot};
use arbor_proto::inspect::v1 as pb;
use serde_json::json;

use crate::introspect::{
    describe_event, event_json, rfc3339_ms, snapshot_from_wire, ClientError, ClientOptions, InspectClient,
    WatchFrom,
};

/// How to reach the introspection server (shared by `arbor inspect` and `arbor top`).
#[derive(Debug, Clone, clap::Args)]
pub struct InspectConnection {
    /// The introspection server: `host:port` (https when --ca-file is given), or an `http(s)://host:port` URL.
    #[arg(long, global = true, default_value = crate::introspect::options::DEFAULT_LISTEN)]
    pub addr: String,
    /// File holding the token to send (`authorization: Bearer`; its first non-comment line).
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) to trust: connects with TLS.
    #[arg(long, global = true)]
    pub ca_file: Option<PathBuf>,
}

impl InspectConnection {
    /// The client options these flags stand for.
    pub fn options(&self) -> ClientOptions {
        ClientOptions {
            addr: self.addr.clone(),
            token_file: self.token_file.clone(),
            ca_file: self.ca_file.clone(),
        }
    }
}

/// What to show.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum InspectCommand {
    /// The tree: every node with its kind, status, actor, restart count, uptime and last exit.
    Tree {
        /// A Graphviz picture instead (`| dot -Tsvg > tree.svg`): states as colours, restart counts.
        #[arg(long)]
        dot: bool,
    },
    /// One node by path (e.g. `orders/tunnels`): its child spec and recent exits and restarts.
    Node {
        /// The node's path, as `tree` shows them (the root is the tree's name).
        path: String,
    },
    /// The entries of the tree's registries.
    Registry {
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Only this registry (`app`, `connections`, `tunnels`, `activators`).
        #[arg(long, default_value = "")]
        registry: String,
    },
    /// The tree's events as they happen, until the server stops (or --count events).
    Events {
        /// Start with the events the server still holds.
        #[arg(long)]
        replay: bool,
        /// Stop after this many events (of those the filters let through).
        #[arg(long)]
        count: Option<u64>,
        /// Only these kinds, comma-separated: an event's word (`started`, `exited`, `restarted`,
        /// `restart_failed`, `stopped`, `checkpointed`, `channel_assigned`...) or its type (`supervisor`,
        /// `connection`, `tunnel`, `leadership`, `other`).
        #[arg(long, value_delimiter = ',')]
        kind: Vec<String>,
        /// Only events at or below this path (`orders/jobs`; the tree's name may be left out): a supervisor
        /// event's `supervisor/child`, a tunnel's `tunnel/<id>`, a connection's key, an activator's
        /// `activator/<name>`.
        #[arg(long)]
        path: Option<String>,
    },
}

/// Why `arbor inspect` failed.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The server could not be reached or refused the call.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Writing the output failed (a closed pipe).
    #[error("cannot write the output")]
    Output(#[from] std::io::Error),
    /// The event stream ended with an error.
    #[error("the event stream ended: {0}")]
    Stream(String),
}

/// Runs one command, writing to `out`.
///
/// # Errors
/// [`InspectError`] when the server cannot be reached, refuses, or the output cannot be written.
pub async fn run(
    connection: &InspectConnection,
    command: InspectCommand,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), InspectError> {
    let mut client = InspectClient::connect(&connection.options()).await?;
    match command {
        InspectCommand::Tree { dot } => {
            let tree = client.tree().await?;
            if dot {
                out.write_all(render_dot(&tree.snapshot).as_bytes())?;
            } else if json {
                let document = json!({
                    "name": tree.name,
                    "captured_at": humantime::format_rfc3339_millis(tree.captured_at).to_string(),
                    "root": snapshot_json(&tree.snapshot),
                });
                writeln!(out, "{document:#}")?;
            } else {
                writeln!(
                    out,
                    "tree {} ({} nodes, {} restarts)",
                    tree.name,
                    tree.snapshot.nodes().len(),
                    tree.snapshot.total_restarts()
                )?;
                out.write_all(tree.snapshot.render().as_bytes())?;
            }
        }
        InspectCommand::Node { path } => {
            let node = client.node(&path).await?;
            if json {
                writeln!(out, "{:#}", node_json(&node))?;
            } else {
                out.write_all(render_node(&node).as_bytes())?;
            }
        }
        InspectCommand::Registry { prefix, registry } => {
            let entries = client.registry(&prefix, &registry).await?;
            if json {
                let rows: Vec<_> = entries.iter().map(entry_json).collect();
                writeln!(out, "{:#}", serde_json::Value::Array(rows))?;
            } else {
                out.write_all(render_registry(&entries).as_bytes())?;
            }
        }
        InspectCommand::Events {
            replay,
            count,
            kind,
            path,
        } => {
            let from = if replay { WatchFrom::Held } else { WatchFrom::Now };
            let mut stream = client.watch(from).await?;
            let mut filter = EventFilter::new(kind, path);
            let mut seen = 0;
            while count.is_none_or(|count| seen < count) {
                let message = match stream.message().await {
                    Ok(Some(message)) => message,
                    Ok(None) => break,
                    Err(status) => return Err(InspectError::Stream(status.message().to_string())),
                };
                use pb::watch_events_response::Kind;
                match message.kind {
                    Some(Kind::Subscribed(s)) => {
                        if json {
                            let line = json!({ "type": "subscribed", "stream_id": s.stream_id,
                                "next_sequence": s.next_sequence, "oldest_sequence": s.oldest_sequence });
                            writeln!(out, "{line}")?;
                        } else {
                            writeln!(
                                out,
                                "# watching stream {} (next sequence {})",
                                s.stream_id, s.next_sequence
                            )?;
                        }
                    }
                    Some(Kind::Lagged(l)) => {
                        if json {
                            let line = json!({ "type": "lagged", "missed": l.missed, "reason": l.reason });
                            writeln!(out, "{line}")?;
                        } else {
                            writeln!(out, "!! {} events missed: {}", l.missed, l.reason)?;
                        }
                    }
                    Some(Kind::Event(event)) => {
                        if !filter.admits(&event) {
                            continue;
                        }
                        seen += 1;
                        if json {
                            writeln!(out, "{}", event_json(&event))?;
                        } else {
                            writeln!(
                                out,
                                "#{} {} {}",
                                event.sequence,
                                clock(event.at_unix_ms),
                                describe_event(&event)
                            )?;
                        }
                    }
                    None => {}
                }
                out.flush()?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// A node and its children as JSON: the words `tree` prints, `uptime_ms` in whole milliseconds.
fn snapshot_json(node: &TreeSnapshot) -> serde_json::Value {
    json!({
        "id": node.id,
        "path": node.path,
        "name": node.name,
        "kind": kind_name(node.kind),
        "actor_id": node.actor_id,
        "status": status_name(node.status),
        "restart": node.restart.map(restart_name),
        "restart_count": node.restart_count,
        "uptime_ms": node.uptime.map(|u| u.as_millis() as u64),
        "last_exit": node.last_exit,
        "children": node.children.iter().map(snapshot_json).collect::<Vec<_>>(),
    })
}

fn restart_name(restart: Restart) -> &'static str {
    match restart {
        Restart::Permanent => "permanent",
        Restart::Transient => "transient",
        Restart::Temporary => "temporary",
    }
}

/// Which events `inspect events` prints: of the kinds and below the path asked for, each sequence number once
/// (an event the server replayed is not printed again if it comes a second time).
#[derive(Debug, Default)]
struct EventFilter {
    kinds: Vec<String>,
    path: Option<String>,
    last_sequence: Option<u64>,
}

impl EventFilter {
    fn new(kinds: Vec<String>, path: Option<String>) -> Self {
        let kinds = kinds
            .into_iter()
            .map(|k| k.trim().to_ascii_lowercase())
            .filter(|k| !k.is_empty())
            .collect();
        let path = path
            .map(|p| p.trim_matches('/').to_string())
            .filter(|p| !p.is_empty());
        EventFilter {
            kinds,
            path,
            last_sequence: None,
        }
    }

    fn admits(&mut self, event: &pb::Event) -> bool {
        if self.last_sequence.is_some_and(|last| event.sequence <= last) {
            return false;
        }
        self.last_sequence = Some(event.sequence);
        let fields = event_json(event);
        let word = |field: &str| fields[field].as_str().unwrap_or_default().to_string();
        if !self.kinds.is_empty()
            && !self
                .kinds
                .iter()
                .any(|k| *k == word("event") || *k == word("type"))
        {
            return false;
        }
        match &self.path {
            None => true,
            Some(prefix) => event_path(event).is_some_and(|path| under(&path, prefix)),
        }
    }
}

/// The path an event is about, for `--path`: see [`InspectCommand::Events`].
fn event_path(event: &pb::Event) -> Option<String> {
    use pb::event::Kind;
    match &event.kind {
        Some(Kind::Supervisor(e)) if e.child.is_empty() => Some(e.supervisor_path.clone()),
        Some(Kind::Supervisor(e)) => Some(format!("{}/{}", e.supervisor_path, e.child)),
        Some(Kind::Connection(e)) => Some(e.key.clone()),
        Some(Kind::Tunnel(e)) => Some(format!("tunnel/{}", e.tunnel_id)),
        Some(Kind::Leadership(e)) => Some(format!("activator/{}", e.name)),
        Some(Kind::Other(_)) | None => None,
    }
}

/// Whether `path` is `prefix` or below it, whole segments only; a prefix may leave out the tree's name (the
/// first segment of a supervisor event's path).
fn under(path: &str, prefix: &str) -> bool {
    let at_or_below = |path: &str| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    at_or_below(path) || path.split_once('/').is_some_and(|(_, rest)| at_or_below(rest))
}

/// `HH:MM:SS.mmm` (UTC) of a time in milliseconds since the epoch.
pub fn clock(at_unix_ms: u64) -> String {
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(at_unix_ms);
    let stamp = humantime::format_rfc3339_millis(at).to_string();
    stamp.get(11..23).unwrap_or(&stamp).to_string()
}

fn kind_name(kind: ChildKind) -> &'static str {
    match kind {
        ChildKind::Worker => "worker",
        ChildKind::Supervisor => "supervisor",
        ChildKind::DynamicSupervisor => "dynamic",
    }
}

fn status_name(status: ChildStatus) -> &'static str {
    match status {
        ChildStatus::Running => "running",
        ChildStatus::Restarting => "restarting",
        ChildStatus::Terminated => "terminated",
    }
}

/// The tree as a Graphviz digraph: supervisors as boxes, workers as ellipses, filled by status (green running,
/// orange restarting, grey terminated), restart counts in the labels and in red when not zero.
pub fn render_dot(root: &TreeSnapshot) -> String {
    fn quoted(text: &str) -> String {
        // DOT strings: escape backslashes and quotes; a line break in a label is the two characters `\n`.
        let escaped = text
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        format!("\"{escaped}\"")
    }
    let mut out = format!(
        "digraph {} {{\n  rankdir=LR;\n  node [fontname=\"monospace\", style=filled];\n",
        quoted(&root.id)
    );
    for node in root.nodes() {
        let shape = if node.kind == ChildKind::Worker {
            "ellipse"
        } else {
            "box"
        };
        let fill = match node.status {
            ChildStatus::Running => "#c8e6c9",
            ChildStatus::Restarting => "#ffe0b2",
            ChildStatus::Terminated => "#e0e0e0",
        };
        let border = if node.restart_count > 0 {
            "#c62828"
        } else {
            "#424242"
        };
        let label = format!(
            "{}\n{} {}\nrestarts={}",
            node.id,
            kind_name(node.kind),
            status_name(node.status),
            node.restart_count
        );
        out.push_str(&format!(
            "  {} [label={}, shape={shape}, fillcolor=\"{fill}\", color=\"{border}\"];\n",
            quoted(&node.path),
            quoted(&label)
        ));
        for child in &node.children {
            out.push_str(&format!("  {} -> {};\n", quoted(&node.path), quoted(&child.path)));
        }
    }
    out.push_str("}\n");
    out
}

fn restart_type_name(restart: pb::RestartType) -> &'static str {
    match restart {
        pb::RestartType::Permanent => "permanent",
        pb::RestartType::Transient => "transient",
        pb::RestartType::Temporary => "temporary",
        pb::RestartType::Unspecified => "-",
    }
}

fn shutdown_kind_name(shutdown: pb::ShutdownKind) -> &'static str {
    match shutdown {
        pb::ShutdownKind::BrutalKill => "brutal_kill",
        pb::ShutdownKind::Timeout => "timeout",
        pb::ShutdownKind::Infinity => "infinity",
        pb::ShutdownKind::Unspecified => "-",
    }
}

fn node_kind_name(kind: pb::NodeKind) -> &'static str {
    match kind {
        pb::NodeKind::Worker => "worker",
        pb::NodeKind::Supervisor => "supervisor",
        pb::NodeKind::DynamicSupervisor => "dynamic",
        pb::NodeKind::Unspecified => "-",
    }
}

fn lifecycle_kind_name(kind: pb::LifecycleKind) -> &'static str {
    match kind {
        pb::LifecycleKind::Started => "started",
        pb::LifecycleKind::Exited => "exited",
        pb::LifecycleKind::Restarted => "restarted",
        pb::LifecycleKind::RestartFailed => "restart_failed",
        pb::LifecycleKind::Stopped => "stopped",
        pb::LifecycleKind::Unspecified => "-",
    }
}

fn spec_words(spec: &pb::ChildSpec) -> String {
    let restart = restart_type_name(spec.restart());
    let shutdown = match spec.shutdown() {
        pb::ShutdownKind::BrutalKill => "brutal_kill".to_string(),
        pb::ShutdownKind::Timeout => format!(
            "timeout {}",
            humantime::format_duration(Duration::from_millis(spec.shutdown_timeout_ms))
        ),
        pb::ShutdownKind::Infinity => "infinity".to_string(),
        pb::ShutdownKind::Unspecified => "-".to_string(),
    };
    let backoff = spec.backoff.as_ref().map_or_else(
        || "none".to_string(),
        |b| {
            format!(
                "{}..{} (jitter {}, reset after {})",
                humantime::format_duration(Duration::from_millis(b.min_ms)),
                humantime::format_duration(Duration::from_millis(b.max_ms)),
                b.random_factor,
                humantime::format_duration(Duration::from_millis(b.reset_after_ms))
            )
        },
    );
    format!(
        "restart={restart} shutdown={shutdown} significant={} backoff={backoff}",
        spec.significant
    )
}

fn lifecycle_words(record: &pb::LifecycleRecord) -> String {
    let actor = record.actor_id.as_deref().unwrap_or("-");
    match record.kind() {
        pb::LifecycleKind::Started => format!("started as actor {actor}"),
        pb::LifecycleKind::Exited => format!(
            "exited: {} ({}, {}) actor {actor}",
            record.reason,
            if record.normal { "normal" } else { "abnormal" },
            if record.will_restart {
                "restarting"
            } else {
                "not restarted"
            }
        ),
        pb::LifecycleKind::Restarted => {
            format!("restarted as actor {actor} (restart {})", record.restart_count)
        }
        pb::LifecycleKind::RestartFailed => format!("restart failed: {}", record.reason),
        pb::LifecycleKind::Stopped => format!("stopped: {}", record.reason),
        pb::LifecycleKind::Unspecified => "?".to_string(),
    }
}

/// A node, its spec and its history, in words.
pub fn render_node(node: &pb::GetNodeResponse) -> String {
    let mut out = String::new();
    if let Some(n) = &node.node {
        let snapshot = snapshot_from_wire(n);
        out.push_str(&format!("node {}\n", snapshot.path));
        let mut shallow = snapshot.clone();
        shallow.children.clear();
        out.push_str(&format!("  {}", shallow.render()));
        if !snapshot.children.is_empty() {
            out.push_str(&format!("  {} children\n", snapshot.children.len()));
        }
    }
    if !node.supervisor_path.is_empty() {
        out.push_str(&format!("  supervisor: {}\n", node.supervisor_path));
    }
    match &node.spec {
        Some(spec) => out.push_str(&format!("  spec: {}\n", spec_words(spec))),
        None => out.push_str("  spec: - (the root has no supervisor)\n"),
    }
    out.push_str(&format!(
        "  history since {} ({} older records dropped{}):\n",
        humantime::format_rfc3339_millis(
            SystemTime::UNIX_EPOCH + Duration::from_millis(node.history_since_unix_ms)
        ),
        node.history_dropped,
        if node.history_incomplete {
            "; the server missed some events"
        } else {
            ""
        }
    ));
    if node.history.is_empty() {
        out.push_str("    (nothing recorded)\n");
    }
    for record in &node.history {
        out.push_str(&format!(
            "    #{} {} {}\n",
            record.sequence,
            clock(record.at_unix_ms),
            lifecycle_words(record)
        ));
    }
    out
}

fn node_json(node: &pb::GetNodeResponse) -> serde_json::Value {
    let spec = node.spec.as_ref().map(|s| {
        json!({
            "restart": restart_type_name(s.restart()),
            "shutdown": shutdown_kind_name(s.shutdown()),
            "shutdown_timeout_ms": s.shutdown_timeout_ms,
            "kind": node_kind_name(s.kind()),
            "significant": s.significant,
            "backoff": s.backoff.as_ref().map(|b| json!({ "min_ms": b.min_ms, "max_ms": b.max_ms,
                "random_factor": b.random_factor, "reset_after_ms": b.reset_after_ms })),
        })
    });
    let history: Vec<_> = node
        .history
        .iter()
        .map(|r| {
            json!({ "sequence": r.sequence, "at": rfc3339_ms(r.at_unix_ms), "kind": lifecycle_kind_name(r.kind()),
                "actor_id": r.actor_id, "reason": r.reason, "normal": r.normal,
                "will_restart": r.will_restart, "restart_count": r.restart_count })
        })
        .collect();
    json!({
        "node": node.node.as_ref().map(|n| snapshot_json(&snapshot_from_wire(n))),
        "supervisor_path": node.supervisor_path,
        "spec": spec,
        "history": history,
        "history_dropped": node.history_dropped,
        "history_since": rfc3339_ms(node.history_since_unix_ms),
        "history_incomplete": node.history_incomplete,
    })
}

/// A channel's progress in words: `delivered=12 lag=3 checkpoint=12 OPEN`.
pub fn channel_words(c: &pb::ChannelProgress) -> String {
    format!(
        "delivered={} lag={} checkpoint={} {}{}",
        c.delivered,
        c.lag.map_or_else(|| "?".to_string(), |l| l.to_string()),
        c.checkpoint,
        c.status,
        if c.lost_to_retention > 0 {
            format!(" lost_to_retention={}", c.lost_to_retention)
        } else {
            String::new()
        }
    )
}

/// Registry entries as an aligned table.
pub fn render_registry(entries: &[pb::RegistryEntry]) -> String {
    let rows: Vec<[String; 4]> = entries
        .iter()
        .map(|e| {
            let value = e
                .channel
                .as_ref()
                .map_or_else(|| e.value_json.clone(), channel_words);
            [e.registry.clone(), e.key.clone(), e.actor_id.clone(), value]
        })
        .collect();
    let header = ["REGISTRY", "KEY", "ACTOR", "VALUE"].map(String::from);
    let widths: Vec<usize> = (0..3)
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        out.push_str(&format!(
            "{:w0$}  {:w1$}  {:w2$}  {}\n",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        ));
    }
    if rows.is_empty() {
        out.push_str("(no entries)\n");
    }
    out
}

fn entry_json(e: &pb::RegistryEntry) -> serde_json::Value {
    let value: serde_json::Value = serde_json::from_str(&e.value_json)
        .unwrap_or_else(|_| serde_json::Value::String(e.value_json.clone()));
    let channel = e.channel.as_ref().map(|c| {
        json!({ "tunnel_id": c.tunnel_id, "channel_id": c.channel_id, "status": c.status,
            "checkpoint": c.checkpoint, "delivered": c.delivered, "lag": c.lag,
            "lost_to_retention": c.lost_to_retention })
    });
    json!({ "registry": e.registry, "key": e.key, "actor_id": e.actor_id, "value": value, "channel": channel })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(sequence: u64, supervisor: &str, child: &str) -> pb::Event {
        pb::Event {
            sequence,
            at_unix_ms: 0,
            kind: Some(pb::event::Kind::Supervisor(pb::SupervisorEvent {
                supervisor_path: supervisor.into(),
                child: child.into(),
                kind: Some(pb::supervisor_event::Kind::Exited(pb::ChildExited::default())),
            })),
        }
    }

    #[test]
    fn an_event_seen_twice_is_admitted_once() {
        let mut filter = EventFilter::new(Vec::new(), None);
        assert!(filter.admits(&exited(1, "orders", "cache")));
        assert!(filter.admits(&exited(2, "orders", "cache")));
        assert!(
            !filter.admits(&exited(2, "orders", "cache")),
            "replayed, then live"
        );
        assert!(!filter.admits(&exited(1, "orders", "cache")));
        assert!(filter.admits(&exited(3, "orders", "cache")));
    }

    #[test]
    fn kinds_and_a_path_prefix_of_whole_segments() {
        let mut filter = EventFilter::new(
            vec!["checkpointed".into(), "Exited".into()],
            Some("orders/jobs".into()),
        );
        assert!(filter.admits(&exited(1, "orders/jobs", "job#0")));
        assert!(!filter.admits(&exited(2, "orders", "jobsx")));
        assert!(!filter.admits(&exited(3, "orders", "cache")));
        let mut short = EventFilter::new(vec!["supervisor".into()], Some("jobs/".into()));
        assert!(
            short.admits(&exited(1, "orders/jobs", "job#0")),
            "without the tree's name"
        );
        let mut other_kind = EventFilter::new(vec!["started".into()], None);
        assert!(!other_kind.admits(&exited(1, "orders", "cache")));
    }
}
