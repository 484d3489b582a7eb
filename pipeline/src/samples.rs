//! Sample traffic for the demo, the tests and benchmarks: valid requests
//! spread over tenants, priorities and categories, with malformed records of
//! every kind mixed in at a chosen rate. Deterministic for a given count.

use serde_json::json;

/// What the pipeline must do with a sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    Dispatch { priority: &'static str },
    DeadLetter { reason: &'static str },
}

#[derive(Debug, Clone)]
pub struct Sample {
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub expected: Expected,
}

const TENANTS: [&str; 2] = ["acme", "globex"];
const PRIORITIES: [&str; 3] = ["high", "normal", "low"];
const CATEGORIES: [&str; 3] = ["otp", "transactional", "marketing"];

/// `count` samples; every `malformed_every`-th one (if non-zero) is malformed,
/// cycling through the kinds of bad input.
pub fn sample_requests(count: usize, malformed_every: usize, oversize_limit: usize) -> Vec<Sample> {
    (0..count)
        .map(|i| {
            if malformed_every > 0 && i % malformed_every == malformed_every - 1 {
                malformed(i, (i / malformed_every) % 6, oversize_limit)
            } else {
                valid(i)
            }
        })
        .collect()
}

fn valid(i: usize) -> Sample {
    let tenant = TENANTS[i % 2];
    let priority = PRIORITIES[i % 3];
    let request_id = format!("req-{i:07}");
    let recipient = match i % 4 {
        0 => json!({"user_id": format!("u-{}", i % 977)}),
        1 => json!({"phone": format!("+86138{:08}", i % 100_000_000)}),
        2 => json!({"email": format!("user{}@example.com", i % 977)}),
        _ => json!({"inbox_user": format!("u-{}", i % 977)}),
    };
    let body = json!({
        "request_id": request_id,
        "tenant": tenant,
        "template": "order_shipped",
        "recipients": [recipient],
        "params": {"order_id": i, "carrier": "SF Express"},
        "priority": priority,
        "category": CATEGORIES[(i / 3) % 3],
    });
    Sample {
        key: format!("{tenant}/{request_id}").into_bytes(),
        payload: body.to_string().into_bytes(),
        expected: Expected::Dispatch { priority },
    }
}

fn malformed(i: usize, kind: usize, oversize_limit: usize) -> Sample {
    let request_id = format!("bad-{i:07}");
    let key = format!("acme/{request_id}").into_bytes();
    let (key, payload, reason) = match kind {
        0 => (key, format!("{{\"request_id\": \"{request_id}\", \"tenant\": \"acme\"").into_bytes(), "not_json"),
        1 => (
            key,
            json!({"request_id": request_id, "template": "t", "recipients": [{"user_id": "u"}]}).to_string().into_bytes(),
            "schema_violation",
        ),
        2 => (
            key,
            json!({"request_id": request_id, "tenant": "acme", "template": "t", "recipients": [{"user_id": "u"}],
                   "params": {"blob": "x".repeat(oversize_limit)}})
            .to_string()
            .into_bytes(),
            "oversize",
        ),
        3 => (
            key,
            json!({"request_id": request_id, "tenant": "acme", "template": "t", "recipients": [{"user_id": 42}],
                   "priority": 1})
            .to_string()
            .into_bytes(),
            "schema_violation",
        ),
        4 => (
            format!("initech/{request_id}").into_bytes(),
            json!({"request_id": request_id, "tenant": "initech", "template": "t", "recipients": [{"user_id": "u"}]})
                .to_string()
                .into_bytes(),
            "unknown_tenant",
        ),
        _ => (
            b"acme/some-other-id".to_vec(),
            json!({"request_id": request_id, "tenant": "acme", "template": "t", "recipients": [{"user_id": "u"}]})
                .to_string()
                .into_bytes(),
            "key_mismatch",
        ),
    };
    Sample { key, payload, expected: Expected::DeadLetter { reason } }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::Contract;

    #[test]
    fn the_contract_agrees_with_every_expected_outcome() {
        let limit = 4096;
        let contract = Contract::new(TENANTS.map(String::from), limit);
        let samples = sample_requests(600, 10, limit);
        assert_eq!(samples.iter().filter(|s| matches!(s.expected, Expected::DeadLetter { .. })).count(), 60);
        for sample in samples {
            let got = contract.check(Some(&sample.key), Some(&sample.payload));
            match (sample.expected, got) {
                (Expected::Dispatch { priority }, Ok(req)) => assert_eq!(req.priority, priority),
                (Expected::DeadLetter { reason }, Err(rej)) => assert_eq!(rej.reason.as_str(), reason),
                (expected, got) => panic!("expected {expected:?}, got {got:?}"),
            }
        }
    }
}

/// Profiles for the users the samples address (`u-0` .. `u-976` of each
/// tenant): addresses on sms, email and inbox, four time zones, a marketing
/// opt-out for every 7th user and quiet hours 22:00-07:00 for every 5th.
pub fn sample_profiles() -> Vec<crate::catalog::Profile> {
    const ZONES: [&str; 4] = ["Asia/Shanghai", "Europe/Berlin", "America/New_York", "UTC"];
    TENANTS
        .iter()
        .flat_map(|tenant| {
            (0..977usize).map(move |i| crate::catalog::Profile {
                tenant: tenant.to_string(),
                user_id: format!("u-{i}"),
                addresses: [
                    ("sms".to_string(), format!("+86139{:08}", i)),
                    ("email".to_string(), format!("user{i}@example.com")),
                    ("inbox".to_string(), format!("u-{i}")),
                ]
                .into(),
                timezone: Some(ZONES[i % 4].to_string()),
                locale: Some(if i % 4 == 0 { "zh-CN" } else { "en" }.to_string()),
                opt_outs: if i % 7 == 0 { vec!["marketing:*".to_string()] } else { vec![] },
                quiet_start: (i % 5 == 0).then(|| "22:00".to_string()),
                quiet_end: (i % 5 == 0).then(|| "07:00".to_string()),
            })
        })
        .collect()
}
