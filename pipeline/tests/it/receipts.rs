//! Provider receipts end to end on the real broker: `notiflow deliver` sends
//! SMS through a fake Twilio that reports each message's fate to its
//! StatusCallback as Twilio does (signed form POST); `notiflow receipts
//! serve` verifies each report and writes it to notify.receipts, where it
//! joins its send by provider message id. Forged and unsigned reports are
//! refused and never written.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notiflow_connector::{OutRecord, Sink, TopicAdmin, TopicSpec};
use notiflow_kafka::{KafkaAdmin, KafkaSink, read_topic_to_end};
use serde_json::{Value, json};

use crate::support::{self, Killed};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_status_callbacks_become_verified_receipts_that_join_their_sends() {
    const SMS: usize = 20;
    let _turn = support::one_at_a_time().await;
    let config = support::kafka_config(2);
    let kafka = config.kafka.clone().unwrap();
    let topic = |name: &str| config.topics.resolve(name);
    let specs: Vec<TopicSpec> = ["notify.dispatch.normal", "notify.receipts"].iter().map(|t| TopicSpec::new(topic(t), 2)).collect();
    KafkaAdmin::new(&kafka).unwrap().ensure_topics(&specs).await.unwrap();
    let twilio = notiflow_sms::fake::twilio("AC0123", "tw-token").await;
    let port = free_port();
    let callback = format!("http://127.0.0.1:{port}/v1/receipts/twilio/twilio-main");
    let dir = tempfile::tempdir().unwrap();
    let mut toml = std::fs::read_to_string(support::write_toml(&config, dir.path())).unwrap();
    toml.push_str(&format!(
        r#"
[receipts]
listen = "127.0.0.1:{port}"

[delivery]
group_id = "{group}"
commit_interval_ms = 200

[[delivery.providers]]
name = "twilio-main"
[delivery.providers.twilio]
endpoint = "{endpoint}"
account_sid = "AC0123"
auth_token = {{ env = "NOTIFLOW_IT_RECEIPTS_TWILIO" }}
from = "+15005550006"
status_callback = "{callback}"
"#,
        group = support::unique("receipts"),
        endpoint = twilio.endpoint,
    ));
    let path = dir.path().join("notiflow.toml");
    std::fs::write(&path, &toml).unwrap();
    let notiflow = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_notiflow"));
        command.args(args).arg("--config").arg(&path).env("NOTIFLOW_IT_RECEIPTS_TWILIO", "tw-token");
        command
    };
    let mut child = notiflow(&["receipts", "serve"]).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("receipts: listening on"), "{line}");
    let _server = Killed(child);

    // One number in twenty is unreachable: its report says undelivered (30003).
    let out = (0..SMS).map(|i| {
        let phone = if i == 7 { "+8613800000000".to_string() } else { format!("+861391234{:04}", i + 1) };
        let record = json!({"type": "send", "delivery_id": format!("d_r{i}"), "message_id": format!("m_r{i}"), "request_id": format!("r{i}"),
            "tenant": "acme", "template": "otp", "channel": "sms", "address": phone, "body": format!("code r{i}")});
        OutRecord { topic: Arc::from(topic("notify.dispatch.normal")), key: None, payload: record.to_string().into_bytes(), headers: vec![] }
    });
    KafkaSink::new(&kafka).unwrap().send_all(out.collect()).await.unwrap();
    let deliver = notiflow(&["deliver", "--exit-when-idle-ms", "2000"]).output().unwrap();
    assert!(deliver.status.success(), "{}", String::from_utf8_lossy(&deliver.stderr));

    // Every accepted send gets its receipt.
    let deadline = Instant::now() + Duration::from_secs(30);
    let receipts: Vec<Value> = loop {
        let records = read_topic_to_end(&kafka, &topic("notify.receipts")).await.unwrap();
        if records.len() >= SMS || Instant::now() > deadline {
            break records.iter().map(|r| serde_json::from_slice(r.payload.as_ref().unwrap()).unwrap()).collect();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(receipts.len(), SMS, "{receipts:?}");
    let sends: Vec<Value> = read_topic_to_end(&kafka, &topic("notify.sends")).await.unwrap().iter().map(|r| serde_json::from_slice(r.payload.as_ref().unwrap()).unwrap()).collect();
    let sent: BTreeMap<String, String> = sends
        .iter()
        .filter(|s| s["status"] == "accepted")
        .map(|s| (s["provider_message_id"].as_str().unwrap().to_string(), s["delivery_id"].as_str().unwrap_or_default().to_string()))
        .collect();
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
    let unknown = client.post(format!("http://127.0.0.1:{port}/v1/receipts/twilio/nobody")).form(&forged).send().await.unwrap();
    assert_eq!(unknown.status().as_u16(), 404);
    assert_eq!(read_topic_to_end(&kafka, &topic("notify.receipts")).await.unwrap().len(), SMS);
}
