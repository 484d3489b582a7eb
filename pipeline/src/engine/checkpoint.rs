//! Checkpoints per input partition, kept in a compacted state topic so that
//! a partition's state can follow it to whichever instance the consumer
//! group assigns it to (see docs/exactly-once.md).
//!
//! One checkpoint = one source topic partition: the next offset its state
//! reflects, every stateful operator's state for it, and the output positions
//! ("emitted end") at that moment. Its bytes are split into chunks (Kafka
//! caps record sizes) written under keys `<topic>/<partition>/<slot>/<n>`,
//! then a marker under `<topic>/<partition>` naming the epoch, slot, chunk
//! count and SHA-256 of the whole. Consecutive checkpoints of a partition
//! alternate between two slots, so the chunks a marker points at are never
//! overwritten before the next marker lands: a crash mid-write leaves the
//! previous checkpoint whole. Compaction keeps only the newest of each key.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use notiflow_connector::{LogReader, OutRecord, Record};
use sha2::{Digest, Sha256};

use super::state_bytes::Cursor;

const MARKER_MAGIC: &[u8; 6] = b"NFMK1\n";
const CHUNK_MAGIC: &[u8; 6] = b"NFCH1\n";
const BODY_MAGIC: &[u8; 6] = b"NFCP2\n";
/// Below Kafka's default 1 MB record limit, with room for the header.
pub const CHUNK_BYTES: usize = 512 * 1024;

/// The checkpoint of one source topic partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionCheckpoint {
    pub epoch: u64,
    pub topic: String,
    pub partition: i32,
    /// Next offset to process: the state reflects every record below.
    pub next_offset: i64,
    /// (flow, stage) -> that operator's state for this partition.
    pub operators: BTreeMap<(u32, u32), Vec<u8>>,
    /// Per output (topic, partition): the offset after our last durable
    /// write when this checkpoint was taken. Outputs of records at or after
    /// `next_offset` lie at or beyond it.
    pub emitted_end: BTreeMap<(String, i32), i64>,
    /// Records of this partition held by a timer source (`hold.rs`); empty
    /// when it has none.
    pub held: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("state topic {topic}: {source}")]
    Read { topic: String, source: notiflow_connector::ConnectorError },
    #[error("checkpoint of {unit} in state topic {topic} is corrupt: {reason}")]
    Corrupt { topic: String, unit: String, reason: String },
}

/// The compacted topic holding a consumer group's checkpoints.
#[derive(Debug, Clone)]
pub struct StateTopic {
    pub topic: Arc<str>,
}

