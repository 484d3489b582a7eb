//! Running a planned pipeline one micro-batch at a time, with checkpoints,
//! deterministic output ids and suppression of outputs replayed after a crash
//! (docs/exactly-once.md).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int32Type, Int64Type, TimeUnit};
use datafusion::physical_plan::collect;
use notiflow_connector::{AssignmentChange, Header, LogReader, Offsets, OutRecord, Positions, Record};
use sha2::{Digest, Sha256};

use super::hold::{self, Held};
use super::checkpoint::{PartitionCheckpoint, StateTopic};
use super::state_bytes::Unit;
use super::codec::{OFFSET_COLUMN, PARTITION_COLUMN, SOURCE_COLUMN, WATERMARK_COLUMN};
use super::plan::{Pipeline, Stage};
use crate::config::TopicsConfig;
use crate::dlq::{self, Rejected};
use crate::job::{BatchProcessor, Commit, RunTotals};
use crate::logs::Logs;
use crate::sql::BadData;

/// Header carrying each output record's deterministic id.
pub const ID_HEADER: &str = "notiflow.id";

type OutputId = [u8; 16];

/// Checkpointing settings of a run.
pub struct Checkpointing {
    /// The compacted topic checkpoints go to (one per consumer group).
    pub state: StateTopic,
    pub interval: Duration,
}

/// A pipeline with its per-run state.
pub struct PipelineRun {
    pub pipeline: Pipeline,
    pub events_topic: Arc<str>,
    pub totals: RunTotals,
    dlq_topics: Vec<Arc<str>>,
    sink_topics: Vec<Arc<str>>,
    checkpointing: Option<Checkpointing>,
    /// Where checkpoints and outputs are read back from on assignment.
    logs: Option<Logs>,
    /// Source partitions this instance owns (state and offsets it keeps).
    owned: BTreeSet<(Arc<str>, i32)>,
    /// Next checkpoint slot per owned partition (see `checkpoint.rs`).
    slots: HashMap<(Arc<str>, i32), u8>,
    epoch: u64,
    last_checkpoint: Instant,
    /// Every offset processed so far (what a checkpoint records).
    processed: Offsets,
    /// Records below these offsets are already reflected in the restored state.
    skip_below: HashMap<(Arc<str>, i32), i64>,
    /// Per output partition: the offset after our last durable write.
    emitted_end: BTreeMap<(String, i32), i64>,
    /// Ids of outputs written after the restored checkpoint (not to write again).
    suppress: HashSet<OutputId>,
    pub suppressed: u64,
    pub skipped: u64,
    /// Next offset expected per source partition, to notice records the
    /// broker never delivered (offset gaps).
    expected: HashMap<(Arc<str>, i32), i64>,
    /// Offsets skipped over by the broker (see `note_gaps`).
    pub gap_records: u64,
    /// Partitions whose state came back from a checkpoint.
    pub restored_partitions: u64,
    /// Timer sources (`hold.until_field`) by topic.
    timers: HashMap<Arc<str>, Timer>,
}

/// A timer source: its table, due-time field and held records.
struct Timer {
    source: usize,
    field: String,
    held: Held,
    /// The lookup whose keys wake held records (`hold.wake_lookup`).
    wake_lookup: Option<usize>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl PipelineRun {
    /// Topic names in the SQL are mapped through `topics.rename`.
    pub fn new(mut pipeline: Pipeline, topics: &TopicsConfig) -> Self {
        for source in &mut pipeline.sources {
            source.kafka.topic = topics.resolve(&source.kafka.topic);
            source.kafka.dlq_topic = topics.resolve(&source.kafka.dlq_topic);
        }
        for sink in &mut pipeline.sinks {
            sink.kafka.topic = topics.resolve(&sink.kafka.topic);
        }
        for lookup in &mut pipeline.lookups {
            lookup.kafka.topic = topics.resolve(&lookup.kafka.topic);
        }
        let dlq_topics = pipeline.sources.iter().map(|s| Arc::from(s.kafka.dlq_topic.as_str())).collect();
        let sink_topics = pipeline.sinks.iter().map(|s| Arc::from(s.kafka.topic.as_str())).collect();
        let events_topic = Arc::from(topics.resolve(&topics.events).as_str());
        let timers = pipeline
            .sources
            .iter()
            .enumerate()
            .filter_map(|(source, s)| {
                let field = s.kafka.hold_until_field.clone()?;
                let wake_lookup = s.kafka.hold_wake.as_ref().and_then(|w| pipeline.lookups.iter().position(|l| l.name == w.lookup));
                let held = Held::waking_on(s.kafka.hold_wake.as_ref().map(|w| w.field.clone()));
                Some((Arc::from(s.kafka.topic.as_str()), Timer { source, field, held, wake_lookup }))
            })
            .collect();
        PipelineRun {
            pipeline,
            events_topic,
            totals: RunTotals::default(),
            dlq_topics,
            sink_topics,
            checkpointing: None,
            logs: None,
            owned: BTreeSet::new(),
            slots: HashMap::new(),
            epoch: 0,
            last_checkpoint: Instant::now(),
            processed: Offsets::default(),
            skip_below: HashMap::new(),
            emitted_end: BTreeMap::new(),
            suppress: HashSet::new(),
            suppressed: 0,
            skipped: 0,
            expected: HashMap::new(),
            gap_records: 0,
            restored_partitions: 0,
            timers,
        }
    }

    /// The stream topics (sources), read in the consumer group.
    pub fn stream_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.pipeline.sources.iter().map(|s| s.kafka.topic.clone()).collect();
        topics.sort();
        topics.dedup();
        topics
    }

