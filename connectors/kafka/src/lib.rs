//! Kafka connector: a consumer-group source that commits only the offsets it
//! is told are safe, an idempotent producer sink that resolves once records are
//! acknowledged, and topic creation.

mod admin;
mod baseline;
mod config;
mod connection;
mod resume;
mod source;
mod sink;

pub use admin::KafkaAdmin;
pub use baseline::{RawLoop, RawPassthrough, raw_passthrough};
pub use connection::{Connection, is_connection_loss};
pub use config::{KafkaConfig, KafkaSecurity, SaslMechanism, SecurityProtocol};
pub use sink::KafkaSink;
pub use source::{KafkaReader, KafkaSource, committed_offsets, read_topic_to_end};

use notiflow_connector::ConnectorError;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Sorts librdkafka errors into retry / do-not-retry.
pub(crate) fn classify(err: KafkaError) -> ConnectorError {
    let code = err.rdkafka_error_code();
    let permanent = matches!(
        code,
        Some(
            RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidConfig
                | RDKafkaErrorCode::InvalidRequest
                | RDKafkaErrorCode::UnsupportedVersion
        )
    ) || matches!(err, KafkaError::ClientConfig(..) | KafkaError::ClientCreation(..));
    if permanent {
        ConnectorError::Permanent { service: "kafka", message: err.to_string() }
    } else {
        ConnectorError::Transient { service: "kafka", message: err.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_whether_to_retry() {
        let permanent = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert!(!classify(permanent).is_retryable());
        let unknown_topic = KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopicOrPartition);
        assert!(!classify(unknown_topic).is_retryable());
        let transient = KafkaError::MessageProduction(RDKafkaErrorCode::RequestTimedOut);
        assert!(classify(transient).is_retryable());
        assert!(classify(KafkaError::MessageProduction(RDKafkaErrorCode::NotLeaderForPartition)).is_retryable());
    }
}
