//! FCM and APNs against local stand-ins that verify what the real services
//! verify: the service-account assertion and OAuth token flow for FCM, the
//! ES256 provider token and HTTP/2 for APNs; then how their answers classify.

use notiflow_delivery::{Channel, Delivery, SecretRef, summary};
use notiflow_push::fake::{self, Mode};
use notiflow_push::{ApnsChannel, ApnsConfig, FcmChannel, FcmConfig, WebPushChannel, WebPushConfig, pem_to_der};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RsaKeyPair};

fn secret(name: &str, value: &str) -> SecretRef {
    // SAFETY: every test sets its own variable names.
    unsafe { std::env::set_var(name, value) };
    SecretRef::env(name)
}

fn push(id: &str, token: &str, priority: &str) -> Delivery {
    serde_json::from_value(serde_json::json!({"type": "send", "delivery_id": format!("d_{id}"), "message_id": format!("m_{id}"), "request_id": id,
        "tenant": "acme", "channel": "push", "address": token, "priority": priority, "subject": "Order shipped", "body": format!("Order {id} is on its way"),
        "expires_at": "2099-01-01T00:00:00Z"}))
    .unwrap()
}

/// A test-only service account (tests/it/fixtures) pointed at the fake's token endpoint.
fn service_account(token_uri: &str, client_email: &str) -> (String, Vec<u8>) {
    let mut account: serde_json::Value = serde_json::from_str(include_str!("fixtures/service-account.json")).unwrap();
    account["token_uri"] = serde_json::json!(token_uri);
    account["client_email"] = serde_json::json!(client_email);
    let der = pem_to_der(account["private_key"].as_str().unwrap()).unwrap();
    let public = RsaKeyPair::from_pkcs8(&der).unwrap().public().as_ref().to_vec();
    (account.to_string(), public)
}

#[tokio::test]
async fn fcm_signs_its_assertion_caches_the_oauth_token_and_refreshes_it_when_refused() {
    let email = "notiflow@notiflow-test.iam.gserviceaccount.com";
    let (_, public) = service_account("unused", email);
    let fcm = fake::fcm("notiflow-test", email, &public).await;
    let (account, _) = service_account(&format!("{}/token", fcm.endpoint), email);
    let config = FcmConfig { endpoint: fcm.endpoint.clone(), service_account: secret("NOTIFLOW_IT_FCM_SA", &account), timeout_ms: 2000 };
    let channel = FcmChannel::new("fcm", &config).unwrap();
    let send = |d: Delivery| {
        let channel = &channel;
        async move { summary(&channel.send(&d, 1).await) }
    };
    assert_eq!(send(push("1", "fcm-token-a", "high")).await, "accepted projects/p/messages/0:1");
    for i in 2..=5 {
        assert!(send(push(&i.to_string(), "fcm-token-b", "normal")).await.starts_with("accepted"));
    }
    assert_eq!(fcm.tokens_issued(), 1, "one OAuth token for every send");
    fcm.expire_tokens();
    assert!(send(push("6", "fcm-token-a", "normal")).await.starts_with("accepted"), "401 -> new token -> sent");
    assert_eq!(fcm.tokens_issued(), 2);
    assert_eq!(send(push("7", "unregistered-1", "normal")).await, "fail invalid_recipient UNREGISTERED");
    fcm.set_mode(Mode::Busy(1));
    assert_eq!(send(push("8", "fcm-token-a", "normal")).await, "retry rate_limited QUOTA_EXCEEDED");
    fcm.set_mode(Mode::Accept);
    let log = fcm.log();
    assert!(log.refused.is_empty(), "{:?}", log.refused);
    assert_eq!(log.accepted[0].body, "HIGH Order shipped|Order 1 is on its way");
    assert_eq!(log.accepted[1].body, "NORMAL Order shipped|Order 2 is on its way");
    assert_eq!(log.accepted[0].our_id.as_deref(), Some("d_1"));
    drop(log);

    // An assertion from another account is refused by the token endpoint: a permanent auth failure.
    let (stranger, _) = service_account(&format!("{}/token", fcm.endpoint), "someone-else@example.iam.gserviceaccount.com");
    let config = FcmConfig { service_account: secret("NOTIFLOW_IT_FCM_SA2", &stranger), ..config };
    let channel = FcmChannel::new("fcm", &config).unwrap();
    assert_eq!(summary(&channel.send(&push("9", "fcm-token-a", "high"), 1).await), "fail auth invalid_grant");
}

