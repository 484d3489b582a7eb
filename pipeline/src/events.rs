//! Lifecycle events on `notify.events`, keyed by message id. Every decision
//! the pipeline takes about a record becomes one event, so `trace` and the
//! reports can tell what happened to any message.

use serde::{Deserialize, Serialize};

/// One lifecycle event. Later stages add their own `event` names (sent,
/// delivered, ...); fields that do not apply are omitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleEvent {
    /// What happened: `dispatched`, `rejected`, ...
    pub event: String,
    /// Deterministic id of the request; absent when the record could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// `send` or `recall`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Reason code of a rejection (see `contract::Reason`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Topic the message was written to (dispatch topic or dead-letter topic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// `topic/partition/offset` of the record that caused the event.
    pub source: String,
    /// When the pipeline decided, RFC 3339 UTC with milliseconds.
    pub at: String,
}

impl LifecycleEvent {
    /// The record key on `notify.events`.
    pub fn key(&self) -> String {
        self.message_id.clone().unwrap_or_else(|| format!("source:{}", self.source))
    }
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
