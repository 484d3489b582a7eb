//! A broker outage of over 60 s under load: `run` and `deliver` stay up, say so
//! in their metrics and logs, and finish the work once the brokers answer again,
//! with nothing lost and nothing sent twice. The outage is a TCP relay (socat)
//! in front of the test's own broker, stopped and started again: the clients
//! see refused connections, as when a broker host is down, and the broker keeps
//! what it holds (tansu's memory storage).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notiflow_connector::{OutRecord, Sink};
use notiflow_kafka::{KafkaConfig, KafkaSink, read_topic_to_end};
use serde_json::json;

use crate::support::{self, Killed, Notiflow, free_port};

const REQUESTS: usize = 1500;
/// Requests produced once the brokers are back.
const AFTER: usize = 300;
const OUTAGE: Duration = Duration::from_secs(65);

fn wait_tcp(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The clients' way to the broker: a relay on `port` (the advertised address).
/// socat forks a process per connection: the relay is its own process group,
/// and stopping it kills the group, established connections included.
struct Relay(std::process::Child);

impl Relay {
    fn start(port: u16, broker: u16) -> Relay {
        use std::os::unix::process::CommandExt;
        let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork");
        let child = Command::new("socat")
            .args([&listen, &format!("TCP:127.0.0.1:{broker}")])
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("socat (scripts/services.sh installs it)");
        wait_tcp(port);
        Relay(child)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.0.id())]).status();
        let _ = self.0.wait();
    }
}

fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

/// A metric's value (the first series of that name), or 0.
fn metric(text: &str, name: &str) -> f64 {
    text.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{'])).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0.0)
}

fn spawn(dir: &Path, config: &Path, args: &[&str], name: &str) -> Killed {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child =
        Notiflow::new(config, &[("RUST_LOG", "info"), ("IT_OUTAGE_TWILIO", "tw-token")]).command(args).stdout(Stdio::null()).stderr(log).spawn().unwrap();
    Killed(child)
}

fn config_with_metrics(base: &str, port: u16, dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, base.replace("[metrics]\nlisten = \"\"", &format!("[metrics]\nlisten = \"127.0.0.1:{port}\""))).unwrap();
    path
}

/// Sends of every request id at the fake provider (the code in the body is the request's number).
fn sends_per_code(twilio: &notiflow_sms::fake::FakeProvider) -> BTreeMap<String, usize> {
    let mut sends = BTreeMap::new();
    for received in &twilio.log().accepted {
        *sends.entry(received.body.clone()).or_default() += 1;
    }
    sends
}

/// The test's own broker (memory storage), listening on its own port and advertising `advertised` (the relay's).
fn own_broker(dir: &Path, advertised: u16) -> (Killed, u16) {
    let broker_port = free_port();
    let broker_log = std::fs::File::create(dir.join("tansu.log")).unwrap();
    let broker = Killed(
        Command::new("tansu")
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{broker_port}"),
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{advertised}"),
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(broker_log)
            .spawn()
            .expect("tansu on PATH (scripts/services.sh installs it)"),
    );
    wait_tcp(broker_port);
    (broker, broker_port)
}

