//! Checkpoints: operator state, source offsets and output positions, written
//! together atomically (temp file, fsync, rename). See docs/exactly-once.md.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

const MAGIC: &[u8; 6] = b"NFCP1\n";
const KEEP: usize = 2;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint {
    pub epoch: u64,
    /// Next offset to process per (topic, partition): the state reflects every record below.
    pub offsets: BTreeMap<(String, i32), i64>,
    /// (flow, stage) -> operator state.
    pub operators: BTreeMap<(u32, u32), Vec<u8>>,
    /// Per output (topic, partition): the offset after our last durable write
    /// (or the partition end when we started). Outputs written after this
    /// checkpoint lie at or beyond it.
    pub emitted_end: BTreeMap<(String, i32), i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint I/O at {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("checkpoint {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// One folder of checkpoints (one per pipeline consumer group).
pub struct CheckpointStore {
    dir: PathBuf,
}

impl CheckpointStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CheckpointStore { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
        move |source| CheckpointError::Io { path: path.to_path_buf(), source }
    }

    /// Epochs on disk, oldest first.
    fn epochs(&self) -> Result<Vec<u64>, CheckpointError> {
        if !self.dir.exists() {
            return Ok(vec![]);
        }
        let mut epochs: Vec<u64> = fs::read_dir(&self.dir)
            .map_err(Self::io(&self.dir))?
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.strip_prefix("checkpoint-")?.strip_suffix(".bin")?.parse().ok())
            .collect();
        epochs.sort_unstable();
        Ok(epochs)
    }

    fn path(&self, epoch: u64) -> PathBuf {
        self.dir.join(format!("checkpoint-{epoch:012}.bin"))
    }

    /// The newest checkpoint that reads back whole (a torn newest one is skipped).
    pub fn load_latest(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        for epoch in self.epochs()?.into_iter().rev() {
            let path = self.path(epoch);
            let bytes = fs::read(&path).map_err(Self::io(&path))?;
            match decode(&bytes) {
                Ok(checkpoint) => return Ok(Some(checkpoint)),
                Err(reason) => tracing::warn!(path = %path.display(), %reason, "skipping unreadable checkpoint"),
            }
        }
        Ok(None)
    }

    pub fn write(&self, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        fs::create_dir_all(&self.dir).map_err(Self::io(&self.dir))?;
        let path = self.path(checkpoint.epoch);
        let temp = self.dir.join(format!(".checkpoint-{}.tmp", checkpoint.epoch));
        let mut file = fs::File::create(&temp).map_err(Self::io(&temp))?;
        file.write_all(&encode(checkpoint)).map_err(Self::io(&temp))?;
        file.sync_all().map_err(Self::io(&temp))?;
        fs::rename(&temp, &path).map_err(Self::io(&path))?;
        // The rename is durable only once the directory is synced.
        fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(Self::io(&self.dir))?;
        let epochs = self.epochs()?;
        for old in epochs.iter().take(epochs.len().saturating_sub(KEEP)) {
            let _ = fs::remove_file(self.path(*old));
        }
        Ok(())
    }
}

fn encode(c: &Checkpoint) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&c.epoch.to_le_bytes());
    put_offsets(&mut body, &c.offsets);
    body.extend_from_slice(&(c.operators.len() as u64).to_le_bytes());
    for ((flow, stage), state) in &c.operators {
        body.extend_from_slice(&flow.to_le_bytes());
        body.extend_from_slice(&stage.to_le_bytes());
        body.extend_from_slice(&(state.len() as u64).to_le_bytes());
        body.extend_from_slice(state);
    }
    put_offsets(&mut body, &c.emitted_end);
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&Sha256::digest(&body));
    out.extend_from_slice(&body);
    out
}

fn put_offsets(out: &mut Vec<u8>, offsets: &BTreeMap<(String, i32), i64>) {
    out.extend_from_slice(&(offsets.len() as u64).to_le_bytes());
    for ((topic, partition), offset) in offsets {
        out.extend_from_slice(&(topic.len() as u32).to_le_bytes());
        out.extend_from_slice(topic.as_bytes());
        out.extend_from_slice(&partition.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
    }
}

fn decode(bytes: &[u8]) -> Result<Checkpoint, String> {
    let rest = bytes.strip_prefix(MAGIC.as_slice()).ok_or("not a notiflow checkpoint")?;
    if rest.len() < 32 {
        return Err("truncated".into());
    }
    let (digest, body) = rest.split_at(32);
    if Sha256::digest(body).as_slice() != digest {
        return Err("checksum mismatch (torn write?)".into());
    }
    let mut r = Cursor { bytes: body, at: 0 };
    let epoch = r.u64()?;
    let offsets = r.offsets()?;
    let mut operators = BTreeMap::new();
    for _ in 0..r.u64()? {
        let (flow, stage) = (r.u32()?, r.u32()?);
        let len = r.u64()? as usize;
        operators.insert((flow, stage), r.take(len)?.to_vec());
    }
    let emitted_end = r.offsets()?;
    Ok(Checkpoint { epoch, offsets, operators, emitted_end })
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let slice = self.bytes.get(self.at..self.at + n).ok_or("truncated")?;
        self.at += n;
        Ok(slice)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn offsets(&mut self) -> Result<BTreeMap<(String, i32), i64>, String> {
        let mut map = BTreeMap::new();
        for _ in 0..self.u64()? {
            let len = self.u32()? as usize;
            let topic = String::from_utf8(self.take(len)?.to_vec()).map_err(|e| e.to_string())?;
            let partition = i32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes"));
            map.insert((topic, partition), self.i64()?);
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(epoch: u64) -> Checkpoint {
        Checkpoint {
            epoch,
            offsets: [(("notify.requests".to_string(), 0), 41), (("notify.requests".to_string(), 3), 7)].into(),
            operators: [((0, 1), vec![1, 2, 3]), ((2, 1), vec![])].into(),
            emitted_end: [(("notify.dispatch.high".to_string(), 1), 99)].into(),
        }
    }

    #[test]
    fn round_trips_and_keeps_the_last_two() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path().join("group"));
        assert_eq!(store.load_latest().unwrap(), None);
        for epoch in 1..=4 {
            store.write(&sample(epoch)).unwrap();
        }
        assert_eq!(store.load_latest().unwrap(), Some(sample(4)));
        assert_eq!(store.epochs().unwrap(), vec![3, 4]);
    }

    #[test]
    fn a_torn_newest_checkpoint_falls_back_to_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path());
        store.write(&sample(1)).unwrap();
        store.write(&sample(2)).unwrap();
        let newest = store.path(2);
        let bytes = fs::read(&newest).unwrap();
        fs::write(&newest, &bytes[..bytes.len() - 3]).unwrap();
        assert_eq!(store.load_latest().unwrap(), Some(sample(1)));
    }
}
