//! The inbox as a delivery channel: a delivery is accepted once its `put` is
//! durable in the inbox log.

use std::sync::Arc;

use notiflow_delivery::{Accepted, Channel, Delivery, FailureReason, SendError, SendFuture};

use crate::{InboxOp, Journal};

pub struct InboxChannel {
    journal: Arc<dyn Journal>,
}

impl InboxChannel {
    pub fn new(journal: Arc<dyn Journal>) -> Self {
        InboxChannel { journal }
    }

    /// The `put` of a delivery; the address is the inbox user id.
    pub fn put(delivery: &Delivery) -> Result<InboxOp, SendError> {
        let user = delivery.address.as_deref().map(str::trim).filter(|u| !u.is_empty());
        let user = user.ok_or_else(|| SendError::permanent(FailureReason::InvalidRecipient, "no_user", "inbox delivery without a user id"))?;
        let delivery_id = delivery.delivery_id.clone().unwrap_or_else(|| delivery.message_id.clone());
        Ok(InboxOp::Put {
            tenant: delivery.tenant.clone(),
            user: user.to_string(),
            delivery_id,
            message_id: delivery.message_id.clone(),
            request_id: delivery.request_id.clone(),
            template: delivery.template.clone(),
            category: delivery.category.clone(),
            priority: delivery.priority.clone(),
            subject: delivery.subject.clone(),
            body: delivery.body.clone(),
            html: delivery.html.clone(),
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        })
    }

    /// The `recall` op of a recall record.
    pub fn recall(recall: &Delivery) -> InboxOp {
        InboxOp::Recall {
            tenant: recall.tenant.clone(),
            request_id: recall.request_id.clone(),
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }

    async fn submit(&self, delivery: &Delivery) -> Result<Accepted, SendError> {
        let put = Self::put(delivery)?;
        let InboxOp::Put { delivery_id, .. } = &put else { unreachable!("put() builds a put") };
        let id = delivery_id.clone();
        self.journal.append(vec![put]).await.map_err(|e| SendError::retryable(FailureReason::ProviderError, "journal", e))?;
        Ok(Accepted { provider_message_id: Some(id) })
    }
}

impl Channel for InboxChannel {
    fn channel(&self) -> &str {
        "inbox"
    }

    fn provider(&self) -> &str {
        "inbox"
    }

    fn send<'a>(&'a self, delivery: &'a Delivery, _attempt: u32) -> SendFuture<'a> {
        Box::pin(self.submit(delivery))
    }
}
