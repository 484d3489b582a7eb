//! Lanes of one channel: strict priority across lanes (a worker always takes
//! from the highest non-empty lane), and fair turns across tenants within a
//! lane: each tenant with something queued gets one delivery per round, so a
//! tenant's blast cannot make another tenant's messages of the same priority
//! wait behind it. Each tenant has its own bounded room per lane: a tenant
//! that fills its room is refused (parked by the caller) or waits, never the others.

use std::collections::{HashMap, VecDeque};
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

/// One lane: a queue per tenant and the order of their turns, as FQ-CoDel
/// orders flows: a tenant that was idle gets the very next turn (a quiet
/// tenant's message waits for no one's backlog), then joins the round of busy
/// tenants; it becomes "new" again only after a round found it empty, so
/// arriving in drips never earns more than an equal share.
struct FairLane<T> {
    queues: HashMap<String, VecDeque<T>>,
    /// Tenants that were idle, in arrival order: served first, once each.
    new_turns: VecDeque<String>,
    /// Tenants in the round.
    old_turns: VecDeque<String>,
    len: usize,
}

impl<T> FairLane<T> {
    fn new() -> Self {
        FairLane { queues: HashMap::new(), new_turns: VecDeque::new(), old_turns: VecDeque::new(), len: 0 }
    }

    fn has_room(&self, tenant: &str, capacity: usize) -> bool {
        self.queues.get(tenant).is_none_or(|q| q.len() < capacity)
    }

    /// True when the tenant was idle (it joins the new turns).
    fn push(&mut self, tenant: &str, item: T) -> bool {
        let (queue, idle) = match self.queues.get_mut(tenant) {
            Some(queue) => (queue, false),
            None => {
                // Not in either list: an idle tenant.
                self.new_turns.push_back(tenant.to_string());
                (self.queues.entry(tenant.to_string()).or_default(), true)
            }
        };
        queue.push_back(item);
        self.len += 1;
        idle
    }

    /// A tenant that was idle has the next turn (its queue is never empty:
    /// items leave only through `pop`, which moves it to the round).
    fn newcomer_next(&self) -> bool {
        !self.new_turns.is_empty()
    }

    fn pop(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        loop {
            let (tenant, was_new) = match self.new_turns.pop_front() {
                Some(tenant) => (tenant, true),
                None => (self.old_turns.pop_front()?, false),
            };
            let queue = self.queues.get_mut(&tenant)?;
            match queue.pop_front() {
                Some(item) => {
                    self.old_turns.push_back(tenant);
                    self.len -= 1;
                    return Some(item);
                }
                // Emptied during its new turn: it goes round once more before it counts as idle.
                None if was_new => self.old_turns.push_back(tenant),
                None => {
                    self.queues.remove(&tenant);
                }
            }
        }
    }
}

struct State<T> {
    lanes: [FairLane<T>; 3],
    closed: bool,
}

impl<T> State<T> {
    /// The lane a worker serves next: the highest non-empty one.
    fn top(&self) -> Option<Lane> {
        Lane::ALL.into_iter().find(|lane| self.lanes[*lane as usize].len > 0)
    }
}

/// Bounded per lane and tenant: a full room makes only its own writer wait.
pub struct LaneQueue<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    readable: Notify,
    /// A tenant that was idle queued something.
    arrived: Notify,
    writable: [Notify; 3],
}

impl<T> LaneQueue<T> {
    /// `capacity`: deliveries one tenant may have queued in one lane.
    pub fn new(capacity: usize) -> Self {
        LaneQueue {
            state: Mutex::new(State { lanes: [FairLane::new(), FairLane::new(), FairLane::new()], closed: false }),
            capacity: capacity.max(1),
            readable: Notify::new(),
            arrived: Notify::new(),
            writable: [Notify::new(), Notify::new(), Notify::new()],
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `item` for `tenant`, waiting while the tenant's room in the lane is full. Err: the queue is closed.
    pub async fn push(&self, lane: Lane, tenant: &str, item: T) -> Result<(), T> {
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
                if queue.has_room(tenant, self.capacity) {
                    let idle = queue.push(tenant, item);
                    drop(state);
                    self.pushed(idle);
                    return Ok(());
                }
            }
            writable.await;
        }
    }

    /// Queues `item` if the tenant's room in its lane has space; otherwise hands it back at once.
    pub fn try_push(&self, lane: Lane, tenant: &str, item: T) -> Result<(), T> {
        let mut state = self.state();
        if state.closed || !state.lanes[lane as usize].has_room(tenant, self.capacity) {
            return Err(item);
        }
        let idle = state.lanes[lane as usize].push(tenant, item);
        drop(state);
        self.pushed(idle);
        Ok(())
    }

    fn pushed(&self, tenant_was_idle: bool) {
        self.readable.notify_one();
        if tenant_was_idle {
            self.arrived.notify_one();
        }
    }

    /// Waits until something is queued: true, or the queue is closed and empty: false.
    pub async fn ready(&self) -> bool {
        self.wait_on(&self.readable, |state| {
            if state.top().is_some() {
                Some(true)
            } else {
                state.closed.then_some(false)
            }
        })
        .await
    }

    /// Waits until the next turn of the highest non-empty lane is a tenant
    /// that was idle: true; or the queue is closed: false (what is left is
    /// drained by `ready` readers).
    pub async fn newcomer(&self) -> bool {
        self.wait_on(&self.arrived, |state| {
            if state.closed {
                Some(false)
            } else {
                state.top().is_some_and(|lane| state.lanes[lane as usize].newcomer_next()).then_some(true)
            }
        })
        .await
    }

