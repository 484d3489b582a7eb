//! JSON records <-> Arrow batches. Decoding uses arrow-json's tape decoder
//! over the whole micro-batch; only when that fails does it fall back to one
//! record at a time, to find which records are bad. Columns declared `JSON`
//! carry raw JSON text both ways.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int32Array, Int64Array, RecordBatch, StringArray, StringBuilder, StructArray, TimestampNanosecondArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::json::writer::{EncoderOptions, NullableEncoder, make_encoder};
use arrow::json::{Encoder, EncoderFactory, ReaderBuilder};
use notiflow_connector::Record;

/// Hidden columns every source has. Columns starting with `_` are engine
/// metadata: never written to sinks.
pub const TIMESTAMP_COLUMN: &str = "_timestamp";
pub const KEY_COLUMN: &str = "_key";
pub const PARTITION_COLUMN: &str = "_partition";
pub const OFFSET_COLUMN: &str = "_offset";
/// Index of the source table the row came from (with partition and offset: its lineage).
pub const SOURCE_COLUMN: &str = "_source";
/// The source's watermark as of this row (its WATERMARK expression; default
/// the event time): windowed operators track it per input partition.
pub const WATERMARK_COLUMN: &str = "_watermark";
/// Hidden columns that say which input record a row came from and how far its
/// partition's event time has got; the planner carries them through every
/// projection, so each output row has an id and every operator the watermark.
pub const LINEAGE_COLUMNS: [&str; 5] = [SOURCE_COLUMN, PARTITION_COLUMN, OFFSET_COLUMN, WATERMARK_COLUMN, TIMESTAMP_COLUMN];
const JSON_METADATA: &str = "notiflow.json";

pub fn is_hidden(name: &str) -> bool {
    name.starts_with('_')
}

/// The schema a source exposes to SQL: declared columns + hidden ones.
pub fn source_schema(declared: &Schema) -> SchemaRef {
    let mut fields: Vec<FieldRef> = declared.fields().iter().cloned().collect();
    fields.push(Arc::new(Field::new(TIMESTAMP_COLUMN, DataType::Timestamp(TimeUnit::Nanosecond, None), false)));
    fields.push(Arc::new(Field::new(KEY_COLUMN, DataType::Utf8, true)));
    fields.push(Arc::new(Field::new(PARTITION_COLUMN, DataType::Int32, false)));
    fields.push(Arc::new(Field::new(OFFSET_COLUMN, DataType::Int64, false)));
    fields.push(Arc::new(Field::new(SOURCE_COLUMN, DataType::Int32, false)));
    fields.push(Arc::new(Field::new(WATERMARK_COLUMN, DataType::Timestamp(TimeUnit::Nanosecond, None), false)));
    Arc::new(Schema::new(fields))
}

pub struct SourceDecoder {
    /// This source's index in the pipeline (the `_source` column).
    index: i32,
    schema: SchemaRef,
    decode_schema: SchemaRef,
    json_columns: Vec<String>,
    event_time_field: Option<String>,
}

pub struct Decoded {
    pub batch: RecordBatch,
    /// Index (into the input slice) and error of each record that could not be decoded.
    pub bad: Vec<(usize, String)>,
}

