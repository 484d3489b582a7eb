//! Files committed together with the Kafka offsets they cover, on a local
//! directory or S3 (any object_store backend).
//!
//! A commit uploads its files under `_staging/` (outside what readers scan),
//! then puts a manifest (the commit point: an object put is atomic), then
//! moves the files into place. Readers never see a file before its manifest
//! exists. On open, the newest manifest is completed (files still staged are
//! moved), staged files no manifest names (a crash before the commit point)
//! are deleted, and the manifest's offsets say where to resume: no record is
//! archived twice, none is lost.
//!
//! Layout under the archive's base: `<dataset>/dt=YYYY-MM-DD/hour=HH/part-*.parquet`,
//! `_manifests/<dataset>/<sequence>.manifest`, `_staging/<dataset>/...`.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::{ArchiveError, parquet_bytes};

/// Where an archive lives: a local directory, or `s3://bucket/prefix`.
#[derive(Clone)]
pub struct ArchiveLocation {
    store: Arc<dyn ObjectStore>,
    base: Path,
    /// What readers register: the directory, or `s3://bucket`.
    root_url: String,
}

impl std::fmt::Debug for ArchiveLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ArchiveLocation({}/{})", self.root_url, self.base)
    }
}

impl ArchiveLocation {
    /// A local directory (created when missing).
    pub fn local(dir: impl AsRef<std::path::Path>) -> Result<Self, ArchiveError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| ArchiveError::Io { path: dir.to_path_buf(), source })?;
        let dir = dir.canonicalize().map_err(|source| ArchiveError::Io { path: dir.to_path_buf(), source })?;
        let store = LocalFileSystem::new_with_prefix(&dir)?;
        Ok(ArchiveLocation { store: Arc::new(store), base: Path::default(), root_url: dir.to_string_lossy().into_owned() })
    }

    /// `s3://bucket[/prefix]`: credentials and region from the standard `AWS_*`
    /// environment variables; `options` (AmazonS3ConfigKey names, e.g.
    /// `endpoint`, `allow_http`) override them.
    pub fn s3(url: &str, options: &BTreeMap<String, String>) -> Result<Self, ArchiveError> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| ArchiveError::Config(format!("{url}: not an s3:// URL")))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        for (key, value) in options {
            let key: AmazonS3ConfigKey = key.parse().map_err(|_| ArchiveError::Config(format!("unknown S3 option `{key}`")))?;
            builder = builder.with_config(key, value);
        }
        Ok(ArchiveLocation { store: Arc::new(builder.build()?), base: Path::from(prefix.trim_matches('/')), root_url: format!("s3://{bucket}") })
    }

    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    pub fn is_s3(&self) -> bool {
        self.root_url.starts_with("s3://")
    }

    /// The bucket URL readers register the store under (S3 only).
    pub fn root_url(&self) -> &str {
        &self.root_url
    }

    fn path(&self, relative: &str) -> Path {
        if self.base.as_ref().is_empty() { Path::from(relative) } else { Path::from(format!("{}/{relative}", self.base)) }
    }

    /// The folder (local path or URL) readers scan for `dataset`.
    pub fn dataset_url(&self, dataset: &str) -> String {
        if self.is_s3() { format!("{}/{}/", self.root_url, self.path(dataset)) } else { format!("{}/{dataset}/", self.root_url) }
    }

    /// Whether `dataset` has any committed file.
    pub async fn has_files(&self, dataset: &str) -> Result<bool, ArchiveError> {
        let mut listing = self.store.list(Some(&self.path(dataset)));
        Ok(listing.try_next().await?.is_some())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Path>, ArchiveError> {
        let found: Vec<_> = self.store.list(Some(&self.path(prefix))).try_collect().await?;
        Ok(found.into_iter().map(|meta| meta.location).collect())
    }

    async fn exists(&self, path: &Path) -> Result<bool, ArchiveError> {
        match self.store.head(path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(err) => Err(err.into()),
        }
    }
}

pub struct DatasetArchive {
    location: ArchiveLocation,
    dataset: String,
    sequence: u64,
    offsets: BTreeMap<i32, i64>,
    zstd_level: i32,
}

