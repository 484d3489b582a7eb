//! The production stack by its parts (images cannot be built or pulled here):
//! the image's file system is laid out from the Dockerfile's COPY lines, and
//! every notiflow service of docker-compose.yml runs its compose command,
//! environment and config file on it, with the addresses rewritten to this
//! test's tansu, ClickHouse 18.16 and ports. A request produced to
//! notify.requests must reach the Twilio stand-in, its signed receipt come
//! back through `receipts`, join its send in `notiflow run`, land in
//! ClickHouse through `sink` and be counted by a report; every service must
//! pass its compose healthcheck and stop with exit 0 on SIGTERM.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notiflow_clickhouse::ClickHouseConfig;
use notiflow_connector::{OutRecord, Sink};
use notiflow_kafka::KafkaSink;
use serde_json::json;

use crate::compose::{self, Service, repo};
use crate::support::{self, free_port};

const REQUESTS: usize = 6;
/// Twilio's stand-in reports numbers ending in 0000 as unreachable.
const UNREACHABLE: usize = 1;
const CLICKHOUSE_PASSWORD: &str = "stack-test-clickhouse";

/// Copies `from` (file or folder) to `to`, leaving out build output.
fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            if entry.file_name() != "target" {
                copy_tree(&entry.path(), &to.join(entry.file_name()));
            }
        }
    } else {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    }
}

/// `root` + an absolute path of the image.
fn inside(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// The final stage of the Dockerfile, laid out under `root`: the build stages' outputs are this
/// test's binary and the UDF libraries scripts/test.sh built.
fn lay_out_image(root: &Path) -> compose::Image {
    let image = compose::image();
    let udf_libs = std::env::var("NOTIFLOW_UDF_LIB_DIR").map(PathBuf::from).unwrap_or_else(|_| repo().join("udfs/target/release"));
    for (stage, source, destination) in &image.copies {
        let to = inside(root, destination);
        match stage.as_str() {
            "" => copy_tree(&repo().join(source), &to),
            "build" => {
                assert!(source.ends_with("/notiflow"), "the build stage gives the binary: {source}");
                std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_notiflow"), &to).unwrap();
            }
            "udfs" => {
                std::fs::create_dir_all(&to).unwrap();
                let libs = std::fs::read_dir(&udf_libs).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "so"));
                for lib in libs {
                    std::os::unix::fs::symlink(&lib, to.join(lib.file_name().unwrap())).unwrap();
                }
            }
            other => panic!("COPY --from={other}: the stack test does not know that stage"),
        }
    }
    for dir in image.runs.iter().flat_map(|r| r.split_whitespace()).filter(|w| w.starts_with("/var/lib/notiflow")) {
        std::fs::create_dir_all(inside(root, dir)).unwrap();
    }
    image
}

/// How this test's machine differs from the compose network.
struct Rewrite {
    root: PathBuf,
    kafka: String,
    clickhouse: String,
    database: String,
    /// Compose port -> free local port (one per port: the services share the host here).
    ports: BTreeMap<u16, u16>,
    metrics_port: u16,
    topics: BTreeMap<String, String>,
    suffix: String,
}

impl Rewrite {
    /// The compose config as `service` sees it here: its own metrics port, everything else shared.
    fn config(&self, text: &str, service_metrics: u16) -> String {
        let mut text = text
            .replace("\"kafka:29092\"", &format!("\"{}\"", self.kafka))
            .replace("\"http://clickhouse:8123\"", &format!("\"{}\"", self.clickhouse))
            .replace("database = \"notiflow\"", &format!("database = \"{}\"", self.database))
            .replace("\"/var/lib/notiflow", &format!("\"{}/var/lib/notiflow", self.root.display()))
            .replace(&format!("0.0.0.0:{}", self.metrics_port), &format!("127.0.0.1:{service_metrics}"))
            // Fewer partitions than production: the same code paths, less work for two cores.
            .replace("partitions = 6", "partitions = 2");
        let hosts: Vec<String> = compose::services().into_iter().map(|s| s.name).collect();
        for (from, to) in &self.ports {
            text = text.replace(&format!("0.0.0.0:{from}\""), &format!("127.0.0.1:{to}\""));
            for host in &hosts {
                text = text.replace(&format!("http://{host}:{from}"), &format!("http://127.0.0.1:{to}"));
            }
        }
        for group in ["notiflow-requests", "notiflow-delivery"] {
            text = text.replace(&format!("group_id = \"{group}\""), &format!("group_id = \"{group}-{}\"", self.suffix));
        }
        let renames: Vec<String> = self.topics.iter().map(|(k, v)| format!("\"{k}\" = \"{v}\"")).collect();
        text.replace("[topics]\n", &format!("[topics]\nrename = {{ {} }}\n", renames.join(", ")))
    }
}

