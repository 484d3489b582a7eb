//! Provider receipts end to end on the real broker: `notiflow deliver` sends
//! SMS through a fake Twilio that reports each message's fate to its
//! StatusCallback as Twilio does (signed form POST); `notiflow receipts
//! serve` verifies each report and writes it to notify.receipts, where it
//! joins its send by provider message id. Forged and unsigned reports are
//! refused and never written.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use notiflow_connector::{OutRecord, Sink, TopicAdmin, TopicSpec};
use notiflow_kafka::{KafkaAdmin, KafkaSink};
use serde_json::{Value, json};

use crate::support::{self, Notiflow, free_port, read_json, wait_for_json};


/// One receipts test: topics of its own, a config with `[receipts]` (on `port`), a `[delivery]` of its own
/// and the given provider, and the binary with the secrets' environment.
struct Case {
    kafka: notiflow_kafka::KafkaConfig,
    config: notiflow::config::Config,
    notiflow: Notiflow,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Case {
    async fn new(provider_toml: &str, env: &[(&str, &str)], port: u16) -> Case {
        let config = support::kafka_config(2);
        let kafka = config.kafka.clone().unwrap();
        let specs: Vec<TopicSpec> = ["notify.dispatch.normal", "notify.receipts"].iter().map(|t| TopicSpec::new(config.topics.resolve(t), 2)).collect();
        KafkaAdmin::new(&kafka).unwrap().ensure_topics(&specs).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut toml = std::fs::read_to_string(support::write_toml(&config, dir.path())).unwrap();
        toml.push_str(&support::receipts_and_delivery_toml(port));
        toml.push_str(provider_toml);
        let path = dir.path().join("notiflow.toml");
        std::fs::write(&path, &toml).unwrap();
        Case { kafka, config, notiflow: Notiflow::new(&path, env), port, _dir: dir }
    }

    fn topic(&self, name: &str) -> String {
        self.config.topics.resolve(name)
    }

    /// One SMS dispatch record per phone (delivery `d_<tag><i>`), then `notiflow deliver` to the end.
    async fn deliver_sms(&self, tag: &str, phones: &[String]) {
        let topic: Arc<str> = Arc::from(self.topic("notify.dispatch.normal"));
        let out = phones.iter().enumerate().map(|(i, phone)| {
            let record = json!({"type": "send", "delivery_id": format!("d_{tag}{i}"), "message_id": format!("m_{tag}{i}"), "request_id": format!("{tag}{i}"),
                "tenant": "acme", "template": "otp", "channel": "sms", "address": phone, "body": format!("code {tag}{i}")});
            OutRecord { topic: topic.clone(), key: None, payload: record.to_string().into_bytes(), headers: vec![] }
        });
        KafkaSink::new(&self.kafka).unwrap().send_all(out.collect()).await.unwrap();
        let deliver = self.notiflow.command(&["deliver", "--exit-when-idle-ms", "2000"]).output().unwrap();
        assert!(deliver.status.success(), "{}", String::from_utf8_lossy(&deliver.stderr));
    }

    /// Accepted sends and receipts, each as provider message id -> delivery id (receipts: "" when they name none).
    async fn sends_and_receipts(&self, receipts: &[Value]) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        let text = |v: &Value, field: &str| v[field].as_str().unwrap_or_default().to_string();
        let sends = read_json(&self.kafka, &self.topic("notify.sends")).await;
        let sent = sends.iter().filter(|s| s["status"] == "accepted").map(|s| (text(s, "provider_message_id"), text(s, "delivery_id"))).collect();
        let reported = receipts.iter().map(|r| (text(r, "provider_message_id"), text(r, "delivery_id"))).collect();
        (sent, reported)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_status_callbacks_become_verified_receipts_that_join_their_sends() {
    const SMS: usize = 20;
    let _turn = support::one_at_a_time().await;
    let twilio = notiflow_sms::fake::twilio("AC0123", "tw-token").await;
    let port = free_port();
    let case = Case::new(&support::twilio_provider_toml(&twilio.endpoint, "NOTIFLOW_IT_RECEIPTS_TWILIO", port), &[("NOTIFLOW_IT_RECEIPTS_TWILIO", "tw-token")], port).await;
    let callback = format!("http://127.0.0.1:{port}/v1/receipts/twilio/twilio-main");
    let (_server, line) = case.notiflow.serve(&["receipts", "serve"]);
    assert!(line.starts_with("receipts: listening on"), "{line}");

    // One number in twenty is unreachable: its report says undelivered (30003).
    let phones: Vec<String> = (0..SMS).map(|i| if i == 7 { "+8613800000000".to_string() } else { format!("+861391234{:04}", i + 1) }).collect();
    case.deliver_sms("r", &phones).await;

    // Every accepted send gets its receipt.
    let receipts = wait_for_json(&case.kafka, &case.topic("notify.receipts"), SMS, Duration::ZERO).await;
    assert_eq!(receipts.len(), SMS, "{receipts:?}");
    let (sent, _) = case.sends_and_receipts(&receipts).await;
    let by_sid: BTreeMap<String, &Value> = receipts.iter().map(|r| (r["provider_message_id"].as_str().unwrap().to_string(), r)).collect();
    assert_eq!(by_sid.keys().collect::<Vec<_>>(), sent.keys().collect::<Vec<_>>(), "each receipt joins exactly one send");
    let failed: Vec<&&Value> = by_sid.values().filter(|r| r["kind"] == "failed").collect();
    assert_eq!(failed.len(), 1);
    assert_eq!((failed[0]["status"].as_str(), failed[0]["error_code"].as_str(), failed[0]["recipient"].as_str()), (Some("undelivered"), Some("30003"), Some("+8613800000000")));
    assert!(by_sid.values().filter(|r| r["kind"] != "failed").all(|r| r["kind"] == "delivered" && r["provider"] == "twilio-main"));

    // Forged and unsigned reports are refused and never written.
    let forged = [("MessageSid", "SMforged"), ("MessageStatus", "delivered")];
    let client = reqwest::Client::new();
    let refused = client.post(&callback).header("x-twilio-signature", "AAAAAAAAAAAAAAAAAAAAAAAAAAA=").form(&forged).send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 403);
    assert_eq!(client.post(&callback).form(&forged).send().await.unwrap().status().as_u16(), 403);
    let signed_elsewhere = notiflow_sms::twilio::callback_signature("another-token", &callback, &forged.map(|(k, v)| (k.to_string(), v.to_string())));
    assert_eq!(client.post(&callback).header("x-twilio-signature", signed_elsewhere).form(&forged).send().await.unwrap().status().as_u16(), 403);
    let unknown = client.post(format!("http://127.0.0.1:{}/v1/receipts/twilio/nobody", case.port)).form(&forged).send().await.unwrap();
    assert_eq!(unknown.status().as_u16(), 404);
    assert_eq!(read_json(&case.kafka, &case.topic("notify.receipts")).await.len(), SMS);
}

/// Tencent hands out delivery reports by pull (`PullSmsSendStatus`, each once):
/// `notiflow receipts serve` polls it with signed calls and writes every
/// report to notify.receipts, where it joins its send by SerialNo and names
/// its delivery (SessionContext).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tencent_delivery_reports_are_pulled_into_receipts_that_join_their_sends() {
    const SMS: usize = 12;
    let _turn = support::one_at_a_time().await;
    let tencent = notiflow_sms::fake::tencent("AKIDfake", "tc-key").await;
    let provider = format!(
        r#"
[[delivery.providers]]
name = "sms-tencent"
[delivery.providers.tencent]
endpoint = "{endpoint}"
secret_id = "AKIDfake"
secret_key = {{ env = "NOTIFLOW_IT_RECEIPTS_TENCENT" }}
sdk_app_id = "1400000001"
sign_name = "Acme"
default_template = "100001"
pull_receipts_ms = 200
"#,
        endpoint = tencent.endpoint,
    );
    let case = Case::new(&provider, &[("NOTIFLOW_IT_RECEIPTS_TENCENT", "tc-key")], free_port()).await;
    let unreachable = [3, 9];
    let phones: Vec<String> = (0..SMS).map(|i| if unreachable.contains(&i) { format!("+8613{i:05}0000") } else { format!("+861391200{i:02}11") }).collect();
    case.deliver_sms("t", &phones).await;
    assert_eq!(tencent.log().accepted.len(), SMS);

