//! The real ClickHouse server: our DDL runs (twice: idempotent), the table
//! sink checks the schema, inserts, skips what the table already holds, and
//! the per-minute rollups follow.

use std::sync::Arc;

use notiflow::warehouse::{DATASETS, DDL, EVENTS};
use notiflow_clickhouse::{ClickHouseConfig, TableSink, apply_ddl};
use notiflow_connector::Record;

use crate::support;

async fn database() -> (clickhouse::Client, clickhouse::Client, String) {
    let database = support::unique("nf_smoke");
    let admin = ClickHouseConfig::new(support::clickhouse_url()).client().unwrap();
    admin.query(&format!("CREATE DATABASE {database}")).execute().await.unwrap();
    let mut config = ClickHouseConfig::new(support::clickhouse_url());
    config.database = database.clone();
    (admin, config.client().unwrap(), database)
}

#[tokio::test]
async fn ddl_schema_check_and_exactly_once_inserts() {
    let (admin, client, database) = database().await;
    for _ in 0..2 {
        for (file, sql) in DDL {
            apply_ddl(&client, file, sql).await.unwrap();
        }
    }
    for dataset in DATASETS {
        TableSink::open(client.clone(), &database, dataset.table, &dataset.clickhouse_columns()).await.unwrap();
    }

    let base_ms = 1_794_999_960_000i64; // 2026-11-18, on a minute
    let records: Vec<Record> = (0..1000i64)
        .map(|i| {
            let event = serde_json::json!({
                "event": if i % 10 == 0 { "rejected" } else { "dispatched" }, "message_id": format!("m_{i:032x}"),
                "tenant": if i % 2 == 0 { "acme" } else { "globex" }, "channel": "sms",
                "at": chrono::DateTime::from_timestamp_millis(base_ms + i * 1_500).unwrap().to_rfc3339(), "source": format!("notify.requests/0/{i}"),
            });
            Record { topic: Arc::from("events"), partition: (i % 3) as i32, offset: i / 3, key: None, payload: Some(event.to_string().into_bytes()), timestamp_ms: None, headers: vec![] }
        })
        .collect();
    let rows: Vec<_> = records.iter().map(|r| EVENTS.prepare(&EVENTS.decode(r).unwrap())).collect();

    let mut sink = TableSink::open(client.clone(), &database, EVENTS.table, &EVENTS.clickhouse_columns()).await.unwrap();
    assert_eq!(sink.write(&rows[..600], 3).await.unwrap(), 600);
    // A restarted sink reads its progress from the table: the overlap is skipped.
    let mut restarted = TableSink::open(client.clone(), &database, EVENTS.table, &EVENTS.clickhouse_columns()).await.unwrap();
    assert_eq!(restarted.next_offsets().values().sum::<i64>(), 600);
    assert_eq!(restarted.write(&rows, 3).await.unwrap(), 400);

    let count: u64 = client.query("SELECT count() FROM notify_events").fetch_one().await.unwrap();
    assert_eq!(count, 1000);
    let distinct: u64 = client.query("SELECT uniqExact(kafka_partition, kafka_offset) FROM notify_events").fetch_one().await.unwrap();
    assert_eq!(distinct, 1000);
    let rejected: u64 = client.query("SELECT count() FROM notify_events WHERE event = 'rejected' AND tenant = 'acme'").fetch_one().await.unwrap();
    assert_eq!(rejected, 100);
    // The per-minute rollup holds the same total (1,000 events over 25 minutes).
    let (minutes, rolled): (u64, u64) =
        client.query("SELECT uniqExact(minute), sum(events) FROM notify_events_per_minute").fetch_one().await.unwrap();
    assert_eq!((minutes, rolled), (25, 1000));
    // Retention is by day partition (TTL does not exist on 18.16).
    let partitions: Vec<String> = client
        .query("SELECT DISTINCT partition FROM system.parts WHERE database = ? AND table = 'notify_events' AND active ORDER BY partition")
        .bind(&database)
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(partitions, vec!["2026-11-18".to_string()]);
    admin.query(&format!("DROP DATABASE {database}")).execute().await.unwrap();
}

#[tokio::test]
async fn a_table_that_does_not_match_fails_at_start_naming_the_column() {
    let (admin, client, database) = database().await;
    client
        .query("CREATE TABLE notify_deliveries (sent_at DateTime, delivery_id String, attempts String) ENGINE = MergeTree() PARTITION BY toDate(sent_at) ORDER BY sent_at")
        .execute()
        .await
        .unwrap();
    let dataset = DATASETS[0];
    let error = TableSink::open(client.clone(), &database, dataset.table, &dataset.clickhouse_columns()).await.err().unwrap().to_string();
    assert!(error.contains("column `attempts` is String, expected Int64"), "{error}");
    assert!(error.contains("column `state` String is missing"), "{error}");
    admin.query(&format!("DROP DATABASE {database}")).execute().await.unwrap();
}
