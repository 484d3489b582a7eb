//! `notiflow bench --only sink: --clickhouse URL`: delivery rows per second
//! into ClickHouse and into Parquet the way `notiflow sink` writes them
//! (from the JSON records of notify.deliveries: decode, RowBinary inserts
//! of 10,000 rows / Arrow + zstd files with a manifest), against a raw
//! `clickhouse` crate insert (typed RowBinary, rows built beforehand) of the
//! same rows into the same table definition, in the same run. The Kafka read
//! is not included (see the broker cases for that).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use clickhouse::Row;
use notiflow_clickhouse::{ClickHouseConfig, TableSink, apply_ddl};
use notiflow_connector::Record;
use notiflow_parquet::{ArchiveLocation, DatasetArchive};
use serde::Serialize;

use super::{DDL, DELIVERIES};
use crate::bench::CaseResult;

const BATCH: usize = 10_000;

#[derive(Row, Serialize)]
struct RawDelivery {
    sent_at: u32,
    delivery_id: String,
    message_id: String,
    request_id: String,
    tenant: String,
    priority: String,
    category: String,
    channel: String,
    provider: String,
    provider_message_id: String,
    state: String,
    reason: String,
    attempts: i64,
    requested_at: Option<u32>,
    outcome_at: Option<u32>,
    send_latency_ms: Option<f64>,
    delivery_latency_ms: Option<f64>,
    kafka_partition: u32,
    kafka_offset: u64,
}

fn sample(i: usize, base_s: i64) -> (Record, RawDelivery) {
    let sent = base_s + (i / 100) as i64;
    let state = if i % 20 == 0 { "failed" } else { "delivered" };
    let ts = |s: i64| chrono::DateTime::from_timestamp(s, 0).expect("in range").format("%Y-%m-%dT%H:%M:%S%.3f").to_string();
    let raw = RawDelivery {
        sent_at: sent as u32,
        delivery_id: format!("d_{i:032x}"),
        message_id: format!("m_{:032x}", i / 2),
        request_id: format!("r-{}", i / 2),
        tenant: ["acme", "globex", "initech"][i % 3].into(),
        priority: "normal".into(),
        category: "transactional".into(),
        channel: "sms".into(),
        provider: ["sms-twilio", "sms-aliyun"][i % 2].into(),
        provider_message_id: format!("SM{i:032x}"),
        state: state.into(),
        reason: if state == "failed" { "30003".into() } else { String::new() },
        attempts: 1,
        requested_at: Some(sent as u32 - 1),
        outcome_at: Some(sent as u32 + 3),
        send_latency_ms: Some(850.0 + (i % 300) as f64),
        delivery_latency_ms: Some(2_500.0 + (i % 1_000) as f64),
        kafka_partition: (i % 6) as u32,
        kafka_offset: (i / 6) as u64,
    };
    let json = serde_json::json!({
        "delivery_id": raw.delivery_id, "message_id": raw.message_id, "request_id": raw.request_id, "tenant": raw.tenant,
        "priority": raw.priority, "category": raw.category, "channel": raw.channel, "provider": raw.provider,
        "provider_message_id": raw.provider_message_id, "state": raw.state, "reason": if state == "failed" { Some("30003") } else { None },
        "attempts": 1, "requested_at": ts(sent - 1), "sent_at": ts(sent), "outcome_at": ts(sent + 3),
        "send_latency_ms": raw.send_latency_ms, "delivery_latency_ms": raw.delivery_latency_ms,
    });
    let record = Record {
        topic: Arc::from("notify.deliveries"),
        partition: raw.kafka_partition as i32,
        offset: raw.kafka_offset as i64,
        key: None,
        payload: Some(json.to_string().into_bytes()),
        timestamp_ms: None,
        headers: vec![],
    };
    (record, raw)
}

async fn fresh_database(url: &str, name: &str) -> anyhow::Result<(clickhouse::Client, String)> {
    let admin = ClickHouseConfig::new(url).client()?;
    admin.query(&format!("DROP DATABASE IF EXISTS {name}")).execute().await?;
    admin.query(&format!("CREATE DATABASE {name}")).execute().await?;
    let mut config = ClickHouseConfig::new(url);
    config.database = name.into();
    let client = config.client()?;
    for (file, sql) in DDL {
        apply_ddl(&client, file, sql).await?;
    }
    Ok((client, name.into()))
}

