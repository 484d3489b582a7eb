//! `kill -9` mid-stream on the real broker: a stateful (dedupe) and a
//! stateless flow; after a restart nothing is lost and nothing is written twice.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notiflow_connector::{LogReader, OutRecord, Sink, TopicAdmin, TopicSpec};
use notiflow_kafka::{KafkaAdmin, KafkaReader, KafkaSink, read_topic_to_end};

use crate::support;

const SQL: &str = "
CREATE TABLE sends (id TEXT NOT NULL, recipient TEXT NOT NULL, content TEXT NOT NULL, ts TIMESTAMP NOT NULL,
    WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
WITH (connector = 'kafka', type = 'source', topic = 'x.sends');
CREATE TABLE deduped (id TEXT) WITH (connector = 'kafka', type = 'sink', topic = 'x.deduped');
CREATE TABLE copied (id TEXT) WITH (connector = 'kafka', type = 'sink', topic = 'x.copied');
INSERT INTO deduped SELECT id FROM (
    SELECT id, ROW_NUMBER() OVER (PARTITION BY recipient, content, sliding(INTERVAL '5' MINUTE) ORDER BY ts) AS rn FROM sends
) WHERE rn = 1;
INSERT INTO copied SELECT id FROM sends;
";

const PAIRS: usize = 20_000;
const COPIES: usize = 3;

async fn end_total(reader: &KafkaReader, topic: &str) -> i64 {
    reader.end_offsets(topic).await.unwrap().iter().map(|(_, end)| end).sum()
}

fn ids(records: &[notiflow_connector::Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(r.payload.as_deref().unwrap()).unwrap();
            v["id"].as_str().unwrap().to_string()
        })
        .collect()
}

/// Topics, input and config of one run of the dedupe + copy pipeline.
struct Setup {
    _dir: tempfile::TempDir,
    sql_dir: std::path::PathBuf,
    config: notiflow::config::Config,
    kafka: notiflow_kafka::KafkaConfig,
    prefix: String,
    pairs: usize,
    first_of_pair: HashSet<String>,
}

