use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::{FutureExt, StreamExt};

use notiflow_connector::{AssignmentChange, BatchLimits, ConnectorError, Header, Hold, Offsets, Record, RevokeCommit, Source};
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::error::KafkaError;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::connection::{Connection, is_connection_loss};
use crate::resume::Resumes;
use crate::{KafkaConfig, classify};

/// Publishes consumer lag from librdkafka's statistics and records
/// rebalances (for [`Source::assignment_changes`]).
#[derive(Default)]
pub struct LagContext {
    connection: Connection,
    changes: Mutex<Vec<AssignmentChange>>,
    /// The partitions the group gave this consumer, each with the hold its work carries.
    assigned: Mutex<HashMap<(Arc<str>, i32), Hold>>,
    /// What to commit for partitions being revoked ([`Source::commit_on_revoke`]).
    revoke_commit: OnceLock<RevokeCommit>,
    /// Partitions just started at an offset that may sit inside a producer batch.
    resumes: Mutex<Resumes>,
    /// The source is being dropped: the consumer's close revokes everything, and a commit
    /// from that revoke can wait forever on a closing connection (the owner committed before).
    closing: std::sync::atomic::AtomicBool,
}

impl LagContext {
    /// Releases the holds on revoked partitions (nothing queued for them starts
    /// here from now on), then commits where their work stands, while this
    /// member still owns them.
    fn hand_over(&self, consumer: &rdkafka::consumer::BaseConsumer<Self>, revoked: &[(Arc<str>, i32)]) {
        // Lost (the session expired, e.g. in an outage): the work queued here is kept and sent, as nobody
        // else may have the partition yet; after the rejoin this process skips what it read before.
        let lost = consumer.assignment_lost();
        {
            let mut assigned = self.assigned.lock().unwrap_or_else(|e| e.into_inner());
            let mut resumes = self.resumes.lock().unwrap_or_else(|e| e.into_inner());
            revoked.iter().for_each(|partition| {
                let hold = assigned.remove(partition);
                if !lost {
                    hold.inspect(Hold::release);
                }
                resumes.forget(partition);
            });
        }
        // Lost (the session ended, e.g. in an outage): another member may own them already.
        let closing = self.closing.load(std::sync::atomic::Ordering::Acquire);
        let Some(commit_point) = self.revoke_commit.get().filter(|_| !closing && !lost) else { return };
        let mut list = TopicPartitionList::new();
        for (topic, partition, next) in commit_point(revoked).iter() {
            if list.add_partition_offset(topic, partition, Offset::Offset(next)).is_err() {
                return;
            }
        }
        if list.count() > 0
            && let Err(err) = consumer.commit(&list, CommitMode::Sync)
        {
            // The next owner starts at the last periodic commit instead.
            tracing::warn!(%err, "committing revoked partitions");
        }
    }
}

