//! The SQL engine end to end on the in-process log: the repository's golden
//! tests, the windowed row-number operator through SQL, and validation errors.

use std::path::Path;

use notiflow::config::Config;
use notiflow::golden;

use crate::support;

fn write(dir: &Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

#[tokio::test]
async fn every_stage_in_sql_passes_its_golden_test() {
    let results = golden::run_dir(&support::sql_dir(), &Config::embedded()).await.unwrap();
    let stages = std::fs::read_dir(support::sql_dir())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "sql"))
        .count();
    assert!(stages >= 1);
    assert_eq!(results.len(), stages, "one golden case per stage: {results:?}");
    for result in results {
        assert!(result.failures.is_empty(), "{}: {:#?}", result.name, result.failures);
    }
}

const WINDOWS_SQL: &str = "
CREATE TABLE sends (
    id TEXT, recipient TEXT, channel TEXT, content TEXT, ts TIMESTAMP,
    WATERMARK FOR ts AS ts - INTERVAL '10' MINUTE
) WITH (connector = 'kafka', type = 'source', topic = 't.sends', bad_data = 'drop');

CREATE TABLE deduped (id TEXT, rn BIGINT) WITH (connector = 'kafka', type = 'sink', topic = 't.deduped');
CREATE TABLE capped (id TEXT) WITH (connector = 'kafka', type = 'sink', topic = 't.capped');
CREATE TABLE duplicates (id TEXT, rn BIGINT) WITH (connector = 'kafka', type = 'sink', topic = 't.duplicates');

-- Content dedupe: one per recipient/channel/content within 5 minutes either way.
INSERT INTO deduped
SELECT id, rn FROM (
    SELECT id, ROW_NUMBER() OVER (PARTITION BY recipient, channel, content, sliding(INTERVAL '5' MINUTE) ORDER BY ts) AS rn
    FROM sends
) WHERE rn = 1;

-- Its complement: exactly the rows the dedupe drops (for `deduped` events).
INSERT INTO duplicates
SELECT id, rn FROM (
    SELECT id, ROW_NUMBER() OVER (PARTITION BY recipient, channel, content, sliding(INTERVAL '5' MINUTE) ORDER BY ts) AS rn
    FROM sends
) WHERE rn > 1;

-- Daily cap: two per recipient per UTC day.
CREATE VIEW ranked AS
SELECT *, ROW_NUMBER() OVER (PARTITION BY recipient, tumble(INTERVAL '1' DAY) ORDER BY ts) AS rn FROM sends;
INSERT INTO capped SELECT id FROM ranked WHERE rn <= 2;

-- A stateful view read by two INSERTs: computed once, one copy of its state.
CREATE VIEW first_sends AS
SELECT * FROM (
    SELECT id, recipient, ROW_NUMBER() OVER (PARTITION BY recipient, channel, content, sliding(INTERVAL '5' MINUTE) ORDER BY ts) AS rn
    FROM sends
) WHERE rn = 1;
CREATE TABLE first_ids (id TEXT) WITH (connector = 'kafka', type = 'sink', topic = 't.first_ids');
CREATE TABLE first_recipients (recipient TEXT) WITH (connector = 'kafka', type = 'sink', topic = 't.first_recipients');
INSERT INTO first_ids SELECT id FROM first_sends;
INSERT INTO first_recipients SELECT recipient FROM first_sends;
";

const WINDOWS_INPUT: &str = r#"{"id":"1","recipient":"a","channel":"sms","content":"x","ts":"2026-01-01T10:00:00"}
{"id":"2","recipient":"a","channel":"sms","content":"x","ts":"2026-01-01T10:04:59"}
{"id":"3","recipient":"a","channel":"sms","content":"x","ts":"2026-01-01T10:05:00"}
{"id":"4","recipient":"a","channel":"sms","content":"y","ts":"2026-01-01T10:01:00"}
{"id":"5","recipient":"a","channel":"sms","content":"x","ts":"2026-01-01T09:58:00"}
{"id":"6","recipient":"b","channel":"sms","content":"x","ts":"2026-01-01T10:00:00"}
{"id":"7","recipient":"a","channel":"sms","content":"z","ts":"2026-01-02T00:00:00"}
{"id":"8","recipient":"a","channel":"sms","content":"w","ts":"2026-01-01T23:59:59.999"}
{"id":"9","recipient":"c","channel":"sms","content":"x","ts":"2026-01-01T23:00:00"}
not json at all
"#;

