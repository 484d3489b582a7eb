//! DingTalk group robot (自定义机器人), channel `dingtalk_robot`: `POST /robot/send?access_token=..`,
//! signed ("加签") with `timestamp` (ms) and `sign` = Base64(HMAC-SHA256(key =
//! secret, data = "{timestamp}\n{secret}")) in the query. Text, or markdown
//! when the message has a title. Answers `{"errcode": 0, "errmsg": "ok"}`.

use std::collections::BTreeMap;

use notiflow_delivery::{Accepted, Delivery, FailureReason, SendError};
use serde::Deserialize;
use serde_json::json;

use crate::robots::{self, RobotAccount, RobotSecrets, Verdict};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DingTalkConfig {
    /// API base URL (a local fake in tests).
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// Robots by name (the delivery's address): `token` is the access_token, `secret` the `SEC...` signing secret.
    pub robots: BTreeMap<String, RobotSecrets>,
    /// Answer deadline per attempt, ms.
    #[serde(default = "robots::default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_endpoint() -> String {
    "https://oapi.dingtalk.com".into()
}

pub struct DingTalkChannel {
    account: RobotAccount,
}

/// The `sign` of a request made at `timestamp_ms`.
pub fn sign(timestamp_ms: i64, secret: &str) -> String {
    robots::hmac_sha256_base64(secret.as_bytes(), format!("{timestamp_ms}\n{secret}").as_bytes())
}

/// The request body: markdown with the title as heading, or plain text.
pub fn body(delivery: &Delivery) -> serde_json::Value {
    match robots::title_and_text(delivery) {
        (Some(title), text) => json!({"msgtype": "markdown", "markdown": {"title": title, "text": format!("#### {title}\n\n{text}")}}),
        (None, text) => json!({"msgtype": "text", "text": {"content": text}}),
    }
}

impl DingTalkChannel {
    pub fn new(name: &str, config: &DingTalkConfig) -> Result<Self, String> {
        Ok(DingTalkChannel { account: RobotAccount::new("dingtalk", name, &config.endpoint, &config.robots, true, config.timeout_ms)? })
    }

    async fn post(&self, delivery: &Delivery) -> Result<Accepted, SendError> {
        let robot = self.account.robots.pick(delivery)?;
        let timestamp = chrono::Utc::now().timestamp_millis();
        let secret = robot.secret.as_ref().expect("signed robots have a secret");
        let query = [("access_token", robot.token.expose().to_string()), ("timestamp", timestamp.to_string()), ("sign", sign(timestamp, secret.expose()))];
        let request = self.account.client.post(format!("{}/robot/send", self.account.endpoint)).query(&query);
        let (status, retry_after, text) = robots::post_json(request, &body(delivery)).await?;
        classify(status, retry_after, &text)
    }
}

fn classify(status: reqwest::StatusCode, retry_after: Option<std::time::Duration>, body: &str) -> Result<Accepted, SendError> {
    robots::coded_answer(status, retry_after, body, ("errcode", "errmsg"), |code, message| match code {
        // Over 20 messages a minute: DingTalk throttles the robot.
        130101 | 410100 => Verdict::Retry(FailureReason::RateLimited),
        -1 => Verdict::Retry(FailureReason::ProviderError),
        // 310000 covers a bad signature, a stale timestamp, a missing keyword and a refused IP.
        310000 if ["sign", "timestamp", "whitelist", "ip not in"].iter().any(|w| message.contains(w)) => Verdict::Fail(FailureReason::Auth),
        300001 | 300005 | 400102 => Verdict::Fail(FailureReason::Auth),
        _ => Verdict::Fail(FailureReason::ContentRejected),
    })
}

notiflow_delivery::impl_channel!(DingTalkChannel, "dingtalk_robot", account.name, post);

#[cfg(test)]
mod tests {
    use reqwest::StatusCode;

    use super::*;

    fn kind(status: u16, body: &str) -> String {
        notiflow_delivery::summary(&classify(StatusCode::from_u16(status).unwrap(), None, body))
    }

    #[test]
    fn answers_are_read_by_errcode() {
        assert_eq!(kind(200, r#"{"errcode":0,"errmsg":"ok"}"#), "accepted ");
        assert_eq!(kind(200, r#"{"errcode":130101,"errmsg":"send too fast, exceed 20 times per minute"}"#), "retry rate_limited 130101");
        assert_eq!(kind(200, r#"{"errcode":310000,"errmsg":"sign not match"}"#), "fail auth 310000");
        assert_eq!(kind(200, r#"{"errcode":310000,"errmsg":"keywords not in content"}"#), "fail content_rejected 310000");
        assert_eq!(kind(200, r#"{"errcode":300001,"errmsg":"token is not exist"}"#), "fail auth 300001");
        assert_eq!(kind(200, "<html>gateway</html>"), "retry provider_error 200");
        assert_eq!(kind(502, ""), "retry provider_error 502");
    }

    #[test]
    fn the_signature_is_keyed_by_the_secret_over_timestamp_and_secret() {
        // Recomputed here from the documented recipe with the primitives, not with `sign`.
        use base64::Engine;
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"SEC-test").unwrap();
        mac.update(b"1700000000000\nSEC-test");
        let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(sign(1_700_000_000_000, "SEC-test"), expected);
        assert_ne!(sign(1_700_000_000_001, "SEC-test"), expected);
    }
}
