//! The embedded default: the main job with no servers. Topics are served by
//! the in-process log instead of Kafka; deliveries go to local stand-ins of
//! the providers (a Twilio that reports each message's fate to the receipts
//! endpoint, an SMTP relay) and to the in-app inbox, through the same delivery
//! engine as `notiflow deliver`; receipts are joined to their sends by the
//! pipeline's stage 50; events and deliveries are archived to local Parquet
//! instead of ClickHouse, and the summary and the reports are SQL over that archive.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notiflow_connector::memory::MemoryBroker;
use notiflow_connector::{OutRecord, Record, TopicAdmin};
use notiflow_parquet::{ArchiveLocation, DatasetArchive};

use crate::deliver::config::DeliveryConfig;
use crate::deliver::{DeliverTotals, tenant_rules::TenantRules};
use crate::inbox::InboxConfig;
use crate::warehouse::{DELIVERIES, Dataset, EVENTS};
use tokio::sync::watch;

use crate::config::Config;
use crate::job::{RunTotals, StopWhen, run_job};
use crate::report;
use crate::samples::sample_requests;

pub struct DemoOptions {
    /// The SQL pipeline to run.
    pub sql_dir: PathBuf,
    /// The report SQL files (dashboards/reports), run over the archive at the end.
    pub reports_dir: PathBuf,
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
    pub delivery: DeliverTotals,
    /// Delivery reports the stand-ins and the inbox sent back.
    pub receipts: usize,
    /// Rows of notify.deliveries (sends joined to their receipts) archived.
    pub archived_deliveries: usize,
    pub summary: String,
}

/// Local stand-ins of the providers the demo delivers through, and the `[delivery]` that names them.
struct StandIns {
    twilio: notiflow_sms::fake::FakeProvider,
    _relay: notiflow_email::fake::FakeSmtp,
    delivery: DeliveryConfig,
    inbox: InboxConfig,
}

impl StandIns {
    /// Secrets go to files under `dir` (as an operator's would), made fresh each run.
    async fn start(dir: &Path, receipts: std::net::SocketAddr) -> anyhow::Result<StandIns> {
        let secrets = dir.join("secrets");
        std::fs::create_dir_all(&secrets)?;
        let (provider_secret, inbox_secret) = (secrets.join("provider"), secrets.join("inbox"));
        let secret = crate::tenants::random_hex(16)?;
        std::fs::write(&provider_secret, &secret)?;
        std::fs::write(&inbox_secret, crate::tenants::random_hex(16)?)?;
        let twilio = notiflow_sms::fake::twilio("ACdemo", &secret).await;
        let relay = notiflow_email::fake::FakeSmtp::start("demo", &secret).await;
        let delivery = format!(
            r#"
group_id = "notiflow-demo-delivery"
commit_interval_ms = 100
[[providers]]
name = "sms-twilio"
[providers.twilio]
endpoint = "{twilio}"
account_sid = "ACdemo"
auth_token = {{ file = "{secret_file}" }}
from = "+15005550006"
status_callback = "http://{receipts}/v1/receipts/twilio/sms-twilio"
[[providers]]
name = "email-relay"
[providers.smtp]
host = "127.0.0.1"
port = {smtp}
security = "none"
username = "demo"
password = {{ file = "{secret_file}" }}
from = "notiflow demo <demo@notiflow.example>"
"#,
            twilio = twilio.endpoint,
            smtp = relay.port,
            secret_file = provider_secret.display(),
        );
        let inbox = format!("token_secret = {{ file = \"{}\" }}\n", inbox_secret.display());
        Ok(StandIns { twilio, _relay: relay, delivery: toml::from_str(&delivery)?, inbox: toml::from_str(&inbox)? })
    }
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
    let limits = crate::batch_limits(&config);
    eprintln!("demo: {produced} requests through the SQL stages");
    let (records_in, batches) =
        run_job(&mut pipeline, &mut source, &broker.producer(), limits, StopWhen::IdleFor(Duration::from_millis(100)), shutdown.clone()).await?;
    // Later stages read what earlier ones wrote (notify.messages, notify.deferred): more records than produced.
    anyhow::ensure!(records_in >= produced as u64, "consumed {records_in} records, fewer than the {produced} produced");

