//! What HTTP-based providers share: the client and how transport failures
//! and Retry-After read.

use std::sync::RwLock;
use std::time::Duration;

use crate::{FailureReason, SendError};

/// How provider clients reach the internet (`[delivery] proxy`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Proxy {
    /// Straight out; HTTPS_PROXY and friends in the environment are ignored, so
    /// credentials never detour through a proxy nobody chose.
    #[default]
    Direct,
    /// HTTPS_PROXY / HTTP_PROXY / ALL_PROXY and NO_PROXY from the environment.
    FromEnv,
    /// Through this proxy URL, except for hosts in NO_PROXY.
    Url(String),
}

impl Proxy {
    /// `"env"` or a proxy URL.
    pub fn parse(setting: &str) -> Result<Proxy, String> {
        if setting == "env" {
            return Ok(Proxy::FromEnv);
        }
        reqwest::Proxy::all(setting).map_err(|e| format!("proxy {setting:?}: {e} (give \"env\" or a URL)"))?;
        Ok(Proxy::Url(setting.to_string()))
    }
}

static PROXY: RwLock<Proxy> = RwLock::new(Proxy::Direct);

/// Sets how provider clients built from now on reach their APIs (`notiflow deliver` at start).
pub fn use_proxy(proxy: Proxy) {
    *PROXY.write().unwrap() = proxy;
}

/// A client builder for one provider: its timeout and user agent, the proxy setting.
pub fn builder(timeout: Duration, user_agent: &str) -> Result<reqwest::ClientBuilder, String> {
    builder_with(timeout, user_agent, &PROXY.read().unwrap())
}

fn builder_with(timeout: Duration, user_agent: &str, proxy: &Proxy) -> Result<reqwest::ClientBuilder, String> {
    let builder = reqwest::Client::builder().timeout(timeout).user_agent(user_agent);
    Ok(match proxy {
        Proxy::Direct => builder.no_proxy(),
        // reqwest reads the environment's proxies unless told otherwise.
        Proxy::FromEnv => builder,
        Proxy::Url(url) => {
            let proxy = reqwest::Proxy::all(url).map_err(|e| format!("proxy {url}: {e}"))?.no_proxy(reqwest::NoProxy::from_env());
            builder.proxy(proxy)
        }
    })
}

/// A client for one provider (HTTP/2 when offered).
pub fn client(timeout: Duration, user_agent: &str) -> Result<reqwest::Client, String> {
    builder(timeout, user_agent)?.build().map_err(|e| format!("http client: {e}"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A "proxy" that answers 200 and hands back the request line it got.
    async fn recording_proxy() -> (String, tokio::sync::oneshot::Receiver<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = stream.read(&mut buf).await.unwrap();
            let request = String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or_default().to_string();
            stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
            let _ = tx.send(request);
        });
        (url, rx)
    }

    #[tokio::test]
    async fn a_configured_proxy_carries_provider_requests() {
        let (proxy, seen) = recording_proxy().await;
        let client = builder_with(Duration::from_secs(5), "t", &Proxy::Url(proxy)).unwrap().build().unwrap();
        let answer = client.get("http://provider.example/v1/send").send().await.unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(seen.await.unwrap(), "GET http://provider.example/v1/send HTTP/1.1");
    }

    #[test]
    fn proxy_settings_are_env_or_a_url() {
        assert_eq!(Proxy::parse("env").unwrap(), Proxy::FromEnv);
        assert_eq!(Proxy::parse("http://proxy.internal:3128").unwrap(), Proxy::Url("http://proxy.internal:3128".into()));
        assert!(Proxy::parse("not a url").is_err());
    }
}