async fn count(client: &clickhouse::Client) -> anyhow::Result<u64> {
    Ok(client.query("SELECT count() FROM notify_deliveries").fetch_one().await?)
}

pub async fn sink_throughput(url: &str, rows: usize) -> anyhow::Result<Vec<CaseResult>> {
    let base_s = chrono::Utc::now().timestamp() - 3_600;
    let (records, raws): (Vec<Record>, Vec<RawDelivery>) = (0..rows).map(|i| sample(i, base_s)).unzip();
    let case = |name: &str, seconds: f64, note: String| CaseResult {
        name: name.into(),
        records: rows,
        seconds,
        p50_ms: None,
        p99_ms: None,
        max_ms: None,
        samples: 0,
        peak_rss_mb: crate::bench::peak_rss(),
        note,
    };
    let mut results = Vec::new();

    let (raw_client, raw_db) = fresh_database(url, "notiflow_bench_raw").await?;
    let started = Instant::now();
    for chunk in raws.chunks(BATCH) {
        let mut insert = raw_client.insert::<RawDelivery>("notify_deliveries").await?;
        for row in chunk {
            insert.write(row).await?;
        }
        insert.end().await?;
    }
    let raw_seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(count(&raw_client).await? == rows as u64, "raw insert: row count differs");
    results.push(case("sink: raw clickhouse crate insert, RowBinary, typed rows (baseline)", raw_seconds, format!("{BATCH} rows per INSERT")));

    let (client, database) = fresh_database(url, "notiflow_bench_sink").await?;
    let mut sink = TableSink::open(client.clone(), &database, DELIVERIES.table, &DELIVERIES.clickhouse_columns()).await?;
    let started = Instant::now();
    for chunk in records.chunks(BATCH) {
        let prepared = chunk.iter().map(|r| DELIVERIES.decode(r).map(|row| DELIVERIES.prepare(&row))).collect::<Result<Vec<_>, _>>().map_err(anyhow::Error::msg)?;
        sink.write(&prepared, 1).await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(count(&client).await? == rows as u64, "sink insert: row count differs");
    results.push(case(
        "sink: notiflow sink into ClickHouse (JSON records -> RowBinary, offsets kept)",
        seconds,
        format!("{:.2}x the raw insert's rows/s", raw_seconds / seconds),
    ));

    let dir = std::env::temp_dir().join(format!("notiflow-bench-archive-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut archive = DatasetArchive::open(&ArchiveLocation::local(&dir)?, DELIVERIES.name, 3).await?;
    let started = Instant::now();
    for chunk in records.chunks(100_000) {
        let decoded = chunk.iter().map(|r| DELIVERIES.decode(r)).collect::<Result<Vec<_>, _>>().map_err(anyhow::Error::msg)?;
        let mut by_hour: BTreeMap<i64, Vec<&super::Row>> = BTreeMap::new();
        for row in &decoded {
            by_hour.entry(row.time_ms.div_euclid(3_600_000)).or_default().push(row);
        }
        let groups: Vec<_> = by_hour
            .into_iter()
            .map(|(hour, rows)| (chrono::DateTime::from_timestamp(hour * 3_600, 0).expect("in range"), vec![DELIVERIES.to_batch(&rows)]))
            .collect();
        let upto = BTreeMap::from([(0, chunk.last().map_or(0, |r| r.offset + 1))]);
        archive.commit(&groups, &upto).await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let bytes: u64 = walk_bytes(&dir);
    std::fs::remove_dir_all(&dir)?;
    results.push(case(
        "sink: notiflow sink into Parquet (JSON records -> Arrow, zstd, manifest commits of 100,000 rows)",
        seconds,
        format!("{:.2}x the raw ClickHouse insert's rows/s; {:.1} MB on disk", raw_seconds / seconds, bytes as f64 / 1e6),
    ));
    let admin = ClickHouseConfig::new(url).client()?;
    for db in [raw_db, database] {
        admin.query(&format!("DROP DATABASE IF EXISTS {db}")).execute().await?;
    }
    Ok(results)
}

fn walk_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| if e.path().is_dir() { walk_bytes(&e.path()) } else { e.metadata().map_or(0, |m| m.len()) })
        .sum()
}
