//! Supervision costs, side by side with a plain-ractor baseline, in one run.
//!
//! `cargo bench --bench supervision` prints one table:
//! - (a) restart latency: a child is killed until its replacement has answered a call;
//! - (b) the same after 10,000 restarts inside one intensity window (must stay flat: O(1) bookkeeping);
//! - (a') restart latency again, with both sides in one process and their samples alternating, the ratio taken
//!   in each process: a process's latencies settle at one of a few levels (with how its tasks spread over the
//!   worker threads), apart by more than the sides differ, and here both sides meet the same one;
//! - (c) dynamic `start_child` throughput;
//! - (d) resident memory per idle supervised child, with 100,000 children;
//! - (e) graceful shutdown of a dynamic supervisor with 10,000 children, against a plain parent stopping its
//!   children with `stop_children_and_wait`, and against arbor's own shutdown of one child.
//!
//! Every other measure runs each side in a fresh process of this bench (so no side inherits the other's heap or
//! actors still shutting down), several times with the sides interleaved; the table shows medians. Samples are driven from
//! a task on the runtime, as a service's code would be, not from the thread that blocks on the runtime (which
//! would add two cross-thread wake-ups to every sample). Runs on a multi-threaded tokio runtime;
//! `ARBOR_BENCH_RUNTIME=current_thread` runs it on one thread, where the figures are less noisy.
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
/// Processes per measure and side; the table shows the median.
const RUNS: usize = 5;
/// Processes per side for the latency measures, which are short: a process's latencies settle in one of two
/// or three levels (with how its tasks spread over the worker threads, about 4 and 5.5 µs for the same binary
/// here), so a median over few processes swings with how many landed on each.
const LATENCY_RUNS: usize = 11;
const SHUTDOWN_CHILDREN: usize = 10_000;
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

/// Kills the current child; the sample runs until the replacement has answered a call.
async fn restart_latency(published: &mut Published) -> Duration {
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
    began.elapsed()
}

/// `n` restart latencies in a row.
async fn restart_latencies(published: &mut Published, n: usize) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        samples.push(restart_latency(published).await);
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

/// Child-process side of (a'): both sides in one process, their samples alternating, so that both meet the
/// same machine (a process's latencies vary by more than the difference between the sides, with how its
/// tasks happen to spread over the worker threads); median and p99 of each, in µs, as `plain_median
/// plain_p99 arbor_median arbor_p99`.
async fn paired_latency_child() -> Vec<f64> {
    let (plain_tx, mut plain_rx) = watch::channel(None);
    let (plain, _) = Actor::spawn(None, PlainParent, plain_tx).await.unwrap();
    let (arbor_tx, mut arbor_rx) = watch::channel(None);
    let options = SupervisorOptions::default().intensity(1_000_000, Duration::from_secs(3600));
    let sup = Supervisor::start(options, vec![echo_spec(arbor_tx)])
        .await
        .unwrap();
    let (mut plain_samples, mut arbor_samples) = (Vec::new(), Vec::new());
    for i in 0..WARM_UP + RESTARTS {
        // Each side goes first every other time: neither always follows the other's restart.
        let (plain_sample, arbor_sample) = if i % 2 == 0 {
            let plain = restart_latency(&mut plain_rx).await;
            (plain, restart_latency(&mut arbor_rx).await)
        } else {
            let arbor = restart_latency(&mut arbor_rx).await;
            (restart_latency(&mut plain_rx).await, arbor)
        };
        if i >= WARM_UP {
            plain_samples.push(plain_sample);
            arbor_samples.push(arbor_sample);
        }
    }
    plain.stop(None);
    drop(sup);
    let (plain, arbor) = (stats(plain_samples), stats(arbor_samples));
    [plain.median, plain.p99, arbor.median, arbor.p99]
        .iter()
        .map(|d| d.as_secs_f64() * 1e6)
        .collect()
}

/// Child-process side of (a) and (b): median and p99 of both, in µs, as `a_median a_p99 b_median b_p99`.
async fn latency_child(mode: &str) -> Vec<f64> {
    let (tx, mut rx) = watch::channel(None);
    let stop: Box<dyn FnOnce() + Send> = if mode == "plain" {
        let (plain, _) = Actor::spawn(None, PlainParent, tx).await.unwrap();
        Box::new(move || plain.stop(None))
    } else {
        // an intensity wide enough that every restart below falls in one window
        let options = SupervisorOptions::default().intensity(1_000_000, Duration::from_secs(3600));
        let sup = Supervisor::start(options, vec![echo_spec(tx)]).await.unwrap();
        Box::new(move || drop(sup))
    };
    restart_latencies(&mut rx, WARM_UP).await;
    let a = stats(restart_latencies(&mut rx, RESTARTS).await);
    restart_latencies(&mut rx, WINDOW_FILL).await;
    let b = stats(restart_latencies(&mut rx, RESTARTS).await);
    stop();
    [a.median, a.p99, b.median, b.p99]
        .iter()
        .map(|d| d.as_secs_f64() * 1e6)
        .collect()
}

