//! Interval join, inner and left:
//! `s [LEFT] JOIN r ON s.k = r.k AND r.ts BETWEEN s.ts + lo AND s.ts + hi`.
//!
//! Each side keeps its rows by key until the other side's watermark makes a
//! match impossible: a left row at time L waits for right rows in
//! `[L + lo, L + hi]`; a right row at R waits for left rows in `[R - hi, R - lo]`.
//! A LEFT join emits a left row that never matched, padded with nulls, once
//! every right partition's watermark is past `L + hi` (e.g. a send without a
//! receipt after a day: undelivered by timeout).
//!
//! Both inputs must be partitioned by the join key (same key -> same
//! partition number on both topics), as for any keyed state. Rows older than
//! their own partition's watermark are late: dropped and counted.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, new_null_array};
use arrow::compute::{cast, interleave};
use arrow::datatypes::{DataType, Int32Type, SchemaRef, TimeUnit, TimestampNanosecondType};
use arrow::row::{RowConverter, SortField};
use datafusion::common::Result;
use datafusion::physical_expr::PhysicalExpr;

use super::state_bytes::{Cursor, Unit, UnitState, batch_to_ipc, batches_from_ipc, put_watermarks};

/// Where a side's lineage columns are.
#[derive(Debug, Clone, Copy)]
pub struct SideLineage {
    pub source: usize,
    pub partition: usize,
    pub watermark: usize,
}

pub struct JoinSide {
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    pub time: Arc<dyn PhysicalExpr>,
    pub lineage: SideLineage,
}

/// A buffered row: which batch, which row, its time, and whether it matched.
struct Held {
    batch: usize,
    row: u32,
    time: i64,
    matched: bool,
}

#[derive(Default)]
struct SideState {
    batches: Vec<Option<RecordBatch>>,
    /// Live rows per batch, to free a batch when its last row goes.
    live: Vec<usize>,
    by_key: HashMap<Vec<u8>, Vec<Held>>,
    /// (source, partition) -> watermark after the rows seen so far.
    watermarks: HashMap<(i32, i32), i64>,
}

impl SideState {
    fn watermark(&self) -> i64 {
        self.watermarks.values().copied().min().unwrap_or(i64::MIN)
    }

    fn held_rows(&self) -> usize {
        self.by_key.values().map(Vec::len).sum()
    }
}

pub struct IntervalJoin {
    left: JoinSide,
    right: JoinSide,
    left_outer: bool,
    /// Right time minus left time must lie in [lower, upper] (ns).
    lower: i64,
    upper: i64,
    converter: RowConverter,
    output_schema: SchemaRef,
    /// Columns of the left input (the output's first columns).
    left_width: usize,
    left_state: SideState,
    right_state: SideState,
    late_rows: u64,
}

/// Rows to output: (left batch, row) and optionally (right batch, row).
type Pair = ((usize, u32), Option<(usize, u32)>);

impl IntervalJoin {
    pub fn new(
        left: JoinSide,
        right: JoinSide,
        key_types: Vec<DataType>,
        left_outer: bool,
        (lower, upper): (i64, i64),
        left_width: usize,
        output_schema: SchemaRef,
    ) -> Result<Self> {
        Ok(IntervalJoin {
            left,
            right,
            left_outer,
            lower,
            upper,
            converter: RowConverter::new(key_types.into_iter().map(SortField::new).collect())?,
            output_schema,
            left_width,
            left_state: SideState::default(),
            right_state: SideState::default(),
            late_rows: 0,
        })
    }

    pub fn late_rows(&self) -> u64 {
        self.late_rows
    }

    pub fn held_rows(&self) -> usize {
        self.left_state.held_rows() + self.right_state.held_rows()
    }

    /// The unit (source, partition) a held row came from.
    fn unit_of(state: &SideState, lineage: SideLineage, held: &Held) -> Unit {
        let batch = state.batches[held.batch].as_ref().expect("a held row's batch is kept");
        let source = batch.column(lineage.source).as_primitive::<Int32Type>().value(held.row as usize);
        let partition = batch.column(lineage.partition).as_primitive::<Int32Type>().value(held.row as usize);
        (source, partition)
    }

