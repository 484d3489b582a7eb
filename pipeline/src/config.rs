//! `notiflow.toml`: where the services are, topic names, batch limits and the
//! tenants known so far. Unknown keys are rejected and every error names
//! `file:line:column`, so a typo fails at start-up rather than at 3 a.m.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use notiflow_kafka::KafkaConfig;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The Kafka cluster. Absent: the embedded default (in-process topics).
    #[serde(default)]
    pub kafka: Option<KafkaConfig>,
    /// Topic names and partition counts.
    #[serde(default)]
    pub topics: TopicsConfig,
    /// Micro-batching and limits of the request pipeline.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// The Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// How long a long-running command may take to stop after SIGTERM/SIGINT.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// Where local Parquet archives go (the embedded default's reports read them).
    #[serde(default)]
    pub archive: ArchiveConfig,
    /// ClickHouse, for `notiflow sink` and `notiflow report` (absent: reports read the Parquet archive).
    #[serde(default)]
    pub clickhouse: Option<notiflow_clickhouse::ClickHouseConfig>,
    /// Where the Rust UDFs are.
    #[serde(default)]
    pub udfs: UdfsConfig,
    /// The delivery job: providers per channel, retries, lanes.
    #[serde(default)]
    pub delivery: crate::deliver::config::DeliveryConfig,
    /// The in-app inbox: its API server (`notiflow inbox serve`) and, when
    /// present, the `inbox` channel of `notiflow deliver`.
    #[serde(default)]
    pub inbox: Option<crate::inbox::InboxConfig>,
    /// The endpoint providers push delivery reports to (`notiflow receipts serve`).
    #[serde(default)]
    pub receipts: Option<crate::receipts::ReceiptsConfig>,
    /// Click tracking: links rewritten by `notiflow deliver`, clicks received by `notiflow receipts serve`.
    #[serde(default)]
    pub tracking: Option<crate::tracking::TrackingConfig>,
    /// The HTTP send API for producers without Kafka (`notiflow gateway serve`).
    #[serde(default)]
    pub gateway: Option<crate::gateway::GatewayConfig>,
    /// Tenants allowed to send. A request naming another tenant is dead-lettered
    /// as `unknown_tenant`.
    #[serde(default, rename = "tenants")]
    pub tenants: Vec<TenantConfig>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    /// Lifecycle events the engine itself emits (`rejected`), keyed by message id.
    pub events: String,
    /// Partitions for topics notiflow creates. Keyed state is partitioned the
    /// same way, so raising it later re-shuffles keys.
    pub partitions: i32,
    /// Physical names for the topics the SQL names: `"notify.requests" = "staging.requests"`.
    /// Lets one set of SQL files run against several clusters or test namespaces.
    pub rename: BTreeMap<String, String>,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig { events: "notify.events".into(), partitions: 6, rename: BTreeMap::new() }
    }
}

impl TopicsConfig {
    /// The physical name of a topic named in SQL or config.
    pub fn resolve(&self, name: &str) -> String {
        self.rename.get(name).cloned().unwrap_or_else(|| name.to_string())
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Consumer group of the request pipeline.
    pub group_id: String,
    /// Records larger than this are dead-lettered as `oversize`.
    pub max_request_bytes: usize,
    /// A micro-batch closes at this many records...
    pub batch_max_records: usize,
    /// ...or this many milliseconds after it opened.
    pub batch_max_wait_ms: u64,
    /// How often operator state and offsets are checkpointed together (and
    /// offsets committed to Kafka). Outputs since the last checkpoint are
    /// replayed after a crash and suppressed by id.
    pub checkpoint_interval_ms: u64,
    /// The compacted topic checkpoints go to (per input partition, so state
    /// follows partitions between instances); empty: `<group_id>.state`.
    pub state_topic: String,
    /// Members of the consumer group this process runs, a thread each (they
    /// share the partitions as instances would; more than the cores, or than
    /// the topics' partitions, buys nothing).
    pub workers: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            group_id: "notiflow-requests".into(),
            max_request_bytes: 64 * 1024,
            batch_max_records: 4096,
            batch_max_wait_ms: 50,
            checkpoint_interval_ms: 1000,
            state_topic: String::new(),
            workers: 1,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// After a stop request, the command finishes its work in hand, makes it durable and exits 0;
    /// past this many ms it exits at once with code 1 instead, leaving what is unfinished
    /// uncommitted (redone after the restart, as after a crash). Keep it below the orchestrator's
    /// grace period (docker compose: stop_grace_period 30 s) so the exit is ours, not a SIGKILL.
    pub deadline_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { deadline_ms: 25_000 }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `host:port` for `GET /metrics`; empty disables the endpoint.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { listen: "127.0.0.1:9464".into() }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// Directory of the local Parquet archive.
    pub dir: PathBuf,
    /// `s3://bucket/prefix`: archive to S3 instead of `dir` (Arroyo's `path`). Credentials and region
    /// come from the standard `AWS_*` environment variables, never from this file.
    pub url: Option<String>,
    /// object_store's S3 options (`endpoint`, `allow_http`, `region`, ...) for S3-compatible stores.
    pub options: BTreeMap<String, String>,
    /// A file is committed at the latest this long after its first row (Arroyo's option name).
    pub rollover_seconds: u64,
    /// ...or once its buffered rows reach about this many bytes (Arroyo's option name).
    pub target_file_size: usize,
    /// Only `zstd` (Arroyo's option name; level 3).
    pub parquet_compression: String,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            dir: PathBuf::from("notiflow-data/archive"),
            url: None,
            options: BTreeMap::new(),
            rollover_seconds: 60,
            target_file_size: 128 * 1024 * 1024,
            parquet_compression: "zstd".into(),
        }
    }
}