impl LagContext {
    /// Watches these partitions' first records (see [`crate::resume`]).
    fn resume_at(&self, starts: &TopicPartitionList) {
        let mut resumes = self.resumes.lock().unwrap_or_else(|e| e.into_inner());
        for element in starts.elements() {
            if let Offset::Offset(start) = element.offset() {
                resumes.start((Arc::from(element.topic()), element.partition()), start);
            }
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<(Arc<str>, i32)> {
    tpl.elements().iter().map(|e| (Arc::from(e.topic()), e.partition())).collect()
}

impl ClientContext for LagContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.connection.client_log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.connection.client_error(error, reason);
    }

    fn stats(&self, statistics: Statistics) {
        self.connection.observe(&statistics);
        for (topic, stats) in &statistics.topics {
            for (partition, p) in &stats.partitions {
                // librdkafka reports -1 for partitions this consumer does not own.
                if *partition >= 0 && p.consumer_lag >= 0 {
                    metrics::gauge!("notiflow_consumer_lag", "topic" => topic.clone(), "partition" => partition.to_string())
                        .set(p.consumer_lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for LagContext {
    fn pre_rebalance(&self, consumer: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            self.hand_over(consumer, &partitions_of(tpl));
        }
    }

    fn post_rebalance(&self, consumer: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions assigned");
                let list = partitions_of(tpl);
                // Where each partition starts: its committed offset, checked against what the broker hands out.
                match consumer.committed_offsets((*tpl).clone(), Duration::from_secs(10)) {
                    Ok(committed) => self.resume_at(&committed),
                    Err(err) => tracing::warn!(%err, "reading the committed offsets of assigned partitions"),
                }
                let mut assigned = self.assigned.lock().unwrap_or_else(|e| e.into_inner());
                assigned.extend(list.iter().map(|partition| (partition.clone(), Hold::new())));
                self.changes.lock().unwrap_or_else(|e| e.into_inner()).push(AssignmentChange::Assigned(list));
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions revoked");
                let list = partitions_of(tpl);
                self.changes.lock().unwrap_or_else(|e| e.into_inner()).push(AssignmentChange::Revoked(list));
            }
            Rebalance::Error(err) => tracing::warn!(%err, "rebalance error"),
        }
    }
}

/// After every partition reported its end, how long a read waits for records
/// past it (a broker may report the end before its last batch is served).
const EOF_GRACE: Duration = Duration::from_millis(100);

/// How long a non-empty batch waits for one more record before it closes.
const DRAINED_AFTER: Duration = Duration::from_millis(1);

/// A consumer-group member. Auto-commit is off: offsets move only through
/// [`Source::commit`], which the job calls after the outputs are durable.
///
/// It can also *follow* topics outside the group: every partition, from
/// given offsets, on every instance (lookup tables: each instance needs all
/// of their updates, not its share). Followed topics are never committed.
pub struct KafkaSource {
    consumer: StreamConsumer<LagContext>,
    follower: Option<StreamConsumer<LagContext>>,
    followed: HashSet<String>,
}

impl KafkaSource {
    /// `start_from`: "earliest" or "latest", for a group with no committed offset.
    pub fn new(config: &KafkaConfig, group_id: &str, topics: &[&str], start_from: &str) -> Result<Self, ConnectorError> {
        let consumer = Self::consumer(config, group_id, start_from)?;
        consumer.subscribe(topics).map_err(classify)?;
        Ok(KafkaSource { consumer, follower: None, followed: HashSet::new() })
    }

    /// Reads only these (topic, partition, from offset), outside any group:
    /// for readers that replay a log from its start on every run (nothing is committed).
    pub fn assigned(config: &KafkaConfig, starts: &[(String, i32, i64)]) -> Result<Self, ConnectorError> {
        let consumer = Self::consumer(config, "notiflow-reader", "earliest")?;
        let mut list = TopicPartitionList::new();
        for (topic, partition, from) in starts {
            list.add_partition_offset(topic, *partition, Offset::Offset(*from)).map_err(classify)?;
        }
        consumer.assign(&list).map_err(classify)?;
        consumer.context().resume_at(&list);
        // Assigned, not given by a rebalance: next_batch must keep their records.
        let followed = starts.iter().map(|(topic, _, _)| topic.clone()).collect();
        Ok(KafkaSource { consumer, follower: None, followed })
    }

    /// Also reads these (topic, partition, from offset) outside the group.
    pub fn follow(mut self, config: &KafkaConfig, starts: &[(String, i32, i64)]) -> Result<Self, ConnectorError> {
        if starts.is_empty() {
            return Ok(self);
        }
        // Assigned, never subscribed: the group id only names the client.
        let follower = Self::consumer(config, "notiflow-follower", "earliest")?;
        let mut list = TopicPartitionList::new();
        for (topic, partition, from) in starts {
            list.add_partition_offset(topic, *partition, Offset::Offset(*from)).map_err(classify)?;
            self.followed.insert(topic.clone());
        }
        follower.assign(&list).map_err(classify)?;
        follower.context().resume_at(&list);
        self.follower = Some(follower);
        Ok(self)
    }

    fn consumer(config: &KafkaConfig, group_id: &str, start_from: &str) -> Result<StreamConsumer<LagContext>, ConnectorError> {
        config
            .client_config()
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", start_from)
            .set("fetch.wait.max.ms", config.fetch_wait_max_ms.to_string())
            .set("fetch.min.bytes", "1")
            .set("statistics.interval.ms", "1000")
            .set("session.timeout.ms", config.session_timeout_ms.to_string())
            .set("heartbeat.interval.ms", (config.session_timeout_ms / 4).max(100).to_string())
            .create_with_context(LagContext::default())
            .map_err(classify)
    }
}

impl KafkaSource {
    /// Checks the first records of partitions that just started (see
    /// [`crate::resume`]) and seeks back where the broker skipped the start;
    /// `probe_quiet` (not during an outage): also where nothing came.
    fn resume_starts(&self, batch: &mut Vec<Record>, probe_quiet: bool) {
        for consumer in std::iter::once(&self.consumer).chain(self.follower.as_ref()) {
            let resumes = &consumer.context().resumes;
            let seeks = {
                let mut resumes = resumes.lock().unwrap_or_else(|e| e.into_inner());
                if resumes.is_empty() {
                    continue;
                }
                let mut seeks = resumes.check(batch);
                if probe_quiet {
                    seeks.extend(resumes.probe_silent());
                }
                seeks
            };
            for seek in seeks {
                if let Err(err) = blocking(|| consumer.seek(&seek.topic, seek.partition, Offset::Offset(seek.offset), Duration::from_secs(5))) {
                    tracing::warn!(%err, topic = %seek.topic, partition = seek.partition, "seeking back to a batch start");
                }
            }
        }
    }

    /// A rebalance inside a `next_batch` may have revoked partitions whose
    /// records were already taken: they belong to the new owner now.
    fn owned(&self, mut batch: Vec<Record>) -> Vec<Record> {
        let assigned = self.consumer.context().assigned.lock().unwrap_or_else(|e| e.into_inner());
        batch.retain(|r| self.followed.contains(r.topic.as_ref()) || assigned.contains_key(&(r.topic.clone(), r.partition)));
        batch
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        // Before the fields: the consumer's close runs the revoke callback.
        self.consumer.context().closing.store(true, std::sync::atomic::Ordering::Release);
    }
}

impl Source for KafkaSource {
    async fn next_batch(&mut self, limits: BatchLimits) -> Result<Vec<Record>, ConnectorError> {
        let deadline = tokio::time::Instant::now() + limits.max_wait;
        let mut batch = Vec::with_capacity(limits.max_records.min(1024));
        let mut topics: Vec<Arc<str>> = Vec::new();
        let intern = |topics: &mut Vec<Arc<str>>, name: &str| match topics.iter().find(|t| t.as_ref() == name) {
            Some(t) => t.clone(),
            None => {
                let t: Arc<str> = Arc::from(name);
                topics.push(t.clone());
                t
            }
        };
        // One stream per consumer for the whole call: each `recv()` would
        // register and drop a waker slot per message.
        let mut main = self.consumer.stream();
        let mut follower = self.follower.as_ref().map(|f| f.stream());
        let mut failure = None;
        'batch: while batch.len() < limits.max_records {
            // What librdkafka has already fetched is taken without a timer or a wake-up.
            for stream in std::iter::once(&mut main).chain(follower.as_mut()) {
                while batch.len() < limits.max_records {
                    match stream.next().now_or_never().flatten() {
                        Some(Ok(m)) => batch.push(to_record(intern(&mut topics, m.topic()), &m)),
                        Some(Err(err)) => {
                            failure = Some(err);
                            break 'batch;
                        }
                        None => break,
                    }
                }
            }
            if batch.len() >= limits.max_records {
                break;
            }
            // Once the batch has records, it closes as soon as the fetched
            // data is drained: waiting for the next fetch would only add latency.
            let close_at = if batch.is_empty() { deadline } else { deadline.min(tokio::time::Instant::now() + DRAINED_AFTER) };
            let from_follower = async {
                match follower.as_mut() {
                    Some(stream) => stream.next().await,
                    None => std::future::pending().await,
                }
            };
            let received = tokio::select! {
                message = main.next() => message,
                message = from_follower => message,
                _ = tokio::time::sleep_until(close_at) => break,
            };
            match received {
                Some(Ok(m)) => batch.push(to_record(intern(&mut topics, m.topic()), &m)),
                Some(Err(err)) => {
                    failure = Some(err);
                    break;
                }
                None => break,
            }
        }
        if let Some(err) = failure.take_if(|err| is_connection_loss(err)) {
            // librdkafka reconnects by itself: keep the state, report the
            // outage, and wait out this call's time instead of spinning.
            self.consumer.context().connection.lost(&err, "consuming");
            drop((main, follower));
            tokio::time::sleep_until(deadline).await;
            let mut batch = self.owned(batch);
            self.resume_starts(&mut batch, false);
            return Ok(batch);
        }
        if let Some(err) = failure {
            let err = classify(err);
            if batch.is_empty() {
                return Err(err);
            }
            // Hand out what we have; the error comes back on the next call.
            tracing::warn!(%err, "kafka consume error after a partial batch");
        }
        drop((main, follower));
        if !batch.is_empty() {
            self.consumer.context().connection.answered();
        }
        let mut batch = self.owned(batch);
        self.resume_starts(&mut batch, true);
        Ok(batch)
    }

    fn assignment_changes(&mut self) -> Vec<AssignmentChange> {
        std::mem::take(&mut *self.consumer.context().changes.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn commit_on_revoke(&mut self, commit_point: RevokeCommit) {
        // Set once, when the reader starts.
        let _ = self.consumer.context().revoke_commit.set(commit_point);
    }

    fn hold(&self, topic: &str, partition: i32) -> Hold {
        if self.followed.contains(topic) {
            return Hold::always();
        }
        let assigned = self.consumer.context().assigned.lock().unwrap_or_else(|e| e.into_inner());
        assigned.get(&(Arc::from(topic), partition)).cloned().unwrap_or_else(Hold::lost)
    }

    async fn commit(&mut self, offsets: &Offsets) -> Result<(), ConnectorError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for (topic, partition, next) in offsets.iter().filter(|(t, _, _)| !self.followed.contains(*t)) {
            list.add_partition_offset(topic, partition, Offset::Offset(next)).map_err(classify)?;
        }
        if list.count() == 0 {
            return Ok(());
        }
        // A synchronous commit: the job must know the offsets are stored
        // before it reports the batch done.
        blocking(|| self.consumer.commit(&list, CommitMode::Sync)).map_err(classify)
    }
}

/// Runs a blocking librdkafka call. On a shared runtime other tasks move off
/// this thread meanwhile; a member's own single-threaded runtime (notiflow's
/// workers) has nothing else to run.
fn blocking<T>(call: impl FnOnce() -> T) -> T {
    let shared = tokio::runtime::Handle::try_current().is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if shared { tokio::task::block_in_place(call) } else { call() }
}

fn to_record(topic: Arc<str>, message: &impl Message) -> Record {
    Record {
        topic,
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec),
        timestamp_ms: message.timestamp().to_millis(),
        headers: message
            .headers()
            .map(|hs| hs.iter().map(|h| Header::new(h.key, h.value.map(<[u8]>::to_vec).unwrap_or_default())).collect())
            .unwrap_or_default(),
    }
}

/// Committed offsets of `group_id` for every partition of `topic`.
pub fn committed_offsets(config: &KafkaConfig, group_id: &str, topic: &str) -> Result<Vec<(i32, Option<i64>)>, ConnectorError> {
    let consumer: rdkafka::consumer::BaseConsumer =
        config.client_config().set("group.id", group_id).create().map_err(classify)?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).map_err(classify)?;
    let mut list = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            list.add_partition(topic, p.id());
        }
    }
    let committed = consumer.committed_offsets(list, Duration::from_secs(10)).map_err(classify)?;
    Ok(committed
        .elements()
        .iter()
        .map(|e| (e.partition(), match e.offset() { Offset::Offset(o) => Some(o), _ => None }))
        .collect())
}

