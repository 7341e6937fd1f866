//! Supervision costs, side by side with a plain-ractor baseline, in one run.
//!
//! `cargo bench --bench supervision` prints one table:
//! - (a) restart latency: a child is killed until its replacement has answered a call;
//! - (b) the same after 10,000 restarts inside one intensity window (must stay flat: O(1) bookkeeping);
//! - (c) dynamic `start_child` throughput;
//! - (d) resident memory per idle supervised child, with 100,000 children (each side in its own process, so
//!   one side's freed memory cannot flatter the other).
//!
//! Runs on a multi-threaded tokio runtime; `ARBOR_BENCH_RUNTIME=current_thread` runs it on one thread, where
//! the figures are far less noisy (no cross-thread wake-ups).
//!
//! The baseline is the least a ractor user would write: a parent that re-spawns its child in
//! `handle_supervisor_evt`, and children spawned with `spawn_linked` straight into a parent.

use std::process::Command;
use std::time::{Duration, Instant};

use arbor::supervisor::{
    ChildSpec, DynamicSupervisor, DynamicSupervisorOptions, Restart, Supervisor, SupervisorOptions,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::watch;

const RESTARTS: usize = 5_000;
/// Unmeasured restarts first, so neither side pays for a cold start.
const WARM_UP: usize = 1_000;
const WINDOW_FILL: usize = 10_000;
const STARTS: usize = 20_000;
const RSS_CHILDREN: usize = 100_000;

/// The supervised child: publishes itself when it starts, answers pings.
struct Echo;

impl Actor for Echo {
    type Msg = RpcReplyPort<()>;
    type State = ();
    type Arguments = watch::Sender<Option<ActorRef<RpcReplyPort<()>>>>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        publish: Self::Arguments,
    ) -> Result<(), ActorProcessingErr> {
        publish.send_replace(Some(myself));
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        reply: Self::Msg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let _ = reply.send(());
        Ok(())
    }
}

/// The baseline parent: re-spawns its one child on any exit.
struct PlainParent;

impl Actor for PlainParent {
    type Msg = ();
    type State = watch::Sender<Option<ActorRef<RpcReplyPort<()>>>>;
    type Arguments = watch::Sender<Option<ActorRef<RpcReplyPort<()>>>>;

    async fn pre_start(
        &self,
        myself: ActorRef<()>,
        publish: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Actor::spawn_linked(None, Echo, publish.clone(), myself.get_cell()).await?;
        Ok(publish)
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<()>,
        event: SupervisionEvent,
        publish: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorTerminated(..) | SupervisionEvent::ActorFailed(..) = event {
            Actor::spawn_linked(None, Echo, publish.clone(), myself.get_cell()).await?;
        }
        Ok(())
    }
}

/// An idle child for the throughput and memory measures.
struct Idle;

impl Actor for Idle {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

/// An idle parent for the baseline's dynamically started children; on a call it spawns one itself (what a
/// hand-written ractor "dynamic supervisor" does).
struct IdleParent;

impl Actor for IdleParent {
    type Msg = RpcReplyPort<()>;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<Self::Msg>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        reply: Self::Msg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        Actor::spawn_linked(None, Idle, (), myself.get_cell()).await?;
        let _ = reply.send(());
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<Self::Msg>,
        _: SupervisionEvent,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

type Published = watch::Receiver<Option<ActorRef<RpcReplyPort<()>>>>;

/// Kills the current child `n` times; each sample runs until the replacement has answered a call.
async fn restart_latencies(published: &mut Published, n: usize) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let current = published.borrow_and_update().clone().expect("a child runs");
        let began = Instant::now();
        current.kill();
        let replacement = loop {
            published.changed().await.expect("publisher alive");
            let next = published.borrow_and_update().clone().expect("a child runs");
            if next.get_id() != current.get_id() {
                break next;
            }
        };
        ractor::call!(replacement, |reply| reply).expect("replacement answers");
        samples.push(began.elapsed());
    }
    samples
}

fn echo_spec(publish: watch::Sender<Option<ActorRef<RpcReplyPort<()>>>>) -> ChildSpec {
    ChildSpec::actor("echo", move || (Echo, publish.clone())).into()
}

