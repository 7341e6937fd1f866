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
}
