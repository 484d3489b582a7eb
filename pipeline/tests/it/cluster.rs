//! Many instances as one system, on the real broker: limits that hold for the
//! cluster, not per process.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use notiflow_connector::{OutRecord, Sink};
use notiflow_kafka::KafkaSink;
use serde_json::json;

use crate::support::{self, Killed, Notiflow, free_port};

const DELIVERS: usize = 3;
const MESSAGES: usize = 600;
/// Below what the debug-built pipeline supplies here (~35 dispatch records/s), so the instances have a backlog.
const ACCOUNT_RATE: f64 = 20.0;

/// 3 `deliver` processes share one Twilio account limited to 20 sends/s: together they send at 20/s
/// (within 5%), not 3 x 20, and every message exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_deliver_instances_keep_one_account_rate_limit_together() {
    let _turn = support::one_at_a_time().await;
    let config = support::kafka_config(6);
    let kafka = config.kafka.clone().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let twilio = notiflow_sms::fake::twilio("AC0123", "tw-token").await;
    let receipts_port = free_port();
    let path = support::write_toml(&config, dir.path());
    let mut toml = std::fs::read_to_string(&path).unwrap();
    toml.push_str(&support::receipts_and_delivery_toml(receipts_port));
    let provider = support::twilio_provider_toml(&twilio.endpoint, "IT_CLUSTER_TWILIO", receipts_port);
    toml.push_str(&provider.replace("name = \"twilio-main\"\n", &format!("name = \"twilio-main\"\nrate_per_s = {ACCOUNT_RATE}\n")));
    std::fs::write(&path, toml).unwrap();
    let notiflow = Notiflow::new(&path, &[("IT_CLUSTER_TWILIO", "tw-token"), ("RUST_LOG", "info")]);
    let templates = support::sql_dir().join("../examples/templates.jsonl");
    for args in [&["template", "put", templates.to_str().unwrap()][..], &["topics", support::sql_dir().to_str().unwrap()]] {
        let done = notiflow.command(args).output().unwrap();
        assert!(done.status.success(), "{args:?}: {}", String::from_utf8_lossy(&done.stderr));
    }

    // The instances join first and split the partitions (8 of the 24 lane and parked partitions each).
    let log = |i: usize| dir.path().join(format!("deliver-{i}.log"));
    let mut delivers: Vec<Killed> = (0..DELIVERS)
        .map(|i| {
            let stderr = std::fs::File::create(log(i)).unwrap();
            let stdout = std::fs::File::create(dir.path().join(format!("deliver-{i}.out"))).unwrap();
            Killed(notiflow.command(&["deliver"]).stdout(stdout).stderr(stderr).spawn().unwrap())
        })
        .collect();
    let settled = |i: usize| std::fs::read_to_string(log(i)).unwrap().lines().filter(|l| l.contains("this instance's share")).last().map(str::to_string);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(0..DELIVERS).all(|i| settled(i).is_some_and(|l| l.contains("owned=8 "))) {
        assert!(Instant::now() < deadline, "the instances did not split the partitions: {:?}", (0..DELIVERS).map(settled).collect::<Vec<_>>());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let requests_topic: Arc<str> = Arc::from(config.topics.resolve("notify.requests").as_str());
    let requests: Vec<OutRecord> = (0..MESSAGES)
        .map(|i| {
            let request = json!({"request_id": format!("c{i}"), "tenant": "acme", "template": "login_otp", "recipients": [{"phone": format!("+861392{i:06}")}],
                "params": {"code": format!("k{i:05}")}, "priority": "normal", "category": "otp"});
            OutRecord {
                topic: requests_topic.clone(),
                key: Some(format!("acme/c{i}").into_bytes()),
                payload: request.to_string().into_bytes(),
                headers: vec![],
            }
        })
        .collect();
    KafkaSink::new(&kafka).unwrap().send_all(requests).await.unwrap();
    let run = notiflow.command(&["run"]).arg(support::sql_dir()).args(["--exit-when-idle-ms", "3000"]).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));

    let deadline = Instant::now() + Duration::from_secs(120);
    while twilio.log().accepted.len() < MESSAGES {
        assert!(Instant::now() < deadline, "{} of {MESSAGES} sent", twilio.log().accepted.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // any extra send would come now
    for (i, deliver) in delivers.iter_mut().enumerate() {
        assert!(std::process::Command::new("kill").args(["-TERM", &deliver.0.id().to_string()]).status().unwrap().success());
        assert!(deliver.0.wait().unwrap().success(), "deliver {i}:\n{}", std::fs::read_to_string(log(i)).unwrap());
    }
    let sent = twilio.log().accepted.clone();
    let mut per_body: BTreeMap<&str, usize> = BTreeMap::new();
    sent.iter().for_each(|r| *per_body.entry(r.body.as_str()).or_default() += 1);
    assert_eq!(per_body.len(), MESSAGES, "every message sent");
    assert!(per_body.values().all(|n| *n == 1), "none twice");
    // The rate in steady state: from the 50th send to the 50th before the last.
    let mut times: Vec<Instant> = sent.iter().map(|r| r.at).collect();
    times.sort();
    let (first, last) = (50, MESSAGES - 50);
    let rate = (last - first) as f64 / (times[last] - times[first]).as_secs_f64();
    // "delivery: R read, S sent, ..." per instance: each one took its part.
    let each: Vec<u64> = (0..DELIVERS)
        .map(|i| {
            let summary = std::fs::read_to_string(dir.path().join(format!("deliver-{i}.out"))).unwrap();
            summary.split(" read, ").nth(1).and_then(|rest| rest.split(' ').next()?.parse().ok()).unwrap_or(0)
        })
        .collect();
    assert!(each.iter().all(|n| *n > 0) && each.iter().sum::<u64>() == MESSAGES as u64, "sent per instance: {each:?}");
    let per_second: Vec<usize> = {
        let mut counts = vec![0; (times[MESSAGES - 1] - times[0]).as_secs() as usize + 1];
        times.iter().for_each(|t| counts[(*t - times[0]).as_secs() as usize] += 1);
        counts
    };
    eprintln!("sends per second: {per_second:?}");
    eprintln!("{DELIVERS} deliver instances, account limit {ACCOUNT_RATE}/s: measured {rate:.2}/s over sends {first}..{last}; sent per instance {each:?}");
    let shares: Vec<String> = (0..DELIVERS)
        .flat_map(|i| {
            std::fs::read_to_string(log(i))
                .unwrap()
                .lines()
                .filter(|l| l.contains("share") || l.contains("revoked") || l.contains("WARN"))
                .map(|l| format!("{i}: {l}"))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!((rate - ACCOUNT_RATE).abs() <= ACCOUNT_RATE * 0.05, "measured {rate:.2}/s against the account's {ACCOUNT_RATE}/s\n{}", shares.join("\n"));
}
