//! Local stand-ins for the chat APIs. Each checks the credential and the
//! signature the way the real API documents it (recomputed here from the
//! recipe, not with the channel's own signing code), the message shape, and
//! answers with the API's own codes; `Mode` makes it busy or down.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use hmac::{Hmac, Mac};
pub use notiflow_delivery::fake::{FakeProvider, Log, Mode, Received};
use notiflow_delivery::fake::{FakeState, form};
use serde_json::{Value, json};

/// DingTalk robot with `access_token` / signing `secret`.
pub async fn dingtalk(token: &str, secret: &str) -> FakeProvider {
    FakeProvider::start(token, secret, Router::new().route("/robot/send", post(dingtalk_send))).await
}

/// Feishu bot with hook `token` / signing `secret`.
pub async fn feishu(token: &str, secret: &str) -> FakeProvider {
    FakeProvider::start(token, secret, Router::new().route("/open-apis/bot/v2/hook/{token}", post(feishu_send))).await
}

/// WeCom robot with webhook `key`.
pub async fn wecom(key: &str) -> FakeProvider {
    FakeProvider::start(key, "", Router::new().route("/cgi-bin/webhook/send", post(wecom_send))).await
}

/// Slack incoming webhook at `/services/{path}`.
pub async fn slack(path: &str) -> FakeProvider {
    FakeProvider::start(path, "", Router::new().route("/services/{a}/{b}/{c}", post(slack_send))).await
}

/// WeChat official account `app_id` / `app_secret`; openids starting `o` follow it,
/// `o-unfollowed` does not; template `TPL_OK` exists.
pub async fn wechat(app_id: &str, app_secret: &str) -> FakeProvider {
    let routes = Router::new().route("/cgi-bin/stable_token", post(wechat_token)).route("/cgi-bin/message/template/send", post(wechat_send));
    FakeProvider::start(app_id, app_secret, routes).await
}

/// Teams workflow webhook at `/teams/{id}?sig=<sig>`.
pub async fn teams(id: &str, sig: &str) -> FakeProvider {
    FakeProvider::start(id, sig, Router::new().route("/teams/{id}", post(teams_send))).await
}

/// WeCom app of `corp_id` with `secret`; members whose id starts `gone` are unknown.
pub async fn wecom_app(corp_id: &str, secret: &str) -> FakeProvider {
    let routes = Router::new().route("/cgi-bin/gettoken", axum::routing::get(wecom_token)).route("/cgi-bin/message/send", post(wecom_app_send));
    FakeProvider::start(corp_id, secret, routes).await
}

/// DingTalk app with `app_key` / `app_secret`; users whose id starts `gone` are unknown.
pub async fn dingtalk_work(app_key: &str, app_secret: &str) -> FakeProvider {
    let routes =
        Router::new().route("/gettoken", axum::routing::get(dingtalk_token)).route("/topapi/message/corpconversation/asyncsend_v2", post(dingtalk_work_send));
    FakeProvider::start(app_key, app_secret, routes).await
}