struct Stats {
    median: Duration,
    p99: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Stats {
        median: at(0.5),
        p99: at(0.99),
    }
}

fn us(d: Duration) -> String {
    format!("{:.2} µs", d.as_secs_f64() * 1e6)
}

async fn latency_rows() -> Vec<String> {
    let mut rows = Vec::new();
    // (a) and (b), baseline
    let (tx, mut plain_rx) = watch::channel(None);
    let (plain, _) = Actor::spawn(None, PlainParent, tx).await.unwrap();
    restart_latencies(&mut plain_rx, WARM_UP).await;
    let plain_a = stats(restart_latencies(&mut plain_rx, RESTARTS).await);
    restart_latencies(&mut plain_rx, WINDOW_FILL).await;
    let plain_b = stats(restart_latencies(&mut plain_rx, RESTARTS).await);
    plain.stop(None);

    // (a) and (b), arbor: an intensity wide enough that every restart below falls in one window
    let (tx, mut arbor_rx) = watch::channel(None);
    let options = SupervisorOptions::default().intensity(1_000_000, Duration::from_secs(3600));
    let sup = Supervisor::start(options, vec![echo_spec(tx)]).await.unwrap();
    restart_latencies(&mut arbor_rx, WARM_UP).await;
    let arbor_a = stats(restart_latencies(&mut arbor_rx, RESTARTS).await);
    restart_latencies(&mut arbor_rx, WINDOW_FILL).await;
    let arbor_b = stats(restart_latencies(&mut arbor_rx, RESTARTS).await);
    sup.shutdown(Duration::from_secs(30)).await.unwrap();

    let ratio = |a: Duration, b: Duration| format!("{:.2}×", a.as_secs_f64() / b.as_secs_f64());
    rows.push(format!(
        "| (a) restart latency, median | {} | {} | {} |",
        us(plain_a.median),
        us(arbor_a.median),
        ratio(arbor_a.median, plain_a.median)
    ));
    rows.push(format!(
        "| (a) restart latency, p99 | {} | {} | {} |",
        us(plain_a.p99),
        us(arbor_a.p99),
        ratio(arbor_a.p99, plain_a.p99)
    ));
    rows.push(format!(
        "| (b) after {} restarts in one window, median | {} | {} | {} (vs arbor's (a): {}) |",
        WARM_UP + RESTARTS + WINDOW_FILL,
        us(plain_b.median),
        us(arbor_b.median),
        ratio(arbor_b.median, plain_b.median),
        ratio(arbor_b.median, arbor_a.median)
    ));
    rows.push(format!(
        "| (b) after {} restarts in one window, p99 | {} | {} | {} (vs arbor's (a): {}) |",
        WARM_UP + RESTARTS + WINDOW_FILL,
        us(plain_b.p99),
        us(arbor_b.p99),
        ratio(arbor_b.p99, plain_b.p99),
        ratio(arbor_b.p99, arbor_a.p99)
    ));
    rows
}

