//! notiflow: the streaming engine and the `notiflow` binary.

pub mod bench;
pub mod catalog;
pub mod config;
pub mod contract;
pub mod dashboard;
pub mod deliver;
pub mod demo;
pub mod dlq;
pub mod engine;
pub mod events;
pub mod follow;
pub mod gateway;
pub mod golden;
pub mod hex;
pub mod inbox;
pub mod job;
pub mod logs;
pub mod metrics_http;
pub mod outage;
pub mod report;
pub mod receipts;
pub mod samples;
pub mod shutdown;
pub mod stand_ins;
pub mod sql;
pub mod tenants;
pub mod trace;
pub mod tracking;
pub mod workers;
pub mod warehouse;

use std::path::Path;
use std::time::Duration;

use notiflow_connector::{BatchLimits, TopicSpec};

use config::Config;
use engine::{PipelineRun, PlanEnv};
use sql::{PipelineSql, SqlError};

/// Parses and plans the SQL pipeline in `dir` (no I/O beyond reading files).
pub async fn load_pipeline(dir: &Path, config: &Config) -> Result<PipelineRun, SqlError> {
    load_pipeline_with(dir, config, None).await
}

/// As `load_pipeline`; tenants of `registry` (followed live) may send besides the config's.
pub async fn load_pipeline_with(dir: &Path, config: &Config, registry: Option<tenants::Registry>) -> Result<PipelineRun, SqlError> {
    let sql = PipelineSql::load_dir(dir)?;
    let location = sql::Location { file: config.udfs.dir.display().to_string(), line: 0 };
    let udfs_dir = udfs_dir_for(dir, config);
    let mut udfs_config = config.udfs.clone();
    udfs_config.dir = udfs_dir.clone();
    let udfs = engine::udf::discover(&udfs_dir, &udfs_config.lib_dir()).map_err(|m| SqlError::new(&location, m))?;
    let env = PlanEnv {
        tenants: config.tenants.iter().map(|t| t.id.clone()).collect(),
        max_request_bytes: config.pipeline.max_request_bytes,
        registry,
        udfs,
    };
    let pipeline = engine::plan(&sql, &env).await?;
    Ok(PipelineRun::new(pipeline, &config.topics))
}

/// The UDF workspace: `udfs.dir` from the working directory, else (a
/// relative path that is not there) beside the SQL folder, as in the repo.
fn udfs_dir_for(sql_dir: &Path, config: &Config) -> std::path::PathBuf {
    let dir = &config.udfs.dir;
    if dir.is_absolute() || dir.exists() {
        return dir.clone();
    }
    let beside = sql_dir.parent().map(|p| p.join(dir));
    beside.filter(|p| p.exists()).unwrap_or_else(|| dir.clone())
}

/// Every topic a pipeline reads or writes, to create before it starts.
pub fn topic_specs(run: &PipelineRun, config: &Config) -> Vec<TopicSpec> {
    let mut names = run.source_topics();
    names.extend(run.output_topics());
    names.sort();
    names.dedup();
    // Lookup topics (templates, profiles, recalls) keep the latest record per key.
    let lookups: Vec<&str> = run.pipeline.lookups.iter().map(|l| l.kafka.topic.as_str()).collect();
    let mut specs: Vec<TopicSpec> = names
        .into_iter()
        .map(|name| TopicSpec { compacted: lookups.contains(&name.as_str()), ..TopicSpec::new(name, config.topics.partitions) })
        .collect();
    specs.push(TopicSpec { name: state_topic(run, config), partitions: 1, compacted: true });
    specs
}

/// The compacted topic holding the group's checkpoints.
pub fn state_topic(run: &PipelineRun, config: &Config) -> String {
    match config.pipeline.state_topic.as_str() {
        "" => format!("{}.state", group_id(run, config)),
        topic => topic.to_string(),
    }
}

/// Checkpoints `run` into its state topic on Kafka; partitions assigned to
/// it are restored from there.
pub async fn checkpoint_on_kafka(run: &mut PipelineRun, config: &Config, kafka: &notiflow_kafka::KafkaConfig) -> anyhow::Result<()> {
    let checkpointing = engine::Checkpointing {
        state: engine::checkpoint::StateTopic::new(state_topic(run, config)),
        interval: Duration::from_millis(config.pipeline.checkpoint_interval_ms),
    };
    run.enable_checkpoints(checkpointing, logs::Logs::Kafka(notiflow_kafka::KafkaReader::new(kafka))).await
}

/// The consumer group: the SQL's `source.group_id`, else `pipeline.group_id`.
pub fn group_id(run: &PipelineRun, config: &Config) -> String {
    run.pipeline.sources.iter().find_map(|s| s.kafka.group_id.clone()).unwrap_or_else(|| config.pipeline.group_id.clone())
}

pub fn batch_limits(config: &Config) -> BatchLimits {
    BatchLimits {
        max_records: config.pipeline.batch_max_records,
        max_wait: Duration::from_millis(config.pipeline.batch_max_wait_ms),
    }
}
