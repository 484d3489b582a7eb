//! Windowed row-number limit, emit on arrival:
//! `ROW_NUMBER() OVER (PARTITION BY k..., tumble(W) | sliding(W) ORDER BY t) <= N`.
//!
//! Rows are ranked in arrival order (not re-sorted): a row passes at once or
//! never, which is what dedupe and frequency caps need.
//! - **tumbling(W)**: windows `[k*W, (k+1)*W)` of the event time `t` (UTC epoch
//!   aligned). The first N rows of each key in each window pass.
//! - **sliding(W)**: a row passes iff fewer than N rows of its key that already
//!   passed have an event time within W of its own (`|t - t_i| < W`). For rows
//!   arriving in time order this is the classic "at most N in any span of W";
//!   out of order it stays exact for N = 1 (no two passed rows closer than W).
//!
//! State is bounded by the window: a tumbling window is dropped once the
//! watermark passes its end, a sliding entry once the watermark is W past it.
//! Rows older than the watermark are late: they are dropped and counted.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array, UInt64Array};
use arrow::compute::{cast, take};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit, TimestampNanosecondType};
use arrow::row::{RowConverter, SortField};
use datafusion::common::{DataFusionError, Result};
use datafusion::physical_expr::PhysicalExpr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    Tumbling,
    Sliding,
}

pub struct RowNumberLimit {
    keys: Vec<Arc<dyn PhysicalExpr>>,
    time: Arc<dyn PhysicalExpr>,
    kind: WindowKind,
    width: i64,
    limit: u64,
    output_schema: SchemaRef,
    converter: RowConverter,
    tumbling: BTreeMap<i64, HashMap<Box<[u8]>, u64>>,
    sliding: HashMap<Box<[u8]>, VecDeque<i64>>,
    watermark: i64,
    late_rows: u64,
}

