//! The chat channels against local fakes that check credentials, signatures
//! and message shape as each API documents them: what arrives, and how busy,
//! down, refused and unknown targets are classified.

use std::collections::BTreeMap;

use notiflow_delivery::{Channel, Delivery, SecretRef, summary};
use notiflow_im::fake::{self, FakeProvider, Mode};
use notiflow_im::{
    DingTalkChannel, DingTalkConfig, FeishuChannel, FeishuConfig, RobotSecrets, SlackChannel, SlackConfig, TeamsChannel, TeamsConfig, TelegramChannel,
    TelegramConfig,
    WeChatChannel, WeChatConfig, WeChatTemplate, WeComChannel, WeComConfig,
};
use notiflow_im::{DingTalkWorkChannel, DingTalkWorkConfig, WeComAppChannel, WeComAppConfig};

fn secret(name: &str, value: &str) -> SecretRef {
    // SAFETY: every test sets its own variable names.
    unsafe { std::env::set_var(name, value) };
    SecretRef::env(name)
}

fn robots(name: &str, token: SecretRef, signing: Option<SecretRef>) -> BTreeMap<String, RobotSecrets> {
    BTreeMap::from([(name.to_string(), RobotSecrets { token, secret: signing })])
}

fn message(address: &str, subject: Option<&str>, body: &str) -> Delivery {
    serde_json::from_value(serde_json::json!({"type": "send", "delivery_id": "d_1", "message_id": "m_1", "request_id": "r1", "tenant": "acme",
        "channel": "chat", "address": address, "subject": subject, "body": body}))
    .unwrap()
}

/// Accepted plain and titled messages, then busy, down and unknown-robot answers.
async fn common_outcomes(channel: &dyn Channel, fake: &FakeProvider, robot: &str, busy: &str, down: &str) {
    let send = |d: Delivery| async move { summary(&channel.send(&d, 1).await) };
    assert!(send(message(robot, None, "disk full on db-1")).await.starts_with("accepted"));
    assert!(send(message(robot, Some("Deploy"), "v1.2 is live")).await.starts_with("accepted"));
    assert_eq!(send(message("nobody", None, "x")).await, "fail invalid_recipient unknown_robot");
    fake.set_mode(Mode::Busy(2));
    assert_eq!(send(message(robot, None, "x")).await, busy);
    fake.set_mode(Mode::Down);
    assert_eq!(send(message(robot, None, "x")).await, down);
    fake.set_mode(Mode::Accept);
    let log = fake.log();
    assert!(log.refused.is_empty(), "{:?}", log.refused);
    let texts: Vec<&str> = log.accepted.iter().map(|r| r.body.as_str()).collect();
    assert_eq!(texts.len(), 2);
    assert!(texts[0] == "disk full on db-1" && texts[1].contains("Deploy") && texts[1].contains("v1.2 is live"), "{texts:?}");
}

#[tokio::test]
async fn dingtalk_robot_signs_every_request() {
    let fake = fake::dingtalk("dt-token", "SEC-dt-secret").await;
    let config = |signing: &str| DingTalkConfig {
        endpoint: fake.endpoint.clone(),
        robots: robots("ops", secret("NOTIFLOW_IT_DT_TOKEN", "dt-token"), Some(secret(signing, if signing.ends_with("BAD") { "SEC-wrong" } else { "SEC-dt-secret" }))),
        timeout_ms: 2000,
    };
    let channel = DingTalkChannel::new("dingtalk", &config("NOTIFLOW_IT_DT_SECRET")).unwrap();
    common_outcomes(&channel, &fake, "ops", "retry rate_limited 130101", "retry provider_error 503").await;
    assert_eq!(fake.log().accepted.iter().map(|r| r.to.as_str()).collect::<Vec<_>>(), ["text", "markdown"]);
    let wrong = DingTalkChannel::new("dingtalk", &config("NOTIFLOW_IT_DT_SECRET_BAD")).unwrap();
    assert_eq!(summary(&wrong.send(&message("ops", None, "x"), 1).await), "fail auth 310000");
    let unsigned = DingTalkConfig { robots: robots("ops", secret("NOTIFLOW_IT_DT_TOKEN", "dt-token"), None), ..config("NOTIFLOW_IT_DT_SECRET") };
    assert!(DingTalkChannel::new("dingtalk", &unsigned).err().unwrap().contains("signing `secret`"));
}

#[tokio::test]
async fn feishu_bot_signs_in_the_body() {
    let fake = fake::feishu("hook-123", "fs-secret").await;
    let config = |value: &str| FeishuConfig {
        endpoint: fake.endpoint.clone(),
        robots: robots("ops", secret("NOTIFLOW_IT_FS_TOKEN", "hook-123"), Some(secret(&format!("NOTIFLOW_IT_FS_{value}"), value))),
        timeout_ms: 2000,
    };
    let channel = FeishuChannel::new("feishu", &config("fs-secret")).unwrap();
    common_outcomes(&channel, &fake, "ops", "retry rate_limited 11232", "retry provider_error 503").await;
    assert_eq!(fake.log().accepted.iter().map(|r| r.to.as_str()).collect::<Vec<_>>(), ["text", "post"]);
    let wrong = FeishuChannel::new("feishu", &config("not-it")).unwrap();
    assert_eq!(summary(&wrong.send(&message("ops", None, "x"), 1).await), "fail auth 19021");
}

