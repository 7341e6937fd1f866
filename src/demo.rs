//! `arbor demo`: a supervision tree under fire.
//!
//! A root supervisor runs a registry, a `one_for_all` group, a `rest_for_one` pipeline and a dynamic pool of
//! jobs. A chaos loop makes random workers panic or kills them outright; the tree restarts them. Every couple
//! of seconds the live tree is printed with its restart counts. At the end the demo checks that every
//! permanent worker is running again and registered, prints a summary, and fails if anything is missing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbor_actors::registry::{Registry, RegistryEvent, RemovalReason};
use arbor_actors::supervisor::{
    ChildSpec, DynamicSupervisor, DynamicSupervisorOptions, Restart, Strategy, Supervisor, SupervisorHandle,
    SupervisorOptions,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, ActorStatus};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

/// What the demo is told to do.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// How long the chaos runs.
    pub duration: Duration,
    /// Mean time between two injected faults.
    pub fault_every: Duration,
    /// How often the tree is printed.
    pub print_every: Duration,
    /// Seed for the fault schedule (random if `None`).
    pub seed: Option<u64>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            duration: Duration::from_secs(20),
            fault_every: Duration::from_millis(250),
            print_every: Duration::from_secs(2),
            seed: None,
        }
    }
}

/// What happened during a demo run.
#[derive(Debug, Clone, Default)]
pub struct DemoReport {
    /// Faults injected (panics and kills).
    pub faults: u64,
    /// Workers that came back (a key registered again after its holder died).
    pub recoveries: u64,
    /// Restarts the final tree reports.
    pub restarts_in_tree: u64,
    /// Work items the workers processed.
    pub work_done: u64,
    /// Permanent workers not running and registered at the end (must be empty).
    pub missing: Vec<String>,
}

/// Messages of the demo's worker.
pub enum DemoWorkerMsg {
    Work,
    Crash,
}

/// A worker that does a unit of "work" on every tick and registers itself under its name.
struct DemoWorker;

struct DemoWorkerArgs {
    name: String,
    registry: Registry<String>,
    work_done: Arc<AtomicU64>,
}

impl Actor for DemoWorker {
    type Msg = DemoWorkerMsg;
    type State = Arc<AtomicU64>;
    type Arguments = DemoWorkerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<DemoWorkerMsg>,
        args: DemoWorkerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        args.registry
            .register(args.name.clone(), myself.get_cell(), args.name)?;
        myself.send_interval(Duration::from_millis(50), || DemoWorkerMsg::Work);
        Ok(args.work_done)
    }

    async fn handle(
        &self,
        _myself: ActorRef<DemoWorkerMsg>,
        msg: DemoWorkerMsg,
        work_done: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DemoWorkerMsg::Work => {
                work_done.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            DemoWorkerMsg::Crash => Err("injected fault".into()),
        }
    }
}

fn worker(name: &str, registry: &Registry<String>, work_done: &Arc<AtomicU64>) -> ChildSpec {
    let (name, registry, work_done) = (name.to_string(), registry.clone(), Arc::clone(work_done));
    ChildSpec::actor(name.clone(), move || {
        let args = DemoWorkerArgs {
            name: name.clone(),
            registry: registry.clone(),
            work_done: Arc::clone(&work_done),
        };
        (DemoWorker, args)
    })
    .into()
}

