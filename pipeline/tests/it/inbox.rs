//! The in-app inbox end to end on the real broker: `notiflow deliver` puts
//! inbox deliveries on the inbox log, `notiflow inbox serve` shows them live
//! on the user's SSE stream and in the list API, marks them read, applies a
//! recall from the dispatch topic, keeps users apart, and after a restart
//! shows the same inboxes (the log is the store).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notiflow_connector::{OutRecord, Sink, TopicAdmin, TopicSpec};
use notiflow_kafka::{KafkaAdmin, KafkaSink, read_topic_to_end};
use serde_json::{Value, json};

use crate::support::{self, Killed};

const SECRET_VAR: &str = "NOTIFLOW_IT_INBOX_SECRET";

fn inbox_dispatch(id: &str, user: &str) -> Value {
    json!({"type": "send", "delivery_id": format!("d_{id}"), "message_id": format!("m_{id}"), "request_id": format!("r_{id}"), "tenant": "acme",
        "template": "order_shipped", "recipient": format!("user:{user}"), "channel": "inbox", "address": user, "priority": "normal",
        "category": "transactional", "subject": format!("Order {id}"), "body": format!("Order {id} shipped"), "html": null, "expires_at": null, "reason": null})
}

fn notiflow(args: &[&str], config: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_notiflow"));
    command.args(args).arg("--config").arg(config).env(SECRET_VAR, "it-inbox-secret-0123456789");
    command
}

/// Starts the inbox server and returns it with its base URL, once it serves.
async fn start_server(config: &std::path::Path) -> (Killed, String) {
    let mut child = notiflow(&["inbox", "serve"], config).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base = line.trim().strip_prefix("inbox: listening on ").unwrap_or_else(|| panic!("unexpected first line `{line}`")).to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("{base}/healthz")).await.map(|r| r.status().as_u16()).unwrap_or(0) != 200 {
        assert!(Instant::now() < deadline, "the inbox never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (Killed(child), base)
}

async fn deliver(config: &std::path::Path) -> String {
    let output = notiflow(&["deliver", "--exit-when-idle-ms", "1500"], config).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

/// Reads the SSE stream into (event, data) pairs until the response ends.
fn follow_stream(mut response: reqwest::Response) -> Arc<Mutex<Vec<(String, Value)>>> {
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    tokio::spawn(async move {
        let mut buffer = String::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let field = |name: &str| block.lines().find_map(|l| l.strip_prefix(&format!("{name}:")).map(|v| v.trim().to_string()));
                if let (Some(event), Some(data)) = (field("event"), field("data")) {
                    seen.lock().unwrap().push((event, serde_json::from_str(&data).unwrap()));
                }
            }
        }
    });
    events
}

