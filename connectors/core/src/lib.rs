//! What every notiflow connector shares: the record types that cross the
//! source/sink boundary, the two traits a log connector implements, typed
//! errors that say whether to retry, and the in-process topic log used by the
//! embedded default (`memory`).
//!
//! The traits are deliberately small (Arroyo's connector shape): a source hands
//! out micro-batches and commits offsets it is told are safe; a sink returns
//! only once every record it was given is durable. The job between them decides
//! *when* offsets are safe, so "commit only after outputs are durable" lives in
//! one place.

pub mod memory;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// One record read from a topic partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    /// `None` for a tombstone (a record with a null value).
    pub payload: Option<Vec<u8>>,
    /// Broker or producer timestamp, milliseconds since the Unix epoch.
    pub timestamp_ms: Option<i64>,
    pub headers: Vec<Header>,
}

/// A Kafka record header. Values are raw bytes, as on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Vec<u8>,
}

impl Header {
    pub fn new(name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Header { name: name.into(), value: value.into() }
    }
}

/// One record to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    pub topic: Arc<str>,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<Header>,
}

/// Where a micro-batch closes: at `max_records`, or `max_wait` after the call
/// started, whichever comes first.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_records: usize,
    pub max_wait: Duration,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits { max_records: 4096, max_wait: Duration::from_millis(50) }
    }
}

/// Next offsets to read, per topic partition (Kafka's commit convention:
/// the committed offset is the *next* record to consume).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Offsets(BTreeMap<(Arc<str>, i32), i64>);

impl Offsets {
    /// Marks `record` as processed.
    pub fn advance_past(&mut self, record: &Record) {
        let next = record.offset + 1;
        let slot = self.0.entry((record.topic.clone(), record.partition)).or_insert(next);
        *slot = (*slot).max(next);
    }

    /// Sets the next offset of a partition (never moving it back).
    pub fn insert(&mut self, topic: Arc<str>, partition: i32, next: i64) {
        let slot = self.0.entry((topic, partition)).or_insert(next);
        *slot = (*slot).max(next);
    }

    pub fn merge(&mut self, other: &Offsets) {
        for ((topic, partition), next) in &other.0 {
            let slot = self.0.entry((topic.clone(), *partition)).or_insert(*next);
            *slot = (*slot).max(*next);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Forgets a partition (revoked: its offsets are its new owner's to commit).
    pub fn remove(&mut self, topic: &str, partition: i32) {
        self.0.retain(|(t, p), _| !(t.as_ref() == topic && *p == partition));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, i32, i64)> {
        self.0.iter().map(|((t, p), o)| (t.as_ref(), *p, *o))
    }

    pub fn get(&self, topic: &str, partition: i32) -> Option<i64> {
        self.0.iter().find(|((t, p), _)| t.as_ref() == topic && *p == partition).map(|(_, o)| *o)
    }
}

/// A topic to create before the job starts (test brokers do not auto-create).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    /// Compacted topics keep the latest record per key (templates, profiles, tenants).
    pub compacted: bool,
}

impl TopicSpec {
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        TopicSpec { name: name.into(), partitions, compacted: false }
    }
}

/// Errors typed by what the caller should do about them.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// The service may recover (broker unavailable, timeout): retry the same
    /// work later; nothing was committed.
    #[error("transient {service} error: {message}")]
    Transient { service: &'static str, message: String },
    /// Retrying the same call cannot succeed (bad config, authorization,
    /// unknown topic): stop and tell the operator.
    #[error("{service} error (not retryable): {message}")]
    Permanent { service: &'static str, message: String },
}

impl ConnectorError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, ConnectorError::Transient { .. })
    }
}

/// A partitioned log read in micro-batches (Kafka, or the in-process log).
pub trait Source: Send {
    /// Returns up to `limits.max_records` records; an empty batch when nothing
    /// arrived within `limits.max_wait`.
    fn next_batch(
        &mut self,
        limits: BatchLimits,
    ) -> impl Future<Output = Result<Vec<Record>, ConnectorError>> + Send;

    /// Commits `offsets`; the caller promises every record below them has
    /// had its outputs made durable.
    fn commit(&mut self, offsets: &Offsets) -> impl Future<Output = Result<(), ConnectorError>> + Send;

    /// Partitions gained or lost since the last call (consumer-group
    /// rebalances), oldest first. Records of a revoked partition are not
    /// handed out after its revocation is reported.
    fn assignment_changes(&mut self) -> Vec<AssignmentChange> {
        Vec::new()
    }

    /// This reader's hold on a partition it just handed out records of: lost
    /// when a rebalance revokes the partition. Sources without a group hold
    /// their partitions for good.
    fn hold(&self, _topic: &str, _partition: i32) -> Hold {
        Hold::always()
    }

    /// Asks the source to commit, when a rebalance revokes partitions, the
    /// offsets `commit_point` gives for them, before the group hands them to
    /// another member (which then starts where this one stopped, not at the
    /// last periodic commit). Sources without a group ignore it.
    fn commit_on_revoke(&mut self, _commit_point: RevokeCommit) {}
}

/// The offsets to commit for partitions being revoked (see [`Source::commit_on_revoke`]).
pub type RevokeCommit = Box<dyn Fn(&[(Arc<str>, i32)]) -> Offsets + Send + Sync>;

