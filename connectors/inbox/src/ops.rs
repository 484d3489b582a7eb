use serde::{Deserialize, Serialize};

/// A record of the inbox log topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum InboxOp {
    /// A message delivered to a user's inbox.
    Put {
        tenant: String,
        user: String,
        delivery_id: String,
        message_id: String,
        request_id: String,
        #[serde(default)]
        template: Option<String>,
        #[serde(default)]
        category: Option<String>,
        #[serde(default)]
        priority: Option<String>,
        #[serde(default)]
        subject: Option<String>,
        #[serde(default)]
        body: Option<String>,
        #[serde(default)]
        html: Option<String>,
        /// RFC 3339.
        created_at: String,
    },
    /// The user read a message.
    Read { tenant: String, user: String, delivery_id: String, at: String },
    /// The producer recalled a request: its messages leave every inbox.
    Recall { tenant: String, request_id: String, at: String },
}

impl InboxOp {
    /// The record key: a user's changes stay in order on one partition.
    pub fn key(&self) -> String {
        match self {
            InboxOp::Put { tenant, user, .. } | InboxOp::Read { tenant, user, .. } => format!("{tenant}/{user}"),
            InboxOp::Recall { tenant, request_id, .. } => format!("{tenant}/recall/{request_id}"),
        }
    }
}