impl RowNumberLimit {
    /// `output_schema`: the input columns plus the row number (UInt64) last.
    pub fn new(
        keys: Vec<Arc<dyn PhysicalExpr>>,
        key_types: Vec<DataType>,
        time: Arc<dyn PhysicalExpr>,
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
            kind,
            width: width_nanos,
            limit,
            output_schema,
            converter,
            tumbling: BTreeMap::new(),
            sliding: HashMap::new(),
            watermark: i64::MIN,
            late_rows: 0,
        })
    }

    pub fn late_rows(&self) -> u64 {
        self.late_rows
    }

    /// Keys held in state (for metrics and tests).
    pub fn state_keys(&self) -> usize {
        self.tumbling.values().map(HashMap::len).sum::<usize>() + self.sliding.len()
    }

    pub fn process_batch(&mut self, batch: &RecordBatch) -> Result<RecordBatch> {
        let key_columns: Vec<ArrayRef> =
            self.keys.iter().map(|k| k.evaluate(batch)?.into_array(batch.num_rows())).collect::<Result<_>>()?;
        let rows = self.converter.convert_columns(&key_columns)?;
        let times = cast(
            &self.time.evaluate(batch)?.into_array(batch.num_rows())?,
            &DataType::Timestamp(TimeUnit::Nanosecond, None),
        )?;
        let times = times.as_primitive::<TimestampNanosecondType>();
        let mut kept = Vec::new();
        let mut numbers = Vec::new();
        for i in 0..batch.num_rows() {
            // A row without event time cannot be windowed: treat it as late.
            if times.is_null(i) || times.value(i) < self.watermark {
                self.late_rows += 1;
                continue;
            }
            let t = times.value(i);
            let key = rows.row(i);
            let passed = match self.kind {
                WindowKind::Tumbling => {
                    let window = self.tumbling.entry(t.div_euclid(self.width) * self.width).or_default();
                    match window.get_mut(key.as_ref()) {
                        Some(count) if *count >= self.limit => None,
                        Some(count) => {
                            *count += 1;
                            Some(*count)
                        }
                        None => {
                            window.insert(key.as_ref().into(), 1);
                            Some(1)
                        }
                    }
                }
                WindowKind::Sliding => {
                    let width = self.width;
                    let near = |passed: &VecDeque<i64>| passed.iter().filter(|p| (t - **p).abs() < width).count() as u64;
                    match self.sliding.get_mut(key.as_ref()) {
                        Some(passed) => {
                            let count = near(passed);
                            (count < self.limit).then(|| {
                                let at = passed.partition_point(|p| *p <= t);
                                passed.insert(at, t);
                                count + 1
                            })
                        }
                        None if self.limit > 0 => {
                            self.sliding.insert(key.as_ref().into(), VecDeque::from([t]));
                            Some(1)
                        }
                        None => None,
                    }
                }
            };
            if let Some(n) = passed {
                kept.push(i as u32);
                numbers.push(n);
            }
        }
        let indices = UInt32Array::from(kept);
        let mut columns: Vec<ArrayRef> = batch.columns().iter().map(|c| take(c, &indices, None)).collect::<Result<_, _>>()?;
        columns.push(Arc::new(UInt64Array::from(numbers)));
        Ok(RecordBatch::try_new(self.output_schema.clone(), columns)?)
    }

    /// Drops state no future on-time row can need.
    pub fn advance_watermark(&mut self, watermark: i64) {
        if watermark <= self.watermark {
            return;
        }
        self.watermark = watermark;
        match self.kind {
            WindowKind::Tumbling => {
                // Windows whose end is at or before the watermark are closed.
                let first_open = watermark.div_euclid(self.width) * self.width;
                self.tumbling = self.tumbling.split_off(&first_open);
            }
            WindowKind::Sliding => {
                let width = self.width;
                self.sliding.retain(|_, passed| {
                    while passed.front().is_some_and(|p| p.saturating_add(width) <= watermark) {
                        passed.pop_front();
                    }
                    !passed.is_empty()
                });
            }
        }
    }

    /// Serializes the state (for checkpoints).
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.watermark.to_le_bytes());
        out.extend_from_slice(&(self.tumbling.len() as u64).to_le_bytes());
        for (start, keys) in &self.tumbling {
            out.extend_from_slice(&start.to_le_bytes());
            out.extend_from_slice(&(keys.len() as u64).to_le_bytes());
            for (key, count) in keys {
                put_bytes(&mut out, key);
                out.extend_from_slice(&count.to_le_bytes());
            }
        }
        out.extend_from_slice(&(self.sliding.len() as u64).to_le_bytes());
        for (key, passed) in &self.sliding {
            put_bytes(&mut out, key);
            out.extend_from_slice(&(passed.len() as u64).to_le_bytes());
            for t in passed {
                out.extend_from_slice(&t.to_le_bytes());
            }
        }
        out
    }

    pub fn restore(&mut self, bytes: &[u8]) -> Result<()> {
        let mut r = Reader { bytes, at: 0 };
        self.watermark = r.i64()?;
        self.tumbling.clear();
        for _ in 0..r.u64()? {
            let start = r.i64()?;
            let n = r.u64()?;
            let window = self.tumbling.entry(start).or_default();
            for _ in 0..n {
                let key = r.bytes()?;
                window.insert(key, r.u64()?);
            }
        }
        self.sliding.clear();
        for _ in 0..r.u64()? {
            let key = r.bytes()?;
            let n = r.u64()?;
            let passed = (0..n).map(|_| r.i64()).collect::<Result<VecDeque<_>>>()?;
            self.sliding.insert(key, passed);
        }
        Ok(())
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let slice = self.bytes.get(self.at..self.at + n).ok_or_else(|| DataFusionError::Internal("truncated operator state".into()))?;
        self.at += n;
        Ok(slice)
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn bytes(&mut self) -> Result<Box<[u8]>> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize;
        Ok(self.take(len)?.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{StringArray, TimestampNanosecondArray};
    use arrow::datatypes::{Field, Schema};
    use datafusion::physical_expr::expressions::Column;

    const MIN: i64 = 60_000_000_000;

    fn op(kind: WindowKind, width: i64, limit: u64) -> RowNumberLimit {
        let output = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("t", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
            Field::new("rn", DataType::UInt64, false),
        ]));
        RowNumberLimit::new(
            vec![Arc::new(Column::new("k", 0))],
            vec![DataType::Utf8],
            Arc::new(Column::new("t", 1)),
            kind,
            width,
            limit,
            output,
        )
        .unwrap()
    }

    fn batch(rows: &[(&str, i64)]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("t", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(TimestampNanosecondArray::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )
        .unwrap()
    }

    fn passed(out: &RecordBatch) -> Vec<(String, i64, u64)> {
        let k = out.column(0).as_string::<i32>();
        let t = out.column(1).as_primitive::<TimestampNanosecondType>();
        let n = out.column(2).as_primitive::<arrow::datatypes::UInt64Type>();
        (0..out.num_rows()).map(|i| (k.value(i).to_string(), t.value(i) / MIN, n.value(i))).collect()
    }

    #[test]
    fn tumbling_first_n_per_key_per_window_edges_included() {
        let mut op = op(WindowKind::Tumbling, 5 * MIN, 2);
        // Window [0, 5min): a a a b ; a at exactly 5min opens the next window.
        let out = op.process_batch(&batch(&[("a", 0), ("a", MIN), ("a", 4 * MIN + MIN - 1), ("b", 2 * MIN), ("a", 5 * MIN)])).unwrap();
        assert_eq!(
            passed(&out),
            vec![("a".into(), 0, 1), ("a".into(), 1, 2), ("b".into(), 2, 1), ("a".into(), 5, 1)]
        );
        // Across batches the count carries on.
        let out = op.process_batch(&batch(&[("a", 6 * MIN), ("a", 7 * MIN)])).unwrap();
        assert_eq!(passed(&out), vec![("a".into(), 6, 2)]);
    }

    #[test]
    fn sliding_dedupe_is_exact_in_and_out_of_order() {
        let mut op = op(WindowKind::Sliding, 5 * MIN, 1);
        let out = op.process_batch(&batch(&[("a", 10 * MIN), ("a", 14 * MIN), ("a", 15 * MIN), ("a", 8 * MIN), ("a", 4 * MIN)])).unwrap();
        // 14 and 8 are within 5 min of 10; 15 is exactly 5 min away (passes); 4 is 6 min before 10 (passes).
        assert_eq!(passed(&out), vec![("a".into(), 10, 1), ("a".into(), 15, 1), ("a".into(), 4, 1)]);
    }

    #[test]
    fn sliding_cap_counts_the_last_span() {
        let mut op = op(WindowKind::Sliding, 10 * MIN, 2);
        let out = op.process_batch(&batch(&[("a", 0), ("a", MIN), ("a", 2 * MIN), ("a", 10 * MIN), ("a", 11 * MIN), ("a", 12 * MIN)])).unwrap();
        // 0 and 1 pass; 2 would be the third within 10 min; 10 sees only 1 (0 is exactly 10 min away): passes;
        // 11 sees only 10 (1 is 10 min away): passes; 12 sees 10 and 11: capped.
        assert_eq!(
            passed(&out),
            vec![("a".into(), 0, 1), ("a".into(), 1, 2), ("a".into(), 10, 2), ("a".into(), 11, 2)]
        );
    }

    #[test]
    fn watermark_evicts_state_and_drops_late_rows() {
        let mut op = op(WindowKind::Tumbling, 5 * MIN, 1);
        op.process_batch(&batch(&[("a", MIN), ("b", 6 * MIN)])).unwrap();
        assert_eq!(op.state_keys(), 2);
        op.advance_watermark(5 * MIN); // closes [0, 5min)
        assert_eq!(op.state_keys(), 1);
        let out = op.process_batch(&batch(&[("a", 2 * MIN), ("b", 7 * MIN), ("c", 9 * MIN)])).unwrap();
        assert_eq!(passed(&out), vec![("c".into(), 9, 1)]);
        assert_eq!(op.late_rows(), 1);

        let mut sliding = self::op(WindowKind::Sliding, 5 * MIN, 1);
        sliding.process_batch(&batch(&[("a", MIN), ("b", 4 * MIN)])).unwrap();
        sliding.advance_watermark(6 * MIN); // a at 1 can no longer matter; b at 4 still can
        assert_eq!(sliding.state_keys(), 1);
    }

    #[test]
    fn restore_continues_where_the_snapshot_left_off() {
        for kind in [WindowKind::Tumbling, WindowKind::Sliding] {
            let mut first = op(kind, 5 * MIN, 1);
            first.process_batch(&batch(&[("a", MIN), ("b", 2 * MIN)])).unwrap();
            first.advance_watermark(MIN);
            let snapshot = first.snapshot();
            let mut restored = op(kind, 5 * MIN, 1);
            restored.restore(&snapshot).unwrap();
            let next = batch(&[("a", 3 * MIN), ("c", 3 * MIN), ("d", 0)]);
            assert_eq!(passed(&restored.process_batch(&next).unwrap()), passed(&first.process_batch(&next).unwrap()));
            assert_eq!(restored.late_rows(), 1, "the watermark came back too");
            assert!(restored.restore(&snapshot[..snapshot.len() - 1]).is_err());
        }
    }
}
