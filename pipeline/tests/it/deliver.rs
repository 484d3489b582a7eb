//! `notiflow deliver` on the real broker against local fake providers:
//! every dispatch record ends exactly once (sent, failed, or dead-lettered),
//! the primary SMS provider goes down mid-run and its traffic fails over,
//! every attempt lands on notify.sends, and a second run finds nothing left.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use notiflow_connector::{OutRecord, Sink, TopicAdmin, TopicSpec};
use notiflow_email::fake::FakeSmtp;
use notiflow_kafka::{KafkaAdmin, KafkaConfig, KafkaSink, read_topic_to_end};
use notiflow_sms::fake::Mode;
use serde_json::{Value, json};

use crate::support;

const SMS: usize = 400;
const HIGH: usize = 20;
const INVALID: usize = 5;
const FAX: usize = 3;
const WEBHOOKS: usize = 10;
/// Emails; one more goes to a mailbox the relay does not know.
const EMAILS: usize = 12;
/// DingTalk robot messages; one more names a robot nobody configured.
const DINGTALK: usize = 3;
const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn dispatch(id: &str, channel: &str, address: &str, priority: &str) -> Value {
    json!({"type": "send", "delivery_id": format!("d_{id}"), "message_id": format!("m_{id}"), "request_id": id, "tenant": "acme",
        "template": "otp", "recipient": format!("user:{id}"), "channel": channel, "address": address, "priority": priority,
        "category": "transactional", "subject": null, "body": format!("code {id}"), "html": null, "expires_at": null, "reason": null})
}

/// The three dispatch lane topics of the config, one partition each.
async fn dispatch_lanes(config: &notiflow::config::Config) {
    let specs: Vec<TopicSpec> =
        ["notify.dispatch.high", "notify.dispatch.normal", "notify.dispatch.low"].iter().map(|t| TopicSpec::new(config.topics.resolve(t), 1)).collect();
    KafkaAdmin::new(config.kafka.as_ref().unwrap()).unwrap().ensure_topics(&specs).await.unwrap();
}

/// A receiver that keeps the webhook ids whose signature verifies.
async fn webhook_receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    let verified = Arc::new(Mutex::new(Vec::new()));
    let seen = verified.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let seen = seen.clone();
            async move {
                let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
                let key = notiflow_webhook::SigningKey::parse(WEBHOOK_SECRET).unwrap();
                let expected = notiflow_webhook::sign(&key, &get("webhook-id"), get("webhook-timestamp").parse().unwrap_or(0), &body);
                if get("webhook-signature") != expected {
                    return axum::http::StatusCode::UNAUTHORIZED;
                }
                seen.lock().unwrap().push(get("webhook-id"));
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    (url, verified)
}

