//! Sending over the relay and reading its reply.

use std::net::IpAddr;
use std::time::Duration;

use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::TlsParameters;
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::Error as SmtpError;
use notiflow_delivery::{Accepted, Delivery, FailureReason, SendError};

use crate::pool::{Failure, Pool, Relay};
use crate::{MessageBuilder, Security, SmtpConfig};

/// One SMTP relay account.
pub struct SmtpChannel {
    name: String,
    pool: Pool,
    messages: MessageBuilder,
}

impl SmtpChannel {
    pub fn new(name: &str, config: &SmtpConfig) -> Result<Self, String> {
        let fail = |what: String| format!("smtp provider {name}: {what}");
        let messages = MessageBuilder::new(config).map_err(fail)?;
        let tls = match config.security {
            Security::None => None,
            _ => Some(TlsParameters::new(config.host.clone()).map_err(|e| fail(format!("tls: {e}")))?),
        };
        let credentials = match (&config.username, &config.password) {
            (Some(user), Some(password)) => {
                if config.security == Security::None && !is_loopback(&config.host) {
                    return Err(fail(format!("refusing to send credentials in clear text to {}: use security = \"starttls\" or \"tls\"", config.host)));
                }
                let password = password.resolve().map_err(|e| fail(format!("password: {e}")))?;
                Some(Credentials::new(user.clone(), password.expose().to_string()))
            }
            (None, None) => None,
            _ => return Err(fail("give both `username` and `password`, or neither".into())),
        };
        let relay = Relay {
            host: config.host.clone(),
            port: config.port(),
            security: config.security,
            tls,
            hello: ClientId::Domain(messages.domain().to_string()),
            credentials,
            timeout: Duration::from_millis(config.timeout_ms),
        };
        Ok(SmtpChannel { name: name.to_string(), pool: Pool::new(relay, config.pool_size), messages })
    }

    async fn submit(&self, delivery: &Delivery) -> Result<Accepted, SendError> {
        let message = self.messages.build(delivery)?;
        match self.pool.send(message.envelope(), &message.formatted()).await {
            // lettre returns Ok only for a positive reply to the end of DATA.
            Ok(_reply) => Ok(Accepted { provider_message_id: Some(self.messages.message_id(delivery)) }),
            Err(Failure::Smtp(error)) => Err(classify(&error)),
            Err(Failure::Deadline) => Err(SendError::retryable(FailureReason::Timeout, "timeout", "no reply from the relay in time")),
            Err(Failure::NoStarttls) => Err(SendError::retryable(FailureReason::ProviderError, "no_starttls", "the relay does not offer STARTTLS")),
        }
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A failed SMTP exchange, by reply code and, where the relay gives one, the
/// enhanced status code (RFC 3463) in the reply text.
fn classify(error: &SmtpError) -> SendError {
    let text = error.to_string();
    let Some(code) = error.status().map(u16::from) else {
        let reason = if error.is_timeout() { FailureReason::Timeout } else { FailureReason::ProviderError };
        let kind = if error.is_timeout() { "timeout" } else { "connection" };
        return SendError::retryable(reason, kind, text);
    };
    let enhanced = enhanced_status(&text);
    let provider_code = match &enhanced {
        Some(enhanced) => format!("{code} {enhanced}"),
        None => code.to_string(),
    };
    let class = enhanced.as_deref().and_then(|e| e.split('.').nth(1)).unwrap_or("");
    if error.is_transient() {
        // 454 is the "throttled" reply of large relays (SES); x.7.x transient replies are policy limits.
        let reason = if code == 454 || class == "7" { FailureReason::RateLimited } else { FailureReason::ProviderError };
        return SendError::retryable(reason, provider_code, text);
    }
    let reason = match (code, class) {
        (530 | 534 | 535 | 538, _) => FailureReason::Auth,
        (_, "1") => FailureReason::InvalidRecipient,
        // 5.2.1 disabled mailbox; 5.2.2 full mailbox is permanent for this message too.
        (_, "2") => FailureReason::InvalidRecipient,
        (_, "7") => FailureReason::ContentRejected,
        (550 | 551 | 553, _) => FailureReason::InvalidRecipient,
        _ => FailureReason::ContentRejected,
    };
    SendError::permanent(reason, provider_code, text)
}

/// The first `d.d{1,3}.d{1,3}` word of a reply (`5.1.1`), if any.
fn enhanced_status(text: &str) -> Option<String> {
    text.split(|c: char| c.is_whitespace() || c == ':' || c == ',').find_map(|word| {
        let parts: Vec<&str> = word.split('.').collect();
        let digits = |s: &str, max: usize| !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit());
        let ok = parts.len() == 3 && matches!(parts[0], "2" | "4" | "5") && digits(parts[1], 3) && digits(parts[2], 3);
        ok.then(|| word.to_string())
    })
}

notiflow_delivery::impl_channel!(SmtpChannel, "email", name, submit);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enhanced_status_codes_are_found_in_reply_text() {
        assert_eq!(enhanced_status("permanent error (550): 5.1.1 <x@y>: Recipient address rejected").as_deref(), Some("5.1.1"));
        assert_eq!(enhanced_status("transient error (451): 4.7.1 Try again later").as_deref(), Some("4.7.1"));
        assert_eq!(enhanced_status("permanent error (554): Transaction failed version 1.2.3"), None, "1.x.x is not a status class");
        assert_eq!(enhanced_status("permanent error (550): mailbox unavailable"), None);
    }

    #[test]
    fn loopback_hosts_only_may_take_clear_text_credentials() {
        assert!(is_loopback("127.0.0.1") && is_loopback("::1") && is_loopback("localhost"));
        assert!(!is_loopback("smtp.example.com") && !is_loopback("10.0.0.1"));
    }
}
