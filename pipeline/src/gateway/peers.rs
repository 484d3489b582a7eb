//! Tenant rate quotas hold for all gateways together, not per gateway: every
//! gateway joins one consumer group on a topic of [`SLOTS`] empty partitions
//! and admits the share of each tenant's rate that its partitions are of all
//! of them (two gateways: 1/2 each; three: 22, 21 and 21 of 64). A gateway
//! that stops loses its partitions at its session timeout and the others'
//! shares grow. The group is the only coordination: no round trip per
//! request, nothing more to run. Exact when the load balancer spreads requests
//! over the gateways (round robin, least connections), the usual set-up; a
//! client pinned to one gateway gets that gateway's share. Each gateway keeps
//! the tenant's whole burst (a batch as large as the burst still fits), so
//! only the rate is divided.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use notiflow_connector::{AssignmentChange, BatchLimits, LogReader, Source, TopicAdmin, TopicSpec};
use notiflow_kafka::{KafkaAdmin, KafkaConfig, KafkaReader, KafkaSource};

pub const MEMBERS_TOPIC: &str = "notify.gateway.members";

/// Partitions of the members topic: the resolution of a share.
pub const SLOTS: i32 = 64;

/// How long a starting gateway waits for its first share before it serves with the whole rate.
const JOIN_WAIT: Duration = Duration::from_secs(30);

/// This gateway's share of every tenant's rate (1.0 alone).
#[derive(Clone)]
pub struct Share(Arc<AtomicU64>);

impl Share {
    pub fn whole() -> Share {
        Share(Arc::new(AtomicU64::new(1f64.to_bits())))
    }

    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    fn set(&self, share: f64) {
        self.0.store(share.to_bits(), Ordering::Relaxed);
    }
}

/// Joins the gateways' group (`group`) on `topic` and keeps the share up to date;
/// returns once the first share is known (or after [`JOIN_WAIT`]).
pub async fn join(kafka: &KafkaConfig, topic: &str, group: &str) -> anyhow::Result<Share> {
    KafkaAdmin::new(kafka)?.ensure_topics(&[TopicSpec::new(topic, SLOTS)]).await?;
    // A member that subscribes before the new topic's partitions are visible is given none, and
    // librdkafka looks again only at its next metadata refresh (minutes).
    let reader = KafkaReader::new(kafka);
    let deadline = tokio::time::Instant::now() + JOIN_WAIT;
    while reader.end_offsets(topic).await.map_or(0, |ends| ends.len()) < SLOTS as usize && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut source = KafkaSource::new(kafka, group, &[topic], "latest")?;
    let share = Share::whole();
    let (joined_tx, mut joined) = tokio::sync::watch::channel(false);
    let published = share.clone();
    tokio::spawn(async move {
        let mut owned: HashSet<(Arc<str>, i32)> = HashSet::new();
        let limits = BatchLimits { max_records: 1, max_wait: Duration::from_millis(500) };
        loop {
            // Nothing is ever written to the topic: reading only keeps the membership alive.
            if let Err(err) = source.next_batch(limits).await {
                tracing::warn!(%err, "gateway membership");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let changes = source.assignment_changes();
            if let Some(share) = apply(&mut owned, changes) {
                tracing::info!(owned = owned.len(), of = SLOTS, share = format!("{share:.3}"), "tenant rate quotas: this gateway's share");
                metrics::gauge!("notiflow_gateway_rate_share").set(share);
                published.set(share);
                joined_tx.send_replace(true);
            }
        }
    });
    if tokio::time::timeout(JOIN_WAIT, joined.wait_for(|j| *j)).await.is_err() {
        tracing::warn!("no share of the tenant rate quotas after {} s: serving with the whole rate until the group answers", JOIN_WAIT.as_secs());
    }
    Ok(share)
}

/// Applies a rebalance; the new share once partitions were assigned. A revoke
/// alone keeps the old share: eager rebalancing revokes everything before it
/// assigns, and a gateway refusing every request meanwhile would be worse than
/// admitting its old share for that moment.
fn apply(owned: &mut HashSet<(Arc<str>, i32)>, changes: Vec<AssignmentChange>) -> Option<f64> {
    let mut assigned = false;
    for change in changes {
        match change {
            AssignmentChange::Assigned(partitions) => {
                assigned = true;
                owned.extend(partitions);
            }
            AssignmentChange::Revoked(partitions) => partitions.iter().for_each(|p| {
                owned.remove(p);
            }),
        }
    }
    assigned.then(|| owned.len() as f64 / SLOTS as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_changes_when_partitions_are_assigned_not_while_revoked() {
        let topic: Arc<str> = Arc::from(MEMBERS_TOPIC);
        let mut owned = HashSet::new();
        let all = (0..SLOTS).map(|p| (topic.clone(), p)).collect::<Vec<_>>();
        assert_eq!(apply(&mut owned, vec![AssignmentChange::Assigned(all.clone())]), Some(1.0));
        // A second gateway joins: everything revoked first (share kept), then half assigned.
        assert_eq!(apply(&mut owned, vec![AssignmentChange::Revoked(all.clone())]), None);
        assert_eq!(apply(&mut owned, vec![AssignmentChange::Assigned(all[..32].to_vec())]), Some(0.5));
        assert_eq!(apply(&mut owned, vec![AssignmentChange::Revoked(all[..32].to_vec()), AssignmentChange::Assigned(all[..21].to_vec())]), Some(21.0 / 64.0));
    }
}
