//! Issue 7 end to end on the real broker and the real ClickHouse: producer
//! requests -> `notiflow run` (stages 10-40) -> `notiflow deliver` (links
//! rewritten for click tracking) -> fake Twilio, which reports each
//! message's fate to `notiflow receipts serve` -> stage 50 (`notiflow run`)
//! joins sends and receipts into notify.deliveries -> `notiflow sink` into
//! ClickHouse and the Parquet archive. The sink is killed (SIGKILL) mid-load
//! and restarted: every row exactly once in both. Reports run on both and
//! equal figures computed here from the raw sends and receipts.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use notiflow::report;
use notiflow_clickhouse::ClickHouseConfig;
use notiflow_connector::{OutRecord, Sink, TopicAdmin, TopicSpec};
use notiflow_kafka::{KafkaAdmin, KafkaSink, read_topic_to_end};
use serde_json::{Value, json};

use crate::support::{self, Notiflow, free_port, read_json, wait_for_json};

const SMS: usize = 40;
const UNREACHABLE: [usize; 2] = [7, 23];
const FILLER_EVENTS: usize = 4000;
/// Deliveries whose link is followed (the first one twice).
const CLICKED: usize = 5;

fn parse_ms(text: &str) -> i64 {
    notiflow::warehouse::dataset::parse_time(&Value::from(text)).unwrap()
}