#[tokio::test]
async fn windowed_row_number_limits_through_sql() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[
            ("10_windows.sql", WINDOWS_SQL),
            ("10_windows.test/input/sends.jsonl", WINDOWS_INPUT),
            // 2 is 4:59 after 1; 3 is exactly 5:00 after 1 (passes); 5 is 2:00 before 1 (out of order, dropped);
            // 9 is an hour behind the watermark (Jan 2 00:00 - 10 min): late, dropped by both.
            (
                "10_windows.test/expected/deduped.jsonl",
                "{\"id\":\"1\",\"rn\":1}\n{\"id\":\"3\",\"rn\":1}\n{\"id\":\"4\",\"rn\":1}\n{\"id\":\"6\",\"rn\":1}\n{\"id\":\"7\",\"rn\":1}\n{\"id\":\"8\",\"rn\":1}\n",
            ),
            // The rows the dedupe dropped, late 9 not among them; rn = N + 1.
            ("10_windows.test/expected/duplicates.jsonl", "{\"id\":\"2\",\"rn\":2}\n{\"id\":\"5\",\"rn\":2}\n"),
            // The shared stateful view gives both of its readers the dedupe's rows.
            ("10_windows.test/expected/first_ids.jsonl", "{\"id\":\"1\"}\n{\"id\":\"3\"}\n{\"id\":\"4\"}\n{\"id\":\"6\"}\n{\"id\":\"7\"}\n{\"id\":\"8\"}\n"),
            (
                "10_windows.test/expected/first_recipients.jsonl",
                "{\"recipient\":\"a\"}\n{\"recipient\":\"a\"}\n{\"recipient\":\"a\"}\n{\"recipient\":\"b\"}\n{\"recipient\":\"a\"}\n{\"recipient\":\"a\"}\n",
            ),
            // a: 1 and 2 on Jan 1 (3, 4, 5 and 8 capped, 8 is the last ms of the day); 7 opens Jan 2. b: 6.
            ("10_windows.test/expected/capped.jsonl", "{\"id\":\"1\"}\n{\"id\":\"2\"}\n{\"id\":\"6\"}\n{\"id\":\"7\"}\n"),
        ],
    );
    let results = golden::run_dir(dir.path(), &Config::embedded()).await.unwrap();
    assert_eq!(results.len(), 1);
    assert!(results[0].failures.is_empty(), "{:#?}", results[0].failures);
    let explained = notiflow::engine::explain(&notiflow::load_pipeline(dir.path(), &Config::embedded()).await.unwrap().pipeline);
    let view = explained.split("shared view first_sends").nth(1).expect("first_sends is shared").split("\nflow ").next().unwrap();
    assert!(view.contains("RowNumberLimit"), "{explained}");
    assert_eq!(explained.matches("RowNumberLimit").count(), 4, "deduped, duplicates, capped, and once for both first_* flows:\n{explained}");

    // The same case with a wrong expectation fails, naming the row.
    write(dir.path(), &[("10_windows.test/expected/capped.jsonl", "{\"id\":\"1\"}\n{\"id\":\"2\"}\n{\"id\":\"3\"}\n{\"id\":\"6\"}\n{\"id\":\"7\"}\n")]);
    let results = golden::run_dir(dir.path(), &Config::embedded()).await.unwrap();
    assert_eq!(results[0].failures, vec!["capped: missing 1x {\"id\":\"3\"}".to_string()]);
}

/// `late_rows = 'pass'`: a row behind the watermark is let through (rn = 1)
/// by every limit instead of dropped; the complement does not list it.
#[tokio::test]
async fn late_rows_can_pass_instead_of_being_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let sql = WINDOWS_SQL.replace("bad_data = 'drop')", "bad_data = 'drop', late_rows = 'pass')");
    assert_ne!(sql, WINDOWS_SQL);
    write(
        dir.path(),
        &[
            ("10_windows.sql", &sql),
            ("10_windows.test/input/sends.jsonl", WINDOWS_INPUT),
            (
                "10_windows.test/expected/deduped.jsonl",
                "{\"id\":\"1\",\"rn\":1}\n{\"id\":\"3\",\"rn\":1}\n{\"id\":\"4\",\"rn\":1}\n{\"id\":\"6\",\"rn\":1}\n{\"id\":\"7\",\"rn\":1}\n{\"id\":\"8\",\"rn\":1}\n{\"id\":\"9\",\"rn\":1}\n",
            ),
            ("10_windows.test/expected/duplicates.jsonl", "{\"id\":\"2\",\"rn\":2}\n{\"id\":\"5\",\"rn\":2}\n"),
            ("10_windows.test/expected/capped.jsonl", "{\"id\":\"1\"}\n{\"id\":\"2\"}\n{\"id\":\"6\"}\n{\"id\":\"7\"}\n{\"id\":\"9\"}\n"),
        ],
    );
    let results = golden::run_dir(dir.path(), &Config::embedded()).await.unwrap();
    assert!(results[0].failures.is_empty(), "{:#?}", results[0].failures);
}

