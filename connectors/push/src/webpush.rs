//! Web Push (RFC 8030) to a browser subscription: the payload encrypted
//! for the subscription's keys (RFC 8291, `aes128gcm`), the sender
//! identified with VAPID (RFC 8292: an ES256 JWT for the push service's
//! origin plus our public key). The address is the subscription JSON the
//! browser produced; since it comes from a browser, its endpoint must be
//! HTTPS on a known push service (`allowed_hosts`), never an arbitrary URL.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use notiflow_delivery::{Accepted, Delivery, FailureReason, SecretRef, SendError, http};
use serde::Deserialize;
use serde_json::json;

use crate::ece;
use crate::jwt::{Signer, b64url};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebPushConfig {
    /// Where the VAPID private key (P-256, PKCS#8 PEM) is; its public key is the application server key browsers subscribe with.
    pub vapid_private_key: SecretRef,
    /// Contact the push services may use: `mailto:` or `https:` URL.
    pub vapid_subject: String,
    /// Push service hosts subscriptions may point to; `*.` matches subdomains.
    #[serde(default = "default_hosts")]
    pub allowed_hosts: Vec<String>,
    /// Time to live when the message has no expiry, seconds.
    #[serde(default = "default_ttl")]
    pub default_ttl_s: u64,
    /// Answer deadline per attempt, ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_hosts() -> Vec<String> {
    ["fcm.googleapis.com", "updates.push.services.mozilla.com", "web.push.apple.com", "*.notify.windows.com"].map(String::from).to_vec()
}

fn default_ttl() -> u64 {
    86_400
}

fn default_timeout_ms() -> u64 {
    10_000
}

/// The browser's `PushSubscription.toJSON()`.
#[derive(Deserialize)]
struct Subscription {
    endpoint: String,
    keys: SubscriptionKeys,
}

#[derive(Deserialize)]
struct SubscriptionKeys {
    p256dh: String,
    auth: String,
}

pub struct WebPushChannel {
    name: String,
    config: WebPushConfig,
    signer: Signer,
    client: reqwest::Client,
}

fn invalid(code: &str, detail: impl Into<String>) -> SendError {
    SendError::permanent(FailureReason::InvalidRecipient, code, detail)
}

impl WebPushChannel {
    pub fn new(name: &str, config: WebPushConfig) -> Result<Self, String> {
        let fail = |what: String| format!("webpush provider {name}: {what}");
        if !(config.vapid_subject.starts_with("mailto:") || config.vapid_subject.starts_with("https://")) {
            return Err(fail("vapid_subject must be a mailto: or https: URL".into()));
        }
        let key = config.vapid_private_key.resolve().map_err(|e| fail(format!("vapid_private_key: {e}")))?;
        let signer = Signer::es256(key.expose()).map_err(fail)?;
        let client = http::client(Duration::from_millis(config.timeout_ms), "notiflow-push").map_err(fail)?;
        Ok(WebPushChannel { name: name.into(), config, signer, client })
    }

    /// The endpoint, if it is a push service we may call.
    fn endpoint(&self, endpoint: &str) -> Result<reqwest::Url, SendError> {
        let url = reqwest::Url::parse(endpoint).map_err(|e| invalid("bad_endpoint", format!("`{endpoint}`: {e}")))?;
        let host = url.host_str().unwrap_or("");
        let listed = self.config.allowed_hosts.iter().any(|allowed| match allowed.strip_prefix("*.") {
            Some(domain) => host.ends_with(&format!(".{domain}")),
            None => host == allowed,
        });
        // Plain HTTP only to an explicitly listed loopback host (a local push service in tests).
        let loopback = host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if !listed || !(url.scheme() == "https" || (url.scheme() == "http" && loopback)) {
            return Err(SendError::permanent(FailureReason::BlockedTarget, "push_service_not_allowed", format!("`{host}` is not an allowed push service")));
        }
        Ok(url)
    }

