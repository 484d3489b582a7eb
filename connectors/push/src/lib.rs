//! App and browser push, one provider per channel:
//! - `push`: Firebase Cloud Messaging HTTP v1, Android and iOS through FCM
//!   registration tokens (the address). OAuth access token from a signed
//!   service-account assertion, cached and refreshed.
//! - `apns`: Apple Push Notification service for apps that register raw APNs
//!   device tokens, over HTTP/2 with an ES256 provider token (reused for 50
//!   minutes: Apple refuses fresher rotation).
//! - `webpush`: browsers' push services, payload encrypted for the
//!   subscription (RFC 8291) and signed for with VAPID (RFC 8292).
//!
//! Priority follows the message: `high` is delivered at once (FCM HIGH,
//! APNs 10), others are power-friendly (NORMAL, 5); an expiry becomes the
//! push TTL so a stale notification is never shown.

pub mod apns;
pub mod ece;
pub mod fcm;
mod jwt;
pub mod webpush;

#[cfg(feature = "fake")]
pub mod fake;

pub use apns::{ApnsChannel, ApnsConfig};
pub use fcm::{FcmChannel, FcmConfig};
pub use jwt::{b64url, pem_to_der};
pub use webpush::{WebPushChannel, WebPushConfig};

use notiflow_delivery::Delivery;

/// Seconds until the delivery expires (at least 0); None without an expiry.
pub(crate) fn ttl_seconds(delivery: &Delivery) -> Option<i64> {
    delivery.expires_at_ms().map(|at| ((at - chrono::Utc::now().timestamp_millis()) / 1000).max(0))
}

pub(crate) fn is_high(delivery: &Delivery) -> bool {
    delivery.priority.as_deref() == Some("high")
}

/// 128 bits of the delivery id's SHA-256, as 32 hex digits: the same for
/// every resend of a delivery. None of the push services drops a repeated
/// request, but each collapses notifications that share a collapse key (the
/// device shows the last one; APNs `apns-collapse-id`, FCM `collapse_key`, Web
/// Push `Topic`), so a delivery sent twice (a crash between the send and its
/// commit) is shown once.
pub(crate) fn delivery_key(delivery: &Delivery) -> String {
    let id = delivery.delivery_id.as_deref().unwrap_or(&delivery.message_id);
    let digest = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    digest.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect()
}
