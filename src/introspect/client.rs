//! [`InspectClient`]: a client of a tree's introspection server, as `arbor inspect` and `arbor top` use it; and
//! the words and JSON an event is shown with ([`describe_event`], [`event_json`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use arbor_actors::supervisor::TreeSnapshot;
use arbor_proto::inspect::v1 as pb;
use arbor_proto::inspect::v1::inspect_service_client::InspectServiceClient;
use serde_json::json;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

use super::convert;

/// Where the server is and how to talk to it.
#[derive(Clone, Default)]
pub struct ClientOptions {
    /// `host:port` (plain, or TLS with `ca_file`), or a URL `http://host:port` / `https://host:port`.
    pub addr: String,
    /// A file whose first line (not blank, not a `#` comment) is the token, sent as `authorization: Bearer`.
    pub token_file: Option<PathBuf>,
    /// A CA certificate (PEM) to trust: connects with TLS.
    pub ca_file: Option<PathBuf>,
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("addr", &self.addr)
            .field("token_file", &self.token_file)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl ClientOptions {
    /// Plain HTTP/2 to `addr`.
    pub fn new(addr: impl Into<String>) -> Self {
        ClientOptions {
            addr: addr.into(),
            ..ClientOptions::default()
        }
    }

    /// Sends the token in this file.
    pub fn token_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.token_file = Some(path.into());
        self
    }

    /// Trusts this CA and connects with TLS.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// The URL to dial: `addr` with a scheme (https when a CA is given).
    pub fn url(&self) -> String {
        crate::dial::server_url(&self.addr, self.ca_file.is_some())
    }
}

/// Why a client call failed. Never carries the token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server could not be reached, or the address or TLS setting is unusable.
    #[error("{reason}")]
    Connect {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// A local file (token, CA) could not be read or holds nothing usable.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The server refused or failed the call.
    #[error("{}: {message}", crate::dial::code_words(*code))]
    Rpc {
        /// The gRPC code (`Unauthenticated`, `NotFound`, `Unavailable`...).
        code: tonic::Code,
        /// The server's message.
        message: String,
    },
}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        ClientError::Rpc {
            code: status.code(),
            message: status.message().to_string(),
        }
    }
}

/// A connected client. Cheap to clone (one HTTP/2 connection).
#[derive(Clone)]
pub struct InspectClient {
    addr: String,
    inner: InspectServiceClient<InterceptedService<Channel, BearerToken>>,
}

impl fmt::Debug for InspectClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InspectClient")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Adds `authorization: Bearer <token>` to every call, when there is a token.
#[derive(Clone)]
struct BearerToken(Option<AsciiMetadataValue>);

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert("authorization", token.clone());
        }
        Ok(request)
    }
}

/// Where a watch starts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum WatchFrom {
    /// Live events only.
    #[default]
    Now,
    /// Every event the server still holds, then live ones.
    Held,
    /// Resume after an event of a stream (from `Subscribed.stream_id` and `Event.sequence`).
    After {
        /// The stream.
        stream_id: String,
        /// The last sequence number seen.
        sequence: u64,
    },
}

/// A snapshot of the tree as the server sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeView {
    /// The tree's name.
    pub name: String,
    /// The tree, as the tree's own snapshot type (uptimes to the millisecond).
    pub snapshot: TreeSnapshot,
    /// When the server took it.
    pub captured_at: SystemTime,
}

