use std::sync::Arc;
use std::time::Duration;

use notiflow_connector::{Acks, ConnectorError, OutRecord, Positions, Sink, note_position};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use crate::{Connection, KafkaConfig, classify};

/// An idempotent producer (no duplicates from its own retries, per-partition
/// order kept) that waits for acknowledgement by all in-sync replicas.
///
/// A producer that hit a fatal error (fenced after an epoch bump that the
/// broker refused, as tansu 0.6 does once records timed out in an outage) is
/// replaced by a new one: the failed records come back to the caller as an
/// error, and its retry goes out through the new producer.
pub struct KafkaSink {
    producer: std::sync::RwLock<FutureProducer<Connection>>,
    config: KafkaConfig,
    message_timeout_ms: u64,
}

/// How long an interactive write (an HTTP answer waits on it) may take.
const INTERACTIVE_TIMEOUT_MS: u64 = 30_000;

/// How long a background job's records may wait for the brokers: longer than
/// an outage it should ride out without starting again from its checkpoint.
const PATIENT_TIMEOUT_MS: u64 = 600_000;

impl KafkaSink {
    /// A sink whose writes fail after 30 s without the brokers (a caller is waiting).
    pub fn new(config: &KafkaConfig) -> Result<Self, ConnectorError> {
        Self::with_timeout(config, INTERACTIVE_TIMEOUT_MS)
    }

    /// A sink for a background job: records wait up to 10 minutes for the brokers.
    pub fn patient(config: &KafkaConfig) -> Result<Self, ConnectorError> {
        Self::with_timeout(config, PATIENT_TIMEOUT_MS)
    }

    fn with_timeout(config: &KafkaConfig, message_timeout_ms: u64) -> Result<Self, ConnectorError> {
        let producer = Self::producer(config, message_timeout_ms)?;
        Ok(KafkaSink { producer: std::sync::RwLock::new(producer), config: config.clone(), message_timeout_ms })
    }

    fn producer(config: &KafkaConfig, message_timeout_ms: u64) -> Result<FutureProducer<Connection>, ConnectorError> {
        let mut client = config.client_config();
        // Defaults that [kafka.properties] may override (latency/patience trade-offs)...
        let defaults = [
            ("linger.ms", config.linger_ms.to_string()),
            ("message.timeout.ms", message_timeout_ms.to_string()),
            ("statistics.interval.ms", "1000".to_string()),
        ];
        for (key, value) in defaults {
            if !config.properties.contains_key(key) {
                client.set(key, value);
            }
        }
        // ...and what exactly-once output needs, which they may not.
        client.set("enable.idempotence", "true").set("acks", "all").create_with_context(Connection::default()).map_err(classify)
    }