impl ArchiveConfig {
    /// The store this config names: S3 when `url` is set, else the local `dir`.
    pub fn location(&self) -> anyhow::Result<notiflow_parquet::ArchiveLocation> {
        Ok(match &self.url {
            Some(url) => notiflow_parquet::ArchiveLocation::s3(url, &self.options)?,
            None => notiflow_parquet::ArchiveLocation::local(&self.dir)?,
        })
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct UdfsConfig {
    /// The UDF workspace: one crate per function.
    pub dir: PathBuf,
    /// Where the built `lib<name>.so` files are (`bash udfs/build.sh` prints
    /// it). Unset: the environment variable NOTIFLOW_UDF_LIB_DIR, else
    /// `udfs/target/release`.
    pub lib_dir: Option<PathBuf>,
}

impl Default for UdfsConfig {
    fn default() -> Self {
        UdfsConfig { dir: PathBuf::from("udfs"), lib_dir: None }
    }
}

impl UdfsConfig {
    pub fn lib_dir(&self) -> PathBuf {
        self.lib_dir
            .clone()
            .or_else(|| std::env::var_os("NOTIFLOW_UDF_LIB_DIR").map(PathBuf::from))
            .unwrap_or_else(|| self.dir.join("target/release"))
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// The id producers put in `tenant`.
    pub id: String,
    /// A human name for reports.
    #[serde(default)]
    pub name: Option<String>,
}

/// A config file that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
#[error("{path}:{line}:{column}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.display().to_string(),
            line: 0,
            column: 0,
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, path: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_column(text, s.start)).unwrap_or((1, 1));
            ConfigError { path: path.to_string(), line, column, message: e.message().to_string() }
        })?;
        config.check(text, path)?;
        Ok(config)
    }

    /// Rules the types cannot say.
    fn check(&self, text: &str, path: &str) -> Result<(), ConfigError> {
        let at = |needle: &str, message: String| {
            let (line, column) = text.find(needle).map(|i| line_column(text, i)).unwrap_or((1, 1));
            ConfigError { path: path.to_string(), line, column, message }
        };
        if self.topics.partitions < 1 {
            return Err(at("partitions", format!("partitions must be >= 1, got {}", self.topics.partitions)));
        }
        if self.pipeline.batch_max_records == 0 {
            return Err(at("batch_max_records", "batch_max_records must be >= 1".into()));
        }
        if self.pipeline.workers == 0 {
            return Err(at("workers", "workers must be >= 1".into()));
        }
        if let Some(security) = self.kafka.as_ref().and_then(|k| k.security.as_ref()) {
            security.check().map_err(|message| at("[kafka.security]", message))?;
        }
        if let Some(clickhouse) = &self.clickhouse {
            clickhouse.check().map_err(|message| at("[clickhouse]", message))?;
        }
        let mut seen = BTreeSet::new();
        for tenant in &self.tenants {
            if !seen.insert(tenant.id.as_str()) {
                return Err(at(&format!("\"{}\"", tenant.id), format!("tenant {:?} is listed twice", tenant.id)));
            }
        }
        Ok(())
    }

    /// The configuration of the embedded default: no servers, two demo tenants.
    pub fn embedded() -> Config {
        Config {
            kafka: None,
            topics: TopicsConfig::default(),
            pipeline: PipelineConfig::default(),
            metrics: MetricsConfig { listen: String::new() },
            shutdown: ShutdownConfig::default(),
            archive: ArchiveConfig::default(),
            clickhouse: None,
            udfs: UdfsConfig::default(),
            delivery: Default::default(),
            inbox: None,
            receipts: None,
            tracking: None,
            gateway: None,
            tenants: vec![
                TenantConfig { id: "acme".into(), name: Some("Acme Retail".into()) },
                TenantConfig { id: "globex".into(), name: Some("Globex Bank".into()) },
            ],
        }
    }
}

