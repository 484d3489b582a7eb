//! The Parquet archive: one folder per dataset, partitioned
//! `dt=YYYY-MM-DD/hour=HH` (Hive style, as Arroyo's filesystem sink writes),
//! zstd-compressed, on a local directory or S3 (object_store).
//! [`DatasetArchive`] commits files together with the Kafka offsets they
//! cover, so readers never see a partial or uncommitted file.

pub mod commit;

pub use commit::{ArchiveLocation, DatasetArchive};

use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive I/O at {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("parquet encoding: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("archive store: {0}")]
    Store(#[from] object_store::Error),
    #[error("archive: {0}")]
    Config(String),
}

/// `batches` (one schema) as a zstd Parquet file.
pub(crate) fn parquet_bytes(batches: &[RecordBatch], zstd_level: i32) -> Result<Vec<u8>, ArchiveError> {
    let Some(first) = batches.first() else { return Err(ArchiveError::Config("no batches to write".into())) };
    let properties = WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::try_new(zstd_level)?)).build();
    let mut writer = ArrowWriter::try_new(Vec::new(), first.schema(), Some(properties))?;
    for batch in batches {
        writer.write(batch)?;
    }
    Ok(writer.into_inner()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use std::sync::Arc;

    #[test]
    fn writes_zstd_parquet_that_reads_back() {
        let schema = Arc::new(Schema::new(vec![Field::new("event", DataType::Utf8, false), Field::new("n", DataType::Int64, true)]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(vec!["a", "b"])), Arc::new(Int64Array::from(vec![Some(1), None]))]).unwrap();
        let bytes = parquet_bytes(&[batch.clone(), batch], 3).unwrap();
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes)).unwrap();
        assert!(matches!(builder.metadata().row_group(0).column(0).compression(), Compression::ZSTD(_)));
        let rows: usize = builder.build().unwrap().map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows, 4);
    }
}
