//! Per-user inboxes folded from the log. Every op is idempotent, so a replay
//! or a re-sent delivery changes nothing twice.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::InboxOp;

/// One message in a user's inbox.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    /// Position in the inbox (newer is larger): the paging cursor and SSE event id.
    pub seq: u64,
    pub delivery_id: String,
    pub message_id: String,
    pub request_id: String,
    pub template: Option<String>,
    pub category: Option<String>,
    pub priority: Option<String>,
    pub subject: Option<String>,
    pub body: Option<String>,
    pub html: Option<String>,
    pub created_at: String,
    pub read_at: Option<String>,
}

/// What an op changed, for the user's live stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Change {
    Message { tenant: String, user: String, entry: Entry },
    Read { tenant: String, user: String, delivery_id: String, at: String },
    Recalled { tenant: String, user: String, delivery_id: String },
}

impl Change {
    pub fn owner(&self) -> (&str, &str) {
        match self {
            Change::Message { tenant, user, .. } | Change::Read { tenant, user, .. } | Change::Recalled { tenant, user, .. } => (tenant, user),
        }
    }
}

#[derive(Default)]
struct UserInbox {
    entries: BTreeMap<u64, Entry>,
    by_delivery: HashMap<String, u64>,
    unread: usize,
}

type TenantKey = (String, String);

/// All inboxes of this server.
pub struct Store {
    users: HashMap<TenantKey, UserInbox>,
    /// (tenant, request_id) -> the users holding its messages.
    requests: HashMap<TenantKey, HashSet<String>>,
    /// Recalls seen, so a put arriving after its recall (another partition) stays out.
    recalled: HashSet<TenantKey>,
    /// Delivery ids recalled, so a replayed put of a recalled message stays out.
    removed: HashSet<String>,
    next_seq: u64,
    keep_per_user: usize,
}

impl Store {
    /// `keep_per_user`: the newest messages kept per user; older ones drop out.
    pub fn new(keep_per_user: usize) -> Self {
        Store { users: HashMap::new(), requests: HashMap::new(), recalled: HashSet::new(), removed: HashSet::new(), next_seq: 1, keep_per_user: keep_per_user.max(1) }
    }

    pub fn apply(&mut self, op: InboxOp) -> Vec<Change> {
        match op {
            InboxOp::Put { tenant, user, delivery_id, message_id, request_id, template, category, priority, subject, body, html, created_at } => {
                let request = (tenant.clone(), request_id.clone());
                if self.recalled.contains(&request) || self.removed.contains(&delivery_id) {
                    return vec![];
                }
                let inbox = self.users.entry((tenant.clone(), user.clone())).or_default();
                if inbox.by_delivery.contains_key(&delivery_id) {
                    return vec![];
                }
                let seq = self.next_seq;
                self.next_seq += 1;
                let entry = Entry { seq, delivery_id: delivery_id.clone(), message_id, request_id, template, category, priority, subject, body, html, created_at, read_at: None };
                inbox.by_delivery.insert(delivery_id, seq);
                inbox.entries.insert(seq, entry.clone());
                inbox.unread += 1;
                while inbox.entries.len() > self.keep_per_user {
                    let (_, oldest) = inbox.entries.pop_first().expect("not empty");
                    inbox.by_delivery.remove(&oldest.delivery_id);
                    inbox.unread -= usize::from(oldest.read_at.is_none());
                }
                self.requests.entry(request).or_default().insert(user.clone());
                vec![Change::Message { tenant, user, entry }]
            }
            InboxOp::Read { tenant, user, delivery_id, at } => {
                let Some(inbox) = self.users.get_mut(&(tenant.clone(), user.clone())) else { return vec![] };
                let Some(entry) = inbox.by_delivery.get(&delivery_id).and_then(|seq| inbox.entries.get_mut(seq)) else { return vec![] };
                if entry.read_at.is_some() {
                    return vec![];
                }
                entry.read_at = Some(at.clone());
                inbox.unread -= 1;
                vec![Change::Read { tenant, user, delivery_id, at }]
            }
            InboxOp::Recall { tenant, request_id, .. } => {
                let request = (tenant.clone(), request_id.clone());
                self.recalled.insert(request.clone());
                let mut changes = Vec::new();
                for user in self.requests.remove(&request).unwrap_or_default() {
                    let Some(inbox) = self.users.get_mut(&(tenant.clone(), user.clone())) else { continue };
                    let gone: Vec<u64> = inbox.entries.values().filter(|e| e.request_id == request_id).map(|e| e.seq).collect();
                    for seq in gone {
                        let entry = inbox.entries.remove(&seq).expect("listed");
                        inbox.by_delivery.remove(&entry.delivery_id);
                        inbox.unread -= usize::from(entry.read_at.is_none());
                        self.removed.insert(entry.delivery_id.clone());
                        changes.push(Change::Recalled { tenant: tenant.clone(), user: user.clone(), delivery_id: entry.delivery_id });
                    }
                }
                changes
            }
        }
    }

