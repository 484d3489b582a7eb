//! Slack incoming webhooks: `POST /services/T.../B.../...` with
//! `{"text": ...}` (mrkdwn). The path is the credential. Slack answers
//! `200 ok` in plain text; errors are plain-text codes with 400/403/404/410,
//! and 429 with Retry-After.

use std::collections::BTreeMap;

use notiflow_delivery::{Accepted, Delivery, FailureReason, SendError};
use serde::Deserialize;
use serde_json::json;

use crate::robots::{self, RobotAccount, RobotSecrets};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// Webhook base URL (a local fake in tests).
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// Webhooks by name (the delivery's address): `token` is the `T.../B.../...` part of the URL.
    pub robots: BTreeMap<String, RobotSecrets>,
    /// Answer deadline per attempt, ms.
    #[serde(default = "robots::default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_endpoint() -> String {
    "https://hooks.slack.com".into()
}

pub struct SlackChannel {
    account: RobotAccount,
}

/// mrkdwn escaping Slack asks for: `&`, `<` and `>`.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

pub fn body(delivery: &Delivery) -> serde_json::Value {
    match robots::title_and_text(delivery) {
        (Some(title), text) => json!({"text": format!("*{}*\n{}", escape(title), escape(text))}),
        (None, text) => json!({"text": escape(text)}),
    }
}

impl SlackChannel {
    pub fn new(name: &str, config: &SlackConfig) -> Result<Self, String> {
        Ok(SlackChannel { account: RobotAccount::new("slack", name, &config.endpoint, &config.robots, false, config.timeout_ms)? })
    }

    async fn post(&self, delivery: &Delivery) -> Result<Accepted, SendError> {
        let robot = self.account.robots.pick(delivery)?;
        let request = self.account.client.post(format!("{}/services/{}", self.account.endpoint, robot.token.expose().trim_matches('/')));
        let (status, retry_after, text) = robots::post_json(request, &body(delivery)).await?;
        classify(status, retry_after, &text)
    }
}

fn classify(status: reqwest::StatusCode, retry_after: Option<std::time::Duration>, body: &str) -> Result<Accepted, SendError> {
    let code = body.trim();
    let retry = |reason| SendError::Retryable { reason, provider_code: status.as_str().into(), detail: code.into(), retry_after };
    match status.as_u16() {
        200 if code == "ok" => Ok(Accepted::default()),
        429 => Err(retry(FailureReason::RateLimited)),
        500..=599 => Err(retry(FailureReason::ProviderError)),
        // 200 with anything but "ok" is not Slack's acceptance.
        200..=299 => Err(notiflow_delivery::http::unreadable(status, body)),
        403 | 401 => Err(SendError::permanent(FailureReason::Auth, code, "webhook refused")),
        404 | 410 => Err(SendError::permanent(FailureReason::InvalidRecipient, code, "channel gone or archived")),
        _ => Err(SendError::permanent(FailureReason::ContentRejected, code, "payload refused")),
    }
}

notiflow_delivery::impl_channel!(SlackChannel, "slack", account.name, post);

#[cfg(test)]
mod tests {
    use reqwest::StatusCode;

    use super::*;

    #[test]
    fn answers_are_plain_text_codes() {
        let kind = |status: u16, body: &str| notiflow_delivery::summary(&classify(StatusCode::from_u16(status).unwrap(), None, body));
        assert_eq!(kind(200, "ok"), "accepted ");
        assert_eq!(kind(200, "<html>captive portal</html>"), "retry provider_error 200");
        assert_eq!(kind(429, "rate_limited"), "retry rate_limited 429");
        assert_eq!(kind(403, "invalid_token"), "fail auth invalid_token");
        assert_eq!(kind(410, "channel_is_archived"), "fail invalid_recipient channel_is_archived");
        assert_eq!(kind(400, "no_text"), "fail content_rejected no_text");
        assert_eq!(escape("a < b & c"), "a &lt; b &amp; c");
    }
}