async fn wait_for(events: &Arc<Mutex<Vec<(String, Value)>>>, kind: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while events.lock().unwrap().iter().filter(|(e, _)| e == kind).count() < count {
        assert!(Instant::now() < deadline, "waited for {count} `{kind}` events: {:?}", events.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn list(client: &reqwest::Client, base: &str, user: &str, token: &str) -> (u16, Value) {
    let response = client.get(format!("{base}/v1/inbox/acme/{user}/messages")).bearer_auth(token).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

fn ids(listing: &Value) -> Vec<String> {
    listing["messages"].as_array().unwrap().iter().map(|m| m["delivery_id"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_messages_stream_live_list_mark_read_recall_and_survive_a_restart() {
    let _turn = support::one_at_a_time().await;
    let config = support::kafka_config(2);
    let kafka = config.kafka.clone().unwrap();
    let topic = |name: &str| config.topics.resolve(name);
    let specs: Vec<TopicSpec> = ["notify.dispatch.high", "notify.dispatch.normal"].iter().map(|t| TopicSpec::new(topic(t), 2)).collect();
    KafkaAdmin::new(&kafka).unwrap().ensure_topics(&specs).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut toml = std::fs::read_to_string(support::write_toml(&config, dir.path())).unwrap();
    toml.push_str(&format!(
        "\n[delivery]\ngroup_id = \"{}\"\ncommit_interval_ms = 200\n\n[inbox]\nlisten = \"127.0.0.1:0\"\ntoken_secret = {{ env = \"{SECRET_VAR}\" }}\n",
        support::unique("inbox-deliver")
    ));
    let path = dir.path().join("notiflow.toml");
    std::fs::write(&path, toml).unwrap();

    let (server, base) = start_server(&path).await;
    let token = |user: &str| {
        let output = notiflow(&["inbox", "token", "acme", user], &path).output().unwrap();
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    };
    let (ann, bob) = (token("ann"), token("bob"));
    assert_ne!(ann, bob);
    let client = reqwest::Client::new();
    let stream = client.get(format!("{base}/v1/inbox/acme/ann/stream?token={ann}")).send().await.unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    let events = follow_stream(stream);
    wait_for(&events, "unread", 1).await;

    // Three messages for ann (one of them dispatched twice), one for bob.
    let records = [inbox_dispatch("1", "ann"), inbox_dispatch("2", "ann"), inbox_dispatch("3", "ann"), inbox_dispatch("4", "bob"), inbox_dispatch("1", "ann")];
    let out = records.iter().map(|v| OutRecord { topic: Arc::from(topic("notify.dispatch.normal")), key: Some(b"k".to_vec()), payload: v.to_string().into_bytes(), headers: vec![] });
    let sink = KafkaSink::new(&kafka).unwrap();
    sink.send_all(out.collect()).await.unwrap();
    let first = deliver(&path).await;
    assert!(first.contains("delivery: 5 read, 5 sent, 0 failed"), "{first}");

    wait_for(&events, "message", 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let live: BTreeSet<String> = events.lock().unwrap().iter().filter(|(e, _)| e == "message").map(|(_, d)| d["entry"]["delivery_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(live, BTreeSet::from(["d_1".to_string(), "d_2".into(), "d_3".into()]), "ann's stream shows her three messages once each, not bob's");

    let (status, listing) = list(&client, &base, "ann", &ann).await;
    assert_eq!((status, listing["unread"].as_u64()), (200, Some(3)));
    assert_eq!(ids(&listing).into_iter().collect::<BTreeSet<_>>(), live);
    let seqs: Vec<u64> = listing["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] > w[1]), "newest first: {seqs:?}");
    let d2 = &listing["messages"].as_array().unwrap().iter().find(|m| m["delivery_id"] == "d_2").unwrap().clone();
    assert_eq!((d2["subject"].as_str(), d2["body"].as_str(), d2["read_at"].is_null()), (Some("Order 2"), Some("Order 2 shipped"), true));

    // Isolation: bob's token does not open ann's inbox; no token is refused.
    assert_eq!(list(&client, &base, "ann", &bob).await.0, 403);
    let anonymous = client.get(format!("{base}/v1/inbox/acme/ann/messages")).send().await.unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    assert_eq!(ids(&list(&client, &base, "bob", &bob).await.1), ["d_4"]);

    // Mark read: the answer, the stream and the list agree.
    let read = client.post(format!("{base}/v1/inbox/acme/ann/messages/d_2/read")).bearer_auth(&ann).send().await.unwrap();
    assert_eq!(read.status().as_u16(), 200);
    assert_eq!(read.json::<Value>().await.unwrap()["unread"], 2);
    wait_for(&events, "read", 1).await;
    let missing = client.post(format!("{base}/v1/inbox/acme/ann/messages/d_4/read")).bearer_auth(&ann).send().await.unwrap();
    assert_eq!(missing.status().as_u16(), 404, "bob's message is not in ann's inbox");

    // A recall of request r_1 comes through the dispatch topic.
    let recall = json!({"type": "recall", "message_id": "m_1", "request_id": "r_1", "tenant": "acme"});
    let out = OutRecord { topic: Arc::from(topic("notify.dispatch.high")), key: Some(b"k".to_vec()), payload: recall.to_string().into_bytes(), headers: vec![] };
    sink.send_all(vec![out]).await.unwrap();
    let second = deliver(&path).await;
    assert!(second.contains("delivery: 1 read, 0 sent") && second.contains("1 recalls"), "{second}");
    wait_for(&events, "recalled", 1).await;
    let (_, after) = list(&client, &base, "ann", &ann).await;
    assert_eq!(ids(&after).into_iter().collect::<BTreeSet<_>>(), BTreeSet::from(["d_2".to_string(), "d_3".into()]));
    assert_eq!(after["unread"], 1);

    // Restart: the log rebuilds the same inboxes, read marks and recall included.
    drop(server);
    let (server, base) = start_server(&path).await;
    let (_, replayed) = list(&client, &base, "ann", &ann).await;
    let strip = |v: &Value| -> Vec<(String, bool)> {
        v["messages"].as_array().unwrap().iter().map(|m| (m["delivery_id"].as_str().unwrap().to_string(), m["read_at"].is_null())).collect()
    };
    let mut before_restart = strip(&after);
    let mut after_restart = strip(&replayed);
    before_restart.sort();
    after_restart.sort();
    assert_eq!(after_restart, before_restart);
    assert_eq!(replayed["unread"], 1);
    drop(server);

    // The read went to notify.receipts for the reports.
    let receipts: Vec<Value> = read_topic_to_end(&kafka, &topic("notify.receipts")).await.unwrap().iter().map(|r| serde_json::from_slice(r.payload.as_ref().unwrap()).unwrap()).collect();
    assert_eq!(receipts.len(), 1, "{receipts:?}");
    assert_eq!((receipts[0]["kind"].as_str(), receipts[0]["delivery_id"].as_str()), (Some("read"), Some("d_2")));
}
