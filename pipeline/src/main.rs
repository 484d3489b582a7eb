use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use notiflow::config::Config;
use notiflow::job::{RunTotals, StopWhen, run_job};
use notiflow_connector::TopicAdmin;
use notiflow_kafka::{KafkaAdmin, KafkaReader, KafkaSink, KafkaSource};
use tokio::sync::watch;

/// notiflow: multi-channel business notifications as a streaming pipeline.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the main job on the embedded default (no servers): sample requests
    /// in, through the SQL pipeline, events archived to Parquet, summary out.
    Demo {
        /// The SQL pipeline.
        #[arg(long, default_value = "sql")]
        sql: PathBuf,
        /// How many requests to generate.
        #[arg(long, default_value_t = 2000)]
        requests: usize,
        /// One in this many generated records is malformed (0: none).
        #[arg(long, default_value_t = 50)]
        malformed_every: usize,
        /// The demo's folder; its archive is replaced on every run.
        #[arg(long, default_value = "notiflow-data/demo")]
        data_dir: PathBuf,
        /// The report SQL files, run over the archive at the end.
        #[arg(long, default_value = "dashboards/reports")]
        reports: PathBuf,
    },
    /// Run the SQL pipeline in DIR against Kafka until interrupted.
    Run {
        /// Folder of the pipeline's .sql files.
        #[arg(default_value = "sql")]
        dir: PathBuf,
        /// Configuration file.
        #[arg(long, short, default_value = "notiflow.toml", env = "NOTIFLOW_CONFIG")]
        config: PathBuf,
        /// Stop after this many milliseconds without a record (batch jobs, tests).
        #[arg(long)]
        exit_when_idle_ms: Option<u64>,
    },
    /// Deliver what the dispatch topics hold through the providers configured
    /// under [delivery], until interrupted.
    Deliver {
        #[arg(long, short, default_value = "notiflow.toml", env = "NOTIFLOW_CONFIG")]
        config: PathBuf,
        /// Stop after this many milliseconds without a record and nothing in progress.
        #[arg(long)]
        exit_when_idle_ms: Option<u64>,
    },
    /// The in-app inbox: its HTTP API, and tokens for its users.
    Inbox {
        #[command(subcommand)]
        action: InboxAction,
    },
    /// Receive providers' delivery reports (verified) into notify.receipts, until interrupted.
    Receipts {
        #[command(subcommand)]
        action: ReceiptsAction,
    },
    /// Load notify.deliveries and notify.events into ClickHouse ([clickhouse]) and the
    /// Parquet archive ([archive]), exactly once, until interrupted.
    Sink {
        #[arg(long, short, default_value = "notiflow.toml", env = "NOTIFLOW_CONFIG")]
        config: PathBuf,
        /// Only this destination: clickhouse or parquet.
        #[arg(long)]
        only: Option<String>,
        /// Flush and exit once nothing new arrived for this many ms (tests, backfills).
        #[arg(long)]
        exit_when_idle_ms: Option<u64>,
    },
    /// Run a report of dashboards/reports (no NAME: list them) against ClickHouse when
    /// [clickhouse] is set, else against the Parquet archive; print a table.
    Report {
        name: Option<String>,
        /// Only this tenant's rows.
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, short, env = "NOTIFLOW_CONFIG")]
        config: Option<PathBuf>,
        /// Folder of the report SQL files.
        #[arg(long, default_value = "dashboards/reports")]
        reports: PathBuf,
        /// Read this Parquet archive (instead of [archive] dir), e.g. a demo's `<data-dir>/archive`.
        #[arg(long)]
        archive: Option<PathBuf>,
    },
    /// Serve the built-in dashboard page (a chart and a table per report) until interrupted.
    Dashboard {
        #[arg(long, short, env = "NOTIFLOW_CONFIG")]
        config: Option<PathBuf>,
        /// Where the page listens (port 0: any free port, printed at start).
        #[arg(long, default_value = "127.0.0.1:8092")]
        listen: String,
        /// Folder of the report SQL files.
        #[arg(long, default_value = "dashboards/reports")]
        reports: PathBuf,
        /// Read this Parquet archive (instead of [archive] dir and ClickHouse).
        #[arg(long)]
        archive: Option<PathBuf>,
    },
    /// Parse and plan the pipeline in DIR (no I/O): errors name file:line.
    Validate {
        #[arg(default_value = "sql")]
        dir: PathBuf,
        #[arg(long, short, env = "NOTIFLOW_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print the operator graph of the pipeline in DIR.
    Explain {
        #[arg(default_value = "sql")]
        dir: PathBuf,
        #[arg(long, short, env = "NOTIFLOW_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run the golden tests beside the SQL stages in DIR.
    Test {
        #[arg(default_value = "sql")]
        dir: PathBuf,
        #[arg(long, short, env = "NOTIFLOW_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Create the topics the pipeline in DIR reads and writes (run does this too).
    Topics {
        #[arg(default_value = "sql")]
        dir: PathBuf,
        #[arg(long, short, default_value = "notiflow.toml", env = "NOTIFLOW_CONFIG")]
        config: PathBuf,
    },
    /// Measure throughput, latency and memory against a passthrough baseline
    /// in the same run (build with --release; see scripts/bench.sh).
    Bench {
        /// Kafka bootstrap servers for the broker cases (omit: compute-only cases).
        #[arg(long)]
        brokers: Option<String>,
        /// ClickHouse HTTP URL for the sink cases (rows/s into ClickHouse and Parquet vs a raw insert).
        #[arg(long)]
        clickhouse: Option<String>,
        /// Requests per case.
        #[arg(long, default_value_t = 300_000)]
        records: usize,
        /// Distinct keys for the dedupe operator cases.
        #[arg(long, default_value_t = 1_000_000)]
        dedupe_keys: usize,
        #[arg(long, default_value = "sql")]
        sql: PathBuf,
        /// Run only the cases whose name contains this text.
        #[arg(long)]
        only: Option<String>,
        /// Requests per second for the latency cases, comma-separated (one case each).
        #[arg(long = "rate", value_delimiter = ',', default_value = "10000,20000")]
        rates: Vec<usize>,
        /// Pipeline members (threads in one consumer group) for the whole-pipeline cases, comma-separated (one case each).
        #[arg(long = "workers", value_delimiter = ',', default_value = "1,2")]
        workers: Vec<usize>,
    },
    /// Templates on notify.templates: check and publish, or list.
    Template {
        #[command(subcommand)]
        action: CatalogAction,
    },
    /// Recipient profiles on notify.profiles: check and publish, or list.
    Profile {
        #[command(subcommand)]
        action: CatalogAction,
    },
    /// The tenant registry on notify.tenants: tenants, their API keys, allow-lists and quotas.
    Tenant {
        #[command(subcommand)]
        action: TenantAction,
    },
    /// The HTTP send API (POST /v1/send, /v1/send/batch, /v1/recall; GET /v1/messages/{id}).
    Gateway {
        #[command(subcommand)]
        action: GatewayAction,
    },
    /// Print one message's timeline from notify.events: ID is a message id
    /// (m_...), a delivery id (d_...) or tenant/request_id.
    Trace {
        id: String,
        #[arg(long, short, default_value = "notiflow.toml", env = "NOTIFLOW_CONFIG")]
        config: PathBuf,
        /// Print the events as JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Serve local stand-ins for the providers under [delivery] (twilio, smtp), each on the
    /// port of its provider's endpoint and checking its credentials, until interrupted.
    StandIns {
        #[arg(long, short, default_value = "notiflow.toml", env = "NOTIFLOW_CONFIG")]
        config: PathBuf,
        /// The address the stand-ins listen on (their ports come from the endpoints).
        #[arg(long, default_value = "0.0.0.0")]
        host: String,
    },
    /// Exit 0 when URL answers 2xx within the timeout (container health checks: the image has no curl).
    Probe {
        #[arg(default_value = "http://127.0.0.1:9464/readyz")]
        url: String,
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
    /// Check `key|json` lines (as produced with `kcat -K'|'`) against the contract.
    Check {
        /// File of `key|json` lines; `-` reads standard input.
        file: PathBuf,
        #[arg(long, short, env = "NOTIFLOW_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ReceiptsAction {
    /// Serve the callback endpoints configured under [receipts].
    Serve {
        #[arg(long, short, default_value = "notiflow.toml", env = "NOTIFLOW_CONFIG")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum InboxAction {
    /// Serve the inbox API (list, mark read, live SSE stream) over notify.inbox until interrupted.
    Serve {
        #[arg(long, short, default_value = "notiflow.toml", env = "NOTIFLOW_CONFIG")]
        config: PathBuf,
    },
    /// Print the token that opens USER's inbox of TENANT (give it to the user's app).
    Token {
        tenant: String,
        user: String,
        #[arg(long, short, default_value = "notiflow.toml", env = "NOTIFLOW_CONFIG")]
        config: PathBuf,
    },
}

/// Files to check and publish to a compacted topic, all or none.
#[derive(clap::Args)]
struct PutArgs {
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[arg(long, short, default_value = "notiflow.toml", env = "NOTIFLOW_CONFIG")]
    config: PathBuf,
    /// Only check; publish nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Subcommand)]
enum TenantAction {
    /// Check the `[[tenants]]` of TOML files and publish them all, or none when one is invalid
    /// (keys already minted for a tenant are kept).
    Put(PutArgs),
    /// Print the registry (key ids, never keys).
    List {
        #[arg(long, short, default_value = "notiflow.toml", env = "NOTIFLOW_CONFIG")]
        config: PathBuf,
    },
    /// Mint an API key for TENANT and print it once (only its hash is stored), or revoke one.
    Key {
        tenant: String,
        /// Names the key (to revoke it later).
        #[arg(long, default_value = "default")]
        id: String,
        /// Revoke the key named --id instead of minting.
        #[arg(long)]
        revoke: bool,
        #[arg(long, short, default_value = "notiflow.toml", env = "NOTIFLOW_CONFIG")]
        config: PathBuf,
    },
    /// Give every tenant its own ClickHouse database (its rows only, kept current) and a
    /// read-only analyst user allowed only that database; writes the users.d file.
    Analysts {
        /// The users.d XML to write (in the server's users.d folder).
        #[arg(long)]
        users_xml: PathBuf,
        /// Networks the analyst users may connect from.
        #[arg(long, default_value = "::/0")]
        networks: String,
        #[arg(long, short, default_value = "notiflow.toml", env = "NOTIFLOW_CONFIG")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum GatewayAction {
    /// Serve the API configured under [gateway] until interrupted.
    Serve {
        #[arg(long, short, default_value = "notiflow.toml", env = "NOTIFLOW_CONFIG")]
        config: PathBuf,
    },
    /// Print the OpenAPI document (docs/openapi.json is this output).
    Openapi,
}

#[derive(Subcommand)]
enum CatalogAction {
    /// Check every item of the files (a JSON object, an array or JSON lines;
    /// see examples/) and publish them all, or none when one is invalid.
    Put(PutArgs),
    /// Print what the topic holds (the latest record per key).
    List {
        #[arg(long, short, default_value = "notiflow.toml", env = "NOTIFLOW_CONFIG")]
        config: PathBuf,
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
}

/// Which catalog a `template`/`profile` command works on.
#[derive(Clone, Copy)]
enum Catalog {
    Templates,
    Profiles,
}

impl Catalog {
    fn topic(self) -> &'static str {
        match self {
            Catalog::Templates => "notify.templates",
            Catalog::Profiles => "notify.profiles",
        }
    }
}

/// The engine allocates per row (strings, arrays, records): mimalloc does that
/// faster than glibc's malloc (measured in docs/performance.md). UDF argument
/// blocks still come from the system allocator (engine/udf.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,rdkafka=warn".into());
    // Colours only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if std::env::var("NOTIFLOW_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// What every long-running command does first: /metrics, /healthz and /readyz, and a bounded stop.
async fn long_running(config: &Config, command: &str) -> anyhow::Result<()> {
    notiflow::metrics_http::serve_for(config, command).await?;
    notiflow::shutdown::bound(Duration::from_millis(config.shutdown.deadline_ms));
    Ok(())
}

fn config_or_embedded(path: Option<&Path>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(path) => Config::load(path)?,
        None => Config::embedded(),
    })
}

/// The config reports read; `--archive` points them at a Parquet archive instead of ClickHouse.
fn reports_config(path: Option<&Path>, archive: Option<PathBuf>) -> anyhow::Result<Config> {
    let mut config = config_or_embedded(path)?;
    if let Some(archive) = archive {
        config.archive.dir = archive;
        config.clickhouse = None;
    }
    Ok(config)
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Demo { sql, requests, malformed_every, data_dir, reports } => {
            let options = notiflow::demo::DemoOptions { sql_dir: sql, reports_dir: reports, requests, malformed_every, data_dir };
            let outcome = notiflow::demo::run(&options).await?;
            println!(
                "notiflow demo (embedded default: in-process topics, Parquet archive at {})",
                options.data_dir.join("archive").display()
            );
            print_totals(&outcome.totals);
            let t = &outcome.delivery;
            println!(
                "delivered to the stand-ins and the inbox: {} read, {} sent, {} failed, {} not sendable (dead-lettered)",
                t.read, t.accepted, t.failed, t.not_sendable
            );
            println!("delivery reports received: {}; deliveries joined to their outcome and archived: {}", outcome.receipts, outcome.archived_deliveries);
            println!("lifecycle events archived: {}", outcome.archived_events);
            println!("{}", outcome.summary);
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { dir, config, exit_when_idle_ms } => {
            let config = Config::load(&config)?;
            let totals = run_on_kafka(&dir, &config, exit_when_idle_ms.map(Duration::from_millis)).await?;
            print_totals(&totals);
            Ok(ExitCode::SUCCESS)
        }
        Command::Deliver { config, exit_when_idle_ms } => {
            let config = Config::load(&config)?;
            long_running(&config, "deliver").await?;
            let kafka = config.kafka.as_ref().ok_or_else(no_kafka)?;
            let idle = exit_when_idle_ms.map(Duration::from_millis);
            let t = notiflow::outage::restart_after_outages("deliver", kafka, &notiflow::shutdown::flag(), || notiflow::deliver::run(&config, idle)).await?;
            println!(
                "delivery: {} read, {} sent, {} failed, {} attempts, {} not sendable (dead-lettered), {} recalls, {} parked",
                t.read, t.accepted, t.failed, t.attempts, t.not_sendable, t.recalls, t.parked
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Sink { config, only, exit_when_idle_ms } => {
            let config = Config::load(&config)?;
            long_running(&config, "sink").await?;
            let kafka = config.kafka.as_ref().ok_or_else(no_kafka)?;
            let idle = exit_when_idle_ms.map(Duration::from_millis);
            let restart = || notiflow::warehouse::run(&config, only.as_deref(), idle);
            let totals = notiflow::outage::restart_after_outages("sink", kafka, &notiflow::shutdown::flag(), restart).await?;
            for (destination, t) in totals {
                println!("sink {destination}: {} rows written, {} records not decodable (skipped)", t.rows, t.undecodable);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::StandIns { config, host } => {
            let config = Config::load(&config)?;
            long_running(&config, "stand-ins").await?;
            notiflow::stand_ins::serve(&config, &host).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Probe { url, timeout_ms } => {
            let client = reqwest::Client::builder().timeout(Duration::from_millis(timeout_ms)).build()?;
            match client.get(&url).send().await {
                Ok(answer) if answer.status().is_success() => Ok(ExitCode::SUCCESS),
                Ok(answer) => {
                    eprintln!("{url}: {}", answer.status());
                    Ok(ExitCode::FAILURE)
                }
                Err(e) => {
                    eprintln!("{url}: {e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Dashboard { config, listen, reports, archive } => {
            let config = reports_config(config.as_deref(), archive)?;
            notiflow::dashboard::serve(config, reports, &listen).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Report { name, tenant, config, reports, archive } => {
            let config = reports_config(config.as_deref(), archive)?;
            match name {
                None => {
                    for report in notiflow::report::list(&reports)? {
                        println!("{:<24} {}", report.name, report.title);
                    }
                }
                Some(name) => {
                    let report = notiflow::report::load(&reports, &name)?;
                    print!("{}", notiflow::report::run(&config, &report, tenant.as_deref()).await?.render());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Receipts { action: ReceiptsAction::Serve { config } } => {
            let config = Config::load(&config)?;
            long_running(&config, "receipts serve").await?;
            notiflow::receipts::serve(&config).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Inbox { action: InboxAction::Serve { config } } => {
            let config = Config::load(&config)?;
            long_running(&config, "inbox serve").await?;
            notiflow::inbox::serve(&config).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Inbox { action: InboxAction::Token { tenant, user, config } } => {
            println!("{}", notiflow::inbox::token(&Config::load(&config)?, &tenant, &user)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { dir, config } => {
            let config = config_or_embedded(config.as_deref())?;
            let run = notiflow::load_pipeline(&dir, &config).await?;
            let p = &run.pipeline;
            println!("{}: ok ({} sources, {} sinks, {} flows)", dir.display(), p.sources.len(), p.sinks.len(), p.flows.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain { dir, config } => {
            let config = config_or_embedded(config.as_deref())?;
            let run = notiflow::load_pipeline(&dir, &config).await?;
            print!("{}", notiflow::engine::explain(&run.pipeline));
            Ok(ExitCode::SUCCESS)
        }
        Command::Test { dir, config } => {
            let config = config_or_embedded(config.as_deref())?;
            let results = notiflow::golden::run_dir(&dir, &config).await?;
            let failed = results.iter().filter(|r| !r.failures.is_empty()).count();
            for result in &results {
                if result.failures.is_empty() {
                    println!("golden {} ... ok", result.name);
                } else {
                    println!("golden {} ... FAILED", result.name);
                    result.failures.iter().for_each(|f| println!("    {f}"));
                }
            }
            println!("{} passed, {failed} failed", results.len() - failed);
            Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Topics { dir, config } => {
            let config = Config::load(&config)?;
            let kafka = config.kafka.as_ref().ok_or_else(no_kafka)?;
            let run = notiflow::load_pipeline(&dir, &config).await?;
            let specs = notiflow::topic_specs(&run, &config);
            KafkaAdmin::new(kafka)?.ensure_topics(&specs).await?;
            println!("topics ready: {}", specs.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", "));
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { brokers, clickhouse, records, dedupe_keys, sql, only, rates, workers } => {
            let options = notiflow::bench::BenchOptions { only, rates, brokers, clickhouse, records, dedupe_keys, sql_dir: sql, workers };
            let results = notiflow::bench::run(&options).await?;
            println!("{}", notiflow::bench::render(&results));
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { file, config } => check(&file, config_or_embedded(config.as_deref())?),
        Command::Template { action } => catalog(Catalog::Templates, action).await,
        Command::Profile { action } => catalog(Catalog::Profiles, action).await,
        Command::Tenant { action } => tenant(action).await,
        Command::Gateway { action: GatewayAction::Serve { config } } => {
            let config = Config::load(&config)?;
            long_running(&config, "gateway serve").await?;
            notiflow::gateway::serve(&config).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Gateway { action: GatewayAction::Openapi } => {
            println!("{}", serde_json::to_string_pretty(&notiflow::gateway::openapi_document())?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Trace { id, config, json } => trace(&id, &Config::load(&config)?, json).await,
    }
}

async fn tenant(action: TenantAction) -> anyhow::Result<ExitCode> {
    use notiflow::tenants::admin;
    match action {
        TenantAction::Put(PutArgs { files, config, dry_run }) => {
            admin::put(&Config::load(&config)?, &files, dry_run).await?.iter().for_each(|line| println!("{line}"));
        }
        TenantAction::List { config } => {
            admin::read(&Config::load(&config)?).await?.values().for_each(|t| println!("{}", admin::describe(t)));
        }
        TenantAction::Key { tenant, id, revoke: true, config } => {
            admin::revoke(&Config::load(&config)?, &tenant, &id).await?;
            println!("revoked key {id} of {tenant}");
        }
        TenantAction::Analysts { users_xml, networks, config } => {
            let lines = notiflow::warehouse::analysts::provision(&Config::load(&config)?, &users_xml, &networks).await?;
            lines.iter().for_each(|line| eprintln!("{line}"));
            println!("wrote {}", users_xml.display());
        }
        TenantAction::Key { tenant, id, revoke: false, config } => {
            let key = admin::mint(&Config::load(&config)?, &tenant, &id).await?;
            eprintln!("key {id} of {tenant} (shown once; only its hash is stored):");
            println!("{key}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn trace(id: &str, config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    use notiflow::trace::{TraceId, render, timeline};
    use notiflow_connector::LogReader;
    let id = TraceId::parse(id)?;
    let kafka = config.kafka.as_ref().ok_or_else(no_kafka)?;
    let topic = config.topics.resolve(&config.topics.events);
    let reader = KafkaReader::new(kafka);
    let mut events = Vec::new();
    for (partition, _) in reader.end_offsets(&topic).await? {
        let records = reader.read_from(&topic, partition, 0).await?;
        events.extend(records.iter().filter_map(|r| serde_json::from_slice::<serde_json::Value>(r.payload.as_deref()?).ok()));
    }
    let events = timeline(events, &id);
    if events.is_empty() {
        eprintln!("no events for {id:?} on {topic}");
        return Ok(ExitCode::FAILURE);
    }
    if json {
        events.iter().for_each(|e| println!("{e}"));
    } else {
        print!("{}", render(&events));
    }
    Ok(ExitCode::SUCCESS)
}

async fn catalog(which: Catalog, action: CatalogAction) -> anyhow::Result<ExitCode> {
    use notiflow::catalog;
    use notiflow_connector::{LogReader, Sink, TopicSpec};
    match action {
        CatalogAction::Put(PutArgs { files, config, dry_run }) => {
            let config = Config::load(&config)?;
            let tenants: Vec<String> = config.tenants.iter().map(|t| t.id.clone()).collect();
            let mut records = Vec::new();
            for file in &files {
                records.extend(match which {
                    Catalog::Templates => catalog::template_records(&catalog::read_items(file)?, &tenants)?,
                    Catalog::Profiles => catalog::profile_records(&catalog::read_items(file)?, &tenants)?,
                });
            }
            let topic = config.topics.resolve(which.topic());
            if dry_run {
                println!("{} valid, nothing published (--dry-run)", records.len());
                return Ok(ExitCode::SUCCESS);
            }
            let kafka = config.kafka.as_ref().ok_or_else(no_kafka)?;
            let spec = TopicSpec { compacted: true, ..TopicSpec::new(topic.clone(), config.topics.partitions) };
            KafkaAdmin::new(kafka)?.ensure_topics(&[spec]).await?;
            let topic_name: std::sync::Arc<str> = std::sync::Arc::from(topic.as_str());
            let keys: Vec<String> = records.iter().map(|r| r.key.clone()).collect();
            let out = records.into_iter().map(|r| r.into_out(&topic_name)).collect();
            KafkaSink::new(kafka)?.send_all(out).await?;
            keys.iter().for_each(|k| println!("published {topic} {k}"));
            Ok(ExitCode::SUCCESS)
        }
        CatalogAction::List { config, tenant } => {
            let config = Config::load(&config)?;
            let kafka = config.kafka.as_ref().ok_or_else(no_kafka)?;
            let topic = config.topics.resolve(which.topic());
            let reader = KafkaReader::new(kafka);
            let mut records = Vec::new();
            for (partition, _) in reader.end_offsets(&topic).await? {
                records.extend(reader.read_from(&topic, partition, 0).await?);
            }
            let mine = |key: &str| tenant.as_ref().is_none_or(|t| key.starts_with(&format!("{t}/")));
            for (key, value) in catalog::latest_per_key(&records).into_iter().filter(|(k, _)| mine(k)) {
                match which {
                    Catalog::Templates => println!(
                        "{key}\tversion {}\t{}\tchannels {}",
                        value["version"], value["status"].as_str().unwrap_or("?"), value["channels"]
                    ),
                    Catalog::Profiles => println!(
                        "{key}\tchannels {}\ttimezone {}",
                        value["addresses"].as_object().map(|a| a.keys().cloned().collect::<Vec<_>>().join(",")).unwrap_or_default(),
                        value["timezone"].as_str().unwrap_or("UTC")
                    ),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn no_kafka() -> anyhow::Error {
    anyhow::anyhow!("the configuration has no [kafka] section; `notiflow demo` runs the embedded default")
}

async fn run_on_kafka(dir: &Path, config: &Config, idle: Option<Duration>) -> anyhow::Result<RunTotals> {
    let kafka = config.kafka.as_ref().ok_or_else(no_kafka)?;
    // Tenants registered on notify.tenants may send as well as those of the config, from the
    // moment they are registered (followed live, like the gateway and deliver do).
    let tenants_topic = config.topics.resolve(notiflow::tenants::TENANTS_TOPIC);
    let start_up = || async {
        KafkaAdmin::new(kafka)?.ensure_topics(&[notiflow_connector::TopicSpec { compacted: true, ..notiflow_connector::TopicSpec::new(&tenants_topic, 1) }]).await?;
        let registry = notiflow::tenants::Registry::follow(kafka, &tenants_topic).await?;
        // Checked (file:line errors) and its topics created once, before the members start.
        let probe = notiflow::load_pipeline_with(dir, config, Some(registry.clone())).await?;
        KafkaAdmin::new(kafka)?.ensure_topics(&notiflow::topic_specs(&probe, config)).await?;
        anyhow::Ok((registry, probe.stream_topics(), notiflow::group_id(&probe, config)))
    };
    // Brokers not up yet (a whole stack starting at once) are waited for; bad SQL or settings end the command.
    let (registry, topics, group) = notiflow::outage::restart_after_outages("run", kafka, &notiflow::shutdown::flag(), start_up).await?;
    let registry = &registry;
    long_running(config, "run").await?;
    let (stop_tx, shutdown) = watch::channel(false);
    let stop_tx = std::sync::Arc::new(stop_tx);
    let on_interrupt = stop_tx.clone();
    tokio::spawn(async move {
        notiflow::shutdown::requested().await;
        tracing::info!("stop requested: finishing the current batch");
        on_interrupt.send_replace(true);
    });
    let workers = config.pipeline.workers;
    // Idle means idle for the whole group: one member may wait while another still writes to its partitions.
    let stop = match idle {
        Some(idle) => StopWhen::GroupIdleFor(idle, Default::default()),
        None => StopWhen::Shutdown,
    };
    tracing::info!(pipeline = %dir.display(), ?topics, %group, workers, "pipeline running");
    let members = tokio::task::block_in_place(|| {
        notiflow::workers::on_threads(workers, "pipeline", &stop_tx, |member| {
            let (stop, shutdown) = (stop.clone(), shutdown.clone());
            async move {
                // A member outlives broker outages: it starts again from its checkpoint when the brokers answer.
                let job = format!("pipeline member {member}");
                notiflow::outage::restart_after_outages(&job, kafka, &shutdown, || run_member(dir, config, registry, member, stop.clone(), shutdown.clone())).await
            }
        })
    })?;
    if workers > 1 {
        let each: Vec<String> = members.iter().map(|(t, _)| t.records_in.to_string()).collect();
        println!("members: {workers}, records in each: {}", each.join(", "));
    }
    let mut totals = RunTotals::default();
    let mut recovery = MemberReport::default();
    for (member_totals, report) in members {
        totals.records_in += member_totals.records_in;
        totals.batches += member_totals.batches;
        for (sink, n) in member_totals.dispatched {
            *totals.dispatched.entry(sink).or_default() += n;
        }
        for (reason, n) in member_totals.dead_lettered {
            *totals.dead_lettered.entry(reason).or_default() += n;
        }
        recovery.add(report);
    }
    recovery.print();
    Ok(totals)
}

/// One member of the pipeline's consumer group: its own plans, lookup tables,
/// state, consumer and producer (see `notiflow::workers`).
async fn run_member(
    dir: &Path,
    config: &Config,
    registry: &notiflow::tenants::Registry,
    member: usize,
    stop: StopWhen,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(RunTotals, MemberReport)> {
    let mut kafka = config.kafka.clone().ok_or_else(no_kafka)?;
    // Static membership: each member of this process is its own group member.
    if let Some(id) = kafka.properties.get_mut("group.instance.id").filter(|_| member > 0) {
        id.push_str(&format!("-{member}"));
    }
    let kafka = &kafka;
    let mut run = notiflow::load_pipeline_with(dir, config, Some(registry.clone())).await?;
    let topics = run.stream_topics();
    let group = notiflow::group_id(&run, config);
    let lookups = run.prepare(&KafkaReader::new(kafka)).await?;
    notiflow::checkpoint_on_kafka(&mut run, config, kafka).await?;
    let start = run.pipeline.sources.first().map(|s| s.kafka.start_offset.as_str()).unwrap_or("earliest");
    let mut source = KafkaSource::new(kafka, &group, &topics.iter().map(String::as_str).collect::<Vec<_>>(), start)?.follow(kafka, &lookups)?;
    let sink = KafkaSink::patient(kafka)?;
    notiflow::metrics_http::mark_ready();
    let (records_in, batches) = run_job(&mut run, &mut source, &sink, notiflow::batch_limits(config), stop, shutdown).await?;
    let report = MemberReport {
        gap_records: run.gap_records,
        restored_partitions: run.restored_partitions,
        held: run.held().0,
        next_due: run.held().1,
        skipped: run.skipped,
        suppressed: run.suppressed,
    };
    let totals = RunTotals { records_in, batches, ..std::mem::take(&mut run.totals) };
    Ok((totals, report))
}

/// What a member's run says about recovery and held records, summed over members.
#[derive(Default)]
struct MemberReport {
    gap_records: u64,
    restored_partitions: u64,
    held: usize,
    next_due: Option<i64>,
    skipped: u64,
    suppressed: u64,
}

impl MemberReport {
    fn add(&mut self, other: MemberReport) {
        self.gap_records += other.gap_records;
        self.restored_partitions += other.restored_partitions;
        self.held += other.held;
        self.next_due = self.next_due.into_iter().chain(other.next_due).min();
        self.skipped += other.skipped;
        self.suppressed += other.suppressed;
    }

    fn print(&self) {
        if self.gap_records > 0 {
            println!("WARNING: the broker skipped {} offsets of the source topics (records never delivered)", self.gap_records);
        }
        if self.restored_partitions > 0 {
            println!("restored state of {} partitions from checkpoints", self.restored_partitions);
        }
        if let Some(next_due) = self.next_due {
            let next = chrono::DateTime::from_timestamp_millis(next_due).map(|t| t.to_rfc3339()).unwrap_or_default();
            println!("held for later: {} records (saved in the checkpoint; next due {next})", self.held);
        }
        if self.skipped + self.suppressed > 0 {
            println!("recovery: {} records already in the checkpoint skipped, {} outputs already written suppressed", self.skipped, self.suppressed);
        }
    }
}

fn print_totals(totals: &RunTotals) {
    println!("records in: {} in {} batches", totals.records_in, totals.batches);
    for (sink, n) in &totals.dispatched {
        println!("  written to {sink}: {n}");
    }
    for (reason, n) in &totals.dead_lettered {
        println!("  dead-lettered ({reason}): {n}");
    }
}

fn check(file: &Path, config: Config) -> anyhow::Result<ExitCode> {
    let text = if file.as_os_str() == "-" { std::io::read_to_string(std::io::stdin())? } else { std::fs::read_to_string(file)? };
    let contract =
        notiflow::contract::Contract::new(config.tenants.iter().map(|t| t.id.clone()), config.pipeline.max_request_bytes);
    let mut bad = 0;
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let (key, value) = line.split_once('|').unwrap_or(("", line));
        if let Err(rejection) = contract.check(Some(key.as_bytes()), Some(value.as_bytes())) {
            bad += 1;
            println!("{}:{}: {}: {}", file.display(), n + 1, rejection.reason, rejection.error);
        }
    }
    println!("{bad} rejected");
    Ok(if bad == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
