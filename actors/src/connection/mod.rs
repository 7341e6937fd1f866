//! Connections: an actor per gRPC target that owns a tonic `Channel`, with gRPC's connectivity states, the
//! connection-backoff schedule, health-checked attempts, loss detection, connection strings, auth, and a
//! refcounted pool.
//!
//! # Why
//!
//! tonic has no connectivity-state API and no reconnect backoff: a `Channel` re-dials on every call, so calls
//! against a refusing server become a connect storm, and a frozen server hangs calls forever unless keepalive is
//! on. A connect alone proves nothing (a frozen server accepts it). This module puts all of that in one actor.
//!
//! # States
//!
//! [`ConnectivityState`] follows gRPC: `IDLE -> CONNECTING -> READY`, a failed attempt goes to
//! `TRANSIENT_FAILURE` and back to `CONNECTING` only after the backoff wait ([`BackoffConfig`], gRPC's defaults
//! 1 s x1.6 +-20 % up to 120 s), a lost READY connection goes to `IDLE` (and reconnects at once when
//! `auto_connect` is on) or, when a health probe fails, to `TRANSIENT_FAILURE`. `SHUTDOWN` is final for the
//! actor's life: after `shutdown()`, after `max_attempts` consecutive failures (the actor then *fails*, so its
//! supervisor decides), or when it is killed. Every change is published through a `tokio::sync::watch`.
//!
//! An attempt is: dial (each host in order) + TLS + HTTP/2 handshake within the connect timeout, then
//! `grpc.health.v1.Health/Check` with a deadline (UNIMPLEMENTED counts as healthy). Attempts run in their own
//! task; the actor keeps answering meanwhile.
//!
//! # Loss detection while READY
//!
//! - the TCP connector reports its socket's close (EOF, error, drop), tagged with the connection generation so a
//!   late report from an old connection is ignored;
//! - a periodic health `Check` with a deadline (`probe_interval`, default 10 s) catches a frozen server;
//! - HTTP/2 keepalive, opt-in ([`Keepalive`]): its timeout closes the connection, which the connector reports.
//!
//! A `Channel` handed out belongs to one connection *generation*: once that connection is gone its calls fail
//! fast with `Unavailable` instead of re-dialling (tonic would dial once per call); take a fresh one from
//! [`ConnectionHandle::channel`]. [`ConnectionHandle::request`] puts the configured deadline on a call, and
//! [`ConnectionHandle::report_failure`] classifies a failed call ([`classify`]: by the error's source chain)
//! and, for a connection-level failure, runs a health check at once.
//!
//! # Configuration, connection strings, auth
//!
//! [`ConnectionConfig::parse`] takes a connection string ([`Target`]: schemes, default ports, parameters;
//! secrets redacted in `Display`/`Debug`); [`ConnectionOptions`] is the same as a serde document with
//! `humantime` durations. TLS uses rustls with the system roots or a `caFile`. [`Auth`] adds an `api-key`
//! header or a Bearer token from a [`TokenSource`] (static, or OAuth2 client credentials with Chronicle's
//! refresh rules) through an [`AuthInterceptor`].
//!
//! # Supervision and pooling
//!
//! [`ConnectionHandle::child_spec`] runs one connection under a supervisor (a restarted actor keeps serving the
//! same handles). [`ConnectionPool`] shares one connection per target and credentials among refcounted
//! [`Lease`]s, under its own supervisor, with every connection in a [`Registry`](crate::registry::Registry).
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use arbor_actors::connection::{ConnectionConfig, ConnectionHandle};
//! use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ConnectionConfig::parse("chronicle://localhost:35000?disableTls=true")?;
//! let conn = ConnectionHandle::start(config).await?;
//! let channel = conn.wait_ready(Duration::from_secs(10)).await?;
//! let mut client = HealthClient::with_interceptor(channel, conn.interceptor());
//! let reply = client.check(conn.request(HealthCheckRequest::default())).await;
//! if let Err(status) = &reply {
//!     conn.report_failure(status); // a connection-level failure triggers an immediate health check
//! }
//! conn.shutdown(Duration::from_secs(5)).await?;
//! # Ok(()) }
//! ```

mod actor;
mod auth;
mod backoff;
mod config;
mod error;
mod handle;
pub mod pool;
mod state;
mod target;
mod transport;

pub use auth::{Auth, AuthError, AuthInterceptor, OAuth2Config, TokenSource};
pub use backoff::{AttemptPlan, Backoff, BackoffConfig, BackoffConfigError};
pub use config::{ConfigError, ConnectionConfig, ConnectionOptions, Keepalive, KeepaliveOptions};
pub use error::{classify, ConnectionError, FailureClass};
pub use handle::ConnectionHandle;
pub use pool::{ConnectionInfo, ConnectionPool, Lease, PoolError, PoolOptions, PoolStats};
pub use state::{ConnectionSnapshot, ConnectivityState, ShutdownReason};
pub use target::{Credentials, HostPort, Secret, Target, TargetError};
