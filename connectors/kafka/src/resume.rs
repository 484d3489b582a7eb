//! Starting to read a partition at an offset inside a producer batch.
//!
//! Kafka answers a fetch from such an offset with the whole batch (the
//! client drops the records before the offset). tansu 0.6 answers with the
//! batches *after* it: the rest of that batch is skipped without an error,
//! and when it is the last batch the partition seems to have nothing to read
//! although its high watermark is past the offset. Committed offsets and
//! checkpoint offsets point inside batches whenever producers batch, so a
//! consumer that starts there (after a rebalance, a restart, a replay from a
//! time) would lose records. [`Resumes`] notices both shapes, a first record
//! past the start offset or silence while records are due, and asks for a
//! seek further back (1, 2, 4, ... records: one of those lands at or before
//! the batch's first record), then drops what comes before the start offset.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use notiflow_connector::Record;

/// A partition silent this long after its start is probed.
pub const SILENT_FOR: Duration = Duration::from_secs(2);

/// How long a probe waits for its fetch before it goes further back.
pub const PROBE_WAIT: Duration = Duration::from_millis(500);

type Partition = (Arc<str>, i32);

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// The first record must be the start offset.
    Expect,
    /// Reading again from `at` (a seek `back` records before the start) to find the batch holding the start.
    Probing { at: i64, back: i64 },
    /// The batch holding the start came: its records before the start (possibly over several reads) are dropped.
    CatchingUp,
}

#[derive(Debug, Clone, Copy)]
struct Resume {
    /// The first offset this reader must hand out.
    start: i64,
    state: State,
    /// When the last seek (or the assignment) happened.
    since: Instant,
}

/// A seek a reader must make.
#[derive(Debug, Clone, PartialEq)]
pub struct Seek {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Default)]
pub struct Resumes {
    partitions: HashMap<Partition, Resume>,
}

impl Resumes {
    /// Reading `partition` starts at `start` (a committed or given offset). A
    /// start at 0 is the log's beginning, never inside a batch.
    pub fn start(&mut self, partition: Partition, start: i64) {
        if start > 0 {
            self.partitions.insert(partition, Resume { start, state: State::Expect, since: Instant::now() });
        }
    }

    pub fn forget(&mut self, partition: &Partition) {
        self.partitions.remove(partition);
    }

    pub fn is_empty(&self) -> bool {
        self.partitions.is_empty()
    }

    /// Checks the first records of starting partitions: keeps what is at or
    /// past the start, drops the rest; returns the seeks to make for
    /// partitions whose start was skipped by the broker.
    pub fn check(&mut self, batch: &mut Vec<Record>) -> Vec<Seek> {
        if self.partitions.is_empty() {
            return Vec::new();
        }
        let mut seeks = Vec::new();
        // Per partition, the verdict on this batch's records: keep from an offset, or drop all (a seek follows).
        let mut verdicts: HashMap<Partition, Option<i64>> = HashMap::new();
        // Partitions whose records in this batch reach the start: nothing more to drop after it.
        let mut reached = Vec::new();
        for record in batch.iter() {
            let key = (record.topic.clone(), record.partition);
            if let Some(Some(start)) = verdicts.get(&key) {
                if record.offset + 1 >= *start {
                    reached.push(key);
                }
                continue;
            }
            if verdicts.contains_key(&key) {
                continue;
            }
            let Some(resume) = self.partitions.get_mut(&key) else { continue };
            if record.offset <= resume.start || resume.state == State::CatchingUp {
                // The batch holding the start (or the start itself): resumed once the start is passed.
                verdicts.insert(key.clone(), Some(resume.start));
                resume.state = State::CatchingUp;
                if record.offset + 1 >= resume.start {
                    reached.push(key);
                }
                continue;
            }
            let back = match resume.state {
                State::Expect => {
                    tracing::warn!(
                        topic = %key.0, partition = key.1, start = resume.start, first = record.offset,
                        "the broker skipped records at the start offset (a fetch from inside a producer batch): reading them again from further back"
                    );
                    1
                }
                State::Probing { at, back } if at > 0 => back * 2,
                State::Probing { .. } | State::CatchingUp => {
                    // Read from the log's first offset and still past the start: the records in
                    // between are gone (compacted or expired), not skipped.
                    tracing::info!(topic = %key.0, partition = key.1, start = resume.start, first = record.offset, "no records left before the first offset held");
                    verdicts.insert(key.clone(), Some(resume.start));
                    self.partitions.remove(&key);
                    continue;
                }
            };
            let at = (resume.start - back).max(0);
            resume.state = State::Probing { at, back };
            resume.since = Instant::now();
            verdicts.insert(key.clone(), None);
            seeks.push(Seek { topic: key.0.clone(), partition: key.1, offset: at });
        }
        for key in reached {
            self.partitions.remove(&key);
        }
        if !verdicts.is_empty() {
            batch.retain(|r| match verdicts.get(&(r.topic.clone(), r.partition)) {
                Some(Some(from)) => r.offset >= *from,
                Some(None) => false,
                None => true,
            });
        }
        seeks
    }

