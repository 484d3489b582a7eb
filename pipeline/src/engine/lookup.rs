//! Lookup tables materialized from compacted topics, and the lookup join.
//!
//! A lookup table holds the latest row per key (`lookup.key_field`); a
//! tombstone (null value) with that key as the record key deletes it. At start
//! the runtime reads each lookup topic from the beginning; later records
//! update the table as they arrive, in arrival order relative to the stream
//! (a stream row sees the table as it is when the row is processed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, new_null_array};
use arrow::compute::{cast, interleave};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::Result;
use datafusion::physical_expr::PhysicalExpr;
use notiflow_connector::Record;

use super::codec::SourceDecoder;

#[derive(Default)]
pub struct LookupState {
    rows: HashMap<String, RecordBatch>,
}

impl LookupState {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

pub struct LookupTable {
    pub name: String,
    pub kafka: crate::sql::KafkaTable,
    pub decoder: SourceDecoder,
    pub key_field: String,
    pub state: Arc<Mutex<LookupState>>,
}

impl LookupTable {
    /// Whether a row with this key is in the table.
    pub fn contains(&self, key: &str) -> bool {
        self.state.lock().expect("lookup state poisoned").rows.contains_key(key)
    }

    /// The key an update record sets (its `lookup.key_field`); None for a
    /// tombstone or a record without the field.
    pub fn key_of(&self, record: &Record) -> Option<String> {
        let object: HashMap<&str, serde_json::Value> = serde_json::from_slice(record.payload.as_deref()?).ok()?;
        match object.get(self.key_field.as_str())? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Null => None,
            other => Some(other.to_string()),
        }
    }

    /// Applies records in order; returns how many could not be decoded.
    pub fn apply(&self, records: &[&Record]) -> usize {
        let mut state = self.state.lock().expect("lookup state poisoned");
        let mut bad = 0;
        // Upserts are decoded together; a tombstone must not be overtaken by
        // an earlier upsert of the same key, so flush at each tombstone.
        let mut pending: Vec<&Record> = Vec::new();
        let mut flush = |pending: &mut Vec<&Record>, state: &mut LookupState| {
            if pending.is_empty() {
                return;
            }
            let decoded = self.decoder.decode(pending);
            bad += decoded.bad.len();
            let batch = decoded.batch;
            if let Some(keys) = batch.column_by_name(&self.key_field).and_then(|c| cast(c, &DataType::Utf8).ok()) {
                let keys = keys.as_string::<i32>();
                for row in 0..batch.num_rows() {
                    if !keys.is_null(row) {
                        state.rows.insert(keys.value(row).to_string(), batch.slice(row, 1));
                    }
                }
            }
            pending.clear();
        };
        for record in records {
            if record.payload.is_none() {
                flush(&mut pending, &mut state);
                if let Some(key) = &record.key {
                    state.rows.remove(String::from_utf8_lossy(key).as_ref());
                }
            } else {
                pending.push(record);
            }
        }
        flush(&mut pending, &mut state);
        bad
    }
}

/// `stream [LEFT] JOIN lookup ON stream.expr = lookup.key_field`.
pub struct LookupJoin {
    key: Arc<dyn PhysicalExpr>,
    table: Arc<Mutex<LookupState>>,
    left_outer: bool,
    left_width: usize,
    output_schema: SchemaRef,
}

impl LookupJoin {
    pub fn new(key: Arc<dyn PhysicalExpr>, table: Arc<Mutex<LookupState>>, left_outer: bool, left_width: usize, output_schema: SchemaRef) -> Self {
        LookupJoin { key, table, left_outer, left_width, output_schema }
    }

    pub fn process_batch(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let n = batch.num_rows();
        let keys = cast(&self.key.evaluate(batch)?.into_array(n)?, &DataType::Utf8)?;
        let keys = keys.as_string::<i32>();
        let state = self.table.lock().expect("lookup state poisoned");
        let mut left_rows = Vec::with_capacity(n);
        let mut right_rows: Vec<Option<&RecordBatch>> = Vec::with_capacity(n);
        for row in 0..n {
            let found = (!keys.is_null(row)).then(|| state.rows.get(keys.value(row))).flatten();
            if found.is_some() || self.left_outer {
                left_rows.push((0usize, row));
                right_rows.push(found);
            }
        }
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.output_schema.fields().len());
        for c in 0..self.left_width {
            let column = batch.column(c).as_ref();
            columns.push(interleave(&[column], &left_rows)?);
        }
        for c in self.left_width..self.output_schema.fields().len() {
            let data_type = self.output_schema.field(c).data_type();
            let nulls = new_null_array(data_type, 1);
            let mut sources: Vec<&dyn Array> = vec![nulls.as_ref()];
            let mut indices = Vec::with_capacity(right_rows.len());
            let mut cast_columns: Vec<ArrayRef> = Vec::new();
            for found in &right_rows {
                match found {
                    Some(row) => {
                        let column = row.column(c - self.left_width);
                        cast_columns.push(if column.data_type() == data_type { column.clone() } else { cast(column, data_type)? });
                        indices.push((cast_columns.len(), 0));
                    }
                    None => indices.push((0, 0)),
                }
            }
            sources.extend(cast_columns.iter().map(|a| a.as_ref()));
            columns.push(interleave(&sources, &indices)?);
        }
        Ok(RecordBatch::try_new(self.output_schema.clone(), columns)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Field, Schema};

    fn record(offset: i64, key: &str, payload: Option<&str>) -> Record {
        Record {
            topic: Arc::from("t"),
            partition: 0,
            offset,
            key: Some(key.as_bytes().to_vec()),
            payload: payload.map(|p| p.as_bytes().to_vec()),
            timestamp_ms: Some(0),
            headers: vec![],
        }
    }

    #[test]
    fn upserts_keep_the_newest_and_tombstones_delete() {
        let schema = Schema::new(vec![Field::new("id", DataType::Utf8, true), Field::new("v", DataType::Int64, true)]);
        let table = LookupTable {
            name: "t".into(),
            kafka: crate::sql::options::connector_from_options(
                &[("connector", "kafka"), ("type", "lookup"), ("topic", "t"), ("lookup.key_field", "id")]
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
            .map(|crate::sql::Connector::Kafka(k)| k)
            .unwrap(),
            decoder: SourceDecoder::new(-1, &schema, &[], None),
            key_field: "id".into(),
            state: Default::default(),
        };
        let records = [
            record(0, "a", Some(r#"{"id":"a","v":1}"#)),
            record(1, "b", Some(r#"{"id":"b","v":1}"#)),
            record(2, "a", Some(r#"{"id":"a","v":2}"#)),
            record(3, "b", None),
            record(4, "c", Some("not json")),
            record(5, "b", Some(r#"{"id":"b","v":3}"#)),
            record(6, "a", None),
        ];
        let bad = table.apply(&records.iter().collect::<Vec<_>>());
        assert_eq!(bad, 1);
        let state = table.state.lock().unwrap();
        assert_eq!(state.len(), 1, "a deleted, b re-inserted after its tombstone");
        let b = &state.rows["b"];
        assert_eq!(b.column_by_name("v").unwrap().as_primitive::<arrow::datatypes::Int64Type>().value(0), 3);
    }
}
