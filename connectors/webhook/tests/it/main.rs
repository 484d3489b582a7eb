//! The webhook channel against a local HTTP server that checks what a
//! Standard Webhooks receiver checks (headers, timestamp, signature over the
//! exact body) and can answer 429, 410, or too slowly.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use notiflow_delivery::{Channel, Delivery, FailureReason, Final, ProviderGroup, RetryPolicy, SendError, deliver};
use notiflow_webhook::{SigningKey, WebhookChannel, WebhookConfig, sign};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[derive(Clone, Default)]
struct Seen {
    /// (webhook-id, parsed body) of every request whose signature verified.
    verified: Arc<Mutex<Vec<(String, serde_json::Value)>>>,
    busy_left: Arc<Mutex<u32>>,
}

/// What a receiver does: recompute the signature over the raw body.
fn verify(headers: &HeaderMap, body: &[u8]) -> Result<String, StatusCode> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string).ok_or(StatusCode::BAD_REQUEST);
    let (id, timestamp, signature) = (get("webhook-id")?, get("webhook-timestamp")?, get("webhook-signature")?);
    if get("content-type")? != "application/json" {
        return Err(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
    let timestamp: i64 = timestamp.parse().map_err(|_| StatusCode::BAD_REQUEST)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    if (now - timestamp).abs() > 300 {
        return Err(StatusCode::UNAUTHORIZED);
    }
    let expected = sign(&SigningKey::parse(SECRET).unwrap(), &id, timestamp, body);
    if !signature.split(' ').any(|s| s == expected) {
        return Err(StatusCode::UNAUTHORIZED);
    }
    Ok(id)
}

async fn ok(State(seen): State<Seen>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    match verify(&headers, &body) {
        Ok(id) => {
            seen.verified.lock().unwrap().push((id, serde_json::from_slice(&body).unwrap()));
            StatusCode::NO_CONTENT.into_response()
        }
        Err(code) => code.into_response(),
    }
}

async fn busy_once(State(seen): State<Seen>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    {
        let mut left = seen.busy_left.lock().unwrap();
        if *left > 0 {
            *left -= 1;
            return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "slow down").into_response();
        }
    }
    ok(State(seen), headers, body).await.into_response()
}

async fn start() -> (String, Seen) {
    let seen = Seen { busy_left: Arc::new(Mutex::new(1)), ..Seen::default() };
    let app = Router::new()
        .route("/ok", post(ok))
        .route("/busy", post(busy_once))
        .route("/gone", post(|| async { (StatusCode::GONE, "endpoint removed") }))
        .route("/slow", post(|| async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            StatusCode::OK
        }))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, seen)
}

fn delivery(address: &str) -> Delivery {
    serde_json::from_value(serde_json::json!({"type": "send", "delivery_id": "d_42", "message_id": "m_42", "request_id": "r-42",
        "tenant": "acme", "channel": "webhook", "address": address, "priority": "high", "subject": "Order 42", "body": "shipped"}))
    .unwrap()
}

fn channel(allow: &[&str]) -> WebhookChannel {
    let config = WebhookConfig { timeout: Duration::from_millis(500), allow: allow.iter().map(|s| s.to_string()).collect(), ..WebhookConfig::default() };
    WebhookChannel::new(config, SigningKey::parse(SECRET).unwrap()).unwrap()
}

#[tokio::test]
async fn a_signed_delivery_is_verified_by_the_receiver() {
    let (base, seen) = start().await;
    let sent = channel(&["127.0.0.1"]).send(&delivery(&format!("{base}/ok")), 1).await;
    assert_eq!(sent, Ok(notiflow_delivery::Accepted { provider_message_id: None }));
    let verified = seen.verified.lock().unwrap().clone();
    assert_eq!(verified.len(), 1, "the receiver verified the signature");
    let (id, body) = &verified[0];
    assert_eq!(id, "d_42");
    assert_eq!((body["type"].as_str(), body["data"]["subject"].as_str(), body["data"]["message_id"].as_str()), (Some("notification.send"), Some("Order 42"), Some("m_42")));
}

#[tokio::test]
async fn a_429_is_retried_after_its_retry_after_and_every_attempt_is_reported() {
    let (base, seen) = start().await;
    let policy = RetryPolicy { max_attempts: 3, min_delay: Duration::from_millis(10), max_delay: Duration::from_secs(2) };
    let started = std::time::Instant::now();
    let mut results = Vec::new();
    let end = deliver(&ProviderGroup::one(channel(&["127.0.0.1"])), &delivery(&format!("{base}/busy")), &policy, None, &notiflow_delivery::Hold::always(), |r| results.push(r)).await;
    assert!(matches!(end, Final::Accepted(_)), "{end:?}");
    assert!(started.elapsed() >= Duration::from_secs(1), "waited for Retry-After: 1");
    let seen_statuses: Vec<_> = results.iter().map(|r| (r.attempt, r.status, r.provider_code.clone())).collect();
    assert_eq!(seen_statuses, [(1, "retrying", Some("429".to_string())), (2, "accepted", None)]);
    assert_eq!(seen.verified.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn gone_fails_at_once_and_a_slow_receiver_times_out_as_retryable() {
    let (base, _) = start().await;
    let ch = channel(&["127.0.0.1"]);
    let gone = ch.send(&delivery(&format!("{base}/gone")), 1).await.unwrap_err();
    assert_eq!((gone.reason(), gone.provider_code()), (FailureReason::InvalidRecipient, "410"));
    let slow = ch.send(&delivery(&format!("{base}/slow")), 1).await.unwrap_err();
    assert!(matches!(slow, SendError::Retryable { reason: FailureReason::Timeout, .. }), "{slow:?}");
}

#[tokio::test]
async fn private_and_loopback_targets_are_refused_without_an_allow_list() {
    let (base, seen) = start().await;
    let ch = channel(&[]);
    // An IP literal, and a name that resolves to loopback (checked at connect time).
    let port = base.rsplit(':').next().unwrap();
    for address in [format!("{base}/ok"), format!("http://localhost:{port}/ok"), "http://169.254.169.254/latest/meta-data".to_string()] {
        let refused = ch.send(&delivery(&address), 1).await.unwrap_err();
        assert_eq!(refused.reason(), FailureReason::BlockedTarget, "{address}: {refused:?}");
    }
    let refused = ch.send(&delivery("file:///etc/passwd"), 1).await.unwrap_err();
    assert_eq!(refused.reason(), FailureReason::InvalidRecipient);
    assert!(seen.verified.lock().unwrap().is_empty(), "nothing reached the server");
}
