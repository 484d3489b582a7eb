//! Drives a batch processor over a source and a sink: read a micro-batch,
//! process it, wait until every output is durable, let the processor
//! checkpoint (its state records are written like outputs), then commit the
//! offsets it says are safe. Never commit before the outputs and the
//! checkpoint are durable (see docs/exactly-once.md). Partition assignment
//! changes reach the processor before the batch that follows them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use notiflow_connector::{AssignmentChange, BatchLimits, Offsets, OutRecord, Positions, Record, Sink, Source};
use tokio::sync::watch;


/// When a job stops by itself.
#[derive(Debug, Clone, Copy)]
pub enum StopWhen {
    /// Only on shutdown.
    Shutdown,
    /// After this long without a record (demo runs, tests).
    IdleFor(Duration),
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
    let mut idle_since = Instant::now();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let batch = tokio::select! {
            batch = source.next_batch(limits) => batch?,
            _ = shutdown.changed() => break,
        };
        let changes = source.assignment_changes();
        if !changes.is_empty() {
            processor.rebalance(changes).await?;
            // Idle counts from the last assignment: a restarted member may wait for its partitions.
            idle_since = Instant::now();
        }
        if batch.is_empty() && !processor.timers_due() {
            match stop {
                StopWhen::IdleFor(idle) if idle_since.elapsed() >= idle => break,
                _ => continue,
            }
        }
        if !batch.is_empty() {
            idle_since = Instant::now();
        }
        let started = Instant::now();
        let mut out = Vec::with_capacity(batch.len() * 2);
        processor.process(&batch, &mut out).await?;
        let mut offsets = Offsets::default();
        batch.iter().for_each(|r| offsets.advance_past(r));
        count_records("notiflow_records_in_total", batch.iter().map(|r| r.topic.as_ref()));
        count_records("notiflow_records_out_total", out.iter().map(|r| r.topic.as_ref()));
        // Durable first, then checkpoint, then commit: never the other way round.
        let written = sink.send_all(out).await?;
        if let Some(commit) = processor.durable(&written, &offsets)? {
            apply(commit, source, sink).await?;
        }
        metrics::histogram!("notiflow_batch_seconds").record(started.elapsed().as_secs_f64());
        records_in += batch.len() as u64;
        batches += 1;
    }
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