    /// Every topic the pipeline reads (sources and lookup tables).
    pub fn source_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.pipeline.sources.iter().map(|s| s.kafka.topic.clone()).collect();
        topics.extend(self.pipeline.lookups.iter().map(|l| l.kafka.topic.clone()));
        topics.sort();
        topics.dedup();
        topics
    }

    /// Every topic the pipeline writes.
    pub fn output_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.sink_topics.iter().chain(&self.dlq_topics).map(|t| t.to_string()).collect();
        topics.push(self.events_topic.to_string());
        topics.sort();
        topics.dedup();
        topics
    }

    /// Loads the lookup tables from their whole compacted topics. Call
    /// before the first batch. Returns where each lookup partition's updates
    /// continue (topic, partition, next offset): every instance follows them
    /// all, outside the consumer group.
    pub async fn prepare<R: LogReader>(&mut self, reader: &R) -> anyhow::Result<Vec<(String, i32, i64)>> {
        let mut follow = Vec::new();
        for lookup in &self.pipeline.lookups {
            for (partition, _) in reader.end_offsets(&lookup.kafka.topic).await? {
                let records = reader.read_from(&lookup.kafka.topic, partition, 0).await?;
                let next = records.iter().map(|r| r.offset + 1).max().unwrap_or(0);
                follow.push((lookup.kafka.topic.clone(), partition, next));
                let bad = lookup.apply(&records.iter().collect::<Vec<_>>());
                if bad > 0 {
                    tracing::warn!(table = %lookup.name, bad, "lookup records that could not be decoded were skipped");
                }
            }
        }
        Ok(follow)
    }

    /// Turns checkpointing on. Partitions assigned from now on are restored
    /// from their newest checkpoint in `checkpointing.state`, and outputs
    /// written after it are not written again (read back through `logs`).
    pub async fn enable_checkpoints(&mut self, checkpointing: Checkpointing, logs: Logs) -> anyhow::Result<()> {
        for topic in self.output_topics() {
            for (partition, end) in logs.end_offsets(&topic).await? {
                self.emitted_end.entry((topic.clone(), partition)).or_insert(end);
            }
        }
        self.checkpointing = Some(checkpointing);
        self.logs = Some(logs);
        Ok(())
    }

    fn is_stream_topic(&self, topic: &str) -> bool {
        self.pipeline.sources.iter().any(|s| s.kafka.topic == topic)
    }

    /// The operator state units of a source topic partition: one per source
    /// table reading the topic.
    fn units_of(&self, topic: &str, partition: i32) -> Vec<Unit> {
        self.pipeline.sources.iter().enumerate().filter(|(_, s)| s.kafka.topic == topic).map(|(i, _)| (i as i32, partition)).collect()
    }

    /// Partitions assigned to this instance: windowed operators wait for
    /// them, and their state comes back from their newest checkpoint.
    async fn assign(&mut self, partitions: &[(Arc<str>, i32)]) -> anyhow::Result<()> {
        let mine: Vec<(Arc<str>, i32)> = partitions.iter().filter(|(t, _)| self.is_stream_topic(t)).cloned().collect();
        for (topic, partition) in &mine {
            let of_topic: Vec<bool> = self.pipeline.sources.iter().map(|s| s.kafka.topic == **topic).collect();
            for (_, stages, sources) in self.pipeline.stage_lists_mut() {
                let of_topic = |list: &[usize]| -> Vec<i32> { list.iter().filter(|s| of_topic[**s]).map(|s| *s as i32).collect() };
                for stage in stages.iter_mut() {
                    match stage {
                        Stage::WindowAggregate { op, .. } => of_topic(sources).into_iter().for_each(|s| op.expect_partitions(s, &[*partition])),
                        // Each side waits for the partitions of the sources it reads.
                        Stage::IntervalJoin { op, left_sources, right_sources, .. } => {
                            of_topic(left_sources).into_iter().for_each(|s| op.expect_partitions(true, s, &[*partition]));
                            of_topic(right_sources).into_iter().for_each(|s| op.expect_partitions(false, s, &[*partition]));
                        }
                        _ => {}
                    }
                }
            }
        }
        self.owned.extend(mine.iter().cloned());
        let (Some(checkpointing), Some(logs)) = (&self.checkpointing, &self.logs) else { return Ok(()) };
        let loaded = checkpointing.state.load(logs, &mine).await?;
        // Outputs written after each checkpoint are not written again: collect their ids.
        let mut scan_from: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for (checkpoint, slot) in &loaded {
            self.restore_partition(checkpoint)?;
            self.slots.insert((Arc::from(checkpoint.topic.as_str()), checkpoint.partition), 1 - slot);
            for (output, from) in &checkpoint.emitted_end {
                let slot = scan_from.entry(output.clone()).or_insert(*from);
                *slot = (*slot).min(*from);
            }
        }
        let logs = self.logs.as_ref().expect("checked");
        let before = self.suppress.len();
        for ((topic, partition), from) in scan_from {
            for record in logs.read_from(&topic, partition, from).await? {
                let end = self.emitted_end.entry((topic.clone(), partition)).or_insert(record.offset + 1);
                *end = (*end).max(record.offset + 1);
                if let Some(id) = record.headers.iter().find(|h| h.name == ID_HEADER).and_then(|h| parse_id(&h.value)) {
                    self.suppress.insert(id);
                }
            }
        }
        self.restored_partitions += loaded.len() as u64;
        let restored: Vec<String> = loaded.iter().map(|(c, _)| format!("{}/{}@{}", c.topic, c.partition, c.next_offset)).collect();
        tracing::info!(assigned = mine.len(), ?restored, replayed_outputs = self.suppress.len() - before, "partitions assigned");
        Ok(())
    }

    /// Partitions revoked: their state and offsets are their new owner's.
    fn revoke(&mut self, partitions: &[(Arc<str>, i32)]) {
        for (topic, partition) in partitions {
            if !self.owned.remove(&(topic.clone(), *partition)) {
                continue;
            }
            let units = self.units_of(topic, *partition);
            for (_, stages, _) in self.pipeline.stage_lists_mut() {
                for stage in stages.iter_mut() {
                    if let Some(state) = stage.unit_state() {
                        state.drop_units(&units);
                    }
                }
            }
            if let Some(timer) = self.timers.get_mut(topic) {
                timer.held.drop_partition(*partition);
            }
            let key = (topic.clone(), *partition);
            self.skip_below.remove(&key);
            self.expected.remove(&key);
            self.slots.remove(&key);
            self.processed.remove(topic, *partition);
        }
    }

    fn restore_partition(&mut self, checkpoint: &PartitionCheckpoint) -> anyhow::Result<()> {
        self.epoch = self.epoch.max(checkpoint.epoch);
        for ((flow, stage), state) in &checkpoint.operators {
            let mut lists = self.pipeline.stage_lists_mut();
            let found = lists.iter_mut().find(|(id, _, _)| id == flow).and_then(|(_, stages, _)| stages.get_mut(*stage as usize));
            match found.and_then(Stage::unit_state) {
                Some(op) => op.restore_units(state)?,
                None => anyhow::bail!(
                    "the checkpoint of {}/{} has state for stage list {flow} stage {stage}, which the SQL no longer has",
                    checkpoint.topic,
                    checkpoint.partition
                ),
            }
        }
        let topic: Arc<str> = Arc::from(checkpoint.topic.as_str());
        if let Some(timer) = self.timers.get_mut(&topic) {
            timer.held.restore(&topic, checkpoint.partition, &checkpoint.held)?;
        }
        let next = checkpoint.next_offset;
        self.skip_below.insert((topic.clone(), checkpoint.partition), next);
        self.expected.insert((topic.clone(), checkpoint.partition), next);
        self.processed.insert(topic, checkpoint.partition, next);
        Ok(())
    }

    /// Checkpoint records of every owned partition that has an offset.
    fn checkpoint(&mut self) -> anyhow::Result<Vec<OutRecord>> {
        if self.checkpointing.is_none() {
            return Ok(Vec::new());
        }
        self.epoch += 1;
        let mut records = Vec::new();
        for (topic, partition) in self.owned.clone() {
            let Some(next_offset) = self.processed.get(&topic, partition) else { continue };
            let units = self.units_of(&topic, partition);
            let mut operators = BTreeMap::new();
            for (id, stages, _) in self.pipeline.stage_lists_mut() {
                for (s, stage) in stages.iter_mut().enumerate() {
                    if let Some(state) = stage.unit_state() {
                        operators.insert((id, s as u32), state.snapshot_units(&units)?);
                    }
                }
            }
            let checkpoint = PartitionCheckpoint {
                epoch: self.epoch,
                topic: topic.to_string(),
                partition,
                next_offset,
                operators,
                emitted_end: self.emitted_end.clone(),
                held: self.timers.get(&topic).map(|t| t.held.snapshot(partition)).unwrap_or_default(),
            };
            let slot = self.slots.entry((topic, partition)).or_insert(0);
            let state = &self.checkpointing.as_ref().expect("checked").state;
            records.extend(state.records(&checkpoint, *slot));
            *slot = 1 - *slot;
        }
        self.last_checkpoint = Instant::now();
        metrics::counter!("notiflow_checkpoints_total").increment(1);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        metrics::gauge!("notiflow_last_checkpoint_timestamp_seconds").set(now.as_secs_f64());
        Ok(records)
    }

    fn reject(&mut self, source: usize, record: &Record, rejected: Rejected<'_>, out: &mut Vec<OutRecord>) {
        let dlq_topic = self.dlq_topics[source].clone();
        let mut dead = dlq::dead_letter(record, &rejected, &dlq_topic);
        let mut event = dlq::event_record(&dlq::rejected_event(record, &rejected, &dlq_topic), &self.events_topic);
        self.totals.count_dead_letter(rejected.reason);
        for (kind, output) in [(u32::MAX, &mut dead), (u32::MAX - 1, &mut event)] {
            let id = output_id(kind, source as i32, record.partition, record.offset, 0);
            if self.keep(&id) {
                output.headers.push(Header::new(ID_HEADER, hex(&id)));
                out.push(output.clone());
            }
        }
    }

    /// False for an output already written before a crash.
    fn keep(&mut self, id: &OutputId) -> bool {
        if self.suppress.contains(id) {
            self.suppressed += 1;
            return false;
        }
        true
    }

    /// Decodes the records of each source into its feed; returns which sources got rows.
    fn load_sources(&mut self, records: &[&Record], out: &mut Vec<OutRecord>) -> anyhow::Result<Vec<bool>> {
        let mut by_topic: HashMap<&str, Vec<&Record>> = HashMap::new();
        for record in records {
            by_topic.entry(record.topic.as_ref()).or_default().push(record);
        }
        for lookup in &self.pipeline.lookups {
            if let Some(records) = by_topic.get(lookup.kafka.topic.as_str()) {
                let bad = lookup.apply(records);
                if bad > 0 {
                    metrics::counter!("notiflow_bad_data_dropped_total", "table" => lookup.name.clone()).increment(bad as u64);
                }
            }
        }
        let mut active = vec![false; self.pipeline.sources.len()];
        for s in 0..self.pipeline.sources.len() {
            let mut mine: Vec<&Record> = by_topic.get(self.pipeline.sources[s].kafka.topic.as_str()).cloned().unwrap_or_default();
            if let Some(contract) = &self.pipeline.sources[s].contract {
                let mut rejected = Vec::new();
                mine.retain(|r| match contract.check(r.key.as_deref(), r.payload.as_deref()) {
                    Ok(_) => true,
                    Err(rejection) => {
                        rejected.push((*r, rejection));
                        false
                    }
                });
                for (record, rejection) in rejected {
                    let detail = Rejected {
                        reason: rejection.reason.as_str(),
                        error: &rejection.error,
                        tenant: rejection.tenant.as_deref(),
                        request_id: rejection.request_id.as_deref(),
                        udf: None,
                    };
                    self.reject(s, record, detail, out);
                }
            }
            let source = &self.pipeline.sources[s];
            let decoded = source.decoder.decode(&mine);
            let bad_data = source.kafka.bad_data;
            let name = source.name.clone();
            for (i, error) in &decoded.bad {
                match bad_data {
                    BadData::Dlq => {
                        let detail = Rejected { reason: "decode_error", error, tenant: None, request_id: None, udf: None };
                        self.reject(s, mine[*i], detail, out);
                    }
                    BadData::Drop => metrics::counter!("notiflow_bad_data_dropped_total", "table" => name.clone()).increment(1),
                    BadData::Fail => anyhow::bail!(
                        "table {name}: record {} cannot be decoded ({error}) and bad_data = 'fail'",
                        dlq::source_of(mine[*i])
                    ),
                }
            }
            let mut batch = decoded.batch;
            if batch.num_rows() > 0 {
                active[s] = true;
                if let Some(expr) = &self.pipeline.sources[s].watermark {
                    let wm = expr.evaluate(&batch)?.into_array(batch.num_rows())?;
                    let wm = cast(&wm, &DataType::Timestamp(TimeUnit::Nanosecond, None))?;
                    let index = batch.schema().index_of(WATERMARK_COLUMN)?;
                    let mut columns = batch.columns().to_vec();
                    columns[index] = wm;
                    batch = RecordBatch::try_new(batch.schema(), columns)?;
                }
                self.pipeline.sources[s].feed.set(vec![batch]);
            } else {
                self.pipeline.sources[s].feed.clear();
            }
        }
        Ok(active)
    }

    /// Runs every shared view and flow that has new input; returns (flow,
    /// output batches).
    async fn run_flows(&mut self, active: &[bool]) -> anyhow::Result<Vec<(usize, Vec<RecordBatch>)>> {
        let task_ctx = self.pipeline.ctx.task_ctx();
        for v in 0..self.pipeline.shared.len() {
            let view = &mut self.pipeline.shared[v];
            if view.sources.iter().any(|&s| active[s]) {
                let rows = run_stages(&mut view.stages, &task_ctx).await?;
                view.feed.set(rows);
                report_late(&format!("view {}", view.name), &view.stages);
            } else {
                view.feed.clear();
            }
        }
        let mut results = Vec::new();
        for f in 0..self.pipeline.flows.len() {
            let flow = &mut self.pipeline.flows[f];
            if !flow.sources.iter().any(|&s| active[s]) {
                continue;
            }
            let rows = run_stages(&mut flow.stages, &task_ctx).await?;
            report_late(&f.to_string(), &flow.stages);
            results.push((f, rows));
        }
        Ok(results)
    }

    /// Dead-letters every record a UDF failed on (reason `udf_error` or the
    /// UDF's own, the UDF's name in a header); returns their origins, whose outputs are dropped.
    fn dead_letter_udf_failures(&mut self, records: &[&Record], out: &mut Vec<OutRecord>) -> HashSet<(i32, i32, i64)> {
        let mut failed = HashSet::new();
        for failure in self.pipeline.udf_failures.drain() {
            let Some(origin @ (source, partition, offset)) = failure.origin else { continue };
            if !failed.insert(origin) {
                continue;
            }
            let Some(table) = self.pipeline.sources.get(source as usize) else { continue };
            let topic = table.kafka.topic.clone();
            // Keys of contract-checked requests are `tenant/request_id`.
            let identity = table.contract.is_some();
            let Some(record) = records.iter().find(|r| r.partition == partition && r.offset == offset && r.topic.as_ref() == topic) else {
                continue;
            };
            let key = record.key.as_deref().and_then(|k| std::str::from_utf8(k).ok()).filter(|_| identity);
            let (tenant, request_id) = key.and_then(|k| k.split_once('/')).unzip();
            let error = format!("UDF {} failed on this record (see the process log for its panic message)", failure.udf);
            let detail = Rejected { reason: &failure.reason, error: &error, tenant, request_id, udf: Some(&failure.udf) };
            self.reject(source as usize, record, detail, out);
        }
        failed
    }

    fn write_outputs(&mut self, flow: usize, batches: &[RecordBatch], failed: &HashSet<(i32, i32, i64)>, out: &mut Vec<OutRecord>) -> anyhow::Result<()> {
        let sink = self.pipeline.flows[flow].sink;
        let topic = self.sink_topics[sink].clone();
        let mut ordinals: HashMap<(i32, i32, i64), u32> = HashMap::new();
        let mut written = 0;
        let content_ids = self.pipeline.flows[flow].content_ids;
        for batch in batches {
            let lineage = if content_ids { None } else { Lineage::of(batch) };
            let rows = self.pipeline.sinks[sink].encoder.encode(batch)?;
            for (row, (key, payload)) in rows.into_iter().enumerate() {
                let id = match &lineage {
                    Some(l) => {
                        let origin = l.origin(row);
                        if !failed.is_empty() && failed.contains(&origin) {
                            continue;
                        }
                        let ordinal = ordinals.entry(origin).or_default();
                        *ordinal += 1;
                        output_id(flow as u32, origin.0, origin.1, origin.2, *ordinal)
                    }
                    // No lineage (a constant query): the content is the identity.
                    None => content_id(flow as u32, &payload),
                };
                if self.keep(&id) {
                    out.push(OutRecord { topic: topic.clone(), key, payload, headers: vec![Header::new(ID_HEADER, hex(&id))] });
                    written += 1;
                }
            }
        }
        *self.totals.dispatched.entry(self.pipeline.sinks[sink].name.clone()).or_default() += written;
        Ok(())
    }
}

