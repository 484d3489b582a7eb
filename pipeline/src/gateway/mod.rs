//! `notiflow gateway serve`: the HTTP send API for producers that do not
//! write to Kafka (OpenAPI document: `docs/openapi.json`, also served at
//! `/openapi.json`).
//!
//! A request is authenticated by a tenant's API key (registry on
//! `notify.tenants`), checked against the same JSON Schema as the topic
//! (`contract.rs`), written to `notify.requests` with the contract's record
//! key, and answered 202 only once the broker acknowledged it. A retried
//! `request_id` is answered with the same message id and not written again.
//! Overload and quota overruns get 429 with Retry-After, never an unbounded queue.
//!
//! ```toml
//! [gateway]
//! listen = "0.0.0.0:8093"
//! ```

mod api;
pub mod bench;
mod index;
mod openapi;
mod peers;
mod recent;
mod status;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use notiflow_connector::{TopicAdmin, TopicSpec};
use notiflow_kafka::{KafkaAdmin, KafkaSink};
use serde::Deserialize;

use crate::config::Config;
use crate::follow::{Replay, follow_topic};
use crate::tenants::{Registry, TENANTS_TOPIC};
pub use openapi::document as openapi_document;

/// `[gateway]` in notiflow.toml.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Where the API listens (port 0: any free port, printed at start).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Requests waiting for the broker's acknowledgement at once; more get 429.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Most requests in one `POST /v1/send/batch`.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Largest batch body in bytes (a single request's limit is `pipeline.max_request_bytes`).
    #[serde(default = "default_max_batch_bytes")]
    pub max_batch_bytes: usize,
    /// How long a request_id is remembered: a retry within it gets the first answer (the pipeline's window is 24 h).
    #[serde(default = "default_idempotency_hours")]
    pub idempotency_hours: u64,
    /// Most request ids remembered; beyond it the oldest are forgotten (the pipeline still drops their repeats).
    #[serde(default = "default_idempotency_max_keys")]
    pub idempotency_max_keys: usize,
    /// How far back `GET /v1/messages/{id}` finds a message.
    #[serde(default = "default_status_hours")]
    pub status_hours: u64,
    /// Most messages whose timelines are kept for it; beyond it the oldest are forgotten
    /// (memory: roughly 3 KB per message of ~8 events).
    #[serde(default = "default_status_max_messages")]
    pub status_max_messages: usize,
}

fn default_listen() -> String {
    "127.0.0.1:8093".into()
}
fn default_max_in_flight() -> usize {
    20_000
}
fn default_max_batch() -> usize {
    1000
}
fn default_max_batch_bytes() -> usize {
    16 << 20
}
fn default_idempotency_hours() -> u64 {
    24
}
fn default_idempotency_max_keys() -> usize {
    5_000_000
}
fn default_status_hours() -> u64 {
    72
}
fn default_status_max_messages() -> usize {
    200_000
}

impl Default for GatewayConfig {
    fn default() -> Self {
        toml::from_str("").expect("every field has a default")
    }
}

const HOUR_MS: i64 = 3_600_000;

/// Serves until interrupted. Prints the bound address first.
pub async fn serve(config: &Config) -> anyhow::Result<()> {
    let (listener, app) = bind(config).await?;
    println!("gateway: listening on http://{}", listener.local_addr()?);
    crate::metrics_http::mark_ready();
    axum::serve(listener, app)
        .with_graceful_shutdown(crate::shutdown::requested())
        .await?;
    Ok(())
}

/// Replays what the gateway needs (registry, recent requests and events),
/// then binds `[gateway] listen`: ready to serve.
pub async fn bind(config: &Config) -> anyhow::Result<(tokio::net::TcpListener, axum::Router)> {
    let settings = config.gateway.clone().unwrap_or_default();
    let kafka = config.kafka.as_ref().context("notiflow gateway needs [kafka] in the config")?;
    let topic = |name: &str| config.topics.resolve(name);
    let (requests, events, tenants) = (topic("notify.requests"), topic("notify.events"), topic(TENANTS_TOPIC));
    let partitions = config.topics.partitions;
    let specs = [
        TopicSpec::new(&requests, partitions),
        TopicSpec::new(&events, partitions),
        TopicSpec { compacted: true, ..TopicSpec::new(&tenants, 1) },
    ];
    KafkaAdmin::new(kafka)?.ensure_topics(&specs).await?;

    let now = chrono::Utc::now().timestamp_millis();
    let request_ids = Arc::new(index::RequestIndex::new(settings.idempotency_max_keys, settings.idempotency_hours as i64 * HOUR_MS));
    let timelines = Arc::new(status::Timelines::new(settings.status_max_messages, settings.status_hours as i64 * HOUR_MS));

    // Keys must authenticate before the first request: the registry is replayed first.
    let registry = Registry::follow(kafka, &tenants).await?;
    let since = now - settings.idempotency_hours.max(settings.status_hours) as i64 * HOUR_MS;
    let mut requests_ready = follow_topic(kafka, &requests, Replay::Since(since), {
        let (request_ids, timelines) = (request_ids.clone(), timelines.clone());
        move |record| {
            if let Some(seen) = index::SeenRequest::from_record(record) {
                request_ids.observe(&seen);
                timelines.observe_request(&seen);
            }
        }
    })
    .await?;
    let timelines_follow = timelines.clone();
    follow_topic(kafka, &events, Replay::Since(now - settings.status_hours as i64 * HOUR_MS), move |record| {
        if let Some(payload) = &record.payload {
            timelines_follow.observe_event(payload);
        }
    })
    .await?;
    // Retries must be recognised from the first request on.
    tokio::time::timeout(Duration::from_secs(120), requests_ready.wait_for(|r| *r)).await.context("replaying recent requests")??;

    // The tenants' rate quotas are shared with the other gateways.
    let members = topic(peers::MEMBERS_TOPIC);
    let share = peers::join(kafka, &members, &members).await?;

    let state = api::AppState::new(api::Parts {
        settings: settings.clone(),
        max_request_bytes: config.pipeline.max_request_bytes,
        registry,
        sink: KafkaSink::new(kafka)?,
        requests_topic: requests,
        request_ids,
        timelines,
        share,
    });
    let listener =
        tokio::net::TcpListener::bind(&settings.listen).await.with_context(|| format!("[gateway] listen {}", settings.listen))?;
    Ok((listener, api::router(state)))
}
