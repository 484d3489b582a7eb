//! Local FCM, APNs and Web Push stand-ins. The FCM one is also the OAuth token endpoint:
//! it verifies the service-account assertion (RS256 signature with the
//! account's public key, issuer, scope, audience, lifetime) before issuing a
//! token. The APNs one only speaks HTTP/2 and verifies each provider token
//! (ES256 signature, `kid`, `iss`, age) and `apns-topic`.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
pub use notiflow_delivery::fake::{FakeProvider, Log, Mode, Received};
use notiflow_delivery::fake::{FakeState, form};
use ring::signature::{ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey, VerificationAlgorithm};
use serde_json::{Value, json};

/// FCM for `project_id`, trusting assertions from `client_email` signed by the
/// RSA key whose public part (DER RSAPublicKey) is given. Its token endpoint is `{endpoint}/token`.
pub async fn fcm(project_id: &str, client_email: &str, public_key: &[u8]) -> FakeProvider {
    let routes = Router::new().route("/token", post(oauth_token)).route(&format!("/v1/projects/{project_id}/messages:send"), post(fcm_send));
    FakeProvider::start(client_email, &STANDARD.encode(public_key), routes).await
}

/// APNs for `team_id`'s key `key_id` (public part: uncompressed P-256 point) and app `topic`.
pub async fn apns(team_id: &str, key_id: &str, topic: &str, public_key: &[u8]) -> FakeProvider {
    FakeProvider::start(&format!("{team_id}/{key_id}/{topic}"), &STANDARD.encode(public_key), Router::new().route("/3/device/{token}", post(apns_send))).await
}

/// Every provider token seen so far is answered `ExpiredProviderToken` from now on.
pub fn expire_provider_tokens(fake: &FakeProvider) {
    fake.expire_tokens();
}

/// The claims of a compact JWS whose signature verifies, or why not.
fn verified_claims(jwt: &str, algorithm: &'static dyn VerificationAlgorithm, public_key: &[u8]) -> Result<(Value, Value), String> {
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header, claims, signature] = parts[..] else { return Err("not a compact JWS".into()) };
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|_| "not base64url".to_string());
    UnparsedPublicKey::new(algorithm, public_key)
        .verify(format!("{header}.{claims}").as_bytes(), &decode(signature)?)
        .map_err(|_| "bad signature".to_string())?;
    let json = |part: &str| -> Result<Value, String> { serde_json::from_slice(&decode(part)?).map_err(|_| "not JSON".to_string()) };
    Ok((json(header)?, json(claims)?))
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn oauth_token(State(shared): State<Arc<FakeState>>, headers: HeaderMap, body: Bytes) -> Response {
    let refuse = |why: String| {
        shared.refuse(format!("oauth: {why}"));
        (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "invalid_grant", "error_description": why}))).into_response()
    };
    let form = form(&body);
    if form.get("grant_type").map(String::as_str) != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
        return refuse("grant_type".into());
    }
    let public_key = STANDARD.decode(&shared.credential.1).unwrap();
    let (header, claims) = match verified_claims(form.get("assertion").map(String::as_str).unwrap_or(""), &RSA_PKCS1_2048_8192_SHA256, &public_key) {
        Ok(parts) => parts,
        Err(why) => return refuse(why),
    };
    let audience = format!("http://{}/token", headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or(""));
    let (iat, exp) = (claims["iat"].as_i64().unwrap_or(0), claims["exp"].as_i64().unwrap_or(0));
    if header["alg"] != "RS256" || claims["iss"].as_str() != Some(&shared.credential.0) {
        return refuse("issuer or algorithm".into());
    }
    if claims["scope"] != "https://www.googleapis.com/auth/firebase.messaging" || claims["aud"].as_str() != Some(&audience) {
        return refuse(format!("scope or audience {}", claims["aud"]));
    }
    if (now() - iat).abs() > 300 || exp - iat > 3600 || exp <= now() {
        return refuse("lifetime".into());
    }
    axum::Json(json!({"access_token": shared.issue_token(), "expires_in": 3599, "token_type": "Bearer"})).into_response()
}