fn delivery_toml(aliyun: &str, twilio: &str, smtp_port: u16, dingtalk: &str) -> String {
    format!(
        r#"
[delivery]
group_id = "{group}"
workers_per_channel = 8
min_delay_ms = 20
max_delay_ms = 200
commit_interval_ms = 200

[[delivery.providers]]
name = "aliyun-main"
weight = 100
rate_per_s = 300
burst = 5
failures_to_open = 3
open_ms = 500
[delivery.providers.aliyun]
endpoint = "{aliyun}"
access_key_id = "LTAI-test"
access_key_secret = {{ env = "NOTIFLOW_IT_DELIVER_ALIYUN" }}
sign_name = "notiflow"
default_template = "SMS_100"
timeout_ms = 2000

[[delivery.providers]]
name = "twilio-backup"
weight = 1
[delivery.providers.twilio]
endpoint = "{twilio}"
account_sid = "AC0123"
auth_token = {{ file = "{token_file}" }}
from = "+15005550006"
timeout_ms = 2000

[[delivery.providers]]
name = "relay"
[delivery.providers.smtp]
host = "127.0.0.1"
port = {smtp_port}
security = "none"
username = "mailer"
password = {{ env = "NOTIFLOW_IT_DELIVER_SMTP" }}
from = "Acme <alerts@acme.test>"
pool_size = 3

[[delivery.providers]]
name = "dingtalk"
[delivery.providers.dingtalk_robot]
endpoint = "{dingtalk}"
robots = {{ ops = {{ token = {{ env = "NOTIFLOW_IT_DELIVER_DT_TOKEN" }}, secret = {{ env = "NOTIFLOW_IT_DELIVER_DT_SECRET" }} }} }}

[[delivery.providers]]
name = "hooks"
[delivery.providers.webhook]
signing_secret = {{ env = "NOTIFLOW_IT_DELIVER_WEBHOOK" }}
allow = ["127.0.0.1"]
"#,
        group = support::unique("deliver"),
        token_file = std::env::temp_dir().join(format!("notiflow-it-twilio-{}", std::process::id())).display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliver_sends_each_dispatch_record_once_failing_over_and_dead_lettering_what_cannot_go() {
    let _turn = support::one_at_a_time().await;
    let config = support::kafka_config(2);
    let kafka = config.kafka.clone().unwrap();
    let topic = |name: &str| config.topics.resolve(name);
    let specs: Vec<TopicSpec> = ["notify.dispatch.high", "notify.dispatch.normal", "notify.dispatch.low", "notify.sends", "notify.events", "notify.dlq"]
        .iter()
        .map(|t| TopicSpec::new(topic(t), 2))
        .collect();
    KafkaAdmin::new(&kafka).unwrap().ensure_topics(&specs).await.unwrap();

    let (aliyun, twilio) = (notiflow_sms::fake::aliyun("LTAI-test", "ali-secret").await, notiflow_sms::fake::twilio("AC0123", "tw-token").await);
    let (hook_url, hooks) = webhook_receiver().await;
    let relay = FakeSmtp::start("mailer", "smtp-pw").await;
    relay.unknown_mailbox("gone@example.com");
    let robot = notiflow_im::fake::dingtalk("dt-token", "SEC-dt").await;
    let dir = tempfile::tempdir().unwrap();
    let mut toml = std::fs::read_to_string(support::write_toml(&config, dir.path())).unwrap();
    toml.push_str(&delivery_toml(&aliyun.endpoint, &twilio.endpoint, relay.port, &robot.endpoint));
    std::fs::write(dir.path().join("notiflow.toml"), &toml).unwrap();
    std::fs::write(std::env::temp_dir().join(format!("notiflow-it-twilio-{}", std::process::id())), "tw-token\n").unwrap();

    // Dispatch records: low SMS, high SMS, invalid numbers, a channel nobody
    // serves, webhooks, unreadable records and a recall.
    let mut records: Vec<(String, Value)> = Vec::new();
    records.extend((0..SMS).map(|i| ("low".into(), dispatch(&format!("s{i}"), "sms", &format!("+86138{i:08}"), "low"))));
    records.extend((0..HIGH).map(|i| ("high".into(), dispatch(&format!("h{i}"), "sms", &format!("+86139{i:08}"), "high"))));
    records.extend((0..INVALID).map(|i| ("normal".into(), dispatch(&format!("bad{i}"), "sms", "+86123", "normal"))));
    records.extend((0..FAX).map(|i| ("normal".into(), dispatch(&format!("fax{i}"), "fax", "+4930123456", "normal"))));
    records.extend((0..WEBHOOKS).map(|i| ("normal".into(), dispatch(&format!("w{i}"), "webhook", &hook_url, "normal"))));
    records.extend((0..EMAILS).map(|i| {
        let mut email = dispatch(&format!("e{i}"), "email", &format!("user{i}@example.com"), "normal");
        email["subject"] = json!(format!("Order e{i}"));
        email["html"] = json!(format!("<p>code e{i}</p>"));
        ("normal".into(), email)
    }));
    records.push(("normal".into(), dispatch("bounce", "email", "gone@example.com", "normal")));
    records.extend((0..DINGTALK).map(|i| ("high".into(), dispatch(&format!("dt{i}"), "dingtalk_robot", "ops", "high"))));
    records.push(("high".into(), dispatch("dt-nobody", "dingtalk_robot", "nobody", "high")));
    records.push(("high".into(), json!({"type": "recall", "message_id": "m_r", "request_id": "r", "tenant": "acme"})));
    let mut out: Vec<OutRecord> = records
        .iter()
        .map(|(lane, v)| OutRecord {
            topic: Arc::from(topic(&format!("notify.dispatch.{lane}"))),
            key: Some(v["recipient"].as_str().unwrap_or("r").as_bytes().to_vec()),
            payload: v.to_string().into_bytes(),
            headers: vec![],
        })
        .collect();
    for garbage in ["{not json", "[1,2]"] {
        out.push(OutRecord { topic: Arc::from(topic("notify.dispatch.normal")), key: None, payload: garbage.as_bytes().to_vec(), headers: vec![] });
    }
    KafkaSink::new(&kafka).unwrap().send_all(out).await.unwrap();

    let run = |idle: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_notiflow"))
            .args(["deliver", "--config", dir.path().join("notiflow.toml").to_str().unwrap(), "--exit-when-idle-ms", idle])
            .env("NOTIFLOW_IT_DELIVER_ALIYUN", "ali-secret")
            .env("NOTIFLOW_IT_DELIVER_WEBHOOK", WEBHOOK_SECRET)
            .env("NOTIFLOW_IT_DELIVER_SMTP", "smtp-pw")
            .env("NOTIFLOW_IT_DELIVER_DT_TOKEN", "dt-token")
            .env("NOTIFLOW_IT_DELIVER_DT_SECRET", "SEC-dt")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let child = run("3000");
    // The primary goes down once it has taken a share of the traffic.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while aliyun.log().accepted.len() < 100 {
        assert!(std::time::Instant::now() < deadline, "the primary never got traffic");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    aliyun.set_mode(Mode::Down);
    let output = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{stdout}\n{stderr}");
    eprintln!("{stdout}");
    let sendable = SMS + HIGH + WEBHOOKS + EMAILS + DINGTALK;
    let invalid = INVALID + 2;
    let total = records.len() + 2;
    assert!(stdout.contains(&format!("delivery: {total} read, {sendable} sent, {invalid} failed")), "{stdout}");

    // Each SMS accepted exactly once, by one provider or the other.
    let mut sms_accepted: Vec<String> = aliyun.log().accepted.iter().chain(&twilio.log().accepted).map(|r| r.body.clone()).collect();
    sms_accepted.sort();
    let mut expected: Vec<String> = (0..SMS).map(|i| format!("code s{i}")).chain((0..HIGH).map(|i| format!("code h{i}"))).collect();
    expected.sort();
    assert_eq!(sms_accepted, expected);
    let (primary, backup) = (aliyun.log().accepted.len(), twilio.log().accepted.len());
    assert!(primary >= 100 && backup > 0, "primary {primary}, backup {backup}");
    assert!(aliyun.log().refused.is_empty() && twilio.log().refused.is_empty(), "every request was signed/authenticated right");
    let mut hook_ids = hooks.lock().unwrap().clone();
    hook_ids.sort();
    assert_eq!(hook_ids, (0..WEBHOOKS).map(|i| format!("d_w{i}")).collect::<BTreeSet<_>>().into_iter().collect::<Vec<_>>());

    // Mail: one multipart message per email delivery, Message-ID from the delivery id.
    let mail = relay.log();
    assert!(mail.refused.is_empty(), "{:?}", mail.refused);
    let mut mail_ids: Vec<String> = mail.accepted.iter().map(|m| m.message_id.clone()).collect();
    mail_ids.sort();
    let mut expected: Vec<String> = (0..EMAILS).map(|i| format!("d_e{i}@acme.test")).collect();
    expected.sort();
    assert_eq!(mail_ids, expected);
    assert!(mail.accepted.iter().all(|m| m.content_type == "multipart/alternative" && m.html.as_deref() == Some(&format!("<p>code {}</p>", &m.subject[6..]))));
    drop(mail);
    let mut robot_texts: Vec<String> = robot.log().accepted.iter().map(|r| r.body.clone()).collect();
    robot_texts.sort();
    assert_eq!(robot_texts, (0..DINGTALK).map(|i| format!("code dt{i}")).collect::<Vec<_>>(), "signed robot messages: {:?}", robot.log().refused);

    // Events: one end per delivery.
    let events: Vec<Value> = read_topic_to_end(&kafka, &topic("notify.events"))
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_slice(r.payload.as_ref().unwrap()).unwrap())
        .collect();
    let mut ends: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in &events {
        ends.entry(e["delivery_id"].as_str().unwrap().to_string()).or_default().push(e["event"].as_str().unwrap().to_string());
    }
    let sent = ends.values().filter(|v| v == &&vec!["sent".to_string()]).count();
    let failed = ends.values().filter(|v| v == &&vec!["send_failed".to_string()]).count();
    assert_eq!((sent, failed, ends.len()), (sendable, invalid + FAX, sendable + invalid + FAX), "one end event per delivery");
    let failover_sent = events.iter().filter(|e| e["event"] == "sent" && e["provider"] == "twilio-backup").count();
    assert_eq!(failover_sent, backup);

    // Every attempt on notify.sends: the accepted ones match, and the
    // primary's failures during the outage are there as retrying attempts.
    let sends: Vec<Value> =
        read_topic_to_end(&kafka, &topic("notify.sends")).await.unwrap().iter().map(|r| serde_json::from_slice(r.payload.as_ref().unwrap()).unwrap()).collect();
    let count = |status: &str, provider: &str| sends.iter().filter(|s| s["status"] == status && s["provider"] == provider).count();
    let accepted = [
        count("accepted", "aliyun-main"),
        count("accepted", "twilio-backup"),
        count("accepted", "hooks"),
        count("accepted", "relay"),
        count("accepted", "dingtalk"),
    ];
    assert_eq!(accepted, [primary, backup, WEBHOOKS, EMAILS, DINGTALK]);
    assert!(count("retrying", "aliyun-main") >= 1, "the outage shows as failed attempts on the primary");
    assert!(sends.iter().filter(|s| s["status"] == "failed").all(|s| s["failure_reason"] == "invalid_recipient"));

    // Dead letters by reason, with the original bytes.
    let dlq = read_topic_to_end(&kafka, &topic("notify.dlq")).await.unwrap();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for r in &dlq {
        let reason = r.headers.iter().find(|h| h.name == "notiflow.reason").map(|h| String::from_utf8_lossy(&h.value).to_string()).unwrap();
        *reasons.entry(reason).or_default() += 1;
    }
    assert_eq!(reasons, BTreeMap::from([("decode_error".into(), 2), ("invalid_recipient".into(), invalid), ("no_provider".into(), FAX)]));
    assert!(dlq.iter().any(|r| r.payload.as_deref() == Some(b"{not json".as_slice())));

    // Committed: a second run reads nothing and sends nothing.
    let again = run("2000").wait_with_output().unwrap();
    let again_out = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success() && again_out.contains("delivery: 0 read"), "{again_out}\n{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(aliyun.log().accepted.len() + twilio.log().accepted.len(), SMS + HIGH);
}

/// A stalled channel holds up only itself: email's relay answers slowly and
/// its lanes are tiny, so email records overflow to the email parked topic
/// while SMS records of the same lane topics keep flowing; everything is
/// still delivered exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_channel_parks_its_overflow_and_never_holds_up_another() {
    const SLOW_EMAILS: usize = 12;
    const FAST_SMS: usize = 150;
    let _turn = support::one_at_a_time().await;
    let config = support::kafka_config(1);
    let kafka = config.kafka.clone().unwrap();
    let topic = |name: &str| config.topics.resolve(name);
    dispatch_lanes(&config).await;
    let twilio = notiflow_sms::fake::twilio("AC0123", "tw-token").await;
    let relay = FakeSmtp::start("mailer", "smtp-pw").await;
    relay.set_mode(notiflow_email::fake::Mode::Slow(Duration::from_millis(300)));
    let dir = tempfile::tempdir().unwrap();
    let mut toml = std::fs::read_to_string(support::write_toml(&config, dir.path())).unwrap();
    toml.push_str(&format!(
        r#"
[delivery]
group_id = "{group}"
workers_per_channel = 2
lane_capacity = 2
commit_interval_ms = 200

[[delivery.providers]]
name = "twilio"
[delivery.providers.twilio]
endpoint = "{twilio}"
account_sid = "AC0123"
auth_token = {{ env = "NOTIFLOW_IT_PARK_TWILIO" }}
from = "+15005550006"

[[delivery.providers]]
name = "relay"
[delivery.providers.smtp]
host = "127.0.0.1"
port = {port}
security = "none"
username = "mailer"
password = {{ env = "NOTIFLOW_IT_PARK_SMTP" }}
from = "alerts@acme.test"
pool_size = 1
"#,
        group = support::unique("park"),
        twilio = twilio.endpoint,
        port = relay.port,
    ));
    std::fs::write(dir.path().join("notiflow.toml"), &toml).unwrap();

    // Emails first, then the SMS behind them in the same lane topic.
    let mut records: Vec<Value> = (0..SLOW_EMAILS).map(|i| dispatch(&format!("e{i}"), "email", &format!("u{i}@example.com"), "normal")).collect();
    records.extend((0..FAST_SMS).map(|i| dispatch(&format!("s{i}"), "sms", &format!("+86138{i:08}"), "normal")));
    let out = records.iter().map(|v| OutRecord {
        topic: Arc::from(topic("notify.dispatch.normal")),
        key: None,
        payload: v.to_string().into_bytes(),
        headers: vec![],
    });
    KafkaSink::new(&kafka).unwrap().send_all(out.collect()).await.unwrap();

    let child = std::process::Command::new(env!("CARGO_BIN_EXE_notiflow"))
        .args(["deliver", "--config", dir.path().join("notiflow.toml").to_str().unwrap(), "--exit-when-idle-ms", "2000"])
        .env("NOTIFLOW_IT_PARK_TWILIO", "tw-token")
        .env("NOTIFLOW_IT_PARK_SMTP", "smtp-pw")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // When the last SMS is accepted, most emails are still waiting for the slow relay.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while twilio.log().accepted.len() < FAST_SMS {
        assert!(std::time::Instant::now() < deadline, "SMS stalled behind email: {} accepted", twilio.log().accepted.len());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let emails_by_then = relay.log().accepted.len();
    assert!(emails_by_then < SLOW_EMAILS / 2, "{emails_by_then} of {SLOW_EMAILS} emails were already sent: the SMS did wait");

    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    eprintln!("{stdout}");
    let parked: usize = stdout.split(", ").find_map(|p| p.trim().strip_suffix(" parked")?.parse().ok()).unwrap();
    assert!(parked > 0, "{stdout}");
    assert!(stdout.contains(&format!("delivery: {} read, {} sent, 0 failed", SLOW_EMAILS + FAST_SMS + parked, SLOW_EMAILS + FAST_SMS)), "{stdout}");
    let mut mail_ids: Vec<String> = relay.log().accepted.iter().map(|m| m.message_id.clone()).collect();
    mail_ids.sort();
    mail_ids.dedup();
    assert_eq!(mail_ids.len(), SLOW_EMAILS, "every email once, parked or not");
    assert_eq!(twilio.log().accepted.len(), FAST_SMS);
}

