//! Timers: records of a source with `'hold.until_field' = 'f'` enter the
//! pipeline only once the wall clock reaches their field `f` (deferred and
//! scheduled messages). Until then they are held here, per source partition,
//! and saved with that partition's checkpoint, so the consumer commits past
//! them and a restart or a rebalance brings them back (the new owner holds
//! them). A released record keeps its topic/partition/offset, so its outputs
//! get the same ids as in any earlier run and replays are suppressed.
//!
//! Held records live in memory: a million held messages of 1 KiB cost about
//! a gigabyte and each checkpoint of their partition rewrites them. Scheduling
//! months ahead at that volume needs a spill to disk first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use notiflow_connector::{Header, Record};

use super::state_bytes::Cursor;

/// (due ms, partition, offset): release order, then a stable tie-break.
type HeldKey = (i64, i32, i64);

/// The held records of one source topic.
#[derive(Default)]
pub struct Held {
    records: BTreeMap<HeldKey, Record>,
    /// `hold.wake_field`: a record whose field's value shows up as a key of
    /// the wake lookup (a recall of its request) is released at once.
    wake_field: Option<String>,
    /// Wake value -> the held records carrying it.
    by_wake: HashMap<String, BTreeSet<HeldKey>>,
    wake_of: HashMap<HeldKey, String>,
}

impl Held {
    pub fn waking_on(wake_field: Option<String>) -> Self {
        Held { wake_field, ..Held::default() }
    }

    /// The record's wake value (`hold.wake_field`), if the source has one.
    pub fn wake_value(&self, record: &Record) -> Option<String> {
        let field = self.wake_field.as_deref()?;
        let object: HashMap<&str, serde_json::Value> = serde_json::from_slice(record.payload.as_deref()?).ok()?;
        object.get(field)?.as_str().map(str::to_string)
    }

    pub fn hold(&mut self, due_ms: i64, record: Record) {
        let wake = self.wake_value(&record);
        self.hold_waking(due_ms, record, wake);
    }

    /// As `hold`, with the record's wake value already read.
    pub fn hold_waking(&mut self, due_ms: i64, record: Record, wake: Option<String>) {
        let key = (due_ms, record.partition, record.offset);
        if let Some(value) = wake {
            self.by_wake.entry(value.clone()).or_default().insert(key);
            self.wake_of.insert(key, value);
        }
        self.records.insert(key, record);
    }

    /// Removes and returns every record due at `now_ms`, earliest first.
    pub fn take_due(&mut self, now_ms: i64) -> Vec<Record> {
        let later = self.records.split_off(&(now_ms + 1, i32::MIN, i64::MIN));
        let due = std::mem::replace(&mut self.records, later);
        due.into_iter().map(|(key, record)| self.unindex(key, record)).collect()
    }

    /// Removes and returns the records whose wake value is `value`, earliest first.
    pub fn wake(&mut self, value: &str) -> Vec<Record> {
        let keys = self.by_wake.remove(value).unwrap_or_default();
        keys.into_iter().filter_map(|key| self.wake_of.remove(&key).and(self.records.remove(&key))).collect()
    }

    fn unindex(&mut self, key: HeldKey, record: Record) -> Record {
        if let Some(value) = self.wake_of.remove(&key)
            && let Some(keys) = self.by_wake.get_mut(&value)
        {
            keys.remove(&key);
            if keys.is_empty() {
                self.by_wake.remove(&value);
            }
        }
        record
    }

