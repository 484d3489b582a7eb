use serde::{Deserialize, Serialize};

/// A record of `notify.dispatch.{high,normal,low}` (written by `sql/40_dispatch.sql`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// `send`, or `recall` (withdraw what was sent for `request_id`).
    #[serde(rename = "type")]
    pub kind: String,
    /// One recipient on one channel; the idempotency key given to providers.
    #[serde(default)]
    pub delivery_id: Option<String>,
    pub message_id: String,
    pub request_id: String,
    pub tenant: String,
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub template_version: Option<i64>,
    #[serde(default)]
    pub recipient: Option<String>,
    #[serde(default)]
    pub channel: Option<String>,
    /// Where the channel sends it: phone, email address, URL, device token...
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub priority: Option<String>,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub locale: Option<String>,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub html: Option<String>,
    /// The tenant's sender identity on this channel (email From, SMS signature), from the tenant
    /// registry, set by `notiflow deliver`: providers use it instead of their configured one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// Not sent after this instant (RFC 3339 or `YYYY-MM-DDTHH:MM:SS` UTC, as the JSON sinks write it).
    #[serde(default)]
    pub expires_at: Option<String>,
    /// When the producer's request was accepted (stage 10), as the JSON sinks write it: the start of
    /// the enqueue -> provider-accepted latency.
    #[serde(default)]
    pub requested_at: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

impl Delivery {
    /// Expiry in ms since the epoch; None when it has none or it cannot be read.
    pub fn expires_at_ms(&self) -> Option<i64> {
        let text = self.expires_at.as_deref()?;
        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
            return Some(t.timestamp_millis());
        }
        chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f").ok().map(|t| t.and_utc().timestamp_millis())
    }
}
