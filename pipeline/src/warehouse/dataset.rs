//! The analytics datasets: which topic feeds which ClickHouse table and
//! Parquet dataset, with what columns. One column list serves both, so a
//! report runs unchanged on either.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder, UInt32Builder, UInt64Builder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use notiflow_clickhouse::PreparedRow;
use notiflow_connector::Record;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// String; missing or null is "".
    Text,
    /// Required instant (the row's time: partitions by day and hour).
    Time,
    /// Optional instant.
    OptTime,
    /// Optional number (latencies).
    Float,
    /// Whole number; missing is 0.
    Int,
}

pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
}

const fn col(name: &'static str, kind: Kind) -> Column {
    Column { name, kind }
}

pub struct Dataset {
    /// Parquet dataset folder and report table alias.
    pub name: &'static str,
    /// Logical topic (renamed by `[topics] rename`).
    pub topic: &'static str,
    pub table: &'static str,
    /// The `Time` column.
    pub time: &'static str,
    pub columns: &'static [Column],
}

use Kind::*;

pub const DELIVERIES: Dataset = Dataset {
    name: "deliveries",
    topic: "notify.deliveries",
    table: "notify_deliveries",
    time: "sent_at",
    columns: &[
        col("sent_at", Time),
        col("delivery_id", Text),
        col("message_id", Text),
        col("request_id", Text),
        col("tenant", Text),
        col("priority", Text),
        col("category", Text),
        col("channel", Text),
        col("provider", Text),
        col("provider_message_id", Text),
        col("state", Text),
        col("reason", Text),
        col("attempts", Int),
        col("requested_at", OptTime),
        col("outcome_at", OptTime),
        col("send_latency_ms", Float),
        col("delivery_latency_ms", Float),
    ],
};

pub const EVENTS: Dataset = Dataset {
    name: "events",
    topic: "notify.events",
    table: "notify_events",
    time: "at",
    columns: &[
        col("at", Time),
        col("event", Text),
        col("message_id", Text),
        col("delivery_id", Text),
        col("tenant", Text),
        col("request_id", Text),
        col("kind", Text),
        col("priority", Text),
        col("category", Text),
        col("channel", Text),
        col("provider", Text),
        col("reason", Text),
        col("topic", Text),
        col("source", Text),
    ],
};

pub const DATASETS: [&Dataset; 2] = [&DELIVERIES, &EVENTS];

#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Text(String),
    /// Milliseconds since the epoch.
    Time(Option<i64>),
    Float(Option<f64>),
    Int(i64),
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub partition: i32,
    pub offset: i64,
    pub time_ms: i64,
    pub cells: Vec<Cell>,
}

/// RFC 3339, or `YYYY-MM-DDTHH:MM:SS[.fff]` in UTC (what the JSON sinks write), or epoch ms.
pub fn parse_time(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(text) => crate::engine::hold::parse_instant(text),
        _ => None,
    }
}

impl Dataset {
    /// Decodes a record; the error says why it cannot be a row.
    pub fn decode(&self, record: &Record) -> Result<Row, String> {
        let payload = record.payload.as_deref().ok_or("a tombstone")?;
        let Value::Object(fields) = serde_json::from_slice::<Value>(payload).map_err(|e| format!("not JSON: {e}"))? else {
            return Err("not a JSON object".into());
        };
        let mut time_ms = None;
        let mut cells = Vec::with_capacity(self.columns.len());
        for column in self.columns {
            let value = fields.get(column.name).unwrap_or(&Value::Null);
            cells.push(match column.kind {
                Text => Cell::Text(match value {
                    Value::Null => String::new(),
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                }),
                Time | OptTime => {
                    let t = if value.is_null() { None } else { Some(parse_time(value).ok_or_else(|| format!("{}: not a time: {value}", column.name))?) };
                    if column.kind == Time {
                        time_ms = Some(t.ok_or_else(|| format!("{} is missing", column.name))?);
                    }
                    Cell::Time(t)
                }
                Float => Cell::Float(value.as_f64()),
                Int => Cell::Int(value.as_i64().unwrap_or(0)),
            });
        }
        Ok(Row { partition: record.partition, offset: record.offset, time_ms: time_ms.ok_or("no time column")?, cells })
    }

    /// Column names and ClickHouse types (as `system.columns` spells them), offsets last.
    pub fn clickhouse_columns(&self) -> Vec<(&'static str, &'static str)> {
        let mut columns: Vec<(&str, &str)> = self
            .columns
            .iter()
            .map(|c| {
                (c.name, match c.kind {
                    Text => "String",
                    Time => "DateTime",
                    OptTime => "Nullable(DateTime)",
                    Float => "Nullable(Float64)",
                    Int => "Int64",
                })
            })
            .collect();
        columns.extend([("kafka_partition", "UInt32"), ("kafka_offset", "UInt64")]);
        columns
    }

