//! Errors of the connection API, and classification of a failed call from its error's source chain.

use std::error::Error as StdError;
use std::time::Duration;

use super::state::{ConnectivityState, ShutdownReason};

/// Errors returned by [`ConnectionHandle`](super::ConnectionHandle).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionError {
    /// `channel()` was called while the connection was not READY.
    #[error("connection to {target} is not ready (state {state})")]
    NotReady {
        /// The (redacted) target.
        target: String,
        /// The state at the time of the call.
        state: ConnectivityState,
    },
    /// `wait_ready` or `wait_for_state_change` ran out of time.
    #[error("timed out after {waited:?} waiting for {target} (state {state})")]
    Timeout {
        /// The (redacted) target.
        target: String,
        /// The state when the timer fired.
        state: ConnectivityState,
        /// How long the caller waited.
        waited: Duration,
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
    /// The configuration is invalid.
    #[error("invalid connection configuration: {0}")]
    Config(String),
    /// The actor could not be spawned.
    #[error("could not start the connection actor: {0}")]
    Spawn(String),
    /// `shutdown` ran out of time; the actor goes on stopping.
    #[error("connection to {target} did not stop within {timeout:?}")]
    ShutdownTimedOut {
        /// The (redacted) target.
        target: String,
        /// The time given.
        timeout: Duration,
    },
}

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

/// Classify a failed call's status.
pub fn classify(status: &tonic::Status) -> FailureClass {
    let mut chain: Vec<&(dyn StdError + 'static)> = Vec::new();
    let mut source = StdError::source(status);
    while let Some(err) = source {
        chain.push(err);
        source = err.source();
    }
    // tonic's client-side deadline is `Cancelled "Timeout expired"` wrapped in a transport error: look for it
    // before anything that would read the wrapper as a lost connection.
    if status.code() == tonic::Code::DeadlineExceeded
        || chain.iter().any(|e| e.to_string().contains("Timeout expired"))
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
