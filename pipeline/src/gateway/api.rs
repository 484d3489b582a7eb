//! The gateway's routes and the path of one submission: authenticate, read a
//! bounded body, check every request, take quota and in-flight room, claim
//! request ids, write, answer.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use notiflow_connector::{Header, OutRecord};
use notiflow_kafka::KafkaSink;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use super::GatewayConfig;
use super::index::{Claim, RequestIndex, SeenRequest, fingerprint, request_key};
use super::peers::Share;
use super::status::Timelines;
use crate::contract::{Contract, Kind};
use crate::tenants::{Registry, Tenant};

/// A 4xx/5xx answer: `{"error": {"code", "message", "items"?}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after_s: Option<u64>,
    /// Per-request errors of a batch: `{index, request_id, code, message}`.
    items: Vec<Value>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), retry_after_s: None, items: Vec::new() }
    }

    fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_s = Some(seconds.max(1));
        self
    }

    fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        metrics::counter!("notiflow_gateway_responses_total", "code" => self.code).increment(1);
        let mut error = json!({"code": self.code, "message": self.message});
        if !self.items.is_empty() {
            error["items"] = Value::Array(self.items);
        }
        let mut response = (self.status, Json(json!({ "error": error }))).into_response();
        if let Some(seconds) = self.retry_after_s {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

pub struct Parts {
    pub settings: GatewayConfig,
    pub max_request_bytes: usize,
    pub registry: Registry,
    pub sink: KafkaSink,
    pub requests_topic: String,
    pub request_ids: Arc<RequestIndex>,
    pub timelines: Arc<Timelines>,
    /// This gateway's share of each tenant's rate (the others have the rest).
    pub share: Share,
}

#[derive(Clone)]
pub struct AppState(Arc<Gateway>);

struct Gateway {
    settings: GatewayConfig,
    contract: Contract,
    registry: Registry,
    sink: KafkaSink,
    topic: Arc<str>,
    request_ids: Arc<RequestIndex>,
    timelines: Arc<Timelines>,
    share: Share,
    /// Per tenant: (rate, burst, share) and its limiter, rebuilt when the registry or the share changes them.
    limiters: Mutex<HashMap<String, ((u32, u32, u64), Arc<DefaultDirectRateLimiter>)>>,
    in_flight: Arc<Semaphore>,
    openapi: String,
}

impl AppState {
    pub fn new(parts: Parts) -> Self {
        let in_flight = Arc::new(Semaphore::new(parts.settings.max_in_flight.max(parts.settings.max_batch).max(1)));
        AppState(Arc::new(Gateway {
            contract: Contract::any_tenant(parts.max_request_bytes),
            registry: parts.registry,
            sink: parts.sink,
            topic: Arc::from(parts.requests_topic.as_str()),
            request_ids: parts.request_ids,
            timelines: parts.timelines,
            share: parts.share,
            limiters: Mutex::new(HashMap::new()),
            in_flight,
            openapi: serde_json::to_string_pretty(&super::openapi_document()).expect("the document serializes"),
            settings: parts.settings,
        }))
    }
}

/// A tenant's limiter on this gateway: `share` of its rate, its whole burst.
fn shared_limiter(rate: u32, burst: u32, share: f64) -> Arc<DefaultDirectRateLimiter> {
    let per_second = (f64::from(rate) * share).max(1e-3);
    let period = Duration::from_secs_f64(1.0 / per_second);
    let quota = Quota::with_period(period).expect("a positive period").allow_burst(NonZeroU32::new(burst).expect("max(1)"));
    Arc::new(RateLimiter::direct(quota))
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/send", post(send))
        .route("/v1/send/batch", post(send_batch))
        .route("/v1/recall", post(recall))
        .route("/v1/messages/{id}", get(message))
        .route("/openapi.json", get(openapi))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route; see /openapi.json") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not take that method; see /openapi.json")
        })
        .with_state(state)
}

async fn openapi(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], state.0.openapi.clone()).into_response()
}

async fn send(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    single(&state, &headers, body, Kind::Send).await
}

async fn recall(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    single(&state, &headers, body, Kind::Recall).await
}

