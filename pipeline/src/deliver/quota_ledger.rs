//! Tenant daily quotas exact for the cluster: every `deliver` instance claims
//! a unit of a tenant's quota on one single-partition topic before it sends,
//! and every instance reads the claims in the same (log) order and judges
//! them by the same rule: a claim is granted when its delivery already holds
//! a unit that day, or fewer than the claim's limit were granted before it.
//! The log is the counter, so N instances grant exactly the quota between
//! them, and a restarted instance rebuilds the day's count by reading it. A
//! delivery claimed again after a crash gets its earlier verdict back without
//! taking a second unit.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notiflow_connector::{OutRecord, Sink, TopicAdmin, TopicSpec};
use notiflow_kafka::{KafkaAdmin, KafkaConfig, KafkaSink};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::follow::{Replay, follow_topic};

pub const CLAIMS_TOPIC: &str = "notify.quota.claims";

/// How long a claimant waits to read its claims back before it gives up (the brokers are away).
const VERDICT_WAIT: Duration = Duration::from_secs(60);

/// One delivery's claim on its tenant's quota for a channel and UTC day.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claim {
    pub tenant: String,
    pub channel: String,
    pub day: i64,
    pub delivery_id: String,
    /// The quota as the claimant read it from the registry: every reader judges with the claim's own limit.
    pub limit: u64,
}

/// The day's grants, built from the claims in log order.
#[derive(Default)]
struct Book {
    granted: HashMap<(String, String, i64), HashSet<String>>,
    verdicts: HashMap<(i64, String), bool>,
}

impl Book {
    fn apply(&mut self, claim: Claim) {
        let units = self.granted.entry((claim.tenant, claim.channel, claim.day)).or_default();
        let granted = units.contains(&claim.delivery_id) || (units.len() as u64) < claim.limit;
        if granted {
            units.insert(claim.delivery_id.clone());
        }
        self.verdicts.insert((claim.day, claim.delivery_id), granted);
    }
}

pub struct QuotaLedger {
    book: Arc<(Mutex<Book>, Notify)>,
    sink: KafkaSink,
    topic: Arc<str>,
}

impl QuotaLedger {
    /// Creates the claims topic if needed and replays today's claims.
    pub async fn open(kafka: &KafkaConfig, topic: &str) -> anyhow::Result<QuotaLedger> {
        // One partition: one order of claims for every reader.
        KafkaAdmin::new(kafka)?.ensure_topics(&[TopicSpec::new(topic, 1)]).await?;
        let book: Arc<(Mutex<Book>, Notify)> = Arc::default();
        let applied = book.clone();
        let today_starts = day_of(chrono::Utc::now().timestamp_millis()) * 86_400_000;
        let mut ready = follow_topic(kafka, topic, Replay::Since(today_starts), move |record| {
            let Some(Ok(claim)) = record.payload.as_deref().map(serde_json::from_slice::<Claim>) else { return };
            applied.0.lock().unwrap_or_else(|e| e.into_inner()).apply(claim);
            applied.1.notify_waiters();
        })
        .await?;
        ready.wait_for(|done| *done).await?;
        let used: usize = book.0.lock().unwrap_or_else(|e| e.into_inner()).granted.values().map(HashSet::len).sum();
        tracing::info!(used, "today's quota claims read");
        Ok(QuotaLedger { book, sink: KafkaSink::patient(kafka)?, topic: Arc::from(topic) })
    }

    /// Claims a unit for each delivery; returns each one's verdict (true: it may be sent).
    pub async fn claim(&self, claims: Vec<Claim>) -> anyhow::Result<HashMap<(i64, String), bool>> {
        if claims.is_empty() {
            return Ok(HashMap::new());
        }
        let wanted: Vec<(i64, String)> = claims.iter().map(|c| (c.day, c.delivery_id.clone())).collect();
        let records = claims
            .iter()
            .map(|c| OutRecord {
                topic: self.topic.clone(),
                key: Some(format!("{}/{}/{}", c.tenant, c.channel, c.day).into_bytes()),
                payload: serde_json::to_vec(c).expect("a claim serializes"),
                headers: vec![],
            })
            .collect();
        // Verdicts of earlier claims of the same deliveries are stale: wait for these claims' own.
        {
            let mut book = self.book.0.lock().unwrap_or_else(|e| e.into_inner());
            wanted.iter().for_each(|key| {
                book.verdicts.remove(key);
            });
        }
        self.sink.send_all(records).await?;
        let judged = async {
            loop {
                let notified = self.book.1.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let book = self.book.0.lock().unwrap_or_else(|e| e.into_inner());
                    if wanted.iter().all(|key| book.verdicts.contains_key(key)) {
                        return wanted.iter().map(|key| (key.clone(), book.verdicts[key])).collect::<HashMap<_, _>>();
                    }
                }
                notified.await;
            }
        };
        tokio::time::timeout(VERDICT_WAIT, judged).await.map_err(|_| {
            anyhow::Error::from(notiflow_connector::ConnectorError::Transient {
                service: "kafka",
                message: format!("quota claims not read back from {} in {} s", self.topic, VERDICT_WAIT.as_secs()),
            })
        })
    }
}

pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(86_400_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(delivery: &str, limit: u64) -> Claim {
        Claim { tenant: "acme".into(), channel: "sms".into(), day: 20_000, delivery_id: delivery.into(), limit }
    }

    #[test]
    fn claims_in_log_order_grant_exactly_the_quota_and_a_repeat_keeps_its_verdict() {
        let mut book = Book::default();
        for d in ["d1", "d2", "d3", "d4"] {
            book.apply(claim(d, 2));
        }
        let verdict = |book: &Book, d: &str| book.verdicts[&(20_000, d.to_string())];
        assert_eq!([verdict(&book, "d1"), verdict(&book, "d2"), verdict(&book, "d3"), verdict(&book, "d4")], [true, true, false, false]);
        // After a crash the same deliveries are claimed again: same verdicts, no unit taken twice.
        book.apply(claim("d2", 2));
        book.apply(claim("d3", 2));
        assert!(verdict(&book, "d2") && !verdict(&book, "d3"));
        // A raised quota (the claim carries it) grants the next claim.
        book.apply(claim("d5", 3));
        assert!(verdict(&book, "d5"));
        assert_eq!(book.granted.values().map(HashSet::len).sum::<usize>(), 3);
    }
}