async fn plan_error(sql: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &[("20_stage.sql", sql)]);
    match notiflow::load_pipeline(dir.path(), &Config::embedded()).await {
        Ok(_) => panic!("planned: {sql}"),
        Err(e) => e.to_string().replace(&dir.path().display().to_string(), "DIR"),
    }
}

const TABLES: &str = "CREATE TABLE s (id TEXT, n BIGINT, ts TIMESTAMP) WITH (connector = 'kafka', type = 'source', topic = 's');
CREATE TABLE k (id TEXT) WITH (connector = 'kafka', type = 'sink', topic = 'k');
";

#[tokio::test]
async fn unsupported_sql_fails_at_validate_with_file_and_line() {
    let cases = [
        ("INSERT INTO k SELECT id FROM s GROUP BY id;", "DIR/20_stage.sql:3: GROUP BY"),
        ("INSERT INTO k SELECT s.id FROM s JOIN s AS t ON s.id = t.id;", "DIR/20_stage.sql:3: an interval join needs both time bounds"),
        ("INSERT INTO k SELECT s.id FROM s FULL JOIN s AS t ON s.id = t.id;", "DIR/20_stage.sql:3: Full JOIN: interval joins are INNER or LEFT"),
        ("INSERT INTO k SELECT id FROM s ORDER BY ts;", "DIR/20_stage.sql:3: ORDER BY / LIMIT"),
        (
            "INSERT INTO k SELECT id FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY id, tumble(INTERVAL '1' MINUTE) ORDER BY ts) AS rn FROM s);",
            "DIR/20_stage.sql:3: ROW_NUMBER() runs as a windowed limit",
        ),
        (
            "INSERT INTO k SELECT id FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY id ORDER BY ts) AS rn FROM s) WHERE rn = 1;",
            "DIR/20_stage.sql:3: PARTITION BY needs a window",
        ),
        ("INSERT INTO k SELECT id, n FROM s;", "DIR/20_stage.sql:3: column n is not in sink k"),
        ("INSERT INTO k SELECT nope FROM s;", "DIR/20_stage.sql:3: "),
        ("INSERT INTO s SELECT id FROM s;", "DIR/20_stage.sql:3: s is a source table"),
        ("\n\nINSERT INTO k SELECT id FROM missing;", "DIR/20_stage.sql:5: "),
    ];
    for (statement, expected) in cases {
        let error = plan_error(&format!("{TABLES}{statement}")).await;
        assert!(error.starts_with(expected), "{statement}\n  got: {error}\n  want: {expected}...");
    }
    let error = plan_error("CREATE TABLE s (id TEXT) WITH (connector = 'kafka', type = 'source', topic = 's');\nSELEC id FROM s;").await;
    assert!(error.starts_with("DIR/20_stage.sql:2: syntax error"), "{error}");
}

/// Output ids depend only on the input record, never on batch boundaries:
/// that is what lets a replay after a crash recognise what it already wrote.
#[tokio::test]
async fn output_ids_do_not_depend_on_batching() {
    use notiflow::job::{StopWhen, run_job};
    use notiflow_connector::memory::MemoryBroker;
    use notiflow_connector::{OutRecord, TopicAdmin};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &[("10_windows.sql", WINDOWS_SQL)]);
    let mut outputs = Vec::new();
    for batch_size in [1000, 7] {
        let mut config = Config::embedded();
        config.pipeline.batch_max_records = batch_size;
        config.topics.partitions = 3;
        let mut run = notiflow::load_pipeline(dir.path(), &config).await.unwrap();
        let broker = MemoryBroker::new();
        broker.ensure_topics(&notiflow::topic_specs(&run, &config)).await.unwrap();
        let topic: Arc<str> = Arc::from("t.sends");
        let records = (0..300)
            .map(|i| {
                let body = format!(
                    r#"{{"id":"{i}","recipient":"r{}","channel":"sms","content":"c{}","ts":"2026-01-01T10:{:02}:00"}}"#,
                    i % 17,
                    i % 5,
                    i % 60
                );
                OutRecord { topic: topic.clone(), key: Some(format!("r{}", i % 17).into_bytes()), payload: body.into_bytes(), headers: vec![] }
            })
            .collect();
        broker.append(records).unwrap();
        let mut consumer = broker.consumer("g", &["t.sends"]);
        let (_keep, shutdown) = tokio::sync::watch::channel(false);
        let limits = notiflow::batch_limits(&config);
        run_job(&mut run, &mut consumer, &broker.producer(), limits, StopWhen::IdleFor(std::time::Duration::from_millis(20)), shutdown)
            .await
            .unwrap();
        let mut by_id = BTreeMap::new();
        for t in ["t.deduped", "t.capped"] {
            for r in broker.read_all(t) {
                let id = r.headers.iter().find(|h| h.name == "notiflow.id").unwrap().value.clone();
                assert!(by_id.insert(id, r.payload.clone().unwrap()).is_none(), "ids are unique");
            }
        }
        outputs.push(by_id);
    }
    assert!(outputs[0].len() > 20);
    assert_eq!(outputs[0], outputs[1]);
}