/// Child-process side of (c): `STARTS` starts one after the other; prints starts per second.
async fn starts_child(mode: &str) -> f64 {
    let began;
    match mode {
        "plain" => {
            let (parent, _) = Actor::spawn(None, IdleParent, ()).await.unwrap();
            began = Instant::now();
            for _ in 0..STARTS {
                Actor::spawn_linked(None, Idle, (), parent.get_cell())
                    .await
                    .unwrap();
            }
        }
        "via-parent" => {
            let (parent, _) = Actor::spawn(None, IdleParent, ()).await.unwrap();
            began = Instant::now();
            for _ in 0..STARTS {
                ractor::call!(parent, |reply| reply).unwrap();
            }
        }
        _ => {
            let dynsup = DynamicSupervisor::start(DynamicSupervisorOptions::default())
                .await
                .unwrap();
            let spec = ChildSpec::actor("idle", || (Idle, ())).restart(Restart::Temporary);
            began = Instant::now();
            for _ in 0..STARTS {
                dynsup.start_child(spec.clone()).await.unwrap();
            }
        }
    }
    STARTS as f64 / began.elapsed().as_secs_f64()
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Child-process side of (d): spawn the children, return resident bytes per child.
async fn rss_child(mode: &str) -> f64 {
    let before;
    let keep: Box<dyn std::any::Any> = match mode {
        "plain" => {
            let (parent, _) = Actor::spawn(None, IdleParent, ()).await.unwrap();
            before = resident_bytes();
            for _ in 0..RSS_CHILDREN {
                Actor::spawn_linked(None, Idle, (), parent.get_cell())
                    .await
                    .unwrap();
            }
            Box::new(parent)
        }
        _ => {
            let dynsup = DynamicSupervisor::start(DynamicSupervisorOptions::default())
                .await
                .unwrap();
            let spec = ChildSpec::actor("idle", || (Idle, ()));
            before = resident_bytes();
            for _ in 0..RSS_CHILDREN {
                dynsup.start_child(spec.clone()).await.unwrap();
            }
            Box::new(dynsup)
        }
    };
    // let the supervisor take over every child before measuring
    tokio::time::sleep(Duration::from_millis(200)).await;
    let per_child = (resident_bytes() - before) as f64 / RSS_CHILDREN as f64;
    drop(keep);
    per_child
}

/// Runs one measure in a fresh process of this bench, so that no side inherits the other's heap or its
/// actors still shutting down in the background.
fn in_child_process(measure: &str, mode: &str) -> Option<f64> {
    let out = Command::new(std::env::current_exe().ok()?)
        .env("ARBOR_BENCH_CHILD", format!("{measure}:{mode}"))
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .and_then(|v| v.trim().parse().ok())
}

/// The median of three runs per mode, modes interleaved.
fn median_of_three(measure: &str, modes: &[&str]) -> Vec<Option<f64>> {
    let mut runs: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    for _ in 0..3 {
        for (i, mode) in modes.iter().enumerate() {
            if let Some(v) = in_child_process(measure, mode) {
                runs[i].push(v);
            }
        }
    }
    runs.into_iter()
        .map(|mut r| {
            r.sort_by(f64::total_cmp);
            r.get(r.len() / 2).copied()
        })
        .collect()
}

fn throughput_rows() -> Vec<String> {
    match median_of_three("starts", &["plain", "arbor", "via-parent"])[..] {
        [Some(plain), Some(arbor), Some(via_parent)] => vec![
            format!(
                "| (c) dynamic start_child, {STARTS} children (vs spawn_linked) | {plain:.0}/s | {arbor:.0}/s | {:.2}× |",
                arbor / plain
            ),
            format!(
                "| (c') the same, vs a parent that spawns on a call | {via_parent:.0}/s | {arbor:.0}/s | {:.2}× |",
                arbor / via_parent
            ),
        ],
        _ => vec!["| (c) dynamic start_child | measurement failed | | |".into()],
    }
}

fn rss_row() -> String {
    match median_of_three("rss", &["plain", "arbor"])[..] {
        [Some(plain), Some(arbor)] => format!(
            "| (d) RSS per idle child, {RSS_CHILDREN} children | {plain:.0} B | {arbor:.0} B | {:.2}× |",
            arbor / plain
        ),
        _ => "| (d) RSS per idle child | measurement failed | | |".into(),
    }
}

fn main() {
    let runtime = if std::env::var("ARBOR_BENCH_RUNTIME").as_deref() == Ok("current_thread") {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    if let Ok(child) = std::env::var("ARBOR_BENCH_CHILD") {
        let (measure, mode) = child.split_once(':').unwrap_or((child.as_str(), ""));
        let result = match measure {
            "starts" => runtime.block_on(starts_child(mode)),
            _ => runtime.block_on(rss_child(mode)),
        };
        println!("RESULT {result}");
        return;
    }
    // `cargo test --benches` runs bench targets with no `--bench` flag: do nothing heavy then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    println!("supervision bench: {RESTARTS} restarts per latency row, {STARTS} starts, {RSS_CHILDREN} children for RSS");
    let mut rows = runtime.block_on(latency_rows());
    rows.extend(throughput_rows());
    rows.push(rss_row());
    println!("| measure | plain ractor | arbor | arbor / plain |");
    println!("|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
}
