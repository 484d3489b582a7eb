//! Timelines for `GET /v1/messages/{id}`: the lifecycle events of recent
//! messages (notify.events), plus a `received` entry from notify.requests so a
//! message the pipeline has not reached yet is not "not found". Events are
//! kept as their JSON text (a few hundred bytes each; a parsed value is
//! several times that) and read when a timeline is asked for.

use std::sync::Mutex;

use serde_json::{Value, json};

use super::index::SeenRequest;
use super::recent::Recent;

#[derive(Debug, Clone)]
pub struct Timeline {
    pub tenant: String,
    pub request_id: Option<String>,
    /// Each event's JSON, in the order it was written.
    pub events: Vec<Box<str>>,
    /// Which request entries (`received`, `recall_received`) are in `events`:
    /// the gateway enters its own writes at once and skips their echo from the topic.
    requests_seen: RequestsSeen,
}

#[derive(Debug, Clone, Copy, Default)]
struct RequestsSeen {
    send: bool,
    recall: bool,
}

impl RequestsSeen {
    fn flag(&mut self, recall: bool) -> &mut bool {
        if recall { &mut self.recall } else { &mut self.send }
    }
}

impl Timeline {
    /// The response body: the newest event names the status; one entry per delivery.
    pub fn to_json(&self, message_id: &str) -> Value {
        let events: Vec<Value> = self.events.iter().filter_map(|e| serde_json::from_str(e).ok()).collect();
        let text = |e: &Value, f: &str| e.get(f).and_then(Value::as_str).map(str::to_string);
        let mut deliveries: Vec<(String, Value)> = Vec::new();
        for event in &events {
            let Some(delivery) = text(event, "delivery_id") else { continue };
            let entry = json!({
                "delivery_id": delivery,
                "channel": text(event, "channel"),
                "status": text(event, "event"),
                "at": text(event, "at"),
            });
            match deliveries.iter_mut().find(|(d, _)| *d == delivery) {
                Some((_, existing)) => *existing = entry,
                None => deliveries.push((delivery, entry)),
            }
        }
        json!({
            "message_id": message_id,
            "tenant": self.tenant,
            "request_id": self.request_id,
            "status": events.last().and_then(|e| text(e, "event")).unwrap_or_else(|| "received".into()),
            "deliveries": deliveries.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
            "events": events,
        })
    }
}

pub struct Timelines {
    messages: Mutex<Recent<String, Timeline>>,
}

impl Timelines {
    pub fn new(max_messages: usize, window_ms: i64) -> Self {
        Timelines { messages: Mutex::new(Recent::new(max_messages, window_ms)) }
    }

    /// A request, either written by this gateway (entered at once, so a client
    /// reads its own write) or read from notify.requests; each is entered once.
    pub fn observe_request(&self, seen: &SeenRequest) {
        let message_id = crate::contract::message_id(&seen.tenant, &seen.request_id);
        let at = chrono::DateTime::from_timestamp_millis(seen.at_ms).unwrap_or_default();
        let event = json!({
            "event": if seen.recall { "recall_received" } else { "received" },
            "message_id": message_id,
            "tenant": seen.tenant,
            "request_id": seen.request_id,
            "at": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        });
        self.push(message_id, &seen.tenant, Some(&seen.request_id), event.to_string().into(), seen.at_ms, Some(seen.recall));
    }

    /// One notify.events record (unreadable ones and events without a message are skipped).
    pub fn observe_event(&self, payload: &[u8]) {
        #[derive(serde::Deserialize)]
        struct Names {
            message_id: Option<String>,
            tenant: Option<String>,
            request_id: Option<String>,
        }
        let Ok(text) = std::str::from_utf8(payload) else { return };
        let Ok(Names { message_id: Some(message_id), tenant: Some(tenant), request_id }) = serde_json::from_str::<Names>(text) else {
            return;
        };
        self.push(message_id, &tenant, request_id.as_deref(), text.into(), chrono::Utc::now().timestamp_millis(), None);
    }

    /// `request`: `Some(recall)` for a request entry, entered only once per kind.
    fn push(&self, message_id: String, tenant: &str, request_id: Option<&str>, event: Box<str>, at_ms: i64, request: Option<bool>) {
        let mut messages = self.messages.lock().expect("timelines lock");
        match messages.get_mut(&message_id) {
            // Events name their tenant; one naming another tenant for this id is not this message's.
            Some(timeline) if timeline.tenant != tenant => return,
            Some(timeline) => {
                if let Some(recall) = request {
                    let seen = timeline.requests_seen.flag(recall);
                    if std::mem::replace(seen, true) {
                        return;
                    }
                }
                if timeline.request_id.is_none() {
                    timeline.request_id = request_id.map(str::to_string);
                }
                timeline.events.push(event);
            }
            None => {
                let mut requests_seen = RequestsSeen::default();
                if let Some(recall) = request {
                    *requests_seen.flag(recall) = true;
                }
                let timeline =
                    Timeline { tenant: tenant.to_string(), request_id: request_id.map(str::to_string), events: vec![event], requests_seen };
                messages.insert(message_id, timeline, at_ms);
            }
        }
        messages.forget_old(chrono::Utc::now().timestamp_millis(), |_| false);
    }

    /// The message's timeline, only for its own tenant.
    pub fn get(&self, tenant: &str, message_id: &str) -> Option<Timeline> {
        let messages = self.messages.lock().expect("timelines lock");
        messages.get(message_id).filter(|t| t.tenant == tenant).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeline_is_read_only_by_its_tenant_and_names_the_latest_status() {
        let timelines = Timelines::new(10, 3_600_000);
        let now = chrono::Utc::now().timestamp_millis();
        timelines.observe_request(&SeenRequest {
            tenant: "acme".into(),
            request_id: "r-1".into(),
            recall: false,
            fingerprint: 0,
            at_ms: now,
        });
        let id = crate::contract::message_id("acme", "r-1");
        assert_eq!(timelines.get("acme", &id).unwrap().to_json(&id)["status"], "received");
        // The same request read back from the topic (after the gateway entered its own write) is not entered twice.
        timelines.observe_request(&SeenRequest {
            tenant: "acme".into(),
            request_id: "r-1".into(),
            recall: false,
            fingerprint: 0,
            at_ms: now + 5,
        });
        for (event, delivery) in [("accepted", None), ("dispatched", Some("d_1")), ("sent", Some("d_1"))] {
            let mut e = json!({"event": event, "message_id": id, "tenant": "acme", "at": "t", "source": "s"});
            if let Some(d) = delivery {
                e["delivery_id"] = json!(d);
                e["channel"] = json!("sms");
            }
            timelines.observe_event(&serde_json::to_vec(&e).unwrap());
        }
        // An event claiming the id for another tenant is ignored.
        timelines.observe_event(&serde_json::to_vec(&json!({"event": "x", "message_id": id, "tenant": "globex"})).unwrap());
        let body = timelines.get("acme", &id).unwrap().to_json(&id);
        assert_eq!(body["status"], "sent");
        assert_eq!(body["events"].as_array().unwrap().len(), 4);
        assert_eq!(body["deliveries"], json!([{"delivery_id": "d_1", "channel": "sms", "status": "sent", "at": "t"}]));
        assert!(timelines.get("globex", &id).is_none(), "another tenant cannot read it");
    }
}
