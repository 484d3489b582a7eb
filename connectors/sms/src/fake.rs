//! Local stand-ins for Twilio, Aliyun and Tencent Cloud SMS: each checks a request as the
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
    twilio_on("127.0.0.1:0", sid, token).await.expect("bind 127.0.0.1:0")
}

/// A fake Twilio listening on `bind`.
pub async fn twilio_on(bind: &str, sid: &str, token: &str) -> std::io::Result<FakeProvider> {
    FakeProvider::start_on(bind, sid, token, Router::new().route("/2010-04-01/Accounts/{sid}/Messages.json", post(twilio_messages))).await
}

/// Fake Tencent Cloud SMS for SecretId `secret_id` / `secret_key`.
pub async fn tencent(secret_id: &str, secret_key: &str) -> FakeProvider {
    FakeProvider::start(secret_id, secret_key, Router::new().route("/", post(tencent_api))).await
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
    let message_sid = format!("SM{:032x}", shared.next_id() as u128);
    shared.accept(&to, &text, message_sid.clone(), None);
    if let Some(callback) = form.get("StatusCallback") {
        tokio::spawn(status_callback(callback.clone(), token.clone(), sid.clone(), message_sid.clone(), to.clone()));
    }
    (StatusCode::CREATED, axum::Json(serde_json::json!({"sid": message_sid, "status": "queued", "to": to, "body": text}))).into_response()
}

/// Reports the message's fate as Twilio does: a signed form POST to its
/// StatusCallback. Numbers ending in 0000 are unreachable (30003).
async fn status_callback(url: String, token: String, account: String, message_sid: String, to: String) {
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let (status, error) = if to.ends_with("0000") { ("undelivered", "30003") } else { ("delivered", "") };
    let params: Vec<(String, String)> = [("MessageSid", message_sid.as_str()), ("MessageStatus", status), ("To", &to), ("AccountSid", &account), ("ApiVersion", "2010-04-01"), ("ErrorCode", error)]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let signature = crate::twilio::callback_signature(&token, &url, &params);
    let _ = reqwest::Client::new().post(&url).header("x-twilio-signature", signature).form(&params).send().await;
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
    let biz_id = format!("{:018}^0", shared.next_id());
    shared.accept(phone, &text, biz_id.clone(), params.get("OutId").cloned());
    if let Some(url) = shared.report_url.lock().unwrap().clone() {
        tokio::spawn(aliyun_report(url, phone.clone(), biz_id.clone(), params.get("OutId").cloned().unwrap_or_default()));
    }
    (StatusCode::OK, axum::Json(serde_json::json!({"Code": "OK", "Message": "OK", "BizId": biz_id, "RequestId": "fake"}))).into_response()
}

/// Pushes one SmsReport as Aliyun's HTTP batch push does (unsigned JSON array;
/// China Standard Time). Numbers ending in 0000 fail.
async fn aliyun_report(url: String, phone: String, biz_id: String, out_id: String) {
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let china_now = (chrono::Utc::now() + chrono::Duration::hours(8)).format("%Y-%m-%d %H:%M:%S").to_string();
    let failed = phone.ends_with("0000");
    let report = serde_json::json!([{
        "phone_number": phone, "send_time": china_now, "report_time": china_now, "success": !failed,
        "err_code": if failed { "MK:0001" } else { "DELIVERED" }, "err_msg": if failed { "failed" } else { "用户接收成功" },
        "sms_size": "1", "biz_id": biz_id, "out_id": out_id,
    }]);
    let _ = reqwest::Client::new().post(&url).header("content-type", "application/json").body(report.to_string()).send().await;
}

fn tencent_answer(status: StatusCode, response: serde_json::Value) -> Response {
    (status, axum::Json(serde_json::json!({"Response": response}))).into_response()
}

fn tencent_error(code: &str, message: &str) -> Response {
    tencent_answer(StatusCode::OK, serde_json::json!({"Error": {"Code": code, "Message": message}, "RequestId": "fake"}))
}

/// TC3-HMAC-SHA256 as the documentation gives it, driven by the request's own SignedHeaders.
fn tencent_expected_signature(secret_key: &str, headers: &HeaderMap, signed_headers: &str, date: &str, timestamp: &str, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mac = |key: &[u8], data: &[u8]| {
        let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
        m.update(data);
        m.finalize().into_bytes().to_vec()
    };
    let canonical_headers: String = signed_headers
        .split(';')
        .map(|name| {
            let value = headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").trim();
            format!("{name}:{}\n", if name == "x-tc-action" { value.to_ascii_lowercase() } else { value.to_string() })
        })
        .collect();
    let canonical = format!("POST\n/\n\n{canonical_headers}\n{signed_headers}\n{}", hex(&Sha256::digest(body)));
    let to_sign = format!("TC3-HMAC-SHA256\n{timestamp}\n{date}/sms/tc3_request\n{}", hex(&Sha256::digest(canonical.as_bytes())));
    let key = mac(&mac(&mac(format!("TC3{secret_key}").as_bytes(), date.as_bytes()), b"sms"), b"tc3_request");
    hex(&mac(&key, to_sign.as_bytes()))
}

