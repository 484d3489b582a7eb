//! Windowed row-number limit, emit on arrival:
//! `ROW_NUMBER() OVER (PARTITION BY k..., tumble(W) | sliding(W) ORDER BY t) <= N`.
//!
//! Rows are ranked in arrival order (not re-sorted): a row passes at once or
//! never, which is what dedupe and frequency caps need.
//!
//! The complement, `... > N`, emits exactly the rows the limit drops (for
//! `deduped` / `capped` / `duplicate_request` events); they carry rn = N + 1
//! (the rank past the limit is not tracked further).
//! - **tumbling(W)**: windows `[k*W, (k+1)*W)` of the event time `t` (UTC epoch
//!   aligned). The first N rows of each key in each window pass.
//! - **sliding(W)**: a row passes iff fewer than N rows of its key that already
//!   passed have an event time within W of its own (`|t - t_i| < W`). For rows
//!   arriving in time order this is the classic "at most N in any span of W";
//!   out of order it stays exact for N = 1 (no two passed rows closer than W).
//!
//! State lives per input partition (Kafka partitions state by record key):
//! each row is judged against the watermark of its own partition as it stood
//! after the rows before it, so the outcome depends only on each partition's
//! record order, never on batch boundaries or on how partitions interleave.
//! That is what makes a replay after a crash produce the same outputs.
//! Rows older than their partition's watermark are late: dropped and counted.
//! State is dropped once the watermark passes the window (tumbling) or W past
//! a passed row (sliding).
//!
//! Keys are held as 128-bit XXH3 hashes of their row encoding (seeded per
//! partition, the seed kept in the partition's checkpoint): about 30 bytes of state per key instead of
//! the key itself. Two different keys would have to collide in 128 bits to be
//! confused, which is far less likely than a hardware memory error.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array, UInt64Array};
use arrow::compute::{cast, take};
use arrow::datatypes::{DataType, Int32Type, Int64Type, SchemaRef, TimeUnit, TimestampNanosecondType};
use arrow::row::{RowConverter, SortField};
use datafusion::common::{DataFusionError, Result};
use datafusion::physical_expr::PhysicalExpr;
use xxhash_rust::xxh3::xxh3_128_with_seed;

use super::state_bytes::{Cursor, Unit, UnitState};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    Tumbling,
    Sliding,
}

/// (source table, partition) packed into one integer.
type PartitionId = i64;

fn partition_id(source: i32, partition: i32) -> PartitionId {
    (i64::from(source) << 32) | i64::from(partition as u32)
}

/// Column positions of the row lineage in the operator's input.
#[derive(Debug, Clone, Copy)]
pub struct LineageColumns {
    pub source: usize,
    pub partition: usize,
    pub watermark: usize,
}

type KeyHash = u128;

/// Event times of the rows of one key that passed, ascending. Dedupe (N = 1)
/// keeps one inline; caps with N > 1 spill to the heap.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Passed {
    One(i64),
    Many(Box<VecDeque<i64>>),
}

impl Passed {
    fn times(&self) -> Box<dyn Iterator<Item = i64> + '_> {
        match self {
            Passed::One(t) => Box::new(std::iter::once(*t)),
            Passed::Many(ts) => Box::new(ts.iter().copied()),
        }
    }

    fn insert(&mut self, t: i64) {
        let mut all: VecDeque<i64> = self.times().collect();
        let at = all.partition_point(|p| *p <= t);
        all.insert(at, t);
        *self = Passed::Many(Box::new(all));
    }

    /// Drops times that can no longer matter; false when none is left.
    fn expire(&mut self, watermark: i64, width: i64) -> bool {
        match self {
            Passed::One(t) => t.saturating_add(width) > watermark,
            Passed::Many(ts) => {
                while ts.front().is_some_and(|p| p.saturating_add(width) <= watermark) {
                    ts.pop_front();
                }
                match ts.len() {
                    0 => false,
                    1 => {
                        *self = Passed::One(ts[0]);
                        true
                    }
                    _ => true,
                }
            }
        }
    }
}