    /// The row in ClickHouse's RowBinary format, columns in `clickhouse_columns` order (times as
    /// epoch seconds: DateTime). Binary because the server parses it several times faster than JSON.
    pub fn prepare(&self, row: &Row) -> PreparedRow {
        let mut bytes = Vec::with_capacity(256);
        let seconds = |ms: i64| (ms.div_euclid(1000).clamp(0, u32::MAX as i64) as u32).to_le_bytes();
        for (column, cell) in self.columns.iter().zip(&row.cells) {
            match (column.kind, cell) {
                (_, Cell::Text(s)) => {
                    put_varint(&mut bytes, s.len() as u64);
                    bytes.extend_from_slice(s.as_bytes());
                }
                (Time, Cell::Time(t)) => bytes.extend_from_slice(&seconds(t.unwrap_or(row.time_ms))),
                (_, Cell::Int(i)) => bytes.extend_from_slice(&i.to_le_bytes()),
                // Nullable: a 1 byte for NULL, else 0 and the value.
                (_, Cell::Time(None) | Cell::Float(None)) => bytes.push(1),
                (_, Cell::Time(Some(ms))) => {
                    bytes.push(0);
                    bytes.extend_from_slice(&seconds(*ms));
                }
                (_, Cell::Float(Some(v))) => {
                    bytes.push(0);
                    bytes.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
        bytes.extend_from_slice(&(row.partition as u32).to_le_bytes());
        bytes.extend_from_slice(&(row.offset as u64).to_le_bytes());
        PreparedRow { partition: row.partition, offset: row.offset, day: row.time_ms.div_euclid(86_400_000), bytes }
    }

    pub fn arrow_schema(&self) -> SchemaRef {
        let utc = || DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
        let mut fields: Vec<Field> = self
            .columns
            .iter()
            .map(|c| match c.kind {
                Text => Field::new(c.name, DataType::Utf8, false),
                Time => Field::new(c.name, utc(), false),
                OptTime => Field::new(c.name, utc(), true),
                Float => Field::new(c.name, DataType::Float64, true),
                Int => Field::new(c.name, DataType::Int64, false),
            })
            .collect();
        fields.extend([Field::new("kafka_partition", DataType::UInt32, false), Field::new("kafka_offset", DataType::UInt64, false)]);
        Arc::new(Schema::new(fields))
    }

    pub fn to_batch(&self, rows: &[&Row]) -> RecordBatch {
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.columns.len() + 2);
        for (index, column) in self.columns.iter().enumerate() {
            let cells = rows.iter().map(|r| &r.cells[index]);
            arrays.push(match column.kind {
                Text => {
                    let mut b = StringBuilder::new();
                    cells.for_each(|c| b.append_value(if let Cell::Text(s) = c { s.as_str() } else { "" }));
                    Arc::new(b.finish())
                }
                Time | OptTime => {
                    let mut b = TimestampMillisecondBuilder::new().with_timezone("UTC");
                    cells.for_each(|c| b.append_option(if let Cell::Time(t) = c { *t } else { None }));
                    Arc::new(b.finish())
                }
                Float => {
                    let mut b = Float64Builder::new();
                    cells.for_each(|c| b.append_option(if let Cell::Float(f) = c { *f } else { None }));
                    Arc::new(b.finish())
                }
                Int => {
                    let mut b = Int64Builder::new();
                    cells.for_each(|c| b.append_value(if let Cell::Int(i) = c { *i } else { 0 }));
                    Arc::new(b.finish())
                }
            });
        }
        let mut partitions = UInt32Builder::new();
        let mut offsets = UInt64Builder::new();
        for row in rows {
            partitions.append_value(row.partition as u32);
            offsets.append_value(row.offset as u64);
        }
        arrays.push(Arc::new(partitions.finish()));
        arrays.push(Arc::new(offsets.finish()));
        RecordBatch::try_new(self.arrow_schema(), arrays).expect("columns match the schema")
    }
}

/// LEB128, as RowBinary prefixes strings with their length.
fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: i64, json: &str) -> Record {
        Record { topic: Arc::from("t"), partition: 2, offset, key: None, payload: Some(json.as_bytes().to_vec()), timestamp_ms: None, headers: vec![] }
    }

    #[test]
    fn decodes_a_delivery_for_both_sinks() {
        let row = DELIVERIES
            .decode(&record(
                7,
                r#"{"delivery_id":"d-1","state":"delivered","attempts":2,"sent_at":"2023-11-14T22:13:20.250","outcome_at":"2023-11-14T22:13:25Z","send_latency_ms":500.0,"extra":1}"#,
            ))
            .unwrap();
        assert_eq!(row.time_ms, 1_700_000_000_250);
        let prepared = DELIVERIES.prepare(&row);
        assert_eq!(prepared.day, 19_675);
        let b = &prepared.bytes;
        // sent_at DateTime, then delivery_id "d-1" (length-prefixed), then 3 empty strings ...
        assert_eq!(&b[..4], &1_700_000_000u32.to_le_bytes());
        assert_eq!(&b[4..8], b"\x03d-1");
        assert_eq!(&b[8..11], &[0, 0, 0]);
        // ... and at the end: attempts, requested_at NULL, outcome_at, send/delivery latency, partition, offset.
        let tail = &b[b.len() - (8 + 1 + 5 + 9 + 1 + 4 + 8)..];
        assert_eq!(&tail[..8], &2i64.to_le_bytes());
        assert_eq!(tail[8], 1);
        assert_eq!(&tail[9..14], &[&[0u8][..], &1_700_000_005u32.to_le_bytes()].concat()[..]);
        assert_eq!(&tail[14..23], &[&[0u8][..], &500f64.to_le_bytes()].concat()[..]);
        assert_eq!(tail[23], 1);
        assert_eq!(&tail[24..28], &2u32.to_le_bytes());
        assert_eq!(&tail[28..], &7u64.to_le_bytes());
        let batch = DELIVERIES.to_batch(&[&row]);
        assert_eq!(batch.num_rows(), 1);
        assert_eq!(batch.num_columns(), DELIVERIES.clickhouse_columns().len());
    }

    #[test]
    fn a_row_without_its_time_is_refused_with_the_reason() {
        assert_eq!(DELIVERIES.decode(&record(1, r#"{"delivery_id":"d"}"#)).unwrap_err(), "sent_at is missing");
        assert!(EVENTS.decode(&record(1, r#"{"at":"yesterday"}"#)).unwrap_err().contains("not a time"));
        assert!(EVENTS.decode(&record(1, "[1]")).is_err());
    }
}
