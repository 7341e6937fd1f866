//! The smallest embedding: a tree in a tokio `main` with one actor of your own (a plain ractor actor), a call
//! to it through a stable handle, the live tree printed, a graceful shutdown. The README's "Embedding" section
//! shows this `main` verbatim (`tests/readme_example.rs` keeps the two equal).
//!
//! `cargo run --example quickstart`

use std::time::Duration;

use arbor::supervisor::ChildSpec;
use arbor::tree::Tree;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tree = Tree::builder()
        .name("quickstart")
        .child(ChildSpec::actor("greeter", || (Greeter, "Hello"))) // any ractor Actor of yours
        .start()
        .await?;

    // a stable handle: it follows the child across restarts
    let greeter = tree.root().child_ref::<Greet>("greeter").await?;
    let greeting = greeter
        .call(|reply| Greet("arbor".into(), reply), Duration::from_secs(1))
        .await?;
    println!("{greeting}\n");

    // the live tree: the tree's own parts (registries, pool, tunnels, activators), then your children
    println!("{}", tree.snapshot().await?.render());
    tree.shutdown(Duration::from_secs(5)).await?; // your children first, the registries last
    Ok(())
}

// The application's own actor: plain ractor, nothing of arbor's.

use arbor::ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

/// Asks the greeter to greet someone; the reply is the greeting.
struct Greet(String, RpcReplyPort<String>);

struct Greeter;

impl Actor for Greeter {
    type Msg = Greet;
    type State = &'static str;
    type Arguments = &'static str;

    async fn pre_start(
        &self,
        _: ActorRef<Greet>,
        salutation: &'static str,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(salutation)
    }

    async fn handle(
        &self,
        _: ActorRef<Greet>,
        Greet(name, reply): Greet,
        salutation: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _ = reply.send(format!("{salutation}, {name}!"));
        Ok(())
    }
}
