//! The producer contract of `notify.requests`: the JSON Schema in
//! `schemas/notify.requests.schema.json` is compiled into the binary and is the
//! validator, so the published contract and the checks cannot drift apart.
//! Rules a schema cannot express (record key, time order, tenant registry)
//! follow it here.

use std::collections::HashSet;
use std::fmt;

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The contract, as published to producers.
pub const REQUEST_SCHEMA: &str = include_str!("../../schemas/notify.requests.schema.json");

/// Why a record was dead-lettered. The string form is the `reason` header on
/// `notify.dlq` and the `reason` of the `rejected` event: keep them stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The record has no value (a tombstone).
    EmptyPayload,
    /// Larger than `pipeline.max_request_bytes`.
    Oversize,
    /// Not UTF-8 JSON.
    NotJson,
    /// JSON, but not what the schema allows (missing field, wrong type, ...).
    SchemaViolation,
    /// `expires_at` is not after `send_at`.
    InvalidSchedule,
    /// The tenant is not registered.
    UnknownTenant,
    /// The record key is not `<tenant>/<request_id>`.
    KeyMismatch,
}

impl Reason {
    pub const ALL: [Reason; 7] = [
        Reason::EmptyPayload,
        Reason::Oversize,
        Reason::NotJson,
        Reason::SchemaViolation,
        Reason::InvalidSchedule,
        Reason::UnknownTenant,
        Reason::KeyMismatch,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::EmptyPayload => "empty_payload",
            Reason::Oversize => "oversize",
            Reason::NotJson => "not_json",
            Reason::SchemaViolation => "schema_violation",
            Reason::InvalidSchedule => "invalid_schedule",
            Reason::UnknownTenant => "unknown_tenant",
            Reason::KeyMismatch => "key_mismatch",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected record: the reason code and a message a producer can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub error: String,
    /// Present when the record got far enough to name them.
    pub tenant: Option<String>,
    pub request_id: Option<String>,
}

impl Rejection {
    fn new(reason: Reason, error: impl Into<String>) -> Self {
        Rejection { reason, error: error.into(), tenant: None, request_id: None }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Send,
    Recall,
}

/// A request that passed every check, with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRequest {
    pub kind: Kind,
    pub tenant: String,
    pub request_id: String,
    /// Deterministic from (tenant, request_id): a replayed request gets the
    /// same id, so everything downstream can be idempotent on it.
    pub message_id: String,
    pub priority: &'static str,
    pub category: &'static str,
    /// The request as received plus `type`, `priority` and `category` defaults.
    pub body: Value,
}

/// Compiled contract plus the tenants that may send.
pub struct Contract {
    validator: jsonschema::Validator,
    /// `None`: the caller checked the tenant (the gateway, against the live registry).
    tenants: Option<HashSet<String>>,
    /// Tenants of the registry (notify.tenants), followed live: a tenant registered while the
    /// pipeline runs may send at once, without a restart.
    registry: Option<crate::tenants::Registry>,
    max_bytes: usize,
}

impl Contract {
    pub fn new(tenants: impl IntoIterator<Item = String>, max_bytes: usize) -> Self {
        let schema: Value = serde_json::from_str(REQUEST_SCHEMA).expect("the embedded schema is JSON");
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .expect("the embedded schema compiles");
        Contract { validator, tenants: Some(tenants.into_iter().collect()), registry: None, max_bytes }
    }

    /// Tenants of `registry` may send too (besides those given to `new`), as it is at each check.
    pub fn with_registry(self, registry: Option<crate::tenants::Registry>) -> Self {
        Contract { registry, ..self }
    }

    fn may_send(&self, tenant: &str) -> bool {
        match &self.tenants {
            None => true,
            Some(listed) => listed.contains(tenant) || self.registry.as_ref().is_some_and(|r| r.get(tenant).is_some()),
        }
    }