/// Runs one list of stages over the current feeds; returns the last stage's rows.
async fn run_stages(stages: &mut [Stage], task_ctx: &Arc<datafusion::execution::TaskContext>) -> anyhow::Result<Vec<RecordBatch>> {
    let mut outputs: Vec<Vec<RecordBatch>> = Vec::with_capacity(stages.len());
    for stage in stages.iter_mut() {
        let each = |input: usize, f: &mut dyn FnMut(&RecordBatch) -> datafusion::common::Result<RecordBatch>| {
            outputs[input].iter().map(f).collect::<datafusion::common::Result<Vec<_>>>()
        };
        let produced = match stage {
            Stage::Segment { plan } => collect(plan.clone(), task_ctx.clone()).await?,
            Stage::RowNumber { input, op, .. } => each(*input, &mut |b| op.process_batch(b))?,
            Stage::LookupJoin { input, op, .. } => each(*input, &mut |b| op.process_batch(b))?,
            Stage::WindowAggregate { input, op, .. } => each(*input, &mut |b| op.process_batch(b))?,
            Stage::IntervalJoin { left, right, op, .. } => vec![op.process(&outputs[*left], &outputs[*right])?],
        };
        if let Some(feed) = stage.output() {
            feed.set(produced.clone());
        }
        outputs.push(produced);
    }
    for stage in stages.iter() {
        if let Some(feed) = stage.output() {
            feed.clear();
        }
    }
    Ok(outputs.pop().unwrap_or_default())
}

