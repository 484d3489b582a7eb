//! The SMS providers against local fakes that check each request as the
//! provider does (Basic auth for Twilio, the RPC signature for Aliyun), and
//! the delivery engine's failover and rate limits over them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use notiflow_delivery::{
    BreakerConfig, Channel, Delivery, FailureReason, Final, Job, Lane, ProviderGroup, ProviderLimits, RetryPolicy, Scheduler, SecretRef, deliver,
};
use notiflow_sms::fake::{FakeProvider, Mode};
use notiflow_sms::{AliyunChannel, AliyunConfig, TencentChannel, TencentConfig, TwilioChannel, TwilioConfig};

fn secret(name: &str, value: &str) -> SecretRef {
    // SAFETY: every test sets its own variable names, to the same values.
    unsafe { std::env::set_var(name, value) };
    SecretRef::env(name)
}

fn twilio(fake: &FakeProvider, token_var: &str) -> TwilioChannel {
    let config = TwilioConfig {
        endpoint: fake.endpoint.clone(),
        account_sid: "AC0123".into(),
        auth_token: SecretRef::env(token_var),
        from: Some("+15005550006".into()),
        messaging_service_sid: None,
        status_callback: None,
        timeout_ms: 2000,
    };
    TwilioChannel::new("twilio", config).unwrap()
}

fn aliyun(fake: &FakeProvider, secret_var: &str) -> AliyunChannel {
    let config = AliyunConfig {
        endpoint: fake.endpoint.clone(),
        access_key_id: "LTAI-test".into(),
        access_key_secret: SecretRef::env(secret_var),
        sign_name: "notiflow".into(),
        templates: [("otp".to_string(), "SMS_100".to_string())].into(),
        default_template: None,
        param_name: "content".into(),
        region: "cn-hangzhou".into(),
        timeout_ms: 2000,
        report_token: None,
    };
    AliyunChannel::new("aliyun", config).unwrap()
}

fn sms(id: &str, phone: &str) -> Delivery {
    serde_json::from_value(serde_json::json!({"type": "send", "delivery_id": format!("d_{id}"), "message_id": format!("m_{id}"), "request_id": id,
        "tenant": "acme", "template": "otp", "channel": "sms", "address": phone, "body": format!("Your code is {id}")}))
    .unwrap()
}

#[tokio::test]
async fn twilio_sends_with_basic_auth_and_reads_errors_from_the_body() {
    let fake = notiflow_sms::fake::twilio("AC0123", "tw-token").await;
    secret("NOTIFLOW_IT_TWILIO_OK", "tw-token");
    let channel = twilio(&fake, "NOTIFLOW_IT_TWILIO_OK");
    let accepted = channel.send(&sms("1", "+8613800138000"), 1).await.unwrap();
    let invalid = channel.send(&sms("2", "+15550000000"), 1).await.unwrap_err();
    assert_eq!((invalid.reason(), invalid.provider_code()), (FailureReason::InvalidRecipient, "21211"));
    secret("NOTIFLOW_IT_TWILIO_BAD", "wrong");
    let refused = twilio(&fake, "NOTIFLOW_IT_TWILIO_BAD").send(&sms("3", "+8613800138000"), 1).await.unwrap_err();
    assert_eq!((refused.reason(), refused.provider_code()), (FailureReason::Auth, "20003"));
    fake.set_mode(Mode::Busy(1));
    let busy = channel.send(&sms("4", "+8613800138000"), 1).await.unwrap_err();
    assert!(matches!(busy, notiflow_delivery::SendError::Retryable { reason: FailureReason::RateLimited, retry_after: Some(_), .. }), "{busy:?}");
    let log = fake.log();
    assert_eq!(log.accepted.len(), 1);
    let got = &log.accepted[0];
    assert_eq!((got.to.as_str(), got.body.as_str(), accepted.provider_message_id.as_deref()), ("+8613800138000", "Your code is 1", Some(got.provider_id.as_str())));
    assert_eq!(log.refused, ["twilio auth: account AC0123"]);
}

