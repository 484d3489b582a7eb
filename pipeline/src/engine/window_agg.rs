//! Tumbling and hopping window aggregates, emitted when the window closes:
//! `SELECT k, tumble(INTERVAL '1' MINUTE) AS w, count(*) ... GROUP BY k, w`
//! (`hop(slide, width)` for hopping windows). The window column holds the
//! window start. Any DataFusion aggregate function works: the operator drives
//! its accumulators.
//!
//! Time is the row's event time (`_timestamp`). A row is late, and dropped,
//! when it is older than its own input partition's watermark as it stood
//! after the rows before it. A window closes, and its rows are emitted, once
//! the watermark of every input partition has passed its end (the runtime
//! declares the partitions at start: an idle partition holds windows open).
//! The emitted rows therefore depend only on the input, not on batch
//! boundaries or partition interleaving; their order may.
//!
//! Accumulators are kept per input partition ([`Unit`]) and merged when the
//! window closes, so each partition's share can move to another instance
//! with the partition. With several instances, each emits its partitions'
//! share of a (window, key): partial aggregates, unless the GROUP BY keys
//! follow the record key.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryArray, RecordBatch, TimestampNanosecondArray, UInt32Array};
use arrow::compute::{cast, take};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef, TimeUnit, TimestampNanosecondType};
use arrow::row::{RowConverter, SortField};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::Accumulator;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;

use super::state_bytes::{Cursor, Unit, UnitState, batch_to_ipc, batches_from_ipc, put_watermarks};

/// Positions of the lineage columns the operator reads.
#[derive(Debug, Clone, Copy)]
pub struct AggLineage {
    pub source: usize,
    pub partition: usize,
    pub watermark: usize,
    pub timestamp: usize,
}

pub struct AggregateSpec {
    pub function: Arc<AggregateFunctionExpr>,
    pub filter: Option<Arc<dyn PhysicalExpr>>,
}

struct Group {
    accumulators: Vec<Box<dyn Accumulator>>,
}

pub struct WindowAggregate {
    keys: Vec<Arc<dyn PhysicalExpr>>,
    /// Where the window start goes among the group columns.
    window_position: usize,
    aggregates: Vec<AggregateSpec>,
    lineage: AggLineage,
    width: i64,
    slide: i64,
    output_schema: SchemaRef,
    converter: RowConverter,
    /// window start -> (input partition, key row) -> accumulators
    windows: BTreeMap<i64, HashMap<(Unit, Vec<u8>), Group>>,
    /// (source, partition) -> watermark after the rows seen so far.
    watermarks: HashMap<(i32, i32), i64>,
    /// Windows starting before this were emitted.
    emitted_before: i64,
    late_rows: u64,
}