/// `notiflow deliver` over `total` SMS dispatch records to a Twilio stand-in
/// (100/s, 8 workers), stopped mid-way and started again.
struct Restarted {
    twilio: notiflow_sms::fake::FakeProvider,
    dir: tempfile::TempDir,
    total: usize,
    /// Where the job serves /metrics, /healthz and /readyz.
    metrics: String,
}

impl Restarted {
    async fn new(total: usize) -> Restarted {
        let mut config = support::kafka_config(1);
        // Static membership: the restarted job takes the stopped one's place at once instead of waiting out its session.
        config.kafka.as_mut().unwrap().properties.insert("group.instance.id".into(), support::unique("deliver-instance"));
        let mut kafka = config.kafka.clone().unwrap();
        dispatch_lanes(&config).await;
        let twilio = notiflow_sms::fake::twilio("AC0123", "tw-token").await;
        let dir = tempfile::tempdir().unwrap();
        let metrics = format!("127.0.0.1:{}", support::free_port());
        let toml = std::fs::read_to_string(support::write_toml(&config, dir.path())).unwrap();
        let mut toml = toml.replace("[metrics]\nlisten = \"\"", &format!("[metrics]\nlisten = \"{metrics}\""));
        assert!(toml.contains(&metrics));
        toml.push_str(&format!(
            r#"
[delivery]
group_id = "{group}"
workers_per_channel = 8
commit_interval_ms = 200

[[delivery.providers]]
name = "twilio"
rate_per_s = 100
burst = 5
[delivery.providers.twilio]
endpoint = "{endpoint}"
account_sid = "AC0123"
auth_token = {{ env = "NOTIFLOW_IT_KILL_TWILIO" }}
from = "+15005550006"
"#,
            group = support::unique("kill"),
            endpoint = twilio.endpoint,
        ));
        std::fs::write(dir.path().join("notiflow.toml"), &toml).unwrap();
        // One record per batch: tansu serves a fetch from inside a batch from the next batch on (see exactly_once.rs).
        kafka.properties.extend([("batch.num.messages".into(), "1".into()), ("linger.ms".into(), "0".into()), ("message.timeout.ms".into(), "300000".into())]);
        let lane: Arc<str> = Arc::from(config.topics.resolve("notify.dispatch.normal").as_str());
        let out = (0..total).map(|i| {
            let record = dispatch(&format!("k{i}"), "sms", &format!("+86137{i:08}"), "normal");
            OutRecord { topic: lane.clone(), key: None, payload: record.to_string().into_bytes(), headers: vec![] }
        });
        KafkaSink::new(&kafka).unwrap().send_all(out.collect()).await.unwrap();
        Restarted { twilio, dir, total, metrics }
    }