#[tokio::test]
async fn aliyun_requests_carry_a_signature_the_fake_verifies() {
    let fake = notiflow_sms::fake::aliyun("LTAI-test", "ali-secret").await;
    secret("NOTIFLOW_IT_ALIYUN_OK", "ali-secret");
    let channel = aliyun(&fake, "NOTIFLOW_IT_ALIYUN_OK");
    let accepted = channel.send(&sms("1", "+8613800138000"), 1).await.unwrap();
    let international = channel.send(&sms("2", "+14155550100"), 1).await.unwrap();
    let illegal = channel.send(&sms("3", "+86123"), 1).await.unwrap_err();
    assert_eq!((illegal.reason(), illegal.provider_code()), (FailureReason::InvalidRecipient, "isv.MOBILE_NUMBER_ILLEGAL"));
    secret("NOTIFLOW_IT_ALIYUN_BAD", "not-the-secret");
    let forged = aliyun(&fake, "NOTIFLOW_IT_ALIYUN_BAD").send(&sms("4", "+8613800138000"), 1).await.unwrap_err();
    assert_eq!((forged.reason(), forged.provider_code()), (FailureReason::Auth, "SignatureDoesNotMatch"));
    let log = fake.log();
    let got: Vec<_> = log.accepted.iter().map(|r| (r.to.as_str(), r.body.as_str(), r.our_id.as_deref(), r.provider_id.as_str())).collect();
    assert_eq!(
        got,
        [
            ("13800138000", "Your code is 1", Some("d_1"), accepted.provider_message_id.as_deref().unwrap()),
            ("0014155550100", "Your code is 2", Some("d_2"), international.provider_message_id.as_deref().unwrap()),
        ]
    );
    assert_eq!(log.refused, ["aliyun: signature"]);
}

#[tokio::test]
async fn tencent_requests_carry_a_tc3_signature_the_fake_verifies() {
    let fake = notiflow_sms::fake::tencent("AKID-test", "tc-secret").await;
    let config = |value: &str| TencentConfig {
        endpoint: fake.endpoint.clone(),
        secret_id: "AKID-test".into(),
        secret_key: secret(&format!("NOTIFLOW_IT_TENCENT_{}", value.len()), value),
        sdk_app_id: "1400000000".into(),
        sign_name: "notiflow".into(),
        templates: [("otp".to_string(), "1234567".to_string())].into(),
        default_template: None,
        region: "ap-guangzhou".into(),
        timeout_ms: 2000,
        pull_receipts_ms: None,
    };
    let channel = TencentChannel::new("tencent", config("tc-secret")).unwrap();
    let accepted = channel.send(&sms("1", "+8613800138000"), 1).await.unwrap();
    assert_eq!(accepted.provider_message_id.as_deref(), Some("2433:1"));
    let invalid = channel.send(&sms("2", "+86123"), 1).await.unwrap_err();
    assert_eq!((invalid.reason(), invalid.provider_code()), (FailureReason::InvalidRecipient, "InvalidParameterValue.IncorrectPhoneNumber"));
    fake.set_mode(Mode::Busy(1));
    let busy = channel.send(&sms("3", "+8613800138000"), 1).await.unwrap_err();
    assert_eq!((busy.reason(), busy.provider_code(), matches!(busy, notiflow_delivery::SendError::Retryable { .. })), (FailureReason::RateLimited, "RequestLimitExceeded", true));
    fake.set_mode(Mode::Accept);
    let forged = TencentChannel::new("tencent", config("wrong-key")).unwrap().send(&sms("4", "+8613800138000"), 1).await.unwrap_err();
    assert_eq!((forged.reason(), forged.provider_code()), (FailureReason::Auth, "AuthFailure.SignatureFailure"));

    // The delivery report is pulled (signed the same way), once.
    let forged_pull = TencentChannel::new("tencent", config("wrong-key")).unwrap().pull_receipts(100).await.unwrap_err();
    assert_eq!(forged_pull.provider_code(), "AuthFailure.SignatureFailure");
    let receipts = channel.pull_receipts(100).await.unwrap();
    let got: Vec<_> = receipts.iter().map(|r| (r.kind.as_str(), r.provider_message_id.as_str(), r.delivery_id.as_deref(), r.provider.as_str())).collect();
    assert_eq!(got, [("delivered", "2433:1", Some("d_1"), "tencent")]);
    assert!(channel.pull_receipts(100).await.unwrap().is_empty());
    let log = fake.log();
    assert_eq!(log.refused, ["tencent: signature", "tencent: signature"]);
    let got: Vec<_> = log.accepted.iter().map(|r| (r.to.as_str(), r.body.as_str(), r.our_id.as_deref())).collect();
    assert_eq!(got, [("+8613800138000", "Your code is 1", Some("d_1"))]);
}