    pub fn next_due(&self) -> Option<i64> {
        self.records.keys().next().map(|k| k.0)
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn drop_partition(&mut self, partition: i32) {
        let mine: Vec<HeldKey> = self.records.keys().filter(|k| k.1 == partition).copied().collect();
        for key in mine {
            if let Some(record) = self.records.remove(&key) {
                self.unindex(key, record);
            }
        }
    }

    /// The held records of `partition`, for its checkpoint.
    pub fn snapshot(&self, partition: i32) -> Vec<u8> {
        let mine: Vec<(&HeldKey, &Record)> = self.records.iter().filter(|(k, _)| k.1 == partition).collect();
        let mut out = Vec::new();
        out.extend_from_slice(&(mine.len() as u64).to_le_bytes());
        for ((due, _, offset), record) in mine {
            out.extend_from_slice(&due.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            out.extend_from_slice(&record.timestamp_ms.unwrap_or(i64::MIN).to_le_bytes());
            put_bytes(&mut out, record.key.as_deref());
            put_bytes(&mut out, record.payload.as_deref());
            out.extend_from_slice(&(record.headers.len() as u32).to_le_bytes());
            for header in &record.headers {
                put_bytes(&mut out, Some(header.name.as_bytes()));
                put_bytes(&mut out, Some(&header.value));
            }
        }
        out
    }

    /// Replaces the held records of `partition` with a snapshot's.
    pub fn restore(&mut self, topic: &Arc<str>, partition: i32, bytes: &[u8]) -> datafusion::common::Result<()> {
        self.drop_partition(partition);
        let mut r = Cursor::new(bytes);
        for _ in 0..r.u64()? {
            let (due, offset, timestamp) = (r.i64()?, r.i64()?, r.i64()?);
            let key = take_bytes(&mut r)?;
            let payload = take_bytes(&mut r)?;
            let mut headers = Vec::new();
            for _ in 0..r.u32()? {
                let name = take_bytes(&mut r)?.unwrap_or_default();
                let value = take_bytes(&mut r)?.unwrap_or_default();
                headers.push(Header::new(String::from_utf8_lossy(&name).as_ref(), value));
            }
            let timestamp_ms = (timestamp != i64::MIN).then_some(timestamp);
            let record = Record { topic: topic.clone(), partition, offset, key, payload, timestamp_ms, headers };
            self.hold(due, record);
        }
        Ok(())
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
        Some(b) => {
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        }
    }
}

fn take_bytes(r: &mut Cursor<'_>) -> datafusion::common::Result<Option<Vec<u8>>> {
    match r.u32()? {
        u32::MAX => Ok(None),
        len => Ok(Some(r.take(len as usize)?.to_vec())),
    }
}

/// When a record is due: its JSON field `field` as RFC 3339, as a naive
/// `YYYY-MM-DDTHH:MM:SS[.f]` (UTC, how the JSON sinks write TIMESTAMPs) or as
/// epoch milliseconds. A missing or null field is due at once.
pub fn due_ms(payload: Option<&[u8]>, field: &str) -> Result<Option<i64>, String> {
    let Some(payload) = payload else { return Ok(None) };
    let object: std::collections::HashMap<&str, &serde_json::value::RawValue> =
        serde_json::from_slice(payload).map_err(|e| format!("not a JSON object: {e}"))?;
    let Some(raw) = object.get(field) else { return Ok(None) };
    match serde_json::from_str::<serde_json::Value>(raw.get()).map_err(|e| e.to_string())? {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::Number(n) => n.as_i64().map(Some).ok_or_else(|| format!("{field} = {n} is not epoch milliseconds")),
        serde_json::Value::String(text) => parse_instant(&text).map(Some).ok_or_else(|| format!("{field} = `{text}` is not a timestamp")),
        other => Err(format!("{field} = {other} is not a timestamp")),
    }
}

/// RFC 3339, or `YYYY-MM-DD[T ]HH:MM:SS[.fff]` in UTC (what the JSON sinks write): epoch ms.
pub(crate) fn parse_instant(text: &str) -> Option<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(t.timestamp_millis());
    }
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .find_map(|f| chrono::NaiveDateTime::parse_from_str(text, f).ok())
        .map(|t| t.and_utc().timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(partition: i32, offset: i64, payload: &str) -> Record {
        Record {
            topic: Arc::from("t"),
            partition,
            offset,
            key: Some(b"k".to_vec()),
            payload: Some(payload.as_bytes().to_vec()),
            timestamp_ms: Some(5),
            headers: vec![Header::new("h", b"v".to_vec())],
        }
    }

    #[test]
    fn releases_in_due_order_and_survives_a_snapshot() {
        let mut held = Held::default();
        held.hold(300, record(0, 1, "a"));
        held.hold(100, record(1, 2, "b"));
        held.hold(200, record(0, 3, "c"));
        assert_eq!(held.next_due(), Some(100));
        let mut restored = Held::default();
        restored.restore(&Arc::from("t"), 0, &held.snapshot(0)).unwrap();
        assert_eq!(restored.len(), 2, "only partition 0's records");
        assert_eq!(restored.take_due(250).iter().map(|r| r.offset).collect::<Vec<_>>(), vec![3]);
        let last = restored.take_due(300);
        assert_eq!(last.len(), 1);
        let original = record(0, 1, "a");
        assert_eq!((last[0].key.clone(), last[0].payload.clone(), last[0].timestamp_ms), (original.key, original.payload, original.timestamp_ms));
        assert_eq!(last[0].headers[0].value, b"v".to_vec());
        assert!(restored.is_empty());
        assert_eq!(held.take_due(150).iter().map(|r| r.offset).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn a_wake_value_releases_its_records_at_once_and_only_those() {
        let mut held = Held::waking_on(Some("recall_key".into()));
        held.hold(300, record(0, 1, r#"{"recall_key":"acme/r-1"}"#));
        held.hold(100, record(0, 2, r#"{"recall_key":"acme/r-2"}"#));
        held.hold(200, record(1, 3, r#"{"recall_key":"acme/r-1"}"#));
        held.hold(400, record(1, 4, r#"{"other":1}"#));
        assert_eq!(held.wake("acme/r-1").iter().map(|r| r.offset).collect::<Vec<_>>(), vec![3, 1], "earliest due first");
        assert!(held.wake("acme/r-1").is_empty(), "woken once");
        assert_eq!(held.len(), 2);
        // Released by time: the index forgets it too.
        assert_eq!(held.take_due(150).len(), 1);
        assert!(held.wake("acme/r-2").is_empty());
        // Restored records are indexed again.
        let mut restored = Held::waking_on(Some("recall_key".into()));
        held.hold(500, record(1, 5, r#"{"recall_key":"acme/r-9"}"#));
        restored.restore(&Arc::from("t"), 1, &held.snapshot(1)).unwrap();
        assert_eq!(restored.wake("acme/r-9").len(), 1);
        held.drop_partition(1);
        assert!(held.is_empty() && held.wake("acme/r-9").is_empty());
    }

    #[test]
    fn due_times_in_every_written_form() {
        let due = |json: &str| due_ms(Some(json.as_bytes()), "release_at");
        assert_eq!(due(r#"{"release_at":"2026-11-23T10:00:00Z"}"#), Ok(Some(1_795_428_000_000)));
        assert_eq!(due(r#"{"release_at":"2026-11-23T18:00:00+08:00"}"#), Ok(Some(1_795_428_000_000)));
        assert_eq!(due(r#"{"release_at":"2026-11-23T10:00:00"}"#), Ok(Some(1_795_428_000_000)));
        assert_eq!(due(r#"{"release_at":1795428000000}"#), Ok(Some(1_795_428_000_000)));
        assert_eq!(due(r#"{"release_at":null,"x":1}"#), Ok(None));
        assert_eq!(due(r#"{"x":1}"#), Ok(None));
        assert!(due(r#"{"release_at":"tomorrow"}"#).unwrap_err().contains("not a timestamp"));
        assert!(due("[1]").is_err());
    }
}