async fn single(state: &AppState, headers: &HeaderMap, body: Body, kind: Kind) -> Result<Response, ApiError> {
    let gateway = &state.0;
    let tenant = gateway.authenticate(headers)?;
    let bytes = read_body(headers, body, gateway.contract.max_bytes()).await?;
    let request = parse_json(&bytes)?;
    let mut answers = gateway.submit(&tenant, vec![request], kind, false).await?;
    Ok((StatusCode::ACCEPTED, Json(answers.remove(0))).into_response())
}

async fn send_batch(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let gateway = &state.0;
    let tenant = gateway.authenticate(&headers)?;
    let bytes = read_body(&headers, body, gateway.settings.max_batch_bytes).await?;
    let requests = match parse_json(&bytes)? {
        Value::Object(mut map) if map.len() == 1 && map.get("requests").is_some_and(Value::is_array) => match map.remove("requests") {
            Some(Value::Array(requests)) => requests,
            _ => unreachable!("checked above"),
        },
        _ => return Err(ApiError::invalid("schema_violation", "a batch is {\"requests\": [request, ...]} and nothing else")),
    };
    if requests.is_empty() {
        return Err(ApiError::invalid("schema_violation", "a batch has at least one request"));
    }
    if requests.len() > gateway.settings.max_batch {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!("a batch has at most {} requests; this one has {}", gateway.settings.max_batch, requests.len()),
        ));
    }
    let answers = gateway.submit(&tenant, requests, Kind::Send, true).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "messages": answers }))).into_response())
}

async fn message(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Result<Response, ApiError> {
    let gateway = &state.0;
    let tenant = gateway.authenticate(&headers)?;
    // Another tenant's message is "not found": its existence is not theirs to learn.
    match gateway.timelines.get(&tenant.id, &id) {
        Some(timeline) => Ok(Json(timeline.to_json(&id)).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "message_not_found",
            format!("no message {id:?} of tenant {} in the status window", tenant.id),
        )),
    }
}

/// The body, refused with 413 past `limit` bytes (before reading, when Content-Length says so).
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "oversize", format!("the body is larger than {limit} bytes"));
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|_| too_large())
}

fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "not_json", format!("the body is not JSON: {e}")))
}

/// A request that passed every check, ready to write.
struct Checked {
    tenant: String,
    request_id: String,
    message_id: String,
    recall: bool,
    key: u128,
    fingerprint: u64,
    record_key: String,
    payload: Vec<u8>,
}

enum Plan {
    Write,
    Duplicate,
    Wait(tokio::sync::watch::Receiver<Option<bool>>),
}