impl Setup {
    /// Each (recipient, content) pair `COPIES` times within a minute; the
    /// record key is the recipient, so a pair's copies share a partition.
    async fn new(pairs: usize, partitions: i32) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let sql_dir = dir.path().join("sql");
        std::fs::create_dir_all(&sql_dir).unwrap();
        std::fs::write(sql_dir.join("10_dedupe.sql"), SQL).unwrap();
        let mut config = support::kafka_config(partitions);
        let prefix = support::unique("x");
        config.topics.rename = ["sends", "deduped", "copied", "dlq", "events"]
            .iter()
            .map(|t| (if *t == "dlq" || *t == "events" { format!("notify.{t}") } else { format!("x.{t}") }, format!("{prefix}.{t}")))
            .collect();
        let kafka = config.kafka.clone().unwrap();
        let admin = KafkaAdmin::new(&kafka).unwrap();
        admin
            .ensure_topics(&["sends", "deduped", "copied", "dlq", "events"].map(|t| TopicSpec::new(format!("{prefix}.{t}"), partitions)))
            .await
            .unwrap();
        let first_of_pair = (0..pairs).map(|pair| format!("{pair}-0")).collect();
        Setup { _dir: dir, sql_dir, config, kafka, prefix, pairs, first_of_pair }
    }

    /// Produces copies `copies` of every pair, in copy order.
    async fn produce(&self, copies: std::ops::Range<usize>) {
        let sends: Arc<str> = Arc::from(self.topic("sends").as_str());
        let mut records = Vec::with_capacity(self.pairs * copies.len());
        for copy in copies {
            for pair in 0..self.pairs {
                let id = format!("{pair}-{copy}");
                let recipient = format!("r{}", pair % 5000);
                let body = serde_json::json!({
                    "id": id, "recipient": recipient, "content": format!("c{}", pair / 5000),
                    "ts": format!("2026-11-23T10:00:{:02}", copy * 10),
                });
                records.push(OutRecord { topic: sends.clone(), key: Some(recipient.into_bytes()), payload: body.to_string().into_bytes(), headers: vec![] });
            }
        }
        // One record per producer batch: tansu 0.6 serves a fetch that starts
        // inside a record batch from the *next* batch on, silently skipping the
        // rest of the batch (real Kafka returns the whole batch and the client
        // drops what precedes the offset). A consumer resuming mid-batch on tansu
        // therefore loses records; with one-record batches every offset is a
        // batch start. See docs/exactly-once.md.
        let mut unbatched = self.kafka.clone();
        unbatched.properties.insert("batch.num.messages".into(), "1".into());
        unbatched.properties.insert("linger.ms".into(), "0".into());
        // One request per record is slow on tansu (10,000 records took over 30 s on a 2-core machine).
        unbatched.properties.insert("message.timeout.ms".into(), "300000".into());
        let started = std::time::Instant::now();
        KafkaSink::new(&unbatched).unwrap().send_all(records).await.unwrap();
        eprintln!("produced unbatched in {:?}", started.elapsed());
    }

    /// Kills instance "a" with -9 (before it copied everything), restarts it
    /// until idle and returns what the restart printed (it resumed from checkpoints).
    async fn killed_and_restarted(&self, mut child: std::process::Child) -> String {
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let at_kill = end_total(&KafkaReader::new(&self.kafka), &self.topic("copied")).await;
        assert!(at_kill < (self.pairs * COPIES) as i64, "killed too late to test anything: {at_kill}");

        let said = finished(self.spawn("a", "20000"), self._dir.path(), "a");
        eprintln!("killed after {at_kill} copies; restart said:\n{said}\n{}", self.log("a"));
        assert!(said.contains("restored state of"), "the restart resumed from the checkpoints");
        said
    }

    fn topic(&self, t: &str) -> String {
        format!("{}.{t}", self.prefix)
    }

    fn spawn(&self, instance: &str, idle_ms: &str) -> std::process::Child {
        spawn_instance(self._dir.path(), &self.sql_dir, &self.config, instance, idle_ms)
    }

    async fn wait_for_log(&self, instance: &str, needle: &str) {
        wait_for_log(self._dir.path(), instance, needle).await
    }

    fn log(&self, instance: &str) -> String {
        instance_log(self._dir.path(), instance)
    }

    /// Waits until `at_least` copies are out, the pipeline still running.
    /// Counted by reading to partition EOF: tansu's end offsets lag the last batch.
    async fn wait_for_copies(&self, instance: &str, child: &mut std::process::Child, at_least: usize) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let copied = read_topic_to_end(&self.kafka, &self.topic("copied")).await.unwrap().len();
            if copied >= at_least {
                return;
            }
            if child.try_wait().unwrap().is_some() {
                let stdout = std::io::read_to_string(child.stdout.take().unwrap()).unwrap_or_default();
                panic!("the pipeline exited early ({copied} copies seen):\n{stdout}\n{}", self.log(instance));
            }
            assert!(Instant::now() < deadline, "no progress: {copied} copied");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every input copied exactly once; the dedupe output is exactly the
    /// first copy of each pair.
    async fn check_outputs(&self) {
        let copied = ids(&read_topic_to_end(&self.kafka, &self.topic("copied")).await.unwrap());
        let mut counts: HashMap<&str, usize> = HashMap::new();
        copied.iter().for_each(|id| *counts.entry(id).or_default() += 1);
        let twice = counts.values().filter(|n| **n > 1).count();
        eprintln!("copied: {} records, {} distinct, {twice} written more than once", copied.len(), counts.len());
        assert_eq!(counts.len(), self.pairs * COPIES, "every input copied");
        assert!(counts.values().all(|n| *n == 1), "a copy was written twice");
        assert_eq!(copied.len(), self.pairs * COPIES);

        let deduped = ids(&read_topic_to_end(&self.kafka, &self.topic("deduped")).await.unwrap());
        assert_eq!(deduped.len(), self.pairs, "one per pair, none twice");
        assert_eq!(deduped.iter().cloned().collect::<HashSet<_>>(), self.first_of_pair, "the first copy of each pair passed");
    }
}