    fn vapid(&self, url: &reqwest::Url) -> String {
        let claims = json!({"aud": url.origin().ascii_serialization(), "exp": chrono::Utc::now().timestamp() + 12 * 3600, "sub": self.config.vapid_subject});
        let jwt = self.signer.jwt(&json!({"typ": "JWT", "alg": "ES256"}), &claims);
        format!("vapid t={jwt}, k={}", b64url(self.signer.public_key()))
    }

    async fn post(&self, delivery: &Delivery) -> Result<Accepted, SendError> {
        let address = delivery.address.as_deref().unwrap_or("");
        let subscription: Subscription = serde_json::from_str(address).map_err(|e| invalid("bad_subscription", format!("not a push subscription: {e}")))?;
        let url = self.endpoint(&subscription.endpoint)?;
        let decode = |text: &str, what: &str| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).map_err(|_| invalid("bad_subscription", format!("{what} is not base64url")));
        let (ua_public, auth) = (decode(&subscription.keys.p256dh, "p256dh")?, decode(&subscription.keys.auth, "auth")?);
        let payload = json!({"title": delivery.subject, "body": delivery.body, "delivery_id": delivery.delivery_id, "message_id": delivery.message_id});
        let body = ece::encrypt(payload.to_string().as_bytes(), &ua_public, &auth).map_err(|e| {
            let reason = if e.contains("exceeds") { FailureReason::ContentRejected } else { FailureReason::InvalidRecipient };
            SendError::permanent(reason, "encryption", e)
        })?;
        let ttl = crate::ttl_seconds(delivery).map_or(self.config.default_ttl_s, |s| s as u64);
        let urgency = match delivery.priority.as_deref() {
            Some("high") => "high",
            Some("low") => "low",
            _ => "normal",
        };
        let response = self
            .client
            .post(url.clone())
            .header("authorization", self.vapid(&url))
            .header("ttl", ttl.to_string())
            .header("urgency", urgency)
            // RFC 8030 5.4: a resend of the same delivery replaces the first while it is undelivered.
            .header("topic", crate::delivery_key(delivery))
            .header("content-encoding", "aes128gcm")
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await
            .map_err(|e| http::transport_error(&e))?;
        let location = response.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_string);
        let (status, retry_after, text) = http::read(response).await;
        classify(status, retry_after, &text, location)
    }
}

fn classify(status: reqwest::StatusCode, retry_after: Option<Duration>, body: &str, location: Option<String>) -> Result<Accepted, SendError> {
    let code = status.as_str().to_string();
    let detail = body.chars().take(200).collect::<String>();
    let reason = match status.as_u16() {
        200..=299 => return Ok(Accepted { provider_message_id: location }),
        429 => return Err(SendError::Retryable { reason: FailureReason::RateLimited, provider_code: code, detail, retry_after }),
        500..=599 => return Err(SendError::Retryable { reason: FailureReason::ProviderError, provider_code: code, detail, retry_after }),
        // The subscription expired or was removed.
        404 | 410 => FailureReason::InvalidRecipient,
        401 | 403 => FailureReason::Auth,
        _ => FailureReason::ContentRejected,
    };
    Err(SendError::permanent(reason, code, detail))
}

notiflow_delivery::impl_channel!(WebPushChannel, "webpush", name, post);

#[cfg(test)]
mod tests {
    use reqwest::StatusCode;

    use super::*;

    #[test]
    fn answers_follow_rfc_8030() {
        let kind = |status: u16| notiflow_delivery::summary(&classify(StatusCode::from_u16(status).unwrap(), None, "", Some("/m/1".into())));
        assert_eq!(kind(201), "accepted /m/1");
        assert_eq!(kind(410), "fail invalid_recipient 410");
        assert_eq!(kind(404), "fail invalid_recipient 404");
        assert_eq!(kind(413), "fail content_rejected 413");
        assert_eq!(kind(403), "fail auth 403");
        assert_eq!(kind(429), "retry rate_limited 429");
        assert_eq!(kind(503), "retry provider_error 503");
    }
}
