//! `arbor demo`: two nodes consume one tunnel at-least-once while faults are injected, and a ledger proves
//! that nothing was lost.
//!
//! Everything runs in this process, on embedded defaults:
//! - the tunnel service ([`crate::tunnel_service`]), durable in a temporary directory, on a loopback port;
//! - producers appending keyed records (`key-07` = `41`: each key's sequence numbers, in order);
//! - two nodes, `node-a` and `node-b`, each a [`Tree`](crate::tree::Tree) as a service would embed it: a
//!   connection pool, a tunnel worker on the one tunnel (the service splits the channels between them), a
//!   subscriber actor that books every record it is handed into the [ledger], and an activator
//!   electing one janitor between the two nodes.
//!
//! On a schedule (replayable with `--seed`) it kills a channel actor, a tunnel worker, a subscriber, the
//! leading activator, and restarts the service, and shows each recovery. Then production stops, the demo
//! waits until every acknowledged record was delivered, shuts the trees down (checkpoints flushed), and prints
//! the ledger. The run fails if a record was lost or reordered, a permanent child is down, or the janitor
//! does not have exactly one leader.

mod backend;
mod faults;
#[cfg(feature = "kafka")]
mod kafka;
pub mod ledger;
mod node;
mod observe;
mod service;
mod view;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arbor_actors::activator::Role;
use arbor_actors::registry::Registry;
use arbor_actors::supervisor::{ChildStatus, Restart, TreeSnapshot};
use rand::rngs::StdRng;
use rand::SeedableRng;

use self::backend::Backend;
use self::faults::FaultKind;
use self::ledger::{Ledger, Totals};
use self::node::{LeaderTerms, Node};
use self::observe::{millis, Counts, Observer};
use self::service::Production;
use self::view::{Frame, NodeView, Screen};

/// How many keys the producers write (each has its own sequence).
const KEYS: usize = 16;
/// How many producer tasks.
const PRODUCERS: usize = 2;
/// How many channels the tunnel has.
const CHANNELS: usize = 8;
/// How often a terminal's view is redrawn.
const REDRAW: Duration = Duration::from_millis(250);

/// What the demo is told to do.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// How long records are produced and faults injected.
    pub duration: Duration,
    /// Time between two faults (default: each kind of fault twice in `duration`).
    pub fault_every: Option<Duration>,
    /// How often a status line is printed when the output is not a terminal.
    pub print_every: Duration,
    /// Seed of the fault schedule, to replay a run (random if `None`).
    pub seed: Option<u64>,
    /// Records produced per second, all keys together.
    pub rate: u32,
    /// How long to wait, after production stops, for every record to be delivered.
    pub settle: Duration,
    /// Where the records live.
    pub source: DemoSource,
}

/// Where the demo's records live (`arbor demo --source`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DemoSource {
    /// arbor's tunnel service, in this process, durable in a temporary directory (restarted by a fault).
    #[default]
    Service,
    /// A topic created for the run on the Kafka broker at `bootstrap` (`host:port`; feature `kafka`). The
    /// broker is the user's: it is not restarted.
    Kafka {
        /// The broker to bootstrap from.
        bootstrap: String,
    },
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            duration: Duration::from_secs(30),
            fault_every: None,
            print_every: Duration::from_secs(2),
            seed: None,
            rate: 2_000,
            settle: Duration::from_secs(60),
            source: DemoSource::Service,
        }
    }
}

impl DemoOptions {
    /// Refuses settings the demo cannot run with, naming the option (as its `arbor demo` flag).
    ///
    /// # Errors
    /// [`DemoError::Option`] for a zero duration, gap or print interval, or a fault gap that leaves no fault
    /// within the run.
    pub fn validate(&self) -> Result<(), DemoError> {
        let refuse = |flag: &'static str, value: Duration, reason: &str| {
            Err(DemoError::Option {
                flag,
                value: humantime::format_duration(value).to_string(),
                reason: reason.to_string(),
            })
        };
        for (flag, value) in [
            ("duration", self.duration),
            ("print-every", self.print_every),
            ("settle", self.settle),
        ] {
            if value.is_zero() {
                return refuse(flag, value, "must be more than 0");
            }
        }
        if let Some(every) = self.fault_every {
            if every < Duration::from_millis(100) {
                return refuse(
                    "fault-every",
                    every,
                    "must be at least 100ms (faults need time to be recovered from)",
                );
            }
            if every >= self.duration {
                return refuse(
                    "fault-every",
                    every,
                    "leaves no fault within --duration: make it shorter than --duration, or omit it",
                );
            }
        }
        Ok(())
    }
}

