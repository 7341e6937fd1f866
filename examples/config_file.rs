//! The whole tree from a TOML file: `examples/tree.toml` (or the file given as the first argument) names the
//! tree, sets the root's and the pool's flags, declares a connection, an activator and two dynamic
//! supervisors; the code only registers the singleton kind the file refers to. Prints the running tree, then
//! what bad documents are told: each error names the file, the field's path and what was wrong.
//!
//! `cargo run --example config_file` (or `cargo run --example config_file -- path/to/tree.toml`)

use std::path::PathBuf;
use std::time::Duration;

use arbor::activator::{ActivatorEvent, Singleton};
use arbor::ractor::ActorProcessingErr;
use arbor::tree::{Tree, TreeConfig};

/// The singleton kind `invoicer` of the file.
#[derive(Clone)]
struct Invoicer;

impl Singleton for Invoicer {
    type State = ();

    fn init(&self) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn on_event(&self, _: &mut (), event: ActivatorEvent) -> Result<(), ActorProcessingErr> {
        if let ActivatorEvent::NowLeader { fencing_token } = event {
            println!("invoicer: leading (fencing token {fencing_token})");
        }
        Ok(())
    }
}

/// Bad documents, each with a different mistake.
const BROKEN: &[&str] = &[
    "name = \"billing\"\n[root]\nstrategy = \"one_for_two\"\n",
    "[pool]\nlingr = \"30s\"\n",
    "[[tunnels]]\nconnection = \"ledger\"\nsubscriber = \"log\"\n[tunnels.options]\ntunnel_id = \"t-1\"\n",
    "[[dynamic]]\nname = \"jobs\"\nperiod = \"soon\"\n",
];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = match std::env::args().nth(1) {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/tree.toml"),
    };
    println!("tree from {}", path.display());
    let tree = Tree::from_file(&path)?
        .singleton_kind("invoicer", Invoicer)
        .start()
        .await?;
    println!("{}", tree.snapshot().await?.render());
    tree.shutdown(Duration::from_secs(10)).await?;

    for text in BROKEN {
        match TreeConfig::from_toml(text) {
            Ok(_) => println!("unexpectedly fine: {text:?}"),
            Err(err) => println!("error: {err}"),
        }
    }
    Ok(())
}
