//! The tree: a whole supervision tree for a service — registries, a connection pool, tunnel workers,
//! activators and the application's own children — started from a builder or one TOML file, driven through
//! one cloneable [`TreeHandle`].
//!
//! ```text
//! <name> (root, one_for_one by default)
//! ├─ registry        one_for_one: the watchers of the app, tunnels and activators registries
//! ├─ connections     the connection pool (one_for_all: its registry, connections, pool actor)
//! ├─ tunnels         dynamic supervisor of tunnel workers (each with its channel actors)
//! ├─ activators      dynamic supervisor of activators
//! ├─ <your children> the builder's child specs, in order
//! ├─ <your dynamic>  named dynamic supervisors
//! └─ introspection   the introspection server, when enabled (feature `introspection`)
//! ```
//!
//! Shutdown runs in reverse: introspection first, then your children, activators (leadership resigned),
//! tunnel workers (checkpoints flushed, sessions shut down) while the connections they need are still up,
//! the pool, and the registries last.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use arbor::tree::{DynamicConfig, Tree};
//! use arbor::supervisor::ChildSpec;
//! # use arbor::ractor::{Actor, ActorProcessingErr, ActorRef};
//! # struct Job;
//! # impl Actor for Job {
//! #     type Msg = (); type State = (); type Arguments = u64;
//! #     async fn pre_start(&self, _: ActorRef<()>, _: u64) -> Result<(), ActorProcessingErr> { Ok(()) }
//! # }
//!
//! let tree = Tree::builder().name("orders").dynamic(DynamicConfig::new("jobs")).start().await?;
//! let job = tree.start_child("jobs", ChildSpec::actor("job", || (Job, 7))).await?;
//! let mut events = tree.subscribe_events();       // starts, exits, restarts, reconnects, checkpoints...
//! println!("{}", tree.snapshot().await?.render());
//! tree.shutdown(Duration::from_secs(30)).await?;
//! # let _ = (job, events.try_recv());
//! # Ok(()) }
//! ```
//!
//! The same tree from a file: [`Tree::from_file`] (see [`config`] for the format).

pub mod builder;
pub mod config;
pub mod events;
pub mod handle;
pub mod metrics;

use std::path::Path;

pub use builder::{DiscardSubscriber, LogSubscriber, TreeBuilder};
pub use config::{
    ActivatorsConfig, BackendConfig, ConfigError, DynamicConfig, EtcdConfig, SingletonConfig, TreeConfig,
    TunnelConfig,
};
pub use events::TreeEvent;
pub use handle::{RegistryRow, TreeHandle, TreeTunnel, TunnelTarget};
pub use metrics::{record_channel_metrics, LABEL_BUDGET};

/// Starting trees.
#[derive(Debug)]
pub struct Tree;

impl Tree {
    /// A builder with every default (an empty tree named `arbor`).
    pub fn builder() -> TreeBuilder {
        TreeBuilder::from_config(TreeConfig::default())
    }

    /// A builder holding the configuration of a TOML file; register subscriber and singleton kinds and add
    /// child specs, then `start`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<TreeBuilder, ConfigError> {
        Ok(TreeBuilder::from_config(TreeConfig::from_file(path)?))
    }

    /// A builder holding `config`.
    pub fn from_config(config: TreeConfig) -> TreeBuilder {
        TreeBuilder::from_config(config)
    }
}

/// What went wrong building or driving a tree.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TreeError {
    /// The configuration does not hold.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A configured tunnel or activator names a kind nobody registered.
    #[error("{field}: no {kind:?} kind is registered (known: {known:?})")]
    UnknownKind {
        /// The field (`tunnels[0].subscriber`).
        field: String,
        /// The kind asked for.
        kind: String,
        /// The kinds registered.
        known: Vec<String>,
    },
    /// No connection has this name.
    #[error("no connection named {name:?} (known: {known:?})")]
    UnknownConnection {
        /// The name asked for.
        name: String,
        /// The names configured.
        known: Vec<String>,
    },
    /// No dynamic supervisor has this name.
    #[error("no dynamic supervisor named {name:?} (known: {known:?})")]
    UnknownSupervisor {
        /// The name asked for.
        name: String,
        /// The names configured.
        known: Vec<String>,
    },
    /// No tunnel worker with this id was started through the tree.
    #[error("no tunnel worker for {tunnel_id:?} in this tree")]
    UnknownTunnel {
        /// The tunnel.
        tunnel_id: String,
    },
    /// No activator of this name runs under the tree (never started, or stopped; or, after a start, a foreign
    /// actor under its id).
    #[error("no activator named {name:?} runs in this tree")]
    UnknownActivator {
        /// The singleton's name.
        name: String,
    },
    /// A configured backend needs a feature this build lacks.
    #[error("{field} needs arbor's `{feature}` feature")]
    FeatureMissing {
        /// The field.
        field: String,
        /// The cargo feature.
        feature: &'static str,
    },
    /// A supervisor of the tree refused or failed.
    #[error(transparent)]
    Supervisor(#[from] arbor_actors::supervisor::SupervisorError),
    /// The connection pool refused.
    #[error(transparent)]
    Pool(#[from] arbor_actors::connection::PoolError),
    /// A tunnel worker refused or failed.
    #[error(transparent)]
    Tunnel(#[from] arbor_actors::tunnel::TunnelError),
    /// An activator refused or failed.
    #[error(transparent)]
    Activator(#[from] arbor_actors::activator::ActivatorError),
}
