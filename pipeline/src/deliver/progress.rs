//! Which offsets may be committed: deliveries finish out of order (another
//! channel, a retry), so a partition's commit point is its oldest unfinished
//! delivery. After a crash only unfinished ones are read again.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use notiflow_connector::{AssignmentChange, Offsets};

#[derive(Default)]
struct Partition {
    unfinished: BTreeSet<i64>,
    /// The offsets this process read, `read_from..read_to` (a partition is read in order).
    read_from: i64,
    read_to: i64,
}

#[derive(Default)]
pub struct Progress {
    partitions: HashMap<(Arc<str>, i32), Partition>,
}

impl Progress {
    /// A record read: false when this process read it before (a consumer that
    /// rejoined its group after an outage reads again from the last commit):
    /// it is finished or in flight here already and must not be sent again.
    pub fn started(&mut self, topic: &Arc<str>, partition: i32, offset: i64) -> bool {
        let p = self.partitions.entry((topic.clone(), partition)).or_insert(Partition { unfinished: BTreeSet::new(), read_from: offset, read_to: offset });
        if (p.read_from..p.read_to).contains(&offset) {
            return false;
        }
        // Below where this process first read: new here (committed offsets only move forward, so
        // only an operator's offset reset leads here).
        p.unfinished.insert(offset);
        p.read_to = p.read_to.max(offset + 1);
        true
    }

    pub fn finished(&mut self, topic: &Arc<str>, partition: i32, offset: i64) {
        if let Some(p) = self.partitions.get_mut(&(topic.clone(), partition)) {
            p.unfinished.remove(&offset);
        }
    }

    pub fn unfinished(&self) -> usize {
        self.partitions.values().map(|p| p.unfinished.len()).sum()
    }

    /// Partitions a rebalance took away are no longer this process's to
    /// commit: their queued deliveries are dropped (see `Hold`) and the new
    /// owner reads them again. Should one come back, it starts afresh.
    pub fn forget_revoked(&mut self, changes: &[AssignmentChange]) {
        for change in changes {
            if let AssignmentChange::Revoked(partitions) = change {
                partitions.iter().for_each(|key| {
                    self.partitions.remove(key);
                });
            }
        }
    }

    /// The next offset to read per partition of `topic` after a restart.
    pub fn committable(&self, topic: &str) -> Offsets {
        Self::offsets(self.partitions.iter().filter(|((t, _), _)| t.as_ref() == topic))
    }

    /// As [`committable`](Self::committable), for these partitions (being handed over).
    pub fn committable_of(&self, partitions: &[(Arc<str>, i32)]) -> Offsets {
        Self::offsets(partitions.iter().filter_map(|key| self.partitions.get_key_value(key)))
    }

    fn offsets<'a>(partitions: impl Iterator<Item = (&'a (Arc<str>, i32), &'a Partition)>) -> Offsets {
        let mut offsets = Offsets::default();
        for ((topic, partition), p) in partitions {
            let next = p.unfinished.first().copied().unwrap_or(p.read_to);
            offsets.insert(topic.clone(), *partition, next);
        }
        offsets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_point_is_the_oldest_unfinished_delivery() {
        let topic: Arc<str> = Arc::from("notify.dispatch.low");
        let mut progress = Progress::default();
        assert!((10..15).all(|o| progress.started(&topic, 0, o)));
        progress.finished(&topic, 0, 10);
        progress.finished(&topic, 0, 12);
        assert_eq!(progress.committable(&topic).get("notify.dispatch.low", 0), Some(11));
        progress.finished(&topic, 0, 11);
        assert_eq!(progress.committable(&topic).get("notify.dispatch.low", 0), Some(13));
        (13..15).for_each(|o| progress.finished(&topic, 0, o));
        assert_eq!((progress.committable(&topic).get("notify.dispatch.low", 0), progress.unfinished()), (Some(15), 0));
    }

    #[test]
    fn records_read_again_after_a_rejoin_are_not_started_twice() {
        let topic: Arc<str> = Arc::from("notify.dispatch.normal");
        let mut progress = Progress::default();
        assert!((100..110).all(|o| progress.started(&topic, 0, o)));
        progress.finished(&topic, 0, 100);
        // The group lost us in an outage; back, the consumer starts again at the last commit (101).
        assert!((101..110).all(|o| !progress.started(&topic, 0, o)), "read before: finished or in flight here");
        assert!(progress.started(&topic, 0, 110), "new records still start");
        // Offsets reset below where this process first read: new here.
        assert!(progress.started(&topic, 0, 95) && progress.started(&topic, 0, 96));
        assert_eq!(progress.unfinished(), 12);
    }

    #[test]
    fn a_revoked_partition_is_neither_committed_nor_remembered() {
        let (low, normal): (Arc<str>, Arc<str>) = (Arc::from("notify.dispatch.low"), Arc::from("notify.dispatch.normal"));
        let mut progress = Progress::default();
        assert!((0..5).all(|o| progress.started(&low, 0, o) && progress.started(&low, 1, o) && progress.started(&normal, 0, o)));
        progress.forget_revoked(&[AssignmentChange::Revoked(vec![(low.clone(), 1)])]);
        let committable = progress.committable(&low);
        assert_eq!((committable.get("notify.dispatch.low", 0), committable.get("notify.dispatch.low", 1)), (Some(0), None));
        assert_eq!(committable.get("notify.dispatch.normal", 0), None, "each reader commits its own topic");
        let handed_over = progress.committable_of(&[(low.clone(), 0), (normal.clone(), 0), (low.clone(), 1)]);
        assert_eq!(handed_over.iter().count(), 2, "a forgotten partition has nothing to hand over");
        // Given back later, its records are new here: the new owner in between may not have sent them.
        assert!(progress.started(&low, 1, 3));
    }
}
