//! Drives a batch processor over a source and a sink: read a micro-batch,
//! process it, wait until every output is durable, then commit the batch's
//! offsets. A crash anywhere before the commit replays the batch
//! (at-least-once into Kafka; outputs carry deterministic ids so consumers can
//! drop replays).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use notiflow_connector::{BatchLimits, Offsets, OutRecord, Record, Sink, Source};
use tokio::sync::watch;


/// When a job stops by itself.
#[derive(Debug, Clone, Copy)]
pub enum StopWhen {
    /// Only on shutdown.
    Shutdown,
    /// After this long without a record (demo runs, tests).
    IdleFor(Duration),
}

/// Turns one micro-batch of records into output records.
pub trait BatchProcessor {
    fn process(&mut self, records: &[Record], out: &mut Vec<OutRecord>) -> impl Future<Output = anyhow::Result<()>>;
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
        if batch.is_empty() {
            match stop {
                StopWhen::IdleFor(idle) if idle_since.elapsed() >= idle => break,
                _ => continue,
            }
        }
        idle_since = Instant::now();
        let started = Instant::now();
        let mut out = Vec::with_capacity(batch.len() * 2);
        processor.process(&batch, &mut out).await?;
        let mut offsets = Offsets::default();
        batch.iter().for_each(|r| offsets.advance_past(r));
        count_records("notiflow_records_in_total", batch.iter().map(|r| r.topic.as_ref()));
        count_records("notiflow_records_out_total", out.iter().map(|r| r.topic.as_ref()));
        // Durable first, then commit: never the other way round.
        sink.send_all(out).await?;
        source.commit(&offsets).await?;
        metrics::histogram!("notiflow_batch_seconds").record(started.elapsed().as_secs_f64());
        records_in += batch.len() as u64;
        batches += 1;
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
