//! Embed a supervision tree in a tokio service: a registry, a rest_for_one pipeline, a dynamic pool of
//! workers started at runtime; crash one and watch it come back.
//!
//! `cargo run --example supervision_tree`

use std::time::Duration;

use arbor::registry::{Registry, RegistryEvent};
use arbor::supervisor::{
    ChildSpec, DynamicSupervisor, DynamicSupervisorOptions, Strategy, Supervisor, SupervisorOptions,
};
use ractor::{Actor, ActorProcessingErr, ActorRef};

/// A worker that registers itself under its name and crashes when told to.
struct Worker;

impl Actor for Worker {
    type Msg = ();
    type State = ();
    type Arguments = (String, Registry<&'static str>);

    async fn pre_start(
        &self,
        myself: ActorRef<()>,
        (name, registry): Self::Arguments,
    ) -> Result<(), ActorProcessingErr> {
        registry.register(name, &myself, "worker")?;
        Ok(())
    }

    async fn handle(&self, _: ActorRef<()>, _: (), _: &mut ()) -> Result<(), ActorProcessingErr> {
        Err("told to crash".into())
    }
}

fn worker(name: &str, registry: &Registry<&'static str>) -> ChildSpec {
    let (name, registry) = (name.to_string(), registry.clone());
    ChildSpec::actor(name.clone(), move || (Worker, (name.clone(), registry.clone()))).into()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let registry: Registry<&'static str> = Registry::new("example");
    let pipeline = Supervisor::child_spec(
        "pipeline",
        SupervisorOptions::default().strategy(Strategy::RestForOne),
        vec![worker("source", &registry), worker("sink", &registry)],
    );
    let pool = DynamicSupervisor::child_spec("pool", DynamicSupervisorOptions::default().max_children(100));
    let root = Supervisor::builder()
        .children([registry.child_spec("registry"), pipeline, pool])
        .start()
        .await?;

    let pool = root.child_dynamic_supervisor("pool").await?;
    for i in 0..3 {
        pool.start_child(worker(&format!("job-{i}"), &registry)).await?;
    }
    println!("{}", root.snapshot().await?.render());

    let mut changes = registry.watch();
    let source = registry.lookup_typed::<()>("source")?; // an arbor TypedActor<()>
    source.cast(())?;
    // rest_for_one: source crashed, so sink is stopped and both come back, in order
    let mut back = Vec::new();
    while back.len() < 2 {
        if let RegistryEvent::Registered(entry) =
            tokio::time::timeout(Duration::from_secs(5), changes.recv()).await??
        {
            back.push(entry.key);
        }
    }
    println!("came back: {}", back.join(", "));
    println!("{}", root.snapshot().await?.render());
    root.shutdown(Duration::from_secs(5)).await?;
    Ok(())
}