    // Delivery (what `notiflow deliver` and `notiflow receipts serve` do on a cluster).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let stand_ins = StandIns::start(&options.data_dir, listener.local_addr()?).await?;
    config.delivery = stand_ins.delivery.clone();
    config.inbox = Some(stand_ins.inbox.clone());
    let (stop_receipts, receipts_stopped) = tokio::sync::oneshot::channel::<()>();
    let receipts_server = tokio::spawn({
        let (config, sink) = (config.clone(), broker.producer());
        async move { crate::receipts::serve_on(&config, sink, listener, async move { let _ = receipts_stopped.await; }).await }
    });
    let dispatched: usize = ["high", "normal", "low"].iter().map(|lane| broker.read_all(&config.topics.resolve(&format!("notify.dispatch.{lane}"))).len()).sum();
    eprintln!("demo: delivering {dispatched} dispatch records to the providers' stand-ins and the inbox");
    let delivery = crate::deliver::run_on(&config, &broker, TenantRules::none(), Some(Duration::from_millis(500)), std::future::pending()).await?;
    // Twilio reports each message's fate by callback, a moment after accepting it.
    let receipts_topic = config.topics.resolve(crate::receipts::RECEIPTS_TOPIC);
    let deadline = Instant::now() + Duration::from_secs(15);
    while broker.read_all(&receipts_topic).len() < stand_ins.twilio.log().accepted.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_receipts.send(());
    receipts_server.await??;
    let receipts = broker.read_all(&receipts_topic).len();
    eprintln!("demo: {receipts} delivery reports back; joining them to their sends");
    let (joined_in, joined_batches) =
        run_job(&mut pipeline, &mut source, &broker.producer(), limits, StopWhen::IdleFor(Duration::from_millis(100)), shutdown).await?;
    let totals = RunTotals { records_in: records_in + joined_in, batches: batches + joined_batches, ..pipeline.totals.clone() };

    // Archive events and deliveries (what `notiflow sink` does on a cluster).
    let location = ArchiveLocation::local(&config.archive.dir)?;
    for dir in [EVENTS.name, DELIVERIES.name, "_manifests", "_staging"].map(|d| config.archive.dir.join(d)) {
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
    }
    let archived_events = archive(&location, &EVENTS, &broker.read_all(&config.topics.resolve(&config.topics.events))).await?;
    let archived_deliveries = archive(&location, &DELIVERIES, &broker.read_all(&config.topics.resolve(DELIVERIES.topic))).await?;

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
    // The analysts' reports, as Grafana and `notiflow report` show them.
    for report in report::list(&options.reports_dir)? {
        let table = report::run_archive(&location, &report.sql).await?;
        summary.push_str(&format!("\nReport {}: {}\n{}\n", report.name, report.title, table.render()));
    }
    Ok(DemoOutcome { totals, archived_events, delivery, receipts, archived_deliveries, summary })
}

/// Writes `records` of a dataset's topic to the archive as one commit; returns how many.
async fn archive(location: &ArchiveLocation, dataset: &Dataset, records: &[Record]) -> anyhow::Result<usize> {
    let rows = records.iter().map(|r| dataset.decode(r).map_err(|why| anyhow::anyhow!("{} at offset {}: {why}", dataset.name, r.offset))).collect::<anyhow::Result<Vec<_>>>()?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut archive = DatasetArchive::open(location, dataset.name, 3).await?;
    let upto = rows.iter().fold(std::collections::BTreeMap::new(), |mut m, r| {
        m.insert(r.partition, r.offset + 1);
        m
    });
    archive.commit(&[(chrono::Utc::now(), vec![dataset.to_batch(&rows.iter().collect::<Vec<_>>())])], &upto).await?;
    Ok(rows.len())
}
