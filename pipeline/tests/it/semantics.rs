//! Issue 5 acceptance: a realistic mixed workload of 10,000 requests through
//! the four SQL stages on the real broker — OTP, transactional and marketing;
//! producer retries; repeated content; recipients over their daily cap;
//! recipients in quiet hours in three time zones; scheduled sends; recalls;
//! 1% malformed — with the exact count of every outcome, exactly one terminal
//! event per delivery, and a `kill -9` while messages are held for later.
//!
//! Every request carries its producer time (the Kafka create time), in a
//! simulated day in the past, so quiet hours, local days and windows are
//! decided the same way on every run. The expected outcomes come from how
//! each scenario is built, not from re-running the pipeline's logic.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use notiflow::samples::{Expected, sample_requests};
use notiflow_connector::{OutRecord, Record, TopicAdmin};
use notiflow_kafka::{KafkaAdmin, KafkaConfig, KafkaSink, read_topic_to_end};
use serde_json::{Value, json};

use crate::exactly_once::{finished, instance_log, spawn_instance};
use crate::support;

const ZONES: [&str; 3] = ["Asia/Shanghai", "Europe/Berlin", "America/New_York"];
const TOTAL: usize = 10_000;
const HELD: usize = 40;

fn utc(day: u32, hour: u32, minute: u32) -> i64 {
    Utc.with_ymd_and_hms(2026, 11, day, hour, minute, 0).unwrap().timestamp_millis()
}

