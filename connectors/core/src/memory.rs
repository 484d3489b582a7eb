//! The in-process topic log of the embedded default: partitioned topics,
//! consumer-group offsets and keyed partitioning, held in memory. It stands in
//! for a Kafka cluster when no `bootstrap_servers` is configured, so the same
//! job code runs with no servers at all. Nothing survives the process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::{
    BatchLimits, ConnectorError, LogReader, Offsets, OutRecord, Positions, Record, Sink, Source, TopicAdmin, TopicSpec,
    note_position,
};

#[derive(Default)]
struct Log {
    topics: HashMap<Arc<str>, Vec<Vec<Record>>>,
    /// Committed next-offsets per (group, topic, partition).
    committed: HashMap<(String, Arc<str>, i32), i64>,
    round_robin: u64,
}

/// A shared handle to one in-process broker.
#[derive(Clone, Default)]
pub struct MemoryBroker {
    log: Arc<Mutex<Log>>,
    appended: Arc<Notify>,
}

impl MemoryBroker {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn create_topic(&self, spec: &TopicSpec) {
        let mut log = self.log.lock().expect("memory log poisoned");
        log.topics
            .entry(Arc::from(spec.name.as_str()))
            .or_insert_with(|| vec![Vec::new(); spec.partitions.max(1) as usize]);
    }

    /// Appends records; fails for a topic that was never created, as a broker
    /// without auto-creation does.
    pub fn append(&self, records: Vec<OutRecord>) -> Result<Positions, ConnectorError> {
        let now = now_ms();
        self.append_at(records.into_iter().map(|r| (r, now)).collect())
    }

    /// Appends records with the given timestamps (ms since the epoch): for
    /// tests that need reproducible record times.
    pub fn append_at(&self, records: Vec<(OutRecord, i64)>) -> Result<Positions, ConnectorError> {
        let mut positions = Positions::new();
        let mut log = self.log.lock().expect("memory log poisoned");
        for (out, timestamp_ms) in records {
            let round_robin = log.round_robin;
            let partitions = log.topics.get_mut(&out.topic).ok_or_else(|| ConnectorError::Permanent {
                service: "memory",
                message: format!("unknown topic {:?} (create it first)", out.topic),
            })?;
            let partition = match &out.key {
                Some(key) => (fnv1a(key) % partitions.len() as u64) as usize,
                None => (round_robin % partitions.len() as u64) as usize,
            };
            let records = &mut partitions[partition];
            let offset = records.len() as i64;
            note_position(&mut positions, &out.topic, partition as i32, offset);
            records.push(Record {
                topic: out.topic,
                partition: partition as i32,
                offset,
                key: out.key,
                payload: Some(out.payload),
                timestamp_ms: Some(timestamp_ms),
                headers: out.headers,
            });
            log.round_robin = round_robin.wrapping_add(1);
        }
        drop(log);
        self.appended.notify_waiters();
        Ok(positions)
    }

    /// Every record of a topic, partition by partition (for reports and tests).
    pub fn read_all(&self, topic: &str) -> Vec<Record> {
        let log = self.log.lock().expect("memory log poisoned");
        log.topics.get(topic).map(|parts| parts.iter().flatten().cloned().collect()).unwrap_or_default()
    }

    pub fn committed(&self, group: &str, topic: &str, partition: i32) -> Option<i64> {
        let log = self.log.lock().expect("memory log poisoned");
        log.committed.get(&(group.to_string(), Arc::from(topic), partition)).copied()
    }

    /// A consumer in `group` reading every partition of `topics` from the
    /// group's committed offsets (or the start).
    pub fn consumer(&self, group: &str, topics: &[&str]) -> MemorySource {
        MemorySource {
            broker: self.clone(),
            group: group.to_string(),
            topics: topics.iter().map(|t| Arc::from(*t)).collect(),
            positions: HashMap::new(),
            announced: false,
            share: None,
        }
    }

    pub fn producer(&self) -> MemorySink {
        MemorySink { broker: self.clone() }
    }
}

pub struct MemorySource {
    broker: MemoryBroker,
    group: String,
    topics: Vec<Arc<str>>,
    positions: HashMap<(Arc<str>, i32), i64>,
    /// Whether the (whole) assignment was reported.
    announced: bool,
    /// This consumer's share when a group has several members (None: all of it).
    share: Option<Share>,
}

/// A static share of a group's partitions: partition `p` of a shared topic
/// belongs to member `p % members`; `whole` topics (lookup tables every
/// member needs) are read entirely by each.
struct Share {
    member: usize,
    members: usize,
    whole: Vec<Arc<str>>,
}

