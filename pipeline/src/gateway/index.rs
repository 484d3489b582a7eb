//! Which request ids were already written to `notify.requests`, so a retried
//! POST is answered from the first write instead of writing again. Filled from
//! the topic itself (requests written by Kafka producers and by other gateway
//! instances count too) and by this gateway's own writes, including ones
//! still waiting for the broker: a concurrent retry waits for that outcome.

use std::sync::Mutex;

use notiflow_connector::Record;
use tokio::sync::watch;
use xxhash_rust::xxh3::{xxh3_64, xxh3_128};

use super::recent::Recent;

/// A request seen on the topic.
pub struct SeenRequest {
    pub tenant: String,
    pub request_id: String,
    pub recall: bool,
    pub fingerprint: u64,
    pub at_ms: i64,
}

impl SeenRequest {
    /// Reads the record key (`tenant/request_id`) and the `type`; records the
    /// pipeline will dead-letter (no such key, not JSON) are not requests.
    pub fn from_record(record: &Record) -> Option<SeenRequest> {
        #[derive(serde::Deserialize)]
        struct Kind<'a> {
            #[serde(rename = "type", borrow, default)]
            kind: Option<&'a str>,
        }
        let key = std::str::from_utf8(record.key.as_deref()?).ok()?;
        let (tenant, request_id) = key.split_once('/')?;
        let payload = record.payload.as_deref()?;
        let kind: Kind = serde_json::from_slice(payload).ok()?;
        Some(SeenRequest {
            tenant: tenant.to_string(),
            request_id: request_id.to_string(),
            recall: kind.kind == Some("recall"),
            fingerprint: xxh3_64(payload),
            at_ms: record.timestamp_ms.unwrap_or_else(|| chrono::Utc::now().timestamp_millis()),
        })
    }
}

/// Identity of a request for idempotency: a recall shares its send's request id.
pub fn request_key(tenant: &str, request_id: &str, recall: bool) -> u128 {
    let mut bytes = Vec::with_capacity(tenant.len() + request_id.len() + 3);
    bytes.extend_from_slice(tenant.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(request_id.as_bytes());
    bytes.extend_from_slice(if recall { b"\0r" } else { b"\0s" });
    xxh3_128(&bytes)
}

pub fn fingerprint(payload: &[u8]) -> u64 {
    xxh3_64(payload)
}

/// What a caller about to write a request must do.
pub enum Claim {
    /// Not seen: write it, then `settle` the key.
    Write,
    /// Written before with the same content (`true`) or different content (`false`).
    Written { same: bool },
    /// Being written by another call right now: wait for its outcome (`true`: written).
    InProgress { same: bool, outcome: watch::Receiver<Option<bool>> },
}

enum SlotState {
    Written,
    Pending(watch::Sender<Option<bool>>),
}

struct Slot {
    fingerprint: u64,
    state: SlotState,
}

pub struct RequestIndex {
    slots: Mutex<Recent<u128, Slot>>,
}

/// A pending write stays until settled.
fn pending(slot: &Slot) -> bool {
    matches!(slot.state, SlotState::Pending(_))
}

impl RequestIndex {
    pub fn new(max_keys: usize, window_ms: i64) -> Self {
        RequestIndex { slots: Mutex::new(Recent::new(max_keys, window_ms)) }
    }

    /// A request on the topic: the first write of a key wins.
    pub fn observe(&self, seen: &SeenRequest) {
        let now = chrono::Utc::now().timestamp_millis();
        let mut slots = self.slots.lock().expect("index lock");
        if slots.too_old(seen.at_ms, now) {
            return;
        }
        let key = request_key(&seen.tenant, &seen.request_id, seen.recall);
        if slots.get(&key).is_none() {
            slots.insert(key, Slot { fingerprint: seen.fingerprint, state: SlotState::Written }, seen.at_ms);
        }
        slots.forget_old(now, pending);
    }

    pub fn claim(&self, key: u128, fingerprint: u64) -> Claim {
        let mut slots = self.slots.lock().expect("index lock");
        match slots.get(&key) {
            Some(slot) => {
                let same = slot.fingerprint == fingerprint;
                match &slot.state {
                    SlotState::Written => Claim::Written { same },
                    SlotState::Pending(tx) => Claim::InProgress { same, outcome: tx.subscribe() },
                }
            }
            None => {
                let (tx, _) = watch::channel(None);
                let now = chrono::Utc::now().timestamp_millis();
                slots.insert(key, Slot { fingerprint, state: SlotState::Pending(tx) }, now);
                slots.forget_old(now, pending);
                Claim::Write
            }
        }
    }

    /// The outcome of a `Claim::Write`: written, or released for a retry.
    pub fn settle(&self, key: u128, written: bool) {
        let mut slots = self.slots.lock().expect("index lock");
        let Some(slot) = slots.get_mut(&key) else { return };
        if let SlotState::Pending(tx) = &slot.state {
            tx.send_replace(Some(written));
        }
        if written {
            slot.state = SlotState::Written;
        } else {
            slots.remove(&key);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.lock().expect("index lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_written_once_and_retries_see_the_first_outcome() {
        let index = RequestIndex::new(100, 3_600_000);
        let key = request_key("acme", "r-1", false);
        assert!(matches!(index.claim(key, 7), Claim::Write));
        let Claim::InProgress { same: true, mut outcome } = index.claim(key, 7) else { panic!("a concurrent retry waits") };
        assert!(matches!(index.claim(key, 8), Claim::InProgress { same: false, .. }));
        index.settle(key, true);
        assert_eq!(*outcome.borrow_and_update(), Some(true));
        assert!(matches!(index.claim(key, 7), Claim::Written { same: true }));
        assert!(matches!(index.claim(key, 9), Claim::Written { same: false }));
        // A recall has its own identity.
        assert!(matches!(index.claim(request_key("acme", "r-1", true), 7), Claim::Write));
    }

    #[test]
    fn a_failed_write_releases_the_key_for_the_retry() {
        let index = RequestIndex::new(100, 3_600_000);
        let key = request_key("acme", "r-1", false);
        assert!(matches!(index.claim(key, 7), Claim::Write));
        index.settle(key, false);
        assert!(matches!(index.claim(key, 7), Claim::Write));
    }

    #[test]
    fn topic_records_count_and_the_oldest_are_forgotten_beyond_the_cap() {
        let index = RequestIndex::new(2, 3_600_000);
        let now = chrono::Utc::now().timestamp_millis();
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            index.observe(&SeenRequest {
                tenant: "acme".into(),
                request_id: id.to_string(),
                recall: false,
                fingerprint: 1,
                at_ms: now + i as i64,
            });
        }
        assert_eq!(index.len(), 2);
        assert!(matches!(index.claim(request_key("acme", "c", false), 1), Claim::Written { same: true }));
        assert!(matches!(index.claim(request_key("acme", "a", false), 1), Claim::Write), "the oldest was forgotten");
        // Older than the window: forgotten at once.
        index.observe(&SeenRequest {
            tenant: "acme".into(),
            request_id: "old".into(),
            recall: false,
            fingerprint: 1,
            at_ms: now - 7_200_000,
        });
        assert!(matches!(index.claim(request_key("acme", "old", false), 1), Claim::Write));
    }
}
