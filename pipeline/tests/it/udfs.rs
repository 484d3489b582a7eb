//! Rust UDFs built with arroyo-udf-plugin (arrow 51), loaded through the C
//! ABI by the engine (arrow 59) and called from SQL.

use notiflow::config::Config;
use notiflow::golden;

fn udf_config() -> Config {
    let mut config = Config::embedded();
    config.udfs.dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../udfs");
    assert!(
        std::env::var_os("NOTIFLOW_UDF_LIB_DIR").is_some(),
        "NOTIFLOW_UDF_LIB_DIR is not set: run the tests with scripts/test.sh, which builds the UDFs"
    );
    config
}

/// The reference the UDF must agree with, written independently here.
fn fnv1a_hex(text: &str) -> String {
    let mut hash: u64 = 0xcbf29ce484222325;
    for byte in text.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x100000001b3);
    }
    format!("{hash:016x}")
}

#[tokio::test]
async fn content_hash_through_the_c_abi_over_ten_thousand_rows_with_nulls() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("10_hash.sql"),
        "CREATE TABLE messages (id TEXT, body TEXT) WITH (connector = 'kafka', type = 'source', topic = 't.messages');
         CREATE TABLE hashed (id TEXT, hash TEXT) WITH (connector = 'kafka', type = 'sink', topic = 't.hashed');
         INSERT INTO hashed SELECT id, content_hash(body) AS hash FROM messages;",
    )
    .unwrap();
    let mut input = String::new();
    let mut expected = String::new();
    for i in 0..10_000 {
        if i % 10 == 3 {
            // Null body: a non-Option argument, so the UDF is not called and the result is null.
            input.push_str(&format!("{{\"id\":\"{i}\"}}\n"));
            expected.push_str(&format!("{{\"id\":\"{i}\"}}\n"));
        } else {
            let body = format!("Hello user {i}, your code is {}", i * 7919 % 1_000_000);
            input.push_str(&format!("{{\"id\":\"{i}\",\"body\":\"{body}\"}}\n"));
            expected.push_str(&format!("{{\"id\":\"{i}\",\"hash\":\"{}\"}}\n", fnv1a_hex(&body)));
        }
    }
    std::fs::create_dir_all(dir.path().join("10_hash.test/input")).unwrap();
    std::fs::create_dir_all(dir.path().join("10_hash.test/expected")).unwrap();
    std::fs::write(dir.path().join("10_hash.test/input/messages.jsonl"), input).unwrap();
    std::fs::write(dir.path().join("10_hash.test/expected/hashed.jsonl"), expected).unwrap();
    let results = golden::run_dir(dir.path(), &udf_config()).await.unwrap();
    assert!(results[0].failures.is_empty(), "{:?}", results[0].failures.iter().take(3).collect::<Vec<_>>());
}

#[tokio::test]
async fn validation_names_an_unbuilt_udf_and_wrong_argument_types() {
    let dir = tempfile::tempdir().unwrap();
    let tables = "CREATE TABLE m (id TEXT, n BIGINT) WITH (connector = 'kafka', type = 'source', topic = 'm');
CREATE TABLE h (id TEXT, hash TEXT) WITH (connector = 'kafka', type = 'sink', topic = 'h');
";
    std::fs::write(dir.path().join("10.sql"), format!("{tables}INSERT INTO h SELECT id, content_hash(id) AS hash FROM m;")).unwrap();
    let mut config = udf_config();
    let empty = tempfile::tempdir().unwrap();
    config.udfs.lib_dir = Some(empty.path().to_path_buf());
    let error = notiflow::load_pipeline(dir.path(), &config).await.err().expect("an unbuilt UDF fails validation").to_string();
    assert!(error.contains("10.sql:3: UDF content_hash is not built"), "{error}");

    std::fs::write(dir.path().join("10.sql"), format!("{tables}INSERT INTO h SELECT id, content_hash(n, n) AS hash FROM m;")).unwrap();
    let error = notiflow::load_pipeline(dir.path(), &udf_config()).await.err().expect("wrong arguments fail").to_string();
    assert!(error.contains("10.sql:3:") && error.contains("content_hash"), "{error}");
}