/// Late rows per windowed stage (gauge `notiflow_late_rows{flow,stage}`).
fn report_late(flow: &str, stages: &[Stage]) {
    for (s, stage) in stages.iter().enumerate() {
        let late = match stage {
            Stage::RowNumber { op, .. } => Some(op.late_rows()),
            Stage::WindowAggregate { op, .. } => Some(op.late_rows()),
            Stage::IntervalJoin { op, .. } => Some(op.late_rows()),
            Stage::Segment { .. } | Stage::LookupJoin { .. } => None,
        };
        if let Some(late) = late {
            let labels = [("flow", flow.to_string()), ("stage", s.to_string())];
            metrics::gauge!("notiflow_late_rows", &labels).set(late as f64);
        }
    }
}

/// Where each row of a batch came from.
struct Lineage<'a> {
    source: &'a arrow::array::PrimitiveArray<Int32Type>,
    partition: &'a arrow::array::PrimitiveArray<Int32Type>,
    offset: &'a arrow::array::PrimitiveArray<Int64Type>,
}

impl<'a> Lineage<'a> {
    fn of(batch: &'a RecordBatch) -> Option<Self> {
        let column = |name| batch.column_by_name(name).filter(|c| c.null_count() == 0);
        Some(Lineage {
            source: column(SOURCE_COLUMN)?.as_primitive_opt::<Int32Type>()?,
            partition: column(PARTITION_COLUMN)?.as_primitive_opt::<Int32Type>()?,
            offset: column(OFFSET_COLUMN)?.as_primitive_opt::<Int64Type>()?,
        })
    }