/// Reads ranges of partitions without joining a group (recovery, reports,
/// `trace`, tests).
pub struct KafkaReader {
    config: KafkaConfig,
}

impl KafkaReader {
    pub fn new(config: &KafkaConfig) -> Self {
        KafkaReader { config: config.clone() }
    }

    fn consumer(&self) -> Result<StreamConsumer<LagContext>, ConnectorError> {
        KafkaSource::consumer(&self.config, "notiflow-reader", "earliest")
    }

    /// (partition, low, high) watermarks of every partition.
    fn watermarks(consumer: &StreamConsumer<LagContext>, topic: &str) -> Result<Vec<(i32, i64, i64)>, ConnectorError> {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).map_err(classify)?;
        let mut out = Vec::new();
        for t in metadata.topics() {
            if let Some(err) = t.error() {
                return Err(ConnectorError::Permanent { service: "kafka", message: format!("topic {topic}: {err:?}") });
            }
            for p in t.partitions() {
                let (low, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10)).map_err(classify)?;
                out.push((p.id(), low, high));
            }
        }
        Ok(out)
    }

    /// Reads each `(partition, from)` to the partition's end, as the fetches
    /// see it (partition EOF). The ListOffsets high watermark is not used as
    /// the end: some brokers (tansu 0.6) report it short of the last batch.
    async fn read_to_end(&self, topic: &str, starts: &[(i32, i64)]) -> Result<Vec<Record>, ConnectorError> {
        let consumer: StreamConsumer<LagContext> = self
            .config
            .client_config()
            .set("group.id", "notiflow-reader")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("fetch.wait.max.ms", self.config.fetch_wait_max_ms.to_string())
            .create_with_context(LagContext::default())
            .map_err(classify)?;
        let mut list = TopicPartitionList::new();
        for (partition, from) in starts {
            list.add_partition_offset(topic, *partition, Offset::Offset(*from)).map_err(classify)?;
        }
        consumer.assign(&list).map_err(classify)?;
        let name: Arc<str> = Arc::from(topic);
        // Starts inside a producer batch are read again from further back (see `crate::resume`).
        let mut resumes = Resumes::default();
        starts.iter().for_each(|(partition, from)| resumes.start((name.clone(), *partition), *from));
        // Next offset wanted per partition still being read; a record is kept once, in order.
        let mut next: HashMap<i32, i64> = starts.iter().copied().collect();
        let mut at_end: HashSet<i32> = HashSet::new();
        let mut records = Vec::new();
        let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            // Once every partition reported its end, wait a little longer for a
            // batch the broker's end offset did not count yet (tansu 0.6).
            let all_done = at_end.len() == next.len();
            let mut wait_until = if all_done { (tokio::time::Instant::now() + EOF_GRACE).min(give_up) } else { give_up };
            if !resumes.is_empty() {
                wait_until = wait_until.min(tokio::time::Instant::now() + crate::resume::PROBE_WAIT);
            }
            let message = match tokio::time::timeout_at(wait_until, consumer.recv()).await {
                Err(_) if all_done => break,
                Err(_) if !resumes.is_empty() && tokio::time::Instant::now() < give_up => {
                    for seek in resumes.probe_silent() {
                        blocking(|| consumer.seek(&seek.topic, seek.partition, Offset::Offset(seek.offset), Duration::from_secs(5))).map_err(classify)?;
                    }
                    continue;
                }
                Err(_) => {
                    let pending: Vec<&i32> = next.keys().filter(|p| !at_end.contains(p)).collect();
                    return Err(ConnectorError::Transient {
                        service: "kafka",
                        message: format!("reading {topic}: partitions {pending:?} did not reach their end in 60 s"),
                    });
                }
                Ok(Err(KafkaError::PartitionEOF(partition))) => {
                    at_end.insert(partition);
                    continue;
                }
                Ok(Err(err)) => return Err(classify(err)),
                Ok(Ok(message)) => to_record(name.clone(), &message),
            };
            let mut checked = vec![message];
            if !resumes.is_empty() {
                for seek in resumes.check(&mut checked) {
                    blocking(|| consumer.seek(&seek.topic, seek.partition, Offset::Offset(seek.offset), Duration::from_secs(5))).map_err(classify)?;
                }
            }
            for record in checked {
                let Some(n) = next.get_mut(&record.partition) else { continue };
                if record.offset >= *n {
                    *n = record.offset + 1;
                    at_end.remove(&record.partition);
                    records.push(record);
                }
            }
        }
        Ok(records)
    }
}