impl Gateway {
    fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Tenant>, ApiError> {
        let value = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).ok_or_else(|| {
            ApiError::new(StatusCode::UNAUTHORIZED, "missing_api_key", "send the tenant's API key as `Authorization: Bearer <key>`")
        })?;
        let key =
            value.split_once(' ').filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer")).map(|(_, key)| key.trim()).ok_or_else(
                || ApiError::new(StatusCode::UNAUTHORIZED, "missing_api_key", "the Authorization header must be `Bearer <key>`"),
            )?;
        self.registry.authenticate(key).ok_or_else(|| {
            ApiError::new(StatusCode::UNAUTHORIZED, "invalid_api_key", "the API key is unknown, revoked or its tenant disabled")
        })
    }

    async fn submit(&self, tenant: &Tenant, requests: Vec<Value>, kind: Kind, batch: bool) -> Result<Vec<Value>, ApiError> {
        let n = requests.len();
        let mut checked = Vec::with_capacity(n);
        let mut failures = Vec::new();
        for (index, request) in requests.into_iter().enumerate() {
            let request_id = request.get("request_id").and_then(Value::as_str).map(str::to_string);
            match self.check(tenant, request, kind) {
                Ok(c) => checked.push(c),
                Err(err) if !batch => return Err(err),
                Err(err) => failures.push((index, request_id, err)),
            }
        }
        if !failures.is_empty() {
            // Nothing of a batch is written unless all of it is valid: one answer, no partial state.
            let all_forbidden = failures.iter().all(|(_, _, e)| e.status == StatusCode::FORBIDDEN);
            let mut error = if all_forbidden {
                ApiError::forbidden(
                    "forbidden",
                    format!("{} of {n} requests are not allowed for this tenant; nothing was written", failures.len()),
                )
            } else {
                ApiError::invalid("invalid_requests", format!("{} of {n} requests are invalid; nothing was written", failures.len()))
            };
            error.items = failures
                .into_iter()
                .map(|(index, request_id, e)| json!({"index": index, "request_id": request_id, "code": e.code, "message": e.message}))
                .collect();
            return Err(error);
        }
        self.take_quota(tenant, n)?;
        let _permits = self.in_flight.clone().try_acquire_many_owned(n as u32).map_err(|_| {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "overloaded", "too many requests are waiting for the broker; retry shortly")
                .retry_after(1)
        })?;
        self.write(checked).await
    }

    /// The request as it will be written: the key's tenant, the route's type, the topic's contract, the tenant's allow-lists.
    fn check(&self, tenant: &Tenant, mut request: Value, kind: Kind) -> Result<Checked, ApiError> {
        let Value::Object(map) = &mut request else {
            return Err(ApiError::invalid("schema_violation", "a request is a JSON object"));
        };
        match map.get("tenant") {
            None => {
                map.insert("tenant".into(), Value::from(tenant.id.as_str()));
            }
            Some(named) if named.as_str() == Some(tenant.id.as_str()) => {}
            Some(named) => {
                return Err(ApiError::forbidden("wrong_tenant", format!("this API key sends for tenant {:?}, not {named}", tenant.id)));
            }
        }
        let wanted = if kind == Kind::Recall { "recall" } else { "send" };
        match map.get("type").and_then(Value::as_str) {
            None if !map.contains_key("type") => {
                map.insert("type".into(), Value::from(wanted));
            }
            Some(t) if t == wanted => {}
            _ => {
                return Err(ApiError::invalid(
                    "schema_violation",
                    format!("/type: this route takes type {wanted:?} (recalls go to POST /v1/recall)"),
                ));
            }
        }
        let valid = self.contract.check_value(&mut request).map_err(|r| ApiError::invalid(r.reason.as_str(), r.error))?;
        if valid.kind == Kind::Send {
            let template = valid.body.get("template").and_then(Value::as_str).unwrap_or_default();
            if !tenant.may_use_template(template) {
                return Err(ApiError::forbidden(
                    "template_not_allowed",
                    format!("tenant {} may not send template {template:?}", tenant.id),
                ));
            }
            let channels = valid.body.get("channels").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str);
            if let Some(channel) = channels.into_iter().find(|c| !tenant.may_use_channel(c)) {
                return Err(ApiError::forbidden(
                    "channel_not_allowed",
                    format!("tenant {} may not send on channel {channel:?}", tenant.id),
                ));
            }
        }
        let payload = serde_json::to_vec(&valid.body).expect("a JSON value serializes");
        let recall = valid.kind == Kind::Recall;
        Ok(Checked {
            key: request_key(&valid.tenant, &valid.request_id, recall),
            fingerprint: fingerprint(&payload),
            record_key: format!("{}/{}", valid.tenant, valid.request_id),
            message_id: valid.message_id,
            request_id: valid.request_id,
            tenant: valid.tenant,
            recall,
            payload,
        })
    }

    fn take_quota(&self, tenant: &Tenant, n: usize) -> Result<(), ApiError> {
        let Some(rate) = tenant.quotas.requests_per_second else { return Ok(()) };
        let burst = tenant.quotas.burst.unwrap_or(rate).max(1);
        let share = self.share.get();
        let limiter = {
            let mut limiters = self.limiters.lock().expect("limiters lock");
            let settings = (rate, burst, share.to_bits());
            let entry = limiters.entry(tenant.id.clone()).or_insert_with(|| (settings, shared_limiter(rate, burst, share)));
            if entry.0 != settings {
                *entry = (settings, shared_limiter(rate, burst, share));
            }
            entry.1.clone()
        };
        let n32 = NonZeroU32::new(n as u32).expect("at least one request");
        match limiter.check_n(n32) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!("tenant {} is over its quota of {rate} requests/s (burst {burst})", tenant.id),
                )
                .retry_after(wait.as_secs_f64().ceil() as u64))
            }
            Err(_) => Err(ApiError::invalid(
                "batch_exceeds_quota",
                format!("a batch of {n} is more than tenant {}'s burst of {burst} requests; send smaller batches", tenant.id),
            )),
        }
    }

    /// Claims each request id, writes the new ones, waits for concurrent
    /// writers of the others, and answers per request.
    async fn write(&self, mut checked: Vec<Checked>) -> Result<Vec<Value>, ApiError> {
        let mut plans = Vec::with_capacity(checked.len());
        let mut reused = Vec::new();
        for c in &checked {
            plans.push(match self.request_ids.claim(c.key, c.fingerprint) {
                Claim::Write => Plan::Write,
                Claim::Written { same: true } => Plan::Duplicate,
                Claim::InProgress { same: true, outcome } => Plan::Wait(outcome),
                Claim::Written { same: false } | Claim::InProgress { same: false, .. } => {
                    reused.push(c.request_id.clone());
                    Plan::Duplicate
                }
            });
        }
        let writes: Vec<usize> = (0..checked.len()).filter(|i| matches!(plans[*i], Plan::Write)).collect();
        if !reused.is_empty() {
            writes.iter().for_each(|&i| self.request_ids.settle(checked[i].key, false));
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "request_id_reused",
                format!("request_id {} was already used for a different request (nothing was written)", reused.join(", ")),
            ));
        }
        // The answer needs only the ids: key and payload move into the records.
        let records: Vec<OutRecord> = writes
            .iter()
            .map(|&i| OutRecord {
                topic: self.topic.clone(),
                key: Some(std::mem::take(&mut checked[i].record_key).into_bytes()),
                payload: std::mem::take(&mut checked[i].payload),
                headers: vec![Header { name: "notiflow-source".into(), value: b"gateway".to_vec() }],
            })
            .collect();
        let outcomes = self.sink.send_each(&records).await;
        let mut failed = Vec::new();
        let written_at = chrono::Utc::now().timestamp_millis();
        for (&i, outcome) in writes.iter().zip(&outcomes) {
            self.request_ids.settle(checked[i].key, outcome.is_ok());
            if outcome.is_ok() {
                // Read-your-writes: a status lookup right after the 202 finds the message
                // before this gateway's reader of notify.requests has caught up.
                let c = &checked[i];
                self.timelines.observe_request(&SeenRequest {
                    tenant: c.tenant.clone(),
                    request_id: c.request_id.clone(),
                    recall: c.recall,
                    fingerprint: c.fingerprint,
                    at_ms: written_at,
                });
            }
            if let Err(err) = outcome {
                tracing::warn!(%err, request_id = %checked[i].request_id, "the broker did not acknowledge a request");
                failed.push(checked[i].request_id.clone());
            }
        }
        // Another call is writing the same request: its outcome is this one's.
        for (i, plan) in plans.iter_mut().enumerate() {
            if let Plan::Wait(outcome) = plan {
                let written = match tokio::time::timeout(Duration::from_secs(60), outcome.wait_for(Option::is_some)).await {
                    Ok(Ok(settled)) => *settled == Some(true),
                    _ => false,
                };
                if written {
                    *plan = Plan::Duplicate;
                } else {
                    failed.push(checked[i].request_id.clone());
                }
            }
        }
        if !failed.is_empty() {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "broker_unavailable",
                format!("the broker did not acknowledge request_id {}; retry the same request (retries are idempotent)", failed.join(", ")),
            )
            .retry_after(1));
        }
        metrics::counter!("notiflow_gateway_accepted_total").increment(writes.len() as u64);
        Ok(checked
            .iter()
            .zip(&plans)
            .map(|(c, plan)| {
                let status = if matches!(plan, Plan::Write) { "accepted" } else { "duplicate" };
                json!({"request_id": c.request_id, "message_id": c.message_id, "status": status})
            })
            .collect())
    }
}
