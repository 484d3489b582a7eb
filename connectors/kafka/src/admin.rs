use std::sync::Mutex;
use std::time::Duration;

use notiflow_connector::{ConnectorError, TopicAdmin, TopicSpec};
use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::{KafkaConfig, classify};

/// Creates the topics a job needs. Brokers used in tests do not auto-create
/// topics, and a producer writing to a missing topic only fails at its flush
/// timeout, so every job creates its topics explicitly at start.
pub struct KafkaAdmin {
    client: AdminClient<BrokerErrors>,
    config: KafkaConfig,
    replication_factor: i32,
}

/// Remembers the last connection error librdkafka reported (TLS handshake,
/// SASL, refused), so a failed call can say why, not just "timed out".
#[derive(Default)]
pub struct BrokerErrors {
    last: Mutex<Option<String>>,
}

impl rdkafka::consumer::ConsumerContext for BrokerErrors {}

impl ClientContext for BrokerErrors {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel::*;
        if matches!(level, Emerg | Alert | Critical | Error | Warning) {
            tracing::warn!(fac, message, "kafka client");
            *self.last.lock().unwrap() = Some(message.to_string());
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "kafka client");
        *self.last.lock().unwrap() = Some(reason.to_string());
    }
}

/// Why a metadata request fails (TLS handshake, SASL, refused connection), or None when it works.
fn connection_failure(config: &KafkaConfig) -> Option<String> {
    let mut client = config.client_config();
    client.set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
    let consumer: BaseConsumer<BrokerErrors> = client.create_with_context(BrokerErrors::default()).ok()?;
    let failed = consumer.fetch_metadata(None, Duration::from_secs(5)).is_err();
    // Logs and errors arrive on the consumer's queue.
    let _ = consumer.poll(Duration::from_millis(200));
    let reason = consumer.context().last.lock().unwrap().take();
    if failed { reason.or(Some("no broker answered".into())) } else { None }
}

impl KafkaAdmin {
    pub fn new(config: &KafkaConfig) -> Result<Self, ConnectorError> {
        let client = config.client_config().create_with_context(BrokerErrors::default()).map_err(classify)?;
        Ok(KafkaAdmin { client, config: config.clone(), replication_factor: config.replication_factor })
    }

    /// Why the brokers cannot be reached, found in seconds (an admin call would only time out
    /// after its operation timeout, and an admin client does not hand out librdkafka's logs: a
    /// short-lived consumer asks for metadata and reads them).
    pub async fn unreachable(&self) -> Option<ConnectorError> {
        let config = self.config.clone();
        let reason = tokio::task::spawn_blocking(move || connection_failure(&config)).await.ok().flatten()?;
        let message = format!("cannot reach the brokers ({}): {reason}", self.config.bootstrap_servers);
        // TLS and SASL refusals stay until the config changes; a broker still starting does not.
        let settings = ["SSL", "SASL", "uthenticat"].iter().any(|word| reason.contains(word));
        Some(if settings { ConnectorError::Permanent { service: "kafka", message } } else { ConnectorError::Transient { service: "kafka", message } })
    }
}

impl TopicAdmin for KafkaAdmin {
    async fn ensure_topics(&self, topics: &[TopicSpec]) -> Result<(), ConnectorError> {
        let new_topics: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|spec| {
                let topic = NewTopic::new(&spec.name, spec.partitions, TopicReplication::Fixed(self.replication_factor));
                if spec.compacted { topic.set("cleanup.policy", "compact") } else { topic }
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        if let Some(error) = self.unreachable().await {
            return Err(error);
        }
        let results = self.client.create_topics(new_topics.iter(), &options).await.map_err(classify)?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(ConnectorError::Permanent {
                        service: "kafka",
                        message: format!("creating topic {topic}: {code}"),
                    });
                }
            }
        }
        Ok(())
    }
}
