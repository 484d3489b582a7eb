//! The in-app inbox channel.
//!
//! Sending to the inbox appends a `put` to the inbox log topic
//! (`notify.inbox`, keyed `tenant/user`); marking read and recalls are
//! appended the same way. The log is the store: `notiflow inbox` replays it
//! at start-up into per-user inboxes in memory, then follows it, serving
//! list / mark-read over HTTP and every change live over SSE. Replaying is
//! idempotent (a re-sent delivery is one entry; a read is read once), so
//! at-least-once delivery shows exactly once in the inbox.

mod api;
mod auth;
mod channel;
mod journal;
mod ops;
mod store;

pub use api::{Inbox, InboxSettings, router};
pub use auth::UserTokens;
pub use channel::InboxChannel;
pub use journal::{Journal, SinkJournal, op_record};
pub use ops::InboxOp;
pub use store::{Change, Entry, Store};