    /// Declares a side's input partitions (see `WindowAggregate::expect_partitions`).
    pub fn expect_partitions(&mut self, left_side: bool, source: i32, partitions: &[i32]) {
        let state = if left_side { &mut self.left_state } else { &mut self.right_state };
        for p in partitions {
            state.watermarks.entry((source, *p)).or_insert(i64::MIN);
        }
    }

    /// Adds a batch of left rows and a batch of right rows (either may be
    /// empty); returns the joined rows and, for a LEFT join, expired
    /// unmatched left rows.
    pub fn process(&mut self, left: &[RecordBatch], right: &[RecordBatch]) -> Result<RecordBatch> {
        let mut pairs: Vec<Pair> = Vec::new();
        for batch in left {
            self.add(true, batch, &mut pairs)?;
        }
        for batch in right {
            self.add(false, batch, &mut pairs)?;
        }
        self.expire(&mut pairs);
        let out = self.output(&pairs);
        // Batches with no row held any more are freed only after the output used them.
        for state in [&mut self.left_state, &mut self.right_state] {
            for (batch, live) in state.batches.iter_mut().zip(&state.live) {
                if *live == 0 {
                    *batch = None;
                }
            }
        }
        out
    }

    fn add(&mut self, is_left: bool, batch: &RecordBatch, pairs: &mut Vec<Pair>) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let side = if is_left { &self.left } else { &self.right };
        let keys: Vec<ArrayRef> = side.keys.iter().map(|k| k.evaluate(batch)?.into_array(n)).collect::<Result<_>>()?;
        let rows = self.converter.convert_columns(&keys)?;
        let as_nanos = |a: &ArrayRef| cast(a, &DataType::Timestamp(TimeUnit::Nanosecond, None));
        let times = as_nanos(&side.time.evaluate(batch)?.into_array(n)?)?;
        let times = times.as_primitive::<TimestampNanosecondType>();
        let row_watermarks = as_nanos(batch.column(side.lineage.watermark))?;
        let row_watermarks = row_watermarks.as_primitive::<TimestampNanosecondType>();
        let sources = batch.column(side.lineage.source).as_primitive::<Int32Type>();
        let partitions = batch.column(side.lineage.partition).as_primitive::<Int32Type>();
        let (lower, upper) = (self.lower, self.upper);
        let (mine, other) = if is_left { (&mut self.left_state, &mut self.right_state) } else { (&mut self.right_state, &mut self.left_state) };
        let batch_index = mine.batches.len();
        mine.batches.push(Some(batch.clone()));
        mine.live.push(0);
        for i in 0..n {
            let watermark = mine.watermarks.entry((sources.value(i), partitions.value(i))).or_insert(i64::MIN);
            let before = *watermark;
            if !row_watermarks.is_null(i) {
                *watermark = (*watermark).max(row_watermarks.value(i));
            }
            if times.is_null(i) || times.value(i) < before || keys.iter().any(|k| k.is_null(i)) {
                self.late_rows += u64::from(times.is_null(i) || times.value(i) < before);
                continue;
            }
            let t = times.value(i);
            let key = rows.row(i).as_ref().to_vec();
            let mut matched = false;
            if let Some(candidates) = other.by_key.get_mut(&key) {
                for held in candidates.iter_mut() {
                    let delta = if is_left { held.time - t } else { t - held.time };
                    if delta >= lower && delta <= upper {
                        matched = true;
                        held.matched = true;
                        let me = (batch_index, i as u32);
                        let them = (held.batch, held.row);
                        pairs.push(if is_left { (me, Some(them)) } else { (them, Some(me)) });
                    }
                }
            }
            mine.by_key.entry(key).or_default().push(Held { batch: batch_index, row: i as u32, time: t, matched });
            mine.live[batch_index] += 1;
        }
        Ok(())
    }

    /// Drops rows no future row can match; emits unmatched left rows of a LEFT join.
    fn expire(&mut self, pairs: &mut Vec<Pair>) {
        let (lower, upper) = (self.lower, self.upper);
        let right_watermark = self.right_state.watermark();
        let left_watermark = self.left_state.watermark();
        let left_outer = self.left_outer;
        // A left row at L can match right rows up to L + upper.
        retain_rows(&mut self.left_state, |held| {
            let done = held.time.saturating_add(upper) < right_watermark;
            if done && left_outer && !held.matched {
                pairs.push(((held.batch, held.row), None));
            }
            !done
        });
        // A right row at R can match left rows down to R - upper... and up to R - lower.
        retain_rows(&mut self.right_state, |held| held.time.saturating_sub(lower) >= left_watermark);
    }

    fn output(&self, pairs: &[Pair]) -> Result<RecordBatch> {
        let left_batches: Vec<(usize, &RecordBatch)> =
            self.left_state.batches.iter().enumerate().filter_map(|(i, b)| b.as_ref().map(|b| (i, b))).collect();
        let right_batches: Vec<(usize, &RecordBatch)> =
            self.right_state.batches.iter().enumerate().filter_map(|(i, b)| b.as_ref().map(|b| (i, b))).collect();
        let left_width = self.left_width;
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.output_schema.fields().len());
        for c in 0..left_width {
            columns.push(pick(&left_batches, c, pairs.iter().map(|p| Some(p.0)), self.output_schema.field(c).data_type(), pairs.len())?);
        }
        for c in 0..self.output_schema.fields().len() - left_width {
            let field = self.output_schema.field(left_width + c);
            columns.push(pick(&right_batches, c, pairs.iter().map(|p| p.1), field.data_type(), pairs.len())?);
        }
        Ok(RecordBatch::try_new(self.output_schema.clone(), columns)?)
    }
}