#[derive(Default)]
struct PartitionState {
    /// Key hash seed (random per partition; moves with its state).
    seed: u64,
    /// The partition's watermark after the rows seen so far (ns).
    watermark: i64,
    /// Watermark at the last sliding-state sweep.
    swept_at: i64,
    /// Tumbling: window start -> key -> rows passed.
    windows: BTreeMap<i64, HashMap<KeyHash, u32>>,
    /// Sliding: key -> event times of passed rows.
    passed: HashMap<KeyHash, Passed>,
}

impl PartitionState {
    fn new(pid: PartitionId) -> Self {
        PartitionState { seed: seed_from_clock() ^ pid as u64, watermark: i64::MIN, swept_at: i64::MIN, ..Default::default() }
    }

    fn keys(&self) -> usize {
        self.windows.values().map(HashMap::len).sum::<usize>() + self.passed.len()
    }
}

pub struct RowNumberLimit {
    keys: Vec<Arc<dyn PhysicalExpr>>,
    time: Arc<dyn PhysicalExpr>,
    lineage: LineageColumns,
    kind: WindowKind,
    width: i64,
    /// `sliding_within(max, seconds)`: each row's own width in seconds (null:
    /// `width`, capped at `width`, which is how long state is kept).
    row_width: Option<Arc<dyn PhysicalExpr>>,
    limit: u64,
    /// Emit the rows beyond the limit instead of those within it.
    beyond: bool,
    /// Source tables whose late rows pass (as rn = 1) instead of being dropped.
    pass_late: Vec<i32>,
    output_schema: SchemaRef,
    converter: RowConverter,
    partitions: HashMap<PartitionId, PartitionState>,
    late_rows: u64,
}

