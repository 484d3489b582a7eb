//! Twilio Programmable Messaging: `POST /2010-04-01/Accounts/{sid}/Messages.json`,
//! form-encoded, HTTP Basic auth with the account SID and auth token.
//! A 201 with a message `sid` is acceptance; errors carry Twilio's numeric
//! `code` (21211 invalid number, 21610 unsubscribed, 20003 auth, 20429 busy).

use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use notiflow_delivery::{Accepted, Delivery, FailureReason, Receipt, Secret, SecretRef, SendError, http};
use serde::Deserialize;

/// A Twilio account as an SMS provider.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioConfig {
    /// API base URL (a local fake in tests).
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// The account SID (`AC...`), also the Basic auth user name.
    pub account_sid: String,
    /// Where the auth token is.
    pub auth_token: SecretRef,
    /// Sender number (E.164), unless `messaging_service_sid` is set.
    #[serde(default)]
    pub from: Option<String>,
    /// A Messaging Service (`MG...`) picks the sender instead of `from`.
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
    /// Where Twilio posts delivery status (receipts).
    #[serde(default)]
    pub status_callback: Option<String>,
    /// Answer deadline per attempt, ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_endpoint() -> String {
    "https://api.twilio.com".into()
}

fn default_timeout_ms() -> u64 {
    10_000
}

pub struct TwilioChannel {
    name: String,
    config: TwilioConfig,
    token: Secret,
    client: reqwest::Client,
}

impl TwilioChannel {
    pub fn new(name: &str, config: TwilioConfig) -> Result<Self, String> {
        if config.from.is_none() == config.messaging_service_sid.is_none() {
            return Err(format!("twilio provider {name}: set exactly one of `from` and `messaging_service_sid`"));
        }
        let token = config.auth_token.resolve().map_err(|e| format!("twilio provider {name}: auth_token: {e}"))?;
        let client = http::client(Duration::from_millis(config.timeout_ms), "notiflow-sms")?;
        Ok(TwilioChannel { name: name.to_string(), config, token, client })
    }

    fn form(&self, delivery: &Delivery) -> Result<Vec<(&'static str, String)>, SendError> {
        let to = delivery.address.clone().filter(|a| a.starts_with('+')).ok_or_else(|| {
            SendError::permanent(FailureReason::InvalidRecipient, "no_e164", format!("`{}` is not an E.164 number", delivery.address.as_deref().unwrap_or("")))
        })?;
        let mut form = vec![("To", to), ("Body", delivery.body.clone().unwrap_or_default())];
        match (&self.config.from, &self.config.messaging_service_sid) {
            (Some(from), _) => form.push(("From", from.clone())),
            (None, Some(service)) => form.push(("MessagingServiceSid", service.clone())),
            (None, None) => unreachable!("checked in new()"),
        }
        if let Some(callback) = &self.config.status_callback {
            form.push(("StatusCallback", callback.clone()));
        }
        Ok(form)
    }

    async fn post(&self, delivery: &Delivery) -> Result<Accepted, SendError> {
        let form = self.form(delivery)?;
        let url = format!("{}/2010-04-01/Accounts/{}/Messages.json", self.config.endpoint.trim_end_matches('/'), self.config.account_sid);
        let response = self
            .client
            .post(url)
            .basic_auth(&self.config.account_sid, Some(self.token.expose()))
            .form(&form)
            .send()
            .await
            .map_err(|e| http::transport_error(&e))?;
        let (status, retry_after, body) = http::read(response).await;
        classify(status, retry_after, &body)
    }
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    sid: Option<String>,
    #[serde(default)]
    status: Option<serde_json::Value>,
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    message: Option<String>,
}

/// Reads the body, not just the status: a 2xx without a message sid is no acceptance.
fn classify(status: reqwest::StatusCode, retry_after: Option<Duration>, body: &str) -> Result<Accepted, SendError> {
    let Ok(answer) = serde_json::from_str::<Answer>(body) else {
        return Err(http::unreadable(status, body));
    };
    if status.is_success() {
        // A message that Twilio already marks failed is not accepted.
        let failed = answer.status.as_ref().and_then(|s| s.as_str()).is_some_and(|s| s == "failed" || s == "undelivered");
        return match answer.sid {
            Some(sid) if sid.starts_with("SM") || sid.starts_with("MM") => {
                if failed {
                    Err(SendError::permanent(FailureReason::ContentRejected, answer.code.map_or("failed".into(), |c| c.to_string()), "message failed at once"))
                } else {
                    Ok(Accepted { provider_message_id: Some(sid) })
                }
            }
            _ => Err(http::unreadable(status, body)),
        };
    }
    let code = answer.code.map_or_else(|| status.as_str().to_string(), |c| c.to_string());
    let detail = format!("HTTP {status}: {}", answer.message.unwrap_or_default());
    let reason = match (status.as_u16(), answer.code) {
        (429, _) | (_, Some(20429)) => {
            return Err(SendError::Retryable { reason: FailureReason::RateLimited, provider_code: code, detail, retry_after });
        }
        (500..=599, _) => return Err(SendError::Retryable { reason: FailureReason::ProviderError, provider_code: code, detail, retry_after }),
        (401 | 403, _) | (_, Some(20003)) => FailureReason::Auth,
        // Invalid 'To', not a mobile number, unsubscribed (STOP), unreachable.
        (_, Some(21211 | 21614 | 21610 | 21612 | 21408)) => FailureReason::InvalidRecipient,
        _ => FailureReason::ContentRejected,
    };
    Err(SendError::permanent(reason, code, detail))
}