/// `Option` arguments: a null reaches the function as `None` (it is called).
#[tokio::test]
async fn option_arguments_receive_nulls() {
    let dir = tempfile::tempdir().unwrap();
    let files = [
        (
            "10_rank.sql",
            "CREATE TABLE m (id TEXT, priority TEXT, category TEXT) WITH (connector = 'kafka', type = 'source', topic = 't.m');
             CREATE TABLE r (id TEXT, rank BIGINT) WITH (connector = 'kafka', type = 'sink', topic = 't.r');
             INSERT INTO r SELECT id, priority_rank(priority, category) AS rank FROM m;",
        ),
        (
            "10_rank.test/input/m.jsonl",
            "{\"id\":\"otp\",\"priority\":\"low\",\"category\":\"otp\"}\n{\"id\":\"defaults\"}\n{\"id\":\"promo\",\"priority\":\"low\",\"category\":\"marketing\"}\n{\"id\":\"alert\",\"priority\":\"high\"}\n",
        ),
        ("10_rank.test/expected/r.jsonl", "{\"id\":\"otp\",\"rank\":0}\n{\"id\":\"defaults\",\"rank\":20}\n{\"id\":\"promo\",\"rank\":31}\n{\"id\":\"alert\",\"rank\":10}\n"),
    ];
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let results = golden::run_dir(dir.path(), &udf_config()).await.unwrap();
    assert!(results[0].failures.is_empty(), "{:?}", results[0].failures);
}

