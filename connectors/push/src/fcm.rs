//! Firebase Cloud Messaging HTTP v1: `POST /v1/projects/{project}/messages:send`
//! with an OAuth access token. The token comes from the service account's
//! `token_uri` for a JWT (RS256) asserting `client_email` and the
//! firebase.messaging scope; it is cached, refreshed before expiry, and
//! refetched once when FCM answers 401.

use std::time::Duration;

use notiflow_delivery::{Accepted, Delivery, FailureReason, Secret, SecretRef, SendError, TokenCache, http};
use serde::Deserialize;
use serde_json::json;

use crate::jwt::Signer;

const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmConfig {
    /// API base URL (a local fake in tests).
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// Where the service account key (the JSON file from the Firebase console) is.
    pub service_account: SecretRef,
    /// Answer deadline per attempt, ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_endpoint() -> String {
    "https://fcm.googleapis.com".into()
}

fn default_timeout_ms() -> u64 {
    10_000
}

/// The fields of a service account key that matter here.
#[derive(Deserialize)]
struct ServiceAccount {
    project_id: String,
    client_email: String,
    private_key: String,
    token_uri: String,
}

pub struct FcmChannel {
    name: String,
    endpoint: String,
    project_id: String,
    client_email: String,
    token_uri: String,
    signer: Signer,
    tokens: TokenCache,
    client: reqwest::Client,
}

/// The `message` of a send request.
pub fn message(delivery: &Delivery) -> serde_json::Value {
    // FCM has no idempotency key (the message name is its own): a resend of the same delivery
    // collapses with the first instead, on Android and iOS.
    let key = crate::delivery_key(delivery);
    let mut android = json!({"priority": if crate::is_high(delivery) { "HIGH" } else { "NORMAL" }, "collapse_key": key});
    let mut apns_headers = json!({"apns-priority": if crate::is_high(delivery) { "10" } else { "5" }, "apns-collapse-id": key});
    if let Some(ttl) = crate::ttl_seconds(delivery) {
        android["ttl"] = json!(format!("{ttl}s"));
        if let Some(at) = delivery.expires_at_ms() {
            apns_headers["apns-expiration"] = json!((at / 1000).to_string());
        }
    }
    let mut notification = json!({"body": delivery.body.as_deref().unwrap_or("")});
    if let Some(title) = delivery.subject.as_deref().filter(|s| !s.is_empty()) {
        notification["title"] = json!(title);
    }
    json!({"message": {
        "token": delivery.address.as_deref().unwrap_or("").trim(),
        "notification": notification,
        "data": {"delivery_id": delivery.delivery_id.as_deref().unwrap_or(""), "message_id": delivery.message_id},
        "android": android,
        "apns": {"headers": apns_headers},
    }})
}

impl FcmChannel {
    pub fn new(name: &str, config: &FcmConfig) -> Result<Self, String> {
        let fail = |what: String| format!("fcm provider {name}: {what}");
        let key = config.service_account.resolve().map_err(|e| fail(format!("service_account: {e}")))?;
        let account: ServiceAccount = serde_json::from_str(key.expose()).map_err(|e| fail(format!("service_account is not a service account key: {e}")))?;
        let signer = Signer::rs256(&account.private_key).map_err(fail)?;
        Ok(FcmChannel {
            name: name.into(),
            endpoint: config.endpoint.trim_end_matches('/').into(),
            project_id: account.project_id,
            client_email: account.client_email,
            token_uri: account.token_uri,
            signer,
            tokens: TokenCache::default(),
            client: http::client(Duration::from_millis(config.timeout_ms), "notiflow-push")?,
        })
    }

    async fn fetch_token(&self) -> Result<(Secret, Duration), SendError> {
        let now = chrono::Utc::now().timestamp();
        let claims = json!({"iss": self.client_email, "scope": SCOPE, "aud": self.token_uri, "iat": now, "exp": now + 3600});
        let assertion = self.signer.jwt(&json!({"alg": "RS256", "typ": "JWT"}), &claims);
        let form = [("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"), ("assertion", assertion.as_str())];
        let response = self.client.post(&self.token_uri).form(&form).send().await.map_err(|e| http::transport_error(&e))?;
        let (status, _, text) = http::read(response).await;
        let answer: serde_json::Value = serde_json::from_str(&text).map_err(|_| http::unreadable(status, &text))?;
        match (answer["access_token"].as_str(), answer["expires_in"].as_u64()) {
            (Some(token), Some(seconds)) if status.is_success() => Ok((Secret::new(token), Duration::from_secs(seconds))),
            _ if status.is_server_error() => Err(SendError::retryable(FailureReason::ProviderError, status.as_str(), "oauth token endpoint failed")),
            _ => Err(SendError::permanent(FailureReason::Auth, answer["error"].as_str().unwrap_or(status.as_str()), format!("oauth: {text}"))),
        }
    }