impl RowNumberLimit {
    /// `output_schema`: the input columns plus the row number (UInt64) last.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        keys: Vec<Arc<dyn PhysicalExpr>>,
        key_types: Vec<DataType>,
        time: Arc<dyn PhysicalExpr>,
        lineage: LineageColumns,
        kind: WindowKind,
        width_nanos: i64,
        limit: u64,
        output_schema: SchemaRef,
    ) -> Result<Self> {
        if width_nanos <= 0 {
            return Err(DataFusionError::Plan("window width must be positive".into()));
        }
        let converter = RowConverter::new(key_types.into_iter().map(SortField::new).collect())?;
        Ok(RowNumberLimit {
            keys,
            time,
            lineage,
            kind,
            width: width_nanos,
            row_width: None,
            limit,
            beyond: false,
            pass_late: Vec::new(),
            output_schema,
            converter,
            partitions: HashMap::new(),
            late_rows: 0,
        })
    }

    /// Sliding windows whose width comes from each row (seconds), at most the window's.
    pub fn with_row_width(mut self, seconds: Arc<dyn PhysicalExpr>) -> Self {
        self.row_width = Some(seconds);
        self
    }

    /// Late rows of these source tables pass as rn = 1 (`late_rows = 'pass'`):
    /// never lost, possibly a late duplicate. They do not touch the state.
    pub fn pass_late_rows_of(mut self, sources: Vec<i32>) -> Self {
        self.pass_late = sources;
        self
    }

    /// Emits the rows the limit drops (`rn > N`) instead of those it keeps.
    pub fn beyond_limit(mut self) -> Self {
        self.beyond = true;
        self
    }

    pub fn late_rows(&self) -> u64 {
        self.late_rows
    }

    /// Keys held in state (for metrics and tests).
    pub fn state_keys(&self) -> usize {
        self.partitions.values().map(PartitionState::keys).sum()
    }

    pub fn process_batch(&mut self, batch: &RecordBatch) -> Result<RecordBatch> {
        let n = batch.num_rows();
        let key_columns: Vec<ArrayRef> = self.keys.iter().map(|k| k.evaluate(batch)?.into_array(n)).collect::<Result<_>>()?;
        let rows = self.converter.convert_columns(&key_columns)?;
        let as_nanos = |a: &ArrayRef| cast(a, &DataType::Timestamp(TimeUnit::Nanosecond, None));
        let times = as_nanos(&self.time.evaluate(batch)?.into_array(n)?)?;
        let times = times.as_primitive::<TimestampNanosecondType>();
        let row_watermarks = as_nanos(batch.column(self.lineage.watermark))?;
        let row_watermarks = row_watermarks.as_primitive::<TimestampNanosecondType>();
        let row_widths = match &self.row_width {
            Some(expr) => Some(cast(&expr.evaluate(batch)?.into_array(n)?, &DataType::Int64)?),
            None => None,
        };
        let row_widths = row_widths.as_ref().map(|a| a.as_primitive::<Int64Type>());
        let sources = batch.column(self.lineage.source).as_primitive::<Int32Type>();
        let partition_numbers = batch.column(self.lineage.partition).as_primitive::<Int32Type>();

        let mut kept = Vec::new();
        let mut numbers = Vec::new();
        let mut touched = Vec::new();
        for i in 0..n {
            let pid = partition_id(sources.value(i), partition_numbers.value(i));
            let state = self.partitions.entry(pid).or_insert_with(|| PartitionState::new(pid));
            let watermark_before = state.watermark;
            if !row_watermarks.is_null(i) {
                state.watermark = state.watermark.max(row_watermarks.value(i));
            }
            if touched.last() != Some(&pid) {
                touched.push(pid);
            }
            // A row without event time cannot be windowed: treat it as late.
            if times.is_null(i) || times.value(i) < watermark_before {
                self.late_rows += 1;
                if !self.beyond && self.pass_late.contains(&sources.value(i)) {
                    kept.push(i as u32);
                    numbers.push(1);
                }
                continue;
            }
            let t = times.value(i);
            let key = xxh3_128_with_seed(rows.row(i).as_ref(), state.seed);
            let passed = match self.kind {
                WindowKind::Tumbling => {
                    let count = state.windows.entry(t.div_euclid(self.width) * self.width).or_default().entry(key).or_insert(0);
                    (u64::from(*count) < self.limit).then(|| {
                        *count += 1;
                        u64::from(*count)
                    })
                }
                WindowKind::Sliding => {
                    let width = match row_widths {
                        Some(w) if !w.is_null(i) => w.value(i).saturating_mul(1_000_000_000).clamp(1, self.width),
                        _ => self.width,
                    };
                    match state.passed.get_mut(&key) {
                        Some(passed) => {
                            let count = passed.times().filter(|p| (t - *p).abs() < width).count() as u64;
                            (count < self.limit).then(|| {
                                passed.insert(t);
                                count + 1
                            })
                        }
                        None => {
                            state.passed.insert(key, Passed::One(t));
                            Some(1)
                        }
                    }
                }
            };
            match (passed, self.beyond) {
                (Some(number), false) => {
                    kept.push(i as u32);
                    numbers.push(number);
                }
                (None, true) => {
                    kept.push(i as u32);
                    numbers.push(self.limit + 1);
                }
                _ => {}
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for pid in touched {
            if let Some(state) = self.partitions.get_mut(&pid) {
                evict(state, self.kind, self.width);
            }
        }
        let indices = UInt32Array::from(kept);
        let mut columns: Vec<ArrayRef> = batch.columns().iter().map(|c| take(c, &indices, None)).collect::<Result<_, _>>()?;
        columns.push(Arc::new(UInt64Array::from(numbers)));
        Ok(RecordBatch::try_new(self.output_schema.clone(), columns)?)
    }
}

impl UnitState for RowNumberLimit {
    /// The same state always gives the same bytes.
    fn snapshot_units(&mut self, units: &[Unit]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut pids: Vec<PartitionId> = units.iter().map(|(s, p)| partition_id(*s, *p)).filter(|pid| self.partitions.contains_key(pid)).collect();
        pids.sort_unstable();
        pids.dedup();
        out.extend_from_slice(&(pids.len() as u64).to_le_bytes());
        for pid in pids {
            let state = &self.partitions[&pid];
            out.extend_from_slice(&pid.to_le_bytes());
            out.extend_from_slice(&state.seed.to_le_bytes());
            out.extend_from_slice(&state.watermark.to_le_bytes());
            out.extend_from_slice(&(state.windows.len() as u64).to_le_bytes());
            for (start, keys) in &state.windows {
                out.extend_from_slice(&start.to_le_bytes());
                let mut keys: Vec<_> = keys.iter().collect();
                keys.sort_unstable();
                out.extend_from_slice(&(keys.len() as u64).to_le_bytes());
                for (key, count) in keys {
                    out.extend_from_slice(&key.to_le_bytes());
                    out.extend_from_slice(&count.to_le_bytes());
                }
            }
            let mut passed: Vec<_> = state.passed.iter().collect();
            passed.sort_unstable_by_key(|(k, _)| **k);
            out.extend_from_slice(&(passed.len() as u64).to_le_bytes());
            for (key, times) in passed {
                out.extend_from_slice(&key.to_le_bytes());
                let times: Vec<i64> = times.times().collect();
                out.extend_from_slice(&(times.len() as u32).to_le_bytes());
                times.iter().for_each(|t| out.extend_from_slice(&t.to_le_bytes()));
            }
        }
        Ok(out)
    }

    fn restore_units(&mut self, bytes: &[u8]) -> Result<()> {
        let mut r = Cursor::new(bytes);
        for _ in 0..r.u64()? {
            let pid = r.i64()?;
            let mut state = PartitionState::new(pid);
            state.seed = r.u64()?;
            state.watermark = r.i64()?;
            state.swept_at = state.watermark;
            for _ in 0..r.u64()? {
                let start = r.i64()?;
                let window = state.windows.entry(start).or_default();
                for _ in 0..r.u64()? {
                    let key = r.u128()?;
                    window.insert(key, r.u32()?);
                }
            }
            for _ in 0..r.u64()? {
                let key = r.u128()?;
                let times = (0..r.u32()?).map(|_| r.i64()).collect::<Result<VecDeque<_>>>()?;
                let passed = match times.len() {
                    0 => return Err(DataFusionError::Internal("operator state: a key with no times".into())),
                    1 => Passed::One(times[0]),
                    _ => Passed::Many(Box::new(times)),
                };
                state.passed.insert(key, passed);
            }
            self.partitions.insert(pid, state);
        }
        if !r.is_done() {
            return Err(DataFusionError::Internal("operator state has trailing bytes".into()));
        }
        Ok(())
    }

    fn drop_units(&mut self, units: &[Unit]) {
        for (source, partition) in units {
            self.partitions.remove(&partition_id(*source, *partition));
        }
    }
}

/// A seed for key hashing; checkpoints carry it, so restored state hashes alike.
fn seed_from_clock() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0x5eed)
}

