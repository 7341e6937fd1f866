//! Chaos: 10,000 random kills and stops across a three-level tree that mixes strategies and restart types.
//! At the end every permanent child is alive exactly once, registry entries equal the live actors, and every
//! supervisor's `count_children` agrees with what actually runs.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbor_actors::registry::{Registry, RegistryError};
use arbor_actors::supervisor::{
    ChildKind, ChildSpec, ChildStatus, DynamicSupervisor, DynamicSupervisorOptions, Restart, Strategy,
    Supervisor, SupervisorHandle, SupervisorOptions,
};
use futures::future::BoxFuture;
use futures::FutureExt;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, ActorStatus};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Registers itself under its name when it starts. The registry refuses a key whose holder still runs, so a
/// refusal means two incarnations of one child were alive at once: that is counted, not retried away.
struct Registered;

type RegisteredArgs = (String, Registry<()>, Arc<AtomicU64>);

impl Actor for Registered {
    type Msg = ();
    type State = ();
    type Arguments = RegisteredArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<()>,
        (name, registry, overlaps): RegisteredArgs,
    ) -> Result<(), ActorProcessingErr> {
        if let Err(err @ RegistryError::Duplicate { .. }) = registry.register(name, myself.get_cell(), ()) {
            overlaps.fetch_add(1, Ordering::SeqCst);
            return Err(err.into());
        }
        Ok(())
    }
}

struct Tree {
    registry: Registry<()>,
    overlaps: Arc<AtomicU64>,
}

impl Tree {
    fn worker(&self, name: &str, restart: Restart) -> ChildSpec {
        let args = (
            name.to_string(),
            self.registry.clone(),
            Arc::clone(&self.overlaps),
        );
        ChildSpec::actor(name, move || (Registered, args.clone()))
            .restart(restart)
            .into()
    }
}

/// Every actor below `sup`, with its kind.
fn actors_below(sup: ActorCell) -> BoxFuture<'static, Vec<(ActorCell, ChildKind)>> {
    async move {
        let Ok(handle) = SupervisorHandle::from_cell(sup) else {
            return Vec::new();
        };
        let Ok(children) = handle.which_children().await else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for child in children {
            if let Some(cell) = child.cell {
                if child.kind != ChildKind::Worker {
                    out.extend(actors_below(cell.clone()).await);
                }
                out.push((cell, child.kind));
            }
        }
        out
    }
    .boxed()
}

/// Every supervisor's `count_children` against its `which_children`, and against the actors' own status.
fn counts_agree(sup: ActorCell) -> BoxFuture<'static, Result<(), String>> {
    async move {
        let handle = SupervisorHandle::from_cell(sup).map_err(|e| e.to_string())?;
        let which = handle.which_children().await.map_err(|e| e.to_string())?;
        let counts = handle.count_children().await.map_err(|e| e.to_string())?;
        let running: Vec<&ActorCell> = which.iter().filter_map(|c| c.cell.as_ref()).collect();
        if counts.specs != which.len() || counts.active != running.len() {
            return Err(format!(
                "{counts:?} but which_children lists {} ({} running)",
                which.len(),
                running.len()
            ));
        }
        if let Some(dead) = running.iter().find(|c| c.get_status() != ActorStatus::Running) {
            return Err(format!(
                "{} is listed running but is {:?}",
                dead.get_id(),
                dead.get_status()
            ));
        }
        for child in which.iter().filter(|c| c.kind != ChildKind::Worker) {
            if let Some(cell) = &child.cell {
                counts_agree(cell.clone()).await?;
            }
        }
        Ok(())
    }
    .boxed()
}

