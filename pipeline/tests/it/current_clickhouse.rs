//! docker-compose runs a current ClickHouse; the tests' server is Debian's
//! 18.16. The DDL, the sink's rows and the six report queries run on both:
//! on a current ClickHouse embedded in chDB (PyPI, no server;
//! scripts/chdb_sql.py) and on 18.16, and every report answers the same.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use notiflow::report;
use notiflow_clickhouse::ClickHouseConfig;

use crate::support;

const DDL: [&str; 2] = [include_str!("../../../dashboards/clickhouse/ddl/001_events.sql"), include_str!("../../../dashboards/clickhouse/ddl/002_deliveries.sql")];

/// Rows as the sink writes them: events of every kind the reports count, deliveries in every state.
fn inserts() -> Vec<String> {
    let events: Vec<String> = (0..40)
        .map(|i| {
            let event = ["accepted", "dispatched", "sent", "delivered", "read", "clicked", "deduped", "capped", "send_failed", "rejected"][i % 10];
            let tenant = if i % 3 == 0 { "globex" } else { "acme" };
            format!("('2026-12-07 10:{:02}:00', '{event}', 'm_{}', 'd_{}', '{tenant}', 'sms')", i % 60, i / 2, i / 2)
        })
        .collect();
    let deliveries: Vec<String> = (0..30)
        .map(|i| {
            let (state, reason) = [("delivered", ""), ("failed", "unreachable"), ("undelivered_timeout", "no_receipt"), ("send_failed", "provider_error"), ("sent", "")][i % 5];
            let channel = if i % 2 == 0 { "sms" } else { "email" };
            format!(
                "('2026-12-07 10:{:02}:00', 'd_{i}', 'm_{i}', 'acme', '{channel}', 'p-{}', '{state}', '{reason}', {}, {})",
                i % 60,
                i % 2,
                100.0 + i as f64 * 7.5,
                if state == "delivered" { format!("{}", 2000.0 + i as f64 * 13.25) } else { "NULL".into() }
            )
        })
        .collect();
    vec![
        format!("INSERT INTO notify_events (at, event, message_id, delivery_id, tenant, channel) VALUES {}", events.join(", ")),
        format!(
            "INSERT INTO notify_deliveries (sent_at, delivery_id, message_id, tenant, channel, provider, state, reason, send_latency_ms, delivery_latency_ms) VALUES {}",
            deliveries.join(", ")
        ),
    ]
}

/// Runs statements on chDB; the TSV answer of each (empty for non-queries).
fn on_chdb(statements: &[String]) -> Vec<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/chdb_sql.py");
    let mut child = Command::new("python3").arg(script).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(serde_json::to_string(statements).unwrap().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "chDB (scripts/services.sh installs it): {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&stdout).unwrap()
}

#[tokio::test]
async fn ddl_and_reports_run_on_current_clickhouse_and_answer_as_on_18_16() {
    let version = on_chdb(&["SELECT version() AS v".to_string()]);
    let major: u32 = version[0].lines().nth(1).unwrap().split('.').next().unwrap().parse().unwrap();
    assert!(major >= 24, "chDB embeds ClickHouse {}", version[0]);

    let reports = report::list(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards/reports")).unwrap();
    assert_eq!(reports.len(), 6);
    let mut statements: Vec<String> = DDL.iter().flat_map(|sql| notiflow_clickhouse::statements(sql)).collect();
    statements.extend(inserts());
    let first_report = statements.len();
    statements.extend(reports.iter().map(|r| report::clickhouse_dialect(&r.sql)));
    let current = on_chdb(&statements);

    let database = support::unique("nf_current");
    let admin = ClickHouseConfig::new(support::clickhouse_url()).client().unwrap();
    admin.query(&format!("CREATE DATABASE {database}")).execute().await.unwrap();
    let mut config = ClickHouseConfig::new(support::clickhouse_url());
    config.database = database;
    let client = config.client().unwrap();
    for statement in &statements[..first_report] {
        client.query(statement).execute().await.unwrap_or_else(|e| panic!("18.16: {statement}: {e}"));
    }
    for (report, answer) in reports.iter().zip(&current[first_report..]) {
        let old = report::run_clickhouse(&client, &report.sql).await.unwrap();
        let mut lines = answer.lines().map(|l| l.split('\t').map(str::to_string).collect::<Vec<_>>());
        let columns = lines.next().unwrap_or_default();
        let rows: Vec<Vec<String>> = lines.collect();
        assert_eq!(columns, old.columns, "{}", report.name);
        assert!(!rows.is_empty(), "{}: no rows on current ClickHouse", report.name);
        assert_eq!(rows, old.rows, "{}: current ClickHouse and 18.16 disagree", report.name);
    }
}