fn group(primary: AliyunChannel, secondary: TwilioChannel, rate: Option<f64>) -> Arc<ProviderGroup> {
    let limits = |weight| ProviderLimits {
        weight,
        rate_per_s: rate,
        burst: 1,
        max_in_flight: 8,
        breaker: BreakerConfig { failures_to_open: 3, open_for: Duration::from_millis(500), max_open_for: Duration::from_secs(5) },
    };
    Arc::new(ProviderGroup::new(vec![(Arc::new(primary) as Arc<dyn Channel>, limits(100)), (Arc::new(secondary), limits(1))]).unwrap())
}

/// The primary goes down mid-stream: every message still goes out exactly
/// once, and within a second all traffic is on the secondary.
#[tokio::test]
async fn failover_moves_traffic_to_the_secondary_within_a_second_and_loses_nothing() {
    let (primary, secondary) = (notiflow_sms::fake::aliyun("LTAI-test", "ali-secret").await, notiflow_sms::fake::twilio("AC0123", "tw-token").await);
    secret("NOTIFLOW_IT_ALIYUN_OK", "ali-secret");
    secret("NOTIFLOW_IT_TWILIO_OK", "tw-token");
    let group = group(aliyun(&primary, "NOTIFLOW_IT_ALIYUN_OK"), twilio(&secondary, "NOTIFLOW_IT_TWILIO_OK"), None);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel(10_000);
    let scheduler = Scheduler::start(vec![group], RetryPolicy::default(), 4, 1000, done_tx);
    let total = 600;
    let mut down_at = None;
    for i in 0..total {
        if i == 300 {
            primary.set_mode(Mode::Down);
            down_at = Some(Instant::now());
        }
        let job = Job { delivery: sms(&i.to_string(), "+8613800138000"), lane: Lane::Normal, token: i, enqueued: Instant::now(), account: None, hold: notiflow_delivery::Hold::always() };
        scheduler.submit(job).await.ok().unwrap();
        // ~500 messages/s, so the stream spans the outage.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    scheduler.drain().await;
    let down_at = down_at.unwrap();
    let mut ended = Vec::new();
    while let Ok(done) = done_rx.try_recv() {
        assert!(matches!(done.outcome, Final::Accepted(_)), "{:?}", done.outcome);
        ended.push(done.job.token);
    }
    ended.sort();
    assert_eq!(ended, (0..total).collect::<Vec<_>>(), "every message ended accepted");
    let (primary_log, secondary_log) = (primary.log(), secondary.log());
    // Exactly once across both providers, by our id / text.
    let mut texts: Vec<&str> = primary_log.accepted.iter().chain(&secondary_log.accepted).map(|r| r.body.as_str()).collect();
    texts.sort();
    texts.dedup();
    assert_eq!(texts.len(), total, "no message accepted twice or lost");
    assert_eq!(primary_log.accepted.len() + secondary_log.accepted.len(), total);
    assert!(primary_log.accepted.len() >= 250, "the primary (weight 100) carried the traffic before: {}", primary_log.accepted.len());
    let moved = secondary_log.accepted.iter().filter(|r| r.at >= down_at).map(|r| r.at).min().expect("the secondary took over");
    let last_primary = primary_log.accepted.iter().map(|r| r.at).max().unwrap();
    assert!(last_primary <= down_at + Duration::from_millis(50), "nothing accepted by the primary after it went down");
    let took = moved - down_at;
    println!("failover: first secondary acceptance {took:?} after the primary went down; primary saw {} requests, secondary accepted {}", primary_log.requests, secondary_log.accepted.len());
    assert!(took < Duration::from_secs(1), "failover took {took:?}");
}

/// The token bucket holds the provider to its configured rate (measured at the fake).
#[tokio::test]
async fn the_send_rate_stays_within_five_percent_of_the_limit() {
    let fake = notiflow_sms::fake::twilio("AC0123", "tw-token").await;
    secret("NOTIFLOW_IT_TWILIO_OK", "tw-token");
    // A small burst absorbs timer lateness (GCRA: a late turn does not push the next one back).
    let limits = ProviderLimits { rate_per_s: Some(200.0), burst: 4, max_in_flight: 16, ..Default::default() };
    let group = Arc::new(ProviderGroup::new(vec![(Arc::new(twilio(&fake, "NOTIFLOW_IT_TWILIO_OK")) as Arc<dyn Channel>, limits)]).unwrap());
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel(10_000);
    let scheduler = Scheduler::start(vec![group], RetryPolicy::default(), 16, 10_000, done_tx);
    let total = 600;
    for i in 0..total {
        scheduler.submit(Job { delivery: sms(&i.to_string(), "+8613800138000"), lane: Lane::Low, token: i, enqueued: Instant::now(), account: None, hold: notiflow_delivery::Hold::always() }).await.ok().unwrap();
    }
    scheduler.drain().await;
    let mut accepted = 0;
    while let Ok(done) = done_rx.try_recv() {
        accepted += matches!(done.outcome, Final::Accepted(_)) as usize;
    }
    assert_eq!(accepted, total);
    let mut at: Vec<Instant> = fake.log().accepted.iter().map(|r| r.at).collect();
    at.sort();
    let rate = (at.len() - 1) as f64 / (at[at.len() - 1] - at[0]).as_secs_f64();
    println!("rate limit 200/s: measured {rate:.1}/s over {} sends", at.len());
    assert!((rate - 200.0).abs() <= 10.0, "measured {rate:.1}/s against a limit of 200/s");
}

#[tokio::test]
async fn deliver_retries_a_busy_provider_then_succeeds() {
    let fake = notiflow_sms::fake::aliyun("LTAI-test", "ali-secret").await;
    secret("NOTIFLOW_IT_ALIYUN_OK", "ali-secret");
    fake.set_mode(Mode::Busy(0));
    let group = ProviderGroup::one(aliyun(&fake, "NOTIFLOW_IT_ALIYUN_OK"));
    let policy = RetryPolicy { max_attempts: 4, min_delay: Duration::from_millis(50), max_delay: Duration::from_millis(200) };
    let mut results = Vec::new();
    let sent = tokio::spawn(async move {
        let end = deliver(&group, &sms("9", "+8613800138000"), &policy, None, &notiflow_delivery::Hold::always(), |r| results.push(r)).await;
        (end, results)
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    fake.set_mode(Mode::Accept);
    let (end, results) = sent.await.unwrap();
    assert!(matches!(end, Final::Accepted(_)), "{end:?}");
    assert_eq!(results.iter().map(|r| (r.status, r.failure_reason)).collect::<Vec<_>>(), [("retrying", Some("rate_limited")), ("accepted", None)]);
}
