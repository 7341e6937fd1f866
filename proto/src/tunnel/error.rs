//! What a client does about an error, read from a [`tonic::Status`] without parsing its message.
//!
//! The server sets the gRPC code so that the code alone gives the [`ErrorKind`] ([`ErrorKind::from_code`],
//! the table in `tunnel.proto`'s header), and also sends the kind by name in the metadata key
//! [`KIND_METADATA_KEY`] and, when a request field is at fault, that field's path in [`FIELD_METADATA_KEY`].
//! [`ErrorKind::of`] reads the metadata when present and falls back to the code, so statuses made by the
//! client's own transport (a refused connection is `UNAVAILABLE`) classify too.

use tonic::{Code, Status};

use super::v1;

/// Metadata key carrying the error kind's name (`ERROR_KIND_RETRYABLE`, `ERROR_KIND_OWNERSHIP_LOST`,
/// `ERROR_KIND_FATAL`, `ERROR_KIND_CHECKPOINT_OUT_OF_RANGE`).
pub const KIND_METADATA_KEY: &str = "arbor-error-kind";

/// Metadata key carrying the path of the request field at fault, e.g. `records[3].value`.
pub const FIELD_METADATA_KEY: &str = "arbor-error-field";

/// What a client should do about a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Unavailable or overloaded: retry with backoff. Codes `UNAVAILABLE`, `RESOURCE_EXHAUSTED`,
    /// `DEADLINE_EXCEEDED`, `CANCELLED`.
    Retryable,
    /// The caller no longer owns the channel, or its client id expired: stop the channel (reconnect for an
    /// unknown client). Code `ABORTED`.
    OwnershipLost,
    /// Can never succeed as sent (invalid argument, not found, permission denied...): stop, do not loop.
    /// Every other code.
    Fatal,
    /// A read or checkpoint position below the retained range: `GetCheckpoint` and decide. Code
    /// `OUT_OF_RANGE`.
    CheckpointOutOfRange,
}

impl ErrorKind {
    /// The kind of a status: its [`KIND_METADATA_KEY`] if it has a known one; else retryable for a call the
    /// client's own transport failed (see below); else [`ErrorKind::from_code`].
    ///
    /// A connection lost mid-call (the server crashed or was killed) surfaces as code `UNKNOWN`, message
    /// "transport error", without the service's metadata: tonic builds it from the transport's error and keeps
    /// that error as the status' source. Nothing was refused, so the call may be retried; a status received
    /// from a peer never has a local source.
    pub fn of(status: &Status) -> ErrorKind {
        if let Some(kind) = status
            .metadata()
            .get(KIND_METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            .and_then(ErrorKind::from_name)
        {
            return kind;
        }
        if status.code() == Code::Unknown && std::error::Error::source(status).is_some() {
            return ErrorKind::Retryable;
        }
        ErrorKind::from_code(status.code())
    }

    /// The kind a gRPC code stands for (the protocol's table).
    pub fn from_code(code: Code) -> ErrorKind {
        match code {
            Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded | Code::Cancelled => {
                ErrorKind::Retryable
            }
            Code::Aborted => ErrorKind::OwnershipLost,
            Code::OutOfRange => ErrorKind::CheckpointOutOfRange,
            _ => ErrorKind::Fatal,
        }
    }

    /// The kind named by a metadata value (the wire enum's value name).
    pub fn from_name(name: &str) -> Option<ErrorKind> {
        match v1::ErrorKind::from_str_name(name)? {
            v1::ErrorKind::Retryable => Some(ErrorKind::Retryable),
            v1::ErrorKind::OwnershipLost => Some(ErrorKind::OwnershipLost),
            v1::ErrorKind::Fatal => Some(ErrorKind::Fatal),
            v1::ErrorKind::CheckpointOutOfRange => Some(ErrorKind::CheckpointOutOfRange),
            v1::ErrorKind::Unspecified => None,
        }
    }

    /// The wire enum's value name, as sent in [`KIND_METADATA_KEY`].
    pub fn name(self) -> &'static str {
        v1::ErrorKind::from(self).as_str_name()
    }

    /// Whether retrying the same call may succeed.
    pub fn is_retryable(self) -> bool {
        self == ErrorKind::Retryable
    }
}

