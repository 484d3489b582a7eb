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
    // 600 generated + 5 published examples.
    assert!(stdout.contains("records in: 605 "), "{stdout}");
    assert!(stdout.contains("lifecycle events archived: 605"), "{stdout}");
    assert!(stdout.contains("dead-lettered (not_json): 5"), "{stdout}");
    assert!(stdout.contains("Rejections by reason"), "{stdout}");

    // The archive holds what the summary says: read it back independently.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let rows = runtime.block_on(async {
        let ctx = report::archive_session(&dir.path().join("archive")).await.unwrap();
        let batches = report::query(&ctx, "SELECT event, count(*) AS n FROM events GROUP BY event ORDER BY event").await.unwrap();
        report::render(&batches)
    });
    assert!(rows.contains("| dispatched | 575 |"), "{rows}");
    assert!(rows.contains("| rejected   | 30  |"), "{rows}");
}