    fn current(&self) -> FutureProducer<Connection> {
        self.producer.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// After a failed write: a producer in a fatal state is replaced.
    fn recover(&self, failed: &FutureProducer<Connection>) {
        let Some((code, reason)) = failed.client().fatal_error() else { return };
        let mut producer = self.producer.write().unwrap_or_else(|e| e.into_inner());
        // Another write may have replaced it already.
        if !std::ptr::eq(producer.client().native_ptr(), failed.client().native_ptr()) {
            return;
        }
        match Self::producer(&self.config, self.message_timeout_ms) {
            Ok(fresh) => {
                tracing::warn!(?code, reason, "kafka producer failed for good: replaced by a new one");
                *producer = fresh;
            }
            Err(err) => tracing::error!(%err, "kafka producer failed for good and a new one cannot be made"),
        }
    }

    /// Writes records with the given create times (ms since the epoch), as a
    /// producer that stamps its own request times does (replays, tests).
    pub async fn send_all_at(&self, records: Vec<(OutRecord, i64)>) -> Result<Positions, ConnectorError> {
        let (records, times): (Vec<OutRecord>, Vec<i64>) = records.into_iter().unzip();
        self.send_timed(records, times.into_iter().map(Some).collect()).await
    }

    async fn send_timed(&self, records: Vec<OutRecord>, times: Vec<Option<i64>>) -> Result<Positions, ConnectorError> {
        let producer = self.current();
        let outcome = acknowledged(self.enqueue_all(&producer, &records, &times).await?).await;
        if outcome.is_err() {
            self.recover(&producer);
        }
        outcome
    }

    /// Queues every record in the producer; returns each one's delivery with its topic.
    async fn enqueue_all(
        &self,
        producer: &FutureProducer<Connection>,
        records: &[OutRecord],
        times: &[Option<i64>],
    ) -> Result<Vec<(DeliveryFuture, Arc<str>)>, ConnectorError> {
        let mut pending = Vec::with_capacity(records.len());
        for (record, time) in records.iter().zip(times) {
            pending.push((enqueue_waiting(producer, record, *time).await?, record.topic.clone()));
        }
        Ok(pending)
    }

    /// Writes records and reports each one's outcome (partition, offset) on
    /// its own: a caller answering per record (the HTTP gateway) knows which
    /// were acknowledged when some were not.
    pub async fn send_each(&self, records: &[OutRecord]) -> Vec<Result<(i32, i64), ConnectorError>> {
        let producer = self.current();
        let mut pending = Vec::with_capacity(records.len());
        for record in records {
            pending.push(enqueue_waiting(&producer, record, None).await);
        }
        let mut outcomes = Vec::with_capacity(records.len());
        for delivery in pending {
            outcomes.push(match delivery {
                Err(err) => Err(err),
                Ok(delivery) => match delivery.await {
                    Ok(Ok(delivered)) => Ok((delivered.partition, delivered.offset)),
                    Ok(Err((err, _message))) => Err(classify(err)),
                    Err(_canceled) => Err(ConnectorError::Transient { service: "kafka", message: "producer dropped a delivery".into() }),
                },
            });
        }
        if outcomes.iter().any(Result::is_err) {
            self.recover(&producer);
        }
        outcomes
    }

}

/// Queues one record, waiting for room while the producer's local queue is full.
async fn enqueue_waiting(producer: &FutureProducer<Connection>, record: &OutRecord, timestamp_ms: Option<i64>) -> Result<DeliveryFuture, ConnectorError> {
    loop {
        match enqueue(producer, record, timestamp_ms) {
            // Let deliveries drain, then retry.
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => tokio::time::sleep(Duration::from_millis(5)).await,
            other => return other.map_err(classify),
        }
    }
}

fn enqueue(producer: &FutureProducer<Connection>, record: &OutRecord, timestamp_ms: Option<i64>) -> Result<DeliveryFuture, KafkaError> {
    let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
    for h in &record.headers {
        headers = headers.insert(Header { key: &h.name, value: Some(&h.value) });
    }
    let mut future_record = FutureRecord::to(&record.topic).payload(&record.payload).headers(headers);
    if let Some(key) = &record.key {
        future_record = future_record.key(key);
    }
    if let Some(ms) = timestamp_ms {
        future_record = future_record.timestamp(ms);
    }
    producer.send_result(future_record).map_err(|(err, _)| err)
}

/// Waits for every delivery: the highest offset per partition, or the first error.
async fn acknowledged(pending: Vec<(DeliveryFuture, Arc<str>)>) -> Result<Positions, ConnectorError> {
    let mut positions = Positions::new();
    for (delivery, topic) in pending {
        match delivery.await {
            Ok(Ok(delivered)) => note_position(&mut positions, &topic, delivered.partition, delivered.offset),
            Ok(Err((err, _message))) => return Err(classify(err)),
            Err(_canceled) => {
                return Err(ConnectorError::Transient { service: "kafka", message: "producer dropped a delivery".into() });
            }
        }
    }
    Ok(positions)
}

impl Sink for KafkaSink {
    async fn send_all(&self, records: Vec<OutRecord>) -> Result<Positions, ConnectorError> {
        let times = vec![None; records.len()];
        self.send_timed(records, times).await
    }

    async fn submit(&self, records: Vec<OutRecord>) -> Result<Acks, ConnectorError> {
        let times = vec![None; records.len()];
        // A failed acknowledgement ends the job, which starts again with a new sink.
        Ok(Acks::new(acknowledged(self.enqueue_all(&self.current(), &records, &times).await?)))
    }
}