    fn spawn(&self, idle: Option<&str>) -> std::process::Child {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_notiflow"));
        command.args(["deliver", "--config", self.dir.path().join("notiflow.toml").to_str().unwrap()]).env("NOTIFLOW_IT_KILL_TWILIO", "tw-token");
        if let Some(idle) = idle {
            command.args(["--exit-when-idle-ms", idle]);
        }
        command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()
    }

    /// Starts the job and returns it once a third of the messages are sent.
    async fn started_and_a_third_sent(&self) -> std::process::Child {
        let first = self.spawn(None);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while self.twilio.log().accepted.len() < self.total / 3 {
            assert!(std::time::Instant::now() < deadline, "no progress before the stop");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        first
    }

    /// Runs the job again until idle; every message must have gone out. Returns how many went out twice.
    fn restarted_resends(&self) -> usize {
        // A static member rejoins in about 6 s on tansu; the idle limit must outlast that.
        let second = self.spawn(Some("15000")).wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&second.stdout);
        assert!(second.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&second.stderr));
        let bodies: Vec<String> = self.twilio.log().accepted.iter().map(|r| r.body.clone()).collect();
        let unique: BTreeSet<&String> = bodies.iter().collect();
        assert_eq!(unique.len(), self.total, "every message sent at least once; second run: {stdout}\n{}", String::from_utf8_lossy(&second.stderr));
        eprintln!("second run: {stdout}");
        bodies.len() - self.total
    }
}