#[tokio::test]
async fn wecom_robot_is_addressed_by_key() {
    let fake = fake::wecom("wc-key").await;
    let config = |key: &str| WeComConfig {
        endpoint: fake.endpoint.clone(),
        robots: robots("ops", secret(&format!("NOTIFLOW_IT_WC_{}", key.len()), key), None),
        timeout_ms: 2000,
    };
    let channel = WeComChannel::new("wecom", &config("wc-key")).unwrap();
    common_outcomes(&channel, &fake, "ops", "retry rate_limited 45009", "retry provider_error 503").await;
    let wrong = WeComChannel::new("wecom", &config("other-key")).unwrap();
    assert_eq!(summary(&wrong.send(&message("ops", None, "x"), 1).await), "fail auth 93000");
}

#[tokio::test]
async fn slack_webhook_posts_escaped_mrkdwn() {
    let fake = fake::slack("T000/B000/XXXX").await;
    let config = SlackConfig { endpoint: fake.endpoint.clone(), robots: robots("alerts", secret("NOTIFLOW_IT_SLACK", "T000/B000/XXXX"), None), timeout_ms: 2000 };
    let channel = SlackChannel::new("slack", &config).unwrap();
    common_outcomes(&channel, &fake, "alerts", "retry rate_limited 429", "retry provider_error 503").await;
    assert_eq!(summary(&channel.send(&message("alerts", None, "a <b> & c"), 1).await), "accepted ");
    assert_eq!(fake.log().accepted[2].body, "a &lt;b&gt; &amp; c");
}

#[tokio::test]
async fn telegram_bot_sends_to_the_chat_id() {
    let fake = fake::telegram("123:ABC").await;
    let config = |token: &str| TelegramConfig { endpoint: fake.endpoint.clone(), bot_token: secret(&format!("NOTIFLOW_IT_TG_{}", token.len()), token), timeout_ms: 2000 };
    let channel = TelegramChannel::new("telegram", &config("123:ABC")).unwrap();
    let send = |d: Delivery| {
        let channel = &channel;
        async move { summary(&channel.send(&d, 1).await) }
    };
    assert_eq!(send(message("7001", Some("Deploy <prod>"), "done")).await, "accepted 1");
    assert_eq!(fake.log().accepted[0].body, "<b>Deploy &lt;prod&gt;</b>\ndone");
    assert_eq!(send(message("404", None, "x")).await, "fail invalid_recipient 400");
    assert_eq!(send(message("403", None, "x")).await, "fail invalid_recipient 403");
    assert_eq!(send(message("", None, "x")).await, "fail invalid_recipient no_chat_id");
    fake.set_mode(Mode::Busy(3));
    assert_eq!(send(message("7001", None, "x")).await, "retry rate_limited 429");
    fake.set_mode(Mode::Accept);
    let wrong = TelegramChannel::new("telegram", &config("123:XYZ")).unwrap();
    assert_eq!(summary(&wrong.send(&message("7001", None, "x"), 1).await), "fail auth 401");
}

#[tokio::test]
async fn wechat_template_messages_share_one_access_token_and_refresh_it_when_refused() {
    let fake = fake::wechat("wx-app", "wx-secret").await;
    let config = |value: &str| WeChatConfig {
        endpoint: fake.endpoint.clone(),
        app_id: "wx-app".into(),
        app_secret: secret(&format!("NOTIFLOW_IT_WX_{}", value.len()), value),
        templates: [(
            "order_shipped".to_string(),
            WeChatTemplate { id: "TPL_OK".into(), subject_field: Some("thing1".into()), body_field: "thing2".into(), url: None },
        )]
        .into(),
        timeout_ms: 2000,
    };
    let channel = WeChatChannel::new("wechat", config("wx-secret")).unwrap();
    let send = |openid: &str, template: &str| {
        let mut delivery = message(openid, Some("Shipped"), "Order 1 is on its way");
        delivery.template = Some(template.into());
        let channel = &channel;
        async move { summary(&channel.send(&delivery, 1).await) }
    };
    for _ in 0..5 {
        assert!(send("o-ann", "order_shipped").await.starts_with("accepted 2000000"));
    }
    assert_eq!(fake.tokens_issued(), 1, "one token for every send");
    fake.expire_tokens();
    assert!(send("o-ann", "order_shipped").await.starts_with("accepted"), "an expired token is refetched and the send repeated once");
    assert_eq!(fake.tokens_issued(), 2);
    assert_eq!(send("o-unfollowed", "order_shipped").await, "fail invalid_recipient 43004");
    assert_eq!(send("x-not-an-openid", "order_shipped").await, "fail invalid_recipient 40003");
    assert_eq!(send("o-ann", "unmapped").await, "fail content_rejected no_template");
    let log = fake.log();
    assert!(log.refused.is_empty(), "{:?}", log.refused);
    assert_eq!(log.accepted[0].body, "thing1=Shipped; thing2=Order 1 is on its way");
    assert_eq!(log.accepted[0].our_id.as_deref(), Some("d_1"), "client_msg_id is the delivery id");
    drop(log);
    let wrong = WeChatChannel::new("wechat", config("not-the-secret")).unwrap();
    let mut delivery = message("o-ann", None, "x");
    delivery.template = Some("order_shipped".into());
    assert_eq!(summary(&wrong.send(&delivery, 1).await), "fail auth 40125");
}

