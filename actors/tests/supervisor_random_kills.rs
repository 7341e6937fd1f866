//! 1,000 random kills across a 3-level tree: afterwards every permanent child runs again and every registry
//! entry points at a live actor.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use arbor_actors::registry::Registry;
use arbor_actors::supervisor::{
    ChildKind, ChildSpec, ChildStatus, DynamicSupervisor, DynamicSupervisorHandle, DynamicSupervisorOptions,
    Strategy, Supervisor, SupervisorHandle, SupervisorOptions,
};
use common::cell_of;
use futures::future::BoxFuture;
use futures::FutureExt;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, ActorStatus};
use rand::seq::IndexedRandom;

/// A worker that registers itself under its name when it starts.
struct Registered;

impl Actor for Registered {
    type Msg = ();
    type State = ();
    type Arguments = (String, Registry<()>);

    async fn pre_start(
        &self,
        myself: ActorRef<()>,
        (name, registry): Self::Arguments,
    ) -> Result<(), ActorProcessingErr> {
        registry.register(name, myself.get_cell(), ())?;
        Ok(())
    }
}

fn worker(name: &str, registry: &Registry<()>) -> ChildSpec {
    let (name, registry) = (name.to_string(), registry.clone());
    ChildSpec::actor(name.clone(), move || {
        (Registered, (name.clone(), registry.clone()))
    })
    .into()
}

/// Every actor below `sup`, with its kind.
fn actors_below(sup: ActorCell) -> BoxFuture<'static, Vec<(ActorCell, ChildKind)>> {
    async move {
        let Ok(children) = SupervisorHandle::from_cell(sup).unwrap().which_children().await else {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_random_kills_leave_a_whole_tree_and_a_true_registry() {
    let registry: Registry<()> = Registry::new("random-kills");
    let lenient = SupervisorOptions::default().intensity(100_000, Duration::from_secs(60));
    let level2 = Supervisor::child_spec(
        "l2",
        lenient.strategy(Strategy::RestForOne),
        vec![
            worker("w4", &registry),
            worker("w5", &registry),
            worker("w6", &registry),
        ],
    );
    let l1a = Supervisor::child_spec(
        "l1a",
        lenient.strategy(Strategy::OneForAll),
        vec![
            worker("w1", &registry),
            worker("w2", &registry),
            level2,
            worker("w3", &registry),
        ],
    );
    let dynamic = DynamicSupervisor::child_spec(
        "dyn",
        DynamicSupervisorOptions::default().intensity(100_000, Duration::from_secs(60)),
    );
    let l1b = Supervisor::child_spec(
        "l1b",
        lenient,
        vec![worker("w7", &registry), dynamic, worker("w8", &registry)],
    );
    let root = Supervisor::start(lenient, vec![registry.child_spec("registry"), l1a, l1b])
        .await
        .unwrap();
    let l1b_handle = SupervisorHandle::from_cell(cell_of(&root, "l1b").await).unwrap();
    let dyn_handle = DynamicSupervisorHandle::from_cell(cell_of(&l1b_handle, "dyn").await).unwrap();
    let mut expected: BTreeSet<String> = (1..=8).map(|i| format!("w{i}")).collect();
    for i in 0..5 {
        let name = format!("job{i}");
        dyn_handle.start_child(worker(&name, &registry)).await.unwrap();
        expected.insert(name);
    }

    let mut kills = 0;
    let mut supervisors_killed = 0;
    while kills < 1_000 {
        let actors = actors_below(root.cell().unwrap()).await;
        let Some((victim, kind)) = actors.choose(&mut rand::rng()).cloned() else {
            continue;
        };
        victim.kill();
        kills += 1;
        if kind != ChildKind::Worker {
            supervisors_killed += 1;
        }
    }
    assert!(supervisors_killed > 0, "the kills reached supervisors too");

    // Settle: wait until the tree is whole again (bounded).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let snapshot = root.snapshot().await.unwrap();
        let whole = snapshot
            .nodes()
            .iter()
            .skip(1)
            .all(|n| n.status == ChildStatus::Running);
        let workers: BTreeSet<String> = snapshot
            .nodes()
            .iter()
            .filter(|n| n.kind == ChildKind::Worker && n.id != "registry")
            .map(|n| n.id.split('#').next().unwrap().to_string())
            .collect();
        let keys: BTreeSet<String> = registry.list().into_iter().map(|e| e.key).collect();
        let all_alive = registry
            .list()
            .iter()
            .all(|e| e.actor.get_status() == ActorStatus::Running);
        // The static workers must all be back. The dynamic supervisor's jobs are permanent too, but a restart
        // of the dynamic supervisor itself starts it empty (as Elixir's does), so they may be gone for good.
        let static_back = expected
            .iter()
            .filter(|k| k.starts_with('w'))
            .all(|k| keys.contains(k));
        if whole && all_alive && static_back && keys == workers {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tree did not settle: {}\nregistry: {keys:?}",
            snapshot.render()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Each registry entry is the very actor the tree runs under that name.
    let snapshot = root.snapshot().await.unwrap();
    for entry in registry.list() {
        let node = snapshot
            .nodes()
            .into_iter()
            .find(|n| n.kind == ChildKind::Worker && n.id.split('#').next() == Some(entry.key.as_str()))
            .unwrap_or_else(|| panic!("{} not in the tree", entry.key));
        assert_eq!(node.actor_id, Some(entry.actor.get_id().to_string()));
    }
    root.shutdown(Duration::from_secs(30)).await.unwrap();
}