    fn origin(&self, row: usize) -> (i32, i32, i64) {
        (self.source.value(row), self.partition.value(row), self.offset.value(row))
    }
}

/// Deterministic id of the `ordinal`-th output of `flow` for one input record.
fn output_id(flow: u32, source: i32, partition: i32, offset: i64, ordinal: u32) -> OutputId {
    let mut hasher = Sha256::new();
    hasher.update(flow.to_le_bytes());
    hasher.update(source.to_le_bytes());
    hasher.update(partition.to_le_bytes());
    hasher.update(offset.to_le_bytes());
    hasher.update(ordinal.to_le_bytes());
    hasher.finalize()[..16].try_into().expect("16 bytes")
}

fn content_id(flow: u32, payload: &[u8]) -> OutputId {
    let mut hasher = Sha256::new();
    hasher.update(flow.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()[..16].try_into().expect("16 bytes")
}

fn hex(id: &OutputId) -> String {
    crate::hex::encode(id)
}

fn parse_id(text: &[u8]) -> Option<OutputId> {
    let text = std::str::from_utf8(text).ok()?;
    if text.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(id)
}

impl PipelineRun {
    /// Counts records a source partition skipped: offsets are dense on
    /// ordinary (not compacted) topics, so a jump past the next expected
    /// offset means the broker did not deliver records (tansu 0.6 does this
    /// when a fetch starts inside a record batch). Loud, not silent.
    fn note_gaps(&mut self, records: &[Record]) {
        for record in records {
            let key = (record.topic.clone(), record.partition);
            if let Some(next) = self.expected.get(&key)
                && record.offset > *next
            {
                let missing = (record.offset - next) as u64;
                self.gap_records += missing;
                metrics::counter!("notiflow_offset_gap_records_total", "topic" => record.topic.to_string()).increment(missing);
                tracing::error!(topic = %record.topic, partition = record.partition, expected = next, got = record.offset,
                    "the broker skipped offsets: records in between were never delivered");
            }
            let slot = self.expected.entry(key).or_insert(record.offset + 1);
            *slot = (*slot).max(record.offset + 1);
        }
    }
}

impl PipelineRun {
    /// Records waiting in timer sources, and the earliest due time (ms).
    pub fn held(&self) -> (usize, Option<i64>) {
        let count = self.timers.values().map(|t| t.held.len()).sum();
        (count, self.timers.values().filter_map(|t| t.held.next_due()).min())
    }

    /// Timer sources: holds their records that are not due yet; returns the
    /// records to run now and, separately, the held records now due
    /// (earliest first).
    fn hold_back<'r>(&mut self, records: Vec<&'r Record>, out: &mut Vec<OutRecord>) -> (Vec<&'r Record>, Vec<Record>) {
        let now = now_ms();
        let lookups = &self.pipeline.lookups;
        // Keys this batch adds to a wake lookup (recalls): per timer topic.
        let mut wake_keys: Vec<(Arc<str>, String)> = Vec::new();
        for (topic, timer) in &self.timers {
            if let Some(lookup) = timer.wake_lookup.map(|l| &lookups[l]) {
                let updates = records.iter().filter(|r| r.topic.as_ref() == lookup.kafka.topic);
                wake_keys.extend(updates.filter_map(|r| lookup.key_of(r)).map(|k| (topic.clone(), k)));
            }
        }
        let mut run_now = Vec::with_capacity(records.len());
        let mut bad = Vec::new();
        for record in records {
            let Some(timer) = self.timers.get_mut(&record.topic) else {
                run_now.push(record);
                continue;
            };
            match hold::due_ms(record.payload.as_deref(), &timer.field) {
                // Not held if already woken (its recall came first).
                Ok(Some(due)) if due > now => {
                    let wake = timer.held.wake_value(record);
                    match (timer.wake_lookup, &wake) {
                        (Some(l), Some(v)) if lookups[l].contains(v) => run_now.push(record),
                        _ => timer.held.hold_waking(due, record.clone(), wake),
                    }
                }
                Ok(_) => run_now.push(record),
                Err(error) => bad.push((timer.source, record, error)),
            }
        }
        let mut released = Vec::new();
        for (topic, key) in wake_keys {
            let woken = self.timers.get_mut(&topic).map(|t| t.held.wake(&key)).unwrap_or_default();
            if !woken.is_empty() {
                tracing::info!(%topic, %key, released = woken.len(), "held records woken");
            }
            released.extend(woken);
        }
        for (source, record, error) in bad {
            let detail = Rejected { reason: "decode_error", error: &error, tenant: None, request_id: None, udf: None };
            self.reject(source, record, detail, out);
        }
        let mut held = 0;
        for (topic, timer) in self.timers.iter_mut() {
            let due = timer.held.take_due(now);
            if !due.is_empty() {
                tracing::info!(%topic, released = due.len(), still_held = timer.held.len(), "held records due");
            }
            released.extend(due);
            held += timer.held.len();
        }
        metrics::gauge!("notiflow_held_records").set(held as f64);
        (run_now, released)
    }
}

