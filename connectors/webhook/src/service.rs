use std::net::IpAddr;
use std::time::Duration;

use notiflow_delivery::{Accepted, Delivery, FailureReason, SendError};
use reqwest::{StatusCode, Url};

use crate::guard::Blocked;
use crate::{SigningKey, TargetGuard, WebhookConfig, sign};

/// Sends deliveries whose address is an http(s) URL.
pub struct WebhookChannel {
    client: reqwest::Client,
    key: SigningKey,
    guard: TargetGuard,
    config: WebhookConfig,
}

impl WebhookChannel {
    pub fn new(config: WebhookConfig, key: SigningKey) -> Result<Self, String> {
        let guard = TargetGuard::new(&config.allow)?;
        let client = reqwest::Client::builder()
            .dns_resolver(guard.clone().resolver())
            // A redirect or a proxy would take the request past the guard (the proxy resolves the
            // target, not us): webhooks ignore `[delivery] proxy`.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(config.timeout)
            .user_agent("notiflow-webhook")
            .build()
            .map_err(|e| format!("webhook client: {e}"))?;
        Ok(WebhookChannel { client, key, guard, config })
    }

    fn target(&self, delivery: &Delivery) -> Result<Url, SendError> {
        let address = delivery.address.as_deref().unwrap_or_default();
        let url = Url::parse(address).map_err(|e| SendError::permanent(FailureReason::InvalidRecipient, "bad_url", format!("`{address}`: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(SendError::permanent(FailureReason::InvalidRecipient, "bad_url", format!("`{address}`: only http and https")));
        }
        // IP literals never reach the resolver: check them here.
        let literal = match url.host() {
            Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
            _ => None,
        };
        if let Some(ip) = literal
            && !self.guard.permits(ip)
        {
            return Err(SendError::permanent(FailureReason::BlockedTarget, "blocked", Blocked(ip.to_string()).to_string()));
        }
        Ok(url)
    }
}

/// The message body: Standard Webhooks' `{type, timestamp, data}`.
fn payload(delivery: &Delivery) -> Vec<u8> {
    let kind = if delivery.kind == "recall" { "notification.recall" } else { "notification.send" };
    let body = serde_json::json!({
        "type": kind,
        "timestamp": unix_seconds(),
        "data": delivery,
    });
    body.to_string().into_bytes()
}

fn unix_seconds() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs() as i64
}

fn classify_transport(error: &reqwest::Error) -> SendError {
    let mut source: Option<&dyn std::error::Error> = Some(error);
    while let Some(e) = source {
        if let Some(blocked) = e.downcast_ref::<Blocked>() {
            return SendError::permanent(FailureReason::BlockedTarget, "blocked", blocked.to_string());
        }
        source = e.source();
    }
    notiflow_delivery::http::transport_error(error)
}

fn classify_status(status: StatusCode, retry_after: Option<Duration>, answer: &str) -> Result<Accepted, SendError> {
    let code = status.as_u16().to_string();
    let detail = format!("HTTP {status}: {}", answer.chars().take(200).collect::<String>());
    match status.as_u16() {
        200..=299 => Ok(Accepted { provider_message_id: None }),
        429 => Err(SendError::Retryable { reason: FailureReason::RateLimited, provider_code: code, detail, retry_after }),
        408 | 500..=599 => Err(SendError::Retryable { reason: FailureReason::ProviderError, provider_code: code, detail, retry_after }),
        401 | 403 => Err(SendError::permanent(FailureReason::Auth, code, detail)),
        404 | 410 => Err(SendError::permanent(FailureReason::InvalidRecipient, code, detail)),
        _ => Err(SendError::permanent(FailureReason::ContentRejected, code, detail)),
    }
}

notiflow_delivery::impl_channel!(WebhookChannel, "webhook", config.provider, post);

impl WebhookChannel {
    async fn post(&self, delivery: &Delivery) -> Result<Accepted, SendError> {
        let url = self.target(delivery)?;
        // Stable across attempts: receivers drop repeats by it.
        let id = delivery.delivery_id.clone().unwrap_or_else(|| format!("recall_{}", delivery.message_id));
        let body = payload(delivery);
        let timestamp = unix_seconds();
        let signature = sign(&self.key, &id, timestamp, &body);
        let response = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| classify_transport(&e))?;
        let (status, retry_after, answer) = notiflow_delivery::http::read(response).await;
        classify_status(status, retry_after, &answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_by_what_to_do() {
        let kind = |code: u16| match classify_status(StatusCode::from_u16(code).unwrap(), None, "") {
            Ok(_) => "accepted".to_string(),
            Err(SendError::Retryable { reason, .. }) => format!("retry {}", reason.as_str()),
            Err(SendError::Permanent { reason, .. }) => format!("fail {}", reason.as_str()),
        };
        let got: Vec<String> = [200, 204, 429, 408, 500, 503, 401, 403, 404, 410, 400, 422].map(kind).to_vec();
        assert_eq!(
            got,
            [
                "accepted", "accepted", "retry rate_limited", "retry provider_error", "retry provider_error", "retry provider_error",
                "fail auth", "fail auth", "fail invalid_recipient", "fail invalid_recipient", "fail content_rejected", "fail content_rejected"
            ]
        );
    }
}