/// Drops state no future on-time row of the partition can need.
fn evict(state: &mut PartitionState, kind: WindowKind, width: i64) {
    let watermark = state.watermark;
    match kind {
        // Windows ending at or before the watermark are closed.
        WindowKind::Tumbling => {
            if watermark > i64::MIN {
                state.windows = state.windows.split_off(&(watermark.div_euclid(width) * width));
            }
        }
        // Sweeping walks every key: do it when the watermark moved an eighth of W.
        WindowKind::Sliding => {
            if watermark == i64::MIN || watermark.saturating_sub(state.swept_at) < width / 8 {
                return;
            }
            state.swept_at = watermark;
            state.passed.retain(|_, passed| passed.expire(watermark, width));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, StringArray, TimestampNanosecondArray};
    use arrow::datatypes::{Field, Schema};
    use datafusion::physical_expr::expressions::Column;

    const MIN: i64 = 60_000_000_000;

    fn input_fields() -> Vec<Field> {
        vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("t", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
            Field::new("_source", DataType::Int32, false),
            Field::new("_partition", DataType::Int32, false),
            Field::new("_watermark", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
        ]
    }

    fn op(kind: WindowKind, width: i64, limit: u64) -> RowNumberLimit {
        let mut fields = input_fields();
        fields.push(Field::new("rn", DataType::UInt64, false));
        RowNumberLimit::new(
            vec![Arc::new(Column::new("k", 0))],
            vec![DataType::Utf8],
            Arc::new(Column::new("t", 1)),
            LineageColumns { source: 2, partition: 3, watermark: 4 },
            kind,
            width,
            limit,
            Arc::new(Schema::new(fields)),
        )
        .unwrap()
    }

    /// Rows (key, minute, partition); the watermark trails event time by 1 minute.
    fn batch(rows: &[(&str, i64, i32)]) -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(Schema::new(input_fields())),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(TimestampNanosecondArray::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(Int32Array::from_value(0, rows.len())),
                Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.2))),
                Arc::new(TimestampNanosecondArray::from_iter_values(rows.iter().map(|r| r.1 - MIN))),
            ],
        )
        .unwrap()
    }

    fn passed(out: &RecordBatch) -> Vec<(String, i64, u64)> {
        let k = out.column(0).as_string::<i32>();
        let t = out.column(1).as_primitive::<TimestampNanosecondType>();
        let n = out.column(5).as_primitive::<arrow::datatypes::UInt64Type>();
        (0..out.num_rows()).map(|i| (k.value(i).to_string(), t.value(i) / MIN, n.value(i))).collect()
    }

    #[test]
    fn tumbling_first_n_per_key_per_window_edges_included() {
        let mut op = op(WindowKind::Tumbling, 5 * MIN, 2);
        let out = op.process_batch(&batch(&[("a", 0, 0), ("a", MIN, 0), ("b", 2 * MIN, 0), ("a", 5 * MIN - 1, 0), ("a", 5 * MIN, 0)])).unwrap();
        assert_eq!(passed(&out), vec![("a".into(), 0, 1), ("a".into(), 1, 2), ("b".into(), 2, 1), ("a".into(), 5, 1)]);
        let out = op.process_batch(&batch(&[("a", 6 * MIN, 0), ("a", 7 * MIN, 0)])).unwrap();
        assert_eq!(passed(&out), vec![("a".into(), 6, 2)]);
    }

    #[test]
    fn sliding_dedupe_is_exact_in_and_out_of_order() {
        let mut op = op(WindowKind::Sliding, 5 * MIN, 1);
        // Out of order but within the 1-minute watermark lag of each row before it.
        let out = op.process_batch(&batch(&[("a", 10 * MIN, 0), ("a", 14 * MIN, 0), ("a", 15 * MIN, 0), ("a", 14 * MIN + 1, 0)])).unwrap();
        // 14 is within 5 min of 10; 15 is exactly 5 min away (passes); 14:00.x is near 10 and 15.
        assert_eq!(passed(&out), vec![("a".into(), 10, 1), ("a".into(), 15, 1)]);
    }

    #[test]
    fn sliding_within_takes_each_rows_width_up_to_the_maximum() {
        use datafusion::common::ScalarValue;
        use datafusion::physical_expr::expressions::Literal;
        let within = |seconds: Option<i64>| op(WindowKind::Sliding, 10 * MIN, 1).with_row_width(Arc::new(Literal::new(ScalarValue::Int64(seconds))));
        let minutes = |out: RecordBatch| passed(&out).into_iter().map(|r| r.1).collect::<Vec<_>>();
        let rows = batch(&[("a", 0, 0), ("a", MIN, 0), ("a", 3 * MIN, 0), ("a", 9 * MIN, 0), ("a", 20 * MIN, 0)]);
        assert_eq!(minutes(within(Some(120)).process_batch(&rows).unwrap()), vec![0, 3, 9, 20], "2 minutes");
        assert_eq!(minutes(within(None).process_batch(&rows).unwrap()), vec![0, 20], "null: the maximum, 10 minutes");
        assert_eq!(minutes(within(Some(86_400)).process_batch(&rows).unwrap()), vec![0, 20], "capped at the maximum");
    }

    #[test]
    fn sliding_cap_counts_the_last_span() {
        let mut op = op(WindowKind::Sliding, 10 * MIN, 2);
        let out = op.process_batch(&batch(&[("a", 0, 0), ("a", MIN, 0), ("a", 2 * MIN, 0), ("a", 10 * MIN, 0), ("a", 11 * MIN, 0), ("a", 12 * MIN, 0)])).unwrap();
        // 2 would be the third within 10 min; 10 sees only 1 (0 is exactly 10 min away); 11 sees only 10; 12 sees 10 and 11.
        assert_eq!(passed(&out), vec![("a".into(), 0, 1), ("a".into(), 1, 2), ("a".into(), 10, 2), ("a".into(), 11, 2)]);
    }

    #[test]
    fn late_rows_are_judged_by_their_own_partition() {
        let mut op = op(WindowKind::Tumbling, 5 * MIN, 1);
        // Partition 1 racing ahead does not make partition 0's rows late.
        let out = op.process_batch(&batch(&[("x", 30 * MIN, 1), ("a", MIN, 0), ("b", 6 * MIN, 0)])).unwrap();
        assert_eq!(passed(&out).len(), 3);
        assert_eq!(op.state_keys(), 2, "partition 0's window [0, 5) closed when b moved its watermark to 5");
        // In partition 0 the watermark is now 5 min: a row at 2 min is late.
        let out = op.process_batch(&batch(&[("c", 2 * MIN, 0), ("c", 9 * MIN, 0)])).unwrap();
        assert_eq!(passed(&out), vec![("c".into(), 9, 1)]);
        assert_eq!(op.late_rows(), 1);
    }

    #[test]
    fn batch_boundaries_do_not_change_the_outcome() {
        let rows: Vec<(String, i64, i32)> =
            (0..200).map(|i| (format!("k{}", i % 7), (i * 37 % 50) as i64 * MIN / 4 + i as i64 * MIN, (i % 3) as i32)).collect();
        let as_refs: Vec<(&str, i64, i32)> = rows.iter().map(|(k, t, p)| (k.as_str(), *t, *p)).collect();
        let mut whole = op(WindowKind::Sliding, 5 * MIN, 1);
        let all = passed(&whole.process_batch(&batch(&as_refs)).unwrap());
        let mut pieces = op(WindowKind::Sliding, 5 * MIN, 1);
        let mut parts = Vec::new();
        for chunk in as_refs.chunks(9) {
            parts.extend(passed(&pieces.process_batch(&batch(chunk)).unwrap()));
        }
        assert_eq!(all, parts);
        assert_eq!(whole.late_rows(), pieces.late_rows());
    }

    #[test]
    fn restore_continues_where_the_snapshot_left_off() {
        for kind in [WindowKind::Tumbling, WindowKind::Sliding] {
            let mut first = op(kind, 5 * MIN, 1);
            first.process_batch(&batch(&[("a", MIN, 0), ("b", 2 * MIN, 1)])).unwrap();
            let all = [(0, 0), (0, 1)];
            let snapshot = first.snapshot_units(&all).unwrap();
            let mut restored = op(kind, 5 * MIN, 1);
            restored.restore_units(&snapshot).unwrap();
            let next = batch(&[("a", 3 * MIN, 0), ("c", 3 * MIN, 0), ("d", -MIN, 0)]);
            assert_eq!(passed(&restored.process_batch(&next).unwrap()), passed(&first.process_batch(&next).unwrap()));
            assert_eq!(restored.late_rows(), 1, "the watermark came back too");
            assert_eq!(restored.snapshot_units(&all).unwrap(), first.snapshot_units(&all).unwrap());
            assert!(restored.restore_units(&snapshot[..snapshot.len() - 1]).is_err());
        }
    }

    #[test]
    fn beyond_the_limit_emits_exactly_the_dropped_rows() {
        for kind in [WindowKind::Tumbling, WindowKind::Sliding] {
            let rows = [("a", MIN, 0), ("a", 2 * MIN, 0), ("b", 2 * MIN, 0), ("a", 3 * MIN, 0), ("a", 9 * MIN, 0), ("c", -5 * MIN, 0)];
            let mut within = op(kind, 5 * MIN, 2);
            let mut beyond = op(kind, 5 * MIN, 2).beyond_limit();
            let kept = passed(&within.process_batch(&batch(&rows)).unwrap());
            let dropped = passed(&beyond.process_batch(&batch(&rows)).unwrap());
            assert_eq!(dropped, vec![("a".into(), 3, 3)], "{kind:?}: the third a within 5 min, with rn = N + 1");
            assert_eq!(kept.len() + dropped.len() + 1, rows.len(), "{kind:?}: every on-time row on exactly one side; c is late");
        }
    }

    #[test]
    fn late_rows_of_a_passing_source_are_let_through_not_counted_in() {
        let rows = [("a", 9 * MIN, 0), ("a", MIN, 0), ("a", MIN, 0)];
        let mut dropping = op(WindowKind::Tumbling, 5 * MIN, 1);
        assert_eq!(passed(&dropping.process_batch(&batch(&rows)).unwrap()), vec![("a".into(), 9, 1)]);
        let mut passing = op(WindowKind::Tumbling, 5 * MIN, 1).pass_late_rows_of(vec![0]);
        let out = passed(&passing.process_batch(&batch(&rows)).unwrap());
        assert_eq!(out, vec![("a".into(), 9, 1), ("a".into(), 1, 1), ("a".into(), 1, 1)], "both late rows pass, unjudged");
        assert_eq!(passing.late_rows(), 2, "and are still counted as late");
        let mut beyond = op(WindowKind::Tumbling, 5 * MIN, 1).pass_late_rows_of(vec![0]).beyond_limit();
        assert!(passed(&beyond.process_batch(&batch(&rows)).unwrap()).is_empty(), "a passed late row is not also a dropped one");
    }

    #[test]
    fn one_partition_moves_to_another_operator() {
        let mut first = op(WindowKind::Tumbling, 5 * MIN, 1);
        first.process_batch(&batch(&[("a", MIN, 0), ("a", MIN, 1)])).unwrap();
        let moved = first.snapshot_units(&[(0, 1)]).unwrap();
        first.drop_units(&[(0, 1)]);
        let mut second = op(WindowKind::Tumbling, 5 * MIN, 1);
        second.restore_units(&moved).unwrap();
        // Partition 1's "a" is known where it moved, and forgotten where it left.
        assert!(passed(&second.process_batch(&batch(&[("a", 2 * MIN, 1)])).unwrap()).is_empty());
        assert_eq!(passed(&first.process_batch(&batch(&[("a", 2 * MIN, 1)])).unwrap()).len(), 1);
        assert!(passed(&first.process_batch(&batch(&[("a", 2 * MIN, 0)])).unwrap()).is_empty(), "partition 0 stayed");
        assert_eq!(second.snapshot_units(&[(0, 0)]).unwrap(), 0u64.to_le_bytes(), "nothing of partition 0 there");
    }
}
