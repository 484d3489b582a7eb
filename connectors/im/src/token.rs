//! Access-token APIs (WeChat, WeCom apps, DingTalk apps): fetch a token,
//! send with it, and when the answer says the token is stale, fetch a new
//! one and send once more.

use std::time::Duration;

use notiflow_delivery::{Accepted, FailureReason, Secret, SendError, TokenCache, http};

/// Codes these APIs use for an invalid or expired access token.
const STALE_TOKEN: [i64; 3] = [40001, 40014, 42001];

/// Reads `{"access_token": ..., "expires_in": s}`, or classifies the error answer.
pub async fn fetch(request: reqwest::RequestBuilder) -> Result<(Secret, Duration), SendError> {
    let response = request.send().await.map_err(|e| http::transport_error(&e))?;
    let (status, _, text) = http::read(response).await;
    let answer: serde_json::Value = serde_json::from_str(&text).map_err(|_| http::unreadable(status, &text))?;
    if let (Some(token), Some(seconds)) = (answer["access_token"].as_str(), answer["expires_in"].as_u64()) {
        return Ok((Secret::new(token), Duration::from_secs(seconds)));
    }
    let code = answer["errcode"].as_i64().unwrap_or(-1);
    let detail = format!("access token: {}", answer["errmsg"].as_str().unwrap_or(""));
    // -1: system busy; anything else (bad app id or secret, IP not allowed) is our configuration.
    Err(if code == -1 || status.is_server_error() {
        SendError::retryable(FailureReason::ProviderError, code.to_string(), detail)
    } else {
        SendError::permanent(FailureReason::Auth, code.to_string(), detail)
    })
}

/// Sends with the cached token; on a stale-token answer, once more with a fresh one.
pub async fn send_with<Fetch, FetchFut, Send, SendFut>(tokens: &TokenCache, fetch: Fetch, send: Send) -> Result<Accepted, SendError>
where
    Fetch: Fn() -> FetchFut,
    FetchFut: Future<Output = Result<(Secret, Duration), SendError>>,
    Send: Fn(Secret) -> SendFut,
    SendFut: Future<Output = Result<Accepted, SendError>>,
{
    let token = tokens.get(&fetch).await?;
    match send(token.clone()).await {
        Err(e) if e.provider_code().parse().is_ok_and(is_stale) => {
            tokens.invalidate(&token).await;
            send(tokens.get(&fetch).await?).await
        }
        outcome => outcome,
    }
}

/// Whether a code means the token is stale (for classification: retry, not fail).
pub fn is_stale(code: i64) -> bool {
    STALE_TOKEN.contains(&code)
}
