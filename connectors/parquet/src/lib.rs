//! The local Parquet archive: one folder per dataset, partitioned
//! `dt=YYYY-MM-DD/hour=HH` (Hive style, as Arroyo's filesystem sink writes),
//! zstd-compressed. A file is written under a hidden temporary name and
//! renamed into place when complete, so readers never see a partial file.
//! [`DatasetArchive`] commits files together with the Kafka offsets they cover.

pub mod commit;

pub use commit::DatasetArchive;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Utc};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive I/O at {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("parquet encoding: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
}

pub struct ParquetArchive {
    root: PathBuf,
    sequence: AtomicU64,
}

impl ParquetArchive {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ParquetArchive { root: root.into(), sequence: AtomicU64::new(0) }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder readers scan for `dataset` (all partitions below it).
    pub fn dataset_dir(&self, dataset: &str) -> PathBuf {
        self.root.join(dataset)
    }

    /// Writes `batches` as one file in the partition of `at`; returns its path.
    pub fn commit_file(&self, dataset: &str, at: DateTime<Utc>, batches: &[RecordBatch]) -> Result<PathBuf, ArchiveError> {
        let dir = self.dataset_dir(dataset).join(format!("dt={}", at.format("%Y-%m-%d"))).join(format!("hour={}", at.format("%H")));
        fs::create_dir_all(&dir).map_err(|source| ArchiveError::Io { path: dir.clone(), source })?;
        let name = format!(
            "part-{}-{}-{:06}.parquet",
            at.format("%Y%m%dT%H%M%S%3f"),
            std::process::id(),
            self.sequence.fetch_add(1, Ordering::Relaxed)
        );
        let final_path = dir.join(&name);
        let temp_path = commit::temp_path(&final_path);
        write_parquet(&temp_path, batches, 3)?;
        fs::rename(&temp_path, &final_path).map_err(|source| ArchiveError::Io { path: final_path.clone(), source })?;
        Ok(final_path)
    }
}

/// Writes `batches` (one schema) to `path` as zstd Parquet and syncs it.
pub(crate) fn write_parquet(path: &Path, batches: &[RecordBatch], zstd_level: i32) -> Result<(), ArchiveError> {
    let Some(first) = batches.first() else {
        return Err(ArchiveError::Io { path: path.into(), source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no batches to write") });
    };
    let file = fs::File::create(path).map_err(|source| ArchiveError::Io { path: path.into(), source })?;
    let properties = WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::try_new(zstd_level)?)).build();
    let mut writer = ArrowWriter::try_new(file, first.schema(), Some(properties))?;
    for batch in batches {
        writer.write(batch)?;
    }
    let file = writer.into_inner()?;
    file.sync_all().map_err(|source| ArchiveError::Io { path: path.into(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use std::sync::Arc;

    #[test]
    fn writes_a_partitioned_zstd_file_that_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let archive = ParquetArchive::new(dir.path());
        let schema = Arc::new(Schema::new(vec![
            Field::new("event", DataType::Utf8, false),
            Field::new("n", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(StringArray::from(vec!["a", "b"])), Arc::new(Int64Array::from(vec![Some(1), None]))],
        )
        .unwrap();
        let at = DateTime::parse_from_rfc3339("2026-11-23T07:15:00Z").unwrap().with_timezone(&Utc);
        let path = archive.commit_file("events", at, &[batch.clone(), batch]).unwrap();
        assert!(path.starts_with(dir.path().join("events/dt=2026-11-23/hour=07")), "{}", path.display());
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left behind");

        let builder = ParquetRecordBatchReaderBuilder::try_new(fs::File::open(&path).unwrap()).unwrap();
        let column = builder.metadata().row_group(0).column(0);
        assert!(matches!(column.compression(), Compression::ZSTD(_)));
        let rows: usize = builder.build().unwrap().map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows, 4);
    }
}
