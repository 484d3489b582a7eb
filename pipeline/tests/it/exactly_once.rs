//! `kill -9` mid-stream on the real broker: a stateful (dedupe) and a
//! stateless flow; after a restart nothing is lost and nothing is written twice.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notiflow_connector::{LogReader, OutRecord, Sink, TopicAdmin, TopicSpec};
use notiflow_kafka::{KafkaAdmin, KafkaReader, KafkaSink, read_topic_to_end};

use crate::support;

const SQL: &str = "
CREATE TABLE sends (id TEXT NOT NULL, recipient TEXT NOT NULL, content TEXT NOT NULL, ts TIMESTAMP NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
WITH (connector = 'kafka', type = 'source', topic = 'x.sends');
CREATE TABLE deduped (id TEXT) WITH (connector = 'kafka', type = 'sink', topic = 'x.deduped');
CREATE TABLE copied (id TEXT) WITH (connector = 'kafka', type = 'sink', topic = 'x.copied');
INSERT INTO deduped SELECT id FROM (
    SELECT id, ROW_NUMBER() OVER (PARTITION BY recipient, content, sliding(INTERVAL '5' MINUTE) ORDER BY ts) AS rn FROM sends
) WHERE rn = 1;
INSERT INTO copied SELECT id FROM sends;
";

const PAIRS: usize = 20_000;
const COPIES: usize = 3;

async fn end_total(reader: &KafkaReader, topic: &str) -> i64 {
    reader.end_offsets(topic).await.unwrap().iter().map(|(_, end)| end).sum()
}

fn ids(records: &[notiflow_connector::Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(r.payload.as_deref().unwrap()).unwrap();
            v["id"].as_str().unwrap().to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_minus_nine_mid_stream_loses_nothing_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sql_dir = dir.path().join("sql");
    std::fs::create_dir_all(&sql_dir).unwrap();
    std::fs::write(sql_dir.join("10_dedupe.sql"), SQL).unwrap();

    let mut config = support::kafka_config(3);
    let prefix = support::unique("x");
    config.topics.rename = ["sends", "deduped", "copied", "dlq", "events"]
        .iter()
        .map(|t| (if *t == "dlq" || *t == "events" { format!("notify.{t}") } else { format!("x.{t}") }, format!("{prefix}.{t}")))
        .collect();
    // Static membership: the restarted instance takes over its partitions at
    // once instead of waiting for the killed member's session to expire.
    config.kafka.as_mut().unwrap().properties.insert("group.instance.id".into(), format!("{prefix}-instance"));
    let kafka = config.kafka.clone().unwrap();
    let topic = |t: &str| format!("{prefix}.{t}");
    let admin = KafkaAdmin::new(&kafka).unwrap();
    admin
        .ensure_topics(&["sends", "deduped", "copied", "dlq", "events"].map(|t| TopicSpec::new(topic(t), 3)))
        .await
        .unwrap();

    // Each (recipient, content) pair three times within a minute; the record
    // key is the recipient, so a pair's copies share a partition, in order.
    let sends: Arc<str> = Arc::from(topic("sends").as_str());
    let mut records = Vec::with_capacity(PAIRS * COPIES);
    let mut first_of_pair = HashSet::new();
    for copy in 0..COPIES {
        for pair in 0..PAIRS {
            let id = format!("{pair}-{copy}");
            if copy == 0 {
                first_of_pair.insert(id.clone());
            }
            let recipient = format!("r{}", pair % 5000);
            let body = serde_json::json!({
                "id": id, "recipient": recipient, "content": format!("c{}", pair / 5000),
                "ts": format!("2026-11-23T10:00:{:02}", copy * 10),
            });
            records.push(OutRecord { topic: sends.clone(), key: Some(recipient.into_bytes()), payload: body.to_string().into_bytes(), headers: vec![] });
        }
    }
    // One record per producer batch: tansu 0.6 serves a fetch that starts
    // inside a record batch from the *next* batch on, silently skipping the
    // rest of the batch (real Kafka returns the whole batch and the client
    // drops what precedes the offset). A consumer resuming mid-batch on tansu
    // therefore loses records; with one-record batches every offset is a
    // batch start. See docs/exactly-once.md.
    let mut unbatched = kafka.clone();
    unbatched.properties.insert("batch.num.messages".into(), "1".into());
    unbatched.properties.insert("linger.ms".into(), "0".into());
    unbatched.properties.remove("group.instance.id");
    KafkaSink::new(&unbatched).unwrap().send_all(records).await.unwrap();

    let toml = support::write_toml_with(
        &config,
        dir.path(),
        &format!("batch_max_records = 500\ncheckpoint_interval_ms = 150\nstate_dir = \"{}\"", dir.path().join("state").display()),
    );
    let run = |idle_ms: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_notiflow"))
            .arg("run")
            .arg(&sql_dir)
            .args(["--config", toml.to_str().unwrap(), "--exit-when-idle-ms", idle_ms])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };

    // Kill -9 once part of the input has been copied, mid-stream.
    let reader = KafkaReader::new(&kafka);
    let mut child = run("60000");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let copied = end_total(&reader, &topic("copied")).await;
        if copied >= (PAIRS * COPIES / 3) as i64 {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the pipeline exited early");
        assert!(Instant::now() < deadline, "no progress: {copied} copied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let at_kill = end_total(&reader, &topic("copied")).await;
    assert!(at_kill < (PAIRS * COPIES) as i64, "killed too late to test anything: {at_kill}");

    // The killed member holds its partitions until its session (10 s) expires.
    let output = run("20000").wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    eprintln!("killed after {at_kill} copies; restart said:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));

    let copied_records = read_topic_to_end(&kafka, &topic("copied")).await.unwrap();
    let copied = ids(&copied_records);
    let mut counts: HashMap<&str, usize> = HashMap::new();
    copied.iter().for_each(|id| *counts.entry(id).or_default() += 1);
    let twice = counts.values().filter(|n| **n > 1).count();
    eprintln!("copied: {} records, {} distinct, {twice} written more than once", copied.len(), counts.len());
    assert_eq!(counts.len(), PAIRS * COPIES, "every input copied");
    assert!(counts.values().all(|n| *n == 1), "a copy was written twice");
    assert_eq!(copied.len(), PAIRS * COPIES);

    let deduped = ids(&read_topic_to_end(&kafka, &topic("deduped")).await.unwrap());
    assert_eq!(deduped.len(), PAIRS, "one per pair, none twice");
    assert_eq!(deduped.iter().cloned().collect::<HashSet<_>>(), first_of_pair, "the first copy of each pair passed");
}