impl DatasetArchive {
    /// Opens (and recovers) a dataset's archive.
    pub async fn open(location: &ArchiveLocation, dataset: &str, zstd_level: i32) -> Result<Self, ArchiveError> {
        let mut archive = DatasetArchive { location: location.clone(), dataset: dataset.into(), sequence: 0, offsets: BTreeMap::new(), zstd_level };
        let mut named = Vec::new();
        if let Some((sequence, path)) = archive.manifests().await?.pop() {
            let manifest = Manifest::read(&location.store.get(&path).await?.bytes().await?, &path)?;
            for file in &manifest.files {
                let (staged, final_path) = (location.path(&archive.staged_name(file)), location.path(file));
                if !location.exists(&final_path).await? && location.exists(&staged).await? {
                    location.store.rename(&staged, &final_path).await?;
                }
                named.push(staged);
            }
            archive.sequence = sequence;
            archive.offsets = manifest.offsets;
        }
        // Staged files of commits that never got a manifest.
        for staged in location.list(&format!("_staging/{dataset}")).await? {
            if !named.contains(&staged) {
                location.store.delete(&staged).await?;
            }
        }
        Ok(archive)
    }

    /// Next Kafka offset per partition (where reading resumes).
    pub fn next_offsets(&self) -> &BTreeMap<i32, i64> {
        &self.offsets
    }

    fn staged_name(&self, file: &str) -> String {
        format!("_staging/{}/{}", self.dataset, file.replace('/', "__"))
    }

    async fn manifests(&self) -> Result<Vec<(u64, Path)>, ArchiveError> {
        let mut found: Vec<(u64, Path)> = self
            .location
            .list(&format!("_manifests/{}", self.dataset))
            .await?
            .into_iter()
            .filter_map(|path| Some((path.filename()?.strip_suffix(".manifest")?.parse().ok()?, path)))
            .collect();
        found.sort();
        Ok(found)
    }

    /// Writes one file per (hour, batches) group and commits them with
    /// `offsets` (next offset per partition after these rows, merged into the
    /// archive's). Returns the committed files (relative to the archive's base).
    pub async fn commit(&mut self, groups: &[(DateTime<Utc>, Vec<RecordBatch>)], offsets: &BTreeMap<i32, i64>) -> Result<Vec<String>, ArchiveError> {
        let sequence = self.sequence + 1;
        let mut files = Vec::new();
        for (index, (hour, batches)) in groups.iter().enumerate() {
            if batches.iter().all(|b| b.num_rows() == 0) {
                continue;
            }
            let file = format!("{}/dt={}/hour={}/part-{sequence:012}-{index:03}.parquet", self.dataset, hour.format("%Y-%m-%d"), hour.format("%H"));
            let bytes = parquet_bytes(batches, self.zstd_level)?;
            self.location.store.put(&self.location.path(&self.staged_name(&file)), PutPayload::from(bytes)).await?;
            files.push(file);
        }
        let mut merged = self.offsets.clone();
        for (partition, next) in offsets {
            let entry = merged.entry(*partition).or_insert(*next);
            *entry = (*entry).max(*next);
        }
        let manifest = Manifest { offsets: merged, files };
        let manifest_path = self.location.path(&format!("_manifests/{}/{sequence:012}.manifest", self.dataset));
        self.location.store.put(&manifest_path, PutPayload::from(manifest.to_bytes())).await?;
        // Committed: make the files visible, then forget older manifests.
        for file in &manifest.files {
            self.location.store.rename(&self.location.path(&self.staged_name(file)), &self.location.path(file)).await?;
        }
        for (old, path) in self.manifests().await? {
            if old < sequence {
                self.location.store.delete(&path).await?;
            }
        }
        self.sequence = sequence;
        self.offsets = manifest.offsets.clone();
        Ok(manifest.files)
    }
}

/// `offsets p:o,p:o` then one committed file (relative to the base) per line.
struct Manifest {
    offsets: BTreeMap<i32, i64>,
    files: Vec<String>,
}

impl Manifest {
    fn to_bytes(&self) -> Vec<u8> {
        let offsets: Vec<String> = self.offsets.iter().map(|(p, o)| format!("{p}:{o}")).collect();
        let mut text = format!("offsets {}\n", offsets.join(","));
        for file in &self.files {
            text.push_str(file);
            text.push('\n');
        }
        text.into_bytes()
    }

