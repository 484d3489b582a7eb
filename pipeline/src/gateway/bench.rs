//! `notiflow bench --brokers ADDR --only gateway`: single sends through the
//! HTTP gateway (authenticate, validate, claim the request id, produce, wait
//! for the ack, answer) against the same broker's raw produce-and-ack rate,
//! both with the same number of concurrent callers, in the same run.

use std::sync::Arc;
use std::time::Instant;

use notiflow_connector::{OutRecord, Sink, TopicAdmin, TopicSpec};
use notiflow_kafka::{KafkaAdmin, KafkaConfig, KafkaSink};

use crate::bench::{CaseResult, percentile};
use crate::config::Config;
use crate::tenants::{TENANTS_TOPIC, Tenant};

const CALLERS: usize = 64;
const WARM_UP: usize = 500;

fn request(i: usize) -> serde_json::Value {
    serde_json::json!({
        "request_id": format!("bench-{i}"),
        "template": "order_shipped",
        "recipients": [{"phone": "+8613800000000"}],
        "params": {"order": format!("A{i}"), "eta": "Tuesday"},
    })
}

/// Warms up (connections, producer, first batches: 500 calls not measured),
/// then runs `calls` calls of `call(i)` from CALLERS concurrent tasks;
/// returns (seconds, latencies in ms, sorted).
async fn drive<F, Fut>(calls: usize, call: F) -> anyhow::Result<(f64, Vec<f64>)>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    for i in 0..WARM_UP {
        call(usize::MAX - i).await?;
    }
    let call = Arc::new(call);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CALLERS {
        let (call, next) = (call.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= calls {
                    return anyhow::Ok(latencies);
                }
                let t = Instant::now();
                call(i).await?;
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }));
    }
    let mut latencies = Vec::with_capacity(calls);
    for task in tasks {
        latencies.extend(task.await??);
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    Ok((seconds, latencies))
}

fn result(name: &str, calls: usize, seconds: f64, latencies: &[f64], note: String) -> CaseResult {
    CaseResult {
        name: name.into(),
        records: calls,
        seconds,
        p50_ms: percentile(latencies, 50.0),
        p99_ms: percentile(latencies, 99.0),
        max_ms: latencies.last().copied(),
        samples: latencies.len(),
        peak_rss_mb: crate::bench::peak_rss(),
        note,
    }
}

pub async fn single_sends(kafka: &KafkaConfig, calls: usize) -> anyhow::Result<Vec<CaseResult>> {
    let prefix = format!("gwbench_{}_{}", std::process::id(), chrono::Utc::now().timestamp_millis());
    let mut config = Config::embedded();
    config.kafka = Some(kafka.clone());
    config.topics.partitions = 2;
    for topic in ["notify.requests", "notify.events", TENANTS_TOPIC, "notify.raw"] {
        config.topics.rename.insert(topic.into(), format!("{prefix}.{topic}"));
    }
    config.gateway = Some(crate::gateway::GatewayConfig { listen: "127.0.0.1:0".into(), ..Default::default() });
    let raw_topic = config.topics.resolve("notify.raw");
    KafkaAdmin::new(kafka)?.ensure_topics(&[TopicSpec::new(&raw_topic, 2)]).await?;

    // A tenant with a key, straight onto the registry topic.
    let (key, entry) = crate::tenants::mint_key("bench")?;
    let tenant: Tenant = serde_json::from_value(serde_json::json!({"id": "acme", "api_keys": [entry]}))?;
    let tenants_topic = config.topics.resolve(TENANTS_TOPIC);
    KafkaAdmin::new(kafka)?.ensure_topics(&[TopicSpec { compacted: true, ..TopicSpec::new(&tenants_topic, 1) }]).await?;
    let record = OutRecord {
        topic: Arc::from(tenants_topic.as_str()),
        key: Some(b"acme".to_vec()),
        payload: serde_json::to_vec(&tenant)?,
        headers: vec![],
    };
    KafkaSink::new(kafka)?.send_all(vec![record]).await?;

    // Baseline: the broker's produce-and-ack, one record per call, same payloads.
    let sink = Arc::new(KafkaSink::new(kafka)?);
    let raw: Arc<str> = Arc::from(raw_topic.as_str());
    let (raw_seconds, raw_latencies) = drive(calls, move |i| {
        let (sink, raw) = (sink.clone(), raw.clone());
        async move {
            let mut body = request(i);
            body["tenant"] = "acme".into();
            let record = OutRecord {
                topic: raw,
                key: Some(format!("acme/bench-{i}").into_bytes()),
                payload: serde_json::to_vec(&body)?,
                headers: vec![],
            };
            sink.send_each(std::slice::from_ref(&record)).await.remove(0)?;
            Ok(())
        }
    })
    .await?;

    let (listener, app) = crate::gateway::bind(&config).await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::builder().pool_max_idle_per_host(CALLERS).build()?;
    let url = format!("{base}/v1/send");
    let (gw_seconds, gw_latencies) = drive(calls, move |i| {
        let (client, url, key) = (client.clone(), url.clone(), key.clone());
        async move {
            let response = client.post(&url).bearer_auth(&key).json(&request(i)).send().await?;
            anyhow::ensure!(
                response.status() == reqwest::StatusCode::ACCEPTED,
                "gateway answered {}: {}",
                response.status(),
                response.text().await?
            );
            Ok(())
        }
    })
    .await?;

    let raw_rate = calls as f64 / raw_seconds;
    let gw_rate = calls as f64 / gw_seconds;
    Ok(vec![
        result(
            "gateway baseline: raw produce + ack, one record per call",
            calls,
            raw_seconds,
            &raw_latencies,
            format!("{CALLERS} concurrent callers"),
        ),
        result(
            "gateway: POST /v1/send, 202 after the broker's ack",
            calls,
            gw_seconds,
            &gw_latencies,
            format!("{CALLERS} concurrent HTTP clients; {:.2}x the raw produce rate", gw_rate / raw_rate),
        ),
    ])
}
