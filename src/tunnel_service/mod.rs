//! The tunnel service: arbor's own change-stream service, the server side of `arbor.tunnel.v1`.
//!
//! A *tunnel* is a change stream split into a fixed set of *channels*. Producers append keyed records
//! (routed to a stream channel by key hash, or to a named channel); consumers connect, heartbeat, and are
//! given channels to read in order and checkpoint. The protocol, with its state machine, version rules and
//! error kinds, is documented in `proto/arbor/tunnel/v1/tunnel.proto` (crate `arbor-proto`).
//!
//! # Guarantees
//! - **Acknowledged means stored.** An Append or Checkpoint answered OK is in the store; with a data directory
//!   it is fsynced and survives SIGKILL and restart ([`store`] documents the engine, its fsync policy and group
//!   commit). Readers see a record only once its append was acknowledged, so nothing read can be lost; an
//!   Append whose client gave up is still published once stored.
//! - **Stored once.** An idempotent producer (`producer_id`, `producer_sequence`) retrying a batch gets the
//!   original positions (`duplicate`), across restarts too: its last batch is stored with its records.
//! - **Versions only grow**, across restarts of a durable store too (a start epoch, see [`store`]).
//! - **Order.** Records routed to one channel keep their request order; sequence numbers are consecutive.
//! - **One owner per channel.** A channel moves OPEN → CLOSING on its old owner and is given to the next only
//!   after the old one reported CLOSE, or after the closing timeout ([`assign`]). ReadRecords, GetCheckpoint
//!   and Checkpoint are fenced by (client id, session token, channel version) under the tunnel's lock: a zombie
//!   owner gets the ownership-lost kind and cannot move a checkpoint.
//! - **A session is its secret.** The client id is public (DescribeTunnel shows it); ConnectTunnel also gives
//!   the session an unguessable token that every session call must carry (compared in constant time, never
//!   logged), so no client can act for another's session.
//! - **Roles.** With api keys, each key holds roles (admin, produce, consume; [`crate::serving::Role`]) and a
//!   call outside them is PERMISSION_DENIED naming the role.
//! - **A waiting read learns at once.** A long-polling ReadRecords ends as soon as its lease ends (ownership
//!   lost) or its channel is sealed at its position (finished), not at the end of its wait.
//! - **Balanced and sticky.** Channels spread over live clients with max − min ≤ 1 once moves settle; a
//!   rebalance moves as few as it can. A client whose heartbeats stop for its timeout is expired and its
//!   channels are reassigned; Shutdown releases them at once.
//! - **Parents first.** A stream channel with a parent base channel is not assigned before the parent is
//!   TERMINATED (sealed, read to its end, checkpointed and reported).
//! - **Retention never skips silently.** Records are trimmed by age or size per tunnel; reading or
//!   checkpointing below the retained range is the checkpoint-out-of-range kind.
//!
//! # Example
//! ```
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use arbor::tunnel_service::{ServerOptions, StoreOptions, TunnelServer, TunnelStore};
//!
//! // StoreOptions::durable(dir) to persist; recovery and the final flush run on blocking threads.
//! let store = TunnelStore::open_async(StoreOptions::in_memory()).await?;
//! let server = TunnelServer::start(store.clone(), ServerOptions::default().listen("127.0.0.1:0".parse()?)).await?;
//! println!("tunnel service on {}", server.local_addr());
//! server.stop(std::time::Duration::from_secs(5)).await?;
//! store.close_async().await?;
//! # Ok(()) }
//! ```
//!
//! Under a supervisor, [`TunnelServer::child_spec`] starts the server in tree order and restarts it if it
//! fails; the store is opened once outside and outlives the restarts.
//!
//! # Observability
//! `tracing` events: every assignment change (`tunnel channel assignment changed`, info, with tunnel, channel,
//! status, version, owner and reason: `rebalance`, `released`, `terminated`, `client-expired`,
//! `client-shutdown`, `closing-timeout`), client connects and shutdowns (info), expiries (warn), tunnel
//! creation, deletion and seals (info), and checkpoints and retention trims (debug, as they come at the rate
//! of the traffic). [`TunnelStore::assignment_history`] keeps the recent assignment changes per tunnel;
//! DescribeTunnel shows owners, versions, positions and lag.
//!
//! # Layout
//! [`client`] (a typed admin and producer client), [`grpc`] (thin: validate, call the store, map errors), [`validate`] (each check names its field), [`store`]
//! (tunnels, channels, consumers and the [`Engine`](store::Engine) trait with memory and fjall engines),
//! [`assign`] (balanced sticky assignment as a pure function), [`error`] (one error enum, one
//! `From<ServiceError> for Status`), [`status_kind`] (the error kind on the framework's own statuses too),
//! [`request_cap`] (only Append may be as large as the decode limit),
//! [`server`] (tonic server with health, reflection, TLS, api keys, connection and request bounds).

pub mod assign;
pub mod client;
pub mod config;
pub mod error;
pub mod grpc;
pub mod request_cap;
pub mod server;
pub mod status_kind;
pub mod store;
pub mod validate;

pub use self::client::{TunnelClient, TunnelClientError};
pub use self::config::{Limits, StoreOptions};
pub use self::error::{ServiceError, StoreError};
pub use self::server::{
    ApiKeys, ConnectionLimits, Role, RunningServer, ServerError, ServerOptions, TlsFiles, TunnelServer,
};
pub use self::store::{AssignmentEvent, AssignmentReason, TunnelStore};
