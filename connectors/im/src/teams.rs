//! Microsoft Teams through a Workflows webhook ("Post to a channel when a
//! webhook request is received"): the webhook URL, signature included, is
//! the credential, kept in config. The message is an Adaptive Card; the
//! workflow answers 202 Accepted (legacy connectors: 200 with `1`).

use std::collections::BTreeMap;

use notiflow_delivery::{Accepted, Delivery, FailureReason, SendError};
use serde::Deserialize;
use serde_json::json;

use crate::robots::{self, RobotAccount, RobotSecrets};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamsConfig {
    /// Webhooks by name (the delivery's address): `token` is the whole workflow URL.
    pub robots: BTreeMap<String, RobotSecrets>,
    /// Answer deadline per attempt, ms.
    #[serde(default = "robots::default_timeout_ms")]
    pub timeout_ms: u64,
}

pub struct TeamsChannel {
    account: RobotAccount,
}

/// The Adaptive Card message.
pub fn body(delivery: &Delivery) -> serde_json::Value {
    let (title, text) = robots::title_and_text(delivery);
    let mut blocks = Vec::new();
    if let Some(title) = title {
        blocks.push(json!({"type": "TextBlock", "text": title, "weight": "Bolder", "size": "Medium", "wrap": true}));
    }
    blocks.push(json!({"type": "TextBlock", "text": text, "wrap": true}));
    json!({"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": null,
        "content": {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard", "version": "1.4", "body": blocks}}]})
}

impl TeamsChannel {
    pub fn new(name: &str, config: &TeamsConfig) -> Result<Self, String> {
        Ok(TeamsChannel { account: RobotAccount::new("teams", name, "", &config.robots, false, config.timeout_ms)? })
    }

    async fn post(&self, delivery: &Delivery) -> Result<Accepted, SendError> {
        let robot = self.account.robots.pick(delivery)?;
        let (status, retry_after, text) = robots::post_json(self.account.client.post(robot.token.expose()), &body(delivery)).await?;
        classify(status, retry_after, &text)
    }
}

fn classify(status: reqwest::StatusCode, retry_after: Option<std::time::Duration>, body: &str) -> Result<Accepted, SendError> {
    let code = status.as_str().to_string();
    let detail = body.chars().take(200).collect::<String>();
    let reason = match status.as_u16() {
        202 => return Ok(Accepted::default()),
        200 if body.trim() == "1" || body.trim().is_empty() => return Ok(Accepted::default()),
        // A 200 with an error text is how legacy connectors refused payloads.
        200 => FailureReason::ContentRejected,
        429 => return Err(SendError::Retryable { reason: FailureReason::RateLimited, provider_code: code, detail, retry_after }),
        500..=599 => return Err(SendError::Retryable { reason: FailureReason::ProviderError, provider_code: code, detail, retry_after }),
        401 | 403 => FailureReason::Auth,
        // The workflow or its channel is gone.
        404 | 410 => FailureReason::InvalidRecipient,
        _ => FailureReason::ContentRejected,
    };
    Err(SendError::permanent(reason, code, detail))
}

notiflow_delivery::impl_channel!(TeamsChannel, "teams", account.name, post);

#[cfg(test)]
mod tests {
    use reqwest::StatusCode;

    use super::*;

    #[test]
    fn answers_are_read_by_status() {
        let kind = |status: u16, body: &str| notiflow_delivery::summary(&classify(StatusCode::from_u16(status).unwrap(), None, body));
        assert_eq!(kind(202, ""), "accepted ");
        assert_eq!(kind(200, "1"), "accepted ");
        assert_eq!(kind(200, "Summary or Text is required."), "fail content_rejected 200");
        assert_eq!(kind(429, ""), "retry rate_limited 429");
        assert_eq!(kind(401, "DirectApiAuthorizationRequired"), "fail auth 401");
        assert_eq!(kind(404, ""), "fail invalid_recipient 404");
    }
}