fn read_file(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|e| ClientError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The token in a file: its first line that is neither blank nor a `#` comment.
fn read_token(path: &Path) -> Result<AsciiMetadataValue, ClientError> {
    let text = String::from_utf8_lossy(&read_file(path)?).into_owned();
    let bad = |reason: &str| ClientError::File {
        path: path.to_path_buf(),
        reason: reason.into(),
    };
    let token = crate::dial::first_secret_line(&text).ok_or_else(|| bad("holds no token"))?;
    format!("Bearer {token}")
        .parse()
        .map_err(|_| bad("the token has characters a header cannot carry"))
}

impl InspectClient {
    /// Connects (within 5 s).
    ///
    /// # Errors
    /// [`ClientError::File`] for an unreadable token or CA file, [`ClientError::Connect`] when the server
    /// cannot be reached.
    pub async fn connect(options: &ClientOptions) -> Result<InspectClient, ClientError> {
        let url = options.url();
        let connect_err = |reason: String| ClientError::Connect {
            addr: url.clone(),
            reason,
        };
        let mut token = options.token_file.as_deref().map(read_token).transpose()?;
        if let Some(token) = &mut token {
            token.set_sensitive(true);
        }
        let ca_pem = options.ca_file.as_deref().map(read_file).transpose()?;
        let channel = crate::dial::connect(&url, ca_pem).await.map_err(connect_err)?;
        Ok(InspectClient {
            addr: url,
            inner: InspectServiceClient::with_interceptor(channel, BearerToken(token)),
        })
    }

    /// The whole tree.
    ///
    /// # Errors
    /// [`ClientError::Rpc`] when the server refuses or fails the call.
    pub async fn tree(&mut self) -> Result<TreeView, ClientError> {
        let response = self.inner.get_tree(pb::GetTreeRequest {}).await?.into_inner();
        let root = response.root.ok_or_else(|| ClientError::Rpc {
            code: tonic::Code::Internal,
            message: "the server sent no root".into(),
        })?;
        Ok(TreeView {
            name: response.tree_name,
            snapshot: convert::snapshot(&root),
            captured_at: SystemTime::UNIX_EPOCH + Duration::from_millis(response.captured_at_unix_ms),
        })
    }

    /// One node: its spec and history.
    ///
    /// # Errors
    /// [`ClientError::Rpc`]: `NotFound` for a path that names no node.
    pub async fn node(&mut self, path: &str) -> Result<pb::GetNodeResponse, ClientError> {
        let request = pb::GetNodeRequest { path: path.into() };
        Ok(self.inner.get_node(request).await?.into_inner())
    }

    /// The registry entries whose key starts with `prefix`, of one registry or (empty) all.
    ///
    /// # Errors
    /// [`ClientError::Rpc`] when the server refuses or fails the call.
    pub async fn registry(
        &mut self,
        prefix: &str,
        registry: &str,
    ) -> Result<Vec<pb::RegistryEntry>, ClientError> {
        let request = pb::ListRegistryRequest {
            prefix: prefix.into(),
            registry: registry.into(),
        };
        Ok(self.inner.list_registry(request).await?.into_inner().entries)
    }

    /// The tree's events from `from` on: a `Subscribed` message, then events and `Lagged` notices.
    ///
    /// # Errors
    /// [`ClientError::Rpc`] when the server refuses the watch.
    pub async fn watch(
        &mut self,
        from: WatchFrom,
    ) -> Result<tonic::Streaming<pb::WatchEventsResponse>, ClientError> {
        let request = match from {
            WatchFrom::Now => pb::WatchEventsRequest::default(),
            WatchFrom::Held => pb::WatchEventsRequest {
                stream_id: String::new(),
                after_sequence: Some(0),
            },
            WatchFrom::After { stream_id, sequence } => pb::WatchEventsRequest {
                stream_id,
                after_sequence: Some(sequence),
            },
        };
        Ok(self.inner.watch_events(request).await?.into_inner())
    }
}

fn state_name(state: pb::ConnectivityState) -> &'static str {
    match state {
        pb::ConnectivityState::Idle => "IDLE",
        pb::ConnectivityState::Connecting => "CONNECTING",
        pb::ConnectivityState::Ready => "READY",
        pb::ConnectivityState::TransientFailure => "TRANSIENT_FAILURE",
        pb::ConnectivityState::Shutdown => "SHUTDOWN",
        pb::ConnectivityState::Unspecified => "?",
    }
}

