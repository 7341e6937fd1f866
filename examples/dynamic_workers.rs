//! Workers started at runtime under a named dynamic supervisor of the tree, each registering itself in a typed
//! registry of the application's own. One is killed: its registry entry vanishes with it, the supervisor
//! restarts it (children are permanent by default; `.restart(Restart::Temporary)` would leave it down) and the
//! new incarnation registers again. Prints the tree events this caused, waiting on events, never sleeping.
//!
//! `cargo run --example dynamic_workers`

use std::time::Duration;

use arbor::ractor::{Actor, ActorProcessingErr, ActorRef};
use arbor::registry::{Registry, RegistryEvent};
use arbor::supervisor::{ChildSpec, SupervisorEvent};
use arbor::tree::{DynamicConfig, Tree, TreeEvent};
use tokio::sync::broadcast;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

/// What a worker publishes about itself in the registry.
#[derive(Debug, Clone)]
struct Shard {
    shard: u32,
}

/// A worker that registers itself as `worker/<shard>` when it starts.
struct Worker;

impl Actor for Worker {
    type Msg = ();
    type State = ();
    type Arguments = (u32, Registry<Shard>);

    async fn pre_start(
        &self,
        me: ActorRef<()>,
        (shard, workers): Self::Arguments,
    ) -> Result<(), ActorProcessingErr> {
        workers.register(format!("worker/{shard}"), &me, Shard { shard })?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let workers: Registry<Shard> = Registry::new("workers");
    let tree = Tree::builder()
        .name("shop")
        .child(workers.child_spec("workers-registry")) // its watcher drops the entries of actors that exit
        .dynamic(DynamicConfig::new("workers"))
        .start()
        .await?;
    let mut events = tree.subscribe_events();

    let mut handles = Vec::new();
    for shard in 0..3 {
        let registry = workers.clone();
        let spec = ChildSpec::actor(format!("worker-{shard}"), move || {
            (Worker, (shard, registry.clone()))
        });
        handles.push(tree.start_child("workers", spec).await?); // a ChildRef<()>: follows restarts
    }
    print_events_until(
        &mut events,
        |e| matches!(e, SupervisorEvent::Started { child, .. } if child.starts_with("worker-2#")),
    )
    .await?;
    print_registry(&workers);

    println!("\nkilling worker-1");
    let mut changes = workers.watch();
    handles[1].kill()?;
    loop {
        match timeout(WAIT, changes.recv()).await?? {
            change @ RegistryEvent::Registered(_) => {
                println!("registry: {change}");
                break;
            }
            change => println!("registry: {change}"),
        }
    }
    print_events_until(&mut events, |e| matches!(e, SupervisorEvent::Restarted { .. })).await?;
    print_registry(&workers);
    if let Some(node) = tree.snapshot().await?.find("workers") {
        println!("\n{}", node.render());
    }
    tree.shutdown(Duration::from_secs(5)).await?;
    Ok(())
}

/// Prints the tree's supervisor events until (and including) the first that `last` picks.
async fn print_events_until(
    events: &mut broadcast::Receiver<TreeEvent>,
    last: impl Fn(&SupervisorEvent) -> bool,
) -> Result<(), Box<dyn std::error::Error>> {
    loop {
        let TreeEvent::Supervisor(event) = timeout(WAIT, events.recv()).await?? else {
            continue;
        };
        println!("event: {event}");
        if last(&event) {
            return Ok(());
        }
    }
}

fn print_registry(workers: &Registry<Shard>) {
    println!("registry {}:", workers.name());
    for entry in workers.list() {
        println!(
            "  {} -> actor {}, shard {}",
            entry.key,
            entry.actor.id(),
            entry.value.shard
        );
    }
}
