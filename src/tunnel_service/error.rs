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
    /// The call names a connected client but does not carry its session's secret (`session_token` missing or
    /// wrong): the caller is not that session. `ABORTED` (ownership lost). The message never shows a token.
    #[error(
        "client {client_id} of tunnel {tunnel_id}: the session token is missing or wrong (not that session)"
    )]
    NotSession {
        /// The tunnel.
        tunnel_id: String,
        /// The client id the call named.
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
    /// The call's api key does not hold the role the call needs. `PERMISSION_DENIED` (fatal).
    #[error("{call} needs an api key with the {role} role")]
    PermissionDenied {
        /// The RPC.
        call: &'static str,
        /// The role it needs.
        role: crate::serving::Role,
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
    /// A limit on the service's shared resources is reached (live sessions of a tunnel, ...): nothing was done.
    /// `RESOURCE_EXHAUSTED` (retryable): the resource frees up as sessions shut down or expire.
    #[error("{resource}: {used} in use, the limit is {limit}")]
    ResourceExhausted {
        /// What ran out, e.g. `sessions of tunnel t-1`.
        resource: String,
        /// How many are in use.
        used: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The storage engine's write queue is full; nothing of this request was stored or changed.
    /// `RESOURCE_EXHAUSTED` (retryable): retry with backoff.
    #[error("storage overloaded")]
    StorageOverloaded(#[source] Arc<StoreError>),
    /// The storage engine failed; nothing of this request was acknowledged. `UNAVAILABLE` (retryable): a
    /// durable server whose engine failed refuses every write until it is restarted and has recovered. The
    /// status says only "storage unavailable"; the cause is logged by the server.
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
            ServiceError::ClientUnknown { .. }
            | ServiceError::NotSession { .. }
            | ServiceError::NotOwner { .. } => Code::Aborted,
            ServiceError::OutOfRange { .. } => Code::OutOfRange,
            ServiceError::PermissionDenied { .. } => Code::PermissionDenied,
            ServiceError::ResourceExhausted { .. } => Code::ResourceExhausted,
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
        // The message is the error's own words: clear and stable, with the field and values the client sent.
        // Causes (the storage engine's errors: paths, engine internals) are for the operator, so they are
        // logged here and never sent. The kind and field travel in metadata so no client parses the message.
        if std::error::Error::source(&e).is_some() {
            tracing::warn!(code = ?e.code(), error = %chain(&e), "tunnel request failed");
        }
        status(e.code(), e.to_string(), e.field())
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

/// An error and its causes on one line, `outer: cause: root cause` (arbor's one formatter for that:
/// [`arbor_actors::report::ErrorChain`]).
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    arbor_actors::report::ErrorChain(err).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_says_what_failed_and_keeps_the_storage_engines_error_to_the_server() {
        let engine = std::io::Error::other("fsync of /var/lib/arbor/secret-journal failed: EIO");
        let failed = ServiceError::from(StoreError::Engine {
            operation: "write batch",
            source: Box::new(engine),
        });
        let status = Status::from(failed.clone());
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "storage unavailable");
        assert!(
            chain(&failed).contains("fsync of /var/lib/arbor"),
            "the log keeps the cause"
        );

        let poisoned = Status::from(ServiceError::from(StoreError::Poisoned {
            first_error: "disk full at /var/lib/arbor".into(),
        }));
        assert!(!poisoned.message().contains("/var/lib"), "{}", poisoned.message());

        let invalid = Status::from(ServiceError::invalid(
            "records[3].value",
            "2000000 bytes, over 1048576",
        ));
        assert_eq!(invalid.message(), "records[3].value: 2000000 bytes, over 1048576");
    }
}
