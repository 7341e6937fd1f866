//! Connections: an actor per gRPC target that owns its transports, with gRPC's connectivity states, the
//! connection-backoff schedule, health-checked attempts, loss detection (GOAWAY included), a channel that follows
//! the connection across reconnects, calls tied to the actor that made them, connection strings, TLS, auth, and
//! a refcounted pool. (Feature `connection`, on by default.)
//!
//! # Why
//!
//! tonic has no connectivity-state API and no reconnect backoff: a `Channel` re-dials on every call, so calls
//! against a refusing server become a connect storm, and a frozen server hangs calls forever unless keepalive is
//! on. A connect alone proves nothing (a frozen server accepts it). A GOAWAY is invisible until a new call fails
//! with `Cancelled`. This module puts all of that in one actor.
//!
//! # States
//!
//! [`ConnectivityState`] follows gRPC: `IDLE -> CONNECTING -> READY`, a failed attempt goes to
//! `TRANSIENT_FAILURE` and back to `CONNECTING` only after the backoff wait ([`BackoffConfig`], gRPC's defaults
//! 1 s x1.6 +-20 % up to 120 s). A READY connection that ends goes to `IDLE` at once: a clean close by the
//! server (GOAWAY `NO_ERROR`: drain, idle timeout, maximum age) reconnects on the next call or `wait_ready`, or
//! at once with [`IdleReconnect::Eager`]; a failure (reset, EOF without GOAWAY, GOAWAY with an error code)
//! reconnects at once when `auto_connect` is on. A failed health check moves it to `TRANSIENT_FAILURE`.
//! `SHUTDOWN` is final for the actor's life: after `shutdown()`, after `max_attempts` consecutive failures (the
//! actor then *fails*, so its supervisor decides), or when it is killed. Every change is published through a
//! `tokio::sync::watch`; [`ConnectionSnapshot::close_reason`] says why the connection is not READY
//! ([`CloseReason`]: GOAWAY code and debug data, TLS, refused, reset, ...), and every state change is logged
//! with it.
//!
//! An attempt is: dial (each host in order) + TLS + HTTP/2 handshake within the connect timeout, then
//! `grpc.health.v1.Health/Check` with a deadline (UNIMPLEMENTED counts as healthy). Attempts run in their own
//! task; the actor keeps answering meanwhile. An attempt that fails in any way (error, panic, cancellation) is
//! a failed attempt: TRANSIENT_FAILURE, `last_error`, backoff, retry.
//!
//! [`close`](ConnectionHandle::close) tears the connection down and keeps it down (calls fail at once with
//! [`ConnectionError::Closed`]) until [`connect`](ConnectionHandle::connect), as Spear's connection does.
//!
//! # Loss detection while READY
//!
//! - the connector does TLS itself and reads the server's HTTP/2 frames as they pass: a GOAWAY is seen the
//!   moment it arrives; `ENHANCE_YOUR_CALM` / `too_many_pings` doubles the keepalive interval (gRFC A8);
//! - the connector reports its socket's close (EOF, error, drop), tagged with the connection generation so a
//!   late report from an old connection is ignored;
//! - a call that fails below gRPC or times out makes the connection run a health `Check` at once;
//! - HTTP/2 keepalive, opt-in ([`Keepalive`]): its timeout closes the connection, which the connector reports;
//! - health checking while READY, opt-in as in gRPC clients: a `Watch` stream (`health_watch`; servers without
//!   it fall back to polling) reports a change to NOT_SERVING at once, a periodic `Check` (`probe_interval`)
//!   catches a frozen server between calls. Both keep the connection busy, so a server's idle shedding
//!   (`max_connection_idle`) never closes it; off by default, an idle connection goes IDLE when its server
//!   sheds it (GOAWAY `NO_ERROR`) and the next use reconnects.
//!
//! # Making calls
//!
//! [`ConnectionHandle::channel`] (and [`ConnectionLease::channel`]) give a [`ConnectionChannel`]: a `tower::Service` for
//! any tonic-generated client that routes each call to the current transport, waits while connecting (bounded
//! by the call's deadline), fails fast with `Unavailable` when the connection is down past that deadline, and
//! applies the auth as a layer. Build a client once; it survives reconnects. [`ConnectionHandle::request`] puts
//! the configured deadline on a call, and [`ConnectionHandle::report_failure`] classifies a failed call
//! ([`classify`]: by the error's source chain) and, for a connection-level failure, runs a health check at
//! once. [`ConnectionHandle::pinned_transport`] is the raw tonic `Channel` of the current generation; once that
//! transport is gone its calls fail fast instead of re-dialling.
//!
//! [`ConnectionHandle::stream_for`] and [`ConnectionHandle::call_for`] make a call on behalf of an actor: the
//! connection monitors it and cancels the call when it dies (the server sees the cancel); the stream's items
//! and its end ([`StreamEnd`]) reach the actor as messages.
//!
//! # Configuration, connection strings, TLS, auth
//!
//! [`ConnectionConfig`] is built with [`ConnectionConfig::parse`] and `with_*` setters, or read from a serde
//! document with `humantime` durations. A connection string ([`Target`]: schemes, default ports, parameters;
//! secrets redacted in `Display`/`Debug`) can carry a `caFile` (trust anchors instead of the system's) and a
//! `certFile`/`keyFile` client certificate; every file is read and checked when the configuration is prepared,
//! naming the parameter. [`Auth`] adds an `api-key` header or a Bearer token from a [`TokenSource`] (static, or
//! OAuth2 client credentials: one refresh per token at a margin proportional to its lifetime, single-flight).
//!
//! # Supervision and pooling
//!
//! [`ConnectionHandle::child_spec`] runs one connection under a supervisor (a restarted actor keeps serving the
//! same handles). [`ConnectionPool`] shares one connection per target and credentials among refcounted
//! [`ConnectionLease`]s, under its own supervisor, with every connection in a [`Registry`](crate::registry::Registry).
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use arbor_actors::connection::{ConnectionConfig, ConnectionHandle};
//! use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ConnectionConfig::parse("grpc://localhost:35000?disableTls=true")?;
//! let conn = ConnectionHandle::start(config).await?;
//! let mut client = HealthClient::new(conn.channel()); // auth included; follows reconnects
//! let reply = client.check(conn.request(HealthCheckRequest::default())).await?; // waits while connecting
//! println!("{:?}", reply.into_inner().status());
//! conn.shutdown(Duration::from_secs(5)).await?;
//! # Ok(()) }
//! ```

mod actor;
mod attempt;
mod auth;
mod channel;
mod config;
mod error;
mod frames;
mod handle;
mod health;
pub mod pool;
mod shared;
mod state;
mod target;
mod tied;
mod tls;
mod transport;

pub use crate::backoff::{AttemptPlan, Backoff, BackoffConfig, BackoffConfigError};
pub use auth::{Auth, AuthError, AuthInterceptor, OAuth2Config, TokenSource};
pub use channel::ConnectionChannel;
pub use config::{ConfigError, ConnectionConfig, IdleReconnect, Keepalive};
pub use error::{classify, ConnectionError, FailureClass};
pub use handle::ConnectionHandle;
pub use pool::{ConnectionInfo, ConnectionLease, ConnectionPool, PoolError, PoolOptions, PoolStats};
pub use state::{CloseReason, ConnectionSnapshot, ConnectivityState, GoAway, ShutdownReason};
pub use target::{Credentials, HostPort, Secret, Target, TargetError};
pub use tied::{StreamEnd, StreamEvent, TiedCall};
pub use tls::crypto_provider;
