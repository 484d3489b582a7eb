//! Drives a batch processor over a source and a sink: read a micro-batch,
//! process it, wait until every output is durable, let the processor
//! checkpoint (its state records are written like outputs), then commit the
//! offsets it says are safe. Never commit before the outputs and the
//! checkpoint are durable (see docs/exactly-once.md). Partition assignment
//! changes reach the processor before the batch that follows them.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use notiflow_connector::{Acks, AssignmentChange, BatchLimits, Offsets, OutRecord, Positions, Record, Sink, Source, note_position};
use tokio::sync::watch;


/// When a job stops by itself.
#[derive(Debug, Clone)]
pub enum StopWhen {
    /// Only on shutdown.
    Shutdown,
    /// After this long without a record (demo runs, tests).
    IdleFor(Duration),
    /// After this long without a record read by any member of a group of jobs
    /// (`crate::workers`): a member idle while another still writes to its
    /// partitions keeps going.
    GroupIdleFor(Duration, Arc<Activity>),
}

/// When a job (or any member of a group of jobs) last read a record or got partitions.
#[derive(Debug)]
pub struct Activity {
    since: Instant,
    last_nanos: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity { since: Instant::now(), last_nanos: AtomicU64::new(0) }
    }
}

impl Activity {
    fn touch(&self) {
        let now = self.since.elapsed().as_nanos() as u64;
        self.last_nanos.fetch_max(now, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        self.since.elapsed().saturating_sub(Duration::from_nanos(self.last_nanos.load(Ordering::Relaxed)))
    }
}

/// What to make durable, then commit.
#[derive(Debug, Default)]
pub struct Commit {
    /// Checkpoint records, written (and acknowledged) before the commit.
    pub state: Vec<OutRecord>,
    pub offsets: Offsets,
}

impl Commit {
    pub fn offsets(offsets: Offsets) -> Self {
        Commit { state: Vec::new(), offsets }
    }
}

/// Turns one micro-batch of records into output records.
pub trait BatchProcessor {
    fn process(&mut self, records: &[Record], out: &mut Vec<OutRecord>) -> impl Future<Output = anyhow::Result<()>>;

    /// The batch's outputs are durable at `written`; `consumed` are the
    /// batch's next offsets. Returns what may now be committed.
    fn durable(&mut self, written: &Positions, consumed: &Offsets) -> anyhow::Result<Option<Commit>>;

    /// Whether the next `durable` would checkpoint or commit: the job then
    /// waits for every output in flight first, so that what is checkpointed
    /// is the state of exactly the batches whose outputs are durable.
    /// Required (no default), like `timers_due`.
    fn commit_due(&self) -> bool;

    /// The outputs of the oldest unacknowledged batch are durable (called once
    /// per processed batch, in order; `durable` follows later, at a settled point).
    fn acked(&mut self) {}

    /// The job is stopping: last chance to checkpoint.
    fn finish(&mut self) -> anyhow::Result<Option<Commit>>;

    /// Work is due without new input (timers): the job then processes an
    /// empty batch. Required (no default) so that a wrapper cannot silently
    /// stop its inner processor's timers.
    fn timers_due(&self) -> bool;