impl WindowAggregate {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        keys: Vec<Arc<dyn PhysicalExpr>>,
        key_types: Vec<DataType>,
        window_position: usize,
        aggregates: Vec<AggregateSpec>,
        lineage: AggLineage,
        width: i64,
        slide: i64,
        output_schema: SchemaRef,
    ) -> Result<Self> {
        if width <= 0 || slide <= 0 || width % slide != 0 {
            return Err(DataFusionError::Plan("hop(slide, width): width must be a positive multiple of slide".into()));
        }
        Ok(WindowAggregate {
            keys,
            window_position,
            aggregates,
            lineage,
            width,
            slide,
            output_schema,
            converter: RowConverter::new(key_types.into_iter().map(SortField::new).collect())?,
            windows: BTreeMap::new(),
            watermarks: HashMap::new(),
            emitted_before: i64::MIN,
            late_rows: 0,
        })
    }

    /// Declares the input partitions of a source: a window closes only once
    /// all of them have passed it, even those that sent nothing yet.
    pub fn expect_partitions(&mut self, source: i32, partitions: &[i32]) {
        for p in partitions {
            self.watermarks.entry((source, *p)).or_insert(i64::MIN);
        }
    }

    pub fn late_rows(&self) -> u64 {
        self.late_rows
    }

    pub fn open_windows(&self) -> usize {
        self.windows.len()
    }

    fn new_group(&self) -> Result<Group> {
        let accumulators = self.aggregates.iter().map(|a| a.function.create_accumulator()).collect::<Result<_>>()?;
        Ok(Group { accumulators })
    }

    /// Adds a batch; returns the rows of every window that closed.
    pub fn process_batch(&mut self, batch: &RecordBatch) -> Result<RecordBatch> {
        let n = batch.num_rows();
        let key_columns: Vec<ArrayRef> = self.keys.iter().map(|k| k.evaluate(batch)?.into_array(n)).collect::<Result<_>>()?;
        let rows = self.converter.convert_columns(&key_columns)?;
        let nanos = |i: usize| cast(batch.column(i), &DataType::Timestamp(TimeUnit::Nanosecond, None));
        let times = nanos(self.lineage.timestamp)?;
        let times = times.as_primitive::<TimestampNanosecondType>();
        let row_watermarks = nanos(self.lineage.watermark)?;
        let row_watermarks = row_watermarks.as_primitive::<TimestampNanosecondType>();
        let sources = batch.column(self.lineage.source).as_primitive::<Int32Type>();
        let partitions = batch.column(self.lineage.partition).as_primitive::<Int32Type>();

        // (window start, (unit, key row)) -> row indexes, in first-seen order.
        let mut groups: HashMap<(i64, (Unit, Vec<u8>)), Vec<u32>> = HashMap::new();
        let mut order = Vec::new();
        for i in 0..n {
            let unit = (sources.value(i), partitions.value(i));
            let watermark = self.watermarks.entry(unit).or_insert(i64::MIN);
            let before = *watermark;
            if !row_watermarks.is_null(i) {
                *watermark = (*watermark).max(row_watermarks.value(i));
            }
            if times.is_null(i) || times.value(i) < before {
                self.late_rows += 1;
                continue;
            }
            let t = times.value(i);
            // Every window [s, s + width) with s a multiple of slide that holds t.
            let last_start = t.div_euclid(self.slide) * self.slide;
            let mut start = last_start - self.width + self.slide;
            let mut any = false;
            while start <= last_start {
                if start >= self.emitted_before {
                    let key = (start, (unit, rows.row(i).as_ref().to_vec()));
                    let slot = groups.entry(key.clone()).or_default();
                    if slot.is_empty() {
                        order.push(key);
                    }
                    slot.push(i as u32);
                    any = true;
                }
                start += self.slide;
            }
            if !any {
                self.late_rows += 1;
            }
        }
        let arguments: Vec<Vec<ArrayRef>> = self
            .aggregates
            .iter()
            .map(|a| a.function.expressions().iter().map(|e| e.evaluate(batch)?.into_array(n)).collect::<Result<_>>())
            .collect::<Result<_>>()?;
        let filters: Vec<Option<ArrayRef>> = self
            .aggregates
            .iter()
            .map(|a| a.filter.as_ref().map(|f| f.evaluate(batch)?.into_array(n)).transpose())
            .collect::<Result<_>>()?;
        for key in order {
            let indices = groups.remove(&key).expect("grouped");
            let mut group = match self.windows.get_mut(&key.0).and_then(|w| w.remove(&key.1)) {
                Some(group) => group,
                None => self.new_group()?,
            };
            let mut indices = UInt32Array::from(indices);
            for (a, accumulator) in group.accumulators.iter_mut().enumerate() {
                if let Some(filter) = &filters[a] {
                    let passing = take(filter, &indices, None)?;
                    let passing = passing.as_boolean();
                    let kept: Vec<u32> = indices.iter().zip(passing.iter()).filter(|(_, p)| *p == Some(true)).filter_map(|(i, _)| i).collect();
                    indices = UInt32Array::from(kept);
                }
                let values = arguments[a].iter().map(|column| take(column, &indices, None)).collect::<Result<Vec<_>, _>>()?;
                accumulator.update_batch(&values)?;
            }
            self.windows.entry(key.0).or_default().insert(key.1, group);
        }
        self.emit_closed()
    }

    /// The watermark every seen partition has passed.
    fn watermark(&self) -> i64 {
        self.watermarks.values().copied().min().unwrap_or(i64::MIN)
    }

    fn emit_closed(&mut self) -> Result<RecordBatch> {
        let watermark = self.watermark();
        let mut key_rows = Vec::new();
        let mut starts = Vec::new();
        let mut values: Vec<Vec<ScalarValue>> = vec![Vec::new(); self.aggregates.len()];
        while let Some((&start, _)) = self.windows.first_key_value() {
            if start.saturating_add(self.width) > watermark {
                break;
            }
            let (start, groups) = self.windows.pop_first().expect("checked");
            self.emitted_before = self.emitted_before.max(start + self.slide);
            // By key, then partition: each key's partition shares merge into the first.
            let mut groups: Vec<((Unit, Vec<u8>), Group)> = groups.into_iter().collect();
            groups.sort_by(|a, b| (&a.0.1, a.0.0).cmp(&(&b.0.1, b.0.0)));
            let mut merged: Vec<(Vec<u8>, Group)> = Vec::new();
            for ((_, key), mut group) in groups {
                match merged.last_mut() {
                    Some((last, into)) if *last == key => {
                        for (target, share) in into.accumulators.iter_mut().zip(group.accumulators.iter_mut()) {
                            let state = share.state()?.iter().map(|v| v.to_array()).collect::<Result<Vec<_>>>()?;
                            target.merge_batch(&state)?;
                        }
                    }
                    _ => merged.push((key, group)),
                }
            }
            for (key, mut group) in merged {
                for (a, accumulator) in group.accumulators.iter_mut().enumerate() {
                    values[a].push(accumulator.evaluate()?);
                }
                key_rows.push(key);
                starts.push(start);
            }
        }
        let parser = self.converter.parser();
        let keys = self.converter.convert_rows(key_rows.iter().map(|k| parser.parse(k)))?;
        let mut columns: Vec<ArrayRef> = keys;
        let window: ArrayRef = Arc::new(TimestampNanosecondArray::from(starts));
        columns.insert(self.window_position, window);
        for column in values {
            columns.push(if column.is_empty() {
                arrow::array::new_empty_array(self.output_schema.field(columns.len()).data_type())
            } else {
                ScalarValue::iter_to_array(column)?
            });
        }
        let columns = columns
            .into_iter()
            .zip(self.output_schema.fields())
            .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c) } else { cast(&c, f.data_type()) })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RecordBatch::try_new(self.output_schema.clone(), columns)?)
    }
}

