//! Strict-priority lanes of one channel: a worker always takes the oldest
//! high-priority delivery first, then normal, then low.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lane {
    High = 0,
    Normal = 1,
    Low = 2,
}

impl Lane {
    pub const ALL: [Lane; 3] = [Lane::High, Lane::Normal, Lane::Low];

    pub fn as_str(self) -> &'static str {
        match self {
            Lane::High => "high",
            Lane::Normal => "normal",
            Lane::Low => "low",
        }
    }

    pub fn parse(text: &str) -> Option<Lane> {
        Lane::ALL.into_iter().find(|lane| lane.as_str() == text)
    }
}

struct State<T> {
    lanes: [VecDeque<T>; 3],
    closed: bool,
}

/// Bounded per lane: a full low lane makes its reader wait, never the others.
pub struct LaneQueue<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    readable: Notify,
    writable: [Notify; 3],
}

impl<T> LaneQueue<T> {
    pub fn new(capacity_per_lane: usize) -> Self {
        LaneQueue {
            state: Mutex::new(State { lanes: [VecDeque::new(), VecDeque::new(), VecDeque::new()], closed: false }),
            capacity: capacity_per_lane.max(1),
            readable: Notify::new(),
            writable: [Notify::new(), Notify::new(), Notify::new()],
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `item`, waiting while its lane is full. Err: the queue is closed.
    pub async fn push(&self, lane: Lane, item: T) -> Result<(), T> {
        loop {
            let writable = self.writable[lane as usize].notified();
            tokio::pin!(writable);
            writable.as_mut().enable();
            {
                let mut state = self.state();
                if state.closed {
                    return Err(item);
                }
                let queue = &mut state.lanes[lane as usize];
                if queue.len() < self.capacity {
                    queue.push_back(item);
                    drop(state);
                    self.readable.notify_one();
                    return Ok(());
                }
            }
            writable.await;
        }
    }

    /// Queues `item` if its lane has room; otherwise hands it back at once.
    pub fn try_push(&self, lane: Lane, item: T) -> Result<(), T> {
        let mut state = self.state();
        if state.closed || state.lanes[lane as usize].len() >= self.capacity {
            return Err(item);
        }
        state.lanes[lane as usize].push_back(item);
        drop(state);
        self.readable.notify_one();
        Ok(())
    }

    /// Waits until something is queued: true, or the queue is closed and empty: false.
    pub async fn ready(&self) -> bool {
        loop {
            let readable = self.readable.notified();
            tokio::pin!(readable);
            readable.as_mut().enable();
            {
                let state = self.state();
                if state.lanes.iter().any(|q| !q.is_empty()) {
                    return true;
                }
                if state.closed {
                    return false;
                }
            }
            readable.await;
        }
    }

    /// The oldest item of the highest non-empty lane.
    pub fn try_pop(&self) -> Option<(Lane, T)> {
        let mut state = self.state();
        let lane = Lane::ALL.into_iter().find(|lane| !state.lanes[*lane as usize].is_empty())?;
        let item = state.lanes[lane as usize].pop_front()?;
        let more = state.lanes.iter().any(|q| !q.is_empty());
        drop(state);
        self.writable[lane as usize].notify_one();
        if more {
            // Another worker may be waiting for what is left.
            self.readable.notify_one();
        }
        Some((lane, item))
    }

    pub fn len(&self, lane: Lane) -> usize {
        self.state().lanes[lane as usize].len()
    }

    /// No more pushes; readers drain what is queued, then `ready` says false.
    pub fn close(&self) {
        self.state().closed = true;
        self.readable.notify_waiters();
        self.writable.iter().for_each(Notify::notify_waiters);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn higher_lanes_first_oldest_first_within_a_lane() {
        let q = LaneQueue::new(10);
        for (lane, item) in [(Lane::Low, 1), (Lane::Normal, 2), (Lane::Low, 3), (Lane::High, 4), (Lane::Normal, 5)] {
            q.push(lane, item).await.unwrap();
        }
        let order: Vec<i32> = std::iter::from_fn(|| q.try_pop().map(|(_, i)| i)).collect();
        assert_eq!(order, [4, 2, 5, 1, 3]);
    }

    #[tokio::test]
    async fn a_full_lane_blocks_only_its_own_writer() {
        let q = Arc::new(LaneQueue::new(2));
        q.push(Lane::Low, 1).await.unwrap();
        q.push(Lane::Low, 2).await.unwrap();
        let blocked = tokio::spawn({
            let q = q.clone();
            async move { q.push(Lane::Low, 3).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!blocked.is_finished(), "the third low waits for room");
        // High still goes in, and comes out first.
        tokio::time::timeout(Duration::from_secs(1), q.push(Lane::High, 9)).await.unwrap().unwrap();
        assert_eq!(q.try_pop(), Some((Lane::High, 9)));
        assert_eq!(q.try_pop(), Some((Lane::Low, 1)));
        tokio::time::timeout(Duration::from_secs(1), blocked).await.unwrap().unwrap().unwrap();
        assert_eq!(q.len(Lane::Low), 2);
    }

    #[tokio::test]
    async fn close_lets_readers_drain_then_stop() {
        let q = LaneQueue::new(4);
        q.push(Lane::Normal, 1).await.unwrap();
        q.close();
        assert_eq!(q.push(Lane::High, 2).await, Err(2));
        assert!(q.ready().await);
        assert_eq!(q.try_pop(), Some((Lane::Normal, 1)));
        assert!(!q.ready().await);
    }
}
