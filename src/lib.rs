//! arbor: Erlang/OTP-grade supervision trees for tokio services, on [ractor].
//!
//! This crate is the facade: it re-exports the actors of [`arbor_actors`] and holds the `arbor` command line's
//! demo. See the crate README for a tour and `ARCHITECTURE.md` for the codemap.
//!
//! With the feature `tunnel-service` (on through the default feature `cli`), `tunnel_service` is arbor's own
//! tunnel service (server, storage, `arbor serve`); `default-features = false` leaves out the storage engine and
//! the gRPC server.
//!
//! ```
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use arbor::supervisor::{ChildSpec, Supervisor};
//! use arbor::registry::Registry;
//! # use ractor::{Actor, ActorProcessingErr, ActorRef};
//! # struct Worker;
//! # impl Actor for Worker {
//! #     type Msg = (); type State = (); type Arguments = ();
//! #     async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> { Ok(()) }
//! # }
//! let registry: Registry<String> = Registry::new("app");
//! let root = Supervisor::builder()
//!     .child(registry.child_spec("registry"))
//!     .child(ChildSpec::actor("worker", || (Worker, ())))
//!     .start()
//!     .await?;
//! println!("{}", root.snapshot().await?.render());
//! root.shutdown(Duration::from_secs(5)).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs, missing_debug_implementations)]

pub use arbor_actors::{ractor, registry, supervisor};

#[cfg(feature = "cli")]
pub mod demo;

#[cfg(feature = "tree")]
pub mod tree;

#[cfg(any(feature = "tunnel-service", feature = "introspection"))]
pub mod serving;

#[cfg(feature = "introspection")]
pub mod introspect;

#[cfg(feature = "cli")]
pub mod inspect;
#[cfg(feature = "cli")]
pub mod top;

#[cfg(any(feature = "tunnel-service", feature = "introspection"))]
mod closable;
#[cfg(any(feature = "tunnel-service", feature = "introspection"))]
pub mod connection_limits;
#[cfg(feature = "tunnel-service")]
pub mod serve;
#[cfg(feature = "cli")]
pub mod tunnel_admin;
#[cfg(feature = "tunnel-service")]
pub mod tunnel_service;

#[cfg(feature = "activator")]
#[doc(inline)]
pub use arbor_actors::activator;

#[cfg(feature = "connection")]
#[doc(inline)]
pub use arbor_actors::connection;

#[cfg(feature = "tunnel")]
#[doc(inline)]
pub use arbor_actors::tunnel;
