//! WeCom (企业微信) group robot, channel `wecom_robot`: `POST /cgi-bin/webhook/send?key=..`; the key
//! is the only credential (WeCom robots are not signed: keep the key secret).
//! Text, or markdown when the message has a title. Answers
//! `{"errcode": 0, "errmsg": "ok"}`.

use std::collections::BTreeMap;

use notiflow_delivery::{Accepted, Delivery, FailureReason, SendError};
use serde::Deserialize;
use serde_json::json;

use crate::robots::{self, RobotAccount, RobotSecrets, Verdict};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeComConfig {
    /// API base URL (a local fake in tests).
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// Robots by name (the delivery's address): `token` is the webhook key.
    pub robots: BTreeMap<String, RobotSecrets>,
    /// Answer deadline per attempt, ms.
    #[serde(default = "robots::default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_endpoint() -> String {
    "https://qyapi.weixin.qq.com".into()
}

pub struct WeComChannel {
    account: RobotAccount,
}

pub fn body(delivery: &Delivery) -> serde_json::Value {
    match robots::title_and_text(delivery) {
        (Some(title), text) => json!({"msgtype": "markdown", "markdown": {"content": format!("**{title}**\n{text}")}}),
        (None, text) => json!({"msgtype": "text", "text": {"content": text}}),
    }
}

impl WeComChannel {
    pub fn new(name: &str, config: &WeComConfig) -> Result<Self, String> {
        Ok(WeComChannel { account: RobotAccount::new("wecom", name, &config.endpoint, &config.robots, false, config.timeout_ms)? })
    }

    async fn post(&self, delivery: &Delivery) -> Result<Accepted, SendError> {
        let robot = self.account.robots.pick(delivery)?;
        let request = self.account.client.post(format!("{}/cgi-bin/webhook/send", self.account.endpoint)).query(&[("key", robot.token.expose())]);
        let (status, retry_after, text) = robots::post_json(request, &body(delivery)).await?;
        classify(status, retry_after, &text)
    }
}

fn classify(status: reqwest::StatusCode, retry_after: Option<std::time::Duration>, body: &str) -> Result<Accepted, SendError> {
    robots::coded_answer(status, retry_after, body, ("errcode", "errmsg"), |code, _| match code {
        // API frequency limit (20 messages a minute per robot); -1 system busy.
        45009 => Verdict::Retry(FailureReason::RateLimited),
        -1 => Verdict::Retry(FailureReason::ProviderError),
        // Invalid webhook key.
        93000 | 40001 | 40014 => Verdict::Fail(FailureReason::Auth),
        _ => Verdict::Fail(FailureReason::ContentRejected),
    })
}

notiflow_delivery::impl_channel!(WeComChannel, "wecom_robot", account.name, post);

#[cfg(test)]
mod tests {
    use reqwest::StatusCode;

    use super::*;

    #[test]
    fn answers_are_read_by_errcode() {
        let kind = |body: &str| notiflow_delivery::summary(&classify(StatusCode::OK, None, body));
        assert_eq!(kind(r#"{"errcode":0,"errmsg":"ok"}"#), "accepted ");
        assert_eq!(kind(r#"{"errcode":45009,"errmsg":"api freq out of limit"}"#), "retry rate_limited 45009");
        assert_eq!(kind(r#"{"errcode":93000,"errmsg":"invalid webhook url"}"#), "fail auth 93000");
        assert_eq!(kind(r#"{"errcode":40058,"errmsg":"content exceed max length"}"#), "fail content_rejected 40058");
    }
}
