//! Little-endian encoding helpers for operator state snapshots.

use std::collections::HashMap;

use datafusion::common::{DataFusionError, Result};

/// The unit operator state moves in between instances: one input partition
/// of one source table, `(source index, partition)`. Kafka partitions state
/// by record key, so each unit's state depends only on its own records.
pub type Unit = (i32, i32);

/// An operator whose state is kept per [`Unit`], so that units can be
/// checkpointed, restored and dropped one by one as partitions move.
pub trait UnitState {
    /// The state of `units` (those it has; others are left out).
    fn snapshot_units(&mut self, units: &[Unit]) -> Result<Vec<u8>>;
    /// Adds the units in `bytes` (written by `snapshot_units`), replacing them if held.
    fn restore_units(&mut self, bytes: &[u8]) -> Result<()>;
    /// Forgets `units` (their partitions were revoked).
    fn drop_units(&mut self, units: &[Unit]);
}

pub struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, at: 0 }
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let slice = self.bytes.get(self.at..self.at + n).ok_or_else(|| DataFusionError::Internal("truncated operator state".into()))?;
        self.at += n;
        Ok(slice)
    }

    pub fn rest(&mut self) -> &'a [u8] {
        let rest = &self.bytes[self.at..];
        self.at = self.bytes.len();
        rest
    }

    pub fn is_done(&self) -> bool {
        self.at == self.bytes.len()
    }

    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    pub fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    pub fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    pub fn u128(&mut self) -> Result<u128> {
        Ok(u128::from_le_bytes(self.take(16)?.try_into().expect("16 bytes")))
    }

    /// A map written by [`put_watermarks`].
    pub fn watermarks(&mut self) -> Result<HashMap<(i32, i32), i64>> {
        let mut map = HashMap::new();
        for _ in 0..self.u64()? {
            let key = (self.i32()?, self.i32()?);
            map.insert(key, self.i64()?);
        }
        Ok(map)
    }
}

/// Per (source, partition) watermarks, in a stable order.
pub fn put_watermarks(out: &mut Vec<u8>, watermarks: &HashMap<(i32, i32), i64>) {
    let mut entries: Vec<_> = watermarks.iter().collect();
    entries.sort_unstable();
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for ((source, partition), watermark) in entries {
        out.extend_from_slice(&source.to_le_bytes());
        out.extend_from_slice(&partition.to_le_bytes());
        out.extend_from_slice(&watermark.to_le_bytes());
    }
}

/// One RecordBatch as an Arrow IPC stream.
pub fn batch_to_ipc(batch: &arrow::array::RecordBatch) -> Result<Vec<u8>> {
    let mut ipc = Vec::new();
    let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut ipc, &batch.schema())?;
    writer.write(batch)?;
    writer.finish()?;
    drop(writer);
    Ok(ipc)
}

/// The batches of an Arrow IPC stream.
pub fn batches_from_ipc(bytes: &[u8]) -> Result<Vec<arrow::array::RecordBatch>> {
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}
