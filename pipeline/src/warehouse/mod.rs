//! `notiflow sink`: `notify.deliveries` and `notify.events` into ClickHouse
//! (when `[clickhouse]` is set) and the Parquet archive (`[archive]`), each
//! exactly once.
//!
//! Each destination keeps its own progress with its data, not in a consumer
//! group: ClickHouse rows carry their Kafka partition and offset (the table
//! says how far each partition got), Parquet files are committed with a
//! manifest holding the offsets they cover. Each destination reads the
//! topics from where its data ends, so a restart (or a crash at any point)
//! neither loses nor repeats a row. Run one `notiflow sink` per destination
//! set (two would both insert).

pub mod analysts;
pub mod bench;
pub mod dataset;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, TimeZone, Utc};
use notiflow_clickhouse::{ClickHouseConfig, TableSink, apply_ddl};
use notiflow_connector::{BatchLimits, LogReader, Source};
use notiflow_kafka::{KafkaReader, KafkaSource};
use notiflow_parquet::DatasetArchive;

pub use dataset::{DATASETS, DELIVERIES, Dataset, EVENTS, Row};

use crate::config::Config;

/// The DDL `notiflow sink` applies when `create_tables` is on (also mounted by docker-compose).
pub const DDL: [(&str, &str); 2] = [
    ("001_events.sql", include_str!("../../../dashboards/clickhouse/ddl/001_events.sql")),
    ("002_deliveries.sql", include_str!("../../../dashboards/clickhouse/ddl/002_deliveries.sql")),
];

/// Where rows go, and how it remembers how far it got.
enum Writer {
    ClickHouse(Vec<TableSink>, u32),
    Parquet(Vec<DatasetArchive>),
}

impl Writer {
    fn name(&self) -> &'static str {
        match self {
            Writer::ClickHouse(..) => "clickhouse",
            Writer::Parquet(_) => "parquet",
        }
    }

    fn next_offsets(&self, index: usize) -> &BTreeMap<i32, i64> {
        match self {
            Writer::ClickHouse(sinks, _) => sinks[index].next_offsets(),
            Writer::Parquet(archives) => archives[index].next_offsets(),
        }
    }

    /// Makes `rows` of dataset `index` durable, with `upto` (next offsets after them).
    async fn flush(&mut self, index: usize, rows: &[Row], upto: &BTreeMap<i32, i64>) -> anyhow::Result<()> {
        let dataset = DATASETS[index];
        match self {
            Writer::ClickHouse(sinks, attempts) => {
                let prepared: Vec<_> = rows.iter().map(|r| dataset.prepare(r)).collect();
                sinks[index].write(&prepared, *attempts).await?;
            }
            Writer::Parquet(archives) => {
                let mut by_hour: BTreeMap<i64, Vec<&Row>> = BTreeMap::new();
                for row in rows {
                    by_hour.entry(row.time_ms.div_euclid(3_600_000)).or_default().push(row);
                }
                let groups: Vec<(DateTime<Utc>, Vec<_>)> = by_hour
                    .into_iter()
                    .map(|(hour, rows)| (Utc.timestamp_millis_opt(hour * 3_600_000).single().expect("hour in range"), vec![dataset.to_batch(&rows)]))
                    .collect();
                archives[index].commit(&groups, upto).await?;
            }
        }
        Ok(())
    }
}