    async fn post(&self, delivery: &Delivery) -> Result<Accepted, SendError> {
        if delivery.address.as_deref().is_none_or(|a| a.trim().is_empty()) {
            return Err(SendError::permanent(FailureReason::InvalidRecipient, "no_token", "push delivery without a registration token"));
        }
        let url = format!("{}/v1/projects/{}/messages:send", self.endpoint, self.project_id);
        let body = message(delivery);
        for resent in [false, true] {
            let token = self.tokens.get(|| self.fetch_token()).await?;
            let response = self.client.post(&url).bearer_auth(token.expose()).json(&body).send().await.map_err(|e| http::transport_error(&e))?;
            let (status, retry_after, text) = http::read(response).await;
            if status.as_u16() == 401 && !resent {
                self.tokens.invalidate(&token).await;
                continue;
            }
            return classify(status, retry_after, &text);
        }
        unreachable!("the second pass returns")
    }
}

fn classify(status: reqwest::StatusCode, retry_after: Option<Duration>, body: &str) -> Result<Accepted, SendError> {
    let answer: serde_json::Value = serde_json::from_str(body).map_err(|_| http::unreadable(status, body))?;
    if status.is_success() {
        return match answer["name"].as_str() {
            Some(name) => Ok(Accepted { provider_message_id: Some(name.to_string()) }),
            None => Err(http::unreadable(status, body)),
        };
    }
    let error = &answer["error"];
    let details = error["details"].as_array().into_iter().flatten();
    let fcm_code = details.filter_map(|d| d["errorCode"].as_str()).next().or(error["status"].as_str()).unwrap_or(status.as_str()).to_string();
    let detail = error["message"].as_str().unwrap_or("").to_string();
    let retry = |reason| Err(SendError::Retryable { reason, provider_code: fcm_code.clone(), detail: detail.clone(), retry_after });
    let reason = match fcm_code.as_str() {
        "QUOTA_EXCEEDED" => return retry(FailureReason::RateLimited),
        "UNAVAILABLE" | "INTERNAL" => return retry(FailureReason::ProviderError),
        _ if status.is_server_error() => return retry(FailureReason::ProviderError),
        "UNREGISTERED" | "SENDER_ID_MISMATCH" => FailureReason::InvalidRecipient,
        "INVALID_ARGUMENT" if detail.contains("registration token") => FailureReason::InvalidRecipient,
        "THIRD_PARTY_AUTH_ERROR" | "UNAUTHENTICATED" | "PERMISSION_DENIED" => FailureReason::Auth,
        _ => FailureReason::ContentRejected,
    };
    Err(SendError::permanent(reason, fcm_code, detail))
}

notiflow_delivery::impl_channel!(FcmChannel, "push", name, post);

#[cfg(test)]
mod tests {
    use reqwest::StatusCode;

    use super::*;

    #[test]
    fn every_resend_of_a_delivery_carries_the_same_collapse_key() {
        let delivery = |id: &str| -> Delivery {
            serde_json::from_value(json!({"type": "send", "delivery_id": id, "message_id": "m", "request_id": "r", "tenant": "t", "address": "tok"})).unwrap()
        };
        let (first, again, other) = (message(&delivery("d_1")), message(&delivery("d_1")), message(&delivery("d_2")));
        let key = &first["message"]["android"]["collapse_key"];
        assert_eq!(key.as_str().map(str::len), Some(32));
        assert_eq!((key, &first["message"]["apns"]["headers"]["apns-collapse-id"]), (&again["message"]["android"]["collapse_key"], key));
        assert_ne!(key, &other["message"]["android"]["collapse_key"]);
    }

    #[test]
    fn answers_are_read_by_fcm_error_code() {
        let kind = |status: u16, body: &str| notiflow_delivery::summary(&classify(StatusCode::from_u16(status).unwrap(), None, body));
        assert_eq!(kind(200, r#"{"name":"projects/p/messages/0:1"}"#), "accepted projects/p/messages/0:1");
        let error = |code: u16, status: &str, fcm: &str, message: &str| {
            format!(r#"{{"error":{{"code":{code},"message":"{message}","status":"{status}","details":[{{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"{fcm}"}}]}}}}"#)
        };
        assert_eq!(kind(404, &error(404, "NOT_FOUND", "UNREGISTERED", "Requested entity was not found.")), "fail invalid_recipient UNREGISTERED");
        let bad_token = error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token");
        assert_eq!(kind(400, &bad_token), "fail invalid_recipient INVALID_ARGUMENT");
        assert_eq!(kind(400, &error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "Invalid JSON payload")), "fail content_rejected INVALID_ARGUMENT");
        assert_eq!(kind(429, &error(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", "quota")), "retry rate_limited QUOTA_EXCEEDED");
        assert_eq!(kind(503, &error(503, "UNAVAILABLE", "UNAVAILABLE", "down")), "retry provider_error UNAVAILABLE");
        assert_eq!(kind(401, &error(401, "UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR", "APNs auth")), "fail auth THIRD_PARTY_AUTH_ERROR");
    }
}