/// Column `c` of the given rows; `None` rows are null.
fn pick(
    batches: &[(usize, &RecordBatch)],
    c: usize,
    rows: impl Iterator<Item = Option<(usize, u32)>>,
    data_type: &DataType,
    len: usize,
) -> Result<ArrayRef> {
    let position: HashMap<usize, usize> = batches.iter().enumerate().map(|(i, (b, _))| (*b, i)).collect();
    let mut arrays: Vec<ArrayRef> = batches.iter().map(|(_, b)| b.column(c).clone()).collect();
    let null_slot = arrays.len();
    arrays.push(new_null_array(data_type, 1));
    let indices: Vec<(usize, usize)> =
        rows.map(|r| match r {
            Some((b, row)) => (position[&b], row as usize),
            None => (null_slot, 0),
        })
        .collect();
    debug_assert_eq!(indices.len(), len);
    let refs: Vec<&dyn Array> = arrays.iter().map(|a| a.as_ref()).collect();
    let out = interleave(&refs, &indices)?;
    Ok(if out.data_type() == data_type { out } else { cast(&out, data_type)? })
}

fn retain_rows(state: &mut SideState, mut keep: impl FnMut(&Held) -> bool) {
    let SideState { by_key, live, .. } = state;
    by_key.retain(|_, held| {
        held.retain(|h| {
            let kept = keep(h);
            if !kept {
                live[h.batch] -= 1;
            }
            kept
        });
        !held.is_empty()
    });
}