fn fcm_error(status: StatusCode, google_status: &str, code: &str, message: &str) -> Response {
    let body = json!({"error": {"code": status.as_u16(), "message": message, "status": google_status,
        "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}]}});
    (status, axum::Json(body)).into_response()
}

async fn fcm_send(State(shared): State<Arc<FakeState>>, headers: HeaderMap, body: Bytes) -> Response {
    let busy = |_| fcm_error(StatusCode::TOO_MANY_REQUESTS, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", "Quota exceeded");
    if let Some(early) = shared.interfere(busy, || fcm_error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", "UNAVAILABLE", "unavailable")).await {
        return early;
    }
    let bearer = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
    if !shared.token_valid(bearer) {
        return fcm_error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", "UNAUTHENTICATED", "Request had invalid authentication credentials.");
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    let message = &body["message"];
    let token = message["token"].as_str().unwrap_or("");
    if token.starts_with("unregistered") {
        return fcm_error(StatusCode::NOT_FOUND, "NOT_FOUND", "UNREGISTERED", "Requested entity was not found.");
    }
    let priority = message["android"]["priority"].as_str().unwrap_or("");
    let text = message["notification"]["body"].as_str().unwrap_or("");
    if token.is_empty() || text.is_empty() || !matches!(priority, "HIGH" | "NORMAL") {
        shared.refuse("fcm: message shape".into());
        return fcm_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "Invalid JSON payload received.");
    }
    let title = message["notification"]["title"].as_str().unwrap_or("");
    let name = format!("projects/p/messages/0:{}", shared.next_id());
    shared.accept(token, &format!("{priority} {title}|{text}"), name.clone(), message["data"]["delivery_id"].as_str().map(str::to_string));
    axum::Json(json!({"name": name})).into_response()
}

async fn apns_send(State(shared): State<Arc<FakeState>>, Path(device): Path<String>, request: Request<Body>) -> Response {
    let reason = |status: StatusCode, reason: &str| (status, axum::Json(json!({"reason": reason}))).into_response();
    if request.version() != Version::HTTP_2 {
        shared.refuse(format!("apns: {:?} instead of HTTP/2", request.version()));
        return reason(StatusCode::HTTP_VERSION_NOT_SUPPORTED, "BadRequest");
    }
    let busy = |_| reason(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests");
    if let Some(early) = shared.interfere(busy, || reason(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable")).await {
        return early;
    }
    let headers = request.headers().clone();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let ids: Vec<String> = shared.credential.0.split('/').map(str::to_string).collect();
    let (team_id, key_id, topic) = (&ids[0], &ids[1], &ids[2]);
    let jwt = header("authorization").strip_prefix("bearer ").unwrap_or("").to_string();
    let public_key = STANDARD.decode(&shared.credential.1).unwrap();
    match verified_claims(&jwt, &ECDSA_P256_SHA256_FIXED, &public_key) {
        Ok((h, c)) if h["alg"] == "ES256" && h["kid"].as_str() == Some(key_id) && c["iss"].as_str() == Some(team_id) => {
            if (now() - c["iat"].as_i64().unwrap_or(0)).abs() > 3600 {
                return reason(StatusCode::FORBIDDEN, "ExpiredProviderToken");
            }
        }
        other => {
            shared.refuse(format!("apns: provider token {:?}", other.err()));
            return reason(StatusCode::FORBIDDEN, "InvalidProviderToken");
        }
    }
    // A token seen before and no longer honoured has expired (`expire_provider_tokens`).
    let seen = !shared.nonces.lock().unwrap().insert(jwt.clone());
    if seen && !shared.token_valid(&jwt) {
        return reason(StatusCode::FORBIDDEN, "ExpiredProviderToken");
    }
    shared.honour_token(&jwt);
    if header("apns-topic") != *topic {
        return reason(StatusCode::BAD_REQUEST, "DeviceTokenNotForTopic");
    }
    if header("apns-push-type") != "alert" || !matches!(header("apns-priority").as_str(), "10" | "5") {
        shared.refuse("apns: push type or priority".into());
        return reason(StatusCode::BAD_REQUEST, "BadPriority");
    }
    if device.starts_with("dead") {
        return (StatusCode::GONE, axum::Json(json!({"reason": "Unregistered", "timestamp": chrono::Utc::now().timestamp_millis()}))).into_response();
    }
    let body = axum::body::to_bytes(request.into_body(), 4096).await.map_err(|_| ()).and_then(|b| serde_json::from_slice::<Value>(&b).map_err(|_| ()));
    let Ok(payload) = body else { return reason(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge") };
    let alert = &payload["aps"]["alert"];
    let id = header("apns-id");
    let text = format!("{} {}|{}", header("apns-priority"), alert["title"].as_str().unwrap_or(""), alert["body"].as_str().unwrap_or(""));
    shared.accept(&device, &text, id.clone(), payload["delivery_id"].as_str().map(str::to_string));
    let mut response = StatusCode::OK.into_response();
    response.headers_mut().insert("apns-id", id.parse().unwrap());
    response
}

/// Subscriptions of the fake push service: the browser-side keys of each.
type Browsers = Arc<std::sync::Mutex<std::collections::HashMap<String, (ring::agreement::EphemeralPrivateKey, Vec<u8>, Vec<u8>)>>>;

/// A browser push service that also plays the browsers subscribed to it: it
/// checks VAPID (ES256 JWT for its origin, signed by the expected application
/// server key) and decrypts each message as the browser would (RFC 8291).
/// A subscription decrypts one message (ring keeps ECDH private keys single-use).
pub struct FakeWebPush {
    pub provider: FakeProvider,
    browsers: Browsers,
    next: std::sync::atomic::AtomicUsize,
}

impl FakeWebPush {
    /// Trusts VAPID tokens signed by the key whose public point is `vapid_public`.
    pub async fn start(vapid_public: &[u8]) -> FakeWebPush {
        let browsers: Browsers = Arc::default();
        let shared = browsers.clone();
        let route = post(move |state: State<Arc<FakeState>>, path: Path<String>, headers: HeaderMap, body: Bytes| {
            let browsers = shared.clone();
            async move { webpush_receive(state, path, headers, body, browsers).await }
        });
        let provider = FakeProvider::start("webpush", &STANDARD.encode(vapid_public), Router::new().route("/push/{id}", route)).await;
        FakeWebPush { provider, browsers, next: std::sync::atomic::AtomicUsize::new(1) }
    }

    fn subscription(&self, id: String) -> String {
        let rng = ring::rand::SystemRandom::new();
        let private = ring::agreement::EphemeralPrivateKey::generate(&ring::agreement::ECDH_P256, &rng).unwrap();
        let public = private.compute_public_key().unwrap().as_ref().to_vec();
        let mut auth = vec![0u8; 16];
        ring::rand::SecureRandom::fill(&rng, &mut auth).unwrap();
        let json = json!({"endpoint": format!("{}/push/{id}", self.provider.endpoint), "expirationTime": null,
            "keys": {"p256dh": URL_SAFE_NO_PAD.encode(&public), "auth": URL_SAFE_NO_PAD.encode(&auth)}});
        self.browsers.lock().unwrap().insert(id, (private, public, auth));
        json.to_string()
    }

    /// A new browser subscription (`PushSubscription.toJSON()`), good for one message.
    pub fn subscribe(&self) -> String {
        self.subscription(format!("sub-{}", self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)))
    }

    /// A subscription the service has dropped: answered 410 Gone.
    pub fn expired_subscription(&self) -> String {
        self.subscription(format!("gone-{}", self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)))
    }
}

async fn webpush_receive(State(shared): State<Arc<FakeState>>, Path(id): Path<String>, headers: HeaderMap, body: Bytes, browsers: Browsers) -> Response {
    let busy = |seconds: u64| {
        let mut r = StatusCode::TOO_MANY_REQUESTS.into_response();
        r.headers_mut().insert("retry-after", seconds.into());
        r
    };
    if let Some(early) = shared.interfere(busy, || StatusCode::SERVICE_UNAVAILABLE.into_response()).await {
        return early;
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    // Authorization: vapid t=<jwt>, k=<public key>
    let authorization = header("authorization");
    let field = |name: &str| authorization.strip_prefix("vapid ")?.split(',').map(str::trim).find_map(|p| p.strip_prefix(&format!("{name}=")).map(str::to_string));
    let expected_key = STANDARD.decode(&shared.credential.1).unwrap();
    let key = field("k").and_then(|k| URL_SAFE_NO_PAD.decode(k).ok());
    if key.as_deref() != Some(expected_key.as_slice()) {
        shared.refuse("webpush: VAPID key".into());
        return StatusCode::FORBIDDEN.into_response();
    }
    let origin = format!("http://{}", header("host"));
    match verified_claims(&field("t").unwrap_or_default(), &ECDSA_P256_SHA256_FIXED, &expected_key) {
        Ok((h, c)) if h["alg"] == "ES256" && c["aud"].as_str() == Some(&origin) => {
            let exp = c["exp"].as_i64().unwrap_or(0);
            let sub = c["sub"].as_str().unwrap_or("");
            if exp <= now() || exp > now() + 24 * 3600 || !(sub.starts_with("mailto:") || sub.starts_with("https://")) {
                shared.refuse("webpush: VAPID claims".into());
                return StatusCode::FORBIDDEN.into_response();
            }
        }
        other => {
            shared.refuse(format!("webpush: VAPID token {:?}", other.err()));
            return StatusCode::UNAUTHORIZED.into_response();
        }
    }
    if header("content-encoding") != "aes128gcm" || header("ttl").parse::<u64>().is_err() || !matches!(header("urgency").as_str(), "very-low" | "low" | "normal" | "high") {
        shared.refuse("webpush: headers".into());
        return StatusCode::BAD_REQUEST.into_response();
    }
    if id.starts_with("gone") {
        return StatusCode::GONE.into_response();
    }
    let Some((private, public, auth)) = browsers.lock().unwrap().remove(&id) else {
        shared.refuse(format!("webpush: subscription {id} unknown or used twice"));
        return StatusCode::NOT_FOUND.into_response();
    };
    let agree = |sender: &[u8]| {
        let peer = ring::agreement::UnparsedPublicKey::new(&ring::agreement::ECDH_P256, sender.to_vec());
        ring::agreement::agree_ephemeral(private, &peer, |secret| secret.to_vec()).map_err(|_| "ECDH".to_string())
    };
    let payload = match crate::ece::open(&body, &public, &auth, agree).map(|p| serde_json::from_slice::<Value>(&p)) {
        Ok(Ok(payload)) => payload,
        other => {
            shared.refuse(format!("webpush: cannot decrypt: {:?}", other.err()));
            return StatusCode::BAD_REQUEST.into_response();
        }
    };
    let location = format!("/m/{}", shared.next_id());
    let text = format!("{} {}|{}", header("urgency"), payload["title"].as_str().unwrap_or(""), payload["body"].as_str().unwrap_or(""));
    shared.accept(&id, &text, location.clone(), payload["delivery_id"].as_str().map(str::to_string));
    let mut response = StatusCode::CREATED.into_response();
    response.headers_mut().insert("location", location.parse().unwrap());
    response
}
