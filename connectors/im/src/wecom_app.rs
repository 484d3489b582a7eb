//! WeCom (企业微信) application messages to members, channel `wecom`: the
//! address is the member's UserID. Token from `GET /cgi-bin/gettoken`
//! (corp id + the app's secret), cached; `POST /cgi-bin/message/send` with
//! WeCom's own duplicate check keyed on the message content for 30 minutes.
//! An answer can be `errcode: 0` and still name our user in `invaliduser`:
//! that is no delivery.

use std::time::Duration;

use notiflow_delivery::{Accepted, Delivery, FailureReason, Secret, SecretRef, SendError, TokenCache};
use serde::Deserialize;
use serde_json::json;

use crate::robots::{self, Verdict};
use crate::token;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeComAppConfig {
    /// API base URL (a local fake in tests).
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    pub corp_id: String,
    /// The application's AgentId.
    pub agent_id: i64,
    /// Where the application's Secret is.
    pub secret: SecretRef,
    /// Answer deadline per attempt, ms.
    #[serde(default = "robots::default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_endpoint() -> String {
    "https://qyapi.weixin.qq.com".into()
}

pub struct WeComAppChannel {
    name: String,
    config: WeComAppConfig,
    secret: Secret,
    tokens: TokenCache,
    client: reqwest::Client,
}

pub fn body(delivery: &Delivery, agent_id: i64, user: &str) -> serde_json::Value {
    let mut body = json!({"touser": user, "agentid": agent_id, "safe": 0, "enable_duplicate_check": 1, "duplicate_check_interval": 1800});
    match robots::title_and_text(delivery) {
        (Some(title), text) => {
            body["msgtype"] = json!("markdown");
            body["markdown"] = json!({"content": format!("**{title}**\n{text}")});
        }
        (None, text) => {
            body["msgtype"] = json!("text");
            body["text"] = json!({"content": text});
        }
    }
    body
}

impl WeComAppChannel {
    pub fn new(name: &str, config: WeComAppConfig) -> Result<Self, String> {
        let secret = config.secret.resolve().map_err(|e| format!("wecom_app provider {name}: secret: {e}"))?;
        let client = robots::client(config.timeout_ms)?;
        Ok(WeComAppChannel { name: name.into(), config, secret, tokens: TokenCache::default(), client })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.endpoint.trim_end_matches('/'))
    }

    async fn post(&self, delivery: &Delivery) -> Result<Accepted, SendError> {
        let user = delivery.address.as_deref().map(str::trim).filter(|u| !u.is_empty() && !u.contains('|'));
        let user = user.ok_or_else(|| SendError::permanent(FailureReason::InvalidRecipient, "no_userid", "wecom delivery without one member UserID"))?;
        let body = body(delivery, self.config.agent_id, user);
        let fetch = || token::fetch(self.client.get(self.url("/cgi-bin/gettoken")).query(&[("corpid", self.config.corp_id.as_str()), ("corpsecret", self.secret.expose())]));
        let send = |token: Secret| {
            let request = self.client.post(self.url("/cgi-bin/message/send")).query(&[("access_token", token.expose().to_string())]);
            let body = &body;
            async move {
                let (status, retry_after, text) = robots::post_json(request, body).await?;
                classify(status, retry_after, &text, user)
            }
        };
        token::send_with(&self.tokens, fetch, send).await
    }
}

fn classify(status: reqwest::StatusCode, retry_after: Option<Duration>, body: &str, user: &str) -> Result<Accepted, SendError> {
    let answer: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let outcome = robots::coded_answer(status, retry_after, body, ("errcode", "errmsg"), |code, _| match code {
        -1 => Verdict::Retry(FailureReason::ProviderError),
        45009 | 45033 => Verdict::Retry(FailureReason::RateLimited),
        code if token::is_stale(code) => Verdict::Retry(FailureReason::Auth),
        // All recipients invalid / not in the app's visible range.
        81013 | 60111 | 82001 => Verdict::Fail(FailureReason::InvalidRecipient),
        60020 | 48002 => Verdict::Fail(FailureReason::Auth),
        _ => Verdict::Fail(FailureReason::ContentRejected),
    })?;
    let field = |name: &str| answer.as_ref().and_then(|a| a[name].as_str()).unwrap_or("").to_string();
    if field("invaliduser").split('|').any(|u| u == user) || field("unlicenseduser").split('|').any(|u| u == user) {
        return Err(SendError::permanent(FailureReason::InvalidRecipient, "invaliduser", format!("WeCom does not know or license `{user}`")));
    }
    let msgid = field("msgid");
    Ok(if msgid.is_empty() { outcome } else { Accepted { provider_message_id: Some(msgid) } })
}

notiflow_delivery::impl_channel!(WeComAppChannel, "wecom", name, post);

#[cfg(test)]
mod tests {
    use reqwest::StatusCode;

    use super::*;

    #[test]
    fn an_ok_answer_naming_our_user_invalid_is_no_delivery() {
        let kind = |body: &str| notiflow_delivery::summary(&classify(StatusCode::OK, None, body, "zhangsan"));
        assert_eq!(kind(r#"{"errcode":0,"errmsg":"ok","invaliduser":"","msgid":"m-1"}"#), "accepted m-1");
        assert_eq!(kind(r#"{"errcode":0,"errmsg":"ok","invaliduser":"zhangsan","msgid":"m-2"}"#), "fail invalid_recipient invaliduser");
        assert_eq!(kind(r#"{"errcode":81013,"errmsg":"user & party & tag all invalid"}"#), "fail invalid_recipient 81013");
        assert_eq!(kind(r#"{"errcode":42001,"errmsg":"access_token expired"}"#), "retry auth 42001");
        assert_eq!(kind(r#"{"errcode":45009,"errmsg":"api freq out of limit"}"#), "retry rate_limited 45009");
    }
}