fn tencent_pull(shared: &FakeState, request: &serde_json::Value) -> Response {
    let limit = request["Limit"].as_u64().filter(|l| (1..=100).contains(l));
    let (Some(limit), Some(_)) = (limit, request["SmsSdkAppId"].as_str().filter(|a| !a.is_empty())) else {
        shared.refuse("tencent: pull without SmsSdkAppId or Limit 1-100".into());
        return tencent_error("InvalidParameterValue", "SmsSdkAppId and Limit (1-100) are required");
    };
    let mut reports = shared.reports.lock().unwrap();
    let n = reports.len().min(limit as usize);
    let set: Vec<serde_json::Value> = reports.drain(..n).collect();
    tencent_answer(StatusCode::OK, serde_json::json!({"PullSmsSendStatusSet": set, "RequestId": "fake"}))
}

/// SendSms and PullSmsSendStatus, both TC3-signed. Every accepted message's
/// report (numbers ending in 0000 fail) waits for a pull, handed out once.
async fn tencent_api(State(shared): State<Arc<FakeState>>, headers: HeaderMap, body: Bytes) -> Response {
    let busy = |_| tencent_error("RequestLimitExceeded", "request too frequent");
    if let Some(answer) = shared.interfere(busy, || (StatusCode::SERVICE_UNAVAILABLE, "down").into_response()).await {
        return answer;
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let action = header("x-tc-action");
    if !["SendSms", "PullSmsSendStatus"].contains(&action.as_str()) || header("x-tc-version") != "2021-01-11" || !header("content-type").starts_with("application/json") {
        shared.refuse("tencent: action/version/content-type".into());
        return tencent_error("InvalidParameter", "action, version or content type");
    }
    // Authorization: TC3-HMAC-SHA256 Credential=<id>/<date>/sms/tc3_request, SignedHeaders=<list>, Signature=<hex>
    let authorization = header("authorization");
    let field = |name: &str| authorization.split(", ").find_map(|p| p.split_once(&format!("{name}=")).map(|(_, v)| v.to_string())).unwrap_or_default();
    let credential = field("Credential");
    let scope: Vec<&str> = credential.split('/').collect();
    let (secret_id, secret_key) = &shared.credential;
    if !authorization.starts_with("TC3-HMAC-SHA256 ") || scope.len() != 4 || scope[0] != secret_id || scope[2] != "sms" || scope[3] != "tc3_request" {
        shared.refuse("tencent: credential".into());
        return tencent_error("AuthFailure.SecretIdNotFound", "credential scope");
    }
    let timestamp = header("x-tc-timestamp");
    let fresh = timestamp.parse::<i64>().is_ok_and(|t| (chrono::Utc::now().timestamp() - t).abs() < 300);
    let date_matches = timestamp.parse::<i64>().ok().and_then(|t| chrono::DateTime::from_timestamp(t, 0)).is_some_and(|t| t.format("%Y-%m-%d").to_string() == scope[1]);
    let signed_headers = field("SignedHeaders");
    if !fresh || !date_matches || !signed_headers.split(';').any(|h| h == "content-type") || !signed_headers.split(';').any(|h| h == "host") {
        shared.refuse("tencent: timestamp or signed headers".into());
        return tencent_error("AuthFailure.SignatureExpire", "timestamp");
    }
    if field("Signature") != tencent_expected_signature(secret_key, &headers, &signed_headers, scope[1], &timestamp, &body) {
        shared.refuse("tencent: signature".into());
        return tencent_error("AuthFailure.SignatureFailure", "The provided credentials could not be validated.");
    }
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if action == "PullSmsSendStatus" {
        return tencent_pull(&shared, &request);
    }
    let phone = request["PhoneNumberSet"][0].as_str().unwrap_or("").to_string();
    let text = request["TemplateParamSet"][0].as_str().unwrap_or("").to_string();
    if ["SmsSdkAppId", "SignName", "TemplateId"].iter().any(|k| request[*k].as_str().is_none_or(str::is_empty)) || text.is_empty() {
        shared.refuse("tencent: missing fields".into());
        return tencent_error("MissingParameter", "SmsSdkAppId, SignName, TemplateId, TemplateParamSet");
    }
    let valid = phone.starts_with('+') && phone[1..].bytes().all(|b| b.is_ascii_digit()) && (!phone.starts_with("+86") || phone.len() == 14);
    let status = if valid {
        let serial = format!("2433:{}", shared.next_id());
        shared.accept(&phone, &text, serial.clone(), request["SessionContext"].as_str().map(str::to_string));
        let china_now = chrono::Utc::now() + chrono::Duration::hours(8);
        let failed = phone.ends_with("0000");
        shared.reports.lock().unwrap().push_back(serde_json::json!({
            "UserReceiveTime": china_now.format("%Y-%m-%d %H:%M:%S").to_string(), "CountryCode": "86",
            "SubscriberNumber": phone.trim_start_matches("+86"), "PhoneNumber": phone, "SerialNo": serial,
            "ReportStatus": if failed { "FAIL" } else { "SUCCESS" }, "Description": if failed { "MK:0001" } else { "用户短信送达成功" },
            "SessionContext": request["SessionContext"].as_str().unwrap_or(""),
        }));
        serde_json::json!({"SerialNo": serial, "PhoneNumber": phone, "Fee": 1, "Code": "Ok", "Message": "send success", "IsoCode": "CN"})
    } else {
        serde_json::json!({"SerialNo": "", "PhoneNumber": phone, "Fee": 0, "Code": "InvalidParameterValue.IncorrectPhoneNumber", "Message": "incorrect number"})
    };
    tencent_answer(StatusCode::OK, serde_json::json!({"SendStatusSet": [status], "RequestId": "fake"}))
}