fn role_name(role: pb::Role) -> &'static str {
    match role {
        pb::Role::Leader => "leader",
        pb::Role::Follower => "follower",
        pb::Role::Unknown | pb::Role::Unspecified => "unknown",
    }
}

/// An event in words, one line (without its sequence number and time).
pub fn describe_event(event: &pb::Event) -> String {
    use pb::event::Kind;
    match &event.kind {
        Some(Kind::Supervisor(e)) => describe_supervisor(e),
        Some(Kind::Connection(e)) => {
            format!("connection {} ({}) is {}", e.key, e.target, state_name(e.state()))
        }
        Some(Kind::Tunnel(e)) => describe_tunnel(e),
        Some(Kind::Leadership(e)) => format!(
            "activator {}: {} is {}{}",
            e.name,
            e.identity,
            role_name(e.role()),
            e.fencing_token
                .map(|t| format!(" (fencing token {t})"))
                .unwrap_or_default()
        ),
        Some(Kind::Other(text)) => text.clone(),
        None => "(empty event)".into(),
    }
}

fn describe_supervisor(e: &pb::SupervisorEvent) -> String {
    use pb::supervisor_event::Kind;
    let at = &e.supervisor_path;
    let child = &e.child;
    match &e.kind {
        Some(Kind::Started(s)) => format!("{at}/{child} started (actor {})", s.actor_id),
        Some(Kind::Exited(x)) => format!(
            "{at}/{child} exited: {} ({}, {})",
            x.reason,
            if x.normal { "normal" } else { "abnormal" },
            if x.will_restart {
                "restarting"
            } else {
                "not restarted"
            }
        ),
        Some(Kind::Restarted(r)) => format!(
            "{at}/{child} restarted as actor {} (restart {})",
            r.actor_id, r.restart_count
        ),
        Some(Kind::RestartFailed(f)) => format!("{at}/{child} restart failed: {}", f.error),
        Some(Kind::Stopped(s)) => format!("{at} stopped: {}", s.description),
        None => format!("{at}/{child}: (empty event)"),
    }
}

fn describe_tunnel(e: &pb::TunnelEvent) -> String {
    use pb::tunnel_event::Kind;
    let what = match &e.kind {
        Some(Kind::Connected(c)) => format!("session {} opened", c.client_id),
        Some(Kind::SessionLost(l)) => format!("session {} lost: {}", l.client_id, l.reason),
        Some(Kind::ChannelAssigned(a)) => format!(
            "channel {} assigned (version {}, from {})",
            a.channel_id, a.version, a.position
        ),
        Some(Kind::ChannelReleased(r)) => format!("channel {} released: {}", r.channel_id, r.reason),
        Some(Kind::ChannelTerminated(t)) => format!("channel {} finished", t.channel_id),
        Some(Kind::Checkpointed(c)) => format!("channel {} checkpointed at {}", c.channel_id, c.position),
        Some(Kind::RecordsLost(l)) => format!(
            "channel {}: {} records lost to retention",
            l.channel_id, l.records
        ),
        Some(Kind::SubscriberLost(l)) => format!("subscriber lost: {}", l.reason),
        Some(Kind::SubscriberAttached(_)) => "subscriber attached".into(),
        Some(Kind::Fatal(f)) => format!("stopped on a fatal error: {}", f.error),
        None => "(empty event)".into(),
    };
    format!("tunnel {}: {what}", e.tunnel_id)
}

/// A time in milliseconds since the epoch as RFC 3339 (UTC, to the millisecond): how every JSON output of
/// `arbor inspect` writes a time.
pub fn rfc3339_ms(at_unix_ms: u64) -> String {
    humantime::format_rfc3339_millis(SystemTime::UNIX_EPOCH + Duration::from_millis(at_unix_ms)).to_string()
}