impl SourceDecoder {
    /// `declared`: the columns of CREATE TABLE (JSON columns as Utf8).
    pub fn new(index: i32, declared: &Schema, json_columns: &[String], event_time_field: Option<String>) -> Self {
        let decode_fields: Vec<FieldRef> =
            declared.fields().iter().filter(|f| !json_columns.contains(f.name())).cloned().collect();
        SourceDecoder {
            index,
            schema: source_schema(declared),
            decode_schema: Arc::new(Schema::new(decode_fields)),
            json_columns: json_columns.to_vec(),
            event_time_field,
        }
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn decode(&self, records: &[&Record]) -> Decoded {
        let mut bad = Vec::new();
        let mut good: Vec<usize> = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            match r.payload.as_deref() {
                Some(p) if !p.is_empty() => good.push(i),
                _ => bad.push((i, "record has no value".to_string())),
            }
        }
        let payload = |i: usize| records[i].payload.as_deref().unwrap_or_default();
        let payloads: Vec<&[u8]> = good.iter().map(|&i| payload(i)).collect();
        let decoded = match self.decode_all(&payloads) {
            Ok(batch) => batch,
            Err(_) => {
                // Find the culprits one by one, then decode the rest in bulk.
                good.retain(|&i| match self.decode_all(&[payload(i)]) {
                    Ok(_) => true,
                    Err(e) => {
                        bad.push((i, e));
                        false
                    }
                });
                let payloads: Vec<&[u8]> = good.iter().map(|&i| payload(i)).collect();
                self.decode_all(&payloads).expect("each record decoded on its own")
            }
        };
        // JSON columns: raw text of the top-level field.
        let mut json_values: Vec<StringBuilder> = (0..self.json_columns.len()).map(|_| StringBuilder::with_capacity(good.len(), good.len() * 32)).collect();
        if !self.json_columns.is_empty() {
            let names: Vec<&str> = self.json_columns.iter().map(String::as_str).collect();
            let mut found = vec![None; names.len()];
            for &i in &good {
                super::json_fields::top_level(payload(i), &names, &mut found);
                for (column, value) in json_values.iter_mut().zip(&found) {
                    column.append_option(value.map(|v| v.get()).filter(|v| *v != "null"));
                }
            }
        }
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        for field in self.schema.fields() {
            let name = field.name().as_str();
            // The runtime replaces `_watermark` when the source declares a WATERMARK expression.
            let column: ArrayRef = if name == TIMESTAMP_COLUMN || name == WATERMARK_COLUMN {
                self.event_times(&decoded, records, &good)
            } else if name == KEY_COLUMN {
                Arc::new(StringArray::from_iter(
                    good.iter().map(|&i| records[i].key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned())),
                ))
            } else if name == PARTITION_COLUMN {
                Arc::new(Int32Array::from_iter_values(good.iter().map(|&i| records[i].partition)))
            } else if name == OFFSET_COLUMN {
                Arc::new(Int64Array::from_iter_values(good.iter().map(|&i| records[i].offset)))
            } else if name == SOURCE_COLUMN {
                Arc::new(Int32Array::from_value(self.index, good.len()))
            } else if let Some(c) = self.json_columns.iter().position(|j| j == name) {
                Arc::new(json_values[c].finish())
            } else {
                decoded.column_by_name(name).expect("decoded column").clone()
            };
            columns.push(column);
        }
        let batch = RecordBatch::try_new(self.schema.clone(), columns).expect("columns match the source schema");
        bad.sort_by_key(|(i, _)| *i);
        Decoded { batch, bad }
    }

    fn decode_all(&self, payloads: &[&[u8]]) -> Result<RecordBatch, String> {
        let mut decoder = ReaderBuilder::new(self.decode_schema.clone())
            .with_batch_size(payloads.len().max(1))
            .build_decoder()
            .map_err(|e| e.to_string())?;
        let mut rows = 0;
        for payload in payloads {
            let consumed = decoder.decode(payload).map_err(|e| e.to_string())?;
            rows += 1;
            if consumed != payload.len() || decoder.len() != rows || decoder.has_partial_record() {
                return Err("record value is not exactly one JSON object".into());
            }
        }
        let batch = decoder.flush().map_err(|e| e.to_string())?;
        Ok(batch.unwrap_or_else(|| RecordBatch::new_empty(self.decode_schema.clone())))
    }

    fn event_times(&self, decoded: &RecordBatch, records: &[&Record], good: &[usize]) -> ArrayRef {
        if let Some(field) = &self.event_time_field
            && let Some(column) = decoded.column_by_name(field)
            && let Ok(ts) = cast(column, &DataType::Timestamp(TimeUnit::Nanosecond, None))
        {
            // Rows without an event time fall back to the record timestamp.
            let ts = ts.as_primitive::<arrow::datatypes::TimestampNanosecondType>();
            return Arc::new(TimestampNanosecondArray::from_iter_values(good.iter().enumerate().map(|(row, &i)| {
                if ts.is_null(row) { record_time_nanos(records[i]) } else { ts.value(row) }
            })));
        }
        Arc::new(TimestampNanosecondArray::from_iter_values(good.iter().map(|&i| record_time_nanos(records[i]))))
    }
}

fn record_time_nanos(record: &Record) -> i64 {
    record.timestamp_ms.unwrap_or(0).saturating_mul(1_000_000)
}

/// Encodes sink rows as JSON objects, one payload per row.
pub struct SinkEncoder {
    fields: Fields,
    key_field: Option<String>,
}

impl SinkEncoder {
    /// `declared`: the sink's columns; `json_columns`: those declared JSON.
    pub fn new(declared: &Schema, json_columns: &[String], key_field: Option<String>) -> Self {
        let fields: Fields = declared
            .fields()
            .iter()
            .filter(|f| !is_hidden(f.name()))
            .map(|f| {
                if json_columns.contains(f.name()) {
                    Arc::new(f.as_ref().clone().with_metadata([(JSON_METADATA.to_string(), "true".to_string())].into()))
                } else {
                    f.clone()
                }
            })
            .collect();
        SinkEncoder { fields, key_field }
    }

    pub fn fields(&self) -> &Fields {
        &self.fields
    }

    /// (key, payload) per row. The key is `key_field`'s value, else the
    /// hidden `_key` column when the query kept it.
    pub fn encode(&self, batch: &RecordBatch) -> Result<Vec<(Option<Vec<u8>>, Vec<u8>)>, ArrowError> {
        let mut columns = Vec::with_capacity(self.fields.len());
        for field in self.fields.iter() {
            let column = batch
                .column_by_name(field.name())
                .ok_or_else(|| ArrowError::SchemaError(format!("query output has no column {}", field.name())))?;
            columns.push(if column.data_type() == field.data_type() { column.clone() } else { cast(column, field.data_type())? });
        }
        let rows = StructArray::try_new(self.fields.clone(), columns, None)?;
        let options = EncoderOptions::default().with_encoder_factory(Arc::new(RawJsonFactory));
        let field: FieldRef = Arc::new(Field::new("row", DataType::Struct(self.fields.clone()), false));
        let mut encoder = make_encoder(&field, &rows, &options)?;
        let keys = match self.key_field.as_deref().or(batch.schema().column_with_name(KEY_COLUMN).map(|_| KEY_COLUMN)) {
            Some(name) => {
                let column = batch.column_by_name(name).ok_or_else(|| ArrowError::SchemaError(format!("no key column {name}")))?;
                Some(cast(column, &DataType::Utf8)?)
            }
            None => None,
        };
        let keys = keys.as_ref().map(|k| k.as_string::<i32>());
        let mut out = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            let mut payload = Vec::with_capacity(128);
            encoder.encode(row, &mut payload);
            let key = keys.and_then(|k| (!k.is_null(row)).then(|| k.value(row).as_bytes().to_vec()));
            out.push((key, payload));
        }
        Ok(out)
    }
}

