//! Telegram Bot API: `POST /bot{token}/sendMessage` with the chat id from the
//! delivery's address, HTML parse mode (title in bold). Answers
//! `{"ok": true, "result": {"message_id": ...}}` or `{"ok": false,
//! "error_code": ..., "description": ..., "parameters": {"retry_after": s}}`.

use std::time::Duration;

use notiflow_delivery::{Accepted, Delivery, FailureReason, Secret, SecretRef, SendError, http};
use serde::Deserialize;
use serde_json::json;

use crate::robots;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelegramConfig {
    /// API base URL (a local fake in tests).
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// Where the bot token (`123456:ABC...`) is.
    pub bot_token: SecretRef,
    /// Answer deadline per attempt, ms.
    #[serde(default = "robots::default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_endpoint() -> String {
    "https://api.telegram.org".into()
}

pub struct TelegramChannel {
    name: String,
    endpoint: String,
    token: Secret,
    client: reqwest::Client,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

pub fn body(delivery: &Delivery) -> serde_json::Value {
    let text = match robots::title_and_text(delivery) {
        (Some(title), text) => format!("<b>{}</b>\n{}", escape(title), escape(text)),
        (None, text) => escape(text),
    };
    json!({"chat_id": delivery.address.as_deref().unwrap_or("").trim(), "text": text, "parse_mode": "HTML", "disable_web_page_preview": true})
}

impl TelegramChannel {
    pub fn new(name: &str, config: &TelegramConfig) -> Result<Self, String> {
        let token = config.bot_token.resolve().map_err(|e| format!("telegram provider {name}: bot_token: {e}"))?;
        Ok(TelegramChannel { name: name.into(), endpoint: config.endpoint.trim_end_matches('/').into(), token, client: robots::client(config.timeout_ms)? })
    }

    async fn post(&self, delivery: &Delivery) -> Result<Accepted, SendError> {
        if delivery.address.as_deref().is_none_or(|a| a.trim().is_empty()) {
            return Err(SendError::permanent(FailureReason::InvalidRecipient, "no_chat_id", "telegram delivery without a chat id"));
        }
        let request = self.client.post(format!("{}/bot{}/sendMessage", self.endpoint, self.token.expose()));
        let (status, _, text) = robots::post_json(request, &body(delivery)).await?;
        classify(status, &text)
    }
}

#[derive(Deserialize)]
struct Answer {
    ok: bool,
    #[serde(default)]
    result: Option<serde_json::Value>,
    #[serde(default)]
    error_code: Option<i64>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<serde_json::Value>,
}

fn classify(status: reqwest::StatusCode, body: &str) -> Result<Accepted, SendError> {
    let Ok(answer) = serde_json::from_str::<Answer>(body) else { return Err(http::unreadable(status, body)) };
    if answer.ok {
        let id = answer.result.as_ref().and_then(|r| r.get("message_id")).and_then(|m| m.as_i64());
        return match id {
            Some(id) => Ok(Accepted { provider_message_id: Some(id.to_string()) }),
            None => Err(http::unreadable(status, body)),
        };
    }
    let code = answer.error_code.unwrap_or(status.as_u16() as i64);
    let detail = answer.description.unwrap_or_default();
    let retry_after = answer.parameters.as_ref().and_then(|p| p.get("retry_after")).and_then(|s| s.as_u64()).map(Duration::from_secs);
    let reason = match code {
        429 => return Err(SendError::Retryable { reason: FailureReason::RateLimited, provider_code: code.to_string(), detail, retry_after }),
        500..=599 => return Err(SendError::retryable(FailureReason::ProviderError, code.to_string(), detail)),
        401 | 404 => FailureReason::Auth,
        // "chat not found", "bot was blocked by the user", "user is deactivated".
        403 => FailureReason::InvalidRecipient,
        400 if detail.contains("chat not found") || detail.contains("user not found") => FailureReason::InvalidRecipient,
        _ => FailureReason::ContentRejected,
    };
    Err(SendError::permanent(reason, code.to_string(), detail))
}

notiflow_delivery::impl_channel!(TelegramChannel, "telegram", name, post);

#[cfg(test)]
mod tests {
    use reqwest::StatusCode;

    use super::*;

    #[test]
    fn answers_are_read_from_ok_and_error_code() {
        let kind = |status: u16, body: &str| notiflow_delivery::summary(&classify(StatusCode::from_u16(status).unwrap(), body));
        assert_eq!(kind(200, r#"{"ok":true,"result":{"message_id":42,"chat":{"id":7}}}"#), "accepted 42");
        assert_eq!(kind(200, r#"{"ok":true,"result":{}}"#), "retry provider_error 200");
        let busy = r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 3","parameters":{"retry_after":3}}"#;
        let outcome = classify(StatusCode::TOO_MANY_REQUESTS, busy);
        assert!(matches!(outcome, Err(SendError::Retryable { retry_after: Some(d), .. }) if d == Duration::from_secs(3)));
        assert_eq!(kind(403, r#"{"ok":false,"error_code":403,"description":"Forbidden: bot was blocked by the user"}"#), "fail invalid_recipient 403");
        assert_eq!(kind(400, r#"{"ok":false,"error_code":400,"description":"Bad Request: chat not found"}"#), "fail invalid_recipient 400");
        assert_eq!(kind(400, r#"{"ok":false,"error_code":400,"description":"Bad Request: message is too long"}"#), "fail content_rejected 400");
        assert_eq!(kind(401, r#"{"ok":false,"error_code":401,"description":"Unauthorized"}"#), "fail auth 401");
    }
}
