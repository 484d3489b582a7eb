//! TLS to Kafka and to ClickHouse, against the real servers and throwaway CAs
//! (scripts/test_ca.sh). Kafka: tansu behind a TLS terminator (socat), the
//! broker advertising the terminator's port, so every connection the client
//! makes is TLS; the pipeline runs over it end to end, and a client trusting
//! another CA is refused. ClickHouse: 18.16's https_port (scripts/services.sh).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notiflow_clickhouse::ClickHouseConfig;
use notiflow_connector::{OutRecord, Sink};
use notiflow_kafka::{KafkaConfig, KafkaSecurity, KafkaSink, SecurityProtocol, read_topic_to_end};
use serde_json::json;

use crate::support::{self, Killed, Notiflow, free_port};

/// A CA and a server certificate for 127.0.0.1 in `dir`.
fn make_ca(dir: &Path) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/test_ca.sh");
    let made = Command::new("bash").arg(script).arg(dir).output().unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    dir.to_path_buf()
}

fn wait_tcp(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// tansu reachable only through TLS (socat in front; the broker advertises the terminator's
/// port), optionally requiring SCRAM users.
struct TlsBroker {
    port: u16,
    _broker: Killed,
    _terminator: Killed,
}

fn tansu(dir: &Path, args: &[String]) -> Killed {
    let log = std::fs::File::create(dir.join("tansu.log")).unwrap();
    Killed(Command::new("tansu").args(args).current_dir(dir).stdout(Stdio::null()).stderr(log).spawn().expect("tansu on PATH (scripts/services.sh installs it)"))
}

impl TlsBroker {
    /// `users`: SCRAM users to create first (then the broker requires authentication; sqlite storage keeps them).
    fn start(dir: &Path, certificate: &Path, users: &[(&str, &str)]) -> TlsBroker {
        let (plain, tls) = (free_port(), free_port());
        let listen = |advertised: u16| ["--listener-url".to_string(), format!("tcp://127.0.0.1:{plain}"), "--advertised-listener-url".into(), format!("tcp://127.0.0.1:{advertised}")];
        let mut storage = vec!["--storage-engine".to_string(), "memory://tansu/".into()];
        if !users.is_empty() {
            storage[1] = "sqlite://tansu.db".into(); // relative: tansu 0.6 doubles absolute paths
            let setup = tansu(dir, &[&["broker".to_string()][..], &listen(plain), &storage].concat());
            wait_tcp(plain);
            for (user, password) in users {
                let created = Command::new("tansu").args(["user", "create", "--broker", &format!("tcp://127.0.0.1:{plain}"), user, password]).output().unwrap();
                assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
            }
            drop(setup);
            storage.push("--authentication".into());
        }
        let broker = tansu(dir, &[&["broker".to_string()][..], &listen(tls), &storage].concat());
        let listen_tls = format!("OPENSSL-LISTEN:{tls},bind=127.0.0.1,reuseaddr,fork,cert={0}/server.crt,key={0}/server.key,verify=0", certificate.display());
        let terminator = Killed(Command::new("socat").args([&listen_tls, &format!("TCP:127.0.0.1:{plain}")]).stderr(Stdio::null()).spawn().expect("socat (scripts/services.sh installs it)"));
        wait_tcp(plain);
        wait_tcp(tls);
        TlsBroker { port: tls, _broker: broker, _terminator: terminator }
    }
}

fn tls_kafka(port: u16, ca: &Path) -> KafkaConfig {
    let mut kafka = KafkaConfig::new(format!("127.0.0.1:{port}"));
    kafka.security = Some(KafkaSecurity {
        protocol: SecurityProtocol::Ssl,
        ca_file: Some(ca.join("ca.crt")),
        cert_file: None,
        key_file: None,
        sasl_mechanism: None,
        sasl_username: None,
        sasl_password_env: None,
        verify_hostname: true,
    });
    kafka
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_over_tls_to_kafka_and_an_untrusted_certificate_is_refused() {
    const REQUESTS: usize = 20;
    let _turn = support::one_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let (ours, other) = (make_ca(&dir.path().join("ours")), make_ca(&dir.path().join("other")));
    let broker = TlsBroker::start(dir.path(), &ours, &[]);
    let tls = broker.port;

    let mut config = support::kafka_config(2);
    config.kafka = Some(tls_kafka(tls, &ours));
    let kafka = config.kafka.clone().unwrap();
    let path = support::write_toml(&config, dir.path());
    let notiflow = Notiflow::new(&path, &[]);
    let templates = support::sql_dir().join("../examples/templates.jsonl");
    let put = notiflow.command(&["template", "put"]).arg(&templates).output().unwrap();
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    let topics = notiflow.command(&["topics"]).arg(support::sql_dir()).output().unwrap();
    assert!(topics.status.success(), "{}", String::from_utf8_lossy(&topics.stderr));

    let requests_topic: Arc<str> = Arc::from(config.topics.resolve("notify.requests").as_str());
    let requests = (0..REQUESTS).map(|i| {
        let request = json!({"request_id": format!("tls{i}"), "tenant": "acme", "template": "login_otp", "recipients": [{"phone": format!("+861391234{i:04}")}],
            "params": {"code": format!("{i:04}")}, "priority": "normal", "category": "otp"});
        OutRecord { topic: requests_topic.clone(), key: Some(format!("acme/tls{i}").into_bytes()), payload: request.to_string().into_bytes(), headers: vec![] }
    });
    KafkaSink::new(&kafka).unwrap().send_all(requests.collect()).await.unwrap();
    let run = notiflow.command(&["run"]).arg(support::sql_dir()).args(["--exit-when-idle-ms", "3000"]).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let dispatched = read_topic_to_end(&kafka, &config.topics.resolve("notify.dispatch.normal")).await.unwrap();
    assert_eq!(dispatched.len(), REQUESTS, "every request dispatched, read back over TLS");

    // A client that trusts another CA gets nothing through, and says why.
    let mut untrusting = config.clone();
    untrusting.kafka = Some(tls_kafka(tls, &other));
    let elsewhere = tempfile::tempdir().unwrap();
    let path = support::write_toml(&untrusting, elsewhere.path());
    let started = Instant::now();
    let refused = Notiflow::new(&path, &[("RUST_LOG", "info")]).command(&["topics"]).arg(support::sql_dir()).output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "a broker certificate from another CA was accepted");
    assert!(stderr.contains("cannot reach the brokers") && stderr.contains("certificate verify failed"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(30), "said why in {:?}, not after an admin timeout", started.elapsed());
}

/// SASL_SSL with SCRAM-SHA-512 (users made on the broker): records go through with the right
/// password; a wrong one is refused at start, saying SASL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_scram_over_tls_authenticates_and_a_wrong_password_is_refused() {
    let _turn = support::one_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca(&dir.path().join("ca"));
    let broker = TlsBroker::start(dir.path(), &ca, &[("notiflow", "scram-pw-0123")]);
    let mut config = support::kafka_config(1);
    let mut kafka = tls_kafka(broker.port, &ca);
    let security = kafka.security.as_mut().unwrap();
    security.protocol = SecurityProtocol::SaslSsl;
    security.sasl_mechanism = Some(notiflow_kafka::SaslMechanism::ScramSha512);
    security.sasl_username = Some("notiflow".into());
    security.sasl_password_env = Some("NOTIFLOW_IT_KAFKA_PASSWORD".into());
    config.kafka = Some(kafka);
    let path = support::write_toml(&config, dir.path());

    let right = Notiflow::new(&path, &[("NOTIFLOW_IT_KAFKA_PASSWORD", "scram-pw-0123")]);
    let topics = right.command(&["topics"]).arg(support::sql_dir()).output().unwrap();
    assert!(topics.status.success(), "{}", String::from_utf8_lossy(&topics.stderr));
    let put = right.command(&["template", "put"]).arg(support::sql_dir().join("../examples/templates.jsonl")).output().unwrap();
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    let list = right.command(&["template", "list"]).output().unwrap();
    assert!(String::from_utf8_lossy(&list.stdout).contains("login_otp"), "read back over SASL_SSL: {}", String::from_utf8_lossy(&list.stdout));

    let wrong = Notiflow::new(&path, &[("NOTIFLOW_IT_KAFKA_PASSWORD", "not-the-password")]).command(&["topics"]).arg(support::sql_dir()).output().unwrap();
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success() && stderr.contains("SASL authentication error"), "{stderr}");
    let unset = Notiflow::new(&path, &[]).command(&["topics"]).arg(support::sql_dir()).output().unwrap();
    assert!(String::from_utf8_lossy(&unset.stderr).contains("NOTIFLOW_IT_KAFKA_PASSWORD is not set"), "{}", String::from_utf8_lossy(&unset.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_over_https_checks_the_server_certificate() {
    let url = std::env::var("NOTIFLOW_TEST_CLICKHOUSE_HTTPS_URL").expect("NOTIFLOW_TEST_CLICKHOUSE_HTTPS_URL is not set: run the tests with scripts/test.sh");
    let ca = PathBuf::from(std::env::var("NOTIFLOW_TEST_CLICKHOUSE_CA").expect("NOTIFLOW_TEST_CLICKHOUSE_CA is not set"));
    let database = support::unique("nf_tls");
    let mut https = ClickHouseConfig::new(&url);
    https.ca_file = Some(ca.clone());
    https.check().unwrap();
    https.client().unwrap().query(&format!("CREATE DATABASE {database}")).execute().await.unwrap();
    https.database = database.clone();
    let client = https.client().unwrap();
    for (file, sql) in [("001_events.sql", include_str!("../../../dashboards/clickhouse/ddl/001_events.sql")), ("002_deliveries.sql", include_str!("../../../dashboards/clickhouse/ddl/002_deliveries.sql"))] {
        notiflow_clickhouse::apply_ddl(&client, file, sql).await.unwrap();
    }
    let rows: Vec<String> = (0..3).map(|i| format!("(now(), 'd_tls{i}', 'acme', 'sms', 'delivered')")).collect();
    client.query(&format!("INSERT INTO notify_deliveries (sent_at, delivery_id, tenant, channel, state) VALUES {}", rows.join(","))).execute().await.unwrap();

    // The binary, configured with the https URL and the CA file, reports over it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notiflow.toml");
    std::fs::write(&path, format!("[clickhouse]\nurl = \"{url}\"\nca_file = \"{}\"\ndatabase = \"{database}\"\n", ca.display())).unwrap();
    let reports = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards/reports");
    let report = Notiflow::new(&path, &[]).command(&["report", "delivery_rate"]).arg("--reports").arg(&reports).output().unwrap();
    let table = String::from_utf8_lossy(&report.stdout);
    assert!(report.status.success(), "{}", String::from_utf8_lossy(&report.stderr));
    let row = table.lines().find(|l| l.contains("| sms ")).unwrap_or_else(|| panic!("{table}"));
    assert!(row.split('|').map(str::trim).any(|c| c == "3"), "{table}");

    // A certificate from a CA we do not trust is refused, naming TLS.
    let other = make_ca(&dir.path().join("other"));
    let mut untrusting = ClickHouseConfig::new(&url);
    untrusting.ca_file = Some(other.join("ca.crt"));
    let error = untrusting.client().unwrap().query("SELECT 1").fetch_one::<u8>().await.unwrap_err();
    let mut chain = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        chain.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    assert!(chain.contains("UnknownIssuer"), "{chain}");
    // The system's CAs do not include the test CA either.
    let system = ClickHouseConfig::new(&url);
    assert!(system.client().unwrap().query("SELECT 1").fetch_one::<u8>().await.is_err());
    // A CA file for a plain-http URL is a mistake caught at start.
    let mut confused = ClickHouseConfig::new(support::clickhouse_url());
    confused.ca_file = Some(ca);
    assert!(confused.check().unwrap_err().contains("https"));
}
