//! Appending to the inbox log.

use std::pin::Pin;
use std::sync::Arc;

use notiflow_connector::{OutRecord, Sink};
use notiflow_delivery::Receipt;

use crate::InboxOp;

pub type AppendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Where inbox ops are written; returns once they are durable.
pub trait Journal: Send + Sync {
    fn append(&self, ops: Vec<InboxOp>) -> AppendFuture<'_>;
}

/// An op as a record of the inbox log `topic`.
pub fn op_record(op: &InboxOp, topic: &Arc<str>) -> OutRecord {
    let payload = serde_json::to_vec(op).expect("inbox ops serialize");
    OutRecord { topic: topic.clone(), key: Some(op.key().into_bytes()), payload, headers: vec![] }
}

/// The inbox log on a topic of a [`Sink`] (Kafka, or the in-process log).
pub struct SinkJournal<S> {
    sink: S,
    topic: Arc<str>,
    /// Where read receipts also go (`notify.receipts`), if anywhere.
    receipts: Option<Arc<str>>,
}

impl<S: Sink> SinkJournal<S> {
    pub fn new(sink: S, topic: &str, receipts: Option<&str>) -> Self {
        SinkJournal { sink, topic: Arc::from(topic), receipts: receipts.map(Arc::from) }
    }

    fn records(&self, ops: &[InboxOp]) -> Vec<OutRecord> {
        let mut records = Vec::with_capacity(ops.len());
        for op in ops {
            records.push(op_record(op, &self.topic));
            if let (Some(receipts), InboxOp::Read { tenant, user, delivery_id, at }) = (&self.receipts, op) {
                let receipt = Receipt {
                    kind: "read".into(),
                    channel: "inbox".into(),
                    provider: "inbox".into(),
                    provider_message_id: delivery_id.clone(),
                    delivery_id: Some(delivery_id.clone()),
                    tenant: Some(tenant.clone()),
                    message_id: None,
                    url: None,
                    recipient: Some(user.clone()),
                    status: "read".into(),
                    error_code: None,
                    at: at.clone(),
                };
                let payload = serde_json::to_vec(&receipt).expect("receipts serialize");
                records.push(OutRecord { topic: receipts.clone(), key: Some(delivery_id.clone().into_bytes()), payload, headers: vec![] });
            }
        }
        records
    }
}

impl<S: Sink> Journal for SinkJournal<S> {
    fn append(&self, ops: Vec<InboxOp>) -> AppendFuture<'_> {
        let records = self.records(&ops);
        Box::pin(async move { self.sink.send_all(records).await.map(|_| ()).map_err(|e| e.to_string()) })
    }
}
