//! The actors of arbor: OTP-style supervisors, a registry, and the connection, activator and tunnel actors
//! that services supervise.
//!
//! # Features
//!
//! | feature | default | what it adds | pulls in |
//! |---|---|---|---|
//! | *(none)* | | [`supervisor`], [`registry`], [`actor`] handles, the tree snapshot | ractor, tokio, tracing, thiserror, serde, futures, rand, humantime |
//! | `connection` | yes | `connection`: the connection actor, its channel, the pool, auth | tonic (client), tonic-health, hyper, h2, rustls, tokio-rustls |
//! | `activator` | yes | `activator`: cluster singletons, in-process backend | nothing more |
//! | `etcd` | no | the activator's etcd backend (implies `activator`) | etcd-client (needs `protoc` to build) |
//! | `tunnel` | yes | `tunnel`: tunnel workers and channel actors (implies `connection`) | arbor-proto (prost; codegen in pure Rust, no `protoc`) |
//!
//! Every actor comes with a cloneable handle that hides its ractor message type, and a [`ChildSpec`] so it
//! can run under a [`Supervisor`].
//!
//! [`ChildSpec`]: supervisor::ChildSpec
//! [`Supervisor`]: supervisor::Supervisor

#![warn(missing_docs, missing_debug_implementations)]

/// The ractor version arbor is built on, so users build their actors against the same one.
pub use ractor;

#[cfg(feature = "activator")]
pub mod activator;
pub mod actor;
pub mod backoff;
#[cfg(feature = "connection")]
pub mod connection;
pub mod registry;
pub mod report;
pub mod supervisor;
#[cfg(feature = "tunnel")]
pub mod tunnel;