    /// The contract without the tenant rule, for a caller that authenticated the tenant itself.
    pub fn any_tenant(max_bytes: usize) -> Self {
        Contract { tenants: None, ..Self::new([], max_bytes) }
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Checks one record (key + value) against the contract.
    pub fn check(&self, key: Option<&[u8]>, payload: Option<&[u8]>) -> Result<ValidRequest, Rejection> {
        let payload = payload.ok_or_else(|| Rejection::new(Reason::EmptyPayload, "record has no value"))?;
        if payload.len() > self.max_bytes {
            return Err(Rejection::new(
                Reason::Oversize,
                format!("record value is {} bytes; the limit is {}", payload.len(), self.max_bytes),
            ));
        }
        let mut body: Value = serde_json::from_slice(payload)
            .map_err(|e| Rejection::new(Reason::NotJson, format!("not JSON: {e}")))?;
        let request = self.check_value(&mut body)?;
        let expected_key = format!("{}/{}", request.tenant, request.request_id);
        if key != Some(expected_key.as_bytes()) {
            let got = match key {
                None => "no key".to_string(),
                Some(k) => format!("key {:?}", String::from_utf8_lossy(k)),
            };
            return Err(Rejection {
                reason: Reason::KeyMismatch,
                error: format!("record has {got}; the contract requires key {expected_key:?} (tenant/request_id)"),
                tenant: Some(request.tenant),
                request_id: Some(request.request_id),
            });
        }
        Ok(request)
    }

    /// Checks a parsed request (the HTTP gateway has no record key).
    pub fn check_value(&self, body: &mut Value) -> Result<ValidRequest, Rejection> {
        // Most requests are valid: the yes/no check is much cheaper than collecting errors.
        if !self.validator.is_valid(body) {
            return Err(Rejection {
                reason: Reason::SchemaViolation,
                error: self.schema_errors(body).join("; "),
                tenant: text_field(body, "tenant"),
                request_id: text_field(body, "request_id"),
            });
        }
        self.accept(body)
    }

    /// Up to five schema violations, each with where it is.
    fn schema_errors(&self, body: &Value) -> Vec<String> {
        self.validator
            .iter_errors(body)
            .take(5)
            .map(|e| {
                let path = e.instance_path().to_string();
                format!("{}: {e}", if path.is_empty() { "/" } else { path.as_str() })
            })
            .collect()
    }

    /// The checks after the schema's, on a schema-valid request.
    fn accept(&self, body: &mut Value) -> Result<ValidRequest, Rejection> {
        let named = |field: &str| text_field(body, field);
        let (tenant, request_id) = (named("tenant"), named("request_id"));
        let reject = |reason, error: String| Rejection {
            reason,
            error,
            tenant: tenant.clone(),
            request_id: request_id.clone(),
        };
        // The schema guarantees these fields and their types from here on.
        let (tenant_id, request_id_str) = (tenant.clone().unwrap_or_default(), request_id.clone().unwrap_or_default());
        if !self.may_send(&tenant_id) {
            return Err(reject(Reason::UnknownTenant, format!("tenant {tenant_id:?} is not registered")));
        }
        let kind = if body.get("type").and_then(Value::as_str) == Some("recall") { Kind::Recall } else { Kind::Send };
        if let (Some(send_at), Some(expires_at)) = (named("send_at"), named("expires_at")) {
            let parse = |s: &str| chrono::DateTime::parse_from_rfc3339(s).ok();
            if let (Some(send_at), Some(expires_at)) = (parse(&send_at), parse(&expires_at))
                && expires_at <= send_at
            {
                return Err(reject(Reason::InvalidSchedule, format!("expires_at {expires_at} is not after send_at {send_at}")));
            }
        }
        let priority = match (kind, body.get("priority").and_then(Value::as_str)) {
            // A recall must overtake the sends it cancels.
            (Kind::Recall, _) => "high",
            (_, Some("high")) => "high",
            (_, Some("low")) => "low",
            _ => "normal",
        };
        let category = match body.get("category").and_then(Value::as_str) {
            Some("otp") => "otp",
            Some("marketing") => "marketing",
            _ => "transactional",
        };
        if let Value::Object(map) = body {
            map.entry("type").or_insert_with(|| Value::from("send"));
            if kind == Kind::Send {
                map.entry("priority").or_insert_with(|| Value::from(priority));
                map.entry("category").or_insert_with(|| Value::from(category));
            }
        }
        Ok(ValidRequest {
            kind,
            message_id: message_id(&tenant_id, &request_id_str),
            tenant: tenant_id,
            request_id: request_id_str,
            priority,
            category,
            body: body.take(),
        })
    }
}

/// `m_` + the first 16 bytes of SHA-256(tenant NUL request_id), hex.
fn text_field(body: &Value, field: &str) -> Option<String> {
    body.get(field).and_then(Value::as_str).map(str::to_string)
}

pub fn message_id(tenant: &str, request_id: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(tenant.as_bytes());
    hasher.update([0u8]);
    hasher.update(request_id.as_bytes());
    let digest = hasher.finalize();
    let mut id = String::with_capacity(34);
    id.push_str("m_");
    crate::hex::push(&mut id, &digest[..16]);
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn contract() -> Contract {
        Contract::new(["acme".to_string()], 1024)
    }

    fn check(value: Value) -> Result<ValidRequest, Rejection> {
        let key = format!(
            "{}/{}",
            value.get("tenant").and_then(Value::as_str).unwrap_or(""),
            value.get("request_id").and_then(Value::as_str).unwrap_or("")
        );
        contract().check(Some(key.as_bytes()), Some(value.to_string().as_bytes()))
    }

    fn send() -> Value {
        json!({"request_id": "r-1", "tenant": "acme", "template": "order_shipped",
               "recipients": [{"user_id": "u1"}, {"phone": "+8613800138000"}, {"email": "a@b.co"},
                              {"device_token": "t", "platform": "fcm"}, {"open_id": "o1"}, {"inbox_user": "u1"}],
               "params": {"order": 42}})
    }

    #[test]
    fn a_send_gets_defaults_and_a_stable_id() {
        let ok = check(send()).unwrap();
        assert_eq!((ok.kind, ok.priority, ok.category), (Kind::Send, "normal", "transactional"));
        assert_eq!(ok.body["priority"], "normal");
        assert_eq!(ok.body["type"], "send");
        assert_eq!(ok.message_id, message_id("acme", "r-1"));
        assert_eq!(ok.message_id.len(), 34);
        assert_ne!(ok.message_id, message_id("acme", "r-2"));
        // The separator keeps ("ab","c") and ("a","bc") apart.
        assert_ne!(message_id("ab", "c"), message_id("a", "bc"));
    }

    #[test]
    fn a_recall_is_high_priority() {
        let ok = check(json!({"type": "recall", "request_id": "r-1", "tenant": "acme"})).unwrap();
        assert_eq!((ok.kind, ok.priority), (Kind::Recall, "high"));
    }

    #[test]
    fn reasons_for_each_kind_of_bad_record() {
        let c = contract();
        assert_eq!(c.check(Some(b"k"), None).unwrap_err().reason, Reason::EmptyPayload);
        assert_eq!(c.check(Some(b"k"), Some(&[b'x'; 2000])).unwrap_err().reason, Reason::Oversize);
        assert_eq!(c.check(Some(b"k"), Some(b"{not json")).unwrap_err().reason, Reason::NotJson);
        assert_eq!(c.check(Some(b"k"), Some(&[0xff, 0xfe])).unwrap_err().reason, Reason::NotJson);

        let mut missing_tenant = send();
        missing_tenant.as_object_mut().unwrap().remove("tenant");
        let err = check(missing_tenant).unwrap_err();
        assert_eq!(err.reason, Reason::SchemaViolation);
        assert!(err.error.contains("tenant"), "{}", err.error);

        let mut wrong_type = send();
        wrong_type["recipients"] = json!("u1");
        let err = check(wrong_type).unwrap_err();
        assert_eq!(err.reason, Reason::SchemaViolation);
        assert!(err.error.starts_with("/recipients"), "{}", err.error);

        let mut two_addresses = send();
        two_addresses["recipients"] = json!([{"user_id": "u1", "email": "a@b.co"}]);
        assert_eq!(check(two_addresses).unwrap_err().reason, Reason::SchemaViolation);

        let mut bad_email = send();
        bad_email["recipients"] = json!([{"email": "not-an-address"}]);
        assert_eq!(check(bad_email).unwrap_err().reason, Reason::SchemaViolation);

        let mut bad_priority = send();
        bad_priority["priority"] = json!("urgent");
        assert_eq!(check(bad_priority).unwrap_err().reason, Reason::SchemaViolation);

        let mut unknown_field = send();
        unknown_field["colour"] = json!("red");
        assert_eq!(check(unknown_field).unwrap_err().reason, Reason::SchemaViolation);

        let mut bad_time = send();
        bad_time["send_at"] = json!("tomorrow");
        assert_eq!(check(bad_time).unwrap_err().reason, Reason::SchemaViolation);

        let mut backwards = send();
        backwards["send_at"] = json!("2026-11-23T10:00:00+08:00");
        backwards["expires_at"] = json!("2026-11-23T01:59:00Z");
        assert_eq!(check(backwards).unwrap_err().reason, Reason::InvalidSchedule);

        let mut stranger = send();
        stranger["tenant"] = json!("initech");
        let err = check(stranger).unwrap_err();
        assert_eq!((err.reason, err.tenant.as_deref()), (Reason::UnknownTenant, Some("initech")));
    }

    #[test]
    fn the_key_must_be_tenant_slash_request_id() {
        let c = contract();
        let body = send().to_string();
        assert!(c.check(Some(b"acme/r-1"), Some(body.as_bytes())).is_ok());
        let err = c.check(Some(b"acme/r-2"), Some(body.as_bytes())).unwrap_err();
        assert_eq!(err.reason, Reason::KeyMismatch);
        assert!(err.error.contains("\"acme/r-1\""), "{}", err.error);
        assert_eq!(c.check(None, Some(body.as_bytes())).unwrap_err().reason, Reason::KeyMismatch);
    }

    #[test]
    fn the_published_examples_are_valid() {
        let c = Contract::new(["acme".to_string(), "globex".to_string()], 64 * 1024);
        let examples = include_str!("../../examples/requests.jsonl");
        let mut count = 0;
        for line in examples.lines().filter(|l| !l.trim().is_empty()) {
            let (key, value) = line.split_once('|').expect("examples are key|value lines");
            if let Err(e) = c.check(Some(key.as_bytes()), Some(value.as_bytes())) {
                panic!("example {key} is rejected: {e:?}");
            }
            count += 1;
        }
        assert!(count >= 5);
    }
}
