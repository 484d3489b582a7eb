//! Files committed together with the Kafka offsets they cover.
//!
//! A commit writes its files under hidden temporary names, then a manifest
//! (the commit point: written to a temporary name, synced, renamed), then
//! renames the files into place. Readers never see a file before its
//! manifest exists. On open, the newest manifest is completed (its files
//! renamed if a crash came first), temporary files of commits that never got
//! a manifest are deleted, and the manifest's offsets say where to resume:
//! no record is archived twice, none is lost.
//!
//! Layout: `<root>/<dataset>/dt=YYYY-MM-DD/hour=HH/part-*.parquet` and
//! `<root>/_manifests/<dataset>/<sequence>.manifest`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Utc};

use crate::{ArchiveError, write_parquet};

pub struct DatasetArchive {
    root: PathBuf,
    dataset: String,
    sequence: u64,
    offsets: BTreeMap<i32, i64>,
    zstd_level: i32,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io { path: path.to_path_buf(), source }
}

impl DatasetArchive {
    /// Opens (and recovers) a dataset's archive.
    pub fn open(root: impl Into<PathBuf>, dataset: &str, zstd_level: i32) -> Result<Self, ArchiveError> {
        let root = root.into();
        let mut archive = DatasetArchive { root, dataset: dataset.into(), sequence: 0, offsets: BTreeMap::new(), zstd_level };
        let manifests = archive.manifest_dir();
        fs::create_dir_all(&manifests).map_err(io(&manifests))?;
        if let Some((sequence, path)) = archive.manifests()?.pop() {
            let manifest = Manifest::read(&path)?;
            for file in &manifest.files {
                let final_path = archive.root.join(file);
                let temp = temp_path(&final_path);
                if !final_path.exists() && temp.exists() {
                    fs::rename(&temp, &final_path).map_err(io(&final_path))?;
                }
            }
            archive.sequence = sequence;
            archive.offsets = manifest.offsets;
        }
        remove_orphans(&archive.root.join(&archive.dataset))?;
        Ok(archive)
    }

    /// Next Kafka offset per partition (where reading resumes).
    pub fn next_offsets(&self) -> &BTreeMap<i32, i64> {
        &self.offsets
    }

    /// Folder readers scan (all partitions below it).
    pub fn dataset_dir(&self) -> PathBuf {
        self.root.join(&self.dataset)
    }

    fn manifest_dir(&self) -> PathBuf {
        self.root.join("_manifests").join(&self.dataset)
    }

    fn manifests(&self) -> Result<Vec<(u64, PathBuf)>, ArchiveError> {
        let dir = self.manifest_dir();
        let mut found = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io(&dir))? {
            let path = entry.map_err(io(&dir))?.path();
            let sequence = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".manifest")).and_then(|n| n.parse::<u64>().ok());
            if let Some(sequence) = sequence {
                found.push((sequence, path));
            }
        }
        found.sort();
        Ok(found)
    }

    /// Writes one file per (hour, batches) group and commits them with
    /// `offsets` (next offset per partition after these rows, merged into the
    /// archive's). Returns the committed files.
    pub fn commit(&mut self, groups: &[(DateTime<Utc>, Vec<RecordBatch>)], offsets: &BTreeMap<i32, i64>) -> Result<Vec<PathBuf>, ArchiveError> {
        let sequence = self.sequence + 1;
        let mut files = Vec::new();
        for (index, (hour, batches)) in groups.iter().enumerate() {
            if batches.iter().all(|b| b.num_rows() == 0) {
                continue;
            }
            let relative = Path::new(&self.dataset)
                .join(format!("dt={}", hour.format("%Y-%m-%d")))
                .join(format!("hour={}", hour.format("%H")))
                .join(format!("part-{sequence:012}-{index:03}.parquet"));
            let final_path = self.root.join(&relative);
            let dir = final_path.parent().expect("a partition folder");
            fs::create_dir_all(dir).map_err(io(dir))?;
            write_parquet(&temp_path(&final_path), batches, self.zstd_level)?;
            files.push(relative);
        }
        let mut merged = self.offsets.clone();
        for (partition, next) in offsets {
            let entry = merged.entry(*partition).or_insert(*next);
            *entry = (*entry).max(*next);
        }
        let manifest = Manifest { offsets: merged, files };
        manifest.write(&self.manifest_dir(), sequence)?;
        // Committed: make the files visible, then forget older manifests.
        for file in &manifest.files {
            let final_path = self.root.join(file);
            fs::rename(temp_path(&final_path), &final_path).map_err(io(&final_path))?;
        }
        for (old, path) in self.manifests()? {
            if old < sequence {
                fs::remove_file(&path).map_err(io(&path))?;
            }
        }
        self.sequence = sequence;
        self.offsets = manifest.offsets;
        Ok(manifest.files.iter().map(|f| self.root.join(f)).collect())
    }
}

/// A leading dot hides the file from DataFusion/Spark/Arroyo readers until the rename.
pub(crate) fn temp_path(final_path: &Path) -> PathBuf {
    let name = final_path.file_name().and_then(|n| n.to_str()).unwrap_or("part");
    final_path.with_file_name(format!(".{name}.inprogress"))
}

/// Deletes temporary files no manifest names (a crash before the commit point).
fn remove_orphans(dir: &Path) -> Result<(), ArchiveError> {
    let Ok(entries) = fs::read_dir(dir) else { return Ok(()) };
    for entry in entries {
        let path = entry.map_err(io(dir))?.path();
        if path.is_dir() {
            remove_orphans(&path)?;
        } else if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.') && n.ends_with(".inprogress")) {
            fs::remove_file(&path).map_err(io(&path))?;
        }
    }
    Ok(())
}