/// Runs the demo, printing as it goes.
pub async fn run(options: DemoOptions) -> Result<DemoReport, Box<dyn std::error::Error + Send + Sync>> {
    let seed = options.seed.unwrap_or_else(rand::random);
    let mut rng = StdRng::seed_from_u64(seed);
    println!(
        "arbor demo: {} of random faults every ~{} (seed {seed})",
        humantime::format_duration(options.duration),
        humantime::format_duration(options.fault_every)
    );

    let registry: Registry<String> = Registry::new("demo");
    let work_done = Arc::new(AtomicU64::new(0));
    let group = SupervisorOptions::default().intensity(10, Duration::from_secs(5));
    let ingest = Supervisor::child_spec(
        "ingest",
        group.strategy(Strategy::OneForAll),
        ["reader", "parser", "writer"]
            .map(|n| worker(n, &registry, &work_done))
            .to_vec(),
    );
    let pipeline = Supervisor::child_spec(
        "pipeline",
        group.strategy(Strategy::RestForOne),
        ["source", "transform", "sink"]
            .map(|n| worker(n, &registry, &work_done))
            .to_vec(),
    );
    let jobs = DynamicSupervisor::child_spec(
        "jobs",
        DynamicSupervisorOptions::default()
            .intensity(10, Duration::from_secs(5))
            .max_children(16),
    );
    let root_options = SupervisorOptions::default().intensity(20, Duration::from_secs(10));
    let root = Supervisor::builder()
        .name(format!("arbor-demo-{}", std::process::id()))
        .options(root_options)
        .children([registry.child_spec("registry"), ingest, pipeline, jobs])
        .start()
        .await?;
    start_jobs(&root, &registry, &work_done).await?;
    let recoveries = count_recoveries(&registry);

    let began = Instant::now();
    let mut next_print = began + options.print_every;
    let mut faults = 0u64;
    while began.elapsed() < options.duration {
        let jitter = rng.random_range(0.5..1.5);
        tokio::time::sleep(options.fault_every.mul_f64(jitter)).await;
        let entries = registry.list();
        if let Some(victim) = entries.choose(&mut rng) {
            let how = if rng.random_bool(0.7) {
                "panics"
            } else {
                "is killed"
            };
            match victim.actor_ref::<DemoWorkerMsg>() {
                Ok(actor) if how == "panics" => {
                    let _ = actor.cast(DemoWorkerMsg::Crash);
                }
                _ => victim.actor.kill(),
            }
            faults += 1;
            tracing::info!(worker = %victim.key, how, "fault injected");
        }
        if jobs_count(&root).await == Some(0) {
            // A restarted dynamic supervisor starts empty (as Elixir's does): its children belong to whoever
            // started them, here the demo, which starts them again.
            println!("jobs supervisor was restarted after exceeding its intensity: starting its jobs again");
            start_jobs(&root, &registry, &work_done).await?;
        }
        if Instant::now() >= next_print {
            next_print += options.print_every;
            print_tree(&root, began, faults, &work_done).await;
        }
    }

    let missing = settle(&root, &registry).await;
    let snapshot = root.snapshot().await?;
    print_tree(&root, began, faults, &work_done).await;
    root.shutdown(Duration::from_secs(10)).await?;
    let report = DemoReport {
        faults,
        recoveries: recoveries.load(Ordering::Relaxed),
        restarts_in_tree: snapshot.total_restarts(),
        work_done: work_done.load(Ordering::Relaxed),
        missing,
    };
    println!(
        "summary: faults injected {}, workers recovered {}, restarts in the final tree {}, work items {}, missing {}",
        report.faults,
        report.recoveries,
        report.restarts_in_tree,
        report.work_done,
        if report.missing.is_empty() { "none".to_string() } else { report.missing.join(", ") }
    );
    Ok(report)
}

async fn start_jobs(
    root: &SupervisorHandle,
    registry: &Registry<String>,
    work_done: &Arc<AtomicU64>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let jobs = root.child_dynamic_supervisor("jobs").await?;
    for i in 0..6 {
        let restart = if i % 2 == 0 {
            Restart::Permanent
        } else {
            Restart::Transient
        };
        jobs.start_child(worker(&format!("job-{i}"), registry, work_done).restart(restart))
            .await?;
    }
    Ok(())
}

async fn jobs_count(root: &SupervisorHandle) -> Option<usize> {
    let jobs = root.child_dynamic_supervisor("jobs").await.ok()?;
    Some(jobs.count_children().await.ok()?.specs)
}

/// Counts keys registered again after their holder died: one per worker that came back.
fn count_recoveries(registry: &Registry<String>) -> Arc<AtomicU64> {
    let count = Arc::new(AtomicU64::new(0));
    let mut events = registry.watch();
    let counter = Arc::clone(&count);
    tokio::spawn(async move {
        let mut lost: BTreeMap<String, ()> = BTreeMap::new();
        while let Ok(event) = events.recv().await {
            match event {
                RegistryEvent::Removed(entry, RemovalReason::ActorExited) => {
                    lost.insert(entry.key, ());
                }
                RegistryEvent::Registered(entry) if lost.remove(&entry.key).is_some() => {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    });
    count
}

/// Waits (at most 10 s) until every static worker is running and registered; returns those that are not.
async fn settle(root: &SupervisorHandle, registry: &Registry<String>) -> Vec<String> {
    const PERMANENT: [&str; 6] = ["reader", "parser", "writer", "source", "transform", "sink"];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let missing: Vec<String> = PERMANENT
            .iter()
            .filter(|name| {
                registry
                    .lookup(name)
                    .is_none_or(|e| e.actor.get_status() != ActorStatus::Running)
            })
            .map(|name| name.to_string())
            .collect();
        let root_alive = root.count_children().await.is_ok();
        if (missing.is_empty() && root_alive) || Instant::now() >= deadline {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn print_tree(root: &SupervisorHandle, began: Instant, faults: u64, work_done: &AtomicU64) {
    match root.snapshot().await {
        Ok(snapshot) => {
            println!(
                "--- t={:.1}s faults={faults} restarts={} work={}",
                began.elapsed().as_secs_f64(),
                snapshot.total_restarts(),
                work_done.load(Ordering::Relaxed)
            );
            print!("{}", snapshot.render());
        }
        Err(err) => println!("--- tree unavailable: {err}"),
    }
}