/// 1-based line and column of a byte offset, for `file:line:column` errors.
pub(crate) fn line_column(text: &str, byte: usize) -> (usize, usize) {
    let before = &text[..byte.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map(|nl| before.len() - nl).unwrap_or(before.len() + 1);
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_file_parses() {
        let text = r#"
[kafka]
bootstrap_servers = "127.0.0.1:9092"

[topics]
partitions = 3

[topics.rename]
"notify.dlq" = "staging.dlq"

[pipeline]
max_request_bytes = 1024

[[tenants]]
id = "acme"
"#;
        let config = Config::parse(text, "notiflow.toml").unwrap();
        assert_eq!(config.kafka.unwrap().bootstrap_servers, "127.0.0.1:9092");
        assert_eq!(config.topics.partitions, 3);
        assert_eq!(config.topics.resolve("notify.requests"), "notify.requests");
        assert_eq!(config.topics.resolve("notify.dlq"), "staging.dlq");
        assert_eq!(config.pipeline.max_request_bytes, 1024);
        assert_eq!(config.tenants[0].id, "acme");
    }

    #[test]
    fn the_example_config_parses_and_a_missing_secret_names_its_provider() {
        let config = Config::parse(include_str!("../../config/notiflow.example.toml"), "notiflow.example.toml").unwrap();
        let names: Vec<&str> = config.delivery.providers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["sms-aliyun", "sms-twilio", "sms-aliyun-acme", "email-relay", "dingtalk-ops", "webhooks"]);
        let registry = crate::tenants::read_file(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tenants.toml")).unwrap();
        for account in registry.iter().flat_map(|t| t.provider_accounts.values()) {
            assert!(names.contains(&account.as_str()), "examples/tenants.toml names {account}, which the example config lacks");
        }
        assert_eq!(config.inbox.as_ref().map(|i| (i.listen.as_str(), i.keep_per_user)), Some(("0.0.0.0:8090", 500)));
        assert_eq!(config.clickhouse.as_ref().map(|c| (c.database.as_str(), c.batch_rows)), Some(("notiflow", 10_000)));
        assert_eq!(config.tracking.as_ref().map(|t| t.channels.clone()), Some(vec!["email".to_string()]));
        let err = config.delivery.provider_groups().err().unwrap();
        assert!(err.contains("sms-aliyun") && err.contains("ALIYUN_SMS_SECRET"), "{err}");
        let two_kinds = "[[delivery.providers]]\nname = \"x\"\n[delivery.providers.webhook]\nsigning_secret = { env = \"A\" }\n\
                         [delivery.providers.twilio]\naccount_sid = \"AC1\"\nauth_token = { env = \"B\" }\nfrom = \"+1\"\n";
        let err = Config::parse(two_kinds, "n.toml").unwrap().delivery.provider_groups().err().unwrap();
        assert!(err.contains("exactly one"), "{err}");
    }

    #[test]
    fn unknown_key_names_file_and_line() {
        let text = "[pipeline]\nmax_request_bytes = 10\nbatch_size = 3\n";
        let err = Config::parse(text, "conf/notiflow.toml").unwrap_err();
        assert_eq!((err.line, err.column), (3, 1), "{err}");
        assert!(err.to_string().starts_with("conf/notiflow.toml:3:1: "), "{err}");
        assert!(err.message.contains("batch_size"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_line() {
        let err = Config::parse("[topics]\n\npartitions = \"six\"\n", "n.toml").unwrap_err();
        assert_eq!(err.line, 3, "{err}");
    }

    #[test]
    fn semantic_errors_point_at_the_value() {
        let err = Config::parse("[topics]\npartitions = 0\n", "n.toml").unwrap_err();
        assert_eq!(err.line, 2);
        let err = Config::parse("[[tenants]]\nid = \"a\"\n[[tenants]]\nid = \"a\"\n", "n.toml").unwrap_err();
        assert!(err.message.contains("listed twice"), "{err}");
    }
}