    /// Partitions were assigned or revoked (before the next batch is processed).
    fn rebalance(&mut self, changes: Vec<AssignmentChange>) -> impl Future<Output = anyhow::Result<()>> {
        let _ = changes;
        async { Ok(()) }
    }
}

/// Writes a commit's state records, then commits its offsets.
async fn apply<S: Source, K: Sink>(commit: Commit, source: &mut S, sink: &K) -> anyhow::Result<()> {
    if !commit.state.is_empty() {
        sink.send_all(commit.state).await?;
    }
    source.commit(&commit.offsets).await?;
    Ok(())
}

/// Micro-batches whose outputs may be unacknowledged at once: enough to keep
/// the broker busy while the next batch is read and processed, few enough to
/// bound the memory their records hold.
const MAX_IN_FLIGHT: usize = 4;

/// A processed micro-batch whose outputs are on their way.
struct InFlight {
    acks: Acks,
    consumed: Offsets,
    started: Instant,
}

/// Batches whose outputs are acknowledged, not yet reported to the processor.
#[derive(Default)]
struct Acknowledged {
    written: Positions,
    consumed: Offsets,
    batches: usize,
}

/// The job's outputs in flight, oldest first. The processor hears that outputs
/// are durable only when nothing is in flight (`settle`): a checkpoint taken
/// then holds the state of exactly the batches whose outputs are durable.
#[derive(Default)]
struct Outputs {
    in_flight: VecDeque<InFlight>,
    acknowledged: Acknowledged,
}

impl Outputs {
    fn acknowledged<P: BatchProcessor>(&mut self, batch: InFlight, written: Positions, processor: &mut P) {
        for ((topic, partition), offset) in written {
            note_position(&mut self.acknowledged.written, &topic, partition, offset);
        }
        self.acknowledged.consumed.merge(&batch.consumed);
        self.acknowledged.batches += 1;
        processor.acked();
        metrics::histogram!("notiflow_batch_seconds").record(batch.started.elapsed().as_secs_f64());
    }

    /// Takes in the acknowledgements that already came (never waits).
    fn poll_acks<P: BatchProcessor>(&mut self, processor: &mut P) -> anyhow::Result<()> {
        while let Some(front) = self.in_flight.front_mut() {
            let Some(result) = (&mut front.acks).now_or_never() else { break };
            let batch = self.in_flight.pop_front().expect("front exists");
            self.acknowledged(batch, result?, processor);
        }
        Ok(())
    }

    /// Waits for the oldest batch's acknowledgements.
    async fn wait_oldest<P: BatchProcessor>(&mut self, processor: &mut P) -> anyhow::Result<()> {
        if let Some(mut batch) = self.in_flight.pop_front() {
            let written = (&mut batch.acks).await?;
            self.acknowledged(batch, written, processor);
        }
        Ok(())
    }

    /// Waits until every output is durable, tells the processor, and applies
    /// the commit it returns.
    async fn settle<P: BatchProcessor, S: Source, K: Sink>(&mut self, processor: &mut P, source: &mut S, sink: &K) -> anyhow::Result<()> {
        while !self.in_flight.is_empty() {
            self.wait_oldest(processor).await?;
        }
        if self.acknowledged.batches == 0 {
            return Ok(());
        }
        let done = std::mem::take(&mut self.acknowledged);
        if let Some(commit) = processor.durable(&done.written, &done.consumed)? {
            apply(commit, source, sink).await?;
        }
        Ok(())
    }
}

/// What a run did, for the summary line and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunTotals {
    pub records_in: u64,
    /// Records written, per destination (topic, or sink table of a SQL pipeline).
    pub dispatched: BTreeMap<String, u64>,
    /// Records dead-lettered, per reason code.
    pub dead_lettered: BTreeMap<String, u64>,
    pub batches: u64,
}

impl RunTotals {
    pub fn count_dead_letter(&mut self, reason: &str) {
        metrics::counter!("notiflow_dlq_total", "reason" => reason.to_string()).increment(1);
        *self.dead_lettered.entry(reason.to_string()).or_default() += 1;
    }
}