impl MemorySource {
    /// Makes this consumer member `member` of `members` in its group (the
    /// in-process stand-in for a consumer group's assignment).
    pub fn member_of(mut self, member: usize, members: usize, whole_topics: &[&str]) -> Self {
        assert!(member < members, "member {member} of {members}");
        self.share = Some(Share { member, members, whole: whole_topics.iter().map(|t| Arc::from(*t)).collect() });
        self
    }

    fn owns(&self, topic: &Arc<str>, partition: usize) -> bool {
        match &self.share {
            None => true,
            Some(share) => share.whole.contains(topic) || partition % share.members == share.member,
        }
    }

    fn take_available(&mut self, max_records: usize) -> Vec<Record> {
        let log = self.broker.log.lock().expect("memory log poisoned");
        let mut batch = Vec::new();
        for topic in &self.topics {
            let Some(partitions) = log.topics.get(topic) else { continue };
            for (partition, records) in partitions.iter().enumerate() {
                if !self.owns(topic, partition) {
                    continue;
                }
                let key = (topic.clone(), partition as i32);
                let committed = log.committed.get(&(self.group.clone(), topic.clone(), partition as i32));
                let position = self.positions.entry(key).or_insert_with(|| committed.copied().unwrap_or(0));
                while batch.len() < max_records && (*position as usize) < records.len() {
                    batch.push(records[*position as usize].clone());
                    *position += 1;
                }
            }
        }
        batch
    }
}

