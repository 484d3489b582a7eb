//! Golden tests for SQL stages (as Arroyo's smoke tests): beside each stage
//! file `NN_name.sql` a folder `NN_name.test/` holds
//! - `input/<source or lookup table>.jsonl`: one record per line, `key|{json}` or `{json}`;
//!   lookup tables' records are applied before the stream records of the same batch;
//!   record timestamps are 2023-11-14T22:13:20Z plus one second per line;
//! - `expected/<sink table>.jsonl`: the rows the sink must receive (compared
//!   as JSON, in any order); `expected/_dlq.jsonl`: `{"reason", "value"}` of
//!   each dead letter;
//! - `ignore.txt` (optional): output fields to leave out of the comparison
//!   (processing times).
//!
//! The whole pipeline directory runs for each case on the in-process log, so
//! a stage is tested with the stages before it, as it runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notiflow_connector::memory::MemoryBroker;
use notiflow_connector::{OutRecord, TopicAdmin};
use serde_json::Value;
use tokio::sync::watch;

use crate::config::Config;
use crate::dlq::headers;
use crate::job::{StopWhen, run_job};

const BASE_TIMESTAMP_MS: i64 = 1_700_000_000_000;

#[derive(Debug)]
pub struct CaseResult {
    pub name: String,
    /// Empty when the case passed.
    pub failures: Vec<String>,
}

/// Runs every case of the pipeline in `dir`. A stage file without a case is a failure.
pub async fn run_dir(dir: &Path, config: &Config) -> anyhow::Result<Vec<CaseResult>> {
    let mut stages = Vec::new();
    let mut cases = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        match path.extension().and_then(|e| e.to_str()) {
            Some("sql") => stages.push(path),
            Some("test") if path.is_dir() => cases.push(path),
            _ => {}
        }
    }
    stages.sort();
    cases.sort();
    let mut results = Vec::new();
    for stage in &stages {
        if !cases.iter().any(|c| c.file_stem() == stage.file_stem()) {
            results.push(CaseResult {
                name: file_name(stage),
                failures: vec![format!("stage {} has no golden test folder {}.test/", file_name(stage), stem(stage))],
            });
        }
    }
    for case in cases {
        let failures = match run_case(dir, &case, config).await {
            Ok(failures) => failures,
            Err(e) => vec![format!("{e:#}")],
        };
        results.push(CaseResult { name: file_name(&case), failures });
    }
    Ok(results)
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()
}

fn stem(path: &Path) -> String {
    path.file_stem().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()
}

async fn run_case(dir: &Path, case: &Path, config: &Config) -> anyhow::Result<Vec<String>> {
    // One partition: offsets in the expected output are the input line numbers.
    let mut config = config.clone();
    config.topics.partitions = 1;
    let config = &config;
    let mut pipeline = crate::load_pipeline(dir, config).await?;
    let broker = MemoryBroker::new();
    broker.ensure_topics(&crate::topic_specs(&pipeline, config)).await?;
    pipeline.prepare(&broker).await?;

    let mut line_number = 0i64;
    for input in sorted_files(&case.join("input"))? {
        let table = stem(&input);
        let p = &pipeline.pipeline;
        let topic = p
            .sources
            .iter()
            .find(|s| s.name == table)
            .map(|s| &s.kafka.topic)
            .or_else(|| p.lookups.iter().find(|l| l.name == table).map(|l| &l.kafka.topic))
            .ok_or_else(|| anyhow::anyhow!("{}: no source or lookup table {table}", input.display()))?;
        let topic: Arc<str> = Arc::from(topic.as_str());
        let mut records = Vec::new();
        for line in std::fs::read_to_string(&input)?.lines().filter(|l| !l.trim().is_empty()) {
            let (key, value) = match line.split_once('|') {
                Some((key, value)) if !line.trim_start().starts_with('{') => (Some(key.as_bytes().to_vec()), value),
                _ => (None, line),
            };
            let record = OutRecord { topic: topic.clone(), key, payload: value.as_bytes().to_vec(), headers: vec![] };
            records.push((record, BASE_TIMESTAMP_MS + line_number * 1000));
            line_number += 1;
        }
        broker.append_at(records)?;
    }

    let topics = pipeline.source_topics();
    let mut consumer = broker.consumer("golden", &topics.iter().map(String::as_str).collect::<Vec<_>>());
    let (_keep, shutdown) = watch::channel(false);
    let limits = crate::batch_limits(config);
    run_job(&mut pipeline, &mut consumer, &broker.producer(), limits, StopWhen::IdleFor(Duration::from_millis(20)), shutdown)
        .await?;

    let ignored: Vec<String> = std::fs::read_to_string(case.join("ignore.txt"))
        .map(|t| t.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect())
        .unwrap_or_default();
    let expected_files = sorted_files(&case.join("expected"))?;
    anyhow::ensure!(!expected_files.is_empty(), "{}: no expected/*.jsonl", case.display());
    let mut failures = Vec::new();
    for expected_file in expected_files {
        let name = stem(&expected_file);
        let actual: Vec<Value> = if name == "_dlq" {
            let mut dlq_topics: Vec<String> = pipeline.pipeline.sources.iter().map(|s| s.kafka.dlq_topic.clone()).collect();
            dlq_topics.dedup();
            dlq_topics
                .iter()
                .flat_map(|t| broker.read_all(t))
                .map(|r| {
                    let reason = r.headers.iter().find(|h| h.name == headers::REASON).map(|h| String::from_utf8_lossy(&h.value).to_string());
                    serde_json::json!({"reason": reason, "value": String::from_utf8_lossy(r.payload.as_deref().unwrap_or_default())})
                })
                .collect()
        } else {
            let sink = pipeline
                .pipeline
                .sinks
                .iter()
                .find(|s| s.name == name)
                .ok_or_else(|| anyhow::anyhow!("{}: no sink table {name}", expected_file.display()))?;
            broker
                .read_all(&sink.kafka.topic)
                .iter()
                .map(|r| serde_json::from_slice(r.payload.as_deref().unwrap_or_default()))
                .collect::<Result<_, _>>()?
        };
        let expected: Vec<Value> = std::fs::read_to_string(&expected_file)?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        failures.extend(compare(&name, expected, actual, &ignored));
    }
    Ok(failures)
}

fn sorted_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !dir.exists() {
        return Ok(vec![]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    Ok(files)
}

/// Multiset comparison of canonical JSON rows.
fn compare(name: &str, expected: Vec<Value>, actual: Vec<Value>, ignored: &[String]) -> Vec<String> {
    let canonical = |mut v: Value| {
        if let Value::Object(map) = &mut v {
            ignored.iter().for_each(|f| {
                map.remove(f);
            });
        }
        v.to_string() // serde_json maps are sorted by key: canonical
    };
    let mut counts: BTreeMap<String, i64> = BTreeMap::new();
    for row in expected {
        *counts.entry(canonical(row)).or_default() += 1;
    }
    for row in actual {
        *counts.entry(canonical(row)).or_default() -= 1;
    }
    counts
        .into_iter()
        .filter(|(_, n)| *n != 0)
        .map(|(row, n)| {
            if n > 0 { format!("{name}: missing {n}x {row}") } else { format!("{name}: unexpected {}x {row}", -n) }
        })
        .collect()
}
