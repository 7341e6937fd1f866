//! Connectivity states, after gRPC's `doc/connectivity-semantics-and-api.md`, why a connection is not READY,
//! and the snapshot every observer of a connection sees through a `tokio::sync::watch`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Channel;

/// The connectivity state of one connection, with gRPC's meaning.
///
/// Allowed transitions (anything else is a bug and is refused by [`ConnectivityState::can_become`]):
///
/// | from | to |
/// |---|---|
/// | `Idle` | `Connecting`, `Shutdown` |
/// | `Connecting` | `Ready`, `TransientFailure`, `Idle` ([`close`](super::ConnectionHandle::close)), `Shutdown` |
/// | `Ready` | `Idle` (connection closed, GOAWAY), `TransientFailure` (health check failed), `Shutdown` |
/// | `TransientFailure` | `Connecting` (only after the backoff wait, or [`reconnect`](super::ConnectionHandle::reconnect)), `Idle` ([`close`](super::ConnectionHandle::close)), `Shutdown` |
/// | `Shutdown` | nothing: it is final |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
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
            (TransientFailure, Connecting | Idle) => true,
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

/// An HTTP/2 GOAWAY frame as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoAway {
    /// The HTTP/2 error code (`0` NO_ERROR for a graceful drain or an idle close, `0xb` ENHANCE_YOUR_CALM, ...).
    pub code: u32,
    /// The highest stream id the server will still process: streams above it were not and may be retried.
    pub last_stream_id: u32,
    /// The frame's debug data as text (lossy UTF-8, at most 256 bytes kept), e.g. `too_many_pings`.
    pub debug_data: String,
}

impl GoAway {
    /// The error code's name (`NO_ERROR`, `ENHANCE_YOUR_CALM`, ...; RFC 9113 section 7).
    pub fn code_name(&self) -> &'static str {
        match self.code {
            0x0 => "NO_ERROR",
            0x1 => "PROTOCOL_ERROR",
            0x2 => "INTERNAL_ERROR",
            0x3 => "FLOW_CONTROL_ERROR",
            0x4 => "SETTINGS_TIMEOUT",
            0x5 => "STREAM_CLOSED",
            0x6 => "FRAME_SIZE_ERROR",
            0x7 => "REFUSED_STREAM",
            0x8 => "CANCEL",
            0x9 => "COMPRESSION_ERROR",
            0xa => "CONNECT_ERROR",
            0xb => "ENHANCE_YOUR_CALM",
            0xc => "INADEQUATE_SECURITY",
            0xd => "HTTP_1_1_REQUIRED",
            _ => "UNKNOWN",
        }
    }

    /// A graceful close (drain, idle timeout, max connection age): `NO_ERROR`.
    pub fn is_graceful(&self) -> bool {
        self.code == 0
    }

    /// gRFC A8's signal that the client pings too often: `ENHANCE_YOUR_CALM` with `too_many_pings`.
    pub fn is_too_many_pings(&self) -> bool {
        self.code == 0xb && self.debug_data == "too_many_pings"
    }
}

impl fmt::Display for GoAway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "GOAWAY {} (last stream {})",
            self.code_name(),
            self.last_stream_id
        )?;
        if !self.debug_data.is_empty() {
            write!(f, ": {:?}", self.debug_data)?;
        }
        Ok(())
    }
}

/// Why a connection is not READY: how the last connection ended or why the last attempt failed. Kept in the
/// [`ConnectionSnapshot`] until the connection is READY again, and logged with every state change.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The server sent GOAWAY.
    GoAway(GoAway),
    /// The peer refused the TCP connection.
    Refused,
    /// The peer reset the TCP connection.
    Reset,
    /// The peer closed the connection without a GOAWAY.
    PeerClosed,
    /// TLS failed: the peer sent an alert, or its certificate was refused.
    Tls {
        /// rustls' description (the alert or the certificate error).
        reason: String,
    },
    /// The HTTP/2 client dropped the connection by itself (keepalive ping not answered in time, protocol
    /// error).
    Dropped,
    /// The dial, TLS or HTTP/2 handshake did not finish within the attempt's connect timeout.
    ConnectTimeout {
        /// The timeout.
        after: Duration,
    },
    /// The health check failed or reported the server not serving.
    Health {
        /// What the check saw.
        reason: String,
    },
    /// No access token could be had for the call credentials.
    Auth {
        /// Why.
        reason: String,
    },
    /// [`ConnectionHandle::close`](super::ConnectionHandle::close) was called.
    Closed,
    /// Any other IO error.
    Io {
        /// Its kind.
        kind: std::io::ErrorKind,
        /// Its text.
        message: String,
    },
    /// Something else went wrong in an attempt (including a panic in it).
    Other {
        /// What.
        reason: String,
    },
}