fn ratio(a: f64, b: f64) -> String {
    format!("{:.2}×", a / b)
}

fn latency_rows() -> Vec<String> {
    let [plain, arbor] = &medians("latency", &["plain", "arbor"], LATENCY_RUNS)[..] else {
        unreachable!("two modes")
    };
    if plain.len() < 4 || arbor.len() < 4 {
        return vec!["| (a) restart latency | measurement failed | | |".into()];
    }
    let us = |v: f64| format!("{v:.2} µs");
    let total = WARM_UP + RESTARTS + WINDOW_FILL;
    vec![
        format!(
            "| (a) restart latency, median | {} | {} | {} |",
            us(plain[0]),
            us(arbor[0]),
            ratio(arbor[0], plain[0])
        ),
        format!(
            "| (a) restart latency, p99 | {} | {} | {} |",
            us(plain[1]),
            us(arbor[1]),
            ratio(arbor[1], plain[1])
        ),
        format!(
            "| (b) after {total} restarts in one window, median | {} | {} | {} (vs arbor's (a): {}) |",
            us(plain[2]),
            us(arbor[2]),
            ratio(arbor[2], plain[2]),
            ratio(arbor[2], arbor[0])
        ),
        format!(
            "| (b) after {total} restarts in one window, p99 | {} | {} | {} (vs arbor's (a): {}) |",
            us(plain[3]),
            us(arbor[3]),
            ratio(arbor[3], plain[3]),
            ratio(arbor[3], arbor[1])
        ),
    ]
}

