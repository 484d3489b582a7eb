//! Dead letters: the original record, byte for byte, with the reason and its
//! origin in headers (as Kafka Connect keeps error context in headers), plus
//! the `rejected` lifecycle event that goes with each one.

use std::sync::Arc;

use notiflow_connector::{Header, OutRecord, Record};

use crate::events::{LifecycleEvent, now_rfc3339};

pub mod headers {
    pub const REASON: &str = "notiflow.reason";
    pub const ERROR: &str = "notiflow.error";
    pub const TOPIC: &str = "notiflow.source.topic";
    pub const PARTITION: &str = "notiflow.source.partition";
    pub const OFFSET: &str = "notiflow.source.offset";
    pub const TIMESTAMP: &str = "notiflow.source.timestamp";
    /// The UDF that failed on the record (reason `udf_error`).
    pub const UDF: &str = "notiflow.udf";
}

/// Why, and what we know of the record's identity.
pub struct Rejected<'a> {
    pub reason: &'a str,
    pub error: &'a str,
    pub tenant: Option<&'a str>,
    pub request_id: Option<&'a str>,
    /// The UDF that failed, for reason `udf_error`.
    pub udf: Option<&'a str>,
}

/// `topic/partition/offset` of a record.
pub fn source_of(record: &Record) -> String {
    format!("{}/{}/{}", record.topic, record.partition, record.offset)
}

pub fn dead_letter(record: &Record, rejected: &Rejected<'_>, dlq_topic: &Arc<str>) -> OutRecord {
    use headers::*;
    let mut hs = vec![
        Header::new(REASON, rejected.reason),
        Header::new(ERROR, rejected.error),
        Header::new(TOPIC, record.topic.as_ref()),
        Header::new(PARTITION, record.partition.to_string()),
        Header::new(OFFSET, record.offset.to_string()),
    ];
    if let Some(ts) = record.timestamp_ms {
        hs.push(Header::new(TIMESTAMP, ts.to_string()));
    }
    if let Some(udf) = rejected.udf {
        hs.push(Header::new(UDF, udf));
    }
    // The producer's own headers follow ours, unchanged.
    hs.extend(record.headers.iter().cloned());
    OutRecord { topic: dlq_topic.clone(), key: record.key.clone(), payload: record.payload.clone().unwrap_or_default(), headers: hs }
}

pub fn rejected_event(record: &Record, rejected: &Rejected<'_>, dlq_topic: &str) -> LifecycleEvent {
    LifecycleEvent {
        event: "rejected".into(),
        message_id: match (rejected.tenant, rejected.request_id) {
            (Some(t), Some(r)) => Some(crate::contract::message_id(t, r)),
            _ => None,
        },
        tenant: rejected.tenant.map(str::to_string),
        request_id: rejected.request_id.map(str::to_string),
        kind: None,
        priority: None,
        category: None,
        reason: Some(rejected.reason.to_string()),
        topic: Some(dlq_topic.to_string()),
        source: source_of(record),
        at: now_rfc3339(),
    }
}

pub fn event_record(event: &LifecycleEvent, events_topic: &Arc<str>) -> OutRecord {
    OutRecord {
        topic: events_topic.clone(),
        key: Some(event.key().into_bytes()),
        payload: serde_json::to_vec(event).expect("events serialize"),
        headers: vec![],
    }
}