    /// Newest first, older than `before` (a seq) when given.
    pub fn list(&self, tenant: &str, user: &str, before: Option<u64>, limit: usize, unread_only: bool) -> (Vec<Entry>, usize) {
        let Some(inbox) = self.users.get(&(tenant.to_string(), user.to_string())) else { return (vec![], 0) };
        let entries = inbox
            .entries
            .range(..before.unwrap_or(u64::MAX))
            .rev()
            .map(|(_, e)| e)
            .filter(|e| !unread_only || e.read_at.is_none())
            .take(limit)
            .cloned()
            .collect();
        (entries, inbox.unread)
    }

    pub fn unread(&self, tenant: &str, user: &str) -> usize {
        self.users.get(&(tenant.to_string(), user.to_string())).map_or(0, |i| i.unread)
    }

    /// Whether the user has this message (unread or not).
    pub fn holds(&self, tenant: &str, user: &str, delivery_id: &str) -> bool {
        self.users.get(&(tenant.to_string(), user.to_string())).is_some_and(|i| i.by_delivery.contains_key(delivery_id))
    }

    pub fn unread_ids(&self, tenant: &str, user: &str) -> Vec<String> {
        let Some(inbox) = self.users.get(&(tenant.to_string(), user.to_string())) else { return vec![] };
        inbox.entries.values().filter(|e| e.read_at.is_none()).map(|e| e.delivery_id.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(user: &str, delivery: &str, request: &str) -> InboxOp {
        InboxOp::Put {
            tenant: "acme".into(),
            user: user.into(),
            delivery_id: delivery.into(),
            message_id: format!("m_{request}"),
            request_id: request.into(),
            template: None,
            category: Some("transactional".into()),
            priority: None,
            subject: Some(format!("subject {delivery}")),
            body: Some("body".into()),
            html: None,
            created_at: "2026-12-01T00:00:00Z".into(),
        }
    }

    fn read(user: &str, delivery: &str) -> InboxOp {
        InboxOp::Read { tenant: "acme".into(), user: user.into(), delivery_id: delivery.into(), at: "2026-12-01T00:01:00Z".into() }
    }

    fn recall(request: &str) -> InboxOp {
        InboxOp::Recall { tenant: "acme".into(), request_id: request.into(), at: "2026-12-01T00:02:00Z".into() }
    }

    fn ids(store: &Store, user: &str) -> Vec<String> {
        store.list("acme", user, None, 100, false).0.into_iter().map(|e| e.delivery_id).collect()
    }

    #[test]
    fn replays_change_nothing_twice() {
        let mut store = Store::new(100);
        let ops = [put("u1", "d1", "r1"), put("u1", "d2", "r2"), read("u1", "d1"), put("u1", "d1", "r1"), read("u1", "d1")];
        let changes: usize = ops.iter().cloned().map(|op| store.apply(op).len()).sum();
        assert_eq!(changes, 3, "the second put and the second read are no-ops");
        assert_eq!(ids(&store, "u1"), ["d2", "d1"], "newest first");
        assert_eq!(store.unread("acme", "u1"), 1);
        assert_eq!(store.list("acme", "u1", None, 10, true).0.len(), 1);
    }

    #[test]
    fn recall_removes_from_every_inbox_even_when_the_put_comes_later() {
        let mut store = Store::new(100);
        store.apply(put("u1", "d1", "r1"));
        store.apply(put("u2", "d2", "r1"));
        store.apply(put("u2", "d3", "r2"));
        let changes = store.apply(recall("r1"));
        assert_eq!(changes.len(), 2);
        assert_eq!((ids(&store, "u1"), ids(&store, "u2")), (vec![], vec!["d3".to_string()]));
        assert_eq!(store.unread("acme", "u2"), 1);
        assert!(store.apply(put("u3", "d4", "r1")).is_empty(), "a put behind its recall stays out");
        assert!(store.apply(put("u1", "d1", "r1")).is_empty(), "a replayed put of a recalled message stays out");
        assert!(store.list("acme", "u1", None, 10, false).0.is_empty());
    }

    #[test]
    fn tenants_do_not_see_each_other_and_old_messages_drop_out() {
        let mut store = Store::new(2);
        for (i, d) in ["d1", "d2", "d3"].iter().enumerate() {
            store.apply(put("u1", d, &format!("r{i}")));
        }
        assert_eq!(ids(&store, "u1"), ["d3", "d2"]);
        assert_eq!(store.unread("acme", "u1"), 2);
        assert!(store.list("other", "u1", None, 10, false).0.is_empty());
        let (page, _) = store.list("acme", "u1", Some(3), 10, false);
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [2], "paging by seq");
    }
}
