//! What HTTP-based providers share: the client and how transport failures
//! and Retry-After read.

use std::time::Duration;

use crate::{FailureReason, SendError};

/// A client for one provider: its timeout, no proxy from the environment
/// (credentials must not detour), HTTP/2 when offered.
pub fn client(timeout: Duration, user_agent: &str) -> Result<reqwest::Client, String> {
    reqwest::Client::builder().timeout(timeout).no_proxy().user_agent(user_agent).build().map_err(|e| format!("http client: {e}"))
}

/// No answer is never a delivery: timeouts and refused connections are
/// retryable (and count against the provider's circuit).
pub fn transport_error(error: &reqwest::Error) -> SendError {
    if error.is_timeout() {
        SendError::retryable(FailureReason::Timeout, "timeout", error.to_string())
    } else if error.is_connect() {
        SendError::retryable(FailureReason::Timeout, "connect", error.to_string())
    } else {
        SendError::retryable(FailureReason::ProviderError, "transport", error.to_string())
    }
}

/// `Retry-After: <seconds>` (the HTTP-date form is rare from APIs and ignored).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Status, headers and body text of an answer (a body that cannot be read is empty).
pub async fn read(response: reqwest::Response) -> (reqwest::StatusCode, Option<Duration>, String) {
    let status = response.status();
    let retry_after = retry_after(response.headers());
    (status, retry_after, response.text().await.unwrap_or_default())
}

/// A provider that answered with something we cannot read: its fault, retry.
pub fn unreadable(status: reqwest::StatusCode, body: &str) -> SendError {
    SendError::retryable(FailureReason::ProviderError, status.as_str(), format!("unreadable answer: {}", body.chars().take(200).collect::<String>()))
}