    /// Re-checks `answer` on the state each time `signal` fires, until it answers.
    async fn wait_on(&self, signal: &Notify, answer: impl Fn(&State<T>) -> Option<bool>) -> bool {
        loop {
            // Registered before the check, so a signal between the check and the wait is not lost.
            let signalled = signal.notified();
            tokio::pin!(signalled);
            signalled.as_mut().enable();
            if let Some(answer) = answer(&self.state()) {
                return answer;
            }
            signalled.await;
        }
    }

    /// From the highest non-empty lane, the next tenant's oldest item.
    pub fn try_pop(&self) -> Option<(Lane, T)> {
        self.pop_if(|_| true)
    }

    /// As [`try_pop`](Self::try_pop), but only when that tenant was idle.
    pub fn try_pop_newcomer(&self) -> Option<(Lane, T)> {
        self.pop_if(FairLane::newcomer_next)
    }

    fn pop_if(&self, wanted: impl Fn(&FairLane<T>) -> bool) -> Option<(Lane, T)> {
        let mut state = self.state();
        let lane = state.top()?;
        if !wanted(&state.lanes[lane as usize]) {
            return None;
        }
        let item = state.lanes[lane as usize].pop()?;
        let more = state.lanes.iter().any(|q| q.len > 0);
        drop(state);
        // Writers of every tenant recheck their room (only the popped tenant's changed).
        self.writable[lane as usize].notify_waiters();
        if more {
            // Another worker may be waiting for what is left.
            self.readable.notify_one();
        }
        Some((lane, item))
    }

    /// Queued in a lane, all tenants.
    pub fn len(&self, lane: Lane) -> usize {
        self.state().lanes[lane as usize].len
    }

    /// No more pushes; readers drain what is queued, then `ready` says false.
    pub fn close(&self) {
        self.state().closed = true;
        self.readable.notify_waiters();
        self.arrived.notify_waiters();
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
            q.push(lane, "t", item).await.unwrap();
        }
        let order: Vec<i32> = std::iter::from_fn(|| q.try_pop().map(|(_, i)| i)).collect();
        assert_eq!(order, [4, 2, 5, 1, 3]);
    }

    #[tokio::test]
    async fn a_full_lane_blocks_only_its_own_writer() {
        let q = Arc::new(LaneQueue::new(2));
        q.push(Lane::Low, "t", 1).await.unwrap();
        q.push(Lane::Low, "t", 2).await.unwrap();
        let blocked = tokio::spawn({
            let q = q.clone();
            async move { q.push(Lane::Low, "t", 3).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!blocked.is_finished(), "the third low waits for room");
        // High still goes in, and comes out first.
        tokio::time::timeout(Duration::from_secs(1), q.push(Lane::High, "t", 9)).await.unwrap().unwrap();
        assert_eq!(q.try_pop(), Some((Lane::High, 9)));
        assert_eq!(q.try_pop(), Some((Lane::Low, 1)));
        tokio::time::timeout(Duration::from_secs(1), blocked).await.unwrap().unwrap().unwrap();
        assert_eq!(q.len(Lane::Low), 2);
    }

    #[tokio::test]
    async fn tenants_take_turns_within_a_lane_and_each_has_its_own_room() {
        let q = LaneQueue::new(3);
        for i in 0..3 {
            q.try_push(Lane::Normal, "blast", format!("a{i}")).unwrap();
        }
        assert_eq!(q.try_push(Lane::Normal, "blast", "a3".to_string()), Err("a3".to_string()), "the blasting tenant's room is full");
        q.try_push(Lane::Normal, "quiet", "b0".to_string()).unwrap();
        q.try_push(Lane::Normal, "quiet", "b1".to_string()).unwrap();
        q.try_push(Lane::High, "blast", "h".to_string()).unwrap();
        let order: Vec<String> = std::iter::from_fn(|| q.try_pop().map(|(_, i)| i)).collect();
        // Priority first, then one turn per tenant: b0 does not wait behind a1 and a2.
        assert_eq!(order, ["h", "a0", "b0", "a1", "b1", "a2"]);
        assert_eq!(q.len(Lane::Normal), 0);

        // A quiet tenant arriving while another is busy gets the next turn...
        for i in 0..3 {
            q.try_push(Lane::Normal, "blast", format!("a{i}")).unwrap();
        }
        assert_eq!(q.try_pop().unwrap().1, "a0");
        q.try_push(Lane::Normal, "quiet", "b0".to_string()).unwrap();
        assert_eq!(q.try_pop().unwrap().1, "b0", "an idle tenant's message goes next");
        // ...but dripping in one at a time earns no more than turn about.
        q.try_push(Lane::Normal, "quiet", "b1".to_string()).unwrap();
        let order: Vec<String> = std::iter::from_fn(|| q.try_pop().map(|(_, i)| i)).collect();
        assert_eq!(order, ["a1", "b1", "a2"]);
    }

    #[tokio::test]
    async fn close_lets_readers_drain_then_stop() {
        let q = LaneQueue::new(4);
        q.push(Lane::Normal, "t", 1).await.unwrap();
        q.close();
        assert_eq!(q.push(Lane::High, "t", 2).await, Err(2));
        assert!(q.ready().await);
        assert_eq!(q.try_pop(), Some((Lane::Normal, 1)));
        assert!(!q.ready().await);
    }
}
