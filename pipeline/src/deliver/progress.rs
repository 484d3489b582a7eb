//! Which offsets may be committed: deliveries finish out of order (another
//! channel, a retry), so a partition's commit point is its oldest unfinished
//! delivery. After a crash only unfinished ones are read again.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use notiflow_connector::{AssignmentChange, Hold, Offsets};

#[derive(Default)]
struct Partition {
    unfinished: BTreeSet<i64>,
    /// The hold the reads of `read_from..read_to` came with: released (a rebalance took the partition
    /// and dropped its queued jobs) or kept (a lost session: the jobs were sent here).
    hold: Hold,
    /// The offsets this process read, `read_from..read_to` (a partition is read in order).
    read_from: i64,
    read_to: i64,
    /// Assigned to this process now: only then are its offsets committed.
    held: bool,
}

#[derive(Default)]
pub struct Progress {
    partitions: HashMap<(Arc<str>, i32), Partition>,
}

impl Progress {
    /// A record read: false when this process read and finished it before (a
    /// consumer that rejoined its group after an outage, or got a partition
    /// back, reads again from the last commit): it must not be sent again. One
    /// read before and not finished starts again: the rebalance that preceded
    /// the re-read released its partition's hold, so its queued job is dropped
    /// (only a send already under way may end twice).
    pub fn started(&mut self, topic: &Arc<str>, partition: i32, offset: i64, hold: &Hold) -> bool {
        let p = self.partitions.entry((topic.clone(), partition)).or_insert_with(|| Partition { read_from: offset, read_to: offset, ..Partition::default() });
        p.held = true;
        if (p.read_from..p.read_to).contains(&offset) {
            return p.unfinished.contains(&offset) && !p.hold.held();
        }
        p.hold = hold.clone();
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

    /// Partitions a rebalance took away are not this process's to commit
    /// until given back; what it knows of them stays (see [`started`](Self::started)).
    pub fn rebalanced(&mut self, changes: &[AssignmentChange]) {
        for change in changes {
            let (partitions, held) = match change {
                AssignmentChange::Revoked(partitions) => (partitions, false),
                AssignmentChange::Assigned(partitions) => (partitions, true),
            };
            for key in partitions {
                if let Some(p) = self.partitions.get_mut(key) {
                    p.held = held;
                }
            }
        }
    }

    /// The next offset to read per held partition of `topic` after a restart.
    pub fn committable(&self, topic: &str) -> Offsets {
        Self::offsets(self.partitions.iter().filter(|((t, _), p)| p.held && t.as_ref() == topic))
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
        let h = Hold::new();
        assert!((10..15).all(|o| progress.started(&topic, 0, o, &h)));
        progress.finished(&topic, 0, 10);
        progress.finished(&topic, 0, 12);
        assert_eq!(progress.committable(&topic).get("notify.dispatch.low", 0), Some(11));
        progress.finished(&topic, 0, 11);
        assert_eq!(progress.committable(&topic).get("notify.dispatch.low", 0), Some(13));
        (13..15).for_each(|o| progress.finished(&topic, 0, o));
        assert_eq!((progress.committable(&topic).get("notify.dispatch.low", 0), progress.unfinished()), (Some(15), 0));
    }

    #[test]
    fn records_read_again_after_a_rejoin_start_again_only_when_not_finished() {
        let topic: Arc<str> = Arc::from("notify.dispatch.normal");
        let mut progress = Progress::default();
        let h = Hold::new();
        assert!((100..110).all(|o| progress.started(&topic, 0, o, &h)));
        (100..105).for_each(|o| progress.finished(&topic, 0, o));
        // A lost session keeps the hold: what was queued is sent here, nothing read before starts again.
        assert!((100..110).all(|o| !progress.started(&topic, 0, o, &h)));
        h.release();
        let h = Hold::new();
        // The group lost us in an outage (the revoke dropped the queued ones); back, the consumer reads again from
        // the last commit (100).
        assert!((100..105).all(|o| !progress.started(&topic, 0, o, &h)), "finished here: not sent again");
        assert!((105..110).all(|o| progress.started(&topic, 0, o, &h)), "dropped at the revoke: started again");
        assert!(progress.started(&topic, 0, 110, &h), "new records still start");
        // Offsets reset below where this process first read: new here.
        assert!(progress.started(&topic, 0, 95, &h) && progress.started(&topic, 0, 96, &h));
        assert_eq!(progress.unfinished(), 8);
    }

    #[test]
    fn a_revoked_partition_is_not_committed_and_only_its_unfinished_deliveries_start_again() {
        let (low, normal): (Arc<str>, Arc<str>) = (Arc::from("notify.dispatch.low"), Arc::from("notify.dispatch.normal"));
        let mut progress = Progress::default();
        let h = Hold::new();
        assert!((0..5).all(|o| progress.started(&low, 0, o, &h) && progress.started(&low, 1, o, &h) && progress.started(&normal, 0, o, &h)));
        // Partition 1 is handed over with 0 finished, 1 in flight, 2..5 queued.
        progress.finished(&low, 1, 0);
        let handed_over = progress.committable_of(&[(low.clone(), 1)]);
        assert_eq!(handed_over.get("notify.dispatch.low", 1), Some(1));
        progress.rebalanced(&[AssignmentChange::Revoked(vec![(low.clone(), 1)])]);
        h.release();
        let h = Hold::new();
        progress.finished(&low, 1, 1);
        let committable = progress.committable(&low);
        assert_eq!((committable.get("notify.dispatch.low", 0), committable.get("notify.dispatch.low", 1)), (Some(0), None), "not held: not committed");
        assert_eq!(committable.get("notify.dispatch.normal", 0), None, "each reader commits its own topic");
        // Given back, read again from the hand-over commit: the one sent in flight is not sent again, the dropped are.
        progress.rebalanced(&[AssignmentChange::Assigned(vec![(low.clone(), 1)])]);
        assert_eq!(progress.committable(&low).get("notify.dispatch.low", 1), Some(2), "dropped ones hold the commit point");
        assert!(!progress.started(&low, 1, 1, &h), "finished here");
        assert!((2..5).all(|o| progress.started(&low, 1, o, &h)), "not finished: started again");
        progress.finished(&low, 1, 2);
        assert!(!progress.started(&low, 1, 2, &h));
    }
}
