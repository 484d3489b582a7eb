//! Which offsets may be committed: deliveries finish out of order (another
//! channel, a retry), so a partition's commit point is its oldest unfinished
//! delivery. After a crash only unfinished ones are read again.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use notiflow_connector::Offsets;

#[derive(Default)]
struct Partition {
    unfinished: BTreeSet<i64>,
    /// One past the highest offset read.
    read_to: i64,
}

#[derive(Default)]
pub struct Progress {
    partitions: HashMap<(Arc<str>, i32), Partition>,
}

impl Progress {
    pub fn started(&mut self, topic: &Arc<str>, partition: i32, offset: i64) {
        let p = self.partitions.entry((topic.clone(), partition)).or_default();
        p.unfinished.insert(offset);
        p.read_to = p.read_to.max(offset + 1);
    }

    pub fn finished(&mut self, topic: &Arc<str>, partition: i32, offset: i64) {
        if let Some(p) = self.partitions.get_mut(&(topic.clone(), partition)) {
            p.unfinished.remove(&offset);
        }
    }

    pub fn unfinished(&self) -> usize {
        self.partitions.values().map(|p| p.unfinished.len()).sum()
    }

    /// The next offset to read per partition after a restart.
    pub fn committable(&self) -> Offsets {
        let mut offsets = Offsets::default();
        for ((topic, partition), p) in &self.partitions {
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
        (10..15).for_each(|o| progress.started(&topic, 0, o));
        progress.finished(&topic, 0, 10);
        progress.finished(&topic, 0, 12);
        assert_eq!(progress.committable().get("notify.dispatch.low", 0), Some(11));
        progress.finished(&topic, 0, 11);
        assert_eq!(progress.committable().get("notify.dispatch.low", 0), Some(13));
        (13..15).for_each(|o| progress.finished(&topic, 0, o));
        assert_eq!((progress.committable().get("notify.dispatch.low", 0), progress.unfinished()), (Some(15), 0));
    }
}
