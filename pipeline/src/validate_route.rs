//! The first stage: validate each request against the contract and route it
//! to the dispatch topic of its priority, or dead-letter it with a reason.
//! Every record yields exactly one routed record and one lifecycle event.

use std::sync::Arc;

use notiflow_connector::{OutRecord, Record};

use crate::dlq::{self, Rejected};

use crate::config::TopicsConfig;
use crate::contract::{Contract, Kind};
use crate::events::{LifecycleEvent, now_rfc3339};

pub use crate::dlq::headers as dlq_headers;

pub struct ValidateRoute {
    contract: Contract,
    dlq: Arc<str>,
    events: Arc<str>,
    dispatch_high: Arc<str>,
    dispatch_normal: Arc<str>,
    dispatch_low: Arc<str>,
}

/// What one record became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Dispatched { topic: Arc<str> },
    DeadLettered { reason: &'static str },
}

impl ValidateRoute {
    pub fn new(contract: Contract, topics: &TopicsConfig) -> Self {
        ValidateRoute {
            contract,
            dlq: Arc::from(topics.dlq.as_str()),
            events: Arc::from(topics.events.as_str()),
            dispatch_high: Arc::from(topics.dispatch("high")),
            dispatch_normal: Arc::from(topics.dispatch("normal")),
            dispatch_low: Arc::from(topics.dispatch("low")),
        }
    }

    /// Appends the routed record and its event to `out`.
    pub fn process(&self, record: &Record, out: &mut Vec<OutRecord>) -> Outcome {
        let source = dlq::source_of(record);
        match self.contract.check(record.key.as_deref(), record.payload.as_deref()) {
            Ok(request) => {
                let topic = match request.priority {
                    "high" => self.dispatch_high.clone(),
                    "low" => self.dispatch_low.clone(),
                    _ => self.dispatch_normal.clone(),
                };
                let mut body = request.body;
                if let Some(map) = body.as_object_mut() {
                    map.insert("message_id".into(), request.message_id.clone().into());
                }
                out.push(OutRecord {
                    topic: topic.clone(),
                    key: record.key.clone(),
                    payload: serde_json::to_vec(&body).expect("a JSON value serializes"),
                    headers: vec![],
                });
                let event = LifecycleEvent {
                    event: "dispatched".into(),
                    message_id: Some(request.message_id),
                    tenant: Some(request.tenant),
                    request_id: Some(request.request_id),
                    kind: Some(match request.kind { Kind::Send => "send", Kind::Recall => "recall" }.into()),
                    priority: Some(request.priority.into()),
                    category: (request.kind == Kind::Send).then(|| request.category.into()),
                    reason: None,
                    topic: Some(topic.to_string()),
                    source,
                    at: now_rfc3339(),
                };
                out.push(dlq::event_record(&event, &self.events));
                Outcome::Dispatched { topic }
            }
            Err(rejection) => {
                let reason = rejection.reason.as_str();
                let rejected = Rejected {
                    reason,
                    error: &rejection.error,
                    tenant: rejection.tenant.as_deref(),
                    request_id: rejection.request_id.as_deref(),
                };
                out.push(dlq::dead_letter(record, &rejected, &self.dlq));
                out.push(dlq::event_record(&dlq::rejected_event(record, &rejected, &self.dlq), &self.events));
                Outcome::DeadLettered { reason }
            }
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use notiflow_connector::Header;

    fn stage() -> ValidateRoute {
        ValidateRoute::new(Contract::new(["acme".to_string()], 512), &TopicsConfig::default())
    }

    fn record(key: &str, payload: &[u8]) -> Record {
        Record {
            topic: Arc::from("notify.requests"),
            partition: 2,
            offset: 41,
            key: Some(key.as_bytes().to_vec()),
            payload: Some(payload.to_vec()),
            timestamp_ms: Some(1_700_000_000_000),
            headers: vec![Header::new("trace", "abc")],
        }
    }

    #[test]
    fn valid_request_goes_to_its_priority_topic_with_an_event() {
        let body = br#"{"request_id":"r1","tenant":"acme","template":"t","recipients":[{"user_id":"u"}],"priority":"low"}"#;
        let mut out = Vec::new();
        let outcome = stage().process(&record("acme/r1", body), &mut out);
        assert_eq!(outcome, Outcome::Dispatched { topic: Arc::from("notify.dispatch.low") });
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].topic.as_ref(), "notify.dispatch.low");
        assert_eq!(out[0].key.as_deref(), Some(&b"acme/r1"[..]));
        let routed: serde_json::Value = serde_json::from_slice(&out[0].payload).unwrap();
        assert_eq!(routed["message_id"], crate::contract::message_id("acme", "r1"));
        assert_eq!(routed["category"], "transactional");
        let event: LifecycleEvent = serde_json::from_slice(&out[1].payload).unwrap();
        assert_eq!(out[1].topic.as_ref(), "notify.events");
        assert_eq!((event.event.as_str(), event.source.as_str()), ("dispatched", "notify.requests/2/41"));
        assert_eq!(out[1].key.as_deref(), Some(event.message_id.unwrap().as_bytes()));
    }

    #[test]
    fn bad_request_is_dead_lettered_with_original_bytes_and_context() {
        let original = b"{\"tenant\": \"acme\", oops";
        let mut out = Vec::new();
        let outcome = stage().process(&record("acme/x", original), &mut out);
        assert_eq!(outcome, Outcome::DeadLettered { reason: "not_json" });
        let dead = &out[0];
        assert_eq!(dead.topic.as_ref(), "notify.dlq");
        assert_eq!(dead.payload, original);
        let header = |name: &str| {
            dead.headers.iter().find(|h| h.name == name).map(|h| String::from_utf8(h.value.clone()).unwrap())
        };
        assert_eq!(header(dlq_headers::REASON).as_deref(), Some("not_json"));
        assert_eq!(header(dlq_headers::PARTITION).as_deref(), Some("2"));
        assert_eq!(header(dlq_headers::OFFSET).as_deref(), Some("41"));
        assert_eq!(header(dlq_headers::TIMESTAMP).as_deref(), Some("1700000000000"));
        assert_eq!(header("trace").as_deref(), Some("abc"));
        assert!(header(dlq_headers::ERROR).unwrap().contains("not JSON"));
        let event: LifecycleEvent = serde_json::from_slice(&out[1].payload).unwrap();
        assert_eq!((event.event.as_str(), event.reason.as_deref()), ("rejected", Some("not_json")));
        assert_eq!(out[1].key.as_deref(), Some(&b"source:notify.requests/2/41"[..]));
    }
}
