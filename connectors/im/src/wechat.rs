//! WeChat official account template messages: `POST
//! /cgi-bin/message/template/send?access_token=..` to a follower's openid
//! (the delivery's address). The access token comes from the *stable* token
//! API (`POST /cgi-bin/stable_token`), which, unlike `/cgi-bin/token`, does
//! not invalidate the token other instances hold; it is cached and
//! refreshed before expiry, and refetched once at once when WeChat says it
//! is invalid or expired. `client_msg_id` (the delivery id) makes a resend
//! of the same delivery a no-op at WeChat.

use std::collections::BTreeMap;
use std::time::Duration;

use notiflow_delivery::{Accepted, Delivery, FailureReason, Secret, SecretRef, SendError, TokenCache};
use serde::Deserialize;
use serde_json::json;

use crate::robots::{self, Verdict};
use crate::token;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeChatConfig {
    /// API base URL (a local fake in tests).
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    pub app_id: String,
    /// Where the AppSecret is.
    pub app_secret: SecretRef,
    /// notiflow template -> the WeChat template and which of its fields get the rendered subject and body.
    pub templates: BTreeMap<String, WeChatTemplate>,
    /// Answer deadline per attempt, ms.
    #[serde(default = "robots::default_timeout_ms")]
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeChatTemplate {
    /// The template id in the official account's template library.
    pub id: String,
    /// Field receiving the rendered subject (e.g. `thing1`); none: not sent.
    #[serde(default)]
    pub subject_field: Option<String>,
    /// Field receiving the rendered body (e.g. `thing2`).
    pub body_field: String,
    /// Page opened when the message is tapped.
    #[serde(default)]
    pub url: Option<String>,
}

fn default_endpoint() -> String {
    "https://api.weixin.qq.com".into()
}

pub struct WeChatChannel {
    name: String,
    config: WeChatConfig,
    secret: Secret,
    tokens: TokenCache,
    client: reqwest::Client,
}

/// The send body for `openid`.
pub fn body(delivery: &Delivery, template: &WeChatTemplate, openid: &str) -> serde_json::Value {
    let mut data = serde_json::Map::new();
    if let (Some(field), Some(subject)) = (&template.subject_field, robots::title_and_text(delivery).0) {
        data.insert(field.clone(), json!({"value": subject}));
    }
    data.insert(template.body_field.clone(), json!({"value": delivery.body.as_deref().unwrap_or("")}));
    let mut body = json!({"touser": openid, "template_id": template.id, "data": data,
        "client_msg_id": delivery.delivery_id.as_deref().unwrap_or(&delivery.message_id)});
    if let Some(url) = &template.url {
        body["url"] = json!(url);
    }
    body
}

impl WeChatChannel {
    pub fn new(name: &str, config: WeChatConfig) -> Result<Self, String> {
        let secret = config.app_secret.resolve().map_err(|e| format!("wechat provider {name}: app_secret: {e}"))?;
        let client = robots::client(config.timeout_ms)?;
        Ok(WeChatChannel { name: name.into(), config, secret, tokens: TokenCache::default(), client })
    }

    async fn fetch_token(&self) -> Result<(Secret, Duration), SendError> {
        let url = format!("{}/cgi-bin/stable_token", self.config.endpoint.trim_end_matches('/'));
        let request = json!({"grant_type": "client_credential", "appid": self.config.app_id, "secret": self.secret.expose(), "force_refresh": false});
        token::fetch(self.client.post(url).json(&request)).await
    }

    async fn post(&self, delivery: &Delivery) -> Result<Accepted, SendError> {
        let openid = delivery.address.as_deref().map(str::trim).filter(|a| !a.is_empty());
        let openid = openid.ok_or_else(|| SendError::permanent(FailureReason::InvalidRecipient, "no_openid", "wechat delivery without an openid"))?;
        let name = delivery.template.as_deref().unwrap_or("");
        let template = self.config.templates.get(name).ok_or_else(|| {
            SendError::permanent(FailureReason::ContentRejected, "no_template", format!("no WeChat template mapped for `{name}`"))
        })?;
        let body = body(delivery, template, openid);
        let url = format!("{}/cgi-bin/message/template/send", self.config.endpoint.trim_end_matches('/'));
        let send = |token: Secret| {
            let request = self.client.post(&url).query(&[("access_token", token.expose().to_string())]);
            let body = &body;
            async move {
                let (status, retry_after, text) = robots::post_json(request, body).await?;
                classify(status, retry_after, &text)
            }
        };
        token::send_with(&self.tokens, || self.fetch_token(), send).await
    }
}

fn classify(status: reqwest::StatusCode, retry_after: Option<Duration>, body: &str) -> Result<Accepted, SendError> {
    let msgid = serde_json::from_str::<serde_json::Value>(body).ok().and_then(|v| v["msgid"].as_i64());
    let outcome = robots::coded_answer(status, retry_after, body, ("errcode", "errmsg"), |code, _| match code {
        -1 => Verdict::Retry(FailureReason::ProviderError),
        // Daily quota or frequency limit reached.
        45009 | 45047 => Verdict::Retry(FailureReason::RateLimited),
        code if token::is_stale(code) => Verdict::Retry(FailureReason::Auth),
        // Invalid openid, the user unfollowed, refused this template, or is blocked.
        40003 | 43004 | 43101 | 43019 => Verdict::Fail(FailureReason::InvalidRecipient),
        _ => Verdict::Fail(FailureReason::ContentRejected),
    });
    outcome.map(|_| Accepted { provider_message_id: msgid.map(|id| id.to_string()) })
}

notiflow_delivery::impl_channel!(WeChatChannel, "wechat", name, post);

#[cfg(test)]
mod tests {
    use reqwest::StatusCode;

    use super::*;

    #[test]
    fn answers_are_read_by_errcode() {
        let kind = |body: &str| notiflow_delivery::summary(&classify(StatusCode::OK, None, body));
        assert_eq!(kind(r#"{"errcode":0,"errmsg":"ok","msgid":200228332}"#), "accepted 200228332");
        assert_eq!(kind(r#"{"errcode":43004,"errmsg":"require subscribe"}"#), "fail invalid_recipient 43004");
        assert_eq!(kind(r#"{"errcode":42001,"errmsg":"access_token expired"}"#), "retry auth 42001");
        assert_eq!(kind(r#"{"errcode":40037,"errmsg":"invalid template_id"}"#), "fail content_rejected 40037");
        assert_eq!(kind(r#"{"errcode":45009,"errmsg":"reach max api daily quota limit"}"#), "retry rate_limited 45009");
    }
}
