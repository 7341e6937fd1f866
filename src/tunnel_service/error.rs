//! The service's one error type and its mapping to gRPC statuses.

use std::sync::Arc;

use arbor_proto::tunnel::error::status;
use tonic::{Code, Status};

/// Why a tunnel operation failed. Each variant maps to one gRPC code, and so to one
/// [`ErrorKind`](arbor_proto::tunnel::error::ErrorKind) (see [`ServiceError::code`]); none carries a secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ServiceError {
    /// A request field is invalid. `INVALID_ARGUMENT` (fatal), the field named in `arbor-error-field`.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field's path, e.g. `records[3].value`.
        field: String,
        /// What is wrong, with the value where it helps.
        reason: String,
    },
    /// No live tunnel has this id or name (never created, or deleted). `NOT_FOUND` (fatal).
    #[error("tunnel {tunnel} not found (never created, or deleted)")]
    TunnelNotFound {
        /// The id or name asked for.
        tunnel: String,
    },
    /// A live tunnel already has this name. `ALREADY_EXISTS` (fatal).
    #[error("a tunnel named {name} already exists (id {tunnel_id})")]
    TunnelExists {
        /// The name.
        name: String,
        /// The existing tunnel's id.
        tunnel_id: String,
    },
    /// The request is valid but the channel's state forbids it (appending to a sealed channel, sealing a stream
    /// channel, reporting TERMINATED before the end is checkpointed). `FAILED_PRECONDITION` (fatal).
    #[error("channel {channel}: {reason}")]
    FailedPrecondition {
        /// The channel.
        channel: u32,
        /// Why.
        reason: String,
    },
    /// The client id is not connected: it expired (no heartbeat within its timeout), shut down, or is from
    /// before a server restart. `ABORTED` (ownership lost): reconnect for a new client id.
    #[error("client {client_id} is not connected to tunnel {tunnel_id} (expired, shut down, or unknown)")]
    ClientUnknown {
        /// The tunnel.
        tunnel_id: String,
        /// The client id.
        client_id: String,
    },
    /// The caller does not own the channel under that version: it moved, was released, or the version is
    /// outside the caller's lease. `ABORTED` (ownership lost): stop the channel.
    #[error("channel {channel}: {reason}")]
    NotOwner {
        /// The channel.
        channel: u32,
        /// What the server holds (owner, status, versions).
        reason: String,
    },
    /// A read or checkpoint position below the retained range. `OUT_OF_RANGE` (checkpoint out of range).
    #[error(
        "channel {channel}: {field} {requested} is below the first retained sequence number {first_retained}"
    )]
    OutOfRange {
        /// The channel.
        channel: u32,
        /// The field holding the position.
        field: &'static str,
        /// The position asked for.
        requested: u64,
        /// The first retained sequence number.
        first_retained: u64,
    },
    /// The storage engine's write queue is full; nothing of this request was stored or changed.
    /// `RESOURCE_EXHAUSTED` (retryable): retry with backoff.
    #[error("storage overloaded")]
    StorageOverloaded(#[source] Arc<StoreError>),
    /// The storage engine failed; nothing of this request was acknowledged. `UNAVAILABLE` (retryable): a
    /// durable server whose engine failed refuses every write until it is restarted and has recovered.
    #[error("storage unavailable")]
    Storage(#[source] Arc<StoreError>),
}

impl ServiceError {
    /// An [`ServiceError::InvalidArgument`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ServiceError {
        ServiceError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The gRPC code this error is sent with.
    pub fn code(&self) -> Code {
        match self {
            ServiceError::InvalidArgument { .. } => Code::InvalidArgument,
            ServiceError::TunnelNotFound { .. } => Code::NotFound,
            ServiceError::TunnelExists { .. } => Code::AlreadyExists,
            ServiceError::FailedPrecondition { .. } => Code::FailedPrecondition,
            ServiceError::ClientUnknown { .. } | ServiceError::NotOwner { .. } => Code::Aborted,
            ServiceError::OutOfRange { .. } => Code::OutOfRange,
            ServiceError::Storage(_) => Code::Unavailable,
            ServiceError::StorageOverloaded(_) => Code::ResourceExhausted,
        }
    }

    /// The request field at fault, if one is.
    pub fn field(&self) -> Option<&str> {
        match self {
            ServiceError::InvalidArgument { field, .. } => Some(field),
            ServiceError::OutOfRange { field, .. } => Some(field),
            _ => None,
        }
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::QueueFull { .. } => ServiceError::StorageOverloaded(Arc::new(e)),
            e => ServiceError::Storage(Arc::new(e)),
        }
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        // The message carries the source chain once (a client logs one line); the kind and field travel in
        // metadata so no client parses the message.
        status(e.code(), chain(&e), e.field())
    }
}

/// A storage engine failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory cannot be created or opened.
    #[error("cannot open the data directory {path}")]
    Open {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The engine failed reading or writing.
    #[error("storage engine {operation} failed")]
    Engine {
        /// What was being done.
        operation: &'static str,
        /// The engine's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Stored bytes do not decode: the data directory is damaged or was written by something else.
    #[error("corrupt {what} in the data directory: {reason}")]
    Corrupt {
        /// Which kind of entry.
        what: &'static str,
        /// Why it does not decode.
        reason: String,
    },
    /// An earlier write failed, so the engine refuses every later one until the process restarts and
    /// recovers from what is on disk (the data may no longer match what was acknowledged in memory).
    #[error("an earlier write failed ({first_error}); restart the server to recover")]
    Poisoned {
        /// The first failure.
        first_error: String,
    },
    /// The engine was closed (server shutting down).
    #[error("the store is closed")]
    Closed,
    /// The engine's queue of writes not yet stored is full: the disk does not keep up. Nothing of the refused
    /// request was stored or changed; retry with backoff.
    #[error("the write queue is full ({queued_bytes} bytes waiting, limit {limit_bytes}): retry later")]
    QueueFull {
        /// Bytes of writes waiting to be stored.
        queued_bytes: u64,
        /// The limit ([`StoreOptions::max_queued_write_bytes`](super::StoreOptions::max_queued_write_bytes)).
        limit_bytes: u64,
    },
}

/// An error and its causes on one line, `outer: cause: root cause`.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
