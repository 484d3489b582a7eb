//! The README's main command on the embedded default: no servers.

use notiflow::report;

#[test]
fn demo_runs_and_its_summary_matches_the_archive() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_notiflow"))
        .args(["demo", "--requests", "600", "--malformed-every", "20", "--data-dir"])
        .arg(dir.path())
        .arg("--sql")
        .arg(crate::support::sql_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("records in: "), "{stdout}");
    assert!(stdout.contains("dead-lettered (not_json): 5"), "{stdout}");
    assert!(stdout.contains("Rejections by reason"), "{stdout}");

    // The archive holds what the summary says: read it back independently.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let rows = runtime.block_on(async {
        let location = notiflow_parquet::ArchiveLocation::local(dir.path().join("archive")).unwrap();
        let ctx = report::archive_session(&location).await.unwrap();
        let batches = report::query(&ctx, "SELECT event, count(*) AS n FROM notify_events GROUP BY event ORDER BY event").await.unwrap();
        report::render(&batches)
    });
    // 600 generated (every 20th malformed) + 5 examples (4 sends, 1 recall).
    // Deliveries depend on the wall clock (quiet hours): only their presence is fixed.
    let count = |event: &str| rows.lines().find(|l| l.starts_with(&format!("| {event} "))).and_then(|l| l.split('|').nth(2)).map(|n| n.trim().to_string());
    assert_eq!(count("accepted").as_deref(), Some("574"), "{rows}");
    assert_eq!(count("recall_requested").as_deref(), Some("1"), "{rows}");
    assert_eq!(count("rejected").as_deref(), Some("30"), "{rows}");
    assert!(count("dispatched").is_some() && count("opted_out").is_some(), "{rows}");
    let archived: usize = rows.lines().filter_map(|l| l.split('|').nth(2)?.trim().parse::<usize>().ok()).sum();
    assert!(stdout.contains(&format!("lifecycle events archived: {archived}")), "{stdout}\n{rows}");
}