fn unit_key(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

impl StateTopic {
    pub fn new(topic: impl Into<Arc<str>>) -> Self {
        StateTopic { topic: topic.into() }
    }

    /// The records that store `checkpoint` in `slot` (0 or 1): chunks first,
    /// then the marker. Written in this order to one partition.
    pub fn records(&self, checkpoint: &PartitionCheckpoint, slot: u8) -> Vec<OutRecord> {
        let body = encode(checkpoint);
        let unit = unit_key(&checkpoint.topic, checkpoint.partition);
        let chunks: Vec<&[u8]> = if body.is_empty() { vec![&[][..]] } else { body.chunks(CHUNK_BYTES).collect() };
        let mut out = Vec::with_capacity(chunks.len() + 1);
        for (n, chunk) in chunks.iter().enumerate() {
            let mut value = CHUNK_MAGIC.to_vec();
            value.extend_from_slice(&checkpoint.epoch.to_le_bytes());
            value.extend_from_slice(chunk);
            out.push(OutRecord { topic: self.topic.clone(), key: Some(format!("{unit}/{slot}/{n}").into_bytes()), payload: value, headers: vec![] });
        }
        let mut marker = MARKER_MAGIC.to_vec();
        marker.extend_from_slice(&checkpoint.epoch.to_le_bytes());
        marker.push(slot);
        marker.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
        marker.extend_from_slice(&Sha256::digest(&body));
        out.push(OutRecord { topic: self.topic.clone(), key: Some(unit.into_bytes()), payload: marker, headers: vec![] });
        out
    }

    /// The newest whole checkpoint of each of `units` (topic, partition) that
    /// has one, with the slot it occupies.
    pub async fn load<R: LogReader>(&self, reader: &R, units: &[(Arc<str>, i32)]) -> Result<Vec<(PartitionCheckpoint, u8)>, CheckpointError> {
        let read = |source| CheckpointError::Read { topic: self.topic.to_string(), source };
        // The newest record per key, as compaction would leave it.
        let mut latest: HashMap<Vec<u8>, Record> = HashMap::new();
        for (partition, _) in reader.end_offsets(&self.topic).await.map_err(read)? {
            for record in reader.read_from(&self.topic, partition, 0).await.map_err(read)? {
                if let Some(key) = record.key.clone() {
                    latest.insert(key, record);
                }
            }
        }
        let mut found = Vec::new();
        for (topic, partition) in units {
            let unit = unit_key(topic, *partition);
            let corrupt = |reason: String| CheckpointError::Corrupt { topic: self.topic.to_string(), unit: unit.clone(), reason };
            let Some(marker) = latest.get(unit.as_bytes()).and_then(|r| r.payload.as_deref()) else { continue };
            let marker = marker.strip_prefix(MARKER_MAGIC.as_slice()).filter(|m| m.len() == 8 + 1 + 4 + 32).ok_or_else(|| corrupt("bad marker".into()))?;
            let epoch = u64::from_le_bytes(marker[..8].try_into().expect("8 bytes"));
            let slot = marker[8];
            let count = u32::from_le_bytes(marker[9..13].try_into().expect("4 bytes"));
            let digest = &marker[13..];
            let mut body = Vec::new();
            for n in 0..count {
                let key = format!("{unit}/{slot}/{n}");
                let chunk = latest.get(key.as_bytes()).and_then(|r| r.payload.as_deref()).ok_or_else(|| corrupt(format!("chunk {key} missing")))?;
                let chunk = chunk.strip_prefix(CHUNK_MAGIC.as_slice()).filter(|c| c.len() >= 8).ok_or_else(|| corrupt(format!("chunk {key} malformed")))?;
                if u64::from_le_bytes(chunk[..8].try_into().expect("8 bytes")) != epoch {
                    return Err(corrupt(format!("chunk {key} belongs to another epoch")));
                }
                body.extend_from_slice(&chunk[8..]);
            }
            if Sha256::digest(&body).as_slice() != digest {
                return Err(corrupt("checksum mismatch".into()));
            }
            let checkpoint = decode(&body).map_err(corrupt)?;
            found.push((checkpoint, slot));
        }
        Ok(found)
    }
}

fn encode(c: &PartitionCheckpoint) -> Vec<u8> {
    let mut body = BODY_MAGIC.to_vec();
    body.extend_from_slice(&c.epoch.to_le_bytes());
    put_str(&mut body, &c.topic);
    body.extend_from_slice(&c.partition.to_le_bytes());
    body.extend_from_slice(&c.next_offset.to_le_bytes());
    body.extend_from_slice(&(c.operators.len() as u64).to_le_bytes());
    for ((flow, stage), state) in &c.operators {
        body.extend_from_slice(&flow.to_le_bytes());
        body.extend_from_slice(&stage.to_le_bytes());
        body.extend_from_slice(&(state.len() as u64).to_le_bytes());
        body.extend_from_slice(state);
    }
    body.extend_from_slice(&(c.emitted_end.len() as u64).to_le_bytes());
    for ((topic, partition), offset) in &c.emitted_end {
        put_str(&mut body, topic);
        body.extend_from_slice(&partition.to_le_bytes());
        body.extend_from_slice(&offset.to_le_bytes());
    }
    body.extend_from_slice(&(c.held.len() as u64).to_le_bytes());
    body.extend_from_slice(&c.held);
    body
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

fn decode(bytes: &[u8]) -> Result<PartitionCheckpoint, String> {
    let body = bytes.strip_prefix(BODY_MAGIC.as_slice()).ok_or("not a notiflow checkpoint")?;
    read_body(&mut Cursor::new(body)).map_err(|e| e.to_string())
}

fn read_body(r: &mut Cursor<'_>) -> datafusion::common::Result<PartitionCheckpoint> {
    let string = |r: &mut Cursor<'_>| -> datafusion::common::Result<String> {
        let len = r.u32()? as usize;
        String::from_utf8(r.take(len)?.to_vec()).map_err(|e| datafusion::common::DataFusionError::Internal(e.to_string()))
    };
    let epoch = r.u64()?;
    let topic = string(r)?;
    let partition = r.i32()?;
    let next_offset = r.i64()?;
    let mut operators = BTreeMap::new();
    for _ in 0..r.u64()? {
        let (flow, stage) = (r.u32()?, r.u32()?);
        let len = r.u64()? as usize;
        operators.insert((flow, stage), r.take(len)?.to_vec());
    }
    let mut emitted_end = BTreeMap::new();
    for _ in 0..r.u64()? {
        let topic = string(r)?;
        let partition = r.i32()?;
        emitted_end.insert((topic, partition), r.i64()?);
    }
    // Checkpoints written before timers existed end here.
    let held = if r.is_done() {
        Vec::new()
    } else {
        let len = r.u64()? as usize;
        r.take(len)?.to_vec()
    };
    if !r.is_done() {
        return Err(datafusion::common::DataFusionError::Internal("trailing bytes".into()));
    }
    Ok(PartitionCheckpoint { epoch, topic, partition, next_offset, operators, emitted_end, held })
}

#[cfg(test)]
mod tests {
    use super::*;
    use notiflow_connector::Sink;
    use notiflow_connector::memory::MemoryBroker;

    fn sample(epoch: u64, partition: i32, state_bytes: usize) -> PartitionCheckpoint {
        PartitionCheckpoint {
            epoch,
            topic: "notify.requests".into(),
            partition,
            next_offset: 41 + epoch as i64,
            operators: [((0, 1), (0..state_bytes).map(|i| (i % 251) as u8).collect()), ((2, 1), vec![])].into(),
            emitted_end: [(("notify.dispatch.high".to_string(), 1), 99)].into(),
            held: vec![7; epoch as usize % 3],
        }
    }

    async fn write(broker: &MemoryBroker, records: Vec<OutRecord>) {
        broker.producer().send_all(records).await.unwrap();
    }

    fn broker() -> MemoryBroker {
        let broker = MemoryBroker::new();
        broker.create_topic(&notiflow_connector::TopicSpec { name: "state".into(), partitions: 1, compacted: true });
        broker
    }

    #[tokio::test]
    async fn round_trips_large_state_in_chunks_per_partition() {
        let broker = broker();
        let store = StateTopic::new("state");
        let big = sample(3, 0, 2 * CHUNK_BYTES + 17);
        let records = store.records(&big, 1);
        assert_eq!(records.len(), 4, "three chunks and a marker");
        write(&broker, records).await;
        write(&broker, store.records(&sample(1, 5, 10), 1)).await;
        let units = [(Arc::from("notify.requests"), 0), (Arc::from("notify.requests"), 5), (Arc::from("notify.requests"), 9)];
        let loaded = store.load(&broker, &units).await.unwrap();
        assert_eq!(loaded, vec![(big, 1), (sample(1, 5, 10), 1)], "partition 9 has none");
    }

    #[tokio::test]
    async fn a_torn_write_leaves_the_previous_checkpoint_whole() {
        let broker = broker();
        let store = StateTopic::new("state");
        write(&broker, store.records(&sample(1, 0, 3 * CHUNK_BYTES), 0)).await;
        // The next epoch goes to the other slot; it dies before its marker.
        let mut torn = store.records(&sample(2, 0, 3 * CHUNK_BYTES), 1);
        torn.truncate(2);
        write(&broker, torn).await;
        let loaded = store.load(&broker, &[(Arc::from("notify.requests"), 0)]).await.unwrap();
        assert_eq!(loaded, vec![(sample(1, 0, 3 * CHUNK_BYTES), 0)]);
        // Writing into the slot the marker names is what the slots prevent: it is detected.
        write(&broker, store.records(&sample(3, 0, 10), 0)[..1].to_vec()).await;
        let error = store.load(&broker, &[(Arc::from("notify.requests"), 0)]).await.unwrap_err().to_string();
        assert!(error.contains("another epoch"), "{error}");
    }
}
