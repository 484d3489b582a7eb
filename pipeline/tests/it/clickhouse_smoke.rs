//! The real ClickHouse server: our DDL runs, the `clickhouse` crate inserts
//! (RowBinary, no validation header, no lz4) and reads back typed rows.

use clickhouse::Row;
use notiflow_clickhouse::{ClickHouseConfig, apply_ddl};
use serde::{Deserialize, Serialize};

use crate::support;

#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
struct EventRow {
    at: u32,
    at_ms: u16,
    event: String,
    message_id: String,
    tenant: String,
    request_id: String,
    kind: String,
    priority: String,
    category: String,
    reason: String,
    topic: String,
    source: String,
}

#[tokio::test]
async fn events_ddl_insert_and_read_back() {
    let database = support::unique("nf_smoke");
    let admin = ClickHouseConfig::new(support::clickhouse_url()).client().unwrap();
    admin.query(&format!("CREATE DATABASE {database}")).execute().await.unwrap();

    let mut config = ClickHouseConfig::new(support::clickhouse_url());
    config.database = database.clone();
    let client = config.client().unwrap();
    let ddl = include_str!("../../../dashboards/clickhouse/ddl/001_events.sql");
    assert_eq!(apply_ddl(&client, "001_events.sql", ddl).await.unwrap(), 1);
    // Idempotent: a restart re-applies the DDL.
    apply_ddl(&client, "001_events.sql", ddl).await.unwrap();

    let base = 1_795_000_000u32; // 2026-11-18
    let rows: Vec<EventRow> = (0..1000u32)
        .map(|i| EventRow {
            at: base + i * 60,
            at_ms: (i % 1000) as u16,
            event: if i % 10 == 0 { "rejected" } else { "dispatched" }.into(),
            message_id: format!("m_{i:032x}"),
            tenant: if i % 2 == 0 { "acme" } else { "globex" }.into(),
            request_id: format!("req-{i}"),
            kind: "send".into(),
            priority: ["high", "normal", "low"][(i % 3) as usize].into(),
            category: "transactional".into(),
            reason: if i % 10 == 0 { "not_json".into() } else { String::new() },
            topic: "notify.dispatch.normal".into(),
            source: format!("notify.requests/0/{i}"),
        })
        .collect();
    let mut insert = client.insert::<EventRow>("notify_events").await.unwrap();
    for row in &rows {
        insert.write(row).await.unwrap();
    }
    insert.end().await.unwrap();

    let back: Vec<EventRow> = client
        .query("SELECT ?fields FROM notify_events ORDER BY source")
        .fetch_all()
        .await
        .unwrap();
    let mut expected = rows.clone();
    expected.sort_by(|a, b| a.source.cmp(&b.source));
    assert_eq!(back, expected);

    let rejected: u64 = client
        .query("SELECT count() FROM notify_events WHERE event = 'rejected' AND tenant = 'acme'")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(rejected, rows.iter().filter(|r| r.event == "rejected" && r.tenant == "acme").count() as u64);

    // Retention is by day partition (TTL does not exist on 18.16).
    let partitions: Vec<String> = client
        .query("SELECT DISTINCT partition FROM system.parts WHERE database = ? AND table = 'notify_events' AND active ORDER BY partition")
        .bind(&database)
        .fetch_all()
        .await
        .unwrap();
    assert!(partitions.len() >= 1 && partitions.iter().all(|p| p.starts_with("2026")), "{partitions:?}");
    admin.query(&format!("DROP DATABASE {database}")).execute().await.unwrap();
}
