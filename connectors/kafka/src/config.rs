use std::collections::BTreeMap;

use rdkafka::ClientConfig;
use serde::Deserialize;

/// How to reach the Kafka cluster.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list, as librdkafka's `bootstrap.servers`.
    pub bootstrap_servers: String,
    /// Replication factor for topics notiflow creates (use 3 on a real cluster).
    #[serde(default = "default_replication")]
    pub replication_factor: i32,
    /// How long a broker may hold a fetch open when it has less than
    /// `fetch.min.bytes`. Low by default: some brokers (tansu) hold every fetch
    /// for the full wait, which would add that much latency to each batch.
    #[serde(default = "default_fetch_wait_ms")]
    pub fetch_wait_max_ms: u32,
    /// How long the producer waits to fill a batch (librdkafka `linger.ms`):
    /// throughput against latency. Measured on tansu at 20k requests/s:
    /// 1 ms gives p50 34 / p99 190-285 ms (many small produce requests make
    /// the broker stall), 5 ms gives p50 48 / p99 68 ms.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u32,
    /// How long the group waits for a silent member before moving its
    /// partitions elsewhere. A restarted instance gets its partitions back
    /// only after the old member's session expires, so keep it short.
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u32,
    /// Extra librdkafka properties (security.protocol, sasl.*, ...). Secrets
    /// belong in the environment: `NOTIFLOW_KAFKA_SASL_PASSWORD` is read at start.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_replication() -> i32 {
    1
}

fn default_fetch_wait_ms() -> u32 {
    10
}

fn default_linger_ms() -> u32 {
    5
}

fn default_session_timeout_ms() -> u32 {
    10_000
}

impl KafkaConfig {
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        KafkaConfig {
            bootstrap_servers: bootstrap_servers.into(),
            replication_factor: default_replication(),
            fetch_wait_max_ms: default_fetch_wait_ms(),
            session_timeout_ms: default_session_timeout_ms(),
            linger_ms: default_linger_ms(),
            properties: BTreeMap::new(),
        }
    }

    /// The common client settings; callers add consumer or producer ones.
    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers);
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        if let Ok(password) = std::env::var("NOTIFLOW_KAFKA_SASL_PASSWORD") {
            config.set("sasl.password", password);
        }
        config
    }
}
