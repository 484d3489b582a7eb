//! `notiflow receipts serve`: the endpoint providers push delivery reports
//! to. Each report is verified the provider's way (unsigned or forged ones
//! are refused with 403 and never written), turned into a [`Receipt`] and
//! written to `notify.receipts`; the provider gets its 2xx only once the
//! broker has it, so a failed write is retried by the provider.
//!
//! ```toml
//! [receipts]
//! listen = "0.0.0.0:8091"
//! # and per Twilio provider: status_callback = "https://hooks.example.com/v1/receipts/twilio/<provider name>"
//! ```
//!
//! Pull-model providers are polled from here too: each Tencent provider with
//! `pull_receipts_ms` (`PullSmsSendStatus`); pulled reports are written
//! before the next pull (Tencent hands each report out once, so a write is
//! retried until the broker takes it).
//!
//! Routes: `POST /v1/receipts/twilio/{provider}` (form, `X-Twilio-Signature`),
//! `POST /v1/receipts/aliyun/{provider}/{report_token}` (Aliyun's unsigned SmsReport push: the token in the
//! URL is the secret, compared in constant time), `GET /c/{token}`
//! (a tracked link, when `[tracking]` is set: `clicked` receipt, then 302 to the link), `GET /healthz`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::future::BoxFuture;
use notiflow_connector::{ConnectorError, OutRecord, Positions, Sink, TopicAdmin, TopicSpec};
use notiflow_delivery::{Channel, Receipt, Secret};
use notiflow_kafka::{KafkaAdmin, KafkaSink};
use notiflow_sms::{AliyunChannel, TencentChannel, TwilioChannel};
use serde::Deserialize;
use serde_json::json;

use crate::config::Config;
use crate::tracking::ClickTracker;

/// `[receipts]` in notiflow.toml.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReceiptsConfig {
    /// Where providers' callbacks arrive (behind the public URL configured at each provider).
    #[serde(default = "default_listen")]
    pub listen: String,
}

fn default_listen() -> String {
    "127.0.0.1:8091".into()
}

pub const RECEIPTS_TOPIC: &str = "notify.receipts";

/// Where receipts are written: any sink (Kafka; the embedded default's in-process log in `notiflow demo`).
type Writer = Arc<dyn Fn(Vec<OutRecord>) -> BoxFuture<'static, Result<Positions, ConnectorError>> + Send + Sync>;

struct Receivers {
    twilio: BTreeMap<String, TwilioChannel>,
    aliyun: BTreeMap<String, (AliyunChannel, Secret)>,
    tracker: Option<ClickTracker>,
    sink: Writer,
    topic: Arc<str>,
}

/// Serves until interrupted; prints the bound address first.
pub async fn serve(config: &Config) -> anyhow::Result<()> {
    let settings = config.receipts.as_ref().context("notiflow receipts needs [receipts] in the config")?;
    let kafka = config.kafka.as_ref().context("notiflow receipts needs [kafka] in the config")?;
    KafkaAdmin::new(kafka)?.ensure_topics(&[TopicSpec::new(config.topics.resolve(RECEIPTS_TOPIC), config.topics.partitions)]).await?;
    let listener = tokio::net::TcpListener::bind(&settings.listen).await.with_context(|| format!("[receipts] listen {}", settings.listen))?;
    println!("receipts: listening on http://{}", listener.local_addr()?);
    crate::metrics_http::mark_ready();
    serve_on(config, KafkaSink::new(kafka)?, listener, crate::shutdown::requested()).await
}

/// Serves the callback endpoints on `listener`, writing receipts to `sink`, until `stop` resolves.
pub async fn serve_on<S: Sink + 'static>(
    config: &Config,
    sink: S,
    listener: tokio::net::TcpListener,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.delivery.use_proxy().map_err(|e| anyhow::anyhow!("[delivery]: {e}"))?;
    let twilio = config.delivery.twilio_receivers().map_err(|e| anyhow::anyhow!("[delivery]: {e}"))?;
    let tracker = config.tracking.as_ref().map(ClickTracker::new).transpose()?;
    let aliyun = config.delivery.aliyun_receivers().map_err(|e| anyhow::anyhow!("[delivery]: {e}"))?;
    let sink = Arc::new(sink);
    let writer: Writer = Arc::new(move |records| {
        let sink = sink.clone();
        Box::pin(async move { sink.send_all(records).await })
    });
    let topic = Arc::from(config.topics.resolve(RECEIPTS_TOPIC));
    let receivers = Arc::new(Receivers { twilio, aliyun, tracker, sink: writer, topic });
    for channel in config.delivery.tencent_pollers().map_err(|e| anyhow::anyhow!("[delivery]: {e}"))? {
        tokio::spawn(poll_tencent(channel, receivers.clone()));
    }
    let app = Router::new()
        .route("/healthz", get(|| async { StatusCode::OK }))
        .route("/v1/receipts/twilio/{provider}", post(twilio_callback))
        .route("/v1/receipts/aliyun/{provider}/{token}", post(aliyun_push))
        .route("/c/{token}", get(click))
        .with_state(receivers);
    axum::serve(listener, app).with_graceful_shutdown(stop).await?;
    Ok(())
}