    fn read(bytes: &[u8], path: &Path) -> Result<Self, ArchiveError> {
        let bad = || ArchiveError::Config(format!("{path}: malformed manifest"));
        let text = std::str::from_utf8(bytes).map_err(|_| bad())?;
        let mut lines = text.lines();
        let head = lines.next().and_then(|l| l.strip_prefix("offsets")).ok_or_else(bad)?.trim();
        let mut offsets = BTreeMap::new();
        for pair in head.split(',').filter(|p| !p.is_empty()) {
            let (p, o) = pair.split_once(':').ok_or_else(bad)?;
            offsets.insert(p.parse().map_err(|_| bad())?, o.parse().map_err(|_| bad())?);
        }
        Ok(Manifest { offsets, files: lines.filter(|l| !l.is_empty()).map(str::to_string).collect() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    fn batch(values: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values.to_vec()))]).unwrap()
    }

    fn hour(h: u32) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(&format!("2026-11-23T{h:02}:00:00Z")).unwrap().with_timezone(&Utc)
    }

    fn visible(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(visible(&path));
            } else {
                out.push(path);
            }
        }
        out.sort();
        out
    }

    #[tokio::test]
    async fn commits_files_with_offsets_and_resumes_from_them() {
        let dir = tempfile::tempdir().unwrap();
        let location = ArchiveLocation::local(dir.path()).unwrap();
        let mut archive = DatasetArchive::open(&location, "deliveries", 3).await.unwrap();
        assert!(archive.next_offsets().is_empty());
        let files = archive.commit(&[(hour(7), vec![batch(&[1, 2])]), (hour(8), vec![batch(&[3])])], &BTreeMap::from([(0, 10), (1, 4)])).await.unwrap();
        assert_eq!(files.len(), 2);
        assert!(files[0].starts_with("deliveries/dt=2026-11-23/hour=07/"), "{files:?}");
        archive.commit(&[(hour(8), vec![batch(&[4])])], &BTreeMap::from([(0, 12)])).await.unwrap();

        let reopened = DatasetArchive::open(&location, "deliveries", 3).await.unwrap();
        assert_eq!(reopened.next_offsets(), &BTreeMap::from([(0, 12), (1, 4)]));
        assert_eq!(visible(&dir.path().join("deliveries")).len(), 3);
        assert!(visible(&dir.path().join("_staging")).is_empty());
        // Only the newest manifest is kept.
        assert_eq!(visible(&dir.path().join("_manifests/deliveries")).len(), 1);
    }

    #[tokio::test]
    async fn a_crash_before_the_manifest_leaves_nothing_and_after_it_everything() {
        let dir = tempfile::tempdir().unwrap();
        let location = ArchiveLocation::local(dir.path()).unwrap();
        let mut archive = DatasetArchive::open(&location, "events", 3).await.unwrap();
        archive.commit(&[(hour(1), vec![batch(&[1])])], &BTreeMap::from([(0, 1)])).await.unwrap();
        let store = location.store();

        // Crash after staging a file, before its manifest: the file is dropped, offsets stay.
        let file = "events/dt=2026-11-23/hour=01/part-000000000002-000.parquet";
        let staged = location.path(&archive.staged_name(file));
        store.put(&staged, PutPayload::from(parquet_bytes(&[batch(&[2])], 3).unwrap())).await.unwrap();
        let reopened = DatasetArchive::open(&location, "events", 3).await.unwrap();
        assert!(!location.exists(&staged).await.unwrap());
        assert_eq!(reopened.next_offsets(), &BTreeMap::from([(0, 1)]));

        // Crash after the manifest, before the move: the open completes the commit.
        store.put(&staged, PutPayload::from(parquet_bytes(&[batch(&[2])], 3).unwrap())).await.unwrap();
        let manifest = Manifest { offsets: BTreeMap::from([(0, 2)]), files: vec![file.to_string()] };
        store.put(&location.path("_manifests/events/000000000002.manifest"), PutPayload::from(manifest.to_bytes())).await.unwrap();
        let recovered = DatasetArchive::open(&location, "events", 3).await.unwrap();
        assert!(dir.path().join(file).exists());
        assert_eq!(recovered.next_offsets(), &BTreeMap::from([(0, 2)]));
        assert_eq!(visible(&dir.path().join("events")).len(), 2);
    }
}
