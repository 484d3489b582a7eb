use std::sync::Arc;
use std::time::Duration;

use notiflow_connector::{Acks, ConnectorError, OutRecord, Positions, Sink, note_position};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use crate::{KafkaConfig, classify};

/// An idempotent producer (no duplicates from its own retries, per-partition
/// order kept) that waits for acknowledgement by all in-sync replicas.
pub struct KafkaSink {
    producer: FutureProducer,
}

impl KafkaSink {
    pub fn new(config: &KafkaConfig) -> Result<Self, ConnectorError> {
        let mut client = config.client_config();
        // Defaults that [kafka.properties] may override (latency/patience trade-offs)...
        for (key, value) in [("linger.ms", config.linger_ms.to_string()), ("message.timeout.ms", "30000".to_string())] {
            if !config.properties.contains_key(key) {
                client.set(key, value);
            }
        }
        // ...and what exactly-once output needs, which they may not.
        let producer = client.set("enable.idempotence", "true").set("acks", "all").create().map_err(classify)?;
        Ok(KafkaSink { producer })
    }

    /// Writes records with the given create times (ms since the epoch), as a
    /// producer that stamps its own request times does (replays, tests).
    pub async fn send_all_at(&self, records: Vec<(OutRecord, i64)>) -> Result<Positions, ConnectorError> {
        let (records, times): (Vec<OutRecord>, Vec<i64>) = records.into_iter().unzip();
        self.send_timed(records, times.into_iter().map(Some).collect()).await
    }

    async fn send_timed(&self, records: Vec<OutRecord>, times: Vec<Option<i64>>) -> Result<Positions, ConnectorError> {
        acknowledged(self.enqueue_all(&records, &times).await?).await
    }

    /// Queues every record in the producer; returns each one's delivery with its topic.
    async fn enqueue_all(&self, records: &[OutRecord], times: &[Option<i64>]) -> Result<Vec<(DeliveryFuture, Arc<str>)>, ConnectorError> {
        let mut pending = Vec::with_capacity(records.len());
        for (record, time) in records.iter().zip(times) {
            pending.push((self.enqueue_waiting(record, *time).await?, record.topic.clone()));
        }
        Ok(pending)
    }

    /// Queues one record, waiting for room while the producer's local queue is full.
    async fn enqueue_waiting(&self, record: &OutRecord, timestamp_ms: Option<i64>) -> Result<DeliveryFuture, ConnectorError> {
        loop {
            match self.enqueue(record, timestamp_ms) {
                // Let deliveries drain, then retry.
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => tokio::time::sleep(Duration::from_millis(5)).await,
                other => return other.map_err(classify),
            }
        }
    }

    /// Writes records and reports each one's outcome (partition, offset) on
    /// its own: a caller answering per record (the HTTP gateway) knows which
    /// were acknowledged when some were not.
    pub async fn send_each(&self, records: &[OutRecord]) -> Vec<Result<(i32, i64), ConnectorError>> {
        let mut pending = Vec::with_capacity(records.len());
        for record in records {
            pending.push(self.enqueue_waiting(record, None).await);
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
        outcomes
    }

    fn enqueue(&self, record: &OutRecord, timestamp_ms: Option<i64>) -> Result<DeliveryFuture, KafkaError> {
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
        self.producer.send_result(future_record).map_err(|(err, _)| err)
    }
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
        Ok(Acks::new(acknowledged(self.enqueue_all(&records, &times).await?)))
    }
}