/// `kill -9` in the middle of delivering: the restarted job sends what was
/// not finished and committed, so every message goes out at least once, and
/// only deliveries in flight or finished since the last commit go out twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_minus_nine_mid_delivery_loses_nothing_and_resends_only_the_unfinished() {
    let _turn = support::one_at_a_time().await;
    let case = Restarted::new(300).await;
    let mut first = case.started_and_a_third_sent().await;
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let at_kill = case.twilio.log().accepted.len();
    assert!(at_kill < case.total, "killed too late to test anything");
    let resent = case.restarted_resends();
    eprintln!("kill -9 after {at_kill} sends: {resent} sent twice");
    // At-least-once: what was in flight (8 workers) or finished after the last commit (200 ms at 100/s) may repeat.
    assert!(resent <= 8 + 40, "{resent} resent: more than in flight plus one commit interval");
}

/// SIGTERM (what `docker stop` and every rolling deploy send) in the middle of
/// delivering: the job finishes what it holds, commits it and exits 0, so the
/// restarted job sends nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_delivery_stops_cleanly_and_nothing_is_sent_twice() {
    let _turn = support::one_at_a_time().await;
    let case = Restarted::new(300).await;
    let first = case.started_and_a_third_sent().await;
    // While it works: alive, ready, and its metrics on /metrics.
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("http://{}{path}", case.metrics)).send();
    assert_eq!(get("/healthz").await.unwrap().status(), reqwest::StatusCode::OK);
    assert_eq!(get("/readyz").await.unwrap().status(), reqwest::StatusCode::OK);
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(metrics.contains("notiflow_handoff_seconds_bucket{") && metrics.contains("# HELP notiflow_handoff_seconds"), "{metrics}");
    let term = std::process::Command::new("kill").args(["-TERM", &first.id().to_string()]).status().unwrap();
    assert!(term.success());
    let at_term = case.twilio.log().accepted.len();
    let stopped = first.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&stopped.stdout);
    assert!(stopped.status.success(), "a clean stop exits 0: {said}\n{}", String::from_utf8_lossy(&stopped.stderr));
    assert!(said.contains("delivery: "), "it printed its totals: {said}");
    assert!(at_term < case.total, "stopped too late to test anything");
    let resent = case.restarted_resends();
    eprintln!("SIGTERM after {at_term} sends; first run: {said}; {resent} sent twice");
    assert_eq!(resent, 0, "a clean stop leaves nothing to send again");
}

