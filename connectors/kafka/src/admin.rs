use std::time::Duration;

use notiflow_connector::{ConnectorError, TopicAdmin, TopicSpec};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::{KafkaConfig, classify};

/// Creates the topics a job needs. Brokers used in tests do not auto-create
/// topics, and a producer writing to a missing topic only fails at its flush
/// timeout, so every job creates its topics explicitly at start.
pub struct KafkaAdmin {
    client: AdminClient<DefaultClientContext>,
    replication_factor: i32,
}

impl KafkaAdmin {
    pub fn new(config: &KafkaConfig) -> Result<Self, ConnectorError> {
        let client = config.client_config().create().map_err(classify)?;
        Ok(KafkaAdmin { client, replication_factor: config.replication_factor })
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
