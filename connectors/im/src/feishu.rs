//! Feishu / Lark custom bot: `POST /open-apis/bot/v2/hook/{token}` with the
//! signature in the body: `timestamp` (seconds, as a string) and `sign` =
//! Base64(HMAC-SHA256(key = "{timestamp}\n{secret}", data = empty)). Text, or
//! a `post` (rich text with a title). Answers `{"code": 0, "msg": "success"}`
//! (older deployments: `StatusCode` / `StatusMessage`).

use std::collections::BTreeMap;

use notiflow_delivery::{Accepted, Delivery, FailureReason, SendError};
use serde::Deserialize;
use serde_json::json;

use crate::robots::{self, RobotAccount, RobotSecrets, Verdict};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeishuConfig {
    /// API base URL: `https://open.feishu.cn`, or `https://open.larksuite.com` for Lark.
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// Robots by name (the delivery's address): `token` is the hook id, `secret` the signing secret.
    pub robots: BTreeMap<String, RobotSecrets>,
    /// Answer deadline per attempt, ms.
    #[serde(default = "robots::default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_endpoint() -> String {
    "https://open.feishu.cn".into()
}

pub struct FeishuChannel {
    account: RobotAccount,
}

/// The `sign` of a request made at `timestamp_s`.
pub fn sign(timestamp_s: i64, secret: &str) -> String {
    robots::hmac_sha256_base64(format!("{timestamp_s}\n{secret}").as_bytes(), b"")
}

/// The request body without the signature fields.
pub fn body(delivery: &Delivery) -> serde_json::Value {
    match robots::title_and_text(delivery) {
        (Some(title), text) => json!({"msg_type": "post", "content": {"post": {"zh_cn": {"title": title, "content": [[{"tag": "text", "text": text}]]}}}}),
        (None, text) => json!({"msg_type": "text", "content": {"text": text}}),
    }
}

impl FeishuChannel {
    pub fn new(name: &str, config: &FeishuConfig) -> Result<Self, String> {
        Ok(FeishuChannel { account: RobotAccount::new("feishu", name, &config.endpoint, &config.robots, true, config.timeout_ms)? })
    }

    async fn post(&self, delivery: &Delivery) -> Result<Accepted, SendError> {
        let robot = self.account.robots.pick(delivery)?;
        let timestamp = chrono::Utc::now().timestamp();
        let secret = robot.secret.as_ref().expect("signed robots have a secret");
        let mut body = body(delivery);
        body["timestamp"] = json!(timestamp.to_string());
        body["sign"] = json!(sign(timestamp, secret.expose()));
        let request = self.account.client.post(format!("{}/open-apis/bot/v2/hook/{}", self.account.endpoint, robot.token.expose()));
        let (status, retry_after, text) = robots::post_json(request, &body).await?;
        classify(status, retry_after, &text)
    }
}

fn classify(status: reqwest::StatusCode, retry_after: Option<std::time::Duration>, body: &str) -> Result<Accepted, SendError> {
    let fields = if body.contains("\"StatusCode\"") { ("StatusCode", "StatusMessage") } else { ("code", "msg") };
    robots::coded_answer(status, retry_after, body, fields, |code, _| match code {
        // Frequency limited (100 a minute, 5 a second per bot).
        11232 => Verdict::Retry(FailureReason::RateLimited),
        // Bad signature or stale timestamp, IP not allowed, hook token invalid.
        19021 | 19022 | 19001 => Verdict::Fail(FailureReason::Auth),
        _ => Verdict::Fail(FailureReason::ContentRejected),
    })
}

notiflow_delivery::impl_channel!(FeishuChannel, "feishu", account.name, post);

#[cfg(test)]
mod tests {
    use reqwest::StatusCode;

    use super::*;

    fn kind(status: u16, body: &str) -> String {
        notiflow_delivery::summary(&classify(StatusCode::from_u16(status).unwrap(), None, body))
    }

    #[test]
    fn answers_are_read_by_code_in_both_formats() {
        assert_eq!(kind(200, r#"{"code":0,"msg":"success","data":{}}"#), "accepted ");
        assert_eq!(kind(200, r#"{"StatusCode":0,"StatusMessage":"success"}"#), "accepted ");
        assert_eq!(kind(200, r#"{"code":11232,"msg":"frequency limited"}"#), "retry rate_limited 11232");
        assert_eq!(kind(200, r#"{"code":19021,"msg":"sign match fail or timestamp is not within one hour from current time"}"#), "fail auth 19021");
        assert_eq!(kind(200, r#"{"code":19024,"msg":"Key Words Not Found"}"#), "fail content_rejected 19024");
        assert_eq!(kind(400, r#"{"code":9499,"msg":"Bad Request"}"#), "fail content_rejected 9499");
    }

    #[test]
    fn the_signature_is_keyed_by_timestamp_and_secret_over_nothing() {
        use base64::Engine;
        use hmac::{Hmac, Mac};
        let mac = Hmac::<sha2::Sha256>::new_from_slice(b"1599360473\nbot-secret").unwrap();
        let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(sign(1_599_360_473, "bot-secret"), expected);
    }
}