/// Telegram bot with `token`; chat id `404` does not exist, `403` blocked the bot.
pub async fn telegram(token: &str) -> FakeProvider {
    FakeProvider::start(token, "", Router::new().route("/{bot}/sendMessage", post(telegram_send))).await
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn hmac_base64(key: &[u8], data: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(data);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Within an hour of now, as DingTalk and Feishu require.
fn fresh(timestamp_ms: i64) -> bool {
    (chrono::Utc::now().timestamp_millis() - timestamp_ms).abs() < 3_600_000
}

/// The text of a robot message: `text.content`, `markdown.text|content`, or Feishu's `content.text` / post title and text.
fn robot_text(body: &Value) -> Option<(String, String)> {
    let kind = body.get("msgtype").or(body.get("msg_type"))?.as_str()?.to_string();
    let text = match kind.as_str() {
        "text" => body["text"]["content"].as_str().or(body["content"]["text"].as_str())?.to_string(),
        "markdown" => body["markdown"]["text"].as_str().or(body["markdown"]["content"].as_str())?.to_string(),
        "post" => {
            let post = &body["content"]["post"]["zh_cn"];
            format!("{}\n{}", post["title"].as_str()?, post["content"][0][0]["text"].as_str()?)
        }
        _ => return None,
    };
    (!text.is_empty()).then_some((kind, text))
}

async fn dingtalk_send(State(shared): State<Arc<FakeState>>, RawQuery(query): RawQuery, body: Bytes) -> Response {
    let busy = |_| answer(StatusCode::OK, json!({"errcode": 130101, "errmsg": "send too fast, exceed 20 times per minute"}));
    if let Some(early) = shared.interfere(busy, || answer(StatusCode::SERVICE_UNAVAILABLE, json!({"errcode": -1, "errmsg": "system busy"}))).await {
        return early;
    }
    let query = form(query.unwrap_or_default().as_bytes());
    let (token, secret) = &shared.credential;
    if query.get("access_token") != Some(token) {
        shared.refuse("dingtalk: token".into());
        return answer(StatusCode::OK, json!({"errcode": 300001, "errmsg": "token is not exist"}));
    }
    let timestamp = query.get("timestamp").and_then(|t| t.parse::<i64>().ok()).unwrap_or(0);
    let expected = hmac_base64(secret.as_bytes(), format!("{timestamp}\n{secret}").as_bytes());
    if !fresh(timestamp) || query.get("sign") != Some(&expected) {
        shared.refuse("dingtalk: sign".into());
        return answer(StatusCode::OK, json!({"errcode": 310000, "errmsg": "sign not match, more: [https://ding-doc.dingtalk.com/doc#/serverapi2/qf2nxq]"}));
    }
    let Some((kind, text)) = serde_json::from_slice(&body).ok().as_ref().and_then(robot_text) else {
        shared.refuse("dingtalk: body".into());
        return answer(StatusCode::OK, json!({"errcode": 40035, "errmsg": "缺少参数 json"}));
    };
    shared.accept(&kind, &text, String::new(), None);
    answer(StatusCode::OK, json!({"errcode": 0, "errmsg": "ok"}))
}

async fn feishu_send(State(shared): State<Arc<FakeState>>, Path(hook): Path<String>, body: Bytes) -> Response {
    let busy = |_| answer(StatusCode::OK, json!({"code": 11232, "msg": "frequency limited psm[lark.oapi.app_platform_runtime]appID[1]", "data": {}}));
    if let Some(early) = shared.interfere(busy, || answer(StatusCode::SERVICE_UNAVAILABLE, json!({"code": 9499, "msg": "unavailable"}))).await {
        return early;
    }
    let (token, secret) = &shared.credential;
    if hook != *token {
        shared.refuse("feishu: hook".into());
        return answer(StatusCode::OK, json!({"code": 19001, "msg": "param invalid: incoming webhook access token invalid", "data": {}}));
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else { return answer(StatusCode::BAD_REQUEST, json!({"code": 9499, "msg": "Bad Request"})) };
    let timestamp = body["timestamp"].as_str().and_then(|t| t.parse::<i64>().ok()).unwrap_or(0);
    let expected = hmac_base64(format!("{timestamp}\n{secret}").as_bytes(), b"");
    if !fresh(timestamp * 1000) || body["sign"].as_str() != Some(expected.as_str()) {
        shared.refuse("feishu: sign".into());
        return answer(StatusCode::OK, json!({"code": 19021, "msg": "sign match fail or timestamp is not within one hour from current time", "data": {}}));
    }
    let Some((kind, text)) = robot_text(&body) else {
        shared.refuse("feishu: body".into());
        return answer(StatusCode::BAD_REQUEST, json!({"code": 9499, "msg": "Bad Request"}));
    };
    shared.accept(&kind, &text, String::new(), None);
    answer(StatusCode::OK, json!({"code": 0, "msg": "success", "data": {}}))
}

async fn wecom_send(State(shared): State<Arc<FakeState>>, RawQuery(query): RawQuery, body: Bytes) -> Response {
    let busy = |_| answer(StatusCode::OK, json!({"errcode": 45009, "errmsg": "api freq out of limit"}));
    if let Some(early) = shared.interfere(busy, || answer(StatusCode::SERVICE_UNAVAILABLE, json!({"errcode": -1, "errmsg": "system busy"}))).await {
        return early;
    }
    if form(query.unwrap_or_default().as_bytes()).get("key") != Some(&shared.credential.0) {
        shared.refuse("wecom: key".into());
        return answer(StatusCode::OK, json!({"errcode": 93000, "errmsg": "invalid webhook url"}));
    }
    let Some((kind, text)) = serde_json::from_slice(&body).ok().as_ref().and_then(robot_text) else {
        shared.refuse("wecom: body".into());
        return answer(StatusCode::OK, json!({"errcode": 44004, "errmsg": "empty content"}));
    };
    shared.accept(&kind, &text, String::new(), None);
    answer(StatusCode::OK, json!({"errcode": 0, "errmsg": "ok"}))
}

async fn slack_send(State(shared): State<Arc<FakeState>>, Path((a, b, c)): Path<(String, String, String)>, body: Bytes) -> Response {
    let busy = |seconds: u64| {
        let mut r = (StatusCode::TOO_MANY_REQUESTS, "rate_limited").into_response();
        r.headers_mut().insert("retry-after", seconds.into());
        r
    };
    if let Some(early) = shared.interfere(busy, || (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable").into_response()).await {
        return early;
    }
    if format!("{a}/{b}/{c}") != shared.credential.0 {
        shared.refuse("slack: path".into());
        return (StatusCode::FORBIDDEN, "invalid_token").into_response();
    }
    let text = serde_json::from_slice::<Value>(&body).ok().and_then(|b| b["text"].as_str().map(str::to_string)).unwrap_or_default();
    if text.is_empty() {
        return (StatusCode::BAD_REQUEST, "no_text").into_response();
    }
    shared.accept("slack", &text, String::new(), None);
    (StatusCode::OK, "ok").into_response()
}

async fn telegram_send(State(shared): State<Arc<FakeState>>, Path(bot): Path<String>, body: Bytes) -> Response {
    let error = |code: u16, description: &str| {
        answer(StatusCode::from_u16(code).unwrap(), json!({"ok": false, "error_code": code, "description": description}))
    };
    let busy = |seconds: u64| {
        let body = json!({"ok": false, "error_code": 429, "description": format!("Too Many Requests: retry after {seconds}"), "parameters": {"retry_after": seconds}});
        answer(StatusCode::TOO_MANY_REQUESTS, body)
    };
    if let Some(early) = shared.interfere(busy, || error(502, "Bad Gateway")).await {
        return early;
    }
    if bot.strip_prefix("bot") != Some(shared.credential.0.as_str()) {
        shared.refuse("telegram: token".into());
        return error(401, "Unauthorized");
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else { return error(400, "Bad Request: invalid JSON") };
    let chat = match &body["chat_id"] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return error(400, "Bad Request: chat_id is empty"),
    };
    match chat.as_str() {
        "404" => return error(400, "Bad Request: chat not found"),
        "403" => return error(403, "Forbidden: bot was blocked by the user"),
        _ => {}
    }
    let text = body["text"].as_str().unwrap_or_default();
    if text.is_empty() || body["parse_mode"].as_str().is_some_and(|m| m != "HTML" && m != "MarkdownV2" && m != "Markdown") {
        return error(400, "Bad Request: message text is empty");
    }
    let id = shared.next_id() as i64;
    shared.accept(&chat, text, id.to_string(), None);
    answer(StatusCode::OK, json!({"ok": true, "result": {"message_id": id, "chat": {"id": chat}, "text": text}}))
}

async fn wechat_token(State(shared): State<Arc<FakeState>>, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    let (app_id, secret) = &shared.credential;
    if body["grant_type"] != "client_credential" || body["appid"].as_str() != Some(app_id) {
        shared.refuse("wechat: appid".into());
        return answer(StatusCode::OK, json!({"errcode": 40013, "errmsg": "invalid appid"}));
    }
    if body["secret"].as_str() != Some(secret) {
        shared.refuse("wechat: secret".into());
        return answer(StatusCode::OK, json!({"errcode": 40125, "errmsg": "invalid appsecret"}));
    }
    answer(StatusCode::OK, json!({"access_token": shared.issue_token(), "expires_in": 7200}))
}

async fn wechat_send(State(shared): State<Arc<FakeState>>, RawQuery(query): RawQuery, body: Bytes) -> Response {
    let busy = |_| answer(StatusCode::OK, json!({"errcode": 45009, "errmsg": "reach max api daily quota limit"}));
    if let Some(early) = shared.interfere(busy, || answer(StatusCode::SERVICE_UNAVAILABLE, json!({"errcode": -1, "errmsg": "system error"}))).await {
        return early;
    }
    let token = form(query.unwrap_or_default().as_bytes()).get("access_token").cloned().unwrap_or_default();
    if !shared.token_valid(&token) {
        return answer(StatusCode::OK, json!({"errcode": 42001, "errmsg": "access_token expired"}));
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    let openid = body["touser"].as_str().unwrap_or_default();
    if !openid.starts_with('o') {
        return answer(StatusCode::OK, json!({"errcode": 40003, "errmsg": "invalid openid"}));
    }
    if openid == "o-unfollowed" {
        return answer(StatusCode::OK, json!({"errcode": 43004, "errmsg": "require subscribe"}));
    }
    if body["template_id"] != "TPL_OK" {
        return answer(StatusCode::OK, json!({"errcode": 40037, "errmsg": "invalid template_id"}));
    }
    let Some(data) = body["data"].as_object().filter(|d| !d.is_empty() && d.values().all(|v| v["value"].is_string())) else {
        shared.refuse("wechat: data".into());
        return answer(StatusCode::OK, json!({"errcode": 47003, "errmsg": "argument invalid! data.value invalid"}));
    };
    let text = data.iter().map(|(k, v)| format!("{k}={}", v["value"].as_str().unwrap_or(""))).collect::<Vec<_>>().join("; ");
    let id = 200_000_000 + shared.next_id() as i64;
    shared.accept(openid, &text, id.to_string(), body["client_msg_id"].as_str().map(str::to_string));
    answer(StatusCode::OK, json!({"errcode": 0, "errmsg": "ok", "msgid": id}))
}

async fn teams_send(State(shared): State<Arc<FakeState>>, Path(id): Path<String>, RawQuery(query): RawQuery, body: Bytes) -> Response {
    if let Some(early) = shared.interfere(|_| StatusCode::TOO_MANY_REQUESTS.into_response(), || StatusCode::BAD_GATEWAY.into_response()).await {
        return early;
    }
    if id != shared.credential.0 || form(query.unwrap_or_default().as_bytes()).get("sig") != Some(&shared.credential.1) {
        shared.refuse("teams: webhook signature".into());
        return (StatusCode::UNAUTHORIZED, "DirectApiAuthorizationRequired").into_response();
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    let card = &body["attachments"][0];
    let blocks = card["content"]["body"].as_array().cloned().unwrap_or_default();
    let texts: Vec<&str> = blocks.iter().filter(|b| b["type"] == "TextBlock").filter_map(|b| b["text"].as_str()).collect();
    if body["type"] != "message" || card["contentType"] != "application/vnd.microsoft.card.adaptive" || card["content"]["type"] != "AdaptiveCard" || texts.is_empty() {
        shared.refuse("teams: not an adaptive card message".into());
        return StatusCode::BAD_REQUEST.into_response();
    }
    shared.accept("teams", &texts.join("\n"), String::new(), None);
    StatusCode::ACCEPTED.into_response()
}

/// `GET ...?<id_param>=..&<secret_param>=..` -> a token, as WeCom and DingTalk answer it.
fn query_token(shared: &FakeState, query: Option<String>, (id_param, secret_param): (&str, &str)) -> Response {
    let query = form(query.unwrap_or_default().as_bytes());
    let (id, secret) = &shared.credential;
    if query.get(id_param) != Some(id) || query.get(secret_param) != Some(secret) {
        shared.refuse(format!("gettoken: {id_param}/{secret_param}"));
        return answer(StatusCode::OK, json!({"errcode": 40001, "errmsg": "invalid credential"}));
    }
    answer(StatusCode::OK, json!({"errcode": 0, "errmsg": "ok", "access_token": shared.issue_token(), "expires_in": 7200}))
}

async fn wecom_token(State(shared): State<Arc<FakeState>>, RawQuery(query): RawQuery) -> Response {
    query_token(&shared, query, ("corpid", "corpsecret"))
}

async fn dingtalk_token(State(shared): State<Arc<FakeState>>, RawQuery(query): RawQuery) -> Response {
    query_token(&shared, query, ("appkey", "appsecret"))
}

/// The token of a send, or the expired-token answer.
fn token_of(shared: &FakeState, query: Option<String>) -> Result<(), Response> {
    let token = form(query.unwrap_or_default().as_bytes()).get("access_token").cloned().unwrap_or_default();
    if shared.token_valid(&token) { Ok(()) } else { Err(answer(StatusCode::OK, json!({"errcode": 42001, "errmsg": "access_token expired"}))) }
}

async fn wecom_app_send(State(shared): State<Arc<FakeState>>, RawQuery(query): RawQuery, body: Bytes) -> Response {
    let busy = |_| answer(StatusCode::OK, json!({"errcode": 45009, "errmsg": "api freq out of limit"}));
    if let Some(early) = shared.interfere(busy, || answer(StatusCode::SERVICE_UNAVAILABLE, json!({"errcode": -1, "errmsg": "system busy"}))).await {
        return early;
    }
    if let Err(expired) = token_of(&shared, query) {
        return expired;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    let user = body["touser"].as_str().unwrap_or("").to_string();
    let (Some(_), Some((kind, text))) = (body["agentid"].as_i64(), robot_text(&body)) else {
        shared.refuse("wecom app: agentid or content".into());
        return answer(StatusCode::OK, json!({"errcode": 41011, "errmsg": "missing agentid"}));
    };
    if user.starts_with("gone") {
        return answer(StatusCode::OK, json!({"errcode": 0, "errmsg": "ok", "invaliduser": user, "msgid": ""}));
    }
    let id = format!("wx-msg-{}", shared.next_id());
    shared.accept(&user, &format!("{kind}: {text}"), id.clone(), None);
    answer(StatusCode::OK, json!({"errcode": 0, "errmsg": "ok", "invaliduser": "", "invalidparty": "", "invalidtag": "", "unlicenseduser": "", "msgid": id}))
}

async fn dingtalk_work_send(State(shared): State<Arc<FakeState>>, RawQuery(query): RawQuery, body: Bytes) -> Response {
    let busy = |_| answer(StatusCode::OK, json!({"errcode": 90018, "errmsg": "请求过于频繁"}));
    if let Some(early) = shared.interfere(busy, || answer(StatusCode::SERVICE_UNAVAILABLE, json!({"errcode": -1, "errmsg": "系统繁忙"}))).await {
        return early;
    }
    if let Err(expired) = token_of(&shared, query) {
        return expired;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    let user = body["userid_list"].as_str().unwrap_or("").to_string();
    let (Some(_), Some((kind, text))) = (body["agent_id"].as_i64(), robot_text(&body["msg"])) else {
        shared.refuse("dingtalk work: agent_id or msg".into());
        return answer(StatusCode::OK, json!({"errcode": 40035, "errmsg": "缺少参数"}));
    };
    if user.starts_with("gone") {
        return answer(StatusCode::OK, json!({"errcode": 60121, "errmsg": "找不到该用户"}));
    }
    let task = 256_271_667_000 + shared.next_id() as i64;
    shared.accept(&user, &format!("{kind}: {text}"), task.to_string(), None);
    answer(StatusCode::OK, json!({"errcode": 0, "task_id": task, "request_id": "fake"}))
}