/// Starts `notiflow run` as instance `instance` of the group (static group
/// membership: a restarted instance takes its partitions back at once); its
/// log goes to `<base>/<instance>/log.txt`.
pub fn spawn_instance(base: &std::path::Path, sql_dir: &std::path::Path, config: &notiflow::config::Config, instance: &str, idle_ms: &str) -> std::process::Child {
    let mut config = config.clone();
    let id = format!("{}-{instance}", config.pipeline.group_id);
    config.kafka.as_mut().unwrap().properties.insert("group.instance.id".into(), id);
    let dir = base.join(instance);
    std::fs::create_dir_all(&dir).unwrap();
    let toml = support::write_toml_with(&config, &dir, &format!("batch_max_records = 500\ncheckpoint_interval_ms = 150\nworkers = {}", config.pipeline.workers));
    std::process::Command::new(env!("CARGO_BIN_EXE_notiflow"))
        .arg("run")
        .arg(sql_dir)
        .args(["--config", toml.to_str().unwrap(), "--exit-when-idle-ms", idle_ms])
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(dir.join("log.txt")).unwrap())
        .spawn()
        .unwrap()
}

/// Waits until the instance's log has a line containing `needle`.
pub async fn wait_for_log(base: &std::path::Path, instance: &str, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !instance_log(base, instance).contains(needle) {
        assert!(Instant::now() < deadline, "{instance} never logged {needle:?}:\n{}", instance_log(base, instance));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn instance_log(base: &std::path::Path, instance: &str) -> String {
    std::fs::read_to_string(base.join(instance).join("log.txt")).unwrap_or_default()
}

/// The instance's stdout once it exits (successfully); its log if it failed.
pub fn finished(child: std::process::Child, base: &std::path::Path, instance: &str) -> String {
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success(), "{stdout}\n{}", instance_log(base, instance));
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_minus_nine_mid_stream_loses_nothing_and_duplicates_nothing() {
    let _turn = support::one_at_a_time().await;
    let setup = Setup::new(PAIRS, 3).await;
    setup.produce(0..COPIES).await;
    // Kill -9 once part of the input has been copied, mid-stream.
    let mut child = setup.spawn("a", "60000");
    setup.wait_for_copies("a", &mut child, PAIRS * COPIES / 3).await;
    setup.killed_and_restarted(child).await;
    setup.check_outputs().await;
}

/// One process running two members of the group (`pipeline.workers = 2`, a
/// thread each), killed with -9 mid-stream and restarted: the output is as if
/// one instance had done it all, and both members did part of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_in_one_process_share_partitions_and_survive_kill_minus_nine() {
    let _turn = support::one_at_a_time().await;
    let mut setup = Setup::new(PAIRS, 4).await;
    setup.config.pipeline.workers = 2;
    setup.produce(0..COPIES).await;
    let mut child = setup.spawn("a", "60000");
    // Early: two members copy fast, and the restart should have work left for both
    // (end offsets, cheap to poll, rather than reading the outputs to the end).
    let reader = KafkaReader::new(&setup.kafka);
    let deadline = Instant::now() + Duration::from_secs(120);
    while end_total(&reader, &setup.topic("copied")).await < (PAIRS * COPIES / 10) as i64 {
        assert!(child.try_wait().unwrap().is_none() && Instant::now() < deadline, "no progress before the kill:\n{}", setup.log("a"));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let said = setup.killed_and_restarted(child).await;
    let each: Vec<u64> = said
        .lines()
        .find_map(|l| l.strip_prefix("members: 2, records in each: "))
        .map(|l| l.split(", ").filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default();
    assert!(each.len() == 2 && each.iter().all(|n| *n > 0), "both members read records: {each:?}");
    setup.check_outputs().await;
}

/// Two instances in one consumer group. The first sees every pair's first
/// copy; the second joins, takes half the partitions and their dedupe state
/// (from the state topic); then the repeats arrive, which only the moved
/// state can recognise. The output is as if one instance had done it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_takes_over_partitions_with_their_state() {
    let _turn = support::one_at_a_time().await;
    let setup = Setup::new(PAIRS / 2, 4).await;
    setup.produce(0..1).await;
    let mut first = setup.spawn("a", "15000");
    setup.wait_for_copies("a", &mut first, PAIRS / 2).await;
    let second = setup.spawn("b", "15000");
    setup.wait_for_log("b", "replayed_outputs").await;
    setup.produce(1..COPIES).await;
    let (said_first, said_second) = (finished(first, setup._dir.path(), "a"), finished(second, setup._dir.path(), "b"));
    eprintln!("first instance:\n{said_first}\n{}\nsecond instance:\n{said_second}\n{}", setup.log("a"), setup.log("b"));
    let records_in = |said: &str| -> u64 {
        said.lines().find_map(|l| l.strip_prefix("records in: ")?.split_whitespace().next()?.parse().ok()).unwrap_or(0)
    };
    assert!(records_in(&said_second) > 0 && records_in(&said_first) > 0, "both instances read records");
    assert!(said_second.contains("restored state of"), "the second instance restored its partitions' state");
    setup.check_outputs().await;
}

/// Lookup tables are not split by the group: an update to a template reaches
/// both instances, whichever owns the template's partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instance_follows_lookup_updates() {
    let _turn = support::one_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let config = support::kafka_config(2);
    let prefix = support::unique("l");
    let topic = |t: &str| format!("{prefix}.{t}");
    let sql_dir = dir.path().join("sql");
    std::fs::create_dir_all(&sql_dir).unwrap();
    std::fs::write(
        sql_dir.join("10_lookup.sql"),
        format!(
            "CREATE TABLE sends (id TEXT, template TEXT) WITH (connector = 'kafka', type = 'source', topic = '{}');
             CREATE TABLE templates (id TEXT, body TEXT) WITH (connector = 'kafka', type = 'lookup', topic = '{}', 'lookup.key_field' = 'id');
             CREATE TABLE out (id TEXT, body TEXT) WITH (connector = 'kafka', type = 'sink', topic = '{}');
             INSERT INTO out SELECT s.id, t.body FROM sends s JOIN templates t ON s.template = t.id;",
            topic("sends"),
            topic("templates"),
            topic("out")
        ),
    )
    .unwrap();
    let kafka = config.kafka.clone().unwrap();
    KafkaAdmin::new(&kafka)
        .unwrap()
        .ensure_topics(&[TopicSpec::new(topic("sends"), 2), TopicSpec { name: topic("templates"), partitions: 2, compacted: true }, TopicSpec::new(topic("out"), 2)])
        .await
        .unwrap();
    let sink = KafkaSink::new(&kafka).unwrap();
    let template = |body: &str| OutRecord {
        topic: Arc::from(topic("templates").as_str()),
        key: Some(b"t1".to_vec()),
        payload: format!(r#"{{"id":"t1","body":"{body}"}}"#).into_bytes(),
        headers: vec![],
    };
    sink.send_all(vec![template("v1")]).await.unwrap();
    let (a, b) = (spawn_instance(dir.path(), &sql_dir, &config, "a", "8000"), spawn_instance(dir.path(), &sql_dir, &config, "b", "8000"));
    // The group settles with one sends partition per member (logged once its state is restored).
    let settled = async {
        wait_for_log(dir.path(), "a", "assigned=1").await;
        wait_for_log(dir.path(), "b", "assigned=1").await;
    };
    if tokio::time::timeout(Duration::from_secs(50), settled).await.is_err() {
        panic!("the group did not settle:\na:\n{}\nb:\n{}", instance_log(dir.path(), "a"), instance_log(dir.path(), "b"));
    }
    sink.send_all(vec![template("v2")]).await.unwrap();
    // The update is followed within milliseconds; give it ample time before the stream needs it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sends: Vec<OutRecord> = (0..200)
        .map(|i| OutRecord {
            topic: Arc::from(topic("sends").as_str()),
            key: Some(format!("k{i}").into_bytes()),
            payload: format!(r#"{{"id":"{i}","template":"t1"}}"#).into_bytes(),
            headers: vec![],
        })
        .collect();
    sink.send_all(sends).await.unwrap();
    let (said_a, said_b) = (finished(a, dir.path(), "a"), finished(b, dir.path(), "b"));
    let out = read_topic_to_end(&kafka, &topic("out")).await.unwrap();
    let bodies: HashMap<String, usize> = out.iter().fold(HashMap::new(), |mut m, r| {
        let v: serde_json::Value = serde_json::from_slice(r.payload.as_deref().unwrap()).unwrap();
        *m.entry(v["body"].as_str().unwrap().to_string()).or_default() += 1;
        m
    });
    assert_eq!(bodies, HashMap::from([("v2".to_string(), 200)]), "a:\n{said_a}\nb:\n{said_b}");
    assert!(!said_a.contains("records in: 0 ") && !said_b.contains("records in: 0 "), "both instances joined sends:\n{said_a}\n{said_b}");
}