/// A stop that cannot finish in time (the provider hangs): past `[shutdown] deadline_ms` the job
/// exits 1 at once instead of waiting to be killed, and the restart sends everything it cut short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_past_its_deadline_exits_at_the_deadline_and_the_restart_sends_the_rest() {
    let _turn = support::one_at_a_time().await;
    let case = Restarted::new(90).await;
    let path = case.dir.path().join("notiflow.toml");
    let toml = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, toml.replace("[delivery]\n", "[shutdown]\ndeadline_ms = 800\n\n[delivery]\n")).unwrap();
    let first = case.started_and_a_third_sent().await;
    case.twilio.set_mode(notiflow_sms::fake::Mode::Slow(Duration::from_secs(20)));
    tokio::time::sleep(Duration::from_millis(300)).await; // the workers are now inside slow sends
    let term = std::process::Command::new("kill").args(["-TERM", &first.id().to_string()]).status().unwrap();
    assert!(term.success());
    let asked = std::time::Instant::now();
    let stopped = first.wait_with_output().unwrap();
    let took = asked.elapsed();
    let stderr = String::from_utf8_lossy(&stopped.stderr);
    assert_eq!(stopped.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("stop deadline of 800 ms passed"), "{stderr}");
    assert!(took >= Duration::from_millis(800) && took < Duration::from_secs(5), "exited {took:?} after SIGTERM");
    case.twilio.set_mode(notiflow_sms::fake::Mode::Accept);
    let resent = case.restarted_resends();
    // The slow sends the fake still accepted after the exit are sent again: at most one per worker.
    assert!(resent <= 8, "{resent} sent twice");
}