/// `notiflow run` started while the brokers cannot be reached waits for them (a whole stack starting at once),
/// then runs: before, it exited at once with "transient kafka error".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_started_before_the_brokers_waits_for_them() {
    let _turn = support::one_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let advertised = free_port();
    let (_broker, broker_port) = own_broker(dir.path(), advertised);
    let mut config = support::kafka_config(1);
    config.kafka = Some(KafkaConfig::new(format!("127.0.0.1:{advertised}")));
    let path = support::write_toml(&config, dir.path());
    let sql = support::sql_dir();
    let mut run = spawn(dir.path(), &path, &["run", sql.to_str().unwrap()], "run");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(dir.path().join("run.log")).unwrap();
        assert!(run.0.try_wait().unwrap().is_none(), "run exited without the brokers:\n{log}");
        if log.contains("a service is unavailable") {
            break;
        }
        assert!(Instant::now() < deadline, "run does not say what it waits for:\n{log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(run.0.try_wait().unwrap().is_none(), "run keeps waiting");

    let _network = Relay::start(advertised, broker_port);
    let deadline = Instant::now() + Duration::from_secs(90);
    while !std::fs::read_to_string(dir.path().join("run.log")).unwrap().contains("pipeline running") {
        assert!(Instant::now() < deadline, "run did not start once the brokers answered:\n{}", std::fs::read_to_string(dir.path().join("run.log")).unwrap());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pid = run.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = run.0.wait().unwrap();
    assert!(status.success(), "run after SIGTERM: {status}\n{}", std::fs::read_to_string(dir.path().join("run.log")).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_and_deliver_ride_out_a_broker_outage_of_over_a_minute() {
    let _turn = support::one_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let advertised = free_port();
    let (_broker, broker_port) = own_broker(dir.path(), advertised);
    let mut network = Relay::start(advertised, broker_port);

    let mut config = support::kafka_config(2);
    config.kafka = Some(KafkaConfig::new(format!("127.0.0.1:{advertised}")));
    let kafka = config.kafka.clone().unwrap();
    let twilio = notiflow_sms::fake::twilio("AC0123", "tw-token").await;
    let receipts_port = free_port();
    let base = support::write_toml(&config, dir.path());
    let mut text = std::fs::read_to_string(&base).unwrap();
    text.push_str(&support::receipts_and_delivery_toml(receipts_port));
    text.push_str(&support::twilio_provider_toml(&twilio.endpoint, "IT_OUTAGE_TWILIO", receipts_port));
    let (run_metrics, deliver_metrics) = (free_port(), free_port());
    let run_config = config_with_metrics(&text, run_metrics, dir.path(), "run");
    let deliver_config = config_with_metrics(&text, deliver_metrics, dir.path(), "deliver");
    let notiflow = Notiflow::new(&run_config, &[]);
    let templates = support::sql_dir().join("../examples/templates.jsonl");
    for args in [&["template", "put", templates.to_str().unwrap()][..], &["topics", support::sql_dir().to_str().unwrap()]] {
        let done = notiflow.command(args).output().unwrap();
        assert!(done.status.success(), "{args:?}: {}", String::from_utf8_lossy(&done.stderr));
    }

    let sql = support::sql_dir();
    let mut run = spawn(dir.path(), &run_config, &["run", sql.to_str().unwrap()], "run");
    let mut deliver = spawn(dir.path(), &deliver_config, &["deliver"], "deliver");
    let requests_topic: Arc<str> = Arc::from(config.topics.resolve("notify.requests").as_str());
    let requests = |range: std::ops::Range<usize>| -> Vec<OutRecord> {
        range.map(|i| {
            let request = json!({"request_id": format!("o{i}"), "tenant": "acme", "template": "login_otp", "recipients": [{"phone": format!("+861391{i:06}")}],
                "params": {"code": format!("c{i:05}")}, "priority": "normal", "category": "otp"});
            OutRecord { topic: requests_topic.clone(), key: Some(format!("acme/o{i}").into_bytes()), payload: request.to_string().into_bytes(), headers: vec![] }
        })
        .collect()
    };
    KafkaSink::new(&kafka).unwrap().send_all(requests(0..REQUESTS)).await.unwrap();

    // The outage starts mid-stream: some requests sent, most still to go.
    let deadline = Instant::now() + Duration::from_secs(120);
    while twilio.log().accepted.len() < 100 {
        assert!(Instant::now() < deadline, "nothing delivered before the outage:\n{}", std::fs::read_to_string(dir.path().join("deliver.log")).unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(network);
    let sent_at_outage = twilio.log().accepted.len();
    eprintln!("outage starts with {sent_at_outage} of {REQUESTS} sent");
    tokio::time::sleep(OUTAGE).await;
    for (name, child, port) in [("run", &mut run, run_metrics), ("deliver", &mut deliver, deliver_metrics)] {
        let log = std::fs::read_to_string(dir.path().join(format!("{name}.log"))).unwrap();
        assert!(child.0.try_wait().unwrap().is_none(), "{name} exited during the outage:\n{log}");
        assert!(log.contains("kafka unreachable"), "{name} logs the outage:\n{log}");
        let metrics = scrape(port);
        assert!(metric(&metrics, "notiflow_kafka_outages_total") >= 1.0, "{name} counts the outage:\n{metrics}");
    }
    let sent_in_outage = twilio.log().accepted.len();
    network = Relay::start(advertised, broker_port);

    // Back: everything is sent, once, and new requests go through.
    KafkaSink::new(&kafka).unwrap().send_all(requests(REQUESTS..REQUESTS + AFTER)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while sends_per_code(&twilio).len() < REQUESTS + AFTER {
        if Instant::now() > deadline {
            let log = |name: &str| std::fs::read_to_string(dir.path().join(format!("{name}.log"))).unwrap();
            let counts = |port: u16| scrape(port).lines().filter(|l| l.starts_with("notiflow_records")).collect::<Vec<_>>().join("\n");
            panic!(
                "{} of {} sent after the outage\nrun:\n{}\n{}\ndeliver:\n{}\n{}",
                sends_per_code(&twilio).len(),
                REQUESTS + AFTER,
                counts(run_metrics),
                log("run"),
                counts(deliver_metrics),
                log("deliver")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await; // any extra send would come now
    let twice: Vec<(String, usize)> = sends_per_code(&twilio).into_iter().filter(|(_, n)| *n > 1).collect();
    eprintln!("sent before the outage: {sent_at_outage}, during it (from what deliver held): {}, sent twice: {}", sent_in_outage - sent_at_outage, twice.len());
    assert!(twice.is_empty(), "sent twice across the outage: {twice:?}\n{}", std::fs::read_to_string(dir.path().join("deliver.log")).unwrap());
    let dispatched = read_topic_to_end(&kafka, &config.topics.resolve("notify.dispatch.normal")).await.unwrap();
    let message_id =
        |r: &notiflow_connector::Record| serde_json::from_slice::<serde_json::Value>(r.payload.as_deref().unwrap()).unwrap()["message_id"].to_string();
    let messages: BTreeSet<String> = dispatched.iter().map(message_id).collect();
    assert_eq!((dispatched.len(), messages.len()), (REQUESTS + AFTER, REQUESTS + AFTER), "every request dispatched once");
    for (name, port) in [("run", run_metrics), ("deliver", deliver_metrics)] {
        let deadline = Instant::now() + Duration::from_secs(30);
        while metric(&scrape(port), "notiflow_kafka_connected") < 1.0 {
            assert!(Instant::now() < deadline, "{name} reports the brokers back:\n{}", scrape(port));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // And they still stop cleanly.
    for (name, child) in [("run", &mut run), ("deliver", &mut deliver)] {
        let pid = child.0.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let status = child.0.wait().unwrap();
        assert!(status.success(), "{name} after SIGTERM: {status}\n{}", std::fs::read_to_string(dir.path().join(format!("{name}.log"))).unwrap());
    }
    drop(network);
}