#[tokio::test]
async fn teams_workflow_gets_an_adaptive_card() {
    let fake = fake::teams("wf-1", "sig-secret").await;
    let url = |sig: &str| format!("{}/teams/wf-1?api-version=1&sig={sig}", fake.endpoint);
    let config = |sig: &str| TeamsConfig { robots: robots("ops", secret(&format!("NOTIFLOW_IT_TEAMS_{sig}"), &url(sig)), None), timeout_ms: 2000 };
    let channel = TeamsChannel::new("teams", &config("sig-secret")).unwrap();
    common_outcomes(&channel, &fake, "ops", "retry rate_limited 429", "retry provider_error 502").await;
    assert_eq!(fake.log().accepted[1].body, "Deploy\nv1.2 is live", "title and text as two text blocks");
    let wrong = TeamsChannel::new("teams", &config("forged")).unwrap();
    assert_eq!(summary(&wrong.send(&message("ops", None, "x"), 1).await), "fail auth 401");
}

/// Messages to members of WeCom and DingTalk apps: a token shared by every
/// send and renewed when refused, unknown members failing for good.
async fn member_outcomes(channel: &dyn Channel, fake: &FakeProvider, busy: &str) {
    let send = |d: Delivery| async move { summary(&channel.send(&d, 1).await) };
    assert!(send(message("zhangsan", None, "Leave approved")).await.starts_with("accepted"));
    assert!(send(message("lisi", Some("Expense"), "Reimbursed")).await.starts_with("accepted"));
    assert_eq!(fake.tokens_issued(), 1);
    fake.expire_tokens();
    assert!(send(message("zhangsan", None, "again")).await.starts_with("accepted"), "expired token renewed, send repeated");
    assert_eq!(fake.tokens_issued(), 2);
    assert!(send(message("gone-wangwu", None, "x")).await.starts_with("fail invalid_recipient"));
    fake.set_mode(Mode::Busy(1));
    assert_eq!(send(message("zhangsan", None, "x")).await, busy);
    fake.set_mode(Mode::Accept);
    let log = fake.log();
    assert!(log.refused.is_empty(), "{:?}", log.refused);
    let got: Vec<(&str, &str)> = log.accepted.iter().map(|r| (r.to.as_str(), r.body.as_str())).collect();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0], ("zhangsan", "text: Leave approved"));
    assert!(got[1].0 == "lisi" && got[1].1.starts_with("markdown: ") && got[1].1.contains("Expense"), "{got:?}");
}

#[tokio::test]
async fn wecom_app_messages_reach_members() {
    let fake = fake::wecom_app("ww-corp", "app-secret").await;
    let config = WeComAppConfig { endpoint: fake.endpoint.clone(), corp_id: "ww-corp".into(), agent_id: 1000002, secret: secret("NOTIFLOW_IT_WECOM_APP", "app-secret"), timeout_ms: 2000 };
    let channel = WeComAppChannel::new("wecom-app", config.clone()).unwrap();
    member_outcomes(&channel, &fake, "retry rate_limited 45009").await;
    let wrong = WeComAppChannel::new("wecom-app", WeComAppConfig { secret: secret("NOTIFLOW_IT_WECOM_APP_BAD", "nope"), ..config }).unwrap();
    assert_eq!(summary(&wrong.send(&message("zhangsan", None, "x"), 1).await), "fail auth 40001");
}

#[tokio::test]
async fn dingtalk_work_notices_reach_members() {
    let fake = fake::dingtalk_work("ding-key", "ding-secret").await;
    let config =
        DingTalkWorkConfig { endpoint: fake.endpoint.clone(), agent_id: 42, app_key: "ding-key".into(), app_secret: secret("NOTIFLOW_IT_DT_WORK", "ding-secret"), timeout_ms: 2000 };
    let channel = DingTalkWorkChannel::new("dingtalk-work", config).unwrap();
    member_outcomes(&channel, &fake, "retry rate_limited 90018").await;
}