/// `notiflow deliver` on SMS dispatch records of several tenants, with a tenant registry.
struct TenantCase {
    config: notiflow::config::Config,
    dir: tempfile::TempDir,
    notiflow: support::Notiflow,
}

impl TenantCase {
    /// `providers`: `[[delivery.providers]]` TOML given the receipts port (nobody serves it: these tests count sends).
    async fn new(providers: impl Fn(u16) -> String, env: &[(&str, &str)], tenants: &str) -> TenantCase {
        let config = support::kafka_config(1);
        dispatch_lanes(&config).await;
        let dir = tempfile::tempdir().unwrap();
        let mut toml = std::fs::read_to_string(support::write_toml(&config, dir.path())).unwrap();
        let port = support::free_port();
        toml.push_str(&support::receipts_and_delivery_toml(port));
        toml.push_str(&providers(port));
        let toml_path = dir.path().join("notiflow.toml");
        std::fs::write(&toml_path, &toml).unwrap();
        let notiflow = support::Notiflow::new(&toml_path, env);
        let case = TenantCase { config, dir, notiflow };
        case.put_tenants(tenants);
        case
    }

    fn put_tenants(&self, tenants: &str) {
        let path = self.dir.path().join("tenants.toml");
        std::fs::write(&path, tenants).unwrap();
        let put = self.notiflow.command(&["tenant", "put", path.to_str().unwrap()]).output().unwrap();
        assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    }

    fn topic(&self, name: &str) -> String {
        self.config.topics.resolve(name)
    }

    fn kafka(&self) -> &KafkaConfig {
        self.config.kafka.as_ref().unwrap()
    }

    /// Normal-lane SMS dispatch records: (id, tenant).
    async fn publish(&self, ids: &[(&str, &str)]) {
        let lane = self.topic("notify.dispatch.normal");
        let out = ids
            .iter()
            .map(|(id, tenant)| {
                let mut v = dispatch(id, "sms", "+8613800000000", "normal");
                v["tenant"] = json!(tenant);
                OutRecord { topic: Arc::from(lane.as_str()), key: None, payload: v.to_string().into_bytes(), headers: vec![] }
            })
            .collect();
        KafkaSink::new(self.kafka()).unwrap().send_all(out).await.unwrap();
    }

    fn deliver(&self) {
        let output = self.notiflow.command(&["deliver", "--exit-when-idle-ms", "2000"]).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }

    /// The dead-letter reason of every record on notify.dlq, and the records.
    async fn dead_letters(&self) -> (Vec<String>, Vec<Value>) {
        let dlq = read_topic_to_end(self.kafka(), &self.topic("notify.dlq")).await.unwrap();
        let reason = |r: &notiflow_connector::Record| r.headers.iter().find(|h| h.name == notiflow::dlq::headers::REASON).map(|h| h.value.clone());
        let reasons = dlq.iter().map(|r| String::from_utf8_lossy(&reason(r).unwrap_or_default()).to_string()).collect();
        (reasons, support::read_json(self.kafka(), &self.topic("notify.dlq")).await)
    }
}

fn ids<'a>(prefix: &str, tenant: &'a str, n: usize) -> Vec<(String, &'a str)> {
    (0..n).map(|i| (format!("{prefix}{i}"), tenant)).collect()
}

