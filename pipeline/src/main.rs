use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use notiflow::config::Config;
use notiflow::job::{RunTotals, StopWhen, run_validate_route};
use notiflow_connector::TopicAdmin;
use notiflow_kafka::{KafkaAdmin, KafkaSink, KafkaSource};
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
    /// in, validated and routed, events archived to Parquet, summary out.
    Demo {
        /// How many requests to generate.
        #[arg(long, default_value_t = 2000)]
        requests: usize,
        /// One in this many generated records is malformed (0: none).
        #[arg(long, default_value_t = 50)]
        malformed_every: usize,
        /// The demo's folder; its archive is replaced on every run.
        #[arg(long, default_value = "notiflow-data/demo")]
        data_dir: PathBuf,
    },
    /// Run the request pipeline against Kafka until interrupted.
    Run {
        /// Configuration file.
        #[arg(long, short, default_value = "notiflow.toml", env = "NOTIFLOW_CONFIG")]
        config: PathBuf,
        /// Stop after this many milliseconds without a record (batch jobs, tests).
        #[arg(long)]
        exit_when_idle_ms: Option<u64>,
    },
    /// Create the pipeline's topics (run also does this at start).
    Topics {
        #[arg(long, short, default_value = "notiflow.toml", env = "NOTIFLOW_CONFIG")]
        config: PathBuf,
    },
    /// Check `key|json` lines (as produced with `kcat -K'|'`) against the contract.
    Check {
        /// File of `key|json` lines; `-` reads standard input.
        file: PathBuf,
        #[arg(long, short, env = "NOTIFLOW_CONFIG")]
        config: Option<PathBuf>,
    },
}

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
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var("NOTIFLOW_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Demo { requests, malformed_every, data_dir } => {
            let options = notiflow::demo::DemoOptions { requests, malformed_every, data_dir };
            let outcome = notiflow::demo::run(&options).await?;
            println!("notiflow demo (embedded default: in-process topics, Parquet archive at {})", options.data_dir.join("archive").display());
            print_totals(&outcome.totals);
            println!("lifecycle events archived: {}", outcome.archived_events);
            println!("{}", outcome.summary);
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { config, exit_when_idle_ms } => {
            let config = Config::load(&config)?;
            let totals = run_on_kafka(&config, exit_when_idle_ms.map(Duration::from_millis)).await?;
            print_totals(&totals);
            Ok(ExitCode::SUCCESS)
        }
        Command::Topics { config } => {
            let config = Config::load(&config)?;
            let kafka = config.kafka.as_ref().ok_or_else(no_kafka)?;
            KafkaAdmin::new(kafka)?.ensure_topics(&notiflow::topic_specs(&config)).await?;
            println!("topics ready: {}", notiflow::topic_specs(&config).iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", "));
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { file, config } => check(&file, config),
    }
}

fn no_kafka() -> anyhow::Error {
    anyhow::anyhow!("the configuration has no [kafka] section; `notiflow demo` runs the embedded default")
}

async fn run_on_kafka(config: &Config, idle: Option<Duration>) -> anyhow::Result<RunTotals> {
    let kafka = config.kafka.as_ref().ok_or_else(no_kafka)?;
    let handle = notiflow::metrics_http::recorder();
    if !config.metrics.listen.is_empty() {
        let addr = notiflow::metrics_http::serve(&config.metrics.listen, handle).await?;
        tracing::info!(%addr, "metrics at /metrics");
    }
    KafkaAdmin::new(kafka)?.ensure_topics(&notiflow::topic_specs(config)).await?;
    let mut source = KafkaSource::new(kafka, &config.pipeline.group_id, &[&config.topics.requests], "earliest")?;
    let sink = KafkaSink::new(kafka)?;
    let (stop_tx, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("interrupt: finishing the current batch");
            let _ = stop_tx.send(true);
        }
    });
    let stage = notiflow::validate_route_stage(config);
    let stop = idle.map(StopWhen::IdleFor).unwrap_or(StopWhen::Shutdown);
    tracing::info!(topic = %config.topics.requests, group = %config.pipeline.group_id, "request pipeline running");
    run_validate_route(&stage, &mut source, &sink, notiflow::batch_limits(config), stop, shutdown).await
}

fn print_totals(totals: &RunTotals) {
    println!("records in: {} in {} batches", totals.records_in, totals.batches);
    for (topic, n) in &totals.dispatched {
        println!("  dispatched to {topic}: {n}");
    }
    for (reason, n) in &totals.dead_lettered {
        println!("  dead-lettered ({reason}): {n}");
    }
}

fn check(file: &PathBuf, config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = match config {
        Some(path) => Config::load(&path)?,
        None => Config::embedded(),
    };
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(file)?
    };
    let contract = notiflow::contract::Contract::new(config.tenants.iter().map(|t| t.id.clone()), config.pipeline.max_request_bytes);
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