/// One compose service running here.
struct Running {
    name: String,
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: PathBuf,
    healthcheck: Vec<String>,
}

impl Running {
    fn log(&self) -> String {
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let tail: Vec<&str> = err.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect();
        format!("--- {} stdout:\n{}\n--- stderr (tail):\n{}", self.name, self.stdout.lock().unwrap().join("\n"), tail.join("\n"))
    }

    /// Runs the compose healthcheck (`CMD` form) until it passes.
    fn wait_healthy(&mut self, cwd: &Path, env: &BTreeMap<String, String>) {
        assert_eq!(self.healthcheck.first().map(String::as_str), Some("CMD"), "{}", self.name);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let status = Command::new(env!("CARGO_BIN_EXE_notiflow")).args(&self.healthcheck[2..]).current_dir(cwd).envs(env).stderr(Stdio::null()).status().unwrap();
            if status.success() {
                return;
            }
            if let Some(exit) = self.child.try_wait().unwrap() {
                panic!("{} exited ({exit}) before it was healthy\n{}", self.name, self.log());
            }
            assert!(Instant::now() < deadline, "{} never passed its healthcheck\n{}", self.name, self.log());
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn stop(mut self) {
        let term = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(term.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "{} did not stop within 30 s of SIGTERM\n{}", self.name, self.log());
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(status.success(), "{} exited with {status} on SIGTERM\n{}", self.name, self.log());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A compose service's command, environment and working directory on the laid-out image.
struct Prepared {
    args: Vec<String>,
    env: BTreeMap<String, String>,
    cwd: PathBuf,
    healthcheck: Vec<String>,
}

fn prepare(service: &Service, image: &compose::Image, rewrite: &Rewrite, dir: &Path) -> Prepared {
    let root = &rewrite.root;
    let vars: BTreeMap<String, String> = [
        ("CLICKHOUSE_PASSWORD", CLICKHOUSE_PASSWORD),
        ("TWILIO_AUTH_TOKEN", "stack-test-twilio-token"),
        ("INBOX_TOKEN_SECRET", "stack-test-inbox-secret-0123456789"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .into();
    let mut env: BTreeMap<String, String> =
        image.env.iter().map(|(k, v)| (k.clone(), if v.starts_with('/') { inside(root, v).display().to_string() } else { v.clone() })).collect();
    for (name, value) in &service.environment {
        env.insert(name.clone(), compose::interpolate(value, &vars).unwrap());
    }
    env.insert("NOTIFLOW_LOG_FORMAT".into(), "text".into());
    // Bind-mounted files: this service's rewritten copy (its own metrics port).
    let service_metrics = free_port();
    let mut mounted = BTreeMap::new();
    for (source, target, _) in service.mounts().into_iter().filter(|(s, _, _)| s.starts_with("./")) {
        let copy = dir.join(format!("{}.{}", service.name, Path::new(&target).file_name().unwrap().to_string_lossy()));
        let text = std::fs::read_to_string(repo().join(&source)).unwrap();
        std::fs::write(&copy, rewrite.config(&text, service_metrics)).unwrap();
        mounted.insert(target, copy);
    }
    let path_arg = |arg: &String| match mounted.get(arg) {
        Some(copy) => copy.display().to_string(),
        None if arg.starts_with('/') => inside(root, arg).display().to_string(),
        None => arg.clone(),
    };
    let healthcheck = service.healthcheck.iter().map(|a| a.replace(&format!("127.0.0.1:{}", rewrite.metrics_port), &format!("127.0.0.1:{service_metrics}"))).collect();
    Prepared { args: service.command.iter().map(path_arg).collect(), env, cwd: inside(root, &image.workdir), healthcheck }
}

fn start(service: &Service, prepared: &Prepared, dir: &Path) -> Running {
    let stderr = dir.join(format!("{}.stderr", service.name));
    let mut child = Command::new(env!("CARGO_BIN_EXE_notiflow"))
        .args(&prepared.args)
        .current_dir(&prepared.cwd)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(&prepared.env)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let lines = stdout.clone();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            lines.lock().unwrap().push(line);
        }
    });
    Running { name: service.name.clone(), child, stdout, stderr, healthcheck: prepared.healthcheck.clone() }
}

/// What scripts/test.sh's ClickHouse lacks and the clickhouse image's entrypoint makes: the database and the user.
async fn clickhouse_database_and_user(database: &str) {
    let admin = ClickHouseConfig::new(support::clickhouse_url()).client().unwrap();
    admin.query(&format!("CREATE DATABASE {database}")).execute().await.unwrap();
    let users_d = std::env::var("NOTIFLOW_TEST_CLICKHOUSE_USERS_D").expect("NOTIFLOW_TEST_CLICKHOUSE_USERS_D is not set: run the tests with scripts/test.sh");
    let user = format!(
        "<yandex><users><notiflow><password_sha256_hex>{}</password_sha256_hex><networks><ip>127.0.0.1</ip><ip>::1</ip></networks>\
         <profile>default</profile><quota>default</quota></notiflow></users></yandex>\n",
        notiflow::tenants::key_hash(CLICKHOUSE_PASSWORD)
    );
    std::fs::write(Path::new(&users_d).join("stack_notiflow.xml"), user).unwrap();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = http.post(support::clickhouse_url()).query(&[("user", "notiflow"), ("password", CLICKHOUSE_PASSWORD)]).body("SELECT 1").send().await.unwrap();
        if answer.status().is_success() {
            return;
        }
        assert!(Instant::now() < deadline, "ClickHouse never loaded the notiflow user");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_services_on_the_image_layout_deliver_join_receipts_and_report() {
    let _turn = support::one_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("image");
    let image = lay_out_image(&root);
    let config = notiflow::config::Config::load(&repo().join("config/notiflow.compose.toml")).unwrap();
    let metrics_port: u16 = config.metrics.listen.rsplit(':').next().unwrap().parse().unwrap();
    let topics = support::kafka_config(2).topics.rename;
    let database = support::unique("nf_stack");
    clickhouse_database_and_user(&database).await;
    let mut ports = BTreeMap::new();
    for listen in [&config.gateway.as_ref().unwrap().listen, &config.receipts.as_ref().unwrap().listen, &config.inbox.as_ref().unwrap().listen] {
        ports.insert(listen.rsplit(':').next().unwrap().parse::<u16>().unwrap(), free_port());
    }
    for provider in &config.delivery.providers {
        let endpoint = url::Url::parse(&provider.twilio.as_ref().expect("the compose config's provider is the Twilio stand-in").endpoint).unwrap();
        ports.insert(endpoint.port().unwrap(), free_port());
    }
    let rewrite = Rewrite {
        root: root.clone(),
        kafka: support::kafka().bootstrap_servers,
        clickhouse: support::clickhouse_url(),
        database: database.clone(),
        ports,
        metrics_port,
        topics: topics.clone(),
        suffix: support::unique("stack"),
    };
    let services: Vec<Service> = compose::services().into_iter().filter(|s| s.built_here).collect();
    let prepared: BTreeMap<String, Prepared> = services.iter().map(|s| (s.name.clone(), prepare(s, &image, &rewrite, dir.path()))).collect();
    let by_name = |name: &str| services.iter().find(|s| s.name == name).unwrap();

    // The pipeline first (it creates the topics), then the one-shot jobs, then every other server.
    let mut running = Vec::new();
    let first = by_name("notiflow");
    let mut pipeline = start(first, &prepared["notiflow"], dir.path());
    pipeline.wait_healthy(&prepared["notiflow"].cwd, &prepared["notiflow"].env);
    running.push(pipeline);
    for job in services.iter().filter(|s| s.one_shot()) {
        let p = &prepared[&job.name];
        let out = Command::new(env!("CARGO_BIN_EXE_notiflow")).args(&p.args).current_dir(&p.cwd).envs(&p.env).output().unwrap();
        assert!(out.status.success(), "{}: {}", job.name, String::from_utf8_lossy(&out.stderr));
    }
    for service in services.iter().filter(|s| !s.one_shot() && s.name != "notiflow") {
        let mut server = start(service, &prepared[&service.name], dir.path());
        server.wait_healthy(&prepared[&service.name].cwd, &prepared[&service.name].env);
        running.push(server);
    }
    let logs = |running: &[Running]| running.iter().map(Running::log).collect::<Vec<_>>().join("\n");

    // A producer on the host writes requests (one unreachable number).
    let kafka = support::kafka();
    let requests_topic: Arc<str> = Arc::from(topics["notify.requests"].as_str());
    let phone = |i: usize| if i < UNREACHABLE { format!("+86138000{i:02}0000") } else { format!("+861391234{:04}", i + 1) };
    let requests = (0..REQUESTS).map(|i| {
        let request = json!({"request_id": format!("stack{i}"), "tenant": "acme", "template": "login_otp", "recipients": [{"phone": phone(i)}],
            "params": {"code": format!("{i:04}")}, "priority": "normal", "category": "otp"});
        OutRecord { topic: requests_topic.clone(), key: Some(format!("acme/stack{i}").into_bytes()), payload: request.to_string().into_bytes(), headers: vec![] }
    });
    KafkaSink::new(&kafka).unwrap().send_all(requests.collect()).await.unwrap();

    // Delivered to the stand-in...
    let stand_ins = running.iter().find(|r| r.name == "stand-ins").unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let accepted = || stand_ins.stdout.lock().unwrap().iter().filter(|l| l.starts_with("sms-twilio: accepted SM")).count();
    while accepted() < REQUESTS {
        assert!(Instant::now() < deadline, "the stand-in got {} of {REQUESTS}\n{}", accepted(), logs(&running));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let refused: Vec<String> = stand_ins.stdout.lock().unwrap().iter().filter(|l| l.contains("refused")).cloned().collect();
    assert!(refused.is_empty(), "the stand-in checks credentials and signatures as Twilio does: {refused:?}");
    // ...each receipt joined to its send and loaded into ClickHouse...
    let mut clickhouse = ClickHouseConfig::new(support::clickhouse_url());
    clickhouse.database = database.clone();
    let client = clickhouse.client().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let reported: u64 = client.query("SELECT count() FROM notify_deliveries WHERE state IN ('delivered', 'failed')").fetch_one().await.unwrap_or(0);
        if reported == REQUESTS as u64 {
            break;
        }
        assert!(Instant::now() < deadline, "{reported} of {REQUESTS} deliveries with a receipt in ClickHouse\n{}", logs(&running));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // ...and counted by a report run as an operator would in the image (relative report folder).
    let p = &prepared["notiflow"];
    let config_arg = p.args.iter().position(|a| a == "--config").map(|i| p.args[i + 1].clone()).unwrap();
    let report = Command::new(env!("CARGO_BIN_EXE_notiflow")).args(["report", "delivery_rate", "--config", &config_arg]).current_dir(&p.cwd).envs(&p.env).output().unwrap();
    let table = String::from_utf8_lossy(&report.stdout).to_string();
    assert!(report.status.success(), "{}", String::from_utf8_lossy(&report.stderr));
    let row: Vec<&str> = table.lines().find(|l| l.contains("sms-twilio")).unwrap_or_else(|| panic!("{table}")).split('|').map(str::trim).filter(|c| !c.is_empty()).collect();
    assert_eq!(row[..5], ["sms", "sms-twilio", &REQUESTS.to_string(), &(REQUESTS - UNREACHABLE).to_string(), &UNREACHABLE.to_string()], "{table}");
    println!("{table}");

    // Each service's /metrics (Prometheus scrapes it; the operations dashboard reads it) has what it recorded.
    let expected: [(&str, &[&str]); 3] = [
        ("notiflow", &["notiflow_records_in_total", "notiflow_records_out_total", "notiflow_checkpoints_total", "notiflow_last_checkpoint_timestamp_seconds", "notiflow_consumer_lag", "notiflow_batch_seconds"]),
        ("deliver", &["notiflow_sends_total{channel=\"sms\",provider=\"sms-twilio\",status=\"accepted\"}", "notiflow_handoff_seconds", "notiflow_provider_circuit"]),
        ("sink", &["notiflow_clickhouse_rows_total"]),
    ];
    for (service, names) in expected {
        let url = prepared[service].healthcheck.iter().find(|a| a.ends_with("/readyz")).unwrap().replace("/readyz", "/metrics");
        let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        for name in names {
            assert!(text.contains(name), "{service}: {url} lacks {name}\n{text}");
        }
    }

    // docker stop: SIGTERM to each, exit 0.
    for server in running {
        server.stop();
    }
}