/// An event as one JSON object: `sequence`, `at` (RFC 3339), `type` (`supervisor`, `connection`, `tunnel`,
/// `leadership`, `other`), `event` (the kind within the type, e.g. `exited`) and the event's fields.
pub fn event_json(event: &pb::Event) -> serde_json::Value {
    use pb::event::Kind;
    let (kind, what, fields) = match &event.kind {
        Some(Kind::Supervisor(e)) => {
            use pb::supervisor_event::Kind as S;
            let (what, fields) = match &e.kind {
                Some(S::Started(s)) => ("started", json!({ "actor_id": s.actor_id })),
                Some(S::Exited(x)) => (
                    "exited",
                    json!({ "actor_id": x.actor_id, "reason": x.reason, "normal": x.normal,
                            "will_restart": x.will_restart }),
                ),
                Some(S::Restarted(r)) => (
                    "restarted",
                    json!({ "actor_id": r.actor_id, "restart_count": r.restart_count }),
                ),
                Some(S::RestartFailed(f)) => ("restart_failed", json!({ "error": f.error })),
                Some(S::Stopped(s)) => (
                    "stopped",
                    json!({
                        "exit": s.exit().as_str_name().trim_start_matches("SUPERVISOR_EXIT_KIND_").to_ascii_lowercase(),
                        "description": s.description,
                        "child": s.child,
                    }),
                ),
                None => ("unknown", json!({})),
            };
            let mut fields = fields;
            fields["supervisor"] = json!(e.supervisor_path);
            fields["child"] = json!(e.child);
            ("supervisor", what, fields)
        }
        Some(Kind::Connection(e)) => (
            "connection",
            "state",
            json!({ "key": e.key, "target": e.target, "state": state_name(e.state()) }),
        ),
        Some(Kind::Tunnel(e)) => {
            use pb::tunnel_event::Kind as T;
            let (what, mut fields) = match &e.kind {
                Some(T::Connected(c)) => ("connected", json!({ "client_id": c.client_id })),
                Some(T::SessionLost(l)) => (
                    "session_lost",
                    json!({ "client_id": l.client_id, "reason": l.reason }),
                ),
                Some(T::ChannelAssigned(a)) => (
                    "channel_assigned",
                    json!({ "channel_id": a.channel_id, "version": a.version, "position": a.position }),
                ),
                Some(T::ChannelReleased(r)) => (
                    "channel_released",
                    json!({ "channel_id": r.channel_id, "reason": r.reason }),
                ),
                Some(T::ChannelTerminated(t)) => {
                    ("channel_terminated", json!({ "channel_id": t.channel_id }))
                }
                Some(T::Checkpointed(c)) => (
                    "checkpointed",
                    json!({ "channel_id": c.channel_id, "position": c.position }),
                ),
                Some(T::RecordsLost(l)) => (
                    "records_lost",
                    json!({ "channel_id": l.channel_id, "records": l.records }),
                ),
                Some(T::SubscriberLost(l)) => ("subscriber_lost", json!({ "reason": l.reason })),
                Some(T::SubscriberAttached(_)) => ("subscriber_attached", json!({})),
                Some(T::Fatal(f)) => ("fatal", json!({ "error": f.error })),
                None => ("unknown", json!({})),
            };
            fields["tunnel_id"] = json!(e.tunnel_id);
            ("tunnel", what, fields)
        }
        Some(Kind::Leadership(e)) => (
            "leadership",
            "role",
            json!({ "name": e.name, "identity": e.identity, "role": role_name(e.role()),
                    "fencing_token": e.fencing_token }),
        ),
        Some(Kind::Other(text)) => ("other", "other", json!({ "description": text })),
        None => ("other", "unknown", json!({})),
    };
    let mut out = fields;
    out["sequence"] = json!(event.sequence);
    out["at"] = json!(rfc3339_ms(event.at_unix_ms));
    out["type"] = json!(kind);
    out["event"] = json!(what);
    out
}
