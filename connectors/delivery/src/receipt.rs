//! What providers report after acceptance (delivery receipts, reads, clicks):
//! one record of `notify.receipts`, whatever the provider.

use serde::{Deserialize, Serialize};

/// A record of `notify.receipts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// `delivered`, `failed`, `read`, `clicked`, or `progress` (an intermediate state).
    pub kind: String,
    pub channel: String,
    /// The provider entry's name (as in `notify.sends`).
    pub provider: String,
    /// Joins the receipt to its send result.
    pub provider_message_id: String,
    /// Our delivery id, when the provider echoes it.
    #[serde(default)]
    pub delivery_id: Option<String>,
    #[serde(default)]
    pub tenant: Option<String>,
    /// Our message id, when the receipt knows it (clicks on tracked links).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// The link followed, for `clicked`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default)]
    pub recipient: Option<String>,
    /// The provider's own status word.
    pub status: String,
    #[serde(default)]
    pub error_code: Option<String>,
    /// When it happened as the provider says, else when we heard (RFC 3339).
    pub at: String,
}