/// A wall-clock time in `zone` on a day of November 2026, as ms since the epoch.
fn local(zone: &str, day: u32, hour: u32, minute: u32) -> i64 {
    let tz: chrono_tz::Tz = zone.parse().unwrap();
    tz.with_ymd_and_hms(2026, 11, day, hour, minute, 0).single().unwrap().timestamp_millis()
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn send(tenant: &str, id: &str, template: &str, recipients: Value, params: Value, priority: &str, category: &str) -> Value {
    json!({"request_id": id, "tenant": tenant, "template": template, "recipients": recipients, "params": params,
           "priority": priority, "category": category})
}

struct Request {
    at_ms: i64,
    key: Vec<u8>,
    payload: Vec<u8>,
}

/// The requests of each phase and what the pipeline must make of them.
#[derive(Default)]
struct Workload {
    /// Produced before the first run.
    main: Vec<Request>,
    /// Scheduled a few seconds ahead of the wall clock; produced once `main` is done.
    held: Vec<Request>,
    /// Produced after the kill.
    recalls: Vec<Request>,
    /// Expected count per event kind.
    events: BTreeMap<&'static str, usize>,
    /// Expected records per dispatch lane.
    lanes: BTreeMap<&'static str, usize>,
    /// Expected dead letters per reason.
    dead: BTreeMap<&'static str, usize>,
    /// Expected `release_at` of each deferred or scheduled delivery, by request id.
    release_at: HashMap<String, i64>,
    profiles: Vec<Value>,
}

impl Workload {
    fn expect(&mut self, kind: &'static str, n: usize) {
        *self.events.entry(kind).or_default() += n;
    }

    fn dispatch(&mut self, lane: &'static str, n: usize) {
        self.expect("dispatched", n);
        *self.lanes.entry(lane).or_default() += n;
    }

    fn request(at_ms: i64, body: &Value) -> Request {
        let key = format!("{}/{}", body["tenant"].as_str().unwrap(), body["request_id"].as_str().unwrap());
        Request { at_ms, key: key.into_bytes(), payload: body.to_string().into_bytes() }
    }

    /// An accepted send request of the main phase.
    fn accept(&mut self, at_ms: i64, body: &Value) {
        self.expect("accepted", 1);
        self.main.push(Self::request(at_ms, body));
    }

    fn profile(&mut self, user: &str, zone: &str, addresses: Value, opt_outs: &[&str], quiet: bool) {
        let mut profile = json!({"tenant": "acme", "user_id": user, "addresses": addresses, "timezone": zone,
                                 "locale": "en", "opt_outs": opt_outs});
        if quiet {
            profile["quiet_start"] = json!("22:00");
            profile["quiet_end"] = json!("07:00");
        }
        self.profiles.push(profile);
    }

    fn build(max_request_bytes: usize) -> Self {
        let mut w = Workload::default();
        w.quiet_hours_in_three_zones();
        w.one_time_passwords();
        w.daily_caps();
        w.repeated_content();
        w.opt_outs_and_unreachable();
        w.scheduled_and_expired();
        w.bad_templates_and_malformed(max_request_bytes);
        w.multi_recipient();
        let retries = 300;
        let recalls = 2 * 20 + 5;
        let filler = TOTAL - w.main.len() - retries - HELD - recalls;
        w.orders(filler);
        w.producer_retries(retries);
        w.recalls_of_held_and_sent();
        w.main.sort_by_key(|r| r.at_ms);
        w
    }

    /// Users with quiet hours 22:00-07:00 in three zones: normal sends at
    /// 23:30 local wait until 07:00 local; high priority goes at once; one
    /// that expires at 06:00 local never goes.
    fn quiet_hours_in_three_zones(&mut self) {
        for zone in ZONES {
            let tag = zone.rsplit('/').next().unwrap().to_lowercase();
            for i in 0..100 {
                let user = format!("q-{tag}-{i}");
                let addresses = json!({"sms": format!("+4915{:08}", i), "email": format!("{user}@example.com"), "inbox": user});
                self.profile(&user, zone, addresses, &[], true);
                let id = format!("quiet-{tag}-{i}");
                let recipients = json!([{"user_id": user}]);
                let params = json!({"order_id": id, "carrier": "DHL"});
                let mut body = send("acme", &id, "order_shipped", recipients, params, "normal", "transactional");
                body["channels"] = json!(["sms", "email"]);
                match i {
                    0..60 => {
                        self.accept(local(zone, 20, 23, 30), &body);
                        self.expect("deferred", 2);
                        self.dispatch("normal", 2);
                        self.release_at.insert(id, local(zone, 21, 7, 0));
                    }
                    60..80 => {
                        body["priority"] = json!("high");
                        self.accept(local(zone, 20, 23, 45), &body);
                        self.dispatch("high", 2);
                    }
                    80..90 => {
                        body["expires_at"] = json!(rfc3339(local(zone, 21, 6, 0)));
                        self.accept(local(zone, 20, 23, 30), &body);
                        self.expect("expired", 2);
                    }
                    _ => {} // one-time passwords, below
                }
            }
        }
    }

    /// 25 one-time passwords each, in quiet hours, at normal priority: never
    /// deferred, never capped.
    fn one_time_passwords(&mut self) {
        for zone in ZONES {
            let tag = zone.rsplit('/').next().unwrap().to_lowercase();
            for i in 90..100 {
                for k in 0..25 {
                    let id = format!("otp-{tag}-{i}-{k}");
                    let params = json!({"code": format!("{:06}", i * 100 + k)});
                    let body = send("acme", &id, "login_otp", json!([{"user_id": format!("q-{tag}-{i}")}]), params, "normal", "otp");
                    self.accept(local(zone, 20, 22, 30) + k as i64 * 60_000, &body);
                    self.dispatch("normal", 1);
                }
            }
        }
    }

    /// Marketing: 5 a day to 40 users (3 go, 2 capped), one more the next day
    /// (goes). Transactional: 22 a day to 5 users (20 go, 2 capped).
    fn daily_caps(&mut self) {
        for u in 0..40 {
            let user = format!("c-{u}");
            let addresses = json!({"sms": format!("+4916{:08}", u), "email": format!("{user}@example.com"), "inbox": user});
            self.profile(&user, "UTC", addresses, &[], false);
            for k in 0..6 {
                let id = format!("promo-{u}-{k}");
                let body =
                    send("acme", &id, "promo_black_friday", json!([{"user_id": user}]), json!({"discount": 10 + k}), "low", "marketing");
                let at = if k < 5 { utc(20, 10, 0) + k as i64 * 1_800_000 } else { utc(21, 9, 0) };
                self.accept(at, &body);
                if k == 3 || k == 4 {
                    self.expect("capped", 1);
                } else {
                    self.dispatch("low", 1);
                }
            }
        }
        for u in 0..5 {
            let user = format!("t-{u}");
            self.profile(&user, "UTC", json!({"sms": format!("+4917{:08}", u)}), &[], false);
            for k in 0..22 {
                let id = format!("busy-{u}-{k}");
                let params = json!({"order_id": id, "carrier": "UPS"});
                let body = send("acme", &id, "order_shipped", json!([{"user_id": user}]), params, "normal", "transactional");
                self.accept(utc(20, 8, 0) + k as i64 * 1_200_000, &body);
                if k < 20 {
                    self.dispatch("normal", 1);
                } else {
                    self.expect("capped", 1);
                }
            }
        }
    }

    /// The same content to the same phone under three request ids: at +2 min
    /// it is a repeat, at +6 min (past the 5-minute window) it goes again.
    fn repeated_content(&mut self) {
        for g in 0..100 {
            let params = json!({"order_id": format!("D{g}"), "carrier": "SF Express"});
            let start = utc(20, 1, 0) + g as i64 * 420_000;
            for (k, offset) in [0, 2, 6].into_iter().enumerate() {
                let recipients = json!([{"phone": format!("+861390{g:07}")}]);
                let body = send("globex", &format!("dup-{g}-{k}"), "order_shipped", recipients, params.clone(), "normal", "transactional");
                self.accept(start + offset * 60_000, &body);
                if k == 1 {
                    self.expect("deduped", 1);
                } else {
                    self.dispatch("normal", 1);
                }
            }
        }
    }

    /// Users opted out of marketing (a promotion reaches no channel; orders
    /// and passwords still go), and users without a profile.
    fn opt_outs_and_unreachable(&mut self) {
        for i in 0..30 {
            let user = format!("o-{i}");
            let addresses = json!({"sms": format!("+4918{:08}", i), "email": format!("{user}@example.com")});
            self.profile(&user, "UTC", addresses, &["marketing:*"], false);
            let at = utc(20, 12, 0) + i as i64 * 60_000;
            let to = json!([{"user_id": user}]);
            self.accept(
                at,
                &send("acme", &format!("optout-promo-{i}"), "promo_black_friday", to.clone(), json!({"discount": 5}), "low", "marketing"),
            );
            self.expect("opted_out", 1); // email; the template's push is not reachable
            self.expect("no_channel", 1);
            let order = json!({"order_id": format!("OO{i}"), "carrier": "DHL"});
            self.accept(
                at + 1_000,
                &send("acme", &format!("optout-order-{i}"), "order_shipped", to.clone(), order, "normal", "transactional"),
            );
            self.dispatch("normal", 2); // sms and email
            self.accept(at + 2_000, &send("acme", &format!("optout-otp-{i}"), "login_otp", to, json!({"code": "424242"}), "high", "otp"));
            self.dispatch("high", 1);
        }
        for i in 0..50 {
            let body = send(
                "acme",
                &format!("ghost-{i}"),
                "order_shipped",
                json!([{"user_id": format!("ghost-{i}")}]),
                json!({"order_id": i, "carrier": "DHL"}),
                "normal",
                "transactional",
            );
            self.accept(utc(20, 13, 0) + i as i64 * 1_000, &body);
            self.expect("no_channel", 1);
        }
    }

    /// Sends scheduled two hours after the request, and sends that arrive
    /// already expired.
    fn scheduled_and_expired(&mut self) {
        for i in 0..100 {
            let id = format!("later-{i}");
            let at = utc(20, 6, 0) + i as i64 * 180_000;
            let mut body = send(
                "acme",
                &id,
                "order_shipped",
                json!([{"email": format!("s{i}@example.com")}]),
                json!({"order_id": id, "carrier": "DHL"}),
                "normal",
                "transactional",
            );
            body["send_at"] = json!(rfc3339(at + 7_200_000));
            self.accept(at, &body);
            self.expect("scheduled", 1);
            self.dispatch("normal", 1);
            self.release_at.insert(id, at + 7_200_000);
        }
        for i in 0..30 {
            let id = format!("stale-{i}");
            let at = utc(20, 14, 0) + i as i64 * 1_000;
            let mut body = send(
                "globex",
                &id,
                "order_shipped",
                json!([{"phone": format!("+861370{i:07}")}]),
                json!({"order_id": id, "carrier": "DHL"}),
                "normal",
                "transactional",
            );
            body["expires_at"] = json!(rfc3339(at - 60_000));
            self.accept(at, &body);
            self.expect("expired", 1);
        }
    }

    /// Unknown templates, missing template variables, and 1% malformed records.
    fn bad_templates_and_malformed(&mut self, max_request_bytes: usize) {
        for i in 0..20 {
            let at = utc(20, 15, 0) + i as i64 * 1_000;
            let to = json!([{"phone": format!("+861380{i:07}")}]);
            self.accept(at, &send("acme", &format!("nosuch-{i}"), "welcome_series", to.clone(), json!({}), "normal", "transactional"));
            self.expect("rejected", 1);
            // A render failure rejects the request as a whole: no `accepted` event either.
            let noparam = send("acme", &format!("noparam-{i}"), "order_shipped", to, json!({"order_id": i}), "normal", "transactional");
            self.main.push(Self::request(at + 500, &noparam));
            self.expect("rejected", 1);
            *self.dead.entry("template_error").or_default() += 1;
        }
        let malformed = sample_requests(TOTAL, 100, max_request_bytes);
        for (n, sample) in malformed.into_iter().enumerate().filter(|(_, s)| matches!(s.expected, Expected::DeadLetter { .. })) {
            let Expected::DeadLetter { reason } = sample.expected else { unreachable!() };
            *self.dead.entry(reason).or_default() += 1;
            self.expect("rejected", 1);
            self.main.push(Request { at_ms: utc(20, 0, 0) + n as i64 * 7_000, key: sample.key, payload: sample.payload });
        }
    }

    /// One request to a phone, an email address and an inbox user at once.
    fn multi_recipient(&mut self) {
        for i in 0..100 {
            let to =
                json!([{"phone": format!("+861360{i:07}")}, {"email": format!("m{i}@example.com")}, {"inbox_user": format!("mb-{i}")}]);
            let priority = ["high", "normal", "low"][i % 3];
            let body = send(
                "globex",
                &format!("multi-{i}"),
                "order_shipped",
                to,
                json!({"order_id": i, "carrier": "EMS"}),
                priority,
                "transactional",
            );
            self.accept(utc(20, 16, 0) + i as i64 * 5_000, &body);
            self.dispatch(priority, 3);
        }
    }

    /// Plain orders to direct addresses, spread over the day.
    fn orders(&mut self, count: usize) {
        for i in 0..count {
            let tenant = ["acme", "globex"][i % 2];
            let priority = ["high", "normal", "low"][(i / 3) % 3];
            let to = match i % 3 {
                0 => json!([{"phone": format!("+861350{i:07}")}]),
                1 => json!([{"email": format!("o{i}@example.com")}]),
                _ => json!([{"inbox_user": format!("ib-{i}")}]),
            };
            let body = send(
                tenant,
                &format!("order-{i}"),
                "order_shipped",
                to,
                json!({"order_id": i, "carrier": "SF"}),
                priority,
                "transactional",
            );
            self.accept(utc(20, 0, 0) + i as i64 * 9_000, &body);
            self.dispatch(priority, 1);
        }
    }

    /// The producer sends 300 orders again 10 minutes later (same key and bytes).
    fn producer_retries(&mut self, count: usize) {
        let retries: Vec<Request> = self
            .main
            .iter()
            .filter(|r| r.key.windows(7).any(|w| w == b"/order-"))
            .take(count)
            .map(|r| Request { at_ms: r.at_ms + 600_000, key: r.key.clone(), payload: r.payload.clone() })
            .collect();
        assert_eq!(retries.len(), count);
        self.expect("duplicate_request", count);
        self.main.extend(retries);
    }

    /// Recalls: of half the held sends (cancelled before they go), of 20 sent
    /// orders (channels are asked to withdraw them), and 5 repeated recalls.
    fn recalls_of_held_and_sent(&mut self) {
        let at = utc(22, 9, 0);
        let recall = |tenant: &str, id: &str, n: i64| {
            let body = json!({"type": "recall", "request_id": id, "tenant": tenant, "reason": "order cancelled"});
            Self::request(at + n * 1_000, &body)
        };
        let mut recalls: Vec<Request> = (0..HELD / 2).map(|i| recall("acme", &format!("held-{i}"), i as i64)).collect();
        recalls.extend((0..20).map(|i| recall(["acme", "globex"][(1000 + i) % 2], &format!("order-{}", 1000 + i), 100 + i as i64)));
        recalls.extend((0..5).map(|i| recall("acme", &format!("held-{i}"), 200 + i as i64)));
        self.expect("recall_requested", 40);
        *self.lanes.entry("high").or_default() += 40; // the recall itself, for the channels
        self.expect("duplicate_request", 5);
        self.recalls = recalls;
    }

    /// Sends scheduled for `send_at` (a few seconds from now): half are
    /// recalled while held, the rest go once their time comes.
    fn held_until(&mut self, send_at_ms: i64) {
        for i in 0..HELD {
            let id = format!("held-{i}");
            let mut body = send(
                "acme",
                &id,
                "order_shipped",
                json!([{"phone": format!("+861340{i:07}")}]),
                json!({"order_id": id, "carrier": "DHL"}),
                "normal",
                "transactional",
            );
            body["send_at"] = json!(rfc3339(send_at_ms));
            self.expect("accepted", 1);
            self.expect("scheduled", 1);
            if i < HELD / 2 {
                self.expect("recalled", 1);
            } else {
                self.dispatch("normal", 1);
            }
            self.release_at.insert(id, send_at_ms);
            self.held.push(Self::request(utc(22, 8, 0) + i as i64 * 1_000, &body));
        }
    }
}

async fn produce(kafka: &KafkaConfig, topic: &Arc<str>, requests: &[Request]) {
    let records = requests
        .iter()
        .map(|r| (OutRecord { topic: topic.clone(), key: Some(r.key.clone()), payload: r.payload.clone(), headers: vec![] }, r.at_ms))
        .collect();
    KafkaSink::new(kafka).unwrap().send_all_at(records).await.unwrap();
}

fn json_rows(records: &[Record]) -> Vec<Value> {
    records.iter().map(|r| serde_json::from_slice(r.payload.as_deref().unwrap()).unwrap()).collect()
}

fn count_by_kind(events: &[Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for event in events {
        *counts.entry(event["event"].as_str().unwrap().to_string()).or_default() += 1;
    }
    counts
}

/// Polls the events topic until it holds `want` events (or fails after `limit`).
async fn wait_for_events(kafka: &KafkaConfig, topic: &str, want: usize, limit: Duration, log: &std::path::Path) -> Vec<Value> {
    let started = Instant::now();
    let (mut last, mut changed) = (0, Instant::now());
    loop {
        let events = json_rows(&read_topic_to_end(kafka, topic).await.unwrap());
        if events.len() >= want {
            return events;
        }
        if events.len() != last {
            (last, changed) = (events.len(), Instant::now());
        }
        assert!(
            started.elapsed() < limit && changed.elapsed() < Duration::from_secs(30),
            "{} of {want} events (stalled 30 s, or {limit:?} passed): {:?}\n{}",
            events.len(),
            count_by_kind(&events),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(1_000)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_mixed_requests_end_in_exactly_the_expected_outcomes() {
    let _turn = support::one_at_a_time().await;
    // One partition per topic: the workload replays a simulated day as a
    // backlog, and request order across partitions would be the consumer's
    // (the windows judge by request time within their watermark lag).
    let mut config = support::kafka_config(1);
    // tansu 0.6 serves a fetch that starts inside a record batch from the next
    // batch on: one record per batch, so a restart resuming at any offset
    // (checkpoint recovery reads the sinks from there) sees every record.
    for (name, value) in [("batch.num.messages", "1"), ("linger.ms", "0")] {
        config.kafka.as_mut().unwrap().properties.insert(name.into(), value.into());
    }
    let kafka = config.kafka.clone().unwrap();
    let topic = |logical: &str| config.topics.resolve(logical);
    let run = notiflow::load_pipeline(&support::sql_dir(), &config).await.unwrap();
    KafkaAdmin::new(&kafka).unwrap().ensure_topics(&notiflow::topic_specs(&run, &config)).await.unwrap();
    drop(run);

    let mut workload = Workload::build(config.pipeline.max_request_bytes);
    let tenants: Vec<String> = config.tenants.iter().map(|t| t.id.clone()).collect();
    let templates = notiflow::catalog::parse_items("templates", include_str!("../../../examples/templates.jsonl")).unwrap();
    let profile_lines: String = workload.profiles.iter().map(|p| format!("{p}\n")).collect();
    let profiles = notiflow::catalog::parse_items("profiles", &profile_lines).unwrap();
    let mut catalog: Vec<OutRecord> = Vec::new();
    let templates_topic: Arc<str> = Arc::from(topic("notify.templates").as_str());
    let profiles_topic: Arc<str> = Arc::from(topic("notify.profiles").as_str());
    catalog.extend(notiflow::catalog::template_records(&templates, &tenants).unwrap().into_iter().map(|r| r.into_out(&templates_topic)));
    catalog.extend(notiflow::catalog::profile_records(&profiles, &tenants).unwrap().into_iter().map(|r| r.into_out(&profiles_topic)));
    notiflow_connector::Sink::send_all(&KafkaSink::new(&kafka).unwrap(), catalog).await.unwrap();

    let requests_topic: Arc<str> = Arc::from(topic("notify.requests").as_str());
    produce(&kafka, &requests_topic, &workload.main).await;
    let main_events: usize = workload.events.values().sum::<usize>() - 40 - 5; // recalls come later

    // Run A works through the backlog and keeps running. (Static group
    // membership: each restart takes the partitions back at once.)
    let dir = tempfile::tempdir().unwrap();
    let spawn = |idle_ms: &str| spawn_instance(dir.path(), &support::sql_dir(), &config, "a", idle_ms);
    let log_a = dir.path().join("a").join("log.txt");
    let mut a = spawn("600000");
    let events_topic = topic("notify.events");
    wait_for_events(&kafka, &events_topic, main_events, Duration::from_secs(420), &log_a).await;

    // Sends scheduled a few seconds ahead: held, then run A is killed (-9).
    let send_at = Utc::now().timestamp_millis() + 45_000;
    workload.held_until(send_at);
    produce(&kafka, &requests_topic, &workload.held).await;
    wait_for_events(&kafka, &events_topic, main_events + 2 * HELD, Duration::from_secs(60), &log_a).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // stage 40 takes them in and checkpoints them
    a.kill().unwrap();
    a.wait().unwrap();
    assert!(Utc::now().timestamp_millis() < send_at, "the machine was too slow to kill run A before the held sends were due");

    // Recalls while run A is down; run B takes them in and exits when idle.
    produce(&kafka, &requests_topic, &workload.recalls).await;
    let said_b = finished(spawn("8000"), dir.path(), "a");
    eprintln!("run B:\n{said_b}\n{}", instance_log(dir.path(), "a"));
    // The recalls woke their held sends at once (recalled now, not at the
    // send time); the other half stay held across the restart.
    if Utc::now().timestamp_millis() < send_at {
        assert!(said_b.contains(&format!("held for later: {} records", HELD / 2)), "{said_b}");
        let events = json_rows(&read_topic_to_end(&kafka, &events_topic).await.unwrap());
        let recalled: Vec<&Value> = events.iter().filter(|e| e["event"] == "recalled").collect();
        assert_eq!(recalled.len(), HELD / 2, "recalled while held, before the send time");
    }

    // Run C starts after the send time: the held sends come back and go (or are recalled) once.
    let wait = send_at + 1_000 - Utc::now().timestamp_millis();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
    let said_c = finished(spawn("8000"), dir.path(), "a");
    eprintln!("run C:\n{said_c}");
    assert!(!said_c.contains("held for later"), "{said_c}");

    // Exact counts of every event kind.
    let events = json_rows(&read_topic_to_end(&kafka, &events_topic).await.unwrap());
    let expected: BTreeMap<String, usize> = workload.events.iter().map(|(k, n)| (k.to_string(), *n)).collect();
    assert_eq!(count_by_kind(&events), expected);

    // Every accepted send ends in exactly one terminal event per recipient
    // and channel (no_channel and rejected: per recipient / request).
    const TERMINAL: [&str; 8] = ["dispatched", "deduped", "capped", "expired", "recalled", "opted_out", "no_channel", "rejected"];
    let text = |v: &Value, f: &str| v[f].as_str().unwrap_or("").to_string();
    let accepted: HashSet<String> = events.iter().filter(|e| e["event"] == "accepted").map(|e| text(e, "message_id")).collect();
    let mut terminal: HashMap<(String, String, String), Vec<String>> = HashMap::new();
    let mut ended: HashSet<String> = HashSet::new();
    for e in events.iter().filter(|e| TERMINAL.contains(&e["event"].as_str().unwrap()) && accepted.contains(&text(e, "message_id"))) {
        let key = (text(e, "message_id"), text(e, "recipient"), text(e, "channel"));
        terminal.entry(key).or_default().push(text(e, "event"));
        ended.insert(text(e, "message_id"));
    }
    let doubled: Vec<_> = terminal.iter().filter(|(_, kinds)| kinds.len() > 1).take(5).collect();
    assert!(doubled.is_empty(), "more than one terminal event: {doubled:?}");
    let open: Vec<&String> = accepted.iter().filter(|m| !ended.contains(*m)).take(5).collect();
    assert!(open.is_empty(), "accepted without a terminal event: {open:?}");

    // Deferred and scheduled sends were planned for the right instant: 07:00
    // in the recipient's zone, or send_at.
    for e in events.iter().filter(|e| e["event"] == "deferred" || e["event"] == "scheduled") {
        let want = workload.release_at[&text(e, "request_id")];
        assert_eq!(e["release_at"].as_str(), Some(rfc3339(want).as_str()), "{e}");
    }

    // Each lane holds exactly its deliveries, each once.
    let mut seen = HashSet::new();
    for (lane, want) in &workload.lanes {
        let rows = json_rows(&read_topic_to_end(&kafka, &topic(&format!("notify.dispatch.{lane}"))).await.unwrap());
        assert_eq!(rows.len(), *want, "lane {lane}");
        for row in rows.iter().filter(|r| r["type"] == "send") {
            assert_eq!(row["priority"].as_str(), Some(*lane));
            assert!(seen.insert(text(row, "delivery_id")), "dispatched twice: {row}");
        }
    }
    let recalled: HashSet<String> = events.iter().filter(|e| e["event"] == "recalled").map(|e| text(e, "request_id")).collect();
    assert_eq!(recalled, (0..HELD / 2).map(|i| format!("held-{i}")).collect::<HashSet<_>>());

    // Dead letters: each with its reason.
    let dead = read_topic_to_end(&kafka, &topic("notify.dlq")).await.unwrap();
    let mut dead_by_reason: BTreeMap<String, usize> = BTreeMap::new();
    for record in &dead {
        let reason = record.headers.iter().find(|h| h.name == notiflow::dlq::headers::REASON).unwrap();
        *dead_by_reason.entry(String::from_utf8_lossy(&reason.value).to_string()).or_default() += 1;
    }
    let expected_dead: BTreeMap<String, usize> = workload.dead.iter().map(|(k, n)| (k.to_string(), *n)).collect();
    assert_eq!(dead_by_reason, expected_dead);

    // `notiflow trace`: a deferred request's timeline, and one delivery's.
    let trace = |id: &str| {
        let toml = dir.path().join("a").join("notiflow.toml");
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_notiflow")).args(["trace", id, "--config"]).arg(&toml).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).to_string()
    };
    let said = trace("acme/quiet-shanghai-0");
    let kinds: Vec<&str> = said.lines().skip(1).filter_map(|l| l.split_whitespace().nth(1)).collect();
    assert_eq!(kinds, ["accepted", "deferred", "deferred", "dispatched", "dispatched"], "{said}");
    assert!(said.contains("until 2026-11-20T23:00:00.000Z"), "07:00 in Shanghai: {said}");
    let deduped = events.iter().find(|e| e["event"] == "deduped").unwrap();
    let said = trace(deduped["delivery_id"].as_str().unwrap());
    let kinds: Vec<&str> = said.lines().skip(1).filter_map(|l| l.split_whitespace().nth(1)).collect();
    assert_eq!(kinds, ["accepted", "deduped"], "{said}");
}