    // The reports wait at Tencent until the receipts server pulls them; each arrives once (the
    // extra wait would show a second copy).
    let (_server, _) = case.notiflow.serve(&["receipts", "serve"]);
    let receipts = wait_for_json(&case.kafka, &case.topic("notify.receipts"), SMS, Duration::from_millis(600)).await;
    assert_eq!(receipts.len(), SMS, "{receipts:#?}");
    let (sent, reported) = case.sends_and_receipts(&receipts).await;
    assert_eq!(reported, sent, "each report joins its send by SerialNo and names the same delivery");
    let mut failed: Vec<(&str, &str)> = receipts.iter().filter(|r| r["kind"] == "failed").map(|r| (r["delivery_id"].as_str().unwrap(), r["error_code"].as_str().unwrap())).collect();
    failed.sort();
    assert_eq!(failed, [("d_t3", "MK:0001"), ("d_t9", "MK:0001")]);
    assert!(receipts.iter().all(|r| r["provider"] == "sms-tencent" && r["channel"] == "sms"));
    assert!(tencent.log().refused.is_empty(), "every call signed as Tencent checks: {:?}", tencent.log().refused);
}

/// Aliyun pushes delivery reports (SmsReport, unsigned JSON) to the URL set in
/// its console; the secret token in that URL is what makes a push genuine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliyun_report_pushes_with_the_url_token_become_receipts_that_join_their_sends() {
    const SMS: usize = 10;
    let _turn = support::one_at_a_time().await;
    let aliyun = notiflow_sms::fake::aliyun("LTAI-fake", "al-secret").await;
    let port = free_port();
    let report_url = format!("http://127.0.0.1:{port}/v1/receipts/aliyun/sms-aliyun/report-token-0123456789");
    aliyun.set_report_url(&report_url);
    let provider = format!(
        r#"
[[delivery.providers]]
name = "sms-aliyun"
[delivery.providers.aliyun]
endpoint = "{endpoint}"
access_key_id = "LTAI-fake"
access_key_secret = {{ env = "NOTIFLOW_IT_RECEIPTS_ALIYUN" }}
sign_name = "Acme"
default_template = "SMS_100"
report_token = {{ env = "NOTIFLOW_IT_RECEIPTS_ALIYUN_REPORTS" }}
"#,
        endpoint = aliyun.endpoint,
    );
    let env = [("NOTIFLOW_IT_RECEIPTS_ALIYUN", "al-secret"), ("NOTIFLOW_IT_RECEIPTS_ALIYUN_REPORTS", "report-token-0123456789")];
    let case = Case::new(&provider, &env, port).await;
    let (_server, line) = case.notiflow.serve(&["receipts", "serve"]);
    assert!(line.starts_with("receipts: listening on"), "{line}");

    let unreachable = [2, 6];
    let phones: Vec<String> = (0..SMS).map(|i| if unreachable.contains(&i) { format!("+86138{i:04}0000") } else { format!("+861391200{i:02}11") }).collect();
    case.deliver_sms("a", &phones).await;
    assert_eq!(aliyun.log().accepted.len(), SMS);

    let receipts = wait_for_json(&case.kafka, &case.topic("notify.receipts"), SMS, Duration::ZERO).await;
    assert_eq!(receipts.len(), SMS, "{receipts:#?}");
    let (sent, reported) = case.sends_and_receipts(&receipts).await;
    assert_eq!(reported, sent, "each report joins its send by BizId and names its delivery (OutId)");
    let mut failed: Vec<&str> = receipts.iter().filter(|r| r["kind"] == "failed").map(|r| r["delivery_id"].as_str().unwrap()).collect();
    failed.sort();
    assert_eq!(failed, ["d_a2", "d_a6"]);

    // A push without the token (or to a provider without one) is refused and never written.
    let push = r#"[{"phone_number":"13912000011","report_time":"2026-01-01 00:00:00","success":true,"err_code":"DELIVERED","biz_id":"forged","out_id":"d_x"}]"#;
    let client = reqwest::Client::new();
    let wrong = report_url.replace("report-token-0123456789", "report-token-0123456788");
    assert_eq!(client.post(&wrong).body(push).send().await.unwrap().status().as_u16(), 403);
    let elsewhere = report_url.replace("sms-aliyun", "sms-other");
    assert_eq!(client.post(&elsewhere).body(push).send().await.unwrap().status().as_u16(), 404);
    assert_eq!(client.post(&report_url).body("not json").send().await.unwrap().status().as_u16(), 400);
    assert_eq!(read_json(&case.kafka, &case.topic("notify.receipts")).await.len(), SMS);
}