notiflow_delivery::impl_channel!(TwilioChannel, "sms", name, post);

/// The MAC behind `X-Twilio-Signature` for a callback to `url` with form
/// `params`: HMAC-SHA1(auth token, url + every key and value, sorted by key).
fn callback_mac(auth_token: &str, url: &str, params: &[(String, String)]) -> Hmac<sha1::Sha1> {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(auth_token.as_bytes()).expect("any key length");
    mac.update(url.as_bytes());
    for (key, value) in sorted {
        mac.update(key.as_bytes());
        mac.update(value.as_bytes());
    }
    mac
}

/// `X-Twilio-Signature` (Base64 of the MAC) of a callback.
pub fn callback_signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    base64::engine::general_purpose::STANDARD.encode(callback_mac(auth_token, url, params).finalize().into_bytes())
}

impl TwilioChannel {
    /// A status callback as a receipt, if its signature verifies against our
    /// auth token and configured `status_callback` URL. Unsigned or forged: Err.
    pub fn receipt(&self, signature: Option<&str>, params: &[(String, String)]) -> Result<Receipt, String> {
        let url = self.config.status_callback.as_deref().ok_or("no status_callback configured for this provider")?;
        let presented = signature.ok_or("unsigned callback")?;
        let presented = base64::engine::general_purpose::STANDARD.decode(presented.trim()).map_err(|_| "signature is not base64")?;
        // verify_slice compares in constant time.
        callback_mac(self.token.expose(), url, params).verify_slice(&presented).map_err(|_| "signature does not match")?;
        let get = |key: &str| params.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        let sid = get("MessageSid").or_else(|| get("SmsSid")).ok_or("no MessageSid")?;
        let status = get("MessageStatus").or_else(|| get("SmsStatus")).unwrap_or_default();
        let kind = match status.as_str() {
            "delivered" => "delivered",
            "undelivered" | "failed" => "failed",
            "read" => "read",
            _ => "progress",
        };
        Ok(Receipt {
            kind: kind.into(),
            channel: "sms".into(),
            provider: self.name.clone(),
            provider_message_id: sid,
            delivery_id: None,
            tenant: None,
            message_id: None,
            url: None,
            recipient: get("To"),
            status,
            error_code: get("ErrorCode").filter(|c| !c.is_empty()),
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        })
    }
}

#[cfg(test)]
mod tests {
    use reqwest::StatusCode;

    use super::*;

    fn kind(status: u16, body: &str) -> String {
        notiflow_delivery::summary(&classify(StatusCode::from_u16(status).unwrap(), None, body))
    }

    #[test]
    fn callback_signatures_match_twilios_documented_examples() {
        let params = |caller: &str| -> Vec<(String, String)> {
            [("To", "+18005551212"), ("From", caller), ("Digits", "1234"), ("CallSid", "CA1234567890ABCDE"), ("Caller", caller)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(callback_signature("12345", url, &params("+14158675309")), "RSOYDt4T1cUTdK1PDd93/VVr8B8=");
        assert_eq!(callback_signature("12345", url, &params("+14158675310")), "GvWf1cFY/Q7PnoempGyD5oXAezc=");
    }

    #[test]
    fn answers_are_read_from_the_body() {
        assert_eq!(kind(201, r#"{"sid":"SM123","status":"queued"}"#), "accepted SM123");
        assert_eq!(kind(200, r#"{"status":"queued"}"#), "retry provider_error 200", "2xx without a sid");
        assert_eq!(kind(200, "<html>proxy</html>"), "retry provider_error 200");
        assert_eq!(kind(400, r#"{"code":21211,"message":"Invalid 'To' Phone Number"}"#), "fail invalid_recipient 21211");
        assert_eq!(kind(400, r#"{"code":21610,"message":"unsubscribed"}"#), "fail invalid_recipient 21610");
        assert_eq!(kind(401, r#"{"code":20003,"message":"Authenticate"}"#), "fail auth 20003");
        assert_eq!(kind(429, r#"{"code":20429,"message":"Too Many Requests"}"#), "retry rate_limited 20429");
        assert_eq!(kind(503, r#"{"code":20500,"message":"down"}"#), "retry provider_error 20500");
        assert_eq!(kind(400, r#"{"code":30007,"message":"filtered"}"#), "fail content_rejected 30007");
    }
}