impl BatchProcessor for PipelineRun {
    async fn process(&mut self, records: &[Record], out: &mut Vec<OutRecord>) -> anyhow::Result<()> {
        let lookup_topics: Vec<&str> = self.pipeline.lookups.iter().map(|l| l.kafka.topic.as_str()).collect();
        if lookup_topics.is_empty() {
            self.note_gaps(records);
        } else {
            // Compacted lookup topics have gaps by design.
            let stream: Vec<Record> = records.iter().filter(|r| !lookup_topics.contains(&r.topic.as_ref())).cloned().collect();
            self.note_gaps(&stream);
        }
        // Records the restored state already reflects produce nothing again.
        let fresh: Vec<&Record> = records
            .iter()
            .filter(|r| match self.skip_below.get(&(r.topic.clone(), r.partition)) {
                Some(next) => r.offset >= *next,
                None => true,
            })
            .collect();
        self.skipped += (records.len() - fresh.len()) as u64;
        let released;
        let fresh = if self.timers.is_empty() {
            fresh
        } else {
            let (mut due, not_due) = self.hold_back(fresh, out);
            released = not_due;
            due.extend(released.iter());
            due
        };
        let active = self.load_sources(&fresh, out)?;
        let results = self.run_flows(&active).await;
        self.pipeline.sources.iter().for_each(|s| s.feed.clear());
        self.pipeline.shared.iter().for_each(|v| v.feed.clear());
        let failed = self.dead_letter_udf_failures(&fresh, out);
        for (flow, batches) in results? {
            self.write_outputs(flow, &batches, &failed, out)?;
        }
        Ok(())
    }

