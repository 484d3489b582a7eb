//! Apple Push Notification service: `POST /3/device/{token}` over HTTP/2
//! with `authorization: bearer <provider token>`, an ES256 JWT (`kid` = key
//! id, `iss` = team id, `iat`) signed with the `.p8` key. Apple wants the
//! token reused for 20-60 minutes, so it is cached 55 minutes (refreshed at
//! 50) and replaced once at once when Apple answers `ExpiredProviderToken`.
//! `apns-id` is derived from the delivery id, so a resend carries the same id.

use std::time::Duration;

use notiflow_delivery::{Accepted, Delivery, FailureReason, Secret, SecretRef, SendError, TokenCache, http};
use serde::Deserialize;
use serde_json::json;

use crate::jwt::Signer;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsConfig {
    /// `https://api.push.apple.com`, or `https://api.sandbox.push.apple.com` for development builds.
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// Apple developer team id (the token's `iss`).
    pub team_id: String,
    /// Id of the APNs auth key (the token's `kid`).
    pub key_id: String,
    /// Where the `.p8` auth key (PKCS#8 PEM) is.
    pub signing_key: SecretRef,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
    /// Answer deadline per attempt, ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_endpoint() -> String {
    "https://api.push.apple.com".into()
}

fn default_timeout_ms() -> u64 {
    10_000
}

pub struct ApnsChannel {
    name: String,
    config: ApnsConfig,
    signer: Signer,
    tokens: TokenCache,
    client: reqwest::Client,
}

/// The notification payload.
pub fn payload(delivery: &Delivery) -> serde_json::Value {
    let mut alert = json!({"body": delivery.body.as_deref().unwrap_or("")});
    if let Some(title) = delivery.subject.as_deref().filter(|s| !s.is_empty()) {
        alert["title"] = json!(title);
    }
    json!({"aps": {"alert": alert, "sound": "default"}, "delivery_id": delivery.delivery_id, "message_id": delivery.message_id})
}