impl KafkaReader {
    /// Per partition, the first offset whose timestamp is at or after `ms`
    /// (the end when none is): where to start reading "the last 24 hours".
    pub async fn offsets_at_time(&self, topic: &str, ms: i64) -> Result<Vec<(i32, i64)>, ConnectorError> {
        let consumer = self.consumer()?;
        let marks = Self::watermarks(&consumer, topic)?;
        let mut list = TopicPartitionList::new();
        for (partition, _, _) in &marks {
            list.add_partition_offset(topic, *partition, Offset::Offset(ms)).map_err(classify)?;
        }
        let found = consumer.offsets_for_times(list, Duration::from_secs(10)).map_err(classify)?;
        Ok(marks
            .iter()
            .map(|(partition, low, high)| {
                let at = found.find_partition(topic, *partition).map(|e| e.offset());
                let offset = match at {
                    Some(Offset::Offset(o)) => o.clamp(*low, *high),
                    // No record that late: start at the end.
                    _ => *high,
                };
                (*partition, offset)
            })
            .collect())
    }
}

impl notiflow_connector::LogReader for KafkaReader {
    async fn end_offsets(&self, topic: &str) -> Result<Vec<(i32, i64)>, ConnectorError> {
        let consumer = self.consumer()?;
        Ok(Self::watermarks(&consumer, topic)?.into_iter().map(|(p, _, high)| (p, high)).collect())
    }

    async fn read_from(&self, topic: &str, partition: i32, from: i64) -> Result<Vec<Record>, ConnectorError> {
        self.read_to_end(topic, &[(partition, from)]).await
    }
}

/// Reads every record of `topic` that exists now (up to each partition's high
/// watermark).
pub async fn read_topic_to_end(config: &KafkaConfig, topic: &str) -> Result<Vec<Record>, ConnectorError> {
    let reader = KafkaReader::new(config);
    let starts: Vec<(i32, i64)> = KafkaReader::watermarks(&reader.consumer()?, topic)?.into_iter().map(|(p, low, _)| (p, low)).collect();
    reader.read_to_end(topic, &starts).await
}