const AGGREGATES_SQL: &str = "
CREATE TABLE sends (tenant TEXT, channel TEXT, ok BOOLEAN, ts TIMESTAMP,
    WATERMARK FOR ts AS ts - INTERVAL '30' SECOND)
WITH (connector = 'kafka', type = 'source', topic = 't.sends');

CREATE TABLE per_minute (tenant TEXT, minute TIMESTAMP, sends BIGINT, failures BIGINT)
WITH (connector = 'kafka', type = 'sink', topic = 't.per_minute');
CREATE TABLE per_two_minutes (channel TEXT, window_start TIMESTAMP, n BIGINT)
WITH (connector = 'kafka', type = 'sink', topic = 't.per_two_minutes');

INSERT INTO per_minute
SELECT tenant, tumble(INTERVAL '1' MINUTE) AS minute, count(*) AS sends, count(*) FILTER (WHERE NOT ok) AS failures
FROM sends GROUP BY tenant, minute;

INSERT INTO per_two_minutes
SELECT channel, hop(INTERVAL '1' MINUTE, INTERVAL '2' MINUTE) AS window_start, count(*) AS n
FROM sends GROUP BY channel, window_start;
";

const AGGREGATES_INPUT: &str = r#"{"tenant":"acme","channel":"sms","ok":true,"ts":"2026-01-01T10:00:10"}
{"tenant":"acme","channel":"sms","ok":false,"ts":"2026-01-01T10:00:50"}
{"tenant":"globex","channel":"email","ok":true,"ts":"2026-01-01T10:00:20"}
{"tenant":"acme","channel":"sms","ok":true,"ts":"2026-01-01T10:01:05"}
{"tenant":"acme","channel":"email","ok":true,"ts":"2026-01-01T10:00:40"}
{"tenant":"acme","channel":"sms","ok":true,"ts":"2026-01-01T10:00:20"}
{"tenant":"globex","channel":"sms","ok":true,"ts":"2026-01-01T10:02:40"}
{"tenant":"acme","channel":"sms","ok":true,"ts":"2026-01-01T10:03:40"}
"#;

#[tokio::test]
async fn tumbling_and_hopping_aggregates_emit_at_window_close() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[
            ("10_rollups.sql", AGGREGATES_SQL),
            ("10_rollups.test/input/sends.jsonl", AGGREGATES_INPUT),
            // Row 5 (10:00:40) is out of order but within the 30 s watermark lag of row 4 (10:01:05);
            // row 6 (10:00:20) is behind it: late, dropped. Row 8 moves the watermark to 10:03:10, so
            // every minute up to 10:03 has closed; 10:03 stays open.
            (
                "10_rollups.test/expected/per_minute.jsonl",
                r#"{"tenant":"acme","minute":"2026-01-01T10:00:00","sends":3,"failures":1}
{"tenant":"globex","minute":"2026-01-01T10:00:00","sends":1,"failures":0}
{"tenant":"acme","minute":"2026-01-01T10:01:00","sends":1,"failures":0}
{"tenant":"globex","minute":"2026-01-01T10:02:00","sends":1,"failures":0}
"#,
            ),
            // Two-minute windows every minute: [09:59, 10:01), [10:00, 10:02), [10:01, 10:03) have closed.
            (
                "10_rollups.test/expected/per_two_minutes.jsonl",
                r#"{"channel":"sms","window_start":"2026-01-01T09:59:00","n":2}
{"channel":"email","window_start":"2026-01-01T09:59:00","n":2}
{"channel":"sms","window_start":"2026-01-01T10:00:00","n":3}
{"channel":"email","window_start":"2026-01-01T10:00:00","n":2}
{"channel":"sms","window_start":"2026-01-01T10:01:00","n":2}
"#,
            ),
        ],
    );
    let results = golden::run_dir(dir.path(), &Config::embedded()).await.unwrap();
    assert!(results[0].failures.is_empty(), "{:#?}", results[0].failures);
}