fn write_case(dir: &std::path::Path, files: &[(&str, String)]) {
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

const NOTIFY_SQL: &str = "
CREATE TABLE messages (id TEXT, template TEXT, params TEXT, locale TEXT, phone TEXT, region TEXT, email TEXT,
    body TEXT, tz TEXT, ts TIMESTAMP)
WITH (connector = 'kafka', type = 'source', topic = 't.messages', bad_data = 'dlq');
CREATE TABLE out (id TEXT, html TEXT, e164 TEXT, email TEXT, masked TEXT, clean TEXT, day TEXT, quiet_until BIGINT)
WITH (connector = 'kafka', type = 'sink', topic = 't.out');
INSERT INTO out SELECT id,
    render_template(template, params, locale, 'html') AS html,
    normalize_phone(phone, region) AS e164,
    normalize_email(email) AS email,
    mask_pii(body) AS masked,
    mask_sensitive_words(body, 'scam|free money') AS clean,
    local_day(tz, ts) AS day,
    quiet_hours_until(tz, '22:00', '07:00', ts) AS quiet_until
FROM messages;
";

/// Every notification UDF in one query over 10,000 rows with nulls, through
/// the C ABI; rows whose template misses a variable are dead-lettered with
/// reason `template_error` (render_template names its own reason) and their original bytes, and produce no output.
#[tokio::test]
async fn notification_udfs_over_ten_thousand_rows_with_nulls_and_udf_errors_dead_lettered() {
    use chrono::{FixedOffset, NaiveDateTime, TimeZone, Timelike};
    let base = NaiveDateTime::parse_from_str("2026-11-23 00:00:00", "%Y-%m-%d %H:%M:%S").unwrap();
    let shanghai = FixedOffset::east_opt(8 * 3600).unwrap();
    let (mut input, mut expected, mut dead) = (String::new(), String::new(), String::new());
    for i in 0..10_000u32 {
        // Spread over two days in 7-minute steps (UTC wall time in the data).
        let at = base + chrono::Duration::minutes(7 * i as i64);
        let ts = at.format("%Y-%m-%dT%H:%M:%S").to_string();
        let tz = if i % 2 == 0 { "Asia/Shanghai" } else { "UTC" };
        let offset = if i % 2 == 0 { shanghai } else { FixedOffset::east_opt(0).unwrap() };
        let local = offset.from_utc_datetime(&at);
        let mut row = serde_json::json!({"id": i.to_string(), "tz": tz, "ts": ts, "locale": "en"});
        let mut out = serde_json::json!({"id": i.to_string(), "day": local.format("%Y-%m-%d").to_string()});
        // Quiet 22:00-07:00 local: until the next 07:00 local.
        let hour = local.hour();
        if !(7..22).contains(&hour) {
            let day = if hour >= 22 { local.date_naive().succ_opt().unwrap() } else { local.date_naive() };
            let until = offset.from_local_datetime(&day.and_hms_opt(7, 0, 0).unwrap()).unwrap();
            out["quiet_until"] = until.timestamp_millis().into();
        }
        if i % 100 == 42 {
            // A template variable the params lack: the row fails in render_template.
            row["template"] = "Hi {{ name }}, {{ missing }}".into();
            row["params"] = serde_json::json!({"name": "x"}).to_string().into();
            let line = row.to_string();
            input.push_str(&line);
            input.push('\n');
            dead.push_str(&serde_json::json!({"reason": "template_error", "value": line}).to_string());
            dead.push('\n');
            continue;
        }
        if i % 7 != 3 {
            row["template"] = "<p>Hi {{ name }}</p>".into();
            row["params"] = serde_json::json!({"name": format!("<u{i}>")}).to_string().into();
            out["html"] = format!("<p>Hi &lt;u{i}&gt;</p>").into();
        }
        if i % 5 != 4 {
            row["phone"] = format!("138 {:04} {:04}", i % 10_000, (i * 7) % 10_000).into();
            row["region"] = "CN".into();
            out["e164"] = format!("+86138{:04}{:04}", i % 10_000, (i * 7) % 10_000).into();
        } else if i % 10 == 4 {
            row["phone"] = "12".into(); // invalid: null
            row["region"] = "CN".into();
        }
        if i % 3 != 0 {
            row["email"] = format!(" User{i}@Example.COM").into();
            out["email"] = format!("User{i}@example.com").into();
        }
        if i % 11 != 5 {
            let body = format!("scam alert for user{i}@mail.cn, card 6222 0000 1111 {:04}", i);
            row["body"] = body.clone().into();
            out["masked"] = format!("scam alert for u{}@mail.cn, card **** **** **** {:04}", "*".repeat(format!("ser{i}").len()), i).into();
            out["clean"] = body.replacen("scam", "****", 1).into();
        }
        input.push_str(&row.to_string());
        input.push('\n');
        expected.push_str(&out.to_string());
        expected.push('\n');
    }
    let dir = tempfile::tempdir().unwrap();
    write_case(
        dir.path(),
        &[
            ("10_notify.sql", NOTIFY_SQL.to_string()),
            ("10_notify.test/input/messages.jsonl", input),
            ("10_notify.test/expected/out.jsonl", expected),
            ("10_notify.test/expected/_dlq.jsonl", dead),
        ],
    );
    let results = golden::run_dir(dir.path(), &udf_config()).await.unwrap();
    assert!(results[0].failures.is_empty(), "{} failures, first: {:?}", results[0].failures.len(), results[0].failures.iter().take(4).collect::<Vec<_>>());
}

/// An aggregate UDF (`Vec<f64>` argument) in a window aggregate: called once
/// per group when the window closes, nulls left out.
#[tokio::test]
async fn aggregate_udf_in_a_tumbling_window() {
    let mut input = String::new();
    for v in 1..=100 {
        // Every half second, in order, in the 10:00 minute.
        input.push_str(&format!("{{\"provider\":\"a\",\"ms\":{v},\"ts\":\"2026-01-01T10:00:{:02}.{}\"}}\n", v / 2, v % 2 * 5));
    }
    input.push_str("{\"provider\":\"a\",\"ts\":\"2026-01-01T10:00:50\"}\n");
    input.push_str("{\"provider\":\"b\",\"ms\":7.5,\"ts\":\"2026-01-01T10:00:51\"}\n");
    // Moves the watermark past 10:01: the 10:00 window closes; this one stays open.
    input.push_str("{\"provider\":\"b\",\"ms\":1,\"ts\":\"2026-01-01T10:02:00\"}\n");
    let dir = tempfile::tempdir().unwrap();
    write_case(
        dir.path(),
        &[
            (
                "10_latency.sql",
                "CREATE TABLE lat (provider TEXT, ms DOUBLE, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)
                 WITH (connector = 'kafka', type = 'source', topic = 't.lat');
                 CREATE TABLE p (provider TEXT, minute TIMESTAMP, p95_ms DOUBLE, n BIGINT) WITH (connector = 'kafka', type = 'sink', topic = 't.p');
                 INSERT INTO p SELECT provider, tumble(INTERVAL '1' MINUTE) AS minute, p95(ms) AS p95_ms, count(*) AS n
                 FROM lat GROUP BY provider, minute;"
                    .to_string(),
            ),
            ("10_latency.test/input/lat.jsonl", input),
            (
                "10_latency.test/expected/p.jsonl",
                "{\"provider\":\"a\",\"minute\":\"2026-01-01T10:00:00\",\"p95_ms\":95.0,\"n\":101}\n{\"provider\":\"b\",\"minute\":\"2026-01-01T10:00:00\",\"p95_ms\":7.5,\"n\":1}\n"
                    .to_string(),
            ),
        ],
    );
    let results = golden::run_dir(dir.path(), &udf_config()).await.unwrap();
    assert!(results[0].failures.is_empty(), "{:?}", results[0].failures);
}
