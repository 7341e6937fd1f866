//! Errors of the connection API, and classification of a failed call from its error's source chain.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use super::config::ConfigError;
use super::state::{CloseReason, ConnectivityState, ShutdownReason};

/// Errors returned by [`ConnectionHandle`](super::ConnectionHandle), [`ConnectionLease`](super::ConnectionLease) and, as the
/// source of an `Unavailable` status, by [`ConnectionChannel`](super::ConnectionChannel).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The connection is not READY and the caller does not wait (`pinned_transport()`), or a call found it down
    /// past its deadline.
    #[error(
        "connection to {target} is not ready (state {state}{})",
        reason_suffix(reason)
    )]
    NotReady {
        /// The (redacted) target.
        target: String,
        /// The state at the time of the call.
        state: ConnectivityState,
        /// Why it is not READY, when known.
        reason: Option<CloseReason>,
    },
    /// `wait_ready`, `wait_for_state_change` or a call waiting for READY ran out of time.
    #[error(
        "timed out after {waited:?} waiting for {target} (state {state}{})",
        reason_suffix(reason)
    )]
    Timeout {
        /// The (redacted) target.
        target: String,
        /// The state when the timer fired.
        state: ConnectivityState,
        /// How long the caller waited.
        waited: Duration,
        /// Why it is not READY, when known.
        reason: Option<CloseReason>,
    },
    /// [`close`](super::ConnectionHandle::close) was called: nothing is attempted until
    /// [`connect`](super::ConnectionHandle::connect).
    #[error("connection to {target} is closed")]
    Closed {
        /// The (redacted) target.
        target: String,
    },
    /// The connection was shut down (on request, or after `max_attempts`).
    #[error("connection to {target} is shut down: {reason:?}")]
    Shutdown {
        /// The (redacted) target.
        target: String,
        /// Why.
        reason: ShutdownReason,
    },
    /// The connection actor is gone without publishing a reason (killed).
    #[error("connection actor for {target} is gone")]
    ActorGone {
        /// The (redacted) target.
        target: String,
    },
    /// The actor a caller-tied call or stream was opened for has already exited.
    #[error("the caller of a tied call on {target} has already exited")]
    CallerGone {
        /// The (redacted) target.
        target: String,
    },
    /// The configuration is invalid (the source names the field).
    #[error("invalid connection configuration")]
    Config(#[source] ConfigError),
    /// The actor could not be spawned.
    #[error("could not start the connection actor for {target}")]
    Spawn {
        /// The (redacted) target.
        target: String,
        /// ractor's error.
        #[source]
        source: Arc<ractor::SpawnErr>,
    },
    /// `shutdown` ran out of time; the actor goes on stopping.
    #[error("connection to {target} did not stop within {timeout:?}")]
    ShutdownTimedOut {
        /// The (redacted) target.
        target: String,
        /// The time given.
        timeout: Duration,
    },
}

fn reason_suffix(reason: &Option<CloseReason>) -> String {
    reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default()
}

impl From<ConfigError> for ConnectionError {
    fn from(e: ConfigError) -> Self {
        ConnectionError::Config(e)
    }
}

impl ConnectionError {
    /// This error as the `Unavailable` status a call through a
    /// [`ConnectionChannel`](super::ConnectionChannel) fails with; the status's source is this error.
    pub fn to_status(&self) -> tonic::Status {
        let mut status = tonic::Status::unavailable(self.to_string());
        status.set_source(Arc::new(self.clone()));
        status
    }
}

pub(crate) use crate::report::ErrorChain;

/// What a failed call says about the connection, read from the error's source chain (a dropped connection shows
/// up as `Unknown`, `Cancelled` or `Unavailable` depending on when it happened, so the code alone is not enough).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// The transport failed: connection refused/reset/closed, GOAWAY, keepalive timeout, broken pipe.
    ConnectionLost,
    /// The call's deadline passed (`DeadlineExceeded`, or tonic's client-side "Timeout expired").
    Timeout,
    /// The server answered with this status: the connection is fine.
    Server,
}

/// What tonic's `TimeoutExpired` says, in a status message or an error chain.
const TONIC_TIMEOUT_EXPIRED: &str = "Timeout expired";

/// Classify a failed call's status.
pub fn classify(status: &tonic::Status) -> FailureClass {
    let mut chain: Vec<&(dyn StdError + 'static)> = Vec::new();
    let mut source = StdError::source(status);
    while let Some(err) = source {
        chain.push(err);
        source = err.source();
    }
    // tonic's deadline (its `GrpcTimeout`, on either side) is `Cancelled "Timeout expired"`: wrapped in a
    // transport error when the client's timer fired, bare (no source, from the trailers) when the server's did.
    // Look for both before anything that would read the wrapper as a lost connection or the bare status as
    // the server's own answer.
    if status.code() == tonic::Code::DeadlineExceeded
        || status.code() == tonic::Code::Cancelled && status.message() == TONIC_TIMEOUT_EXPIRED
        || chain
            .iter()
            .any(|e| e.to_string().contains(TONIC_TIMEOUT_EXPIRED))
    {
        return FailureClass::Timeout;
    }
    for err in &chain {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            if h2.is_io()
                || h2.is_go_away()
                || h2.is_remote() && h2.reason() == Some(h2::Reason::REFUSED_STREAM)
            {
                return FailureClass::ConnectionLost;
            }
        }
        if let Some(hyper) = err.downcast_ref::<hyper::Error>() {
            // hyper's only timeout on a client connection is the keepalive one.
            if hyper.is_closed() || hyper.is_incomplete_message() || hyper.is_canceled() || hyper.is_timeout()
            {
                return FailureClass::ConnectionLost;
            }
        }
        if err.downcast_ref::<std::io::Error>().is_some() {
            return FailureClass::ConnectionLost;
        }
        let text = err.to_string();
        if text.contains("keep-alive timed out")
            || text.contains("connection closed")
            || text.contains("operation was canceled")
            || text.contains("tcp connect error")
        {
            return FailureClass::ConnectionLost;
        }
    }
    match status.code() {
        // Without a source these codes came from the server itself (trailers); with one, from the transport.
        tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown if !chain.is_empty() => {
            FailureClass::ConnectionLost
        }
        _ => FailureClass::Server,
    }
}
