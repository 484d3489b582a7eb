//! The request path on the real broker: 10,000 requests, 1% malformed,
//! through every stage (validate, idempotency, recipients, templates,
//! windows, timers) to the dispatch topics or the dead-letter topic.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use notiflow::dlq::headers as dlq_headers;
use notiflow::job::{StopWhen, run_job};
use notiflow::samples::{Expected, sample_requests};
use notiflow_connector::{OutRecord, Record, Sink, TopicAdmin};
use notiflow_kafka::{KafkaAdmin, KafkaSink, KafkaSource, committed_offsets, read_topic_to_end};
use tokio::sync::watch;

use crate::support;

fn header<'a>(record: &'a Record, name: &str) -> Option<&'a [u8]> {
    record.headers.iter().find(|h| h.name == name).map(|h| h.value.as_slice())
}

fn scrape(addr: std::net::SocketAddr) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body
}

fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_one_percent_malformed() {
    let config = support::kafka_config(3);
    let kafka = config.kafka.clone().unwrap();
    let topic = |logical: &str| config.topics.resolve(logical);
    let mut run = notiflow::load_pipeline(&support::sql_dir(), &config).await.unwrap();
    KafkaAdmin::new(&kafka).unwrap().ensure_topics(&notiflow::topic_specs(&run, &config)).await.unwrap();

    // The example templates (both tenants have order_shipped: sms, email, inbox); no profiles.
    let templates = notiflow::catalog::parse_items("templates", include_str!("../../../examples/templates.jsonl")).unwrap();
    let tenants: Vec<String> = config.tenants.iter().map(|t| t.id.clone()).collect();
    let templates_topic: Arc<str> = Arc::from(topic("notify.templates").as_str());
    let template_records = notiflow::catalog::template_records(&templates, &tenants).unwrap();
    KafkaSink::new(&kafka)
        .unwrap()
        .send_all(template_records.into_iter().map(|r| r.into_out(&templates_topic)).collect())
        .await
        .unwrap();
    run.prepare(&notiflow_kafka::KafkaReader::new(&kafka)).await.unwrap();

    let samples = sample_requests(10_000, 100, config.pipeline.max_request_bytes);
    let requests_topic: Arc<str> = Arc::from(topic("notify.requests").as_str());
    let producer = KafkaSink::new(&kafka).unwrap();
    producer
        .send_all(
            samples
                .iter()
                .map(|s| OutRecord {
                    topic: requests_topic.clone(),
                    key: Some(s.key.clone()),
                    payload: s.payload.clone(),
                    headers: vec![],
                })
                .collect(),
        )
        .await
        .unwrap();

    // Run 1, in process, with the metrics endpoint up.
    let handle = notiflow::metrics_http::recorder();
    let metrics_addr = notiflow::metrics_http::serve("127.0.0.1:0", handle).await.unwrap();
    let streams = run.stream_topics();
    let mut source =
        KafkaSource::new(&kafka, &config.pipeline.group_id, &streams.iter().map(String::as_str).collect::<Vec<_>>(), "earliest").unwrap();
    let (_keep, shutdown) = watch::channel(false);
    let (_records_in, _batches) = run_job(
        &mut run,
        &mut source,
        &KafkaSink::new(&kafka).unwrap(),
        notiflow::batch_limits(&config),
        StopWhen::IdleFor(Duration::from_secs(3)),
        shutdown,
    )
    .await
    .unwrap();
    drop(source);

    // A valid request to a direct address (phone, email, inbox user) is on exactly one dispatch topic, the one
    // of its priority; a user_id without a profile has no channel. (Every address gets at most 3 requests:
    // no cap or dedupe window is reached, and no profile means no quiet hours.)
    let mut dispatched: HashMap<Vec<u8>, Vec<String>> = HashMap::new();
    for priority in ["high", "normal", "low"] {
        for record in read_topic_to_end(&kafka, &topic(&format!("notify.dispatch.{priority}"))).await.unwrap() {
            let row: serde_json::Value = serde_json::from_slice(record.payload.as_deref().unwrap()).unwrap();
            let key = format!("{}/{}", row["tenant"].as_str().unwrap(), row["request_id"].as_str().unwrap());
            dispatched.entry(key.into_bytes()).or_default().push(priority.to_string());
        }
    }
    let mut no_channel = 0;
    let dead: Vec<Record> = read_topic_to_end(&kafka, &topic("notify.dlq")).await.unwrap();
    let mut dead_by_source: HashMap<Vec<u8>, &Record> = HashMap::new();
    for record in &dead {
        dead_by_source.insert(record.payload.clone().unwrap(), record);
    }
    let (mut valid, mut malformed) = (0, 0);
    for sample in &samples {
        match &sample.expected {
            Expected::Dispatch { priority } => {
                valid += 1;
                let request: serde_json::Value = serde_json::from_slice(&sample.payload).unwrap();
                if request["recipients"][0]["user_id"].is_string() {
                    no_channel += 1;
                    assert_eq!(dispatched.get(&sample.key), None);
                } else {
                    assert_eq!(dispatched.get(&sample.key), Some(&vec![priority.to_string()]), "{:?}", String::from_utf8_lossy(&sample.key));
                }
            }
            Expected::DeadLetter { reason } => {
                malformed += 1;
                // Original bytes, byte for byte, with the reason and where it came from.
                let record = dead_by_source.get(&sample.payload).expect("malformed record is in the DLQ");
                assert_eq!(header(record, dlq_headers::REASON), Some(reason.as_bytes()));
                assert_eq!(header(record, dlq_headers::TOPIC), Some(topic("notify.requests").as_bytes()));
                assert!(header(record, dlq_headers::OFFSET).is_some());
                assert!(!header(record, dlq_headers::ERROR).unwrap().is_empty());
                assert_eq!(record.key.as_deref(), Some(sample.key.as_slice()));
            }
        }
    }
    assert_eq!((valid, malformed), (9_900, 100));
    assert!(no_channel > 2_000, "{no_channel}");
    let sent = 9_900 - no_channel;
    assert_eq!(dispatched.values().map(Vec::len).sum::<usize>(), sent, "no extra dispatches");
    assert_eq!(dead.len(), 100, "no extra dead letters");
    let events = read_topic_to_end(&kafka, &topic("notify.events")).await.unwrap();
    let mut by_kind: HashMap<String, usize> = HashMap::new();
    for event in &events {
        let row: serde_json::Value = serde_json::from_slice(event.payload.as_deref().unwrap()).unwrap();
        *by_kind.entry(row["event"].as_str().unwrap().to_string()).or_default() += 1;
    }
    let expected: HashMap<String, usize> =
        [("accepted", 9_900), ("rejected", 100), ("dispatched", sent), ("no_channel", no_channel)].map(|(k, n)| (k.to_string(), n)).into();
    assert_eq!(by_kind, expected, "one request event each, one terminal event per delivery");

    // Committed offsets cover every record of every partition.
    let committed = committed_offsets(&kafka, &config.pipeline.group_id, &topic("notify.requests")).unwrap();
    let mut per_partition: HashMap<i32, i64> = HashMap::new();
    for record in read_topic_to_end(&kafka, &topic("notify.requests")).await.unwrap() {
        let end = per_partition.entry(record.partition).or_default();
        *end = (*end).max(record.offset + 1);
    }
    assert_eq!(committed.len(), 3);
    for (partition, offset) in committed {
        assert_eq!(offset, per_partition.get(&partition).copied(), "partition {partition}");
    }

    // Metrics: per-topic counters for this test's own topics, DLQ by reason, batch latency.
    let text = scrape(metrics_addr);
    let series = format!("notiflow_records_in_total{{topic=\"{}\"}}", topic("notify.requests"));
    assert_eq!(metric_value(&text, &series), Some(10_000.0), "{text}");
    let dlq_series = format!("notiflow_records_out_total{{topic=\"{}\"}}", topic("notify.dlq"));
    assert_eq!(metric_value(&text, &dlq_series), Some(100.0));
    assert!(metric_value(&text, "notiflow_dlq_total{reason=\"not_json\"}").unwrap() >= 17.0, "{text}");
    assert!(text.contains("notiflow_batch_seconds_bucket"), "{text}");
    assert!(text.contains("notiflow_consumer_lag{"), "consumer lag is published: {text}");

    // Run 2: the binary restarts on the same group and emits nothing new.
    let dir = tempfile::tempdir().unwrap();
    let toml = support::write_toml(&config, dir.path());
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_notiflow"))
        .arg("run")
        .arg(support::sql_dir())
        .args(["--config", toml.to_str().unwrap(), "--exit-when-idle-ms", "3000"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("records in: 0 "), "{stdout}");
    let mut after = 0;
    for priority in ["high", "normal", "low"] {
        after += read_topic_to_end(&kafka, &topic(&format!("notify.dispatch.{priority}"))).await.unwrap().len();
    }
    assert_eq!(after, sent);
    assert_eq!(read_topic_to_end(&kafka, &topic("notify.dlq")).await.unwrap().len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_processes_new_records_after_a_restart() {
    let config = support::kafka_config(2);
    let kafka = config.kafka.clone().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let toml = support::write_toml(&config, dir.path());
    let run = || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_notiflow"))
            .arg("run")
            .arg(support::sql_dir())
            .args(["--config", toml.to_str().unwrap(), "--exit-when-idle-ms", "2000"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).to_string()
    };
    // The binary creates its topics; the first run finds nothing.
    let first = run();
    assert!(first.contains("records in: 0 "), "{first}");
    let requests_topic: Arc<str> = Arc::from(config.topics.resolve("notify.requests").as_str());
    let produce = |samples: Vec<notiflow::samples::Sample>| {
        samples
            .into_iter()
            .map(|s| OutRecord { topic: requests_topic.clone(), key: Some(s.key), payload: s.payload, headers: vec![] })
            .collect::<Vec<_>>()
    };
    let sink = KafkaSink::new(&kafka).unwrap();
    sink.send_all(produce(sample_requests(300, 0, 1024))).await.unwrap();
    let second_run = run();
    assert!(second_run.contains("records in: 300 "), "{second_run}");
    // 50 new requests, and 20 producer retries of requests the first run accepted.
    let mut second = sample_requests(350, 0, 1024).split_off(300);
    second.extend(sample_requests(20, 0, 1024));
    sink.send_all(produce(second)).await.unwrap();
    let third = run();
    assert!(third.contains("records in: 70 "), "only the new records: {third}");
    let events = read_topic_to_end(&kafka, &config.topics.resolve("notify.events")).await.unwrap();
    let count = |kind: &str| {
        events.iter().filter(|r| serde_json::from_slice::<serde_json::Value>(r.payload.as_deref().unwrap()).unwrap()["event"] == kind).count()
    };
    assert_eq!(count("accepted"), 350, "the retries were not accepted again: idempotency state survived the restart");
    assert_eq!(count("duplicate_request"), 20, "one duplicate_request event per retry");
}

/// `notiflow run` follows the tenant registry while it runs: a tenant registered after the start may
/// send at once (before, its requests were dead-lettered `unknown_tenant` until a restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_registered_while_the_pipeline_runs_may_send_at_once() {
    let _turn = support::one_at_a_time().await;
    let config = support::kafka_config(1);
    let kafka = config.kafka.clone().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let toml = support::write_toml(&config, dir.path());
    let notiflow = support::Notiflow::new(&toml, &[]);
    let mut run = notiflow.command(&["run"]).arg(support::sql_dir()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let requests_topic: Arc<str> = Arc::from(config.topics.resolve("notify.requests").as_str());
    let sink = KafkaSink::new(&kafka).unwrap();
    let request = |id: &str| {
        let body = serde_json::json!({"request_id": id, "tenant": "initech", "template": "welcome", "recipients": [{"email": "a@initech.example"}]});
        OutRecord { topic: requests_topic.clone(), key: Some(format!("initech/{id}").into_bytes()), payload: body.to_string().into_bytes(), headers: vec![] }
    };
    let events_topic = config.topics.resolve("notify.events");
    let event_of = |id: &'static str| {
        let kafka = kafka.clone();
        let topic = events_topic.clone();
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            loop {
                let events = read_topic_to_end(&kafka, &topic).await.unwrap_or_default();
                let found = events.iter().map(|r| serde_json::from_slice::<serde_json::Value>(r.payload.as_deref().unwrap()).unwrap()).find(|e| e["request_id"] == id);
                if let Some(event) = found {
                    return event;
                }
                assert!(std::time::Instant::now() < deadline, "no event for {id}");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    };
    sink.send_all(vec![request("before")]).await.unwrap();
    let before = event_of("before").await;
    assert_eq!((before["event"].as_str(), before["reason"].as_str()), (Some("rejected"), Some("unknown_tenant")), "{before}");

    std::fs::write(dir.path().join("tenants.toml"), "[[tenants]]\nid = \"initech\"\nname = \"Initech\"\n").unwrap();
    let put = notiflow.command(&["tenant", "put"]).arg(dir.path().join("tenants.toml")).output().unwrap();
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    // The registry reaches the running pipeline within its follow interval; retry a fresh request until then.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut attempt = 0;
    let accepted = loop {
        attempt += 1;
        let id: &'static str = Box::leak(format!("after{attempt}").into_boxed_str());
        sink.send_all(vec![request(id)]).await.unwrap();
        let event = event_of(id).await;
        if event["event"] == "accepted" {
            break event;
        }
        assert!(std::time::Instant::now() < deadline, "still {event} after the tenant was registered");
    };
    assert_eq!(accepted["tenant"], "initech", "{accepted}");
    assert!(attempt <= 3, "took {attempt} requests to see the new tenant");
    let term = std::process::Command::new("kill").args(["-TERM", &run.id().to_string()]).status().unwrap();
    assert!(term.success());
    assert!(run.wait().unwrap().success(), "run stops cleanly");
}

/// A consumer that starts inside a producer batch (a committed or given offset between a batch's first and last
/// record) reads every record from that offset on, once. tansu 0.6 answers such a fetch with the batches after it
/// (the rest of the batch is skipped; when it is the last one, the partition seems empty); the source notices and
/// reads again from further back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_starting_inside_a_producer_batch_reads_every_record_from_there() {
    let kafka = support::kafka();
    let topic = support::unique("batched");
    KafkaAdmin::new(&kafka).unwrap().ensure_topics(&[notiflow_connector::TopicSpec::new(&topic, 1)]).await.unwrap();
    let name: Arc<str> = Arc::from(topic.as_str());
    let records = |range: std::ops::Range<i64>| {
        range.map(|i| OutRecord { topic: name.clone(), key: None, payload: format!("r{i}").into_bytes(), headers: vec![] }).collect::<Vec<_>>()
    };
    // One call: librdkafka sends the 100 records as one batch.
    let sink = KafkaSink::new(&kafka).unwrap();
    sink.send_all(records(0..100)).await.unwrap();
    async fn read(mut source: KafkaSource, want: usize) -> Vec<i64> {
        let mut offsets = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while offsets.len() < want && std::time::Instant::now() < deadline {
            let limits = notiflow_connector::BatchLimits { max_records: 1000, max_wait: Duration::from_millis(200) };
            offsets.extend(notiflow_connector::Source::next_batch(&mut source, limits).await.unwrap().iter().map(|r| r.offset));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        offsets
    }
    // Inside the last batch: nothing after it to skip to.
    let given = KafkaSource::assigned(&kafka, &[(topic.clone(), 0, 60)]).unwrap();
    assert_eq!(read(given, 40).await, (60..100).collect::<Vec<_>>(), "from inside the last batch");
    // A later batch exists: the broker's answer skips to it.
    sink.send_all(records(100..110)).await.unwrap();
    let given = KafkaSource::assigned(&kafka, &[(topic.clone(), 0, 30)]).unwrap();
    assert_eq!(read(given, 80).await, (30..110).collect::<Vec<_>>(), "from inside a batch followed by another");
    // A range read (recovery reads outputs and state this way) from inside a batch, to the end.
    let read_range = notiflow_connector::LogReader::read_from(&notiflow_kafka::KafkaReader::new(&kafka), &topic, 0, 70).await.unwrap();
    assert_eq!(read_range.iter().map(|r| r.offset).collect::<Vec<_>>(), (70..110).collect::<Vec<_>>(), "a range read from inside a batch");
    // A group member whose committed offset is inside a batch.
    let group = support::unique("batched-group");
    let mut first = KafkaSource::new(&kafka, &group, &[&topic], "earliest").unwrap();
    let mut committed = notiflow_connector::Offsets::default();
    committed.insert(name.clone(), 0, 45);
    while notiflow_connector::Source::next_batch(&mut first, notiflow_connector::BatchLimits { max_records: 1, max_wait: Duration::from_millis(200) })
        .await
        .unwrap()
        .is_empty()
    {}
    notiflow_connector::Source::commit(&mut first, &committed).await.unwrap();
    drop(first);
    let member = KafkaSource::new(&kafka, &group, &[&topic], "earliest").unwrap();
    assert_eq!(read(member, 65).await, (45..110).collect::<Vec<_>>(), "from a committed offset inside a batch");
}
