//! A delivery as a MIME message.

use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::{Address, Message};
use notiflow_delivery::{Delivery, FailureReason, SendError};

use crate::SmtpConfig;

/// Builds the message of each delivery from one sender identity.
#[derive(Debug, Clone)]
pub struct MessageBuilder {
    from: Mailbox,
    reply_to: Option<Mailbox>,
    id_domain: String,
}

impl MessageBuilder {
    pub fn new(config: &SmtpConfig) -> Result<Self, String> {
        let from: Mailbox = config.from.parse().map_err(|e| format!("from `{}`: {e}", config.from))?;
        let reply_to = match &config.reply_to {
            Some(text) => Some(text.parse::<Mailbox>().map_err(|e| format!("reply_to `{text}`: {e}"))?),
            None => None,
        };
        let id_domain = config.message_id_domain.clone().unwrap_or_else(|| from.email.domain().to_string());
        Ok(MessageBuilder { from, reply_to, id_domain })
    }

    /// The domain of our Message-IDs, also our EHLO name.
    pub fn domain(&self) -> &str {
        &self.id_domain
    }

    /// The Message-ID of a delivery: derived from its id, so a retried send
    /// carries the same one (receivers and bounce reports key on it).
    pub fn message_id(&self, delivery: &Delivery) -> String {
        format!("{}@{}", delivery.delivery_id.as_deref().unwrap_or(&delivery.message_id), self.id_domain)
    }

    /// The message, or a permanent `invalid_recipient` when the address is
    /// not a mailbox.
    pub fn build(&self, delivery: &Delivery) -> Result<Message, SendError> {
        let address = delivery.address.as_deref().unwrap_or("");
        let to: Address = address.trim().parse().map_err(|e| SendError::permanent(FailureReason::InvalidRecipient, "bad_address", format!("`{address}`: {e}")))?;
        let from = match delivery.sender.as_deref() {
            // The tenant's own From (tenant registry); checked when registered, checked again here.
            Some(sender) => sender.parse::<Mailbox>().map_err(|e| SendError::permanent(FailureReason::ContentRejected, "bad_sender", format!("sender `{sender}`: {e}")))?,
            None => self.from.clone(),
        };
        let mut builder = Message::builder()
            .from(from)
            .to(Mailbox::new(None, to))
            .subject(delivery.subject.clone().unwrap_or_default())
            .message_id(Some(format!("<{}>", self.message_id(delivery))));
        if let Some(reply_to) = &self.reply_to {
            builder = builder.reply_to(reply_to.clone());
        }
        let text = delivery.body.clone().unwrap_or_default();
        let built = match delivery.html.as_deref().filter(|h| !h.is_empty()) {
            Some(html) => builder.multipart(MultiPart::alternative_plain_html(text, html.to_string())),
            None => builder.singlepart(SinglePart::plain(text)),
        };
        built.map_err(|e| SendError::permanent(FailureReason::ContentRejected, "mime", e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tenants_from_replaces_the_configured_one() {
        let config: SmtpConfig = serde_json::from_value(serde_json::json!({"host": "relay", "from": "Notiflow <no-reply@notiflow.test>"})).unwrap();
        let builder = MessageBuilder::new(&config).unwrap();
        let mut delivery: Delivery = serde_json::from_value(serde_json::json!({"type": "send", "message_id": "m_1", "request_id": "r", "tenant": "acme",
            "channel": "email", "address": "user@example.com", "subject": "Hi", "body": "hello"})).unwrap();
        let headers = |d: &Delivery| String::from_utf8(builder.build(d).unwrap().formatted()).unwrap();
        assert!(headers(&delivery).contains("From: Notiflow <no-reply@notiflow.test>"));
        delivery.sender = Some("Acme Retail <orders@acme.example>".into());
        assert!(headers(&delivery).contains("From: \"Acme Retail\" <orders@acme.example>") || headers(&delivery).contains("From: Acme Retail <orders@acme.example>"), "{}", headers(&delivery));
        delivery.sender = Some("not a mailbox".into());
        assert!(builder.build(&delivery).is_err(), "a bad sender is refused, not sent from the default");
    }
}
