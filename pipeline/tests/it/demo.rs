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
        .arg("--reports")
        .arg(crate::support::sql_dir().join("../dashboards/reports"))
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

    // The whole funnel: every dispatched delivery went to a stand-in or the inbox, the Twilio stand-in's
    // reports came back and joined their sends, and the reports ran over the archived deliveries.
    let sent = count("sent").expect("sent events").parse::<usize>().unwrap();
    let delivered = count("delivered").expect("delivered events").parse::<usize>().unwrap();
    assert!(sent > 0 && delivered > 0, "{rows}");
    let deliveries = runtime.block_on(async {
        let location = notiflow_parquet::ArchiveLocation::local(dir.path().join("archive")).unwrap();
        let ctx = report::archive_session(&location).await.unwrap();
        let sql = "SELECT channel, state, count(*) AS n FROM notify_deliveries GROUP BY channel, state ORDER BY channel, state";
        report::render(&report::query(&ctx, sql).await.unwrap())
    });
    let in_state = |channel: &str, state: &str| {
        deliveries.lines().find(|l| l.starts_with(&format!("| {channel} ")) && l.contains(&format!(" {state} "))).and_then(|l| l.split('|').nth(3)).map(|n| n.trim().parse::<usize>().unwrap())
    };
    assert!(in_state("sms", "delivered").unwrap_or(0) > 0, "SMS receipts joined: {deliveries}");
    assert!(in_state("inbox", "delivered").unwrap_or(0) > 0, "inbox deliveries: {deliveries}");
    assert!(in_state("email", "sent").unwrap_or(0) > 0, "emails sent (an SMTP relay reports nothing back): {deliveries}");
    let joined: usize = deliveries.lines().filter_map(|l| l.split('|').nth(3)?.trim().parse::<usize>().ok()).sum();
    assert_eq!(joined, sent, "one delivery row per send: {deliveries}");
    assert!(stdout.contains(&format!("deliveries joined to their outcome and archived: {joined}")), "{stdout}");
    assert!(stdout.contains("Report delivery_rate") && stdout.contains("| sms-twilio "), "{stdout}");
}
