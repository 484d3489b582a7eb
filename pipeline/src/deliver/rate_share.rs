//! Provider rate limits hold for the cluster, not per `deliver` process: each
//! instance takes the share of every account's rate that the partitions it
//! reads (dispatch lanes and parked topics) are of all of them. The consumer group hands every partition to
//! one member, so the shares add up to 1 at any time (eager rebalancing revokes
//! before it assigns), and dispatch records are spread over partitions by
//! recipient, so an instance's traffic follows its share. No coordination
//! beyond the group itself: nothing to run, nothing to fail. Chosen over a
//! coordination topic (a round trip per token) and over routing each account
//! to one partition owner (one process would carry an account's whole load).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use notiflow_connector::AssignmentChange;
use notiflow_delivery::ProviderGroup;

pub struct RateShare {
    groups: Vec<Arc<ProviderGroup>>,
    owned: Mutex<HashSet<(Arc<str>, i32)>>,
    /// Partitions in all (every lane and parked topic's).
    total: usize,
}

impl RateShare {
    /// Until the group assigns partitions, an instance holds the whole rate
    /// (alone, as with the embedded bus, it keeps it).
    pub fn new(groups: Vec<Arc<ProviderGroup>>, total: usize) -> Self {
        RateShare { groups, owned: Mutex::default(), total: total.max(1) }
    }

    /// A lane reader's rebalance: the share moves with the partitions.
    pub fn apply(&self, changes: Vec<AssignmentChange>) {
        if changes.is_empty() {
            return;
        }
        let mut owned = self.owned.lock().unwrap_or_else(|e| e.into_inner());
        for change in changes {
            match change {
                AssignmentChange::Assigned(partitions) => owned.extend(partitions),
                AssignmentChange::Revoked(partitions) => partitions.iter().for_each(|p| {
                    owned.remove(p);
                }),
            }
        }
        let share = owned.len() as f64 / self.total as f64;
        tracing::info!(owned = owned.len(), of = self.total, share = format!("{share:.3}"), "provider rate limits: this instance's share");
        metrics::gauge!("notiflow_deliver_rate_share").set(share);
        self.groups.iter().for_each(|g| g.set_share(share));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_follows_the_partitions_owned() {
        let share = RateShare::new(vec![], 6);
        let topic: Arc<str> = Arc::from("notify.dispatch.normal");
        share.apply(vec![AssignmentChange::Assigned((0..3).map(|p| (topic.clone(), p)).collect())]);
        assert_eq!(share.owned.lock().unwrap().len(), 3);
        share.apply(vec![AssignmentChange::Revoked(vec![(topic.clone(), 0), (topic.clone(), 1)])]);
        assert_eq!(share.owned.lock().unwrap().len(), 1);
    }
}