    /// Seeks for partitions silent since their start ([`SILENT_FOR`]) or since
    /// their last probe ([`PROBE_WAIT`]): no record at the start may mean the
    /// broker skipped a whole last batch (tansu's high watermark cannot tell:
    /// it counts a batch as one offset). A probe that reaches offset 0 with
    /// nothing returned ends the watch: the partition holds nothing to read.
    pub fn probe_silent(&mut self) -> Vec<Seek> {
        let mut seeks = Vec::new();
        self.partitions.retain(|partition, resume| {
            let quiet_for = if resume.state == State::Expect { SILENT_FOR } else { PROBE_WAIT };
            if resume.since.elapsed() < quiet_for {
                return true;
            }
            let back = match resume.state {
                State::Expect => 1,
                State::Probing { at: 0, .. } => return false,
                State::Probing { back, .. } => back * 2,
                State::CatchingUp => return true,
            };
            if resume.state == State::Expect {
                tracing::debug!(topic = %partition.0, partition = partition.1, start = resume.start, "no records at the start offset: probing from further back");
            }
            let at = (resume.start - back).max(0);
            resume.state = State::Probing { at, back };
            resume.since = Instant::now();
            seeks.push(Seek { topic: partition.0.clone(), partition: partition.1, offset: at });
            true
        });
        seeks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(topic: &Arc<str>, offsets: std::ops::Range<i64>) -> Vec<Record> {
        offsets.map(|offset| Record { topic: topic.clone(), partition: 0, offset, key: None, payload: None, timestamp_ms: None, headers: vec![] }).collect()
    }

    #[test]
    fn a_skipped_start_is_read_again_from_further_back_and_nothing_before_it_is_handed_out() {
        let topic: Arc<str> = Arc::from("t");
        let mut resumes = Resumes::default();
        // Batches [0, 50) and [50, 100); the start 60 is inside the second, which the broker skips.
        resumes.start((topic.clone(), 0), 60);
        let mut batch = records(&topic, 100..110);
        assert_eq!(resumes.check(&mut batch), [Seek { topic: topic.clone(), partition: 0, offset: 59 }]);
        assert!(batch.is_empty(), "nothing handed out past a gap");
        // 59, 58, 56, 52 are inside the same batch: skipped again; 44 lands in the batch before.
        let mut probes = vec![];
        for _ in 0..4 {
            let mut batch = records(&topic, 100..110);
            probes.extend(resumes.check(&mut batch).into_iter().map(|s| s.offset));
        }
        assert_eq!(probes, [58, 56, 52, 44]);
        // The batch holding the start comes over two reads: nothing before the start gets through.
        let mut batch = records(&topic, 44..56);
        assert!(resumes.check(&mut batch).is_empty());
        assert!(batch.is_empty());
        let mut batch = records(&topic, 56..110);
        assert!(resumes.check(&mut batch).is_empty());
        assert_eq!((batch[0].offset, batch.len()), (60, 50), "from the start on, once");
        assert!(resumes.is_empty());
    }

    #[test]
    fn a_start_at_a_batch_boundary_passes_untouched() {
        let topic: Arc<str> = Arc::from("t");
        let mut resumes = Resumes::default();
        resumes.start((topic.clone(), 0), 50);
        let mut batch = records(&topic, 50..60);
        assert!(resumes.check(&mut batch).is_empty());
        assert_eq!(batch.len(), 10);
        assert!(resumes.is_empty());
    }

    #[test]
    fn silence_is_probed_further_back_each_time_down_to_offset_zero() {
        let topic: Arc<str> = Arc::from("t");
        let mut resumes = Resumes::default();
        resumes.start((topic.clone(), 0), 3);
        assert!(resumes.probe_silent().is_empty(), "not quiet for long yet");
        let mut probes = vec![];
        for _ in 0..3 {
            resumes.partitions.values_mut().for_each(|r| r.since -= SILENT_FOR);
            probes.extend(resumes.probe_silent().into_iter().map(|s| s.offset));
        }
        assert_eq!(probes, [2, 1, 0]);
        assert!(!resumes.is_empty(), "the probe from 0 waits for its answer");
        resumes.partitions.values_mut().for_each(|r| r.since -= SILENT_FOR);
        assert!(resumes.probe_silent().is_empty());
        assert!(resumes.is_empty(), "nothing from 0 on: nothing to read");
    }
}