/// Runs until `stop` or shutdown; returns (records read, batches).
pub async fn run_job<P: BatchProcessor, S: Source, K: Sink>(
    processor: &mut P,
    source: &mut S,
    sink: &K,
    limits: BatchLimits,
    stop: StopWhen,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(u64, u64)> {
    let (mut records_in, mut batches) = (0u64, 0u64);
    let activity = match &stop {
        StopWhen::GroupIdleFor(_, shared) => shared.clone(),
        StopWhen::Shutdown | StopWhen::IdleFor(_) => Arc::new(Activity::default()),
    };
    activity.touch();
    let mut outputs = Outputs::default();
    loop {
        if *shutdown.borrow() {
            break;
        }
        outputs.poll_acks(processor)?;
        let batch = tokio::select! {
            batch = source.next_batch(limits) => batch?,
            _ = shutdown.changed() => break,
        };
        let changes = source.assignment_changes();
        if !changes.is_empty() {
            // State moves with partitions: only from a settled point.
            outputs.settle(processor, source, sink).await?;
            processor.rebalance(changes).await?;
            // Idle counts from the last assignment: a restarted member may wait for its partitions.
            activity.touch();
        }
        if batch.is_empty() && !processor.timers_due() {
            // Nothing to overlap with: make what is in flight durable (and commit when due).
            outputs.settle(processor, source, sink).await?;
            match &stop {
                StopWhen::IdleFor(idle) | StopWhen::GroupIdleFor(idle, _) if activity.idle_for() >= *idle => break,
                _ => continue,
            }
        }
        if !batch.is_empty() {
            activity.touch();
        }
        let started = Instant::now();
        let mut out = Vec::with_capacity(batch.len() * 2);
        processor.process(&batch, &mut out).await?;
        let mut consumed = Offsets::default();
        batch.iter().for_each(|r| consumed.advance_past(r));
        count_records("notiflow_records_in_total", batch.iter().map(|r| r.topic.as_ref()));
        count_records("notiflow_records_out_total", out.iter().map(|r| r.topic.as_ref()));
        // Outputs go out now; the next batch is read while they are acknowledged.
        let acks = sink.submit(out).await?;
        outputs.in_flight.push_back(InFlight { acks, consumed, started });
        if outputs.in_flight.len() > MAX_IN_FLIGHT {
            outputs.wait_oldest(processor).await?;
        }
        // Durable first, then checkpoint, then commit: never the other way round.
        if processor.commit_due() {
            outputs.settle(processor, source, sink).await?;
        }
        records_in += batch.len() as u64;
        batches += 1;
    }
    outputs.settle(processor, source, sink).await?;
    if let Some(commit) = processor.finish()? {
        apply(commit, source, sink).await?;
    }
    Ok((records_in, batches))
}

/// Increments a per-topic counter once per distinct topic, not per record.
fn count_records<'a>(name: &'static str, topics: impl Iterator<Item = &'a str>) {
    let mut per_topic: BTreeMap<&str, u64> = BTreeMap::new();
    topics.for_each(|t| *per_topic.entry(t).or_default() += 1);
    for (topic, n) in per_topic {
        metrics::counter!(name, "topic" => topic.to_string()).increment(n);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};

    use notiflow_connector::ConnectorError;

    use super::*;

    /// What the fakes saw, shared between them.
    #[derive(Default)]
    struct Seen {
        /// Payloads whose write was acknowledged.
        acked: HashSet<Vec<u8>>,
        /// Batches submitted and not yet acknowledged.
        unacked_batches: usize,
        /// The most unacknowledged batches seen when the next batch was read.
        max_overlap: usize,
        committed: Vec<(Arc<str>, i32, i64)>,
    }

    type Shared = Arc<Mutex<Seen>>;

    fn record(offset: i64) -> Record {
        Record {
            topic: Arc::from("in"),
            partition: 0,
            offset,
            key: None,
            payload: Some(format!("r{offset}").into_bytes()),
            timestamp_ms: Some(0),
            headers: vec![],
        }
    }

    /// Hands out `batches` batches of 10 records (each after `pace`), then nothing.
    struct Batches {
        next: i64,
        batches: i64,
        seen: Shared,
        pace: Duration,
    }

    impl Source for Batches {
        async fn next_batch(&mut self, _: BatchLimits) -> Result<Vec<Record>, ConnectorError> {
            {
                let mut seen = self.seen.lock().unwrap();
                seen.max_overlap = seen.max_overlap.max(seen.unacked_batches);
            }
            if self.next >= self.batches * 10 {
                tokio::time::sleep(Duration::from_millis(2)).await;
                return Ok(vec![]);
            }
            if !self.pace.is_zero() {
                tokio::time::sleep(self.pace).await;
            }
            let batch = (self.next..self.next + 10).map(record).collect();
            self.next += 10;
            Ok(batch)
        }

        async fn commit(&mut self, offsets: &Offsets) -> Result<(), ConnectorError> {
            let mut seen = self.seen.lock().unwrap();
            for (topic, partition, next) in offsets.iter() {
                // Every record below a committed offset has its output durable.
                for offset in 0..next {
                    assert!(seen.acked.contains(format!("out-r{offset}").as_bytes()), "committed {next} before the output of {offset} was durable");
                }
                seen.committed.push((Arc::from(topic), partition, next));
            }
            Ok(())
        }
    }

    /// Acknowledges each submitted batch after a delay that shrinks batch by
    /// batch, so later batches' acks come first.
    struct SlowAcks {
        seen: Shared,
        delay_ms: Mutex<u64>,
    }

    impl Sink for SlowAcks {
        async fn send_all(&self, records: Vec<OutRecord>) -> Result<Positions, ConnectorError> {
            self.submit(records).await?.await
        }

        async fn submit(&self, records: Vec<OutRecord>) -> Result<Acks, ConnectorError> {
            let delay = {
                let mut delay = self.delay_ms.lock().unwrap();
                *delay = delay.saturating_sub(3).max(1);
                Duration::from_millis(*delay)
            };
            let seen = self.seen.clone();
            seen.lock().unwrap().unacked_batches += 1;
            Ok(Acks::new(async move {
                tokio::time::sleep(delay).await;
                let mut seen = seen.lock().unwrap();
                seen.unacked_batches -= 1;
                let mut positions = Positions::new();
                for (i, r) in records.into_iter().enumerate() {
                    note_position(&mut positions, &r.topic, 0, i as i64);
                    seen.acked.insert(r.payload);
                }
                Ok(positions)
            }))
        }
    }

    /// One output per record; wants a commit every third batch and checks
    /// that `durable` only ever comes when every processed batch is acknowledged.
    #[derive(Default)]
    struct CopyEach {
        processed: usize,
        acked: usize,
        durable_calls: usize,
        consumed: Offsets,
    }

    impl BatchProcessor for CopyEach {
        async fn process(&mut self, records: &[Record], out: &mut Vec<OutRecord>) -> anyhow::Result<()> {
            self.processed += 1;
            out.extend(records.iter().map(|r| OutRecord {
                topic: Arc::from("out"),
                key: None,
                payload: [b"out-".as_slice(), r.payload.as_deref().unwrap_or_default()].concat(),
                headers: vec![],
            }));
            Ok(())
        }

        fn acked(&mut self) {
            self.acked += 1;
            assert!(self.acked <= self.processed);
        }

        fn durable(&mut self, _: &Positions, consumed: &Offsets) -> anyhow::Result<Option<Commit>> {
            // A checkpoint here would hold the state of exactly the durable batches.
            assert_eq!(self.acked, self.processed, "durable while batches were still in flight");
            self.durable_calls += 1;
            self.consumed.merge(consumed);
            Ok(Some(Commit::offsets(self.consumed.clone())))
        }

        fn finish(&mut self) -> anyhow::Result<Option<Commit>> {
            Ok(None)
        }

        fn timers_due(&self) -> bool {
            false
        }

        fn commit_due(&self) -> bool {
            self.processed % 3 == 0
        }
    }

    fn fakes(batches: i64) -> (Shared, Batches, SlowAcks) {
        let seen = Shared::default();
        (seen.clone(), Batches { next: 0, batches, seen: seen.clone(), pace: Duration::ZERO }, SlowAcks { seen, delay_ms: Mutex::new(40) })
    }

    #[tokio::test]
    async fn batches_overlap_their_acks_and_commit_only_durable_outputs() {
        let (seen, mut source, sink) = fakes(12);
        let mut processor = CopyEach::default();
        let (_keep, shutdown) = watch::channel(false);
        let limits = BatchLimits::default();
        let (records, batches) = run_job(&mut processor, &mut source, &sink, limits, StopWhen::IdleFor(Duration::from_millis(50)), shutdown).await.unwrap();
        assert_eq!((records, batches), (120, 12));
        let seen = seen.lock().unwrap();
        assert!(seen.max_overlap >= 2, "the next batch was read while earlier outputs were in flight (overlap {})", seen.max_overlap);
        assert!(seen.max_overlap <= MAX_IN_FLIGHT);
        assert_eq!(seen.acked.len(), 120);
        assert_eq!(seen.committed.last(), Some(&(Arc::from("in"), 0, 120)));
        assert!(processor.durable_calls >= 4, "a settled commit every third batch ({} calls)", processor.durable_calls);
    }

    #[tokio::test]
    async fn a_job_killed_with_outputs_in_flight_has_committed_only_durable_ones() {
        let (seen, mut source, sink) = fakes(1_000);
        let mut processor = CopyEach::default();
        let (_keep, shutdown) = watch::channel(false);
        let job = run_job(&mut processor, &mut source, &sink, BatchLimits::default(), StopWhen::Shutdown, shutdown);
        // The process dies mid-run: the job future is dropped wherever it is.
        assert!(tokio::time::timeout(Duration::from_millis(150), job).await.is_err());
        let seen = seen.lock().unwrap();
        // `commit` asserted durability for every offset it took; some outputs were still unacknowledged.
        assert!(!seen.committed.is_empty());
        let committed = seen.committed.last().unwrap().2;
        assert!(seen.acked.len() as i64 >= committed);
        assert!(source.next > committed, "records were read past the last commit");
    }

    #[tokio::test]
    async fn a_group_member_without_input_waits_while_another_still_reads() {
        let activity = Arc::new(Activity::default());
        let idle = StopWhen::GroupIdleFor(Duration::from_millis(100), activity.clone());
        let (_keep, shutdown) = watch::channel(false);
        // The busy member reads a batch every ~5 ms for ~300 ms: never idle for 100 ms.
        let seen = Shared::default();
        let mut busy_source = Batches { next: 0, batches: 60, seen: seen.clone(), pace: Duration::from_millis(5) };
        let busy_sink = SlowAcks { seen: seen.clone(), delay_ms: Mutex::new(4) };
        let (_, mut idle_source, idle_sink) = fakes(0);
        let (mut busy, mut quiet) = (CopyEach::default(), CopyEach::default());
        let started = Instant::now();
        let busy_job = async {
            let (records, _) = run_job(&mut busy, &mut busy_source, &busy_sink, BatchLimits::default(), idle.clone(), shutdown.clone()).await.unwrap();
            (records, started.elapsed())
        };
        let quiet_job = async {
            let (records, _) = run_job(&mut quiet, &mut idle_source, &idle_sink, BatchLimits::default(), idle.clone(), shutdown.clone()).await.unwrap();
            (records, started.elapsed())
        };
        let ((busy_records, busy_took), (quiet_records, quiet_took)) = tokio::join!(busy_job, quiet_job);
        assert_eq!((busy_records, quiet_records), (600, 0));
        assert!(busy_took >= Duration::from_millis(300), "the busy member read for {busy_took:?}");
        // Alone (IdleFor), the quiet member would have stopped at ~100 ms.
        assert!(quiet_took + Duration::from_millis(50) >= busy_took, "the idle member stopped at {quiet_took:?}, the busy one at {busy_took:?}");
        assert!(activity.idle_for() >= Duration::from_millis(100));
    }
}
