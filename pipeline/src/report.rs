//! Reports over the local Parquet archive with DataFusion SQL (the embedded
//! default's stand-in for ClickHouse).

use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use datafusion::prelude::{ParquetReadOptions, SessionContext};

/// Arrow schema of archived lifecycle events (`events::LifecycleEvent`).
pub fn events_schema() -> SchemaRef {
    let text = |name: &str, nullable| Field::new(name, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        text("event", false),
        text("message_id", true),
        text("tenant", true),
        text("request_id", true),
        text("kind", true),
        text("priority", true),
        text("category", true),
        text("reason", true),
        text("topic", true),
        text("source", false),
        Field::new("at", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false),
    ]))
}

/// Decodes JSON event records into one Arrow batch (arrow-json, no per-row `Value`).
pub fn events_to_batch(payloads: &[&[u8]]) -> anyhow::Result<RecordBatch> {
    let schema = events_schema();
    let mut decoder = arrow::json::ReaderBuilder::new(schema.clone()).with_batch_size(payloads.len().max(1)).build_decoder()?;
    for payload in payloads {
        decoder.decode(payload)?;
    }
    Ok(decoder.flush()?.unwrap_or_else(|| RecordBatch::new_empty(schema)))
}

/// A session with the archive's `events` table registered.
pub async fn archive_session(archive_root: &Path) -> anyhow::Result<SessionContext> {
    let ctx = SessionContext::new();
    let events_dir = archive_root.join("events");
    let options = ParquetReadOptions::default()
        .table_partition_cols(vec![("dt".to_string(), DataType::Utf8), ("hour".to_string(), DataType::Utf8)]);
    ctx.register_parquet("events", events_dir.to_string_lossy().as_ref(), options).await?;
    Ok(ctx)
}

pub async fn query(ctx: &SessionContext, sql: &str) -> anyhow::Result<Vec<RecordBatch>> {
    Ok(ctx.sql(sql).await?.collect().await?)
}

pub fn render(batches: &[RecordBatch]) -> String {
    arrow::util::pretty::pretty_format_batches(batches).map(|t| t.to_string()).unwrap_or_else(|e| e.to_string())
}
