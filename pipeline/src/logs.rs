//! The logs a pipeline can read back (for checkpoints and replay
//! suppression): Kafka, or the in-process log of the embedded default.

use notiflow_connector::memory::MemoryBroker;
use notiflow_connector::{ConnectorError, LogReader, Record};
use notiflow_kafka::KafkaReader;

pub enum Logs {
    Kafka(KafkaReader),
    Memory(MemoryBroker),
}

impl LogReader for Logs {
    async fn end_offsets(&self, topic: &str) -> Result<Vec<(i32, i64)>, ConnectorError> {
        match self {
            Logs::Kafka(reader) => reader.end_offsets(topic).await,
            Logs::Memory(broker) => broker.end_offsets(topic).await,
        }
    }

    async fn read_from(&self, topic: &str, partition: i32, from: i64) -> Result<Vec<Record>, ConnectorError> {
        match self {
            Logs::Kafka(reader) => reader.read_from(topic, partition, from).await,
            Logs::Memory(broker) => broker.read_from(topic, partition, from).await,
        }
    }
}
