//! The built-in dashboard page in a real browser (Debian's headless Chromium):
//! `notiflow dashboard` over a Parquet archive; the page fetches every
//! report, draws its charts, and each bar holds the value the report
//! computes. A screenshot is written and its path printed.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;

use notiflow::report;
use notiflow::warehouse::{DELIVERIES, Dataset, EVENTS};
use notiflow_connector::Record;
use notiflow_parquet::{ArchiveLocation, DatasetArchive};
use serde_json::{Value, json};

use crate::support::Killed;

fn chromium() -> String {
    std::env::var("NOTIFLOW_TEST_CHROMIUM").expect("NOTIFLOW_TEST_CHROMIUM (scripts/test.sh installs and sets it)")
}

async fn archive(root: &ArchiveLocation, dataset: &Dataset, rows: &[Value]) {
    let records: Vec<Record> = rows
        .iter()
        .enumerate()
        .map(|(i, row)| Record { topic: Arc::from("t"), partition: 0, offset: i as i64, key: None, payload: Some(row.to_string().into_bytes()), timestamp_ms: None, headers: vec![] })
        .collect();
    let decoded: Vec<_> = records.iter().map(|r| dataset.decode(r).unwrap()).collect();
    let batch = dataset.to_batch(&decoded.iter().collect::<Vec<_>>());
    let mut archive = DatasetArchive::open(root, dataset.name, 3).await.unwrap();
    archive.commit(&[(chrono::Utc::now(), vec![batch])], &BTreeMap::from([(0, rows.len() as i64)])).await.unwrap();
}

/// Bars the page drew: (report, label, column) -> value.
fn bars(dom: &str) -> BTreeMap<(String, String, String), String> {
    let mut found = BTreeMap::new();
    let mut report = String::new();
    for tag in dom.split('<') {
        let attr = |name: &str| tag.split(&format!("{name}=\"")).nth(1).and_then(|rest| rest.split('"').next()).map(|v| v.replace("&amp;", "&"));
        if tag.starts_with("svg") {
            report = attr("data-report").unwrap_or_default();
        } else if tag.starts_with("rect") && tag.contains("class=\"bar\"") {
            found.insert((report.clone(), attr("data-label").unwrap(), attr("data-column").unwrap()), attr("data-value").unwrap());
        }
    }
    found
}

#[tokio::test]
async fn the_dashboard_page_draws_every_report_with_its_data_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("archive");
    let now = chrono::Utc::now();
    let at = |ms: i64| (now + chrono::Duration::milliseconds(ms)).to_rfc3339();
    let deliveries: Vec<Value> = (0..30)
        .map(|i| {
            let (channel, provider) = [("sms", "sms-twilio"), ("sms", "sms-aliyun"), ("email", "email-relay")][i % 3];
            let state = match i % 10 {
                0 => "failed",
                1 => "undelivered_timeout",
                _ if channel == "email" => "sent",
                _ => "delivered",
            };
            json!({"delivery_id": format!("d{i}"), "message_id": format!("m{i}"), "tenant": if i % 2 == 0 { "acme" } else { "globex" },
                "channel": channel, "provider": provider, "state": state, "reason": if state == "failed" { "30003" } else { "" },
                "attempts": 1, "sent_at": at(i as i64), "send_latency_ms": 100.0 + i as f64, "delivery_latency_ms": if state == "delivered" { Some(1000.0 + 10.0 * i as f64) } else { None }})
        })
        .collect();
    let events: Vec<Value> = ["accepted", "dispatched", "sent", "delivered", "read", "clicked", "deduped", "capped"]
        .iter()
        .enumerate()
        .flat_map(|(step, event)| (0..(20 - 2 * step)).map(move |i| (step, *event, i)))
        .map(|(step, event, i)| json!({"event": event, "message_id": format!("m{i}"), "delivery_id": format!("d{i}"), "tenant": "acme", "at": at((step * 100 + i) as i64), "source": "test"}))
        .collect();
    let location = ArchiveLocation::local(&root).unwrap();
    archive(&location, &DELIVERIES, &deliveries).await;
    archive(&location, &EVENTS, &events).await;

    let reports_dir = crate::support::sql_dir().join("../dashboards/reports");
    let mut server = Command::new(env!("CARGO_BIN_EXE_notiflow"))
        .args(["dashboard", "--listen", "127.0.0.1:0", "--archive"])
        .arg(&root)
        .arg("--reports")
        .arg(&reports_dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().strip_prefix("dashboard: listening on ").unwrap_or_else(|| panic!("{line}")).to_string();
    let _server = Killed(server);

    let browser = |extra: &[&str]| {
        let output = Command::new(chromium())
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars", "--virtual-time-budget=15000", "--window-size=1400,2200"])
            .args(extra)
            .arg(&url)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).to_string()
    };
    let dom = browser(&["--dump-dom"]);
    assert!(dom.contains("data-state=\"rendered\""), "the page did not finish: {}", &dom[..dom.len().min(3000)]);
    let drawn = bars(&dom);

    // Every bar equals the report's own figure (from the archive, as `notiflow report` computes it).
    let mut expected = BTreeMap::new();
    for name in ["delivery_rate", "latency", "failure_reasons", "funnel", "pipeline_decisions", "tenant_volume"] {
        let definition = report::load(&reports_dir, name).unwrap();
        let table = report::run_archive(&location, &definition.sql).await.unwrap();
        assert!(!table.rows.is_empty(), "{name} has no rows");
        let numeric: Vec<usize> = (0..table.columns.len()).filter(|&c| table.rows.iter().all(|r| r[c] == "NULL" || r[c].parse::<f64>().is_ok())).collect();
        let labels: Vec<usize> = (0..table.columns.len()).filter(|c| !numeric.contains(c)).collect();
        let charted: Vec<usize> = if definition.chart.is_empty() { numeric.clone() } else { (0..table.columns.len()).filter(|&c| definition.chart.contains(&table.columns[c])).collect() };
        for row in &table.rows {
            for &c in &charted {
                let label = if labels.is_empty() { table.columns[c].clone() } else { labels.iter().map(|&l| row[l].as_str()).collect::<Vec<_>>().join(" / ") };
                let value = if row[c] == "NULL" { 0.0 } else { row[c].parse::<f64>().unwrap() };
                expected.insert((name.to_string(), label, table.columns[c].clone()), format!("{value}"));
            }
        }
    }
    assert_eq!(drawn, expected);
    assert_eq!(drawn[&("funnel".into(), "clicked".into(), "clicked".into())], "10");
    assert_eq!(drawn[&("delivery_rate".into(), "sms / sms-twilio".into(), "delivered".into())], "8");

    let screenshot = std::env::temp_dir().join(format!("notiflow-dashboard-{}.png", std::process::id()));
    browser(&[&format!("--screenshot={}", screenshot.display())]);
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "screenshot of {} bytes", png.len());
    println!("dashboard screenshot: {} ({} bytes, {} bars)", screenshot.display(), png.len(), drawn.len());
}
