//! The tunnel worker's errors, each with the [`ErrorKind`] that says what to do about it.

use std::time::Duration;

use ractor::ActorId;

pub use arbor_proto::tunnel::error::ErrorKind;

use crate::connection::ConnectionError;

/// What went wrong with a tunnel worker, its options, or a call to the tunnel service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TunnelError {
    /// An option is out of range or missing.
    #[error("invalid tunnel option {field}: {reason}")]
    InvalidOptions {
        /// The option's path (`heartbeat_timeout`, `retry_backoff.jitter`, ...).
        field: String,
        /// What was expected, and what came.
        reason: String,
    },
    /// A worker for this tunnel already runs in this process.
    #[error("a worker for tunnel {tunnel_id:?} is already running as actor {actor}")]
    AlreadyRunning {
        /// The tunnel.
        tunnel_id: String,
        /// The running worker.
        actor: ActorId,
    },
    /// A call to the tunnel service failed; `kind` says whether to retry, stop the channel, or stop.
    #[error("{call} failed ({kind:?}): {}", status.message())]
    Call {
        /// The RPC (`Heartbeat`, `ReadRecords`, ...).
        call: &'static str,
        /// What to do about it.
        kind: ErrorKind,
        /// The status the service (or the transport) returned.
        #[source]
        status: tonic::Status,
    },
    /// The service's answer does not fit the protocol.
    #[error("malformed {call} response: {field} {reason}")]
    Malformed {
        /// The RPC.
        call: &'static str,
        /// The response field at fault.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A call of a source other than arbor's protocol (Kafka, ...) failed; `kind` says whether to retry, stop
    /// the channel, or stop.
    #[error("{call} failed ({kind:?}): {source}")]
    Source {
        /// The call (`Commit`, `Read`, ...).
        call: &'static str,
        /// What to do about it.
        kind: ErrorKind,
        /// The source's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No usable connection to the service.
    #[error("no connection to the tunnel service")]
    Connection(#[source] ConnectionError),
    /// The connection pool could not lease a connection to the service.
    #[error("no pooled connection to the tunnel service")]
    Pool(#[source] crate::connection::PoolError),
    /// A channel's position is below what the service still keeps, and the options say to stop.
    #[error(
        "channel {channel_id}: position {position} is below the first retained record {first_retained} \
         (records lost to retention)"
    )]
    OutOfRange {
        /// The channel.
        channel_id: u32,
        /// Where the channel would have resumed.
        position: u64,
        /// The first record the service still keeps.
        first_retained: u64,
    },
    /// A [`TunnelSource`](super::TunnelSource) call panicked (a bug in the source, not an answer of the
    /// service): the worker stops rather than call it again.
    #[error("the tunnel source panicked in {call}: {reason}")]
    SourcePanicked {
        /// The call (`ReadRecords`, ...).
        call: &'static str,
        /// The panic's message.
        reason: String,
    },
    /// Reads kept failing as out of range although the position is still retained (tonic's own status for a
    /// message over the client's decode limit is OUT_OF_RANGE too): retried with backoff for `retry_for`, then
    /// given up.
    #[error(
        "channel {channel_id}: reads at {position} kept failing as out of range for {} although records from \
         {first_retained} are retained",
        humantime::format_duration(*retried_for)
    )]
    PersistentOutOfRange {
        /// The channel.
        channel_id: u32,
        /// Where the reads started.
        position: u64,
        /// The first record the service still keeps.
        first_retained: u64,
        /// How long the reads were retried.
        retried_for: Duration,
        /// The last read's error.
        #[source]
        last: Box<TunnelError>,
    },
    /// The worker is not running.
    #[error("the worker for tunnel {tunnel_id:?} is not running")]
    NotRunning {
        /// The tunnel.
        tunnel_id: String,
    },
    /// The worker did not stop within the time given to `shutdown`.
    #[error(
        "the worker for tunnel {tunnel_id:?} did not stop within {}",
        humantime::format_duration(*timeout)
    )]
    ShutdownTimedOut {
        /// The tunnel.
        tunnel_id: String,
        /// The time given.
        timeout: Duration,
    },
    /// The worker's actor could not be started.
    #[error("the worker for tunnel {tunnel_id:?} failed to start")]
    Spawn {
        /// The tunnel.
        tunnel_id: String,
        /// Why.
        #[source]
        source: ractor::SpawnErr,
    },
    /// The worker could not be started under its supervisor.
    #[error("the worker for tunnel {tunnel_id:?} could not be started under its supervisor")]
    Supervisor {
        /// The tunnel.
        tunnel_id: String,
        /// Why.
        #[source]
        source: crate::supervisor::SupervisorError,
    },
}

impl TunnelError {
    /// What to do about this error: retry ([`ErrorKind::Retryable`]), stop the channel or start a new
    /// session ([`ErrorKind::OwnershipLost`]), stop ([`ErrorKind::Fatal`]), or decide about lost records
    /// ([`ErrorKind::CheckpointOutOfRange`]).
    pub fn kind(&self) -> ErrorKind {
        match self {
            TunnelError::Call { kind, .. } | TunnelError::Source { kind, .. } => *kind,
            TunnelError::Connection(_) => ErrorKind::Retryable,
            TunnelError::Pool(crate::connection::PoolError::Config(_)) => ErrorKind::Fatal,
            TunnelError::Pool(_) => ErrorKind::Retryable,
            TunnelError::OutOfRange { .. } => ErrorKind::CheckpointOutOfRange,
            _ => ErrorKind::Fatal,
        }
    }
}
