//! A cluster singleton (activator): two trees, "node-a" and "node-b", each run an activator for the singleton
//! `janitor`, and exactly one of them leads. The leader is killed: the next leader, with a higher fencing
//! token, is whichever candidate claims first (the killed activator is restarted by its tree at once and
//! campaigns again). Then the leader's whole tree shuts down, resigning at once: the other node takes over.
//!
//! `cargo run --example singleton` elects within the process (the local backend: the trees share the registry
//! that serves as the mutex). With `ETCD_ENDPOINTS` set it elects through etcd (TTL 2 s):
//! `ETCD_ENDPOINTS=http://127.0.0.1:2379 cargo run --example singleton --features etcd`

use std::time::Duration;

use arbor::activator::{ActivatorEvent, ActivatorInfo, ActivatorOptions, Role, Singleton};
use arbor::ractor::ActorProcessingErr;
use arbor::registry::Registry;
use arbor::tree::{BackendConfig, EtcdConfig, Tree, TreeHandle};

type Error = Box<dyn std::error::Error>;

/// The singleton's callbacks: every node runs them, only the leader gets `NowLeader`.
#[derive(Clone)]
struct Janitor {
    node: &'static str,
}

impl Singleton for Janitor {
    type State = ();

    fn init(&self) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn on_event(&self, _: &mut (), event: ActivatorEvent) -> Result<(), ActorProcessingErr> {
        match event {
            ActivatorEvent::NowLeader { fencing_token } => {
                println!("  {}: now leader, token {fencing_token}", self.node)
            }
            ActivatorEvent::Shutdown(reason) => println!("  {}: stopping ({reason}), resigning", self.node),
            ActivatorEvent::LostLeadership => println!("  {}: lost leadership", self.node),
            _ => {}
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let etcd = std::env::var("ETCD_ENDPOINTS").ok();
    if etcd.is_some() && !cfg!(feature = "etcd") {
        eprintln!("ETCD_ENDPOINTS is set, but this build has no etcd backend: run it with `--features etcd`");
        std::process::exit(2);
    }
    let election: Registry<ActivatorInfo> = Registry::new("election");
    let mut nodes = Vec::new();
    for node in ["node-a", "node-b"] {
        let mut tree = Tree::builder().name(node).activator_registry(election.clone());
        if let Some(endpoints) = &etcd {
            let mut config = EtcdConfig::new(endpoints.split(','), node);
            config.ttl = Some(Duration::from_secs(2)); // a killed leader is replaced within about 2 s
            tree = tree.activator_backend(BackendConfig::Etcd(config));
        }
        let tree = tree.start().await?;
        tree.start_activator(Janitor { node }, ActivatorOptions::new("janitor"))
            .await?;
        nodes.push(tree);
    }
    println!("backend: {}", if etcd.is_some() { "etcd" } else { "local" });

    let (first, token) = leader(&nodes, &election, 0).await?;
    println!(
        "killing {}'s activator (whichever candidate claims first leads next)",
        nodes[first].name()
    );
    nodes[first]
        .activator("janitor")
        .ok_or("no activator")?
        .actor()
        .kill();
    let (second, token) = leader(&nodes, &election, token).await?;

    println!(
        "shutting {} down (its activator resigns at once)",
        nodes[second].name()
    );
    nodes.remove(second).shutdown(Duration::from_secs(10)).await?;
    leader(&nodes, &election, token).await?;
    for tree in nodes {
        tree.shutdown(Duration::from_secs(10)).await?;
    }
    Ok(())
}

/// Waits (on the election's registry events) until an activator leads with a token above `above`; prints the
/// roles and returns the leader's index in `nodes` and its token.
async fn leader(
    nodes: &[TreeHandle],
    election: &Registry<ActivatorInfo>,
    above: u64,
) -> Result<(usize, u64), Error> {
    let mut changes = election.watch();
    loop {
        let (mut roles, mut leading) = (Vec::new(), None);
        for (i, tree) in nodes.iter().enumerate() {
            let Some(activator) = tree.activator("janitor") else {
                continue;
            };
            // a killed incarnation answers no more
            let Ok(info) = activator.dump().await else {
                continue;
            };
            match info.fencing_token {
                Some(token) if info.role == Role::Leader && token > above => {
                    leading = Some((i, token));
                    roles.push(format!("{} leader (token {token})", tree.name()));
                }
                _ => roles.push(format!("{} {}", tree.name(), info.role)),
            }
        }
        if let Some(found) = leading {
            println!("roles: {}", roles.join(", "));
            return Ok(found);
        }
        tokio::time::timeout(Duration::from_secs(10), changes.recv()).await??;
    }
}