fn refuse(status: StatusCode, error: &str, message: String) -> Response {
    metrics::counter!("notiflow_receipts_refused_total", "reason" => error.to_string()).increment(1);
    (status, axum::Json(json!({"error": error, "message": message}))).into_response()
}

async fn twilio_callback(State(receivers): State<Arc<Receivers>>, Path(provider): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(channel) = receivers.twilio.get(&provider) else {
        return refuse(StatusCode::NOT_FOUND, "unknown_provider", format!("no twilio provider `{provider}`"));
    };
    let params: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let signature = headers.get("x-twilio-signature").and_then(|v| v.to_str().ok());
    match channel.receipt(signature, &params) {
        Ok(receipt) => write(&receivers, receipt).await,
        Err(why) => refuse(StatusCode::FORBIDDEN, "bad_signature", why),
    }
}

/// Aliyun's SmsReport push: every report written before `{"code": 0}` (any
/// other answer makes Aliyun push again).
async fn aliyun_push(State(receivers): State<Arc<Receivers>>, Path((provider, token)): Path<(String, String)>, body: Bytes) -> Response {
    let Some((channel, expected)) = receivers.aliyun.get(&provider) else {
        return refuse(StatusCode::NOT_FOUND, "unknown_provider", format!("no aliyun provider `{provider}` with a report_token"));
    };
    if !constant_time_eq(token.as_bytes(), expected.expose().as_bytes()) {
        return refuse(StatusCode::FORBIDDEN, "bad_token", "the report URL's token is not this provider's".into());
    }
    let receipts = match channel.reports(&body) {
        Ok(receipts) => receipts,
        Err(why) => return refuse(StatusCode::BAD_REQUEST, "bad_report", why),
    };
    let records: Vec<OutRecord> = receipts.iter().map(|r| receipt_record(&receivers.topic, r)).collect();
    match (receivers.sink)(records).await {
        Ok(_) => axum::Json(json!({"code": 0, "msg": "成功"})).into_response(),
        Err(err) => refuse(StatusCode::SERVICE_UNAVAILABLE, "log_unavailable", err.to_string()),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A tracked link: the click is recorded, then the browser goes on to the
/// link. A token that is not ours gets 404 (never a redirect: no open
/// redirect). If the log cannot take the receipt, the reader still gets the
/// link (counted in `notiflow_clicks_unrecorded_total`).
async fn click(State(receivers): State<Arc<Receivers>>, Path(token): Path<String>) -> Response {
    let Some(click) = receivers.tracker.as_ref().and_then(|t| t.verify(&token)) else {
        return refuse(StatusCode::NOT_FOUND, "unknown_link", "no such tracked link".into());
    };
    let receipt = Receipt {
        kind: "clicked".into(),
        channel: click.channel.clone(),
        provider: "tracking".into(),
        provider_message_id: click.delivery_id.clone(),
        delivery_id: Some(click.delivery_id.clone()),
        tenant: Some(click.tenant.clone()),
        message_id: Some(click.message_id.clone()),
        url: Some(click.url.clone()),
        recipient: None,
        status: "clicked".into(),
        error_code: None,
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    };
    if write(&receivers, receipt).await.status() != StatusCode::NO_CONTENT {
        metrics::counter!("notiflow_clicks_unrecorded_total").increment(1);
    }
    (StatusCode::FOUND, [(axum::http::header::LOCATION, click.url)]).into_response()
}

/// Pulls a Tencent provider's delivery reports until the process ends: at
/// once again while pages come back full, else every `pull_receipts_ms`.
async fn poll_tencent(channel: TencentChannel, receivers: Arc<Receivers>) {
    const PAGE: u32 = 100;
    let every = channel.pull_every().unwrap_or(Duration::from_secs(5));
    let provider = channel.provider().to_string();
    loop {
        let full = match channel.pull_receipts(PAGE).await {
            Ok(receipts) => {
                let full = receipts.len() == PAGE as usize;
                metrics::counter!("notiflow_receipts_pulled_total", "provider" => provider.clone()).increment(receipts.len() as u64);
                let records: Vec<OutRecord> = receipts.iter().map(|r| receipt_record(&receivers.topic, r)).collect();
                let mut wait = Duration::from_millis(100);
                while let Err(err) = (receivers.sink)(records.clone()).await {
                    tracing::warn!(%provider, %err, "writing pulled receipts; retrying (they are only in memory)");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                full
            }
            Err(err) => {
                metrics::counter!("notiflow_receipts_pull_errors_total", "provider" => provider.clone()).increment(1);
                tracing::warn!(%provider, %err, "pulling delivery reports");
                false
            }
        };
        if !full {
            tokio::time::sleep(every).await;
        }
    }
}

fn receipt_record(topic: &Arc<str>, receipt: &Receipt) -> OutRecord {
    OutRecord {
        topic: topic.clone(),
        key: Some(receipt.provider_message_id.clone().into_bytes()),
        payload: serde_json::to_vec(receipt).expect("receipts serialize"),
        headers: vec![],
    }
}

/// Durable before the provider hears 2xx.
async fn write(receivers: &Receivers, receipt: Receipt) -> Response {
    match (receivers.sink)(vec![receipt_record(&receivers.topic, &receipt)]).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(err) => refuse(StatusCode::SERVICE_UNAVAILABLE, "log_unavailable", err.to_string()),
    }
}