impl UnitState for IntervalJoin {
    /// Held rows of both sides from `units`, and their watermarks (Arrow IPC inside).
    fn snapshot_units(&mut self, units: &[Unit]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for (state, lineage) in [(&self.left_state, self.left.lineage), (&self.right_state, self.right.lineage)] {
            let watermarks: HashMap<Unit, i64> = state.watermarks.iter().filter(|(u, _)| units.contains(u)).map(|(u, w)| (*u, *w)).collect();
            put_watermarks(&mut out, &watermarks);
            // Held rows in a stable order: by key, then arrival.
            let mut keys: Vec<&Vec<u8>> = state.by_key.keys().collect();
            keys.sort();
            let held: Vec<(&Vec<u8>, &Held)> = keys
                .iter()
                .flat_map(|k| state.by_key[*k].iter().map(move |h| (*k, h)))
                .filter(|(_, h)| units.contains(&Self::unit_of(state, lineage, h)))
                .collect();
            let batches: Vec<(usize, &RecordBatch)> = state.batches.iter().enumerate().filter_map(|(i, b)| b.as_ref().map(|b| (i, b))).collect();
            let ipc = match batches.first() {
                Some((_, first)) if !held.is_empty() => {
                    let schema = first.schema();
                    let mut columns = Vec::new();
                    for c in 0..schema.fields().len() {
                        columns.push(pick(&batches, c, held.iter().map(|(_, h)| Some((h.batch, h.row))), schema.field(c).data_type(), held.len())?);
                    }
                    batch_to_ipc(&RecordBatch::try_new(schema.clone(), columns)?)?
                }
                _ => Vec::new(),
            };
            out.extend_from_slice(&(held.len() as u64).to_le_bytes());
            for (key, h) in &held {
                out.extend_from_slice(&(key.len() as u32).to_le_bytes());
                out.extend_from_slice(key);
                out.extend_from_slice(&h.time.to_le_bytes());
                out.push(u8::from(h.matched));
            }
            out.extend_from_slice(&(ipc.len() as u64).to_le_bytes());
            out.extend_from_slice(&ipc);
        }
        Ok(out)
    }

    fn restore_units(&mut self, bytes: &[u8]) -> Result<()> {
        let mut r = Cursor::new(bytes);
        let mut sides = Vec::new();
        for _ in 0..2 {
            let watermarks = r.watermarks()?;
            let count = r.u64()? as usize;
            let mut entries = Vec::with_capacity(count);
            for _ in 0..count {
                let len = r.u32()? as usize;
                let key = r.take(len)?.to_vec();
                let time = r.i64()?;
                let matched = r.take(1)?[0] == 1;
                entries.push((key, time, matched));
            }
            let ipc_len = r.u64()? as usize;
            let ipc = r.take(ipc_len)?;
            sides.push((watermarks, entries, ipc));
        }
        let units: Vec<Unit> = sides.iter().flat_map(|(w, _, _)| w.keys().copied()).collect();
        self.drop_units(&units);
        for ((watermarks, entries, ipc), state) in sides.into_iter().zip([&mut self.left_state, &mut self.right_state]) {
            state.watermarks.extend(watermarks);
            if entries.is_empty() {
                continue;
            }
            let rows = batches_from_ipc(ipc)?
                .into_iter()
                .next()
                .ok_or_else(|| datafusion::common::DataFusionError::Internal("join state without rows".into()))?;
            let batch = state.batches.len();
            state.batches.push(Some(rows));
            state.live.push(entries.len());
            for (row, (key, time, matched)) in entries.into_iter().enumerate() {
                state.by_key.entry(key).or_default().push(Held { batch, row: row as u32, time, matched });
            }
        }
        Ok(())
    }

    fn drop_units(&mut self, units: &[Unit]) {
        for (state, lineage) in [(&mut self.left_state, self.left.lineage), (&mut self.right_state, self.right.lineage)] {
            for unit in units {
                state.watermarks.remove(unit);
            }
            let mut freed: Vec<usize> = Vec::new();
            let by_key = std::mem::take(&mut state.by_key);
            for (key, held) in by_key {
                let (gone, kept): (Vec<Held>, Vec<Held>) = held.into_iter().partition(|h| units.contains(&Self::unit_of(state, lineage, h)));
                freed.extend(gone.iter().map(|h| h.batch));
                if !kept.is_empty() {
                    state.by_key.insert(key, kept);
                }
            }
            for batch in freed {
                state.live[batch] -= 1;
                if state.live[batch] == 0 {
                    state.batches[batch] = None;
                }
            }
        }
    }
}
