//! Generic webhook channel: POSTs each delivery as a Standard Webhooks message
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<HMAC-SHA256>`),
//! refuses private and loopback targets unless allow-listed (checked on every
//! connection, after DNS, so a rebinding name cannot slip through), follows no
//! redirects, and classifies the answer: 2xx accepted, 429/408/5xx and
//! timeouts retried, other 4xx failed for good.

mod config;
mod guard;
mod request;
mod service;

pub use config::WebhookConfig;
pub use guard::TargetGuard;
pub use request::{SigningKey, sign};
pub use service::WebhookChannel;
