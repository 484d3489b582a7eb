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

/// Tenant isolation for analysts: `notiflow tenant analysts` gives each
/// registered tenant a database of its own rows (kept current as rows
/// arrive) and a read-only user that can read that database only. Checked
/// as those users, over HTTP, on the real server.
#[tokio::test]
async fn each_tenants_analyst_reads_only_that_tenants_rows() {
    let users_d = std::env::var("NOTIFLOW_TEST_CLICKHOUSE_USERS_D").expect("NOTIFLOW_TEST_CLICKHOUSE_USERS_D is not set: run the tests with scripts/test.sh");
    let (admin, client, database) = database().await;
    for (file, sql) in DDL {
        apply_ddl(&client, file, sql).await.unwrap();
    }
    let insert = |tenant: &str, n: usize, tag: &str| {
        let events: Vec<String> = (0..n).map(|i| format!("(now(), 'accepted', 'm_{tag}{i}', '{tenant}')")).collect();
        let deliveries: Vec<String> = (0..n).map(|i| format!("(now(), 'd_{tag}{i}', '{tenant}', 'sms')")).collect();
        [
            format!("INSERT INTO notify_events (at, event, message_id, tenant) VALUES {}", events.join(",")),
            format!("INSERT INTO notify_deliveries (sent_at, delivery_id, tenant, channel) VALUES {}", deliveries.join(",")),
        ]
    };
    for statement in insert("acme", 3, "a").into_iter().chain(insert("globex", 5, "g")) {
        client.query(&statement).execute().await.unwrap();
    }

    let config = support::kafka_config(1);
    let dir = tempfile::tempdir().unwrap();
    let toml = support::write_toml(&config, dir.path());
    let mut text = std::fs::read_to_string(&toml).unwrap();
    text.push_str(&format!("\n[clickhouse]\nurl = \"{}\"\ndatabase = \"{database}\"\n", support::clickhouse_url()));
    std::fs::write(&toml, text).unwrap();
    std::fs::write(dir.path().join("tenants.toml"), "[[tenants]]\nid = \"acme\"\n\n[[tenants]]\nid = \"globex\"\n").unwrap();
    let notiflow = support::Notiflow::new(&toml, &[("NOTIFLOW_ANALYST_PASSWORD_ACME", "acme-analyst-secret")]);
    assert!(notiflow.command(&["tenant", "put", dir.path().join("tenants.toml").to_str().unwrap()]).output().unwrap().status.success());
    let users_file = std::path::Path::new(&users_d).join(format!("{database}.xml"));
    let output = notiflow.command(&["tenant", "analysts", "--users-xml", users_file.to_str().unwrap(), "--networks", "127.0.0.1"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("analyst_acme: database") && stderr.contains("password from NOTIFLOW_ANALYST_PASSWORD_ACME"), "{stderr}");
    let minted = stderr.lines().find(|l| l.starts_with("analyst_globex")).and_then(|l| l.split(" password ").nth(1)).unwrap().split(' ').next().unwrap().to_string();
    let users = std::fs::read_to_string(&users_file).unwrap();
    assert!(!users.contains("acme-analyst-secret") && !users.contains(&minted), "only hashes are written");
    // Rows arriving later reach the tenant's copy too.
    for statement in insert("acme", 2, "b").into_iter().chain(insert("globex", 1, "h")) {
        client.query(&statement).execute().await.unwrap();
    }

    let http = reqwest::Client::new();
    let as_user = |user: &str, password: &str, sql: String| {
        let request = http.post(support::clickhouse_url()).query(&[("user", user), ("password", password)]).body(sql);
        async move {
            let response = request.send().await.unwrap();
            (response.status().is_success(), response.text().await.unwrap())
        }
    };
    // The server reloads users.d within seconds.
    let own = format!("{database}_t_acme");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !as_user("analyst_acme", "acme-analyst-secret", "SELECT 1".into()).await.0 {
        assert!(std::time::Instant::now() < deadline, "the analyst user never appeared");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    for table in ["notify_events", "notify_deliveries"] {
        let (ok, rows) = as_user("analyst_acme", "acme-analyst-secret", format!("SELECT tenant, count() FROM `{own}`.{table} GROUP BY tenant")).await;
        assert!(ok, "{rows}");
        assert_eq!(rows.trim(), "acme\t5", "{table}: acme's 3 + 2 rows and nothing else");
        let (ok, error) = as_user("analyst_acme", "acme-analyst-secret", format!("SELECT count() FROM {database}.{table}")).await;
        assert!(!ok && error.contains("Access denied"), "the shared table is closed to analysts: {error}");
    }
    let (ok, error) = as_user("analyst_acme", "acme-analyst-secret", format!("SELECT count() FROM `{database}_t_globex`.notify_events")).await;
    assert!(!ok && error.contains("Access denied"), "another tenant's database is closed: {error}");
    let (ok, error) = as_user("analyst_acme", "acme-analyst-secret", format!("INSERT INTO `{own}`.notify_events (tenant) VALUES ('globex')")).await;
    assert!(!ok && error.contains("readonly"), "analysts cannot write: {error}");
    let (ok, rows) = as_user("analyst_globex", &minted, format!("SELECT tenant, count() FROM `{database}_t_globex`.notify_events GROUP BY tenant")).await;
    assert!(ok && rows.trim() == "globex\t6", "{rows}");

    std::fs::remove_file(&users_file).unwrap();
    for tenant in ["acme", "globex"] {
        admin.query(&format!("DROP DATABASE IF EXISTS `{database}_t_{tenant}`")).execute().await.unwrap();
    }
    admin.query(&format!("DROP DATABASE {database}")).execute().await.unwrap();
}
