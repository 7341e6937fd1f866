//! The actors of arbor: OTP-style supervisors, a registry, and (in later modules) the connection, tunnel and
//! activator actors that services supervise.
//!
//! Every actor comes with a cloneable handle that hides its ractor message type, and a [`ChildSpec`] so it
//! can run under a [`Supervisor`].
//!
//! [`ChildSpec`]: supervisor::ChildSpec
//! [`Supervisor`]: supervisor::Supervisor

/// The ractor version arbor is built on, so users build their actors against the same one.
pub use ractor;

pub mod activator;
pub mod connection;
pub mod registry;
pub mod supervisor;
pub mod tunnel;