fn paired_latency_rows() -> Vec<String> {
    let runs: Vec<Vec<f64>> = (0..LATENCY_RUNS)
        .filter_map(|_| in_child_process("paired-latency", "both"))
        .filter(|values| values.len() == 4)
        .collect();
    if runs.len() < LATENCY_RUNS {
        return vec![
            "| (a') restart latency, sides alternating in one process | measurement failed | | |".into(),
        ];
    }
    let median = |mut column: Vec<f64>| {
        column.sort_by(f64::total_cmp);
        column[column.len() / 2]
    };
    let column = |k: usize| median(runs.iter().map(|r| r[k]).collect());
    // The ratio is taken in each process, between samples that met the same machine, then the median.
    let ratio_of = |arbor: usize, plain: usize| median(runs.iter().map(|r| r[arbor] / r[plain]).collect());
    let us = |v: f64| format!("{v:.2} µs");
    vec![
        format!(
            "| (a') restart latency, sides alternating in one process, median (ratio: median of {LATENCY_RUNS} processes' own) | {} | {} | {:.2}× |",
            us(column(0)),
            us(column(2)),
            ratio_of(2, 0)
        ),
        format!(
            "| (a') the same, p99 | {} | {} | {:.2}× |",
            us(column(1)),
            us(column(3)),
            ratio_of(3, 1)
        ),
    ]
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
    let keep: Box<dyn std::any::Any + Send> = match mode {
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

/// Child-process side of (e): start `children` idle children, then time a graceful stop of all of them, in
/// µs. The baseline parent stops its children with ractor's `stop_children_and_wait`.
async fn shutdown_child(mode: &str) -> f64 {
    let (plain, children) = match mode.split_once('-') {
        Some(("plain", n)) => (true, n.parse().unwrap_or(SHUTDOWN_CHILDREN)),
        Some((_, n)) => (false, n.parse().unwrap_or(SHUTDOWN_CHILDREN)),
        None => (false, SHUTDOWN_CHILDREN),
    };
    if plain {
        let (parent, _) = Actor::spawn(None, IdleParent, ()).await.unwrap();
        for _ in 0..children {
            Actor::spawn_linked(None, Idle, (), parent.get_cell())
                .await
                .unwrap();
        }
        let began = Instant::now();
        parent.stop_children_and_wait(None, None).await;
        let took = began.elapsed();
        parent.stop(None);
        return took.as_secs_f64() * 1e6;
    }
    let dynsup = DynamicSupervisor::start(DynamicSupervisorOptions::default())
        .await
        .unwrap();
    let spec = ChildSpec::actor("idle", || (Idle, ()));
    for _ in 0..children {
        dynsup.start_child(spec.clone()).await.unwrap();
    }
    let began = Instant::now();
    dynsup.shutdown(Duration::from_secs(600)).await.unwrap();
    began.elapsed().as_secs_f64() * 1e6
}

fn shutdown_rows() -> Vec<String> {
    let modes = [
        format!("plain-{SHUTDOWN_CHILDREN}"),
        format!("arbor-{SHUTDOWN_CHILDREN}"),
        "arbor-1".to_string(),
    ];
    let modes: Vec<&str> = modes.iter().map(String::as_str).collect();
    match &medians("shutdown", &modes, RUNS)[..] {
        [plain, many, one] if !plain.is_empty() && !many.is_empty() && !one.is_empty() => {
            let ms = |v: f64| format!("{:.1} ms", v / 1e3);
            vec![
                format!(
                    "| (e) dynamic shutdown, {SHUTDOWN_CHILDREN} children (vs stop_children_and_wait) | {} | {} | {} |",
                    ms(plain[0]),
                    ms(many[0]),
                    ratio(many[0], plain[0])
                ),
                format!(
                    "| (e') the same, vs arbor's shutdown with 1 child ({:.0} µs) | | | {:.0}× for {SHUTDOWN_CHILDREN}× the children |",
                    one[0],
                    many[0] / one[0]
                ),
            ]
        }
        _ => vec!["| (e) dynamic shutdown | measurement failed | | |".into()],
    }
}

/// Runs one measure in a fresh process of this bench, so that no side inherits the other's heap or its
/// actors still shutting down in the background.
fn in_child_process(measure: &str, mode: &str) -> Option<Vec<f64>> {
    let out = Command::new(std::env::current_exe().ok()?)
        .env("ARBOR_BENCH_CHILD", format!("{measure}:{mode}"))
        .output()
        .ok()?;
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("RESULT ").map(str::to_string))?;
    line.split_whitespace().map(|v| v.parse().ok()).collect()
}

/// Per mode, the median of `wanted` processes of each value the measure reports (modes interleaved, so that
/// a slow spell of the machine hits every side alike). A mode with a failed run reports nothing.
fn medians(measure: &str, modes: &[&str], wanted: usize) -> Vec<Vec<f64>> {
    let mut runs: Vec<Vec<Vec<f64>>> = vec![Vec::new(); modes.len()];
    for _ in 0..wanted {
        for (i, mode) in modes.iter().enumerate() {
            if let Some(values) = in_child_process(measure, mode) {
                runs[i].push(values);
            }
        }
    }
    runs.into_iter()
        .map(|runs| {
            if runs.len() < wanted {
                return Vec::new();
            }
            (0..runs[0].len())
                .map(|k| {
                    let mut column: Vec<f64> = runs.iter().map(|r| r[k]).collect();
                    column.sort_by(f64::total_cmp);
                    column[column.len() / 2]
                })
                .collect()
        })
        .collect()
}

fn throughput_rows() -> Vec<String> {
    match &medians("starts", &["plain", "arbor", "via-parent"], RUNS)[..] {
        [plain, arbor, via_parent] if !plain.is_empty() && !arbor.is_empty() && !via_parent.is_empty() => {
            let (plain, arbor, via_parent) = (plain[0], arbor[0], via_parent[0]);
            vec![
            format!(
                "| (c) dynamic start_child, {STARTS} children (vs spawn_linked) | {plain:.0}/s | {arbor:.0}/s | {:.2}× |",
                arbor / plain
            ),
            format!(
                "| (c') the same, vs a parent that spawns on a call | {via_parent:.0}/s | {arbor:.0}/s | {:.2}× |",
                arbor / via_parent
            ),
        ]
        }
        _ => vec!["| (c) dynamic start_child | measurement failed | | |".into()],
    }
}

fn rss_row() -> String {
    match &medians("rss", &["plain", "arbor"], RUNS)[..] {
        [plain, arbor] if !plain.is_empty() && !arbor.is_empty() => format!(
            "| (d) RSS per idle child, {RSS_CHILDREN} children | {:.0} B | {:.0} B | {:.2}× |",
            plain[0],
            arbor[0],
            arbor[0] / plain[0]
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
        let (measure, mode) = (measure.to_string(), mode.to_string());
        // On a task of the runtime, not on the thread blocking on it.
        let values: Vec<f64> = runtime.block_on(async move {
            tokio::spawn(async move {
                match measure.as_str() {
                    "latency" => latency_child(&mode).await,
                    "paired-latency" => paired_latency_child().await,
                    "starts" => vec![starts_child(&mode).await],
                    "shutdown" => vec![shutdown_child(&mode).await],
                    _ => vec![rss_child(&mode).await],
                }
            })
            .await
            .expect("measure runs")
        });
        let values: Vec<String> = values.iter().map(f64::to_string).collect();
        println!("RESULT {}", values.join(" "));
        return;
    }
    // `cargo test --benches` runs bench targets with no `--bench` flag: do nothing heavy then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    println!(
        "supervision bench: {RESTARTS} restarts per latency row, {STARTS} starts, {RSS_CHILDREN} children for RSS, \
         {SHUTDOWN_CHILDREN} for shutdown; medians of {LATENCY_RUNS} processes per side for latency, {RUNS} for the rest"
    );
    let mut rows = latency_rows();
    rows.extend(paired_latency_rows());
    rows.extend(throughput_rows());
    rows.push(rss_row());
    rows.extend(shutdown_rows());
    println!("| measure | plain ractor | arbor | arbor / plain |");
    println!("|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
}
