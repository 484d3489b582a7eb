//! `notiflow trace <id>`: one message's timeline from `notify.events`.
//!
//! The id is a message id (`m_...`), a delivery id (`d_...`: one recipient on
//! one channel) or `tenant/request_id` as the producer knows it. Events are
//! keyed by message id, so one message's events sit in one partition in the
//! order the pipeline wrote them: that order is the timeline.

use serde_json::Value;

/// What the operator asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceId {
    Message(String),
    Delivery(String),
}

impl TraceId {
    pub fn parse(id: &str) -> anyhow::Result<Self> {
        let id = id.trim();
        if id.starts_with("d_") {
            return Ok(TraceId::Delivery(id.to_string()));
        }
        if id.starts_with("m_") {
            return Ok(TraceId::Message(id.to_string()));
        }
        match id.split_once('/') {
            Some((tenant, request_id)) if !tenant.is_empty() && !request_id.is_empty() => {
                Ok(TraceId::Message(crate::contract::message_id(tenant, request_id)))
            }
            _ => anyhow::bail!("`{id}` is not a message id (m_...), a delivery id (d_...) or tenant/request_id"),
        }
    }
}

fn text<'a>(event: &'a Value, field: &str) -> Option<&'a str> {
    event.get(field).and_then(Value::as_str)
}

/// The events of the id, in the order they were written. A delivery's
/// timeline also has its message's request-level events (accepted, ...).
pub fn timeline(events: impl IntoIterator<Item = Value>, id: &TraceId) -> Vec<Value> {
    let events: Vec<Value> = events.into_iter().collect();
    match id {
        TraceId::Message(m) => events.into_iter().filter(|e| text(e, "message_id") == Some(m)).collect(),
        TraceId::Delivery(d) => {
            let Some(message) = events.iter().find(|e| text(e, "delivery_id") == Some(d)).and_then(|e| text(e, "message_id")) else {
                return Vec::new();
            };
            let message = message.to_string();
            // Its own events, and the request-level ones (no delivery, no recipient).
            let mine = |e: &Value| match text(e, "delivery_id") {
                Some(x) => x == d,
                None => text(e, "recipient").is_none(),
            };
            events.into_iter().filter(|e| text(e, "message_id") == Some(&message) && mine(e)).collect()
        }
    }
}

/// One line per event: when, what, where, why.
pub fn render(events: &[Value]) -> String {
    let mut out = String::new();
    if let Some(first) = events.first() {
        out.push_str(&format!(
            "message {}  tenant {}  request {}\n",
            text(first, "message_id").unwrap_or("?"),
            text(first, "tenant").unwrap_or("?"),
            text(first, "request_id").unwrap_or("?")
        ));
    }
    for e in events {
        let mut line = format!("{:<24}  {:<18}  ", text(e, "at").unwrap_or(""), text(e, "event").unwrap_or("?"));
        let parts = [
            text(e, "channel").map(|c| format!("{c} ")),
            text(e, "recipient").map(|r| format!("{r} ")),
            text(e, "delivery_id").map(|d| format!("[{d}] ")),
            text(e, "release_at").map(|t| format!("until {t} ")),
            text(e, "topic").map(|t| format!("-> {t} ")),
            text(e, "reason").map(|r| format!("({r}) ")),
            text(e, "source").map(|s| format!("from {s}")),
        ];
        for part in parts.into_iter().flatten() {
            line.push_str(&part);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn events() -> Vec<Value> {
        vec![
            json!({"event": "accepted", "message_id": "m_1", "tenant": "acme", "request_id": "r-1", "source": "notify.requests/0/4", "at": "t1"}),
            json!({"event": "accepted", "message_id": "m_2", "tenant": "acme", "request_id": "r-2", "source": "notify.requests/0/5", "at": "t1"}),
            json!({"event": "no_channel", "message_id": "m_1", "recipient": "user:x", "source": "s", "at": "t2"}),
            json!({"event": "deferred", "message_id": "m_1", "delivery_id": "d_a", "recipient": "user:u", "channel": "sms",
                   "release_at": "2026-11-21T07:00:00.000Z", "reason": "quiet hours", "source": "s", "at": "t2"}),
            json!({"event": "dispatched", "message_id": "m_1", "delivery_id": "d_b", "channel": "email", "source": "s", "at": "t3"}),
            json!({"event": "dispatched", "message_id": "m_1", "delivery_id": "d_a", "channel": "sms", "topic": "notify.dispatch.normal", "source": "s", "at": "t4"}),
        ]
    }

    #[test]
    fn ids_of_every_kind() {
        assert_eq!(TraceId::parse("m_1").unwrap(), TraceId::Message("m_1".into()));
        assert_eq!(TraceId::parse("d_9").unwrap(), TraceId::Delivery("d_9".into()));
        assert_eq!(TraceId::parse("acme/r-1").unwrap(), TraceId::Message(crate::contract::message_id("acme", "r-1")));
        assert!(TraceId::parse("r-1").unwrap_err().to_string().contains("tenant/request_id"));
    }

    #[test]
    fn a_message_has_all_its_events_a_delivery_only_its_own_and_the_request_level_ones() {
        let kinds = |events: Vec<Value>| events.iter().map(|e| text(e, "event").unwrap().to_string()).collect::<Vec<_>>();
        assert_eq!(kinds(timeline(events(), &TraceId::Message("m_1".into()))), ["accepted", "no_channel", "deferred", "dispatched", "dispatched"]);
        let delivery = timeline(events(), &TraceId::Delivery("d_a".into()));
        assert_eq!(kinds(delivery.clone()), ["accepted", "deferred", "dispatched"]);
        assert!(timeline(events(), &TraceId::Delivery("d_zzz".into())).is_empty());
        let text = render(&delivery);
        assert!(text.starts_with("message m_1  tenant acme  request r-1\n"), "{text}");
        assert!(text.contains("deferred            sms user:u [d_a] until 2026-11-21T07:00:00.000Z (quiet hours) from s"), "{text}");
        assert!(text.contains("-> notify.dispatch.normal"), "{text}");
    }
}