impl UnitState for WindowAggregate {
    /// Watermarks, open windows and accumulator states of `units` (Arrow IPC
    /// inside). `&mut`: DataFusion's `Accumulator::state` may hand over its
    /// buffers, so each accumulator is rebuilt from the state it returns.
    fn snapshot_units(&mut self, units: &[Unit]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let watermarks: HashMap<Unit, i64> = self.watermarks.iter().filter(|(u, _)| units.contains(u)).map(|(u, w)| (*u, *w)).collect();
        put_watermarks(&mut out, &watermarks);
        // One row per (window, unit, key): start, source, partition, key, then every accumulator's state fields.
        let (mut starts, mut sources, mut partitions) = (Vec::new(), Vec::new(), Vec::new());
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let mut states: Vec<Vec<Vec<ScalarValue>>> = Vec::new();
        let mut fields = vec![
            Field::new("start", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
            Field::new("source", DataType::Int32, false),
            Field::new("partition", DataType::Int32, false),
            Field::new("key", DataType::Binary, false),
        ];
        let state_fields: Vec<Vec<arrow::datatypes::FieldRef>> =
            self.aggregates.iter().map(|a| a.function.state_fields()).collect::<Result<_>>()?;
        for (a, f) in state_fields.iter().enumerate() {
            for (s, field) in f.iter().enumerate() {
                fields.push(field.as_ref().clone().with_name(format!("a{a}_{s}")).with_nullable(true));
            }
        }
        let aggregates = &self.aggregates;
        for (start, groups) in self.windows.iter_mut() {
            let mut groups: Vec<_> = groups.iter_mut().filter(|((unit, _), _)| units.contains(unit)).collect();
            groups.sort_by(|a, b| a.0.cmp(b.0));
            for ((unit, key), group) in groups {
                starts.push(*start);
                sources.push(unit.0);
                partitions.push(unit.1);
                keys.push(key.clone());
                let mut row = Vec::new();
                for (a, accumulator) in group.accumulators.iter_mut().enumerate() {
                    let state = accumulator.state()?;
                    let mut fresh = aggregates[a].function.create_accumulator()?;
                    let arrays = state.iter().map(|v| v.to_array()).collect::<Result<Vec<_>>>()?;
                    fresh.merge_batch(&arrays)?;
                    *accumulator = fresh;
                    row.push(state);
                }
                states.push(row);
            }
        }
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(TimestampNanosecondArray::from(starts)),
            Arc::new(arrow::array::Int32Array::from(sources)),
            Arc::new(arrow::array::Int32Array::from(partitions)),
            Arc::new(BinaryArray::from_iter_values(keys.iter())),
        ];
        for (a, f) in state_fields.iter().enumerate() {
            for s in 0..f.len() {
                let column: Vec<ScalarValue> = states.iter().map(|row| row[a][s].clone()).collect();
                columns.push(if column.is_empty() {
                    arrow::array::new_empty_array(f[s].data_type())
                } else {
                    ScalarValue::iter_to_array(column)?
                });
            }
        }
        let schema = Arc::new(Schema::new(fields));
        let columns = columns
            .into_iter()
            .zip(schema.fields())
            .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c) } else { cast(&c, f.data_type()) })
            .collect::<Result<Vec<_>, _>>()?;
        out.extend_from_slice(&batch_to_ipc(&RecordBatch::try_new(schema, columns)?)?);
        Ok(out)
    }

    fn restore_units(&mut self, bytes: &[u8]) -> Result<()> {
        let mut r = Cursor::new(bytes);
        let watermarks = r.watermarks()?;
        let units: Vec<Unit> = watermarks.keys().copied().collect();
        self.drop_units(&units);
        self.watermarks.extend(watermarks);
        for batch in batches_from_ipc(r.rest())? {
            let starts = batch.column(0).as_primitive::<TimestampNanosecondType>().clone();
            let sources = batch.column(1).as_primitive::<Int32Type>().clone();
            let partitions = batch.column(2).as_primitive::<Int32Type>().clone();
            let keys = batch.column(3).as_binary::<i32>().clone();
            for row in 0..batch.num_rows() {
                let mut group = self.new_group()?;
                let mut column = 4;
                for (a, accumulator) in group.accumulators.iter_mut().enumerate() {
                    let width = self.aggregates[a].function.state_fields()?.len();
                    let states: Vec<ArrayRef> = (column..column + width).map(|c| batch.column(c).slice(row, 1)).collect();
                    accumulator.merge_batch(&states)?;
                    column += width;
                }
                let unit = (sources.value(row), partitions.value(row));
                self.windows.entry(starts.value(row)).or_default().insert((unit, keys.value(row).to_vec()), group);
            }
        }
        Ok(())
    }

    fn drop_units(&mut self, units: &[Unit]) {
        for unit in units {
            self.watermarks.remove(unit);
        }
        for groups in self.windows.values_mut() {
            groups.retain(|(unit, _), _| !units.contains(unit));
        }
        self.windows.retain(|_, groups| !groups.is_empty());
    }
}
