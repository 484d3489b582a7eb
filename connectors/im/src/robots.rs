//! What the robot channels share: robots by name, message text, posting JSON
//! and reading coded answers.

use std::collections::BTreeMap;
use std::time::Duration;

use notiflow_delivery::{Accepted, Delivery, FailureReason, Secret, SecretRef, SendError, http};
use serde::Deserialize;

/// One robot's credentials: its webhook token (DingTalk `access_token`,
/// Feishu hook id, WeCom `key`, Slack `T.../B.../...` path) and, where the
/// API signs requests, the signing secret.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RobotSecrets {
    pub token: SecretRef,
    #[serde(default)]
    pub secret: Option<SecretRef>,
}

/// A robot with its secrets read.
pub struct Robot {
    pub token: Secret,
    pub secret: Option<Secret>,
}

/// The robots of one provider entry; the delivery's address picks one.
pub struct Robots(BTreeMap<String, Robot>);

impl Robots {
    /// Reads every secret now, so a missing one fails at start-up.
    pub fn resolve(provider: &str, robots: &BTreeMap<String, RobotSecrets>, signed: bool) -> Result<Self, String> {
        if robots.is_empty() {
            return Err(format!("{provider}: no robots configured"));
        }
        let mut resolved = BTreeMap::new();
        for (name, secrets) in robots {
            let read = |s: &SecretRef, what: &str| s.resolve().map_err(|e| format!("{provider}: robot {name}: {what}: {e}"));
            let secret = match &secrets.secret {
                Some(s) => Some(read(s, "secret")?),
                None if signed => return Err(format!("{provider}: robot {name}: give its signing `secret` (unsigned robots can be spoofed)")),
                None => None,
            };
            resolved.insert(name.clone(), Robot { token: read(&secrets.token, "token")?, secret });
        }
        Ok(Robots(resolved))
    }

    pub fn pick(&self, delivery: &Delivery) -> Result<&Robot, SendError> {
        let name = delivery.address.as_deref().unwrap_or("").trim();
        self.0.get(name).ok_or_else(|| SendError::permanent(FailureReason::InvalidRecipient, "unknown_robot", format!("no robot named `{name}`")))
    }
}

/// A robot provider entry: its name, API base URL, robots and HTTP client.
pub struct RobotAccount {
    pub name: String,
    pub endpoint: String,
    pub robots: Robots,
    pub client: reqwest::Client,
}

impl RobotAccount {
    /// `signed`: every robot must have its signing secret (APIs that verify signatures).
    pub fn new(kind: &str, name: &str, endpoint: &str, robots: &BTreeMap<String, RobotSecrets>, signed: bool, timeout_ms: u64) -> Result<Self, String> {
        let robots = Robots::resolve(&format!("{kind} provider {name}"), robots, signed)?;
        Ok(RobotAccount { name: name.into(), endpoint: endpoint.trim_end_matches('/').into(), robots, client: client(timeout_ms)? })
    }
}

/// The message's title (the rendered subject, if any) and text.
pub fn title_and_text(delivery: &Delivery) -> (Option<&str>, &str) {
    (delivery.subject.as_deref().filter(|s| !s.is_empty()), delivery.body.as_deref().unwrap_or(""))
}

/// Posts JSON and reads the answer; no answer is a retryable failure.
pub async fn post_json(request: reqwest::RequestBuilder, body: &serde_json::Value) -> Result<(reqwest::StatusCode, Option<Duration>, String), SendError> {
    let response = request.json(body).send().await.map_err(|e| http::transport_error(&e))?;
    Ok(http::read(response).await)
}

/// What an API error code means for us.
pub enum Verdict {
    Retry(FailureReason),
    Fail(FailureReason),
}

/// An answer of the `{"<code field>": 0, "<message field>": "ok"}` family
/// (DingTalk, WeCom, Feishu): 0 is acceptance, other codes go through `verdict`.
pub fn coded_answer(
    status: reqwest::StatusCode,
    retry_after: Option<Duration>,
    body: &str,
    fields: (&str, &str),
    verdict: impl Fn(i64, &str) -> Verdict,
) -> Result<Accepted, SendError> {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let code = parsed.as_ref().and_then(|v| v.get(fields.0)).and_then(|c| c.as_i64());
    let message = parsed.as_ref().and_then(|v| v.get(fields.1)).and_then(|m| m.as_str()).unwrap_or("").to_string();
    match (status.as_u16(), code) {
        (429, _) => Err(SendError::Retryable { reason: FailureReason::RateLimited, provider_code: status.as_str().into(), detail: message, retry_after }),
        (500..=599, _) => Err(SendError::Retryable { reason: FailureReason::ProviderError, provider_code: status.as_str().into(), detail: message, retry_after }),
        (_, None) => Err(http::unreadable(status, body)),
        (200..=299, Some(0)) => Ok(Accepted::default()),
        (_, Some(code)) => Err(match verdict(code, &message) {
            Verdict::Retry(reason) => SendError::Retryable { reason, provider_code: code.to_string(), detail: message, retry_after },
            Verdict::Fail(reason) => SendError::permanent(reason, code.to_string(), message),
        }),
    }
}

/// Base64 HMAC-SHA256 (the signature both DingTalk and Feishu use, keyed differently).
pub fn hmac_sha256_base64(key: &[u8], data: &[u8]) -> String {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The HTTP client of a robot provider.
pub fn client(timeout_ms: u64) -> Result<reqwest::Client, String> {
    http::client(Duration::from_millis(timeout_ms), "notiflow-im")
}

pub fn default_timeout_ms() -> u64 {
    10_000
}