/// A run that checkpoints, writes more, dies without checkpointing, and is
/// recovered, ends with exactly the outputs of a run that never stopped.
#[tokio::test]
async fn recovery_from_a_checkpoint_matches_an_uninterrupted_run() {
    use notiflow::engine::Checkpointing;
    use notiflow::engine::checkpoint::StateTopic;
    use notiflow::logs::Logs;
    use notiflow::job::{StopWhen, run_job};
    use notiflow_connector::memory::MemoryBroker;
    use notiflow_connector::{OutRecord, TopicAdmin};
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let join_sql = JOIN_SQL
        .replace("CREATE TABLE sends ", "CREATE TABLE jsends ")
        .replace("CREATE TABLE receipts ", "CREATE TABLE jreceipts ")
        .replace("'t.sends'", "'t.jsends'")
        .replace("'t.receipts'", "'t.jreceipts'")
        .replace("FROM sends s", "FROM jsends s")
        .replace("JOIN receipts r", "JOIN jreceipts r");
    let sql = format!(
        "{WINDOWS_SQL}\n{}\n{join_sql}",
        AGGREGATES_SQL.replace("CREATE TABLE sends", "CREATE TABLE sends2").replace("'t.sends'", "'t.sends2'").replace("FROM sends", "FROM sends2")
    );
    write(dir.path(), &[("10_all.sql", &sql)]);
    let mut config = Config::embedded();
    config.topics.partitions = 3;
    config.pipeline.batch_max_records = 50;
    let records = |range: std::ops::Range<usize>| -> Vec<OutRecord> {
        range
            .flat_map(|i| {
                let minute = i / 20;
                let second = (i * 7) % 60;
                let recipient = format!("r{}", i % 13);
                let ts = format!("2026-01-01T{:02}:{:02}:{second:02}", 10 + minute / 60, minute % 60);
                [
                    OutRecord {
                        topic: Arc::from("t.sends"),
                        key: Some(recipient.clone().into_bytes()),
                        payload: format!(r#"{{"id":"{i}","recipient":"{recipient}","channel":"sms","content":"c{}","ts":"{ts}"}}"#, i % 4).into_bytes(),
                        headers: vec![],
                    },
                    OutRecord {
                        topic: Arc::from("t.sends2"),
                        key: Some(recipient.clone().into_bytes()),
                        payload: format!(r#"{{"tenant":"{recipient}","channel":"sms","ok":{},"ts":"{ts}"}}"#, i % 5 != 0).into_bytes(),
                        headers: vec![],
                    },
                    // Message i is sent at ts; its receipt (for 2 in 3 messages) comes 3 messages later.
                    OutRecord {
                        topic: Arc::from("t.jsends"),
                        key: Some(format!("m{i}").into_bytes()),
                        payload: format!(r#"{{"message_id":"m{i}","channel":"sms","ts":"{ts}"}}"#).into_bytes(),
                        headers: vec![],
                    },
                    OutRecord {
                        topic: Arc::from("t.jreceipts"),
                        key: Some(format!("m{}", i.saturating_sub(3)).into_bytes()),
                        payload: if i >= 3 && (i - 3) % 3 != 0 {
                            format!(r#"{{"message_id":"m{}","status":"delivered","ts":"{ts}"}}"#, i - 3)
                        } else {
                            format!(r#"{{"message_id":"none{i}","status":"noise","ts":"{ts}"}}"#)
                        }
                        .into_bytes(),
                        headers: vec![],
                    },
                ]
            })
            .collect()
    };
    let outputs = |broker: &MemoryBroker| -> BTreeMap<String, Vec<String>> {
        ["t.deduped", "t.duplicates", "t.capped", "t.first_ids", "t.first_recipients", "t.per_minute", "t.per_two_minutes", "t.delivered", "t.outcomes"]
            .iter()
            .map(|t| {
                let mut rows: Vec<String> = broker.read_all(t).iter().map(|r| String::from_utf8(r.payload.clone().unwrap()).unwrap()).collect();
                rows.sort();
                (t.to_string(), rows)
            })
            .collect()
    };
    async fn drain(run: &mut notiflow::engine::PipelineRun, broker: &MemoryBroker, config: &Config) {
        let mut consumer = broker.consumer("g", &["t.sends", "t.sends2", "t.jsends", "t.jreceipts"]);
        let (_keep, shutdown) = tokio::sync::watch::channel(false);
        run_job(run, &mut consumer, &broker.producer(), notiflow::batch_limits(config), StopWhen::IdleFor(Duration::from_millis(20)), shutdown)
            .await
            .unwrap();
    }
    async fn checkpointed(run: &mut notiflow::engine::PipelineRun, broker: &MemoryBroker, config: &Config) {
        let checkpointing = Checkpointing { state: StateTopic::new(notiflow::state_topic(run, config)), interval: Duration::from_secs(3600) };
        run.prepare(broker).await.unwrap();
        run.enable_checkpoints(checkpointing, Logs::Memory(broker.clone())).await.unwrap();
    }

    // Uninterrupted.
    let whole = MemoryBroker::new();
    let mut run = notiflow::load_pipeline(dir.path(), &config).await.unwrap();
    whole.ensure_topics(&notiflow::topic_specs(&run, &config)).await.unwrap();
    run.prepare(&whole).await.unwrap();
    whole.append(records(0..600)).unwrap();
    drain(&mut run, &whole, &config).await;
    let expected = outputs(&whole);
    assert!(expected.values().all(|rows| !rows.is_empty()), "{expected:?}");

    // Interrupted: checkpoint after a third, crash after two thirds, recover, finish.
    let broker = MemoryBroker::new();
    let mut first = notiflow::load_pipeline(dir.path(), &config).await.unwrap();
    broker.ensure_topics(&notiflow::topic_specs(&first, &config)).await.unwrap();
    checkpointed(&mut first, &broker, &config).await;
    broker.append(records(0..200)).unwrap();
    drain(&mut first, &broker, &config).await; // stops idle: finish() checkpoints and commits
    let mut crashing = notiflow::load_pipeline(dir.path(), &config).await.unwrap();
    checkpointed(&mut crashing, &broker, &config).await;
    broker.append(records(200..400)).unwrap();
    {
        // Process without ever checkpointing or committing, then vanish.
        let mut consumer = broker.consumer("g", &["t.sends", "t.sends2", "t.jsends", "t.jreceipts"]);
        let (_keep, shutdown) = tokio::sync::watch::channel(false);
        let mut no_finish = NoFinish(&mut crashing);
        run_job(&mut no_finish, &mut consumer, &broker.producer(), notiflow::batch_limits(&config), StopWhen::IdleFor(Duration::from_millis(20)), shutdown)
            .await
            .unwrap();
    }
    assert_eq!(crashing.restored_partitions, 12, "3 partitions of 4 topics came back from the checkpoint");
    broker.append(records(400..600)).unwrap();
    let mut recovered = notiflow::load_pipeline(dir.path(), &config).await.unwrap();
    checkpointed(&mut recovered, &broker, &config).await;
    drain(&mut recovered, &broker, &config).await;
    assert_eq!(recovered.restored_partitions, 12);
    assert!(recovered.suppressed > 0, "the replay met outputs already written");
    let got = outputs(&broker);
    for (topic, rows) in &expected {
        let missing: Vec<_> = rows.iter().filter(|r| !got[topic].contains(r)).collect();
        let extra: Vec<_> = got[topic].iter().filter(|r| !rows.contains(r)).collect();
        assert!(missing.is_empty() && extra.is_empty() && rows.len() == got[topic].len(),
            "{topic}: {} expected, {} got; missing {missing:?}; extra {extra:?}", rows.len(), got[topic].len());
    }
}

/// A processor that dies before its job can checkpoint.
struct NoFinish<'a>(&'a mut notiflow::engine::PipelineRun);

impl notiflow::job::BatchProcessor for NoFinish<'_> {
    async fn process(&mut self, records: &[notiflow_connector::Record], out: &mut Vec<notiflow_connector::OutRecord>) -> anyhow::Result<()> {
        self.0.process(records, out).await
    }
    fn durable(&mut self, written: &notiflow_connector::Positions, consumed: &notiflow_connector::Offsets) -> anyhow::Result<Option<notiflow::job::Commit>> {
        self.0.durable(written, consumed).map(|_| None)
    }
    fn finish(&mut self) -> anyhow::Result<Option<notiflow::job::Commit>> {
        Ok(None)
    }
    fn timers_due(&self) -> bool {
        self.0.timers_due()
    }
    fn commit_due(&self) -> bool {
        self.0.commit_due()
    }
    async fn rebalance(&mut self, changes: Vec<notiflow_connector::AssignmentChange>) -> anyhow::Result<()> {
        self.0.rebalance(changes).await
    }
}

const JOIN_SQL: &str = "
CREATE TABLE sends (message_id TEXT, channel TEXT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' MINUTE)
WITH (connector = 'kafka', type = 'source', topic = 't.sends');
CREATE TABLE receipts (message_id TEXT, status TEXT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' MINUTE)
WITH (connector = 'kafka', type = 'source', topic = 't.receipts');
CREATE TABLE delivered (message_id TEXT, channel TEXT, status TEXT) WITH (connector = 'kafka', type = 'sink', topic = 't.delivered');
CREATE TABLE outcomes (message_id TEXT, status TEXT) WITH (connector = 'kafka', type = 'sink', topic = 't.outcomes');

INSERT INTO delivered
SELECT s.message_id, s.channel, r.status
FROM sends s JOIN receipts r
  ON s.message_id = r.message_id AND r.ts BETWEEN s.ts AND s.ts + INTERVAL '10' MINUTE;

INSERT INTO outcomes
SELECT s.message_id, coalesce(r.status, 'undelivered_timeout') AS status
FROM sends s LEFT JOIN receipts r
  ON s.message_id = r.message_id AND r.ts >= s.ts - INTERVAL '1' MINUTE AND r.ts <= s.ts + INTERVAL '10' MINUTE;
";

#[tokio::test]
async fn interval_joins_inner_and_left_with_timeout() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[
            ("10_join.sql", JOIN_SQL),
            (
                "10_join.test/input/sends.jsonl",
                r#"{"message_id":"m1","channel":"sms","ts":"2026-01-01T10:00:00"}
{"message_id":"m2","channel":"email","ts":"2026-01-01T10:01:00"}
{"message_id":"m3","channel":"sms","ts":"2026-01-01T10:02:00"}
{"message_id":"m4","channel":"push","ts":"2026-01-01T10:30:00"}
"#,
            ),
            (
                "10_join.test/input/receipts.jsonl",
                r#"{"message_id":"m1","status":"delivered","ts":"2026-01-01T10:00:30"}
{"message_id":"m3","status":"failed","ts":"2026-01-01T10:05:00"}
{"message_id":"m9","status":"delivered","ts":"2026-01-01T10:06:00"}
{"message_id":"m2","status":"delivered","ts":"2026-01-01T10:20:00"}
{"message_id":"m4","status":"read","ts":"2026-01-01T10:40:00"}
"#,
            ),
            // m2's receipt came 19 minutes after it: outside the interval. m4's came exactly 10 minutes after (bound included).
            (
                "10_join.test/expected/delivered.jsonl",
                r#"{"message_id":"m1","channel":"sms","status":"delivered"}
{"message_id":"m3","channel":"sms","status":"failed"}
{"message_id":"m4","channel":"push","status":"read"}
"#,
            ),
            // m2 times out once the receipts' watermark (10:39) is past 10:01 + 10 min.
            (
                "10_join.test/expected/outcomes.jsonl",
                r#"{"message_id":"m1","status":"delivered"}
{"message_id":"m2","status":"undelivered_timeout"}
{"message_id":"m3","status":"failed"}
{"message_id":"m4","status":"read"}
"#,
            ),
        ],
    );
    let results = golden::run_dir(dir.path(), &Config::embedded()).await.unwrap();
    assert!(results[0].failures.is_empty(), "{:#?}", results[0].failures);
}

#[tokio::test]
async fn lookup_join_enriches_from_a_compacted_topic() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[
            (
                "10_enrich.sql",
                "CREATE TABLE requests (request_id TEXT, template TEXT) WITH (connector = 'kafka', type = 'source', topic = 't.requests');
                 CREATE TABLE templates (id TEXT, version BIGINT, subject TEXT)
                 WITH (connector = 'kafka', type = 'lookup', topic = 't.templates', 'lookup.key_field' = 'id');
                 CREATE TABLE rendered (request_id TEXT, version BIGINT, subject TEXT) WITH (connector = 'kafka', type = 'sink', topic = 't.rendered');
                 CREATE TABLE known (request_id TEXT, subject TEXT) WITH (connector = 'kafka', type = 'sink', topic = 't.known');
                 INSERT INTO rendered SELECT r.request_id, t.version, coalesce(t.subject, 'NO TEMPLATE') AS subject
                 FROM requests r LEFT JOIN templates t ON r.template = t.id;
                 INSERT INTO known SELECT r.request_id, t.subject FROM requests r JOIN templates t ON t.id = r.template;",
            ),
            // The newest version of a key wins.
            (
                "10_enrich.test/input/templates.jsonl",
                "welcome|{\"id\":\"welcome\",\"version\":1,\"subject\":\"Hi\"}\nwelcome|{\"id\":\"welcome\",\"version\":2,\"subject\":\"Hello\"}\nreset|{\"id\":\"reset\",\"version\":1,\"subject\":\"Reset your password\"}\n",
            ),
            ("10_enrich.test/input/requests.jsonl", "{\"request_id\":\"a\",\"template\":\"welcome\"}\n{\"request_id\":\"b\",\"template\":\"missing\"}\n{\"request_id\":\"c\",\"template\":\"reset\"}\n"),
            (
                "10_enrich.test/expected/rendered.jsonl",
                "{\"request_id\":\"a\",\"version\":2,\"subject\":\"Hello\"}\n{\"request_id\":\"b\",\"subject\":\"NO TEMPLATE\"}\n{\"request_id\":\"c\",\"version\":1,\"subject\":\"Reset your password\"}\n",
            ),
            ("10_enrich.test/expected/known.jsonl", "{\"request_id\":\"a\",\"subject\":\"Hello\"}\n{\"request_id\":\"c\",\"subject\":\"Reset your password\"}\n"),
        ],
    );
    let results = golden::run_dir(dir.path(), &Config::embedded()).await.unwrap();
    assert!(results[0].failures.is_empty(), "{:#?}", results[0].failures);

    // A lookup table used as a stream is refused, with the line.
    let error = plan_error(&format!("{TABLES}CREATE TABLE t (id TEXT) WITH (connector = 'kafka', type = 'lookup', topic = 't', 'lookup.key_field' = 'id');\nINSERT INTO k SELECT id FROM t;")).await;
    assert!(error.starts_with("DIR/20_stage.sql:4: lookup table t can only be joined"), "{error}");
}

#[tokio::test]
async fn unnest_struct_fields_and_json_access() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[
            (
                "10_expand.sql",
                "CREATE TABLE requests (request_id TEXT, recipients STRUCT<user_id TEXT, email TEXT>[], params JSON)
                 WITH (connector = 'kafka', type = 'source', topic = 't.requests');
                 CREATE TABLE deliveries (request_id TEXT, user_id TEXT, email TEXT, order_id TEXT, items TEXT)
                 WITH (connector = 'kafka', type = 'sink', topic = 't.deliveries');
                 CREATE VIEW expanded AS SELECT request_id, unnest(recipients) AS r, params FROM requests;
                 INSERT INTO deliveries
                 SELECT request_id, r['user_id'] AS user_id, r['email'] AS email,
                        json_get(params, 'order_id') AS order_id, json_get(params, 'items') AS items
                 FROM expanded;",
            ),
            (
                "10_expand.test/input/requests.jsonl",
                r#"{"request_id":"a","recipients":[{"user_id":"u1"},{"email":"x@y.z"}],"params":{"order_id":"o-7","items":[1,2]}}
{"request_id":"b","recipients":[],"params":{}}
{"request_id":"c","recipients":[{"user_id":"u3","email":"c@d.e"}]}
"#,
            ),
            (
                "10_expand.test/expected/deliveries.jsonl",
                r#"{"request_id":"a","user_id":"u1","order_id":"o-7","items":"[1,2]"}
{"request_id":"a","email":"x@y.z","order_id":"o-7","items":"[1,2]"}
{"request_id":"c","user_id":"u3","email":"c@d.e"}
"#,
            ),
        ],
    );
    let results = golden::run_dir(dir.path(), &Config::embedded()).await.unwrap();
    assert!(results[0].failures.is_empty(), "{:#?}", results[0].failures);
}

/// Offsets a broker skipped are counted, not silently lost.
#[tokio::test]
async fn offset_gaps_in_a_source_partition_are_reported() {
    use notiflow::job::BatchProcessor;
    use notiflow_connector::Record;
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &[("10_windows.sql", WINDOWS_SQL)]);
    let mut run = notiflow::load_pipeline(dir.path(), &Config::embedded()).await.unwrap();
    let record = |partition: i32, offset: i64| Record {
        topic: Arc::from("t.sends"),
        partition,
        offset,
        key: Some(b"r".to_vec()),
        payload: Some(format!(r#"{{"id":"{offset}","recipient":"r","channel":"sms","content":"c{offset}","ts":"2026-01-01T10:00:00"}}"#).into_bytes()),
        timestamp_ms: Some(0),
        headers: vec![],
    };
    let mut out = Vec::new();
    run.process(&[record(0, 0), record(0, 1), record(1, 7)], &mut out).await.unwrap();
    assert_eq!(run.gap_records, 0, "a partition's first record sets the expectation");
    run.process(&[record(0, 2), record(0, 6), record(1, 8)], &mut out).await.unwrap();
    assert_eq!(run.gap_records, 3, "offsets 3, 4, 5 of partition 0 never came");
}
