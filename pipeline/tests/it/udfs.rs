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
