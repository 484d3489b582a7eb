//! DingTalk work notices (工作通知) to members, channel `dingtalk`: the
//! address is the member's userid. Token from `GET /gettoken` (the app's
//! AppKey and AppSecret), cached; `POST
//! /topapi/message/corpconversation/asyncsend_v2` answers a `task_id` (the
//! notice is sent asynchronously; its id is the receipt key).

use std::time::Duration;

use notiflow_delivery::{Accepted, Delivery, FailureReason, Secret, SecretRef, SendError, TokenCache};
use serde::Deserialize;
use serde_json::json;

use crate::robots::{self, Verdict};
use crate::token;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DingTalkWorkConfig {
    /// API base URL (a local fake in tests).
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// The application's AgentId.
    pub agent_id: i64,
    pub app_key: String,
    /// Where the AppSecret is.
    pub app_secret: SecretRef,
    /// Answer deadline per attempt, ms.
    #[serde(default = "robots::default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_endpoint() -> String {
    "https://oapi.dingtalk.com".into()
}

pub struct DingTalkWorkChannel {
    name: String,
    config: DingTalkWorkConfig,
    secret: Secret,
    tokens: TokenCache,
    client: reqwest::Client,
}

impl DingTalkWorkChannel {
    pub fn new(name: &str, config: DingTalkWorkConfig) -> Result<Self, String> {
        let secret = config.app_secret.resolve().map_err(|e| format!("dingtalk_work provider {name}: app_secret: {e}"))?;
        let client = robots::client(config.timeout_ms)?;
        Ok(DingTalkWorkChannel { name: name.into(), config, secret, tokens: TokenCache::default(), client })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.endpoint.trim_end_matches('/'))
    }

    async fn post(&self, delivery: &Delivery) -> Result<Accepted, SendError> {
        let user = delivery.address.as_deref().map(str::trim).filter(|u| !u.is_empty() && !u.contains(','));
        let user = user.ok_or_else(|| SendError::permanent(FailureReason::InvalidRecipient, "no_userid", "dingtalk delivery without one userid"))?;
        let body = json!({"agent_id": self.config.agent_id, "userid_list": user, "msg": crate::dingtalk::body(delivery)});
        let fetch = || token::fetch(self.client.get(self.url("/gettoken")).query(&[("appkey", self.config.app_key.as_str()), ("appsecret", self.secret.expose())]));
        let send = |token: Secret| {
            let request = self.client.post(self.url("/topapi/message/corpconversation/asyncsend_v2")).query(&[("access_token", token.expose().to_string())]);
            let body = &body;
            async move {
                let (status, retry_after, text) = robots::post_json(request, body).await?;
                classify(status, retry_after, &text)
            }
        };
        token::send_with(&self.tokens, fetch, send).await
    }
}

fn classify(status: reqwest::StatusCode, retry_after: Option<Duration>, body: &str) -> Result<Accepted, SendError> {
    let task = serde_json::from_str::<serde_json::Value>(body).ok().and_then(|v| v["task_id"].as_i64());
    let outcome = robots::coded_answer(status, retry_after, body, ("errcode", "errmsg"), |code, _| match code {
        -1 => Verdict::Retry(FailureReason::ProviderError),
        // Too many calls, or the app's daily notice quota.
        90018 | 90002 | 143105 => Verdict::Retry(FailureReason::RateLimited),
        code if token::is_stale(code) => Verdict::Retry(FailureReason::Auth),
        // No such user, user not in the app's range.
        60121 | 33012 | 60011 => Verdict::Fail(FailureReason::InvalidRecipient),
        _ => Verdict::Fail(FailureReason::ContentRejected),
    })?;
    Ok(match task {
        Some(task) => Accepted { provider_message_id: Some(task.to_string()) },
        None => outcome,
    })
}

notiflow_delivery::impl_channel!(DingTalkWorkChannel, "dingtalk", name, post);

#[cfg(test)]
mod tests {
    use reqwest::StatusCode;

    use super::*;

    #[test]
    fn answers_are_read_by_errcode_and_task_id() {
        let kind = |body: &str| notiflow_delivery::summary(&classify(StatusCode::OK, None, body));
        assert_eq!(kind(r#"{"errcode":0,"task_id":256271667526,"request_id":"4jzllmte0wau"}"#), "accepted 256271667526");
        assert_eq!(kind(r#"{"errcode":60121,"errmsg":"找不到该用户"}"#), "fail invalid_recipient 60121");
        assert_eq!(kind(r#"{"errcode":40014,"errmsg":"不合法的access_token"}"#), "retry auth 40014");
        assert_eq!(kind(r#"{"errcode":90018,"errmsg":"请求过于频繁"}"#), "retry rate_limited 90018");
    }
}