impl Source for MemorySource {
    async fn next_batch(&mut self, limits: BatchLimits) -> Result<Vec<Record>, ConnectorError> {
        let deadline = tokio::time::Instant::now() + limits.max_wait;
        loop {
            // Register interest before looking, so an append in between is not missed.
            let appended = self.broker.appended.clone();
            let notified = appended.notified();
            let batch = self.take_available(limits.max_records);
            if !batch.is_empty() {
                return Ok(batch);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    /// The member's partitions (every partition of its topics, or its share), once.
    fn assignment_changes(&mut self) -> Vec<crate::AssignmentChange> {
        if self.announced {
            return Vec::new();
        }
        self.announced = true;
        let log = self.broker.log.lock().expect("memory log poisoned");
        let partitions: Vec<(Arc<str>, i32)> = self
            .topics
            .iter()
            .flat_map(|t| (0..log.topics.get(t).map_or(0, |p| p.len())).map(move |p| (t.clone(), p)))
            .filter(|(t, p)| self.owns(t, *p))
            .map(|(t, p)| (t, p as i32))
            .collect();
        vec![crate::AssignmentChange::Assigned(partitions)]
    }

    async fn commit(&mut self, offsets: &Offsets) -> Result<(), ConnectorError> {
        let mut log = self.broker.log.lock().expect("memory log poisoned");
        for (topic, partition, next) in offsets.iter() {
            let slot = log.committed.entry((self.group.clone(), Arc::from(topic), partition)).or_insert(next);
            *slot = (*slot).max(next);
        }
        Ok(())
    }
}

pub struct MemorySink {
    broker: MemoryBroker,
}

impl Sink for MemorySink {
    async fn send_all(&self, records: Vec<OutRecord>) -> Result<Positions, ConnectorError> {
        self.broker.append(records)
    }
}

impl LogReader for MemoryBroker {
    async fn end_offsets(&self, topic: &str) -> Result<Vec<(i32, i64)>, ConnectorError> {
        let log = self.log.lock().expect("memory log poisoned");
        let partitions = log.topics.get(topic).ok_or_else(|| ConnectorError::Permanent {
            service: "memory",
            message: format!("unknown topic {topic:?}"),
        })?;
        Ok(partitions.iter().enumerate().map(|(p, records)| (p as i32, records.len() as i64)).collect())
    }

    async fn read_from(&self, topic: &str, partition: i32, from: i64) -> Result<Vec<Record>, ConnectorError> {
        let log = self.log.lock().expect("memory log poisoned");
        let records = log.topics.get(topic).and_then(|p| p.get(partition as usize)).map(Vec::as_slice).unwrap_or_default();
        Ok(records.get(from.max(0) as usize..).map(<[Record]>::to_vec).unwrap_or_default())
    }
}

impl TopicAdmin for MemoryBroker {
    async fn ensure_topics(&self, topics: &[TopicSpec]) -> Result<(), ConnectorError> {
        topics.iter().for_each(|t| self.create_topic(t));
        Ok(())
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(topic: &str, key: &str, payload: &str) -> OutRecord {
        OutRecord {
            topic: Arc::from(topic),
            key: Some(key.as_bytes().to_vec()),
            payload: payload.as_bytes().to_vec(),
            headers: vec![],
        }
    }

    #[tokio::test]
    async fn same_key_same_partition_and_group_resumes_from_commit() {
        let broker = MemoryBroker::new();
        broker.create_topic(&TopicSpec::new("t", 4));
        let positions = broker.append((0..10).map(|i| out("t", "k", &i.to_string())).collect()).unwrap();
        let all = broker.read_all("t");
        assert_eq!(positions.into_iter().collect::<Vec<_>>(), vec![((Arc::from("t"), all[0].partition), 9)]);
        let ends = broker.end_offsets("t").await.unwrap();
        assert_eq!(ends.iter().map(|(_, e)| e).sum::<i64>(), 10);
        let tail = broker.read_from("t", all[0].partition, 7).await.unwrap();
        assert_eq!(tail.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![7, 8, 9]);
        assert_eq!(all.len(), 10);
        assert!(all.iter().all(|r| r.partition == all[0].partition), "one key, one partition");

        let limits = BatchLimits { max_records: 4, max_wait: Duration::from_millis(10) };
        let mut consumer = broker.consumer("g", &["t"]);
        let first = consumer.next_batch(limits).await.unwrap();
        assert_eq!(first.len(), 4);
        let mut offsets = Offsets::default();
        first.iter().for_each(|r| offsets.advance_past(r));
        consumer.commit(&offsets).await.unwrap();

        // A new consumer of the same group starts after the committed records.
        let mut restarted = broker.consumer("g", &["t"]);
        let rest = restarted.next_batch(BatchLimits { max_records: 100, ..limits }).await.unwrap();
        assert_eq!(rest.len(), 6);
        assert_eq!(rest[0].payload.as_deref(), Some(&b"4"[..]));
    }

    #[tokio::test]
    async fn empty_batch_after_max_wait_and_wakes_on_append() {
        let broker = MemoryBroker::new();
        broker.create_topic(&TopicSpec::new("t", 1));
        let mut consumer = broker.consumer("g", &["t"]);
        let limits = BatchLimits { max_records: 10, max_wait: Duration::from_millis(5) };
        assert!(consumer.next_batch(limits).await.unwrap().is_empty());

        let writer = broker.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            writer.append(vec![out("t", "k", "late")]).unwrap();
        });
        let waited = consumer.next_batch(BatchLimits { max_wait: Duration::from_secs(5), ..limits }).await.unwrap();
        assert_eq!(waited.len(), 1);
    }

    #[tokio::test]
    async fn members_share_a_groups_partitions_and_each_reads_whole_topics() {
        let broker = MemoryBroker::new();
        broker.create_topic(&TopicSpec::new("stream", 4));
        broker.create_topic(&TopicSpec::new("lookup", 2));
        broker.append((0..40).map(|i| out("stream", &format!("k{i}"), "v")).collect()).unwrap();
        broker.append((0..6).map(|i| out("lookup", &format!("l{i}"), "v")).collect()).unwrap();
        let limits = BatchLimits { max_records: 1000, max_wait: Duration::from_millis(5) };
        let mut seen = Vec::new();
        for member in 0..2 {
            let mut consumer = broker.consumer("g", &["stream", "lookup"]).member_of(member, 2, &["lookup"]);
            let [crate::AssignmentChange::Assigned(assigned)] = &consumer.assignment_changes()[..] else { panic!("one assignment") };
            let stream: Vec<i32> = assigned.iter().filter(|(t, _)| t.as_ref() == "stream").map(|(_, p)| *p).collect();
            assert_eq!(stream, if member == 0 { vec![0, 2] } else { vec![1, 3] });
            let batch = consumer.next_batch(limits).await.unwrap();
            assert_eq!(batch.iter().filter(|r| r.topic.as_ref() == "lookup").count(), 6, "every member reads the whole lookup");
            seen.extend(batch.into_iter().filter(|r| r.topic.as_ref() == "stream").map(|r| (r.partition, r.offset)));
        }
        seen.sort();
        let read = seen.len();
        seen.dedup();
        assert_eq!((read, seen.len()), (40, 40), "each stream record goes to exactly one member");
    }

    #[test]
    fn unknown_topic_is_a_permanent_error() {
        let broker = MemoryBroker::new();
        let err = broker.append(vec![out("missing", "k", "v")]).unwrap_err();
        assert!(!err.is_retryable());
    }
}