/// Writes columns marked JSON as raw JSON (a string that is not valid JSON is
/// written as a JSON string, so the output always parses).
#[derive(Debug)]
struct RawJsonFactory;

impl EncoderFactory for RawJsonFactory {
    fn make_default_encoder<'a>(
        &self,
        field: &'a FieldRef,
        array: &'a dyn Array,
        _options: &'a EncoderOptions,
    ) -> Result<Option<NullableEncoder<'a>>, ArrowError> {
        if !field.metadata().contains_key(JSON_METADATA) || array.data_type() != &DataType::Utf8 {
            return Ok(None);
        }
        let strings = array.as_string::<i32>();
        Ok(Some(NullableEncoder::new(Box::new(RawJson(strings)), strings.nulls().cloned())))
    }
}

struct RawJson<'a>(&'a StringArray);

impl Encoder for RawJson<'_> {
    fn encode(&mut self, idx: usize, out: &mut Vec<u8>) {
        let text = self.0.value(idx);
        if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
            out.extend_from_slice(text.as_bytes());
        } else {
            out.extend_from_slice(serde_json::to_string(text).expect("strings serialize").as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: i64, payload: &str) -> Record {
        Record {
            topic: Arc::from("t"),
            partition: 0,
            offset,
            key: Some(format!("k{offset}").into_bytes()),
            payload: Some(payload.as_bytes().to_vec()),
            timestamp_ms: Some(1_000 + offset),
            headers: vec![],
        }
    }

    fn declared() -> Schema {
        Schema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
            Field::new("params", DataType::Utf8, true),
        ])
    }

    #[test]
    fn decodes_in_bulk_and_isolates_bad_records() {
        let decoder = SourceDecoder::new(0, &declared(), &["params".to_string()], None);
        let records = [
            record(0, r#"{"id":"a","n":1,"params":{"x":[1,2]}}"#),
            record(1, r#"{"id":"b","n":"not a number"}"#),
            record(2, r#"{"id":"c" "#),
            record(3, r#"{"id":"d"}{"id":"e"}"#),
            record(4, r#"{"id":"f","n":6,"extra":true}"#),
        ];
        let refs: Vec<&Record> = records.iter().collect();
        let decoded = decoder.decode(&refs);
        assert_eq!(decoded.bad.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![1, 2, 3]);
        let batch = decoded.batch;
        assert_eq!(batch.num_rows(), 2);
        let ids = batch.column_by_name("id").unwrap().as_string::<i32>();
        assert_eq!((ids.value(0), ids.value(1)), ("a", "f"));
        let params = batch.column_by_name("params").unwrap().as_string::<i32>();
        assert_eq!(params.value(0), r#"{"x":[1,2]}"#);
        assert!(params.is_null(1));
        let ts = batch.column_by_name(TIMESTAMP_COLUMN).unwrap().as_primitive::<arrow::datatypes::TimestampNanosecondType>();
        assert_eq!(ts.value(1), 1_004_000_000);
        let keys = batch.column_by_name(KEY_COLUMN).unwrap().as_string::<i32>();
        assert_eq!(keys.value(1), "k4");
    }

    #[test]
    fn encodes_rows_with_raw_json_and_keys() {
        let decoder = SourceDecoder::new(0, &declared(), &["params".to_string()], None);
        let records = [record(0, r#"{"id":"a","n":1,"params":{"x":"y"}}"#), record(1, r#"{"id":"b"}"#)];
        let batch = decoder.decode(&records.iter().collect::<Vec<_>>()).batch;
        let encoder = SinkEncoder::new(&declared(), &["params".to_string()], None);
        let rows = encoder.encode(&batch).unwrap();
        assert_eq!(rows[0], (Some(b"k0".to_vec()), br#"{"id":"a","n":1,"params":{"x":"y"}}"#.to_vec()));
        assert_eq!(rows[1], (Some(b"k1".to_vec()), br#"{"id":"b"}"#.to_vec()));

        let keyed = SinkEncoder::new(&declared(), &[], Some("id".into()));
        let rows = keyed.encode(&batch).unwrap();
        assert_eq!(rows[0].0.as_deref(), Some(&b"a"[..]));
        assert_eq!(rows[0].1, br#"{"id":"a","n":1,"params":"{\"x\":\"y\"}"}"#.to_vec());
    }
}