impl CloseReason {
    /// A clean close by the server: a GOAWAY `NO_ERROR` (drain, idle timeout, maximum connection age). The
    /// connection then goes IDLE and reconnects per [`IdleReconnect`](super::IdleReconnect); anything else is
    /// a failure and reconnects at once.
    pub fn is_clean(&self) -> bool {
        matches!(self, CloseReason::GoAway(g) if g.is_graceful())
    }

    /// From an IO error of the transport.
    pub(crate) fn from_io(e: &std::io::Error) -> CloseReason {
        use std::io::ErrorKind;
        if let Some(tls) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return CloseReason::Tls {
                reason: tls.to_string(),
            };
        }
        match e.kind() {
            ErrorKind::ConnectionRefused => CloseReason::Refused,
            ErrorKind::ConnectionReset => CloseReason::Reset,
            ErrorKind::UnexpectedEof => CloseReason::PeerClosed,
            kind => CloseReason::Io {
                kind,
                message: e.to_string(),
            },
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::GoAway(g) => write!(f, "server sent {g}"),
            CloseReason::Refused => f.write_str("connection refused"),
            CloseReason::Reset => f.write_str("connection reset by peer"),
            CloseReason::PeerClosed => f.write_str("peer closed the connection (no GOAWAY)"),
            CloseReason::Tls { reason } => write!(f, "TLS: {reason}"),
            CloseReason::Dropped => {
                f.write_str("HTTP/2 client dropped the connection (keepalive timeout or protocol error)")
            }
            CloseReason::ConnectTimeout { after } => write!(f, "connect timed out after {after:?}"),
            CloseReason::Health { reason } => write!(f, "health check: {reason}"),
            CloseReason::Auth { reason } => write!(f, "access token: {reason}"),
            CloseReason::Closed => f.write_str("closed by close()"),
            CloseReason::Io { message, .. } => write!(f, "io error: {message}"),
            CloseReason::Other { reason } => f.write_str(reason),
        }
    }
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
    /// Why the connection is not READY (how the last connection ended, or why the last attempt failed);
    /// `None` while READY and before the first attempt.
    pub close_reason: Option<CloseReason>,
    /// Set by [`close`](super::ConnectionHandle::close), cleared by
    /// [`connect`](super::ConnectionHandle::connect): no attempt is made and calls fail at once.
    pub closed: bool,
    /// The HTTP/2 keepalive interval in force (doubled each time the server answers `too_many_pings`).
    pub keepalive_interval: Option<Duration>,
    /// Set once the state is `Shutdown`.
    pub shutdown_reason: Option<ShutdownReason>,
}

impl ConnectionSnapshot {
    pub(crate) fn initial(keepalive_interval: Option<Duration>) -> Self {
        ConnectionSnapshot {
            state: ConnectivityState::Idle,
            generation: 0,
            channel: None,
            failed_attempts: 0,
            attempt_started_at: None,
            next_attempt_at: None,
            last_error: None,
            close_reason: None,
            closed: false,
            keepalive_interval,
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
            .field("close_reason", &self.close_reason)
            .field("closed", &self.closed)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("shutdown_reason", &self.shutdown_reason)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::ConnectivityState::*;
    use super::*;

    #[test]
    fn transitions_follow_grpc() {
        assert!(Idle.can_become(Connecting));
        assert!(!Idle.can_become(Ready));
        assert!(Connecting.can_become(Ready));
        assert!(Ready.can_become(Idle));
        assert!(!TransientFailure.can_become(Ready));
        assert!(TransientFailure.can_become(Connecting));
        assert!(TransientFailure.can_become(Idle));
        assert!(!Shutdown.can_become(Connecting));
        assert!(!Shutdown.can_become(Shutdown));
        for s in [Idle, Connecting, Ready, TransientFailure] {
            assert!(s.can_become(Shutdown));
        }
    }

    #[test]
    fn goaway_classes() {
        let g = |code, debug: &str| GoAway {
            code,
            last_stream_id: 3,
            debug_data: debug.into(),
        };
        assert!(g(0, "").is_graceful());
        assert!(CloseReason::GoAway(g(0, "")).is_clean());
        assert!(g(0xb, "too_many_pings").is_too_many_pings());
        assert!(!g(0xb, "other").is_too_many_pings());
        assert!(!CloseReason::GoAway(g(0xb, "too_many_pings")).is_clean());
        assert!(!CloseReason::Reset.is_clean());
        assert_eq!(
            CloseReason::GoAway(g(0xb, "too_many_pings")).to_string(),
            "server sent GOAWAY ENHANCE_YOUR_CALM (last stream 3): \"too_many_pings\""
        );
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(CloseReason::from_io(&refused), CloseReason::Refused);
    }
}