#[tokio::test]
async fn apns_speaks_http2_with_an_es256_provider_token_reused_until_apple_expires_it() {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", base64_lines(pkcs8.as_ref()));
    let apns = fake::apns("TEAM123456", "KEY1234567", "com.acme.app", key.public_key().as_ref()).await;
    let config = ApnsConfig {
        endpoint: apns.endpoint.clone(),
        team_id: "TEAM123456".into(),
        key_id: "KEY1234567".into(),
        signing_key: secret("NOTIFLOW_IT_APNS_KEY", &pem),
        topic: "com.acme.app".into(),
        timeout_ms: 2000,
    };
    let channel = ApnsChannel::new("apns", config.clone()).unwrap();
    let device = "a".repeat(64);
    let send = |d: Delivery| {
        let channel = &channel;
        async move { summary(&channel.send(&d, 1).await) }
    };
    let first = push("1", &device, "high");
    assert_eq!(send(first.clone()).await, format!("accepted {}", notiflow_push::apns::apns_id(&first)));
    assert!(send(push("2", &device, "low")).await.starts_with("accepted"));
    assert_eq!(send(push("3", &format!("dead{}", "0".repeat(60)), "high")).await, "fail invalid_recipient Unregistered");
    assert_eq!(send(push("4", "not-a-device-token", "high")).await, "fail invalid_recipient BadDeviceToken");
    fake::expire_provider_tokens(&apns);
    assert!(send(push("5", &device, "high")).await.starts_with("accepted"), "ExpiredProviderToken -> a new token -> sent");
    apns.set_mode(Mode::Busy(1));
    assert_eq!(send(push("6", &device, "high")).await, "retry rate_limited TooManyRequests");
    apns.set_mode(Mode::Accept);
    let log = apns.log();
    assert!(log.refused.is_empty(), "{:?}", log.refused);
    let bodies: Vec<&str> = log.accepted.iter().map(|r| r.body.as_str()).collect();
    assert_eq!(bodies, ["10 Order shipped|Order 1 is on its way", "5 Order shipped|Order 2 is on its way", "10 Order shipped|Order 5 is on its way"]);
    drop(log);

    let wrong_topic = ApnsChannel::new("apns", ApnsConfig { topic: "com.other.app".into(), ..config }).unwrap();
    assert_eq!(summary(&wrong_topic.send(&push("7", &device, "high"), 1).await), "fail invalid_recipient DeviceTokenNotForTopic");
}

fn base64_lines(der: &[u8]) -> String {
    use base64::Engine;
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    text.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join("\n")
}

#[tokio::test]
async fn web_push_encrypts_for_the_subscription_and_signs_with_vapid() {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", base64_lines(pkcs8.as_ref()));
    let service = fake::FakeWebPush::start(key.public_key().as_ref()).await;
    let config = WebPushConfig {
        vapid_private_key: secret("NOTIFLOW_IT_VAPID", &pem),
        vapid_subject: "mailto:ops@acme.test".into(),
        allowed_hosts: vec!["127.0.0.1".into()],
        default_ttl_s: 3600,
        timeout_ms: 2000,
    };
    let channel = WebPushChannel::new("webpush", config.clone()).unwrap();
    let send = |address: String, priority: &str| {
        let delivery = push("1", &address, priority);
        let channel = &channel;
        async move { summary(&channel.send(&delivery, 1).await) }
    };
    assert_eq!(send(service.subscribe(), "high").await, "accepted /m/1");
    assert_eq!(send(service.subscribe(), "low").await, "accepted /m/2");
    assert_eq!(send(service.expired_subscription(), "high").await, "fail invalid_recipient 410");
    assert_eq!(send("{\"endpoint\": 3}".into(), "high").await, "fail invalid_recipient bad_subscription");
    let elsewhere = service.subscribe().replace("127.0.0.1", "localhost");
    assert_eq!(send(elsewhere, "high").await, "fail blocked_target push_service_not_allowed", "only listed push services");
    let log = service.provider.log();
    assert!(log.refused.is_empty(), "{:?}", log.refused);
    let bodies: Vec<&str> = log.accepted.iter().map(|r| r.body.as_str()).collect();
    assert_eq!(bodies, ["high Order shipped|Order 1 is on its way", "low Order shipped|Order 1 is on its way"], "decrypted by the browser side");
    drop(log);

    // Another application server key: the push service refuses the VAPID token.
    let other = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let other_pem = format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", base64_lines(other.as_ref()));
    let stranger = WebPushChannel::new("webpush", WebPushConfig { vapid_private_key: secret("NOTIFLOW_IT_VAPID2", &other_pem), ..config }).unwrap();
    assert_eq!(summary(&stranger.send(&push("2", &service.subscribe(), "high"), 1).await), "fail auth 403");
}
