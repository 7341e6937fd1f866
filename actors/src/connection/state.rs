//! Connectivity states, after gRPC's `doc/connectivity-semantics-and-api.md`, and the snapshot every observer
//! of a connection sees through a `tokio::sync::watch`.

use std::fmt;
use std::sync::Arc;

use tonic::transport::Channel;

/// The connectivity state of one connection, with gRPC's meaning.
///
/// Allowed transitions (anything else is a bug and is refused by [`ConnectivityState::can_become`]):
///
/// | from | to |
/// |---|---|
/// | `Idle` | `Connecting`, `Shutdown` |
/// | `Connecting` | `Ready`, `TransientFailure`, `Idle`, `Shutdown` |
/// | `Ready` | `Idle` (connection closed, GOAWAY), `TransientFailure` (probe or keepalive failed), `Shutdown` |
/// | `TransientFailure` | `Connecting` (only after the backoff wait, or [`reconnect`](super::ConnectionHandle::reconnect)), `Shutdown` |
/// | `Shutdown` | nothing: it is final |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectivityState {
    /// No connection and no attempt in flight.
    Idle,
    /// An attempt (dial, TLS, health check) is in flight.
    Connecting,
    /// Connected and the health check passed: calls can be made.
    Ready,
    /// The last attempt failed; waiting for the backoff delay before the next one.
    TransientFailure,
    /// Final: the connection was shut down or gave up.
    Shutdown,
}

impl ConnectivityState {
    /// Whether gRPC's connectivity semantics allow `self -> next`.
    pub fn can_become(self, next: ConnectivityState) -> bool {
        use ConnectivityState::*;
        match (self, next) {
            (Shutdown, _) => false,
            (_, Shutdown) => true,
            (Idle, Connecting) => true,
            (Connecting, Ready | TransientFailure | Idle) => true,
            (Ready, Idle | TransientFailure) => true,
            (TransientFailure, Connecting) => true,
            _ => false,
        }
    }

    /// The name gRPC uses (`READY`, `TRANSIENT_FAILURE`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectivityState::Idle => "IDLE",
            ConnectivityState::Connecting => "CONNECTING",
            ConnectivityState::Ready => "READY",
            ConnectivityState::TransientFailure => "TRANSIENT_FAILURE",
            ConnectivityState::Shutdown => "SHUTDOWN",
        }
    }
}

impl fmt::Display for ConnectivityState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a connection reached [`ConnectivityState::Shutdown`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShutdownReason {
    /// [`shutdown`](super::ConnectionHandle::shutdown) was called or the actor was stopped.
    Requested,
    /// The actor was killed or failed in a handler (its supervisor may start a new life at IDLE).
    ActorStopped,
    /// `max_attempts` consecutive attempts failed; the actor failed so its supervisor decides.
    AttemptsExhausted {
        /// How many attempts were made.
        attempts: u32,
        /// The last attempt's error.
        last_error: String,
    },
}

/// What observers see of a connection: published by the actor on every change.
#[derive(Clone)]
pub struct ConnectionSnapshot {
    /// The current state.
    pub state: ConnectivityState,
    /// Bumped on every new transport; a channel is only handed out with the generation it belongs to.
    pub generation: u64,
    /// The channel, present only while `Ready`.
    pub(crate) channel: Option<Channel>,
    /// Consecutive failed attempts since the last `Ready`.
    pub failed_attempts: u32,
    /// When the latest attempt started (its generation is `generation`).
    pub attempt_started_at: Option<tokio::time::Instant>,
    /// While in TRANSIENT_FAILURE: when the next attempt is scheduled to start.
    pub next_attempt_at: Option<tokio::time::Instant>,
    /// The last attempt's or the last loss's error, for diagnostics.
    pub last_error: Option<Arc<str>>,
    /// Set once the state is `Shutdown`.
    pub shutdown_reason: Option<ShutdownReason>,
}

impl ConnectionSnapshot {
    pub(crate) fn initial() -> Self {
        ConnectionSnapshot {
            state: ConnectivityState::Idle,
            generation: 0,
            channel: None,
            failed_attempts: 0,
            attempt_started_at: None,
            next_attempt_at: None,
            last_error: None,
            shutdown_reason: None,
        }
    }
}

impl fmt::Debug for ConnectionSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionSnapshot")
            .field("state", &self.state)
            .field("generation", &self.generation)
            .field("has_channel", &self.channel.is_some())
            .field("failed_attempts", &self.failed_attempts)
            .field("attempt_started_at", &self.attempt_started_at)
            .field("next_attempt_at", &self.next_attempt_at)
            .field("last_error", &self.last_error)
            .field("shutdown_reason", &self.shutdown_reason)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::ConnectivityState::*;

    #[test]
    fn transitions_follow_grpc() {
        assert!(Idle.can_become(Connecting));
        assert!(!Idle.can_become(Ready));
        assert!(Connecting.can_become(Ready));
        assert!(Ready.can_become(Idle));
        assert!(!TransientFailure.can_become(Ready));
        assert!(TransientFailure.can_become(Connecting));
        assert!(!Shutdown.can_become(Connecting));
        assert!(!Shutdown.can_become(Shutdown));
        for s in [Idle, Connecting, Ready, TransientFailure] {
            assert!(s.can_become(Shutdown));
        }
    }
}
