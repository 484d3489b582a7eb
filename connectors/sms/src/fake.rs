//! Local stand-ins for Twilio and Aliyun SMS: each checks a request as the
//! provider does (auth, signature, replay, fields) and answers as documented.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
pub use notiflow_delivery::fake::{FakeProvider, Log, Mode, Received};
use notiflow_delivery::fake::{FakeState, form};

/// Fake Twilio for account `sid` with auth token `token`.
pub async fn twilio(sid: &str, token: &str) -> FakeProvider {
    FakeProvider::start(sid, token, Router::new().route("/2010-04-01/Accounts/{sid}/Messages.json", post(twilio_messages))).await
}

/// Fake Aliyun Dysmsapi for AccessKey `key_id` / `secret`.
pub async fn aliyun(key_id: &str, secret: &str) -> FakeProvider {
    FakeProvider::start(key_id, secret, Router::new().route("/", post(aliyun_send_sms))).await
}

fn twilio_error(status: StatusCode, code: u32, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({"code": code, "message": message, "status": status.as_u16()}))).into_response()
}

async fn twilio_messages(State(shared): State<Arc<FakeState>>, Path(sid): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let busy = |s: u64| {
        let mut r = twilio_error(StatusCode::TOO_MANY_REQUESTS, 20429, "Too Many Requests");
        r.headers_mut().insert("retry-after", s.into());
        r
    };
    if let Some(answer) = shared.interfere(busy, || twilio_error(StatusCode::SERVICE_UNAVAILABLE, 20500, "Service unavailable")).await {
        return answer;
    }
    let (user, token) = &shared.credential;
    let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}")));
    if sid != *user || headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        shared.refuse(format!("twilio auth: account {sid}"));
        return twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    }
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/x-www-form-urlencoded") {
        shared.refuse("twilio content-type".into());
        return twilio_error(StatusCode::BAD_REQUEST, 20001, "form body expected");
    }
    let form = form(&body);
    let (to, text) = (form.get("To").cloned().unwrap_or_default(), form.get("Body").cloned().unwrap_or_default());
    if form.get("From").is_none() && form.get("MessagingServiceSid").is_none() {
        shared.refuse("twilio: no From".into());
        return twilio_error(StatusCode::BAD_REQUEST, 21603, "A 'From' or 'MessagingServiceSid' parameter is required");
    }
    if !(to.starts_with('+') && to.len() > 8 && to[1..].bytes().all(|b| b.is_ascii_digit())) || to.starts_with("+1555") {
        return twilio_error(StatusCode::BAD_REQUEST, 21211, "The 'To' number is not a valid phone number.");
    }
    if text.is_empty() {
        return twilio_error(StatusCode::BAD_REQUEST, 21602, "Message body is required.");
    }
    let message_sid = format!("SM{:032x}", shared.accepted_count() as u128 + 1);
    shared.accept(&to, &text, message_sid.clone(), None);
    (StatusCode::CREATED, axum::Json(serde_json::json!({"sid": message_sid, "status": "queued", "to": to, "body": text}))).into_response()
}

fn aliyun_answer(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({"Code": code, "Message": message, "RequestId": "fake"}))).into_response()
}

async fn aliyun_send_sms(State(shared): State<Arc<FakeState>>, body: Bytes) -> Response {
    let busy = |_| aliyun_answer(StatusCode::OK, "Throttling.User", "Request was denied due to user flow control.");
    if let Some(answer) = shared.interfere(busy, || aliyun_answer(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "down")).await {
        return answer;
    }
    let mut params = form(&body);
    let Some(signature) = params.remove("Signature") else {
        shared.refuse("aliyun: unsigned".into());
        return aliyun_answer(StatusCode::BAD_REQUEST, "MissingSignature", "Signature is mandatory");
    };
    let (key_id, secret) = &shared.credential;
    if params.get("AccessKeyId") != Some(key_id) {
        shared.refuse("aliyun: unknown key".into());
        return aliyun_answer(StatusCode::NOT_FOUND, "InvalidAccessKeyId.NotFound", "Specified access key is not found.");
    }
    if crate::aliyun::signature("POST", &params, secret) != signature {
        shared.refuse("aliyun: signature".into());
        return aliyun_answer(StatusCode::BAD_REQUEST, "SignatureDoesNotMatch", "Specified signature is not matched with our calculation.");
    }
    let fresh = params
        .get("Timestamp")
        .and_then(|t| chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%SZ").ok())
        .is_some_and(|t| (chrono::Utc::now().naive_utc() - t).num_seconds().abs() < 900);
    let nonce = params.get("SignatureNonce").cloned().unwrap_or_default();
    if !fresh || nonce.is_empty() || !shared.nonces.lock().unwrap().insert(nonce) {
        shared.refuse("aliyun: stale or replayed".into());
        return aliyun_answer(StatusCode::BAD_REQUEST, "SignatureNonceUsed", "Specified signature nonce was used already.");
    }
    let required = ["Action", "Version", "Format", "SignatureMethod", "SignatureVersion", "RegionId", "PhoneNumbers", "SignName", "TemplateCode"];
    if let Some(missing) = required.iter().find(|k| params.get(**k).is_none_or(|v| v.is_empty())) {
        shared.refuse(format!("aliyun: missing {missing}"));
        return aliyun_answer(StatusCode::BAD_REQUEST, "MissingParameter", missing);
    }
    if params["Action"] != "SendSms" || params["Version"] != "2017-05-25" || params["SignatureMethod"] != "HMAC-SHA1" {
        shared.refuse("aliyun: action/version/method".into());
        return aliyun_answer(StatusCode::BAD_REQUEST, "InvalidParameter", "action, version or signature method");
    }
    let phone = &params["PhoneNumbers"];
    if !phone.bytes().all(|b| b.is_ascii_digit()) || !(phone.len() == 11 || phone.starts_with("00")) {
        return aliyun_answer(StatusCode::OK, "isv.MOBILE_NUMBER_ILLEGAL", "invalid mobile number");
    }
    let text = params.get("TemplateParam").and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok());
    let Some(text) = text.as_ref().and_then(|v| v.as_object()).and_then(|o| o.values().next()).and_then(|v| v.as_str()).map(str::to_string) else {
        return aliyun_answer(StatusCode::OK, "isv.TEMPLATE_MISSING_PARAMETERS", "TemplateParam");
    };
    let biz_id = format!("{:018}^0", shared.accepted_count() + 1);
    shared.accept(phone, &text, biz_id.clone(), params.get("OutId").cloned());
    (StatusCode::OK, axum::Json(serde_json::json!({"Code": "OK", "Message": "OK", "BizId": biz_id, "RequestId": "fake"}))).into_response()
}
