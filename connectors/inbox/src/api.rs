//! The inbox HTTP API (for the tenant's apps; every call carries the user's token):
//!
//! - `GET  /v1/inbox/{tenant}/{user}/messages?limit=&before=&unread_only=` newest first, with the unread count
//! - `POST /v1/inbox/{tenant}/{user}/messages/{delivery_id}/read`
//! - `POST /v1/inbox/{tenant}/{user}/read-all`
//! - `GET  /v1/inbox/{tenant}/{user}/stream` SSE: `unread` first, then `message`, `read`, `recalled` (and `resync` when the client fell behind)
//! - `GET  /healthz` 200 once the log is replayed, 503 before
//!
//! The token goes in `Authorization: Bearer <token>`, or `?token=` where
//! headers cannot be set (browser EventSource).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::Stream;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast;

use crate::{Change, InboxOp, Journal, Store, UserTokens};

/// `[inbox]` settings the server needs.
#[derive(Debug, Clone)]
pub struct InboxSettings {
    /// Newest messages kept per user.
    pub keep_per_user: usize,
    /// Largest page a list call returns.
    pub max_page: usize,
}

/// The server's state: the folded store, the live feed, the log to append to.
pub struct Inbox {
    store: RwLock<Store>,
    changes: broadcast::Sender<Change>,
    journal: Arc<dyn Journal>,
    tokens: UserTokens,
    settings: InboxSettings,
    ready: AtomicBool,
}

impl Inbox {
    pub fn new(settings: InboxSettings, journal: Arc<dyn Journal>, tokens: UserTokens) -> Arc<Self> {
        let (changes, _) = broadcast::channel(4096);
        let store = RwLock::new(Store::new(settings.keep_per_user));
        Arc::new(Inbox { store, changes, journal, tokens, settings, ready: AtomicBool::new(false) })
    }

    /// Folds one op in and tells the live streams.
    pub fn apply(&self, op: InboxOp) {
        let changes = self.store.write().unwrap_or_else(|e| e.into_inner()).apply(op);
        for change in changes {
            // No subscriber is fine.
            let _ = self.changes.send(change);
        }
    }

    /// The log is replayed up to where it ended at start-up: lists are complete.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    fn store(&self) -> std::sync::RwLockReadGuard<'_, Store> {
        self.store.read().unwrap_or_else(|e| e.into_inner())
    }
}

pub fn router(inbox: Arc<Inbox>) -> Router {
    Router::new()
        .route("/healthz", get(health))
        .route("/v1/inbox/{tenant}/{user}/messages", get(list))
        .route("/v1/inbox/{tenant}/{user}/messages/{delivery_id}/read", post(mark_read))
        .route("/v1/inbox/{tenant}/{user}/read-all", post(read_all))
        .route("/v1/inbox/{tenant}/{user}/stream", get(stream))
        .with_state(inbox)
}

/// A JSON error with a machine-readable code.
struct ApiError(StatusCode, &'static str, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1, "message": self.2}))).into_response()
    }
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

fn authorize(inbox: &Inbox, tenant: &str, user: &str, headers: &HeaderMap, query: Option<&str>) -> Result<(), ApiError> {
    if !inbox.ready.load(Ordering::Acquire) {
        return Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, "starting", "the inbox log is still being replayed".into()));
    }
    let bearer = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = bearer.or(query) else {
        return Err(ApiError(StatusCode::UNAUTHORIZED, "unauthorized", "no token: send Authorization: Bearer <token>".into()));
    };
    if !inbox.tokens.verify(tenant, user, token) {
        return Err(ApiError(StatusCode::FORBIDDEN, "forbidden", format!("the token does not open the inbox of {tenant}/{user}")));
    }
    Ok(())
}

async fn health(State(inbox): State<Arc<Inbox>>) -> StatusCode {
    if inbox.ready.load(Ordering::Acquire) { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }
}