/// `offsets p:o,p:o` then one committed file (relative to the root) per line.
struct Manifest {
    offsets: BTreeMap<i32, i64>,
    files: Vec<PathBuf>,
}

impl Manifest {
    fn write(&self, dir: &Path, sequence: u64) -> Result<(), ArchiveError> {
        let offsets: Vec<String> = self.offsets.iter().map(|(p, o)| format!("{p}:{o}")).collect();
        let mut text = format!("offsets {}\n", offsets.join(","));
        for file in &self.files {
            text.push_str(&file.to_string_lossy());
            text.push('\n');
        }
        let final_path = dir.join(format!("{sequence:012}.manifest"));
        let temp = dir.join(format!(".{sequence:012}.manifest.tmp"));
        let mut file = fs::File::create(&temp).map_err(io(&temp))?;
        file.write_all(text.as_bytes()).map_err(io(&temp))?;
        file.sync_all().map_err(io(&temp))?;
        fs::rename(&temp, &final_path).map_err(io(&final_path))?;
        // The rename is durable once the folder is synced.
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
    }

    fn read(path: &Path) -> Result<Self, ArchiveError> {
        let text = fs::read_to_string(path).map_err(io(path))?;
        let bad = || ArchiveError::Io { path: path.to_path_buf(), source: std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed manifest") };
        let mut lines = text.lines();
        let head = lines.next().and_then(|l| l.strip_prefix("offsets")).ok_or_else(bad)?.trim();
        let mut offsets = BTreeMap::new();
        for pair in head.split(',').filter(|p| !p.is_empty()) {
            let (p, o) = pair.split_once(':').ok_or_else(bad)?;
            offsets.insert(p.parse().map_err(|_| bad())?, o.parse().map_err(|_| bad())?);
        }
        Ok(Manifest { offsets, files: lines.filter(|l| !l.is_empty()).map(PathBuf::from).collect() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn batch(values: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values.to_vec()))]).unwrap()
    }

    fn hour(h: u32) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(&format!("2026-11-23T{h:02}:00:00Z")).unwrap().with_timezone(&Utc)
    }

    fn visible(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(visible(&path));
            } else if !path.file_name().unwrap().to_string_lossy().starts_with('.') {
                out.push(path);
            }
        }
        out.sort();
        out
    }

    #[test]
    fn commits_files_with_offsets_and_resumes_from_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut archive = DatasetArchive::open(dir.path(), "deliveries", 3).unwrap();
        assert!(archive.next_offsets().is_empty());
        let files = archive.commit(&[(hour(7), vec![batch(&[1, 2])]), (hour(8), vec![batch(&[3])])], &BTreeMap::from([(0, 10), (1, 4)])).unwrap();
        assert_eq!(files.len(), 2);
        assert!(files[0].starts_with(dir.path().join("deliveries/dt=2026-11-23/hour=07")));
        archive.commit(&[(hour(8), vec![batch(&[4])])], &BTreeMap::from([(0, 12)])).unwrap();

        let reopened = DatasetArchive::open(dir.path(), "deliveries", 3).unwrap();
        assert_eq!(reopened.next_offsets(), &BTreeMap::from([(0, 12), (1, 4)]));
        assert_eq!(visible(&dir.path().join("deliveries")).len(), 3);
        // Only the newest manifest is kept.
        assert_eq!(fs::read_dir(dir.path().join("_manifests/deliveries")).unwrap().count(), 1);
    }

    #[test]
    fn a_crash_before_the_manifest_leaves_nothing_and_after_it_everything() {
        let dir = tempfile::tempdir().unwrap();
        let mut archive = DatasetArchive::open(dir.path(), "events", 3).unwrap();
        archive.commit(&[(hour(1), vec![batch(&[1])])], &BTreeMap::from([(0, 1)])).unwrap();

        // Crash after writing a temporary file, before its manifest: the file is dropped, offsets stay.
        let orphan = temp_path(&dir.path().join("events/dt=2026-11-23/hour=01/part-000000000002-000.parquet"));
        write_parquet(&orphan, &[batch(&[2])], 3).unwrap();
        let reopened = DatasetArchive::open(dir.path(), "events", 3).unwrap();
        assert!(!orphan.exists());
        assert_eq!(reopened.next_offsets(), &BTreeMap::from([(0, 1)]));

        // Crash after the manifest, before the rename: the open completes the commit.
        let final_path = dir.path().join("events/dt=2026-11-23/hour=02/part-000000000002-000.parquet");
        fs::create_dir_all(final_path.parent().unwrap()).unwrap();
        write_parquet(&temp_path(&final_path), &[batch(&[2])], 3).unwrap();
        let manifest = Manifest { offsets: BTreeMap::from([(0, 2)]), files: vec![PathBuf::from("events/dt=2026-11-23/hour=02/part-000000000002-000.parquet")] };
        manifest.write(&dir.path().join("_manifests/events"), 2).unwrap();
        let recovered = DatasetArchive::open(dir.path(), "events", 3).unwrap();
        assert!(final_path.exists());
        assert_eq!(recovered.next_offsets(), &BTreeMap::from([(0, 2)]));
        assert_eq!(visible(&dir.path().join("events")).len(), 2);
    }
}