/// A reader's hold on one partition, shared by the work read from it. A
/// rebalance that revokes the partition releases it: work still queued for
/// the partition is dropped, not done, because its new owner reads it again
/// from the last commit (doing it here too would do it twice).
#[derive(Debug, Clone, Default)]
pub struct Hold(Option<Arc<AtomicBool>>);

impl Hold {
    /// Never released (a partition outside any consumer group).
    pub fn always() -> Hold {
        Hold(None)
    }

    /// Held until [`release`](Self::release)d.
    pub fn new() -> Hold {
        Hold(Some(Arc::new(AtomicBool::new(true))))
    }

    /// Already released (a partition revoked before its work was queued).
    pub fn lost() -> Hold {
        Hold(Some(Arc::new(AtomicBool::new(false))))
    }

    pub fn held(&self) -> bool {
        self.0.as_ref().is_none_or(|flag| flag.load(Ordering::Acquire))
    }

    pub fn release(&self) {
        if let Some(flag) = &self.0 {
            flag.store(false, Ordering::Release);
        }
    }
}

/// A change in the partitions a source reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssignmentChange {
    Assigned(Vec<(Arc<str>, i32)>),
    Revoked(Vec<(Arc<str>, i32)>),
}

/// A log writer. `send_all` resolves only when every record is durable
/// (acknowledged by all in-sync replicas, for Kafka), with the highest offset
/// written per partition.
pub trait Sink: Send + Sync {
    fn send_all(&self, records: Vec<OutRecord>) -> impl Future<Output = Result<Positions, ConnectorError>> + Send;

    /// Hands `records` to the sink and returns once they are queued (waiting
    /// for room when the sink's queue is full); the returned [`Acks`] resolve
    /// when every one of them is durable. A job reads and processes its next
    /// micro-batch while these are in flight. The default writes at once.
    fn submit(&self, records: Vec<OutRecord>) -> impl Future<Output = Result<Acks, ConnectorError>> + Send {
        async move { Ok(Acks::done(self.send_all(records).await)) }
    }
}

/// A shared sink writes like the sink itself.
impl<S: Sink> Sink for Arc<S> {
    fn send_all(&self, records: Vec<OutRecord>) -> impl Future<Output = Result<Positions, ConnectorError>> + Send {
        (**self).send_all(records)
    }

    fn submit(&self, records: Vec<OutRecord>) -> impl Future<Output = Result<Acks, ConnectorError>> + Send {
        (**self).submit(records)
    }
}

/// The acknowledgements of records already handed to a sink: resolves to the
/// highest offset written per partition once all of them are durable, or to
/// the first error.
pub struct Acks(std::pin::Pin<Box<dyn Future<Output = Result<Positions, ConnectorError>> + Send + 'static>>);

impl Acks {
    pub fn new(pending: impl Future<Output = Result<Positions, ConnectorError>> + Send + 'static) -> Self {
        Acks(Box::pin(pending))
    }

    /// Acknowledgements that are already in.
    pub fn done(result: Result<Positions, ConnectorError>) -> Self {
        Acks::new(std::future::ready(result))
    }
}

impl Future for Acks {
    type Output = Result<Positions, ConnectorError>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

/// Reads back what is in a log. Recovery uses it to find outputs written
/// after the last checkpoint.
pub trait LogReader: Send + Sync {
    /// (partition, end offset) of every partition. A lower bound: a broker may
    /// report less than it will serve.
    fn end_offsets(&self, topic: &str) -> impl Future<Output = Result<Vec<(i32, i64)>, ConnectorError>> + Send;
    /// Records of one partition from `from` to its end.
    fn read_from(&self, topic: &str, partition: i32, from: i64) -> impl Future<Output = Result<Vec<Record>, ConnectorError>> + Send;
}

/// Highest offset written per topic partition.
pub type Positions = BTreeMap<(Arc<str>, i32), i64>;

/// Records `offset` as written to `(topic, partition)`.
pub fn note_position(positions: &mut Positions, topic: &Arc<str>, partition: i32, offset: i64) {
    let slot = positions.entry((topic.clone(), partition)).or_insert(offset);
    *slot = (*slot).max(offset);
}

/// Creates topics (idempotent: existing topics are left as they are).
pub trait TopicAdmin: Send + Sync {
    fn ensure_topics(&self, topics: &[TopicSpec]) -> impl Future<Output = Result<(), ConnectorError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(topic: &Arc<str>, partition: i32, offset: i64) -> Record {
        Record {
            topic: topic.clone(),
            partition,
            offset,
            key: None,
            payload: None,
            timestamp_ms: None,
            headers: vec![],
        }
    }

    #[test]
    fn offsets_point_past_the_highest_processed_record() {
        let t: Arc<str> = Arc::from("t");
        let mut offsets = Offsets::default();
        offsets.advance_past(&record(&t, 0, 7));
        offsets.advance_past(&record(&t, 0, 3));
        offsets.advance_past(&record(&t, 1, 0));
        assert_eq!(offsets.get("t", 0), Some(8));
        assert_eq!(offsets.get("t", 1), Some(1));
        assert_eq!(offsets.get("t", 2), None);

        let mut later = Offsets::default();
        later.advance_past(&record(&t, 0, 9));
        offsets.merge(&later);
        assert_eq!(offsets.get("t", 0), Some(10));
    }
}