/// When to flush.
#[derive(Debug, Clone, Copy)]
struct Policy {
    rows: usize,
    bytes: usize,
    interval: Duration,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SinkTotals {
    pub rows: u64,
    pub undecodable: u64,
}

/// Opens the configured destinations and runs them until interrupted, or
/// (with `until_idle`) until nothing new arrived for that long.
pub async fn run(config: &Config, only: Option<&str>, until_idle: Option<Duration>) -> anyhow::Result<Vec<(&'static str, SinkTotals)>> {
    let kafka = config.kafka.as_ref().context("notiflow sink needs [kafka] in the config")?;
    anyhow::ensure!(
        config.archive.parquet_compression == "zstd",
        "[archive] parquet_compression = {:?}: only \"zstd\" is supported",
        config.archive.parquet_compression
    );
    let mut writers = Vec::new();
    if only.is_none_or(|o| o == "clickhouse") {
        if let Some(clickhouse) = &config.clickhouse {
            writers.push((open_clickhouse(clickhouse).await?, Policy {
                rows: clickhouse.batch_rows.max(1),
                bytes: usize::MAX,
                interval: Duration::from_millis(clickhouse.batch_interval_ms),
            }));
        } else if only.is_some() {
            anyhow::bail!("--only clickhouse needs [clickhouse] in the config");
        }
    }
    if only.is_none_or(|o| o == "parquet") {
        let location = config.archive.location()?;
        let mut archives = Vec::new();
        for dataset in DATASETS {
            archives.push(DatasetArchive::open(&location, dataset.name, 3).await?);
        }
        writers.push((Writer::Parquet(archives), Policy {
            rows: usize::MAX,
            bytes: config.archive.target_file_size.max(1),
            interval: Duration::from_secs(config.archive.rollover_seconds),
        }));
    }
    anyhow::ensure!(!writers.is_empty(), "--only must be clickhouse or parquet");
    let topics: Vec<String> = DATASETS.iter().map(|d| config.topics.resolve(d.topic)).collect();
    let reader = KafkaReader::new(kafka);
    let mut partitions = Vec::new();
    for topic in &topics {
        partitions.push(reader.end_offsets(topic).await.with_context(|| format!("partitions of {topic}"))?.into_iter().map(|(p, _)| p).collect::<Vec<_>>());
    }
    let limits = crate::batch_limits(config);
    let runs = writers.into_iter().map(|(writer, policy)| {
        let starts: Vec<(String, i32, i64)> = topics
            .iter()
            .enumerate()
            .flat_map(|(index, topic)| {
                let next = writer.next_offsets(index).clone();
                partitions[index].iter().map(move |p| (topic.clone(), *p, next.get(p).copied().unwrap_or(0)))
            })
            .collect();
        let topics = topics.clone();
        async move {
            let name = writer.name();
            let source = KafkaSource::assigned(kafka, &starts)?;
            crate::metrics_http::mark_ready();
            let totals = drain(source, writer, &topics, policy, limits, until_idle).await.with_context(|| format!("sink {name}"))?;
            anyhow::Ok((name, totals))
        }
    });
    futures::future::try_join_all(runs).await
}

async fn open_clickhouse(config: &ClickHouseConfig) -> anyhow::Result<Writer> {
    let client = config.client()?;
    if config.create_tables {
        for (file, sql) in DDL {
            apply_ddl(&client, file, sql).await?;
        }
    }
    let mut sinks = Vec::new();
    for dataset in DATASETS {
        let columns = dataset.clickhouse_columns();
        sinks.push(TableSink::open(client.clone(), &config.database, dataset.table, &columns).await?);
    }
    Ok(Writer::ClickHouse(sinks, config.max_attempts.max(1)))
}

/// Per dataset: rows read and not yet flushed.
#[derive(Default)]
struct Buffer {
    rows: Vec<Row>,
    bytes: usize,
    /// Next offset per partition after everything read (rows and undecodable records).
    upto: BTreeMap<i32, i64>,
    since: Option<Instant>,
}

async fn drain(
    mut source: KafkaSource,
    mut writer: Writer,
    topics: &[String],
    policy: Policy,
    limits: BatchLimits,
    until_idle: Option<Duration>,
) -> anyhow::Result<SinkTotals> {
    let mut buffers: Vec<Buffer> = DATASETS.iter().map(|_| Buffer::default()).collect();
    let mut totals = SinkTotals::default();
    let mut last_record = Instant::now();
    let stop_requested = crate::shutdown::requested();
    tokio::pin!(stop_requested);
    let mut interrupted = false;
    loop {
        let batch = tokio::select! {
            batch = source.next_batch(limits) => batch?,
            _ = &mut stop_requested, if !interrupted => { interrupted = true; Vec::new() }
        };
        // Interrupted or idle: flush what is buffered and stop.
        let stop = interrupted || (batch.is_empty() && until_idle.is_some_and(|idle| last_record.elapsed() >= idle));
        if !batch.is_empty() {
            last_record = Instant::now();
        }
        for record in &batch {
            let Some(index) = topics.iter().position(|t| **t == *record.topic) else { continue };
            let buffer = &mut buffers[index];
            buffer.upto.insert(record.partition, record.offset + 1);
            buffer.since.get_or_insert_with(Instant::now);
            match DATASETS[index].decode(record) {
                Ok(row) => {
                    buffer.bytes += record.payload.as_ref().map_or(0, Vec::len);
                    buffer.rows.push(row);
                }
                Err(why) => {
                    totals.undecodable += 1;
                    metrics::counter!("notiflow_sink_undecodable_total", "topic" => topics[index].clone()).increment(1);
                    tracing::warn!(topic = %record.topic, partition = record.partition, offset = record.offset, %why, "record skipped");
                }
            }
        }
        for (index, buffer) in buffers.iter_mut().enumerate() {
            let due = buffer.rows.len() >= policy.rows || buffer.bytes >= policy.bytes || buffer.since.is_some_and(|s| s.elapsed() >= policy.interval);
            if buffer.since.is_some() && (due || stop) {
                writer.flush(index, &buffer.rows, &buffer.upto).await?;
                totals.rows += buffer.rows.len() as u64;
                *buffer = Buffer::default();
            }
        }
        if stop {
            return Ok(totals);
        }
    }
}
