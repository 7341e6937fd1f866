//! Introspection of a running tree over gRPC (feature `introspection`): the server of `arbor.inspect.v1`
//! (`proto/arbor/inspect/v1/inspect.proto`), its client, and an optional Prometheus exporter.
//!
//! - **GetTree**: the tree's snapshot, as [`TreeHandle::snapshot`](crate::tree::TreeHandle::snapshot) gives it.
//! - **GetNode**: one node (by path, e.g. `orders/tunnels`) with what a snapshot leaves out: its child spec
//!   (restart type, shutdown, kind, significance, backoff) and its recent lifecycle history — exits with their
//!   reasons, restarts, failed restarts — with times.
//! - **ListRegistry**: the entries of the tree's registries whose key starts with a prefix; tunnel channels'
//!   entries carry their progress (delivered, checkpoint, lag) typed.
//! - **WatchEvents**: the tree's [`TreeEvent`](crate::tree::TreeEvent)s as typed messages with sequence numbers.
//!   The server holds the latest ones (`replay_events`), so a watcher that reconnects resumes after the last
//!   sequence it saw; one that fell behind, or asks for events no longer held, is told with a `Lagged` message.
//!
//! Every server also answers gRPC health and reflection; with a token set, every call (health and reflection
//! included) must carry it, as `authorization: Bearer <token>` or `api-key: <token>`. It listens on
//! `127.0.0.1:50052` unless told otherwise, and can serve TLS.
//!
//! # Starting it
//! With the tree, as its supervised child — the root's last child, so it starts once everything it shows is up
//! and stops first at shutdown:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use arbor::introspect::{IntrospectionOptions, PrometheusOptions};
//! use arbor::tree::Tree;
//!
//! let tree = Tree::builder()
//!     .name("orders")
//!     .introspection(
//!         IntrospectionOptions::default()
//!             .listen("127.0.0.1:50052".parse()?)
//!             .token_file("/etc/arbor/inspect.tokens")
//!             .prometheus(PrometheusOptions::default()), // GET http://127.0.0.1:9464/metrics
//!     )
//!     .start()
//!     .await?;
//! println!("arbor top --addr {}", tree.introspection_addrs().expect("started").grpc);
//! # Ok(()) }
//! ```
//!
//! or from the tree's TOML file (`[introspection]`, see [`IntrospectionOptions`]); or on its own for a tree
//! started without it, with [`IntrospectionServer::start`].
//!
//! # History
//! Supervisors keep a restart count and the last exit only. The server's journal subscribes to the tree's events
//! when the tree starts (or when [`IntrospectionServer::start`] is called) and keeps, per node, the last
//! `history_per_node` lifecycle records, for at most 4,096 nodes (the least recently changed are forgotten
//! first). Under a tree, the journal outlives restarts of the server child, so history and sequence numbers
//! continue. Nodes under supervisors that publish no events to the tree (inside the connection pool, inside a
//! tunnel worker) have their restart count and last exit, but no history.
//!
//! # Prometheus
//! With [`PrometheusOptions`], the server installs the process's `metrics` recorder (metrics-exporter-prometheus;
//! once per process, shared by every tree in it; [`IntrospectionError::RecorderTaken`] if the application
//! installed another) and serves the text format at `GET /metrics` on a listener of its own (default
//! `127.0.0.1:9464`), with the gRPC listener's TLS and tokens. The metrics are listed in
//! [`tree::events`](crate::tree::events).
//!
//! # The client
//! [`InspectClient`] is what `arbor inspect` and `arbor top` use; [`describe_event`] and [`event_json`] are how
//! they show an event.

pub mod client;
mod convert;
mod journal;
pub mod options;
mod prometheus;
mod server;
mod service;

use std::net::SocketAddr;

pub use client::{
    describe_event, event_json, rfc3339_ms, ClientError, ClientOptions, InspectClient, TreeView, WatchFrom,
};
pub use convert::snapshot as snapshot_from_wire;
pub use options::{IntrospectionOptions, PrometheusOptions};
pub use server::{IntrospectionAddrs, IntrospectionServer, RunningIntrospection};

pub(crate) use journal::Journal;

use crate::serving::SecurityError;

/// The id of the introspection server among the root's children.
pub const CHILD_ID: &str = "introspection";

/// Why the introspection server could not start or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IntrospectionError {
    /// An option is out of range.
    #[error("{field}: {reason}")]
    InvalidOptions {
        /// The field (`introspection.history_per_node`).
        field: String,
        /// Why.
        reason: String,
    },
    /// A listen address could not be bound.
    #[error("cannot listen on {addr} ({what})")]
    Bind {
        /// `introspection` or `prometheus`.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A TLS file or the token file is unusable.
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// The reflection service could not be built.
    #[error("gRPC reflection setup failed")]
    Reflection(#[source] tonic_reflection::server::Error),
    /// The HTTP/2 server failed.
    #[error("the introspection server failed")]
    Transport(#[source] crate::serving::ServingFailed),
    /// Another `metrics` recorder is installed in this process: the Prometheus exporter cannot install its own.
    #[error(
        "another metrics recorder is installed in this process; turn the Prometheus exporter off \
         (introspection.prometheus) or export through that recorder"
    )]
    RecorderTaken,
}