impl From<ErrorKind> for v1::ErrorKind {
    fn from(kind: ErrorKind) -> Self {
        match kind {
            ErrorKind::Retryable => v1::ErrorKind::Retryable,
            ErrorKind::OwnershipLost => v1::ErrorKind::OwnershipLost,
            ErrorKind::Fatal => v1::ErrorKind::Fatal,
            ErrorKind::CheckpointOutOfRange => v1::ErrorKind::CheckpointOutOfRange,
        }
    }
}

/// The path of the request field a status blames, if it names one.
pub fn error_field(status: &Status) -> Option<&str> {
    status
        .metadata()
        .get(FIELD_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
}

/// A status with `code` and `message`, carrying the kind `code` stands for and, if given, the field at fault.
/// Servers build every error with it so that code and metadata always agree.
pub fn status(code: Code, message: impl Into<String>, field: Option<&str>) -> Status {
    let mut status = Status::new(code, message);
    let kind = ErrorKind::from_code(code);
    status.metadata_mut().insert(
        KIND_METADATA_KEY,
        tonic::metadata::MetadataValue::from_static(kind.name()),
    );
    if let Some(field) = field {
        // Field paths are ASCII (`records[3].value`); a path that is not stays out rather than failing the call.
        if let Ok(value) = field.parse() {
            status.metadata_mut().insert(FIELD_METADATA_KEY, value);
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_alone_gives_the_kind() {
        assert_eq!(ErrorKind::from_code(Code::Unavailable), ErrorKind::Retryable);
        assert_eq!(
            ErrorKind::from_code(Code::ResourceExhausted),
            ErrorKind::Retryable
        );
        assert_eq!(ErrorKind::from_code(Code::Aborted), ErrorKind::OwnershipLost);
        assert_eq!(
            ErrorKind::from_code(Code::OutOfRange),
            ErrorKind::CheckpointOutOfRange
        );
        for code in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::AlreadyExists,
            Code::FailedPrecondition,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::Internal,
        ] {
            assert_eq!(ErrorKind::from_code(code), ErrorKind::Fatal, "{code:?}");
        }
    }

    #[test]
    fn statuses_carry_kind_and_field_in_metadata() {
        let s = status(
            Code::InvalidArgument,
            "records[3].value is too large",
            Some("records[3].value"),
        );
        assert_eq!(ErrorKind::of(&s), ErrorKind::Fatal);
        assert_eq!(
            s.metadata().get(KIND_METADATA_KEY).unwrap().to_str().unwrap(),
            "ERROR_KIND_FATAL"
        );
        assert_eq!(error_field(&s), Some("records[3].value"));
        let plain = Status::unavailable("connection refused");
        assert_eq!(ErrorKind::of(&plain), ErrorKind::Retryable);
        assert_eq!(error_field(&plain), None);
    }

    #[test]
    fn a_call_its_transport_lost_is_retryable() {
        // What tonic's channel returns when the connection drops mid-call (the server crashed): the transport
        // error wrapped by `Status::from_error`, code UNKNOWN, message "transport error", no arbor metadata.
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset by peer");
        let lost = Status::from_error(Box::new(reset));
        assert_eq!(lost.code(), Code::Unknown);
        assert!(lost.metadata().get(KIND_METADATA_KEY).is_none());
        assert_eq!(ErrorKind::of(&lost), ErrorKind::Retryable);
        // UNKNOWN received from a peer (no local cause) stays FATAL, as the table says; and the service's own
        // kind wins over anything else.
        assert_eq!(
            ErrorKind::of(&Status::unknown("transport error")),
            ErrorKind::Fatal
        );
        let mut told = Status::from_error(Box::new(std::io::Error::other("x")));
        told.metadata_mut().insert(
            KIND_METADATA_KEY,
            tonic::metadata::MetadataValue::from_static("ERROR_KIND_FATAL"),
        );
        assert_eq!(ErrorKind::of(&told), ErrorKind::Fatal);
    }

    #[test]
    fn names_round_trip() {
        for kind in [
            ErrorKind::Retryable,
            ErrorKind::OwnershipLost,
            ErrorKind::Fatal,
            ErrorKind::CheckpointOutOfRange,
        ] {
            assert_eq!(ErrorKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(ErrorKind::from_name("ERROR_KIND_UNSPECIFIED"), None);
        assert_eq!(ErrorKind::from_name("nonsense"), None);
    }
}