    fn durable(&mut self, written: &Positions, consumed: &Offsets) -> anyhow::Result<Option<Commit>> {
        for ((topic, partition), offset) in written {
            let end = self.emitted_end.entry((topic.to_string(), *partition)).or_insert(offset + 1);
            *end = (*end).max(offset + 1);
        }
        self.processed.merge(consumed);
        match &self.checkpointing {
            // Nothing to keep consistent with: commit every batch.
            None => Ok(Some(Commit::offsets(consumed.clone()))),
            Some(c) if self.last_checkpoint.elapsed() >= c.interval => {
                let state = self.checkpoint()?;
                Ok(Some(Commit { state, offsets: self.processed.clone() }))
            }
            Some(_) => Ok(None),
        }
    }

    fn commit_due(&self) -> bool {
        // Without checkpoints every batch commits (see `durable`).
        self.checkpointing.as_ref().is_none_or(|c| self.last_checkpoint.elapsed() >= c.interval)
    }

    fn finish(&mut self) -> anyhow::Result<Option<Commit>> {
        if self.checkpointing.is_none() || self.processed.is_empty() {
            return Ok(None);
        }
        let state = self.checkpoint()?;
        Ok(Some(Commit { state, offsets: self.processed.clone() }))
    }

    fn timers_due(&self) -> bool {
        let now = now_ms();
        self.timers.values().any(|t| t.held.next_due().is_some_and(|due| due <= now))
    }

    async fn rebalance(&mut self, changes: Vec<AssignmentChange>) -> anyhow::Result<()> {
        for change in changes {
            match change {
                AssignmentChange::Assigned(partitions) => self.assign(&partitions).await?,
                AssignmentChange::Revoked(partitions) => self.revoke(&partitions),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = output_id(0, 0, 1, 42, 1);
        assert_eq!(a, output_id(0, 0, 1, 42, 1));
        for other in [output_id(1, 0, 1, 42, 1), output_id(0, 1, 1, 42, 1), output_id(0, 0, 2, 42, 1), output_id(0, 0, 1, 43, 1), output_id(0, 0, 1, 42, 2)] {
            assert_ne!(a, other);
        }
        assert_eq!(parse_id(hex(&a).as_bytes()), Some(a));
        assert_eq!(parse_id(b"zz"), None);
    }
}
