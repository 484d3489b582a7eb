use std::sync::atomic::{AtomicU32, Ordering};

use notiflow::config::{Config, TenantConfig, TopicsConfig};
use notiflow_kafka::KafkaConfig;

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with scripts/test.sh, which starts the real services")
    })
}

pub fn kafka() -> KafkaConfig {
    KafkaConfig::new(required_env("NOTIFLOW_TEST_KAFKA"))
}

pub fn clickhouse_url() -> String {
    required_env("NOTIFLOW_TEST_CLICKHOUSE_URL")
}

/// A name no other test (or earlier run against the same broker) uses.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}_{}_{}_{nanos}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The repository's SQL pipeline.
pub fn sql_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql")
}

/// A Kafka config with topics of its own.
pub fn kafka_config(partitions: i32) -> Config {
    let prefix = unique("t");
    let mut config = Config::embedded();
    config.kafka = Some(kafka());
    let logical = [
        "requests", "dlq", "events", "sends", "dispatch.high", "dispatch.normal", "dispatch.low", "messages", "deferred", "recalls", "templates",
        "profiles", "inbox", "receipts", "dispatch.parked", "deliveries", "tenants", "quota.claims",
    ];
    config.topics = TopicsConfig {
        partitions,
        rename: logical.iter().map(|t| (format!("notify.{t}"), format!("{prefix}.{t}"))).collect(),
        ..TopicsConfig::default()
    };
    config.pipeline.group_id = format!("{prefix}-group");
    config.tenants = vec![
        TenantConfig { id: "acme".into(), name: None },
        TenantConfig { id: "globex".into(), name: None },
    ];
    config
}

/// The same config as a TOML file, for the binary.
pub fn write_toml(config: &Config, dir: &std::path::Path) -> std::path::PathBuf {
    write_toml_with(config, dir, "")
}

/// As `write_toml`, with extra lines in `[pipeline]`.
pub fn write_toml_with(config: &Config, dir: &std::path::Path, pipeline_extra: &str) -> std::path::PathBuf {
    let kafka = config.kafka.as_ref().expect("kafka config");
    let t = &config.topics;
    let tenants: String = config.tenants.iter().map(|t| format!("[[tenants]]\nid = \"{}\"\n", t.id)).collect();
    let rename: String = t.rename.iter().map(|(from, to)| format!("\"{from}\" = \"{to}\"\n")).collect();
    let properties: String = kafka.properties.iter().map(|(k, v)| format!("\"{k}\" = \"{v}\"\n")).collect();
    // The TLS tests' settings.
    let security = match &kafka.security {
        Some(s) => {
            let protocol = match s.protocol {
                notiflow_kafka::SecurityProtocol::Ssl => "ssl",
                notiflow_kafka::SecurityProtocol::SaslSsl => "sasl_ssl",
                notiflow_kafka::SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            };
            let mut lines = format!("[kafka.security]\nprotocol = \"{protocol}\"\n");
            if let Some(ca) = &s.ca_file {
                lines.push_str(&format!("ca_file = \"{}\"\n", ca.display()));
            }
            if let Some(mechanism) = s.sasl_mechanism {
                assert_eq!(mechanism, notiflow_kafka::SaslMechanism::ScramSha512, "write_toml writes SCRAM-SHA-512 only");
                lines.push_str("sasl_mechanism = \"SCRAM-SHA-512\"\n");
            }
            if let Some(user) = &s.sasl_username {
                lines.push_str(&format!("sasl_username = \"{user}\"\n"));
            }
            if let Some(var) = &s.sasl_password_env {
                lines.push_str(&format!("sasl_password_env = \"{var}\"\n"));
            }
            lines + "\n"
        }
        None => String::new(),
    };
    let text = format!(
        "[kafka]\nbootstrap_servers = \"{}\"\n\n{security}[kafka.properties]\n{properties}\n[topics]\npartitions = {}\n\n[topics.rename]\n{rename}\n\
         [pipeline]\ngroup_id = \"{}\"\n{pipeline_extra}\n\n[metrics]\nlisten = \"\"\n\n{tenants}",
        kafka.bootstrap_servers, t.partitions, config.pipeline.group_id
    );
    let path = dir.join("notiflow.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Tests that run several pipeline processes against the broker take turns:
/// on 2 cores, two of them at once starve the broker (producer timeouts).
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}

/// A child process (a server under test), killed when the test ends however it ends.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The notiflow binary with a config file and the environment its secrets come from.
pub struct Notiflow {
    config: std::path::PathBuf,
    env: Vec<(String, String)>,
}

impl Notiflow {
    pub fn new(config: impl Into<std::path::PathBuf>, env: &[(&str, &str)]) -> Self {
        Notiflow { config: config.into(), env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
    }

    pub fn command(&self, args: &[&str]) -> std::process::Command {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_notiflow"));
        command.args(args).arg("--config").arg(&self.config).envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// Starts a server subcommand; returns it (killed on drop) once it printed its first line.
    pub fn serve(&self, args: &[&str]) -> (Killed, String) {
        use std::io::BufRead;
        let mut child = self.command(args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::inherit()).spawn().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        (Killed(child), line)
    }
}

/// Every record of a topic, as JSON.
pub async fn read_json(kafka: &KafkaConfig, topic: &str) -> Vec<serde_json::Value> {
    let records = notiflow_kafka::read_topic_to_end(kafka, topic).await.unwrap();
    records.iter().map(|r| serde_json::from_slice(r.payload.as_ref().unwrap()).unwrap()).collect()
}

/// Waits (up to 30 s) until a topic holds at least `count` records, then
/// `settle` longer (to see any extra ones); returns them all as JSON.
pub async fn wait_for_json(kafka: &KafkaConfig, topic: &str, count: usize, settle: std::time::Duration) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while notiflow_kafka::read_topic_to_end(kafka, topic).await.unwrap().len() < count && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    tokio::time::sleep(settle).await;
    read_json(kafka, topic).await
}

/// `[receipts]` on `port` and a `[delivery]` of its own (fast commits), for appending to a test config.
pub fn receipts_and_delivery_toml(port: u16) -> String {
    format!("\n[receipts]\nlisten = \"127.0.0.1:{port}\"\n\n[delivery]\ngroup_id = \"{}\"\ncommit_interval_ms = 200\n", unique("delivery"))
}

/// A Twilio provider `twilio-main` (auth token from `token_env`) whose status callbacks go to the receipts server on `port`.
pub fn twilio_provider_toml(endpoint: &str, token_env: &str, port: u16) -> String {
    twilio_account_toml("twilio-main", "AC0123", endpoint, token_env, port)
}

/// A Twilio provider `name` for account `sid` (auth token from `token_env`), status callbacks to the receipts server on `port`.
pub fn twilio_account_toml(name: &str, sid: &str, endpoint: &str, token_env: &str, port: u16) -> String {
    format!(
        "\n[[delivery.providers]]\nname = \"{name}\"\n[delivery.providers.twilio]\nendpoint = \"{endpoint}\"\naccount_sid = \"{sid}\"\n\
         auth_token = {{ env = \"{token_env}\" }}\nfrom = \"+15005550006\"\nstatus_callback = \"http://127.0.0.1:{port}/v1/receipts/twilio/{name}\"\n"
    )
}
