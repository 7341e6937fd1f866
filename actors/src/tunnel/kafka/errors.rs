//! Kafka's errors in the worker's terms: which [`ErrorKind`] each one is (pure, unit tested).

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::tunnel::error::{ErrorKind, TunnelError};

/// What the worker does about a Kafka error code: the fencing codes are [`ErrorKind::OwnershipLost`] (stop
/// the channel without checkpointing), an offset outside the log is [`ErrorKind::CheckpointOutOfRange`],
/// configuration, authentication and authorization failures and a missing topic are [`ErrorKind::Fatal`],
/// everything else (brokers down, timeouts, coordinator moves) is [`ErrorKind::Retryable`].
pub fn kind_of(code: RDKafkaErrorCode) -> ErrorKind {
    use RDKafkaErrorCode as C;
    match code {
        C::IllegalGeneration | C::UnknownMemberId | C::FencedInstanceId | C::RebalanceInProgress => {
            ErrorKind::OwnershipLost
        }
        C::OffsetOutOfRange | C::AutoOffsetReset => ErrorKind::CheckpointOutOfRange,
        C::TopicAuthorizationFailed
        | C::GroupAuthorizationFailed
        | C::SaslAuthenticationFailed
        | C::Authentication
        | C::UnknownTopic
        | C::InvalidArgument
        | C::InvalidGroupId
        | C::InvalidSessionTimeout
        | C::Fatal => ErrorKind::Fatal,
        _ => ErrorKind::Retryable,
    }
}

/// The brokers refused this client's credentials or its TLS handshake: connecting fails with
/// [`ErrorKind::Fatal`] (the [`TunnelError::Source`] of the `Connect` call carries this as its source), since
/// waiting does not change a password or a certificate. `reason` is librdkafka's own account of the failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KafkaRefused {
    /// SASL authentication failed: a wrong user name or password, or a mechanism the listener does not enable.
    #[error("the brokers refused the SASL authentication (check sasl.mechanism, sasl.username, sasl.password): {reason}")]
    Authentication {
        /// What librdkafka reported.
        reason: String,
    },
    /// The TLS handshake failed: a broker certificate the CA does not verify, a client certificate the broker
    /// does not accept (or none where one is required), a TLS client on a plaintext listener.
    #[error("the TLS handshake with the brokers failed (check tls.ca_file, tls.cert_file, tls.key_file): {reason}")]
    Tls {
        /// What librdkafka reported.
        reason: String,
    },
}

impl KafkaRefused {
    /// The options' field at fault: `sasl` or `tls`.
    pub fn field(&self) -> &'static str {
        match self {
            KafkaRefused::Authentication { .. } => "sasl",
            KafkaRefused::Tls { .. } => "tls",
        }
    }

    /// The refusal an error event of the client is, from its code and librdkafka's reason.
    pub(crate) fn of(code: RDKafkaErrorCode, reason: &str) -> Option<KafkaRefused> {
        let reason = reason.to_string();
        match code {
            RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed => {
                Some(KafkaRefused::Authentication { reason })
            }
            RDKafkaErrorCode::SSL => Some(KafkaRefused::Tls { reason }),
            // The broker ended the handshake with an alert (OpenSSL's words): it refused this client's
            // certificate, or its absence where one is required. librdkafka reports it as a transport failure.
            RDKafkaErrorCode::BrokerTransportFailure if reason.contains("SSL alert number") => {
                Some(KafkaRefused::Tls { reason })
            }
            _ => None,
        }
    }
}

/// The code inside a [`KafkaError`], if it has one.
pub(crate) fn code_of(err: &KafkaError) -> Option<RDKafkaErrorCode> {
    err.rdkafka_error_code()
}

/// A failed Kafka call as the worker's error.
pub(crate) fn failed(call: &'static str, err: KafkaError) -> TunnelError {
    let kind = match &err {
        // A client that cannot be created (a mechanism without its library) will not be created on a retry.
        KafkaError::ClientConfig(..)
        | KafkaError::ClientCreation(_)
        | KafkaError::MessageConsumptionFatal(_) => ErrorKind::Fatal,
        other => code_of(other).map_or(ErrorKind::Retryable, kind_of),
    };
    TunnelError::Source {
        call,
        kind,
        source: Box::new(err),
    }
}

/// An error of this source's own making (no Kafka code behind it).
pub(crate) fn own(call: &'static str, kind: ErrorKind, reason: impl Into<String>) -> TunnelError {
    TunnelError::Source {
        call,
        kind,
        source: reason.into().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RDKafkaErrorCode as C;

    #[test]
    fn fencing_codes_are_ownership_lost() {
        for code in [
            C::IllegalGeneration,
            C::UnknownMemberId,
            C::FencedInstanceId,
            C::RebalanceInProgress,
        ] {
            assert_eq!(kind_of(code), ErrorKind::OwnershipLost, "{code:?}");
        }
    }

    #[test]
    fn offsets_outside_the_log_are_out_of_range() {
        assert_eq!(kind_of(C::OffsetOutOfRange), ErrorKind::CheckpointOutOfRange);
        assert_eq!(kind_of(C::AutoOffsetReset), ErrorKind::CheckpointOutOfRange);
    }

    #[test]
    fn broker_trouble_is_retried_and_refusals_are_fatal() {
        for code in [
            C::AllBrokersDown,
            C::BrokerTransportFailure,
            C::RequestTimedOut,
            C::NotCoordinator,
        ] {
            assert_eq!(kind_of(code), ErrorKind::Retryable, "{code:?}");
        }
        for code in [
            C::TopicAuthorizationFailed,
            C::SaslAuthenticationFailed,
            C::UnknownTopic,
        ] {
            assert_eq!(kind_of(code), ErrorKind::Fatal, "{code:?}");
        }
        let err = failed("Commit", KafkaError::ConsumerCommit(C::IllegalGeneration));
        assert_eq!(err.kind(), ErrorKind::OwnershipLost);
        assert!(err.to_string().contains("Commit"), "{err}");
        let err = failed("Read", KafkaError::MessageConsumptionFatal(C::Fatal));
        assert_eq!(err.kind(), ErrorKind::Fatal);
    }

    #[test]
    fn refusals_are_told_from_their_code_and_reason() {
        let refused = KafkaRefused::of(C::Authentication, "SASL authentication error: Invalid username");
        assert_eq!(refused.as_ref().map(KafkaRefused::field), Some("sasl"));
        assert!(refused.unwrap().to_string().contains("Invalid username"));
        assert_eq!(
            KafkaRefused::of(C::SSL, "certificate verify failed").map(|r| r.field()),
            Some("tls")
        );
        let alert =
            "Receive failed: ssl3_read_bytes error:0A000412:SSL routines::sslv3 alert bad certificate: \
                     SSL alert number 42";
        assert_eq!(
            KafkaRefused::of(C::BrokerTransportFailure, alert).map(|r| r.field()),
            Some("tls")
        );
        assert_eq!(
            KafkaRefused::of(C::BrokerTransportFailure, "Connection refused"),
            None
        );
        assert_eq!(KafkaRefused::of(C::AllBrokersDown, "1/1 brokers are down"), None);
    }
}
