//! The embedded default: the main job with no servers. Topics are served by
//! the in-process log instead of Kafka, lifecycle events are archived to local
//! Parquet instead of ClickHouse, and the summary is SQL over that archive.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notiflow_connector::memory::MemoryBroker;
use notiflow_connector::{OutRecord, TopicAdmin};
use notiflow_parquet::{ArchiveLocation, DatasetArchive};

use crate::warehouse::EVENTS;
use tokio::sync::watch;

use crate::config::Config;
use crate::job::{RunTotals, StopWhen, run_job};
use crate::report;
use crate::samples::sample_requests;

pub struct DemoOptions {
    /// The SQL pipeline to run.
    pub sql_dir: PathBuf,
    /// Generated requests (plus the published examples).
    pub requests: usize,
    /// One in this many generated records is malformed.
    pub malformed_every: usize,
    /// The demo's own folder; its archive is replaced on every run.
    pub data_dir: PathBuf,
}

pub struct DemoOutcome {
    pub totals: RunTotals,
    pub archived_events: usize,
    pub summary: String,
}

/// The example templates and profiles (examples/), plus a profile for every
/// user the samples address, checked as `notiflow template|profile put` does:
/// records for the config's (renamed) catalog topics.
pub fn catalog_records(config: &Config) -> anyhow::Result<Vec<OutRecord>> {
    use crate::catalog;
    let tenants: Vec<String> = config.tenants.iter().map(|t| t.id.clone()).collect();
    let templates = catalog::parse_items("examples/templates.jsonl", include_str!("../../examples/templates.jsonl"))?;
    let mut profiles = catalog::parse_items("examples/profiles.jsonl", include_str!("../../examples/profiles.jsonl"))?;
    profiles.extend(crate::samples::sample_profiles().into_iter().map(|p| ("samples".to_string(), p)));
    let mut records = Vec::new();
    for (topic, checked) in [
        ("notify.templates", catalog::template_records(&templates, &tenants)?),
        ("notify.profiles", catalog::profile_records(&profiles, &tenants)?),
    ] {
        let topic: Arc<str> = Arc::from(config.topics.resolve(topic).as_str());
        records.extend(checked.into_iter().map(|r| r.into_out(&topic)));
    }
    Ok(records)
}

pub async fn run(options: &DemoOptions) -> anyhow::Result<DemoOutcome> {
    let mut config = Config::embedded();
    config.archive.dir = options.data_dir.join("archive");
    let mut pipeline = crate::load_pipeline(&options.sql_dir, &config).await?;
    let broker = MemoryBroker::new();
    broker.ensure_topics(&crate::topic_specs(&pipeline, &config)).await?;
    broker.append(catalog_records(&config)?)?;
    pipeline.prepare(&broker).await?;

    let requests_topic: Arc<str> = Arc::from(config.topics.resolve("notify.requests").as_str());
    let mut input: Vec<OutRecord> = sample_requests(options.requests, options.malformed_every, config.pipeline.max_request_bytes)
        .into_iter()
        .map(|s| OutRecord { topic: requests_topic.clone(), key: Some(s.key), payload: s.payload, headers: vec![] })
        .collect();
    for line in include_str!("../../examples/requests.jsonl").lines().filter(|l| !l.trim().is_empty()) {
        let (key, value) = line.split_once('|').expect("examples are key|value lines");
        input.push(OutRecord {
            topic: requests_topic.clone(),
            key: Some(key.as_bytes().to_vec()),
            payload: value.as_bytes().to_vec(),
            headers: vec![],
        });
    }
    let produced = input.len();
    broker.append(input)?;

    let topics = pipeline.source_topics();
    let mut source = broker.consumer(&crate::group_id(&pipeline, &config), &topics.iter().map(String::as_str).collect::<Vec<_>>());
    let (_keep_open, shutdown) = watch::channel(false);
    let (records_in, batches) = run_job(
        &mut pipeline,
        &mut source,
        &broker.producer(),
        crate::batch_limits(&config),
        StopWhen::IdleFor(Duration::from_millis(100)),
        shutdown,
    )
    .await?;
    // Later stages read what earlier ones wrote (notify.messages, notify.deferred): more records than produced.
    anyhow::ensure!(records_in >= produced as u64, "consumed {records_in} records, fewer than the {produced} produced");
    let totals = RunTotals { records_in, batches, ..pipeline.totals.clone() };

    // Archive the lifecycle events (what `notiflow sink` does on a cluster).
    for dir in [EVENTS.name, "_manifests", "_staging"].map(|d| config.archive.dir.join(d)) {
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
    }
    let events = broker.read_all(&config.topics.resolve(&config.topics.events));
    let rows = events.iter().map(|r| EVENTS.decode(r).map_err(|why| anyhow::anyhow!("event at offset {}: {why}", r.offset))).collect::<anyhow::Result<Vec<_>>>()?;
    let location = ArchiveLocation::local(&config.archive.dir)?;
    let mut archive = DatasetArchive::open(&location, EVENTS.name, 3).await?;
    let upto = rows.iter().fold(std::collections::BTreeMap::new(), |mut m, r| {
        m.insert(r.partition, r.offset + 1);
        m
    });
    archive.commit(&[(chrono::Utc::now(), vec![EVENTS.to_batch(&rows.iter().collect::<Vec<_>>())])], &upto).await?;
    let payloads = rows;

    let ctx = report::archive_session(&location).await?;
    let mut summary = String::new();
    for (title, sql) in [
        (
            "Outcome per topic",
            "SELECT event, topic, count(*) AS records FROM notify_events GROUP BY event, topic ORDER BY event, topic",
        ),
        (
            "Rejections by reason",
            "SELECT reason, count(*) AS records FROM notify_events WHERE event = 'rejected' GROUP BY reason ORDER BY records DESC, reason",
        ),
        (
            "Dispatched per tenant and category",
            "SELECT tenant, category, count(*) AS requests FROM notify_events WHERE event = 'dispatched' AND kind = 'send' \
             GROUP BY tenant, category ORDER BY tenant, category",
        ),
    ] {
        summary.push_str(&format!("\n{title}\n{}\n", report::render(&report::query(&ctx, sql).await?)));
    }
    Ok(DemoOutcome { totals, archived_events: payloads.len(), summary })
}
