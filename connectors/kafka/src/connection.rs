//! The client's view of its brokers during an outage: librdkafka reconnects on
//! its own, so losing every broker is a state to report (logs once per outage,
//! metrics), not an error that ends the job.

use std::sync::Mutex;
use std::time::Instant;

use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;

/// Errors librdkafka reports while it retries by itself: the brokers are
/// unreachable (down, restarting, network), not misconfigured.
pub fn is_connection_loss(err: &KafkaError) -> bool {
    matches!(
        err.rdkafka_error_code(),
        Some(RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::Resolve | RDKafkaErrorCode::OperationTimedOut)
    )
}

/// When the client last lost all its brokers, and whether it got them back.
#[derive(Default)]
pub struct Connection {
    down_since: Mutex<Option<Instant>>,
}

impl Connection {
    /// A connection error: the first of an outage is logged and counted.
    pub fn lost(&self, error: &KafkaError, reason: &str) {
        let mut down = self.down_since.lock().unwrap_or_else(|e| e.into_inner());
        if down.is_none() {
            *down = Some(Instant::now());
            tracing::warn!(%error, reason, "kafka unreachable: holding state and retrying until the brokers answer");
            metrics::counter!("notiflow_kafka_outages_total").increment(1);
            metrics::gauge!("notiflow_kafka_connected").set(0.0);
        }
    }

    /// Brokers answered again (a record arrived, or the statistics show one up).
    pub fn answered(&self) {
        let mut down = self.down_since.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(since) = down.take() {
            let seconds = since.elapsed().as_secs_f64();
            tracing::info!(outage_seconds = format!("{seconds:.1}"), "kafka reachable again");
            metrics::histogram!("notiflow_kafka_outage_seconds").record(seconds);
        }
        metrics::gauge!("notiflow_kafka_connected").set(1.0);
    }

    pub fn is_down(&self) -> bool {
        self.down_since.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// From librdkafka's periodic statistics: any broker (not the bootstrap
    /// placeholder) up means the outage is over.
    pub fn observe(&self, statistics: &Statistics) {
        if statistics.brokers.values().any(|b| b.state == "UP" && b.nodeid >= 0) {
            self.answered();
        }
    }

    /// librdkafka's error callback: connection losses are an outage (above);
    /// the end of a partition is not an error at all; the rest is logged as one.
    pub fn client_error(&self, error: KafkaError, reason: &str) {
        if is_connection_loss(&error) {
            self.lost(&error, reason);
        } else if matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::PartitionEOF)) {
            tracing::trace!(reason, "partition end");
        } else {
            tracing::error!(%error, reason, "kafka client error");
        }
    }

    /// librdkafka's log callback: its per-connection FAIL lines repeat at every
    /// reconnect attempt during an outage, already reported once by `lost`.
    pub fn client_log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel::*;
        match level {
            _ if fac == "FAIL" && self.is_down() => tracing::debug!(fac, message, "librdkafka"),
            Emerg | Alert | Critical | Error => tracing::error!(fac, message, "librdkafka"),
            Warning => tracing::warn!(fac, message, "librdkafka"),
            Notice | Info => tracing::info!(fac, message, "librdkafka"),
            Debug => tracing::debug!(fac, message, "librdkafka"),
        }
    }
}

/// A producer's context: the same outage reporting.
impl rdkafka::ClientContext for Connection {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.client_log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.client_error(error, reason);
    }

    fn stats(&self, statistics: Statistics) {
        self.observe(&statistics);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_brokers_are_an_outage_and_bad_settings_are_not() {
        assert!(is_connection_loss(&KafkaError::MessageConsumption(RDKafkaErrorCode::AllBrokersDown)));
        assert!(is_connection_loss(&KafkaError::MessageConsumption(RDKafkaErrorCode::BrokerTransportFailure)));
        assert!(!is_connection_loss(&KafkaError::MessageConsumption(RDKafkaErrorCode::TopicAuthorizationFailed)));
        assert!(!is_connection_loss(&KafkaError::MessageConsumption(RDKafkaErrorCode::SaslAuthenticationFailed)));

        let connection = Connection::default();
        assert!(!connection.is_down());
        connection.lost(&KafkaError::MessageConsumption(RDKafkaErrorCode::AllBrokersDown), "2/2 brokers are down");
        assert!(connection.is_down());
        connection.answered();
        assert!(!connection.is_down());
    }
}
