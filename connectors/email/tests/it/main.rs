//! The SMTP channel against a local relay that checks the dialogue and parses
//! each message as MIME: what arrives, and how each relay answer is classified.

use std::time::Duration;

use notiflow_delivery::{Channel, Delivery, SecretRef, summary};
use notiflow_email::fake::{FakeSmtp, Mode};
use notiflow_email::{Security, SmtpChannel, SmtpConfig};

fn config(relay: &FakeSmtp, password_var: &str, password: &str) -> SmtpConfig {
    // SAFETY: each test uses its own variable name.
    unsafe { std::env::set_var(password_var, password) };
    SmtpConfig {
        host: "127.0.0.1".into(),
        port: Some(relay.port),
        security: Security::None,
        username: Some("mailer".into()),
        password: Some(SecretRef::env(password_var)),
        from: "Acme Alerts <alerts@acme.test>".into(),
        reply_to: None,
        message_id_domain: None,
        pool_size: 2,
        timeout_ms: 2000,
    }
}

fn email(id: &str, to: &str, html: Option<&str>) -> Delivery {
    serde_json::from_value(serde_json::json!({"type": "send", "delivery_id": format!("d_{id}"), "message_id": format!("m_{id}"),
        "request_id": id, "tenant": "acme", "channel": "email", "address": to, "subject": format!("订单 {id} 已发货"),
        "body": format!("Order {id} shipped.\n.\nA line that is a lone dot above."), "html": html}))
    .unwrap()
}

#[tokio::test]
async fn html_and_text_arrive_as_multipart_alternative_with_a_stable_message_id() {
    let relay = FakeSmtp::start("mailer", "pw-1").await;
    let channel = SmtpChannel::new("smtp-main", &config(&relay, "NOTIFLOW_IT_SMTP_1", "pw-1")).unwrap();
    let html = "<p>Order <b>1</b> shipped. Ünïcödé ✓</p>";
    let accepted = channel.send(&email("1", "ann@example.com", Some(html)), 1).await.unwrap();
    let plain = channel.send(&email("2", "bob@example.com", None), 1).await.unwrap();
    assert_eq!(accepted.provider_message_id.as_deref(), Some("d_1@acme.test"));
    assert_eq!(plain.provider_message_id.as_deref(), Some("d_2@acme.test"));

    let log = relay.log();
    assert!(log.refused.is_empty(), "{:?}", log.refused);
    let [first, second] = &log.accepted[..] else { panic!("{} accepted", log.accepted.len()) };
    assert_eq!((first.envelope_from.as_str(), first.envelope_to.as_str()), ("alerts@acme.test", "ann@example.com"));
    assert_eq!(first.content_type, "multipart/alternative");
    assert_eq!(first.subject, "订单 1 已发货", "RFC 2047 subject decodes to the original");
    assert_eq!(first.message_id, "d_1@acme.test");
    assert_eq!(first.html.as_deref(), Some(html));
    assert_eq!(first.text.replace("\r\n", "\n").trim_end(), "Order 1 shipped.\n.\nA line that is a lone dot above.", "dot-stuffing survives");
    assert_eq!(second.content_type, "text/plain");
    assert_eq!(second.html, None);
}

#[tokio::test]
async fn relay_answers_are_classified_by_reply_and_enhanced_code() {
    let relay = FakeSmtp::start("mailer", "pw-2").await;
    relay.unknown_mailbox("gone@example.com");
    let channel = SmtpChannel::new("smtp-main", &config(&relay, "NOTIFLOW_IT_SMTP_2", "pw-2")).unwrap();
    let send = |id: &str, to: &str| {
        let delivery = email(id, to, None);
        let channel = &channel;
        async move { summary(&channel.send(&delivery, 1).await) }
    };
    assert_eq!(send("1", "gone@example.com").await, "fail invalid_recipient 550 5.1.1");
    assert_eq!(send("2", "not an address").await, "fail invalid_recipient bad_address");
    assert_eq!(send("3", "ann@example.com").await, "accepted d_3@acme.test", "the pooled connection survives a refused recipient");
    relay.set_mode(Mode::Busy);
    assert_eq!(send("4", "ann@example.com").await, "retry rate_limited 454 4.7.0");
    relay.set_mode(Mode::Slow(Duration::from_millis(2500)));
    assert_eq!(send("5", "ann@example.com").await, "retry timeout timeout");
    relay.set_mode(Mode::Down);
    let down = SmtpChannel::new("smtp-down", &config(&relay, "NOTIFLOW_IT_SMTP_2B", "pw-2")).unwrap();
    assert_eq!(summary(&down.send(&email("6", "ann@example.com", None), 1).await), "retry provider_error 421 4.3.2");
    relay.set_mode(Mode::Accept);
    let wrong = SmtpChannel::new("smtp-wrong", &config(&relay, "NOTIFLOW_IT_SMTP_2C", "not-the-password")).unwrap();
    assert_eq!(summary(&wrong.send(&email("7", "ann@example.com", None), 1).await), "fail auth 535 5.7.8");
    let log = relay.log();
    // d_5 may still land after our deadline (a timeout is retried: mail is at-least-once); nothing else may.
    let landed: Vec<&str> = log.accepted.iter().map(|r| r.message_id.as_str()).filter(|id| *id != "d_5@acme.test").collect();
    assert_eq!(landed, ["d_3@acme.test"]);
}

#[tokio::test]
async fn connections_are_pooled() {
    let relay = FakeSmtp::start("mailer", "pw-3").await;
    let channel = SmtpChannel::new("smtp-main", &config(&relay, "NOTIFLOW_IT_SMTP_3", "pw-3")).unwrap();
    let deliveries: Vec<Delivery> = (0..40).map(|i| email(&i.to_string(), &format!("user{i}@example.com"), None)).collect();
    let outcomes = futures::future::join_all(deliveries.iter().map(|d| channel.send(d, 1))).await;
    assert!(outcomes.iter().all(|o| o.is_ok()), "{:?}", outcomes.iter().find(|o| o.is_err()));
    let log = relay.log();
    assert_eq!(log.accepted.len(), 40);
    assert!(log.connections <= 2, "{} connections for a pool of 2", log.connections);
}

#[test]
fn credentials_are_never_sent_in_clear_text_to_a_remote_relay() {
    let mut config = SmtpConfig {
        host: "smtp.example.com".into(),
        port: None,
        security: Security::None,
        username: Some("u".into()),
        password: Some(SecretRef::env("NOTIFLOW_IT_SMTP_NEVER_READ")),
        from: "a@acme.test".into(),
        reply_to: None,
        message_id_domain: None,
        pool_size: 1,
        timeout_ms: 1000,
    };
    let error = SmtpChannel::new("remote", &config).err().expect("refused");
    assert!(error.contains("clear text"), "{error}");
    config.from = "no mailbox".into();
    config.security = Security::Starttls;
    let error = SmtpChannel::new("remote", &config).err().expect("refused");
    assert!(error.contains("from `no mailbox`"), "{error}");
}