/// A stable UUID for the delivery (first 128 bits of its id's SHA-256).
pub fn apns_id(delivery: &Delivery) -> String {
    let hex = crate::delivery_key(delivery);
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

fn is_device_token(token: &str) -> bool {
    token.len() >= 64 && token.len() % 2 == 0 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

impl ApnsChannel {
    pub fn new(name: &str, config: ApnsConfig) -> Result<Self, String> {
        let fail = |what: String| format!("apns provider {name}: {what}");
        let key = config.signing_key.resolve().map_err(|e| fail(format!("signing_key: {e}")))?;
        let signer = Signer::es256(key.expose()).map_err(fail)?;
        let mut builder = notiflow_delivery::http::builder(Duration::from_millis(config.timeout_ms), "notiflow-push").map_err(fail)?;
        // APNs speaks HTTP/2 only: negotiated by ALPN over TLS, assumed outright on a plain local endpoint.
        if config.endpoint.starts_with("http://") {
            builder = builder.http2_prior_knowledge();
        }
        let client = builder.build().map_err(|e| fail(format!("http client: {e}")))?;
        Ok(ApnsChannel { name: name.into(), config, signer, tokens: TokenCache::default(), client })
    }

    async fn provider_token(&self) -> Result<(Secret, Duration), SendError> {
        let header = json!({"alg": "ES256", "kid": self.config.key_id});
        let claims = json!({"iss": self.config.team_id, "iat": chrono::Utc::now().timestamp()});
        Ok((Secret::new(self.signer.jwt(&header, &claims)), Duration::from_secs(55 * 60)))
    }

    async fn post(&self, delivery: &Delivery) -> Result<Accepted, SendError> {
        let device = delivery.address.as_deref().unwrap_or("").trim();
        if !is_device_token(device) {
            return Err(SendError::permanent(FailureReason::InvalidRecipient, "BadDeviceToken", format!("`{device}` is not an APNs device token")));
        }
        let url = format!("{}/3/device/{device}", self.config.endpoint.trim_end_matches('/'));
        let body = payload(delivery);
        for resent in [false, true] {
            let token = self.tokens.get(|| self.provider_token()).await?;
            let mut request = self
                .client
                .post(&url)
                .header("authorization", format!("bearer {}", token.expose()))
                .header("apns-topic", &self.config.topic)
                .header("apns-push-type", "alert")
                .header("apns-priority", if crate::is_high(delivery) { "10" } else { "5" })
                .header("apns-id", apns_id(delivery))
                // A resend of the same delivery replaces the first on the device.
                .header("apns-collapse-id", crate::delivery_key(delivery));
            if let Some(at) = delivery.expires_at_ms() {
                request = request.header("apns-expiration", (at / 1000).to_string());
            }
            let response = request.json(&body).send().await.map_err(|e| http::transport_error(&e))?;
            let id = response.headers().get("apns-id").and_then(|v| v.to_str().ok()).map(str::to_string);
            let (status, retry_after, text) = http::read(response).await;
            let outcome = classify(status, retry_after, &text, id);
            match &outcome {
                Err(e) if !resent && e.provider_code() == "ExpiredProviderToken" => self.tokens.invalidate(&token).await,
                _ => return outcome,
            }
        }
        unreachable!("the second pass returns")
    }
}

fn classify(status: reqwest::StatusCode, retry_after: Option<Duration>, body: &str, apns_id: Option<String>) -> Result<Accepted, SendError> {
    if status.is_success() {
        return Ok(Accepted { provider_message_id: apns_id });
    }
    let reason_text = serde_json::from_str::<serde_json::Value>(body).ok().and_then(|v| v["reason"].as_str().map(str::to_string));
    let Some(code) = reason_text else { return Err(http::unreadable(status, body)) };
    let retry = |reason| Err(SendError::Retryable { reason, provider_code: code.clone(), detail: format!("HTTP {status}"), retry_after });
    let reason = match (status.as_u16(), code.as_str()) {
        (429, _) => return retry(FailureReason::RateLimited),
        (500..=599, _) => return retry(FailureReason::ProviderError),
        (403, "ExpiredProviderToken") => return retry(FailureReason::Auth),
        (410, _) | (_, "BadDeviceToken" | "DeviceTokenNotForTopic" | "Unregistered") => FailureReason::InvalidRecipient,
        (403, _) => FailureReason::Auth,
        _ => FailureReason::ContentRejected,
    };
    Err(SendError::permanent(reason, code, format!("HTTP {status}")))
}

notiflow_delivery::impl_channel!(ApnsChannel, "apns", name, post);

#[cfg(test)]
mod tests {
    use reqwest::StatusCode;

    use super::*;

    #[test]
    fn answers_are_read_by_status_and_reason() {
        let kind = |status: u16, body: &str| notiflow_delivery::summary(&classify(StatusCode::from_u16(status).unwrap(), None, body, Some("id-1".into())));
        assert_eq!(kind(200, ""), "accepted id-1");
        assert_eq!(kind(400, r#"{"reason":"BadDeviceToken"}"#), "fail invalid_recipient BadDeviceToken");
        assert_eq!(kind(410, r#"{"reason":"Unregistered","timestamp":1700000000000}"#), "fail invalid_recipient Unregistered");
        assert_eq!(kind(403, r#"{"reason":"ExpiredProviderToken"}"#), "retry auth ExpiredProviderToken");
        assert_eq!(kind(403, r#"{"reason":"InvalidProviderToken"}"#), "fail auth InvalidProviderToken");
        assert_eq!(kind(413, r#"{"reason":"PayloadTooLarge"}"#), "fail content_rejected PayloadTooLarge");
        assert_eq!(kind(429, r#"{"reason":"TooManyRequests"}"#), "retry rate_limited TooManyRequests");
        assert_eq!(kind(503, r#"{"reason":"ServiceUnavailable"}"#), "retry provider_error ServiceUnavailable");
        assert_eq!(kind(502, "<html>"), "retry provider_error 502");
    }

    #[test]
    fn apns_ids_are_uuids_stable_per_delivery() {
        let delivery: Delivery = serde_json::from_value(json!({"type": "send", "delivery_id": "d_1", "message_id": "m", "request_id": "r", "tenant": "t"})).unwrap();
        let id = apns_id(&delivery);
        assert_eq!(id.len(), 36);
        assert_eq!(id.matches('-').count(), 4);
        assert_eq!(id, apns_id(&delivery.clone()));
    }
}