fn as_refs<'a>(ids: &'a [(String, &'a str)]) -> Vec<(&'a str, &'a str)> {
    ids.iter().map(|(id, t)| (id.as_str(), *t)).collect()
}

/// A tenant's daily SMS quota from the registry: deliveries beyond it are
/// dead-lettered as `tenant_quota` (another tenant is not touched), and a
/// restarted deliver still knows what was used today (counted from notify.sends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_daily_quota_stops_its_messages_only_and_survives_a_restart() {
    let _turn = support::one_at_a_time().await;
    let twilio = notiflow_sms::fake::twilio("AC0123", "tw-token").await;
    let tenants = "[[tenants]]\nid = \"acme\"\nquotas = { messages_per_day = { sms = 5 } }\n\n[[tenants]]\nid = \"globex\"\n";
    let case = TenantCase::new(
        |port| support::twilio_provider_toml(&twilio.endpoint, "NOTIFLOW_IT_QUOTA_TWILIO", port),
        &[("NOTIFLOW_IT_QUOTA_TWILIO", "tw-token")],
        tenants,
    )
    .await;
    let mut first = ids("a", "acme", 8);
    first.extend(ids("g", "globex", 3));
    case.publish(&as_refs(&first)).await;
    case.deliver();
    assert_eq!(twilio.log().accepted.len(), 5 + 3, "acme's 5 of its quota and all of globex's");
    let (reasons, dead) = case.dead_letters().await;
    assert_eq!(reasons, ["tenant_quota"; 3], "{dead:?}");
    assert!(dead.iter().all(|d| d["tenant"] == "acme"), "the original dispatch records, all acme's");

    // A new run the same day: acme's quota is still used up; globex still sends.
    case.publish(&[("a8", "acme"), ("g3", "globex")]).await;
    case.deliver();
    assert_eq!(twilio.log().accepted.len(), 9, "only globex's new message went");
    let events = support::read_json(case.kafka(), &case.topic("notify.events")).await;
    let refused = events.iter().filter(|e| e["reason"] == "tenant_quota").count();
    assert_eq!(refused, 4, "a send_failed event per refused delivery");
}

/// A tenant with its own SMS account in the registry: its messages go through
/// that account only, and the account never sends anyone else's; a tenant
/// naming an account this deliver does not have is dead-lettered (nothing lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_own_provider_account_carries_its_messages_and_no_one_elses() {
    let _turn = support::one_at_a_time().await;
    let shared = notiflow_sms::fake::twilio("AC0123", "tw-token").await;
    let acme_own = notiflow_sms::fake::twilio("ACacme", "acme-token").await;
    let providers = |port| {
        support::twilio_provider_toml(&shared.endpoint, "NOTIFLOW_IT_ACCOUNTS_SHARED", port)
            + &support::twilio_account_toml("twilio-acme", "ACacme", &acme_own.endpoint, "NOTIFLOW_IT_ACCOUNTS_ACME", port)
    };
    let env = [("NOTIFLOW_IT_ACCOUNTS_SHARED", "tw-token"), ("NOTIFLOW_IT_ACCOUNTS_ACME", "acme-token")];
    let tenants = "[[tenants]]\nid = \"acme\"\nprovider_accounts = { sms = \"twilio-acme\" }\n\n[[tenants]]\nid = \"globex\"\n\n\
                   [[tenants]]\nid = \"initech\"\nprovider_accounts = { sms = \"twilio-initech\" }\n";
    let case = TenantCase::new(providers, &env, tenants).await;
    let mut sent = ids("a", "acme", 6);
    sent.extend(ids("g", "globex", 6));
    sent.extend(ids("i", "initech", 2));
    case.publish(&as_refs(&sent)).await;
    case.deliver();
    assert_eq!(acme_own.log().accepted.len(), 6, "acme's six, on acme's account");
    assert_eq!(shared.log().accepted.len(), 6, "globex's six, on the shared account");
    let sends = support::read_json(case.kafka(), &case.topic("notify.sends")).await;
    let pairs: BTreeSet<(String, String)> = sends.iter().map(|s| (s["tenant"].as_str().unwrap().into(), s["provider"].as_str().unwrap().into())).collect();
    let expected: BTreeSet<(String, String)> =
        [("acme", "twilio-acme"), ("globex", "twilio-main")].iter().map(|(t, p)| (t.to_string(), p.to_string())).collect();
    assert_eq!(pairs, expected, "{sends:?}");
    let (reasons, dead) = case.dead_letters().await;
    assert_eq!(reasons, ["no_provider"; 2], "{dead:?}");
    assert!(dead.iter().all(|d| d["tenant"] == "initech"), "initech's account is not configured here: {dead:?}");

    // acme leaves its own account: from the next run its messages use the shared one, and so may everyone's.
    case.put_tenants("[[tenants]]\nid = \"acme\"\n\n[[tenants]]\nid = \"globex\"\n\n[[tenants]]\nid = \"initech\"\n");
    case.publish(&[("a6", "acme"), ("g6", "globex")]).await;
    case.deliver();
    assert_eq!(acme_own.log().accepted.len() + shared.log().accepted.len(), 14, "both new messages sent");
}