/// Why the demo could not run (a failed check is a [`DemoReport`], not an error).
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// An option the demo cannot run with.
    #[error("--{flag} {value}: {reason}")]
    Option {
        /// The `arbor demo` flag.
        flag: &'static str,
        /// The value given.
        value: String,
        /// Why it cannot work.
        reason: String,
    },
    /// The temporary data directory could not be created.
    #[error("cannot create the demo's data directory {path}")]
    TempDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The tunnel store failed.
    #[error(transparent)]
    Store(#[from] crate::tunnel_service::StoreError),
    /// The tunnel server failed.
    #[error(transparent)]
    Server(#[from] crate::tunnel_service::ServerError),
    /// The tunnel could not be created.
    #[error(transparent)]
    Service(#[from] crate::tunnel_service::ServiceError),
    /// A tree failed.
    #[error(transparent)]
    Tree(#[from] crate::tree::TreeError),
    /// A supervisor refused a request.
    #[error(transparent)]
    Supervisor(#[from] arbor_actors::supervisor::SupervisorError),
    /// The connection settings were refused.
    #[error(transparent)]
    Connection(#[from] arbor_actors::connection::ConfigError),
    /// `--source kafka` in a build without the `kafka` feature.
    #[error("--source kafka needs arbor built with the `kafka` feature (cargo run --release --features kafka -- demo --source kafka --bootstrap HOST:PORT)")]
    KafkaFeatureMissing,
    /// The Kafka broker refused or did not answer.
    #[cfg(feature = "kafka")]
    #[error("{what}")]
    Kafka {
        /// What the demo was doing.
        what: &'static str,
        /// The broker's (or librdkafka's) error.
        #[source]
        source: arbor_actors::tunnel::kafka::rdkafka::error::KafkaError,
    },
}

/// What happened during a run.
#[derive(Debug, Clone, Default)]
pub struct DemoReport {
    /// The seed (replay the run with `--seed`).
    pub seed: u64,
    /// The ledger's totals after the settle phase (`missing` is what was lost).
    pub totals: Totals,
    /// Faults injected, per kind.
    pub faults: BTreeMap<FaultKind, u64>,
    /// Restarts, hand-overs, failovers, reconnects and checkpoints seen.
    pub counts: Counts,
    /// The slowest recovery per kind of fault.
    pub slowest: BTreeMap<FaultKind, Duration>,
    /// Faults whose recovery was not seen within 30 s.
    pub unrecovered: u64,
    /// Leaderships of the janitor that began.
    pub leader_terms: u64,
    /// Leaderships whose fencing token did not grow.
    pub token_regressions: u64,
    /// Nodes whose activator led at the end (exactly one is right).
    pub leaders_at_end: usize,
    /// Permanent children not running at the end, by path.
    pub down: Vec<String>,
    /// Channels checkpointed to their end after the shutdown, and channels in all.
    pub checkpointed: (usize, usize),
}

impl DemoReport {
    /// Records the service acknowledged and no subscriber was handed.
    pub fn lost(&self) -> u64 {
        self.totals.missing
    }

    /// Whether every check held: nothing lost or reordered, no foreign record, every permanent child up,
    /// one leader, fencing tokens increasing.
    pub fn passed(&self) -> bool {
        self.lost() == 0
            && self.totals.out_of_order == 0
            && self.totals.foreign == 0
            && self.down.is_empty()
            && self.leaders_at_end == 1
            && self.token_regressions == 0
    }
}

/// How to run `arbor` again from where the user is: `cargo run --release --` when the demo itself was started
/// by `cargo run` (cargo sets `CARGO_PKG_NAME` for what it runs), else the program as it was invoked.
fn command_prefix() -> String {
    if std::env::var_os("CARGO_PKG_NAME").is_some() {
        return "cargo run --release --".into();
    }
    std::env::args()
        .next()
        .filter(|program| program.contains('/'))
        .unwrap_or_else(|| "arbor".into())
}

/// Runs the demo, printing as it goes; the report says whether every check held.
///
/// # Errors
/// [`DemoError`] when a part could not start (a port, the data directory...).
pub async fn run(options: DemoOptions) -> Result<DemoReport, DemoError> {
    options.validate()?;
    let seed = options.seed.unwrap_or_else(rand::random);
    let mut rng = StdRng::seed_from_u64(seed);
    let fault_every = options
        .fault_every
        .unwrap_or_else(|| faults::default_every(options.duration));
    let mut backend = Backend::start(&options.source).await?;
    let schedule = faults::schedule(options.duration, fault_every, &backend.fault_kinds(), &mut rng);
    let (tunnel_id, target) = (backend.tunnel_id().to_string(), backend.target());
    println!(
        "arbor demo: {} of records at {}/s and a fault about every {} (seed {seed})",
        humantime::format_duration(options.duration),
        options.rate,
        humantime::format_duration(fault_every),
    );
    println!("{}", backend.describe());

    let ledger = Arc::new(Mutex::new(Ledger::new(KEYS)));
    let election = Registry::new("demo-election");
    let terms = Arc::new(LeaderTerms::default());
    let mut nodes = Vec::new();
    for name in ["node-a", "node-b"] {
        nodes.push(Node::start(name, &target, &tunnel_id, &ledger, &election, &terms).await?);
    }
    let arbor = command_prefix();
    for node in &nodes {
        if let Some(addrs) = node.tree.introspection_addrs() {
            println!(
                "{name}: watch it with `{arbor} top --addr {addr}` (or `{arbor} inspect --addr {addr} tree`)",
                name = node.name,
                addr = addrs.grpc
            );
        }
    }
    let began = Instant::now();
    let mut observer = Observer::new(
        &nodes
            .iter()
            .map(|n| (n.name.clone(), n.tree.clone()))
            .collect::<Vec<_>>(),
        began,
    );
    let mut screen = Screen::new();
    if !screen.is_terminal() {
        for node in &nodes {
            print!("{}", render_tree(node).await);
        }
    }

    let production = Production {
        ledger: Arc::clone(&ledger),
        stop: Arc::new(AtomicBool::new(false)),
        retries: Arc::new(AtomicU64::new(0)),
    };
    let max_records = u64::from(options.rate).saturating_mul(options.duration.as_secs().max(1));
    let producers = backend
        .start_producers(
            &nodes[0].tree,
            (KEYS, PRODUCERS),
            options.rate,
            max_records,
            &production,
        )
        .await?;

    // Faults, while producing.
    let mut injected: BTreeMap<FaultKind, u64> = BTreeMap::new();
    let mut schedule = schedule.into_iter().peekable();
    let mut next_show = Instant::now();
    let show_every = if screen.is_terminal() {
        REDRAW
    } else {
        options.print_every
    };
    while began.elapsed() < options.duration {
        tokio::time::sleep(Duration::from_millis(50)).await;
        observer.drain();
        while let Some((_, kind)) = schedule.next_if(|(at, _)| began.elapsed() >= *at) {
            if let Some(fault) = faults::inject(kind, &nodes, backend.service_mut(), &mut rng).await {
                *injected.entry(kind).or_default() += 1;
                tracing::info!(fault = %kind, what = %fault.what, "demo fault injected");
                observer.injected(&fault);
            }
        }
        if Instant::now() >= next_show {
            next_show += show_every;
            show(
                &mut screen,
                &mut observer,
                &nodes,
                &ledger,
                &injected,
                "faults",
                began,
                &options,
            )
            .await;
        }
    }

    // Settle: production stops; every acknowledged record must arrive, and one janitor lead.
    production.stop.store(true, Ordering::Relaxed);
    let deadline = Instant::now() + options.settle;
    for producer in &producers {
        while !producer.is_finished() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    producers.iter().for_each(|p| p.abort());
    loop {
        observer.drain();
        let missing = totals(&ledger).missing;
        let leaders = leaders(&nodes).await;
        if (missing == 0 && leaders == 1) || Instant::now() >= deadline {
            break;
        }
        if Instant::now() >= next_show {
            next_show += show_every;
            show(
                &mut screen,
                &mut observer,
                &nodes,
                &ledger,
                &injected,
                "settling",
                began,
                &options,
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    observer.drain();
    show(
        &mut screen,
        &mut observer,
        &nodes,
        &ledger,
        &injected,
        "settled",
        began,
        &options,
    )
    .await;
    if !screen.is_terminal() {
        for node in &nodes {
            print!("{}", render_tree(node).await);
        }
    }

    let mut down = Vec::new();
    for node in &nodes {
        if let Ok(snapshot) = node.tree.snapshot().await {
            down.extend(permanent_down(&snapshot));
        }
    }
    let leaders_at_end = leaders(&nodes).await;
    let totals = totals(&ledger);
    drop(producers);
    // Reverse start order, as a deployment stops its nodes: each flushes its checkpoints.
    for node in nodes.iter().rev() {
        if let Err(err) = node.tree.shutdown(Duration::from_secs(15)).await {
            tracing::warn!(node = %node.name, %err, "demo node shutdown");
        }
    }
    let checkpointed = backend.checkpointed();
    backend.stop().await?;

    let report = DemoReport {
        seed,
        totals,
        faults: injected,
        counts: observer.counts,
        slowest: observer.slowest.clone(),
        unrecovered: observer.unrecovered,
        leader_terms: terms.terms(),
        token_regressions: terms.regressions(),
        leaders_at_end,
        down,
        checkpointed,
    };
    print_ledger(&report, production.retries.load(Ordering::Relaxed));
    Ok(report)
}

fn totals(ledger: &Mutex<Ledger>) -> Totals {
    ledger.lock().unwrap_or_else(|p| p.into_inner()).totals()
}

async fn leaders(nodes: &[Node]) -> usize {
    let mut count = 0;
    for node in nodes {
        if node.role().await == Some(Role::Leader) {
            count += 1;
        }
    }
    count
}

async fn render_tree(node: &Node) -> String {
    match node.tree.snapshot().await {
        Ok(snapshot) => snapshot.render(),
        Err(err) => format!("{}: tree unavailable ({err})\n", node.name),
    }
}

#[allow(clippy::too_many_arguments)]
async fn show(
    screen: &mut Screen,
    observer: &mut Observer,
    nodes: &[Node],
    ledger: &Mutex<Ledger>,
    injected: &BTreeMap<FaultKind, u64>,
    phase: &str,
    began: Instant,
    options: &DemoOptions,
) {
    let mut views = Vec::new();
    for node in nodes {
        let role = match node.role().await {
            Some(Role::Leader) => "leader",
            Some(Role::Follower) => "follower",
            _ => "electing",
        };
        views.push(NodeView {
            name: node.name.clone(),
            role: role.to_string(),
            channels: node.channels(),
            tree: if screen.is_terminal() {
                render_tree(node).await
            } else {
                String::new()
            },
        });
    }
    let frame = Frame {
        phase,
        elapsed: began.elapsed(),
        duration: options.duration,
        totals: totals(ledger),
        faults: injected.values().sum::<u64>() as usize,
        counts: observer.counts,
        nodes: views,
        recent: observer.recent.iter().cloned().collect(),
    };
    let fresh = std::mem::take(&mut observer.fresh);
    screen.show(&frame, &fresh);
}

/// Paths of the permanent children that are not running.
fn permanent_down(snapshot: &TreeSnapshot) -> Vec<String> {
    snapshot
        .nodes()
        .into_iter()
        .filter(|n| n.restart == Some(Restart::Permanent) && n.status != ChildStatus::Running)
        .map(|n| n.path.clone())
        .collect()
}

fn print_ledger(report: &DemoReport, retries: u64) {
    let t = report.totals;
    let faults: Vec<String> = report.faults.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let slowest: Vec<String> = report
        .slowest
        .iter()
        .map(|(k, d)| format!("{k} {}", millis(*d)))
        .collect();
    let c = report.counts;
    println!("ledger");
    println!(
        "  produced     {:>8}  records acknowledged by the service or broker ({retries} appends retried)",
        t.produced
    );
    println!(
        "  delivered    {:>8}  {} distinct, {} duplicates (again after a crash/hand-over)",
        t.delivered, t.unique, t.duplicates
    );
    println!("  lost         {:>8}", report.lost());
    println!("  out of order {:>8}", t.out_of_order);
    println!(
        "  faults       {:>8}  {}",
        report.faults.values().sum::<u64>(),
        faults.join(", ")
    );
    println!(
        "  recovery     slowest {}{}",
        if slowest.is_empty() {
            "-".to_string()
        } else {
            slowest.join(", ")
        },
        if report.unrecovered > 0 {
            format!(
                " ({} not seen within {})",
                report.unrecovered,
                millis(observe::RECOVERY_LIMIT)
            )
        } else {
            String::new()
        }
    );
    println!("  restarts     {:>8}", c.restarts);
    println!(
        "  hand-overs   {:>8}  channels that moved to the other node",
        c.hand_overs
    );
    println!(
        "  failovers    {:>8}  leaderships the other node took over",
        c.failovers
    );
    println!("  reconnects   {:>8}", c.reconnects);
    println!(
        "  checkpoints  {:>8}  written; {} of {} channels at their end after shutdown",
        c.checkpoints, report.checkpointed.0, report.checkpointed.1
    );
    println!(
        "  leaders      {:>8}  at the end ({} terms, fencing tokens {})",
        report.leaders_at_end,
        report.leader_terms,
        if report.token_regressions == 0 {
            "always increasing"
        } else {
            "WENT BACKWARDS"
        }
    );
    println!(
        "  down         {:>8}  {}",
        report.down.len(),
        if report.down.is_empty() {
            "no permanent child is down".to_string()
        } else {
            report.down.join(", ")
        }
    );
    println!(
        "result: {} (seed {})",
        if report.passed() { "ok" } else { "FAILED" },
        report.seed
    );
}