const PERMANENT: [&str; 9] = ["w1", "w3", "w4", "w6", "w7", "w9", "w10", "w11", "w12"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_random_kills_leave_every_permanent_child_alive_once_and_a_true_registry() {
    let tree = Tree {
        registry: Registry::new("random-kills"),
        overlaps: Arc::new(AtomicU64::new(0)),
    };
    let lenient = SupervisorOptions::default().intensity(1_000_000, Duration::from_secs(60));
    let l2a = Supervisor::child_spec(
        "l2a",
        lenient.strategy(Strategy::RestForOne),
        [
            tree.worker("w4", Restart::Permanent),
            tree.worker("t5", Restart::Transient),
            tree.worker("tmp1", Restart::Temporary),
            tree.worker("w6", Restart::Permanent),
        ],
    );
    let l1a = Supervisor::child_spec(
        "l1a",
        lenient.strategy(Strategy::OneForAll),
        [
            tree.worker("w1", Restart::Permanent),
            tree.worker("t2", Restart::Transient),
            l2a,
            tree.worker("w3", Restart::Permanent),
        ],
    );
    let jobs = DynamicSupervisor::child_spec(
        "jobs",
        DynamicSupervisorOptions::default().intensity(1_000_000, Duration::from_secs(60)),
    );
    let l1b = Supervisor::child_spec(
        "l1b",
        lenient,
        [
            tree.worker("w7", Restart::Permanent),
            jobs,
            tree.worker("t8", Restart::Transient),
        ],
    );
    let l2b = Supervisor::child_spec(
        "l2b",
        lenient.strategy(Strategy::OneForAll),
        [
            tree.worker("w10", Restart::Permanent),
            tree.worker("w11", Restart::Permanent),
        ],
    );
    let l1c = Supervisor::child_spec(
        "l1c",
        lenient.strategy(Strategy::RestForOne),
        [
            tree.worker("w9", Restart::Permanent),
            l2b,
            tree.worker("w12", Restart::Permanent),
        ],
    );
    let root = Supervisor::start(lenient, [tree.registry.child_spec("registry"), l1a, l1b, l1c])
        .await
        .unwrap();
    let l1b_handle = root.child_supervisor("l1b").await.unwrap();
    let jobs = l1b_handle.child_dynamic_supervisor("jobs").await.unwrap();
    for i in 0..6 {
        let restart = [Restart::Permanent, Restart::Transient, Restart::Temporary][i % 3];
        jobs.start_child(tree.worker(&format!("job{i}"), restart))
            .await
            .unwrap();
    }

    let mut rng = StdRng::seed_from_u64(0x5eed);
    let (mut kills, mut stops, mut supervisors_hit) = (0u32, 0u32, 0u32);
    while kills + stops < 10_000 {
        let actors = actors_below(root.cell().unwrap()).await;
        // several faults per walk of the tree, so that faults also land on actors in the middle of restarting
        for _ in 0..4 {
            let Some((victim, kind)) = actors.get(rng.random_range(0..actors.len().max(1))).cloned() else {
                break;
            };
            if rng.random_bool(0.8) {
                victim.kill();
                kills += 1;
            } else {
                victim.stop(None); // a normal exit: transient children stay down, temporary ones are forgotten
                stops += 1;
            }
            if kind != ChildKind::Worker {
                supervisors_hit += 1;
            }
        }
        tokio::task::yield_now().await;
    }
    assert!(
        supervisors_hit > 100,
        "the faults reached supervisors too ({supervisors_hit})"
    );

    // Settle: wait (bounded) until every permanent static worker runs and the registry holds exactly the
    // workers that run.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let snapshot = root.snapshot().await.unwrap();
        let running_workers: BTreeSet<String> = snapshot
            .nodes()
            .iter()
            .filter(|n| n.kind == ChildKind::Worker && n.status == ChildStatus::Running && n.id != "registry")
            .map(|n| n.id.split('#').next().unwrap().to_string())
            .collect();
        let entries = tree.registry.list();
        let keys: BTreeSet<String> = entries.iter().map(|e| e.key.clone()).collect();
        let permanent_back = PERMANENT.iter().all(|k| keys.contains(*k));
        let supervisors_up = snapshot
            .nodes()
            .iter()
            .filter(|n| n.kind != ChildKind::Worker)
            .all(|n| n.status == ChildStatus::Running);
        if permanent_back && supervisors_up && keys == running_workers {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tree did not settle:\n{}\nregistry: {keys:?}",
            snapshot.render()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let snapshot = root.snapshot().await.unwrap();
    // Each registry entry is the very actor the tree runs under that name, and it is alive.
    for entry in tree.registry.list() {
        let node = snapshot
            .nodes()
            .into_iter()
            .find(|n| n.kind == ChildKind::Worker && n.id.split('#').next() == Some(entry.key.as_str()))
            .unwrap_or_else(|| panic!("{} not in the tree", entry.key));
        assert_eq!(node.actor_id, Some(entry.actor.id().to_string()));
        assert_eq!(entry.actor.ractor_cell().get_status(), ActorStatus::Running);
    }
    // No two incarnations of one child were ever alive at once.
    assert_eq!(tree.overlaps.load(Ordering::SeqCst), 0);
    // No node is listed twice: paths and actor ids are unique.
    let nodes = snapshot.nodes();
    let paths: HashSet<&str> = nodes.iter().map(|n| n.path.as_str()).collect();
    assert_eq!(
        paths.len(),
        nodes.len(),
        "a path is listed twice:\n{}",
        snapshot.render()
    );
    let actors: Vec<&String> = nodes.iter().filter_map(|n| n.actor_id.as_ref()).collect();
    assert_eq!(actors.iter().collect::<HashSet<_>>().len(), actors.len());
    counts_agree(root.cell().unwrap()).await.unwrap();
    println!(
        "{kills} kills and {stops} normal stops ({supervisors_hit} on supervisors); {} restarts in the final tree",
        snapshot.total_restarts()
    );
    root.shutdown(Duration::from_secs(30)).await.unwrap();
}
