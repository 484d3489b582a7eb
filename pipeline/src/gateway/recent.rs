//! What the gateway remembers of recent traffic (request ids, timelines): a
//! map bounded by age and by size, forgetting the oldest first.

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

pub struct Recent<K, V> {
    max_entries: usize,
    window_ms: i64,
    entries: HashMap<K, V>,
    /// Keys by when they were first seen.
    order: VecDeque<(i64, K)>,
}

impl<K: Hash + Eq + Clone, V> Recent<K, V> {
    pub fn new(max_entries: usize, window_ms: i64) -> Self {
        Recent { max_entries: max_entries.max(1), window_ms, entries: HashMap::new(), order: VecDeque::new() }
    }

    /// Older than the window at `now`: not worth remembering.
    pub fn too_old(&self, at_ms: i64, now: i64) -> bool {
        at_ms < now - self.window_ms
    }

    pub fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.entries.get(key)
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.entries.get_mut(key)
    }

    /// Adds an entry first seen at `at_ms` (the caller checked it is new).
    pub fn insert(&mut self, key: K, value: V, at_ms: i64) {
        self.entries.insert(key.clone(), value);
        self.order.push_back((at_ms, key));
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.entries.remove(key)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Forgets entries older than the window, and the oldest beyond the size
    /// bound. An entry `pinned` says must stay (a write in progress) is kept
    /// and looked at again as if first seen `now`.
    pub fn forget_old(&mut self, now: i64, pinned: impl Fn(&V) -> bool) {
        // Each entry is looked at once per call, so pinned ones cannot loop.
        for _ in 0..self.order.len() {
            let Some(&(at, _)) = self.order.front() else { break };
            if !self.too_old(at, now) && self.entries.len() <= self.max_entries {
                break;
            }
            let (_, key) = self.order.pop_front().expect("front exists");
            match self.entries.get(&key) {
                Some(value) if pinned(value) => self.order.push_back((now, key)),
                // Entries removed meanwhile leave their order entry behind: it goes here.
                _ => {
                    self.entries.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_go_first_by_age_and_by_size_and_pinned_ones_stay() {
        let mut recent = Recent::new(2, 1000);
        recent.insert("a", 1, 0);
        recent.insert("b", 2, 500);
        recent.insert("c", 3, 900);
        recent.forget_old(1000, |_| false);
        assert_eq!((recent.get(&"a"), recent.len()), (None, 2), "over the size bound: the oldest goes");
        recent.forget_old(1600, |_| false);
        assert_eq!((recent.get(&"b"), recent.get(&"c")), (None, Some(&3)), "b is older than the window");
        recent.insert("d", 4, 1700);
        recent.forget_old(5000, |v| *v == 3);
        assert_eq!((recent.get(&"c"), recent.get(&"d"), recent.len()), (Some(&3), None, 1), "c is pinned");
        recent.forget_old(7000, |_| false);
        assert_eq!(recent.len(), 0, "unpinned, it goes in its turn");
    }
}