/// ClickHouse's quantileExact: the value at floor(level * n) of the sorted values.
fn quantile(values: &[f64], level: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((level * sorted.len() as f64) as usize).min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_join_sends_and_land_once_in_clickhouse_and_parquet() {
    let _turn = support::one_at_a_time().await;
    let mut config = support::kafka_config(2);
    config.pipeline.batch_max_records = 20;
    // One record per batch, for every writer: tansu serves a fetch that starts inside a record batch
    // from the next batch on, so the restarted sink (resuming at any offset) would skip records.
    let properties = [("batch.num.messages", "1"), ("linger.ms", "0"), ("message.timeout.ms", "300000")];
    config.kafka.as_mut().unwrap().properties.extend(properties.map(|(k, v)| (k.to_string(), v.to_string())));
    let kafka = config.kafka.clone().unwrap();
    let topic = |name: &str| config.topics.resolve(name);
    let specs: Vec<TopicSpec> =
        ["notify.requests", "notify.dispatch.normal", "notify.receipts", "notify.sends", "notify.deliveries"].iter().map(|t| TopicSpec::new(topic(t), 2)).collect();
    KafkaAdmin::new(&kafka).unwrap().ensure_topics(&specs).await.unwrap();

    let database = support::unique("nf_e2e");
    let admin = ClickHouseConfig::new(support::clickhouse_url()).client().unwrap();
    admin.query(&format!("CREATE DATABASE {database}")).execute().await.unwrap();

    let twilio = notiflow_sms::fake::twilio("AC0123", "tw-token").await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let mut toml = std::fs::read_to_string(support::write_toml(&config, dir.path())).unwrap();
    toml.push_str(&format!(
        r#"
[archive]
dir = "{archive}"
rollover_seconds = 1
target_file_size = 1

[clickhouse]
url = "{clickhouse}"
database = "{database}"
batch_rows = 20

[tracking]
base_url = "http://127.0.0.1:{port}"
secret = {{ env = "NOTIFLOW_IT_WAREHOUSE_TRACKING" }}
channels = ["sms"]
"#,
        archive = archive.display(),
        clickhouse = support::clickhouse_url(),
    ));
    toml.push_str(&support::receipts_and_delivery_toml(port));
    toml.push_str(&support::twilio_provider_toml(&twilio.endpoint, "NOTIFLOW_IT_WAREHOUSE_TWILIO", port));
    let path = dir.path().join("notiflow.toml");
    std::fs::write(&path, &toml).unwrap();
    let notiflow = Notiflow::new(&path, &[("NOTIFLOW_IT_WAREHOUSE_TWILIO", "tw-token"), ("NOTIFLOW_IT_WAREHOUSE_TRACKING", "tracking-secret-0123456789")]);
    let (_server, line) = notiflow.serve(&["receipts", "serve"]);
    assert!(line.starts_with("receipts: listening on"), "{line}");

    // Producers' requests, one SMS each (a direct phone recipient; the example templates: acme's login_otp,
    // globex's order_shipped), each with a link in its parameters.
    let templates = support::sql_dir().join("../examples/templates.jsonl");
    let put = notiflow.command(&["template", "put"]).arg(&templates).output().unwrap();
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    let phone = |i: usize| if UNREACHABLE.contains(&i) { format!("+86138000{i:02}0000") } else { format!("+861391234{:04}", i + 1) };
    let link = |i: usize| format!("https://shop.example.com/w/{i}?a=1&b=2");
    let requests = (0..SMS).map(|i| {
        let (tenant, template, category, params) = if i % 4 == 0 {
            ("globex", "order_shipped", "transactional", json!({"order_id": format!("W{i} {}", link(i)), "carrier": "SF"}))
        } else {
            ("acme", "login_otp", "otp", json!({"code": format!("{i:04} {}", link(i))}))
        };
        let request = json!({"request_id": format!("w{i}"), "tenant": tenant, "template": template, "recipients": [{"phone": phone(i)}],
            "params": params, "priority": "normal", "category": category});
        OutRecord { topic: Arc::from(topic("notify.requests")), key: Some(format!("{tenant}/w{i}").into_bytes()), payload: request.to_string().into_bytes(), headers: vec![] }
    });
    KafkaSink::new(&kafka).unwrap().send_all(requests.collect()).await.unwrap();
    let run = notiflow.command(&["run"]).arg(support::sql_dir()).args(["--exit-when-idle-ms", "3000"]).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(read_json(&kafka, &topic("notify.dispatch.normal")).await.len(), SMS, "one SMS per request");
    let deliver = notiflow.command(&["deliver", "--exit-when-idle-ms", "2000"]).output().unwrap();
    assert!(deliver.status.success(), "{}", String::from_utf8_lossy(&deliver.stderr));

    let receipts = wait_for_json(&kafka, &topic("notify.receipts"), SMS, Duration::ZERO).await;
    assert_eq!(receipts.len(), SMS);

    // Links went out rewritten; following them records a click and lands on the original link.
    let bodies: BTreeMap<String, String> = twilio.log().accepted.iter().map(|r| (r.to.clone(), r.body.clone())).collect();
    assert_eq!(bodies.len(), SMS);
    let no_redirects = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    for (n, (to, body)) in bodies.iter().take(CLICKED).enumerate() {
        assert!(!body.contains("shop.example.com"), "{body}");
        let tracked = body.split_whitespace().find(|w| w.starts_with(&format!("http://127.0.0.1:{port}/c/"))).unwrap().trim_end_matches(|c: char| ".,;:!?)".contains(c));
        let i = (0..SMS).find(|&i| phone(i) == *to).unwrap();
        for _ in 0..if n == 0 { 2 } else { 1 } {
            let answer = no_redirects.get(tracked).send().await.unwrap();
            assert_eq!(answer.status().as_u16(), 302, "{body}");
            assert_eq!(answer.headers()["location"], link(i).as_str());
        }
    }
    let forged = no_redirects.get(format!("http://127.0.0.1:{port}/c/eyJ1IjoiaHR0cHM6Ly9ldmlsLmV4YW1wbGUifQ.AAAAAAAAAAAAAAAAAAAAAA")).send().await.unwrap();
    assert_eq!(forged.status().as_u16(), 404);
    let clicks_written = read_topic_to_end(&kafka, &topic("notify.receipts")).await.unwrap().len() - SMS;
    assert_eq!(clicks_written, CLICKED + 1, "one receipt per click, the repeat included");

    // Stage 50: the pipeline again (its group resumes: only sends and receipts have new records).
    let run = notiflow.command(&["run"]).arg(support::sql_dir()).args(["--exit-when-idle-ms", "3000"]).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let deliveries = read_topic_to_end(&kafka, &topic("notify.deliveries")).await.unwrap();
    assert_eq!(deliveries.len(), SMS, "one delivery row per message and channel: {:#?}\n{receipts:#?}", deliveries.iter().map(|r| String::from_utf8_lossy(r.payload.as_ref().unwrap()).to_string()).collect::<Vec<_>>());

    // What the reports must say, from the raw topics.
    let sends = read_json(&kafka, &topic("notify.sends")).await;
    let sent_at: BTreeMap<&str, i64> = sends.iter().filter(|s| s["status"] == "accepted").map(|s| (s["provider_message_id"].as_str().unwrap(), parse_ms(s["at"].as_str().unwrap()))).collect();
    assert_eq!(sent_at.len(), SMS);
    let receipts: Vec<Value> = receipts.into_iter().filter(|r| r["kind"] != "clicked").collect();
    let latencies: Vec<f64> = receipts.iter().map(|r| (parse_ms(r["at"].as_str().unwrap()) - sent_at[r["provider_message_id"].as_str().unwrap()]).max(0) as f64).collect();
    let delivered_expected = receipts.iter().filter(|r| r["kind"] == "delivered").count();
    assert_eq!(delivered_expected, SMS - UNREACHABLE.len());
    let send_latencies: Vec<f64> = sends
        .iter()
        .filter(|s| s["status"] == "accepted")
        .map(|s| (parse_ms(s["at"].as_str().unwrap()) - parse_ms(s["requested_at"].as_str().unwrap())) as f64)
        .collect();

    // The sink runs while more events trickle in (one record per request: ~3 ms each on tansu); it is
    // killed (SIGKILL) in the middle of that stream, then run again to the end.
    let client = {
        let mut c = ClickHouseConfig::new(support::clickhouse_url());
        c.database = database.clone();
        c.client().unwrap()
    };
    let rows_in = |table: &'static str| {
        let client = client.clone();
        async move { client.query(&format!("SELECT count() FROM {table}")).fetch_one::<u64>().await.unwrap_or(0) }
    };
    let mut sink = notiflow.command(&["sink"]).stdout(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while rows_in("notify_deliveries").await < SMS as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let filler = (0..FILLER_EVENTS).map(|i| {
        let event = json!({"event": "bulk_test", "message_id": format!("m_f{i}"), "tenant": "filler", "source": "test", "at": chrono::Utc::now().to_rfc3339()});
        OutRecord { topic: Arc::from(topic("notify.events")), key: Some(format!("m_f{i}").into_bytes()), payload: event.to_string().into_bytes(), headers: vec![] }
    });
    let filler: Vec<OutRecord> = filler.collect();
    let producer = tokio::spawn({
        let kafka = kafka.clone();
        async move { KafkaSink::new(&kafka).unwrap().send_all(filler).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    sink.kill().unwrap();
    sink.wait().unwrap();
    let at_kill = rows_in("notify_events").await;
    producer.await.unwrap();
    let events_total = read_topic_to_end(&kafka, &topic("notify.events")).await.unwrap().len() as u64;
    assert!(at_kill > 0 && at_kill < events_total, "killed mid-load: {at_kill} of {events_total} events in");
    let rerun = notiflow.command(&["sink", "--exit-when-idle-ms", "2500"]).output().unwrap();
    assert!(rerun.status.success(), "{}", String::from_utf8_lossy(&rerun.stderr));
    println!("sink killed with {at_kill} rows in; rerun: {}", String::from_utf8_lossy(&rerun.stdout).trim());

    // Exactly once in ClickHouse...
    assert_eq!(rows_in("notify_deliveries").await, SMS as u64);
    assert_eq!(rows_in("notify_events").await, events_total);
    let distinct: u64 = client.query("SELECT uniqExact(delivery_id) FROM notify_deliveries").fetch_one().await.unwrap();
    assert_eq!(distinct, SMS as u64);
    // ...and in Parquet: the same rows.
    let archive = notiflow_parquet::ArchiveLocation::local(&archive).unwrap();
    let ctx = report::archive_session(&archive).await.unwrap();
    let parquet = report::run_archive(&archive, "SELECT delivery_id, state, reason FROM notify_deliveries ORDER BY delivery_id").await.unwrap();
    let clickhouse = report::run_clickhouse(&client, "SELECT delivery_id, state, reason FROM notify_deliveries ORDER BY delivery_id").await.unwrap();
    assert_eq!(parquet.rows.len(), SMS);
    assert_eq!(parquet.rows, clickhouse.rows);
    let parquet_events = report::query(&ctx, "SELECT count(*) FROM notify_events").await.unwrap();
    assert_eq!(report::render(&parquet_events).lines().nth(3).unwrap().trim_matches(|c| c == '|' || c == ' '), events_total.to_string());
    let failed: Vec<&Vec<String>> = clickhouse.rows.iter().filter(|r| r[1] != "delivered").collect();
    assert_eq!(failed.iter().map(|r| (r[1].as_str(), r[2].as_str())).collect::<Vec<_>>(), vec![("failed", "30003"); UNREACHABLE.len()]);

    // Reports: the same SQL on both stores, equal to what the raw topics say.
    let reports = support::sql_dir().join("../dashboards/reports");
    for name in ["delivery_rate", "latency", "failure_reasons", "funnel", "tenant_volume", "pipeline_decisions"] {
        let sql = report::load(&reports, name).unwrap().sql;
        let on_clickhouse = report::run_clickhouse(&client, &sql).await.unwrap();
        let on_parquet = report::run_archive(&archive, &sql).await.unwrap();
        assert_eq!(on_clickhouse, on_parquet, "{name}:\n{}\n{}", on_clickhouse.render(), on_parquet.render());
        println!("{name}\n{}", on_clickhouse.render());
    }
    let rate = report::run_clickhouse(&client, &report::load(&reports, "delivery_rate").unwrap().sql).await.unwrap();
    assert_eq!(rate.cell("sms", "deliveries"), Some(SMS.to_string().as_str()));
    assert_eq!(rate.cell("sms", "delivered"), Some(delivered_expected.to_string().as_str()));
    assert_eq!(rate.cell("sms", "delivery_rate_pct"), Some(format!("{}", (10000.0 * delivered_expected as f64 / SMS as f64).round() / 100.0).as_str()));
    let latency = report::run_clickhouse(&client, &report::load(&reports, "latency").unwrap().sql).await.unwrap();
    let rounded = |v: f64| format!("{}", (v * 10.0).round() / 10.0);
    for (column, level) in [("delivery_p50_ms", 0.5), ("delivery_p90_ms", 0.9), ("delivery_p99_ms", 0.99)] {
        assert_eq!(latency.cell("sms", column), Some(rounded(quantile(&latencies, level)).as_str()), "{column}\n{}", latency.render());
    }
    assert_eq!(latency.cell("sms", "send_p50_ms"), Some(rounded(quantile(&send_latencies, 0.5)).as_str()), "{}", latency.render());
    let funnel = report::run_clickhouse(&client, &report::load(&reports, "funnel").unwrap().sql).await.unwrap();
    let expected_funnel: Vec<String> = [SMS, SMS, SMS, delivered_expected, 0, CLICKED].iter().map(usize::to_string).collect();
    assert_eq!(funnel.rows[0], expected_funnel, "{}", funnel.render());
    let per_tenant = report::run(&{
        let mut c = config.clone();
        c.clickhouse = Some({
            let mut ch = ClickHouseConfig::new(support::clickhouse_url());
            ch.database = database.clone();
            ch
        });
        c
    }, &report::load(&reports, "delivery_rate").unwrap(), Some("globex"))
    .await
    .unwrap();
    assert_eq!(per_tenant.cell("sms", "deliveries"), Some("10"), "{}", per_tenant.render());
    admin.query(&format!("DROP DATABASE {database}")).execute().await.unwrap();
}
