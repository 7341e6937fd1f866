//! arbor: Erlang/OTP-grade supervision trees for tokio services, on [ractor](https://docs.rs/ractor/0.16).
//!
//! A [`Tree`](crate::tree::Tree) is the whole supervision tree of a service: its registries, a pool of gRPC
//! connections, tunnel workers, cluster singletons, your own actors and named dynamic supervisors, started in
//! order and shut down in reverse. The same tree can come from one TOML file (`Tree::from_file`).
//!
//! ```
//! use std::time::Duration;
//!
//! use arbor::supervisor::ChildSpec;
//! use arbor::tree::Tree;
//! # use arbor::ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
//! # struct Greet(String, RpcReplyPort<String>);
//! # struct Greeter;
//! # impl Actor for Greeter {
//! #     type Msg = Greet;
//! #     type State = &'static str;
//! #     type Arguments = &'static str;
//! #     async fn pre_start(&self, _: ActorRef<Greet>, s: &'static str) -> Result<Self::State, ActorProcessingErr> {
//! #         Ok(s)
//! #     }
//! #     async fn handle(&self, _: ActorRef<Greet>, Greet(name, reply): Greet, s: &mut Self::State)
//! #         -> Result<(), ActorProcessingErr> {
//! #         let _ = reply.send(format!("{s}, {name}!"));
//! #         Ok(())
//! #     }
//! # }
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tree = Tree::builder()
//!     .name("quickstart")
//!     .child(ChildSpec::actor("greeter", || (Greeter, "Hello"))) // any ractor Actor of yours
//!     .start()
//!     .await?;
//!
//! // a stable handle: it follows the child across restarts
//! let greeter = tree.root().child_ref::<Greet>("greeter").await?;
//! let greeting = greeter
//!     .call(|reply| Greet("arbor".into(), reply), Duration::from_secs(1))
//!     .await?;
//! assert_eq!(greeting, "Hello, arbor!");
//!
//! println!("{}", tree.snapshot().await?.render());
//! tree.shutdown(Duration::from_secs(5)).await?; // your children first, the registries last
//! # Ok(()) }
//! ```
//!
//! An embedder takes the features it uses: `arbor = { version = "0.1", default-features = false, features =
//! ["tree"] }` for the tree (supervision, registries, connections, activators, tunnel workers) without the
//! `arbor` command line and its terminal UI; `default-features = false` alone for supervision and registries
//! only. This crate re-exports the actors of [`arbor_actors`]; `tunnel_service` (feature `tunnel-service`) is
//! arbor's own tunnel service and `introspect` (feature `introspection`) the tree's introspection server. See
//! the README for a tour and `ARCHITECTURE.md` for the codemap.

#![warn(missing_docs, missing_debug_implementations)]

pub use arbor_actors::{actor, ractor, registry, supervisor};

#[cfg(feature = "cli")]
#[doc(hidden)] // the `arbor` command line's, not a library API
pub mod demo;

#[cfg(feature = "tree")]
pub mod tree;

#[cfg(any(feature = "tunnel-service", feature = "introspection"))]
pub mod serving;

#[cfg(feature = "introspection")]
pub mod introspect;

#[cfg(feature = "cli")]
#[doc(hidden)] // the `arbor` command line's, not a library API
pub mod inspect;
#[cfg(feature = "cli")]
#[doc(hidden)] // the `arbor` command line's, not a library API
pub mod top;

#[cfg(any(feature = "tunnel-service", feature = "introspection"))]
mod closable;
#[cfg(any(feature = "tunnel-service", feature = "introspection"))]
pub mod connection_limits;
#[cfg(any(feature = "introspection", feature = "tunnel-service"))]
pub(crate) mod dial;
#[cfg(feature = "tunnel-service")]
#[doc(hidden)] // the `arbor` command line's, not a library API
pub mod serve;
#[cfg(feature = "cli")]
#[doc(hidden)] // the `arbor` command line's, not a library API
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