#[derive(Deserialize)]
struct ListQuery {
    token: Option<String>,
    limit: Option<usize>,
    before: Option<u64>,
    #[serde(default)]
    unread_only: bool,
}

async fn list(State(inbox): State<Arc<Inbox>>, Path((tenant, user)): Path<(String, String)>, headers: HeaderMap, Query(q): Query<ListQuery>) -> Result<Response, ApiError> {
    authorize(&inbox, &tenant, &user, &headers, q.token.as_deref())?;
    let limit = q.limit.unwrap_or(50).clamp(1, inbox.settings.max_page);
    let (messages, unread) = inbox.store().list(&tenant, &user, q.before, limit, q.unread_only);
    let next_before = (messages.len() == limit).then(|| messages.last().map(|m| m.seq)).flatten();
    Ok(Json(json!({"unread": unread, "messages": messages, "next_before": next_before})).into_response())
}

async fn mark_read(
    State(inbox): State<Arc<Inbox>>,
    Path((tenant, user, delivery_id)): Path<(String, String, String)>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
) -> Result<Response, ApiError> {
    authorize(&inbox, &tenant, &user, &headers, q.token.as_deref())?;
    if !inbox.store().holds(&tenant, &user, &delivery_id) {
        return Err(ApiError(StatusCode::NOT_FOUND, "not_found", format!("no message {delivery_id} in this inbox")));
    }
    read(&inbox, &tenant, &user, vec![delivery_id]).await
}

async fn read_all(State(inbox): State<Arc<Inbox>>, Path((tenant, user)): Path<(String, String)>, headers: HeaderMap, Query(q): Query<TokenQuery>) -> Result<Response, ApiError> {
    authorize(&inbox, &tenant, &user, &headers, q.token.as_deref())?;
    let unread = inbox.store().unread_ids(&tenant, &user);
    read(&inbox, &tenant, &user, unread).await
}

/// Appends the reads to the log (durable before we answer), then applies them here.
async fn read(inbox: &Inbox, tenant: &str, user: &str, delivery_ids: Vec<String>) -> Result<Response, ApiError> {
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let ops: Vec<InboxOp> =
        delivery_ids.into_iter().map(|delivery_id| InboxOp::Read { tenant: tenant.into(), user: user.into(), delivery_id, at: at.clone() }).collect();
    inbox.journal.append(ops.clone()).await.map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, "log_unavailable", e))?;
    for op in ops {
        inbox.apply(op);
    }
    Ok(Json(json!({"unread": inbox.store().unread(tenant, user)})).into_response())
}

async fn stream(
    State(inbox): State<Arc<Inbox>>,
    Path((tenant, user)): Path<(String, String)>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    authorize(&inbox, &tenant, &user, &headers, q.token.as_deref())?;
    // Subscribe before counting, so nothing falls between the two.
    let feed = inbox.changes.subscribe();
    let unread = inbox.store().unread(&tenant, &user);
    let first = Event::default().event("unread").data(json!({"unread": unread}).to_string());
    let updates = futures::stream::unfold((feed, tenant, user), |(mut feed, tenant, user)| async move {
        loop {
            match feed.recv().await {
                Ok(change) if change.owner() == (tenant.as_str(), user.as_str()) => {
                    let event = event_of(&change);
                    return Some((Ok(event), (feed, tenant, user)));
                }
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    let event = Event::default().event("resync").data(json!({"missed": missed}).to_string());
                    return Some((Ok(event), (feed, tenant, user)));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let events = futures::StreamExt::chain(futures::stream::once(async move { Ok(first) }), updates);
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

fn event_of(change: &Change) -> Event {
    let (name, id) = match change {
        Change::Message { entry, .. } => ("message", Some(entry.seq)),
        Change::Read { .. } => ("read", None),
        Change::Recalled { .. } => ("recalled", None),
    };
    let event = Event::default().event(name).data(serde_json::to_string(change).expect("changes serialize"));
    match id {
        Some(id) => event.id(id.to_string()),
        None => event,
    }
}
