//! `notiflow deliver`: the dispatch topics to the channels' providers.
//!
//! One consumer per lane (high, normal, low; each its own group) feeds the
//! [`Scheduler`]: per channel, strict-priority lanes and workers, so a high
//! message never waits behind queued normal/low ones. A lane topic mixes
//! channels, so a reader never waits for one channel: when a channel's lane
//! is full (its providers stalled), the record is parked on that channel's
//! own topic `notify.dispatch.parked.<channel>`, read by that channel's own
//! consumer, which alone waits for room. A stalled provider holds up only its
//! channel. Every attempt goes to `notify.sends`, the
//! end of each delivery to `notify.events` (`sent` / `send_failed`), and
//! deliveries that failed for good to the dead-letter topic with the original
//! bytes. Offsets are committed up to the oldest unfinished delivery, after
//! its outputs are acknowledged: a crash re-sends only unfinished ones
//! (at-least-once; `delivery_id` goes to providers that take an id).

pub mod bench;
pub mod config;
mod progress;
mod quota_ledger;
mod rate_share;
pub mod tenant_rules;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use notiflow_connector::{BatchLimits, Header, Hold, OutRecord, Record, Sink, Source, TopicAdmin, TopicSpec};
use notiflow_delivery::{Delivery, Done, Final, Job, Lane, ProviderGroup, Refused, Scheduler, SendResult};
use notiflow_inbox::{InboxChannel, SinkJournal};

use crate::tracking::ClickTracker;
use notiflow_connector::memory::{MemoryBroker, MemorySink, MemorySource};
use notiflow_kafka::{KafkaAdmin, KafkaConfig, KafkaSink, KafkaSource};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::dlq::{Rejected, dead_letter, source_of};
use progress::Progress;

/// What a delivery carries through the scheduler: its record (for the
/// dead-letter copy and the commit point).
pub struct Token {
    record: Record,
}

/// What the writer task writes.
enum Output {
    Done(Done<Token>),
    /// Ended before any attempt (unreadable, no provider, a recall).
    Skipped { record: Record, lane: Lane, delivery: Option<Delivery>, reason: &'static str, error: String },
    /// Its channel's lane was full: moved to the channel's parked topic.
    Parked { record: Record, lane: Lane, channel: String },
}

#[derive(Debug, Default, Clone)]
pub struct DeliverTotals {
    pub read: u64,
    pub accepted: u64,
    pub failed: u64,
    pub attempts: u64,
    /// Unreadable records or channels without a provider: dead-lettered.
    pub not_sendable: u64,
    /// Recall records (applied to the inbox when it is configured).
    pub recalls: u64,
    /// Records moved to their channel's parked topic because its lane was full.
    pub parked: u64,
}

struct Topics {
    sends: Arc<str>,
    events: Arc<str>,
    dlq: Arc<str>,
    /// The inbox log, when the inbox channel is on: recalls are appended to it.
    inbox: Option<Arc<str>>,
    /// Channel -> its parked topic.
    parked: BTreeMap<String, Arc<str>>,
}

/// The lane a parked record came from (a header, so the record stays byte for byte).
const LANE_HEADER: &str = "notiflow.lane";

/// Where deliver reads and writes: Kafka (`notiflow deliver`) or the embedded default's
/// in-process log (`notiflow demo`).
pub trait Bus: Send + Sync {
    type Source: Source + 'static;
    type Sink: Sink + 'static;
    /// A consumer of `topic` in `group`, from the earliest offset when the group has none.
    fn source(&self, group: &str, topic: &str) -> anyhow::Result<Self::Source>;
    fn sink(&self) -> anyhow::Result<Self::Sink>;
    fn ensure_topics(&self, specs: &[TopicSpec]) -> impl Future<Output = anyhow::Result<()>> + Send;
}

struct KafkaBus<'a>(&'a KafkaConfig);

impl Bus for KafkaBus<'_> {
    type Source = KafkaSource;
    type Sink = KafkaSink;
    fn source(&self, group: &str, topic: &str) -> anyhow::Result<KafkaSource> {
        Ok(KafkaSource::new(self.0, group, &[topic], "earliest")?)
    }
    fn sink(&self) -> anyhow::Result<KafkaSink> {
        Ok(KafkaSink::patient(self.0)?)
    }
    async fn ensure_topics(&self, specs: &[TopicSpec]) -> anyhow::Result<()> {
        Ok(KafkaAdmin::new(self.0)?.ensure_topics(specs).await?)
    }
}

impl Bus for MemoryBroker {
    type Source = MemorySource;
    type Sink = MemorySink;
    fn source(&self, group: &str, topic: &str) -> anyhow::Result<MemorySource> {
        Ok(self.consumer(group, &[topic]))
    }
    fn sink(&self) -> anyhow::Result<MemorySink> {
        Ok(self.producer())
    }
    async fn ensure_topics(&self, specs: &[TopicSpec]) -> anyhow::Result<()> {
        Ok(TopicAdmin::ensure_topics(self, specs).await?)
    }
}

/// `notiflow deliver` on Kafka, with the tenant registry, until interrupted (or idle).
pub async fn run(config: &Config, exit_when_idle: Option<Duration>) -> anyhow::Result<DeliverTotals> {
    let kafka = config.kafka.as_ref().context("notiflow deliver needs [kafka] in the config")?;
    let tenants_topic = config.topics.resolve(crate::tenants::TENANTS_TOPIC);
    let specs = [TopicSpec { compacted: true, ..TopicSpec::new(&tenants_topic, 1) }];
    KafkaAdmin::new(kafka)?.ensure_topics(&specs).await?;
    let claims_topic = config.topics.resolve(quota_ledger::CLAIMS_TOPIC);
    let tenants = tenant_rules::TenantRules::start(kafka, &tenants_topic, &claims_topic).await?;
    run_on(config, &KafkaBus(kafka), tenants, exit_when_idle, crate::shutdown::requested()).await
}

/// Delivers what the dispatch topics on `bus` hold until `interrupt` resolves, or until idle
/// for `exit_when_idle` with nothing unfinished.
pub async fn run_on<B: Bus>(
    config: &Config,
    bus: &B,
    tenants: tenant_rules::TenantRules,
    exit_when_idle: Option<Duration>,
    interrupt: impl Future<Output = ()>,
) -> anyhow::Result<DeliverTotals> {
    let delivery = &config.delivery;
    delivery.use_proxy().map_err(|e| anyhow::anyhow!("[delivery]: {e}"))?;
    let mut groups = delivery.provider_groups().map_err(|e| anyhow::anyhow!("[delivery]: {e}"))?;
    let resolve = |name: &str| -> Arc<str> { Arc::from(config.topics.resolve(name)) };
    let inbox = config.inbox.as_ref().map(|_| resolve(crate::inbox::INBOX_TOPIC));
    let mut topics =
        Topics { sends: resolve("notify.sends"), events: resolve(&config.topics.events), dlq: resolve("notify.dlq"), inbox: inbox.clone(), parked: BTreeMap::new() };
    let sink = Arc::new(bus.sink()?);
    if let Some(inbox) = &inbox {
        let journal = Arc::new(SinkJournal::new(sink.clone(), inbox, None));
        groups.push(Arc::new(ProviderGroup::one(InboxChannel::new(journal))));
    }
    anyhow::ensure!(!groups.is_empty(), "[delivery]: no providers configured (and no [inbox])");
    // One name renamed as a whole (`notify.dispatch.parked`), suffixed per channel.
    let parked_prefix = config.topics.resolve("notify.dispatch.parked");
    topics.parked = groups.iter().map(|g| (g.channel().to_string(), Arc::from(format!("{parked_prefix}.{}", g.channel())))).collect();
    let lane_topics: Vec<(Lane, Arc<str>)> = Lane::ALL.iter().map(|lane| (*lane, resolve(&format!("notify.dispatch.{}", lane.as_str())))).collect();
    let specs: Vec<TopicSpec> = lane_topics
        .iter()
        .map(|(_, t)| t.to_string())
        .chain([topics.sends.to_string(), topics.events.to_string(), topics.dlq.to_string()])
        .chain(topics.inbox.iter().map(|t| t.to_string()))
        .chain(topics.parked.values().map(|t| t.to_string()))
        .map(|name| TopicSpec::new(name, config.topics.partitions))
        .collect();
    bus.ensure_topics(&specs).await?;

    let tracker = config.tracking.as_ref().map(ClickTracker::new).transpose()?.map(Arc::new);
    let tenants = Arc::new(tenants);
    let (done_tx, done_rx) = mpsc::channel::<Done<Token>>(4096);
    // Every reader's partitions count: under a rate limit most deliveries go through the parked topics.
    let readers_topics = lane_topics.len() + topics.parked.len();
    let share = Arc::new(rate_share::RateShare::new(groups.clone(), readers_topics * config.topics.partitions.max(1) as usize));
    let scheduler = Arc::new(Scheduler::start(groups, delivery.retry_policy(), delivery.workers_per_channel, delivery.lane_capacity, done_tx));
    tenants.sync_accounts(&scheduler);
    let channels: Vec<String> = scheduler.channels().map(str::to_string).collect();
    tracing::info!(?channels, "delivering");
    let (skip_tx, skip_rx) = mpsc::channel::<Output>(4096);
    let progress: Arc<Mutex<Progress>> = Arc::default();
    let last_read = Arc::new(AtomicI64::new(now_ms()));
    let (stop_tx, stop) = watch::channel(false);
    let totals = Arc::new(Mutex::new(DeliverTotals::default()));

    let mut readers = Vec::new();
    let lane_readers = lane_topics.iter().map(|(lane, topic)| (ReaderKind::Lane(*lane), format!("{}.{}", delivery.group_id, lane.as_str()), topic.clone()));
    let parked_readers = topics.parked.iter().map(|(channel, topic)| (ReaderKind::Parked, format!("{}.parked.{channel}", delivery.group_id), topic.clone()));
    for (kind, group, topic) in lane_readers.chain(parked_readers).collect::<Vec<_>>() {
        let mut source = bus.source(&group, &topic)?;
        let handed_over = progress.clone();
        source.commit_on_revoke(Box::new(move |revoked| handed_over.lock().unwrap_or_else(|e| e.into_inner()).committable_of(revoked)));
        let reader = LaneReader {
            kind,
            topic: topic.clone(),
            scheduler: scheduler.clone(),
            skip: skip_tx.clone(),
            progress: progress.clone(),
            last_read: last_read.clone(),
            totals: totals.clone(),
            tracker: tracker.clone(),
            tenants: tenants.clone(),
            share: share.clone(),
        };
        readers.push(tokio::spawn(reader.run(source, stop.clone(), Duration::from_millis(delivery.commit_interval_ms))));
    }
    drop(skip_tx);
    crate::metrics_http::mark_ready();
    let writer = tokio::spawn(write_outputs(done_rx, skip_rx, sink, topics, progress.clone(), totals.clone()));

    // Until interrupted, or idle with nothing unfinished.
    let mut interrupted = Box::pin(interrupt);
    loop {
        tokio::select! {
            _ = &mut interrupted => { tracing::info!("interrupt: finishing deliveries in progress"); break; }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        // A reader that failed ends the run (with its error, below): none may stop unnoticed.
        if readers.iter().any(|r| r.is_finished()) || writer.is_finished() {
            break;
        }
        if let Some(idle) = exit_when_idle {
            let quiet = now_ms() - last_read.load(Ordering::Relaxed) >= idle.as_millis() as i64;
            if quiet && progress.lock().unwrap_or_else(|e| e.into_inner()).unfinished() == 0 {
                break;
            }
        }
    }
    let _ = stop_tx.send(true);
    let mut sources = Vec::new();
    for reader in readers {
        sources.push(reader.await.context("lane reader")??);
    }
    let scheduler = Arc::into_inner(scheduler).context("scheduler still shared")?;
    scheduler.drain().await;
    writer.await.context("writer")??;
    // Everything finished is written: commit it.
    for (topic, source) in &mut sources {
        let offsets = progress.lock().unwrap_or_else(|e| e.into_inner()).committable(topic);
        source.commit(&offsets).await?;
    }
    let totals = totals.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(totals)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// What a reader reads: a dispatch lane (never waits for a channel), or a
/// channel's parked topic (waits for that channel only).
#[derive(Clone, Copy)]
enum ReaderKind {
    Lane(Lane),
    Parked,
}

struct LaneReader {
    kind: ReaderKind,
    /// The topic it reads (its consumer commits only that topic's offsets).
    topic: Arc<str>,
    scheduler: Arc<Scheduler<Token>>,
    skip: mpsc::Sender<Output>,
    progress: Arc<Mutex<Progress>>,
    last_read: Arc<AtomicI64>,
    totals: Arc<Mutex<DeliverTotals>>,
    /// Rewrites links on tracked channels ([tracking]).
    tracker: Option<Arc<ClickTracker>>,
    /// Tenants' senders and messages per day per channel (tenant registry).
    tenants: Arc<tenant_rules::TenantRules>,
    /// This instance's share of the providers' rate limits, from the partitions it reads.
    share: Arc<rate_share::RateShare>,
}

impl LaneReader {
    /// Reads its lane until told to stop; returns its topic and source for the final commit.
    async fn run<S: Source>(self, mut source: S, mut stop: watch::Receiver<bool>, commit_every: Duration) -> anyhow::Result<(Arc<str>, S)> {
        let limits = BatchLimits { max_records: 1000, max_wait: Duration::from_millis(50) };
        let mut committed_at = Instant::now();
        while !*stop.borrow() {
            let batch = tokio::select! {
                batch = source.next_batch(limits) => batch?,
                _ = stop.changed() => break,
            };
            let changes = source.assignment_changes();
            self.progress.lock().unwrap_or_else(|e| e.into_inner()).rebalanced(&changes);
            self.share.apply(changes);
            if !batch.is_empty() {
                self.last_read.store(now_ms(), Ordering::Relaxed);
                self.totals.lock().unwrap_or_else(|e| e.into_inner()).read += batch.len() as u64;
            }
            let quotas = self.take_quotas(&batch).await?;
            for record in batch {
                let hold = source.hold(&record.topic, record.partition);
                if !self.progress.lock().unwrap_or_else(|e| e.into_inner()).started(&record.topic, record.partition, record.offset, &hold) {
                    metrics::counter!("notiflow_deliver_reread_skipped_total").increment(1);
                    continue;
                }
                self.submit(record, hold, &quotas).await?;
            }
            if committed_at.elapsed() >= commit_every {
                let offsets = self.progress.lock().unwrap_or_else(|e| e.into_inner()).committable(&self.topic);
                match source.commit(&offsets).await {
                    // The brokers are away: the next commit carries these offsets too.
                    Err(err) if err.is_retryable() => tracing::warn!(%err, "committing delivered offsets; retrying at the next commit"),
                    other => other?,
                }
                committed_at = Instant::now();
            }
        }
        Ok((self.topic, source))
    }

    /// Takes today's quota units for the batch's deliveries of tenants with a quota, at once (one
    /// round trip to the claims log per batch); per delivery id, whether it may go. Counted once,
    /// when first read: a parked record was counted by its lane's reader.
    async fn take_quotas(&self, batch: &[Record]) -> anyhow::Result<HashMap<String, Result<(), String>>> {
        if !matches!(self.kind, ReaderKind::Lane(_)) {
            return Ok(HashMap::new());
        }
        #[derive(serde::Deserialize)]
        struct Head {
            #[serde(rename = "type")]
            kind: String,
            tenant: String,
            channel: Option<String>,
            delivery_id: Option<String>,
        }
        let quoted: Vec<tenant_rules::Quoted> = batch
            .iter()
            .filter_map(|record| serde_json::from_slice::<Head>(record.payload.as_deref()?).ok())
            .filter(|head| head.kind != "recall")
            .filter_map(|head| {
                let channel = head.channel?;
                self.tenants.quota(&head.tenant, &channel)?;
                Some(tenant_rules::Quoted { tenant: head.tenant, channel, delivery_id: head.delivery_id? })
            })
            .collect();
        self.tenants.take(quoted).await
    }

    async fn submit(&self, record: Record, hold: Hold, quotas: &HashMap<String, Result<(), String>>) -> anyhow::Result<()> {
        let lane = match self.kind {
            ReaderKind::Lane(lane) => lane,
            ReaderKind::Parked => {
                let header = record.headers.iter().find(|h| h.name == LANE_HEADER);
                header.and_then(|h| std::str::from_utf8(&h.value).ok()).and_then(Lane::parse).unwrap_or(Lane::Low)
            }
        };
        let skip = |record, delivery, reason, error: String| Output::Skipped { record, lane, delivery, reason, error };
        let parsed = record.payload.as_deref().map(serde_json::from_slice::<Delivery>);
        let output = match parsed {
            Some(Ok(delivery)) if delivery.kind == "recall" => skip(record, Some(delivery), "recall", String::new()),
            Some(Ok(delivery)) if let Some(Err(error)) = delivery.delivery_id.as_ref().and_then(|id| quotas.get(id)) => {
                let error = error.clone();
                skip(record, Some(delivery), "tenant_quota", error)
            }
            Some(Ok(mut delivery)) => {
                if delivery.sender.is_none() {
                    delivery.sender = self.tenants.sender(&delivery.tenant, delivery.channel.as_deref().unwrap_or_default());
                }
                if let Some(tracker) = &self.tracker {
                    tracker.rewrite(&mut delivery);
                }
                self.tenants.sync_accounts(&self.scheduler);
                let account = self.tenants.account(&delivery.tenant, delivery.channel.as_deref().unwrap_or_default());
                let job = Job { delivery, lane, token: Token { record }, enqueued: Instant::now(), account, hold };
                let queued = match self.kind {
                    ReaderKind::Lane(_) => self.scheduler.try_submit(job),
                    ReaderKind::Parked => self.scheduler.submit(job).await.map_err(Refused::NoProvider),
                };
                match queued {
                    Ok(()) => return Ok(()),
                    Err(Refused::Full(job)) => Output::Parked { record: job.token.record, lane, channel: job.delivery.channel.unwrap_or_default() },
                    Err(Refused::NoProvider(job)) => {
                        let channel = job.delivery.channel.clone().unwrap_or_default();
                        let error = match &job.account {
                            Some(account) => {
                                format!("tenant {}'s {channel} account `{account}` is not a configured provider", job.delivery.tenant)
                            }
                            None => format!("no provider serves channel `{channel}` (besides tenants' own accounts)"),
                        };
                        skip(job.token.record, Some(job.delivery), "no_provider", error)
                    }
                }
            }
            Some(Err(e)) => skip(record, None, "decode_error", e.to_string()),
            None => skip(record, None, "decode_error", "empty record".into()),
        };
        self.skip.send(output).await.map_err(|_| anyhow::anyhow!("writer stopped"))
    }
}

/// Writes sends, events and dead letters in batches, then marks the
/// deliveries finished (so their offsets may be committed).
async fn write_outputs<S: Sink>(
    mut done: mpsc::Receiver<Done<Token>>,
    mut skipped: mpsc::Receiver<Output>,
    sink: Arc<S>,
    topics: Topics,
    progress: Arc<Mutex<Progress>>,
    totals: Arc<Mutex<DeliverTotals>>,
) -> anyhow::Result<()> {
    let (mut done_open, mut skipped_open) = (true, true);
    while done_open || skipped_open {
        let first = tokio::select! {
            d = done.recv(), if done_open => match d { Some(d) => Output::Done(d), None => { done_open = false; continue; } },
            s = skipped.recv(), if skipped_open => match s { Some(s) => s, None => { skipped_open = false; continue; } },
        };
        let mut batch = vec![first];
        while batch.len() < 1000 {
            match done.try_recv().map(Output::Done).or_else(|_| skipped.try_recv()) {
                Ok(output) => batch.push(output),
                Err(_) => break,
            }
        }
        let mut records = Vec::with_capacity(batch.len() * 2);
        let mut ended = Vec::with_capacity(batch.len());
        {
            let mut totals = totals.lock().unwrap_or_else(|e| e.into_inner());
            for output in &batch {
                let (record, finished) = outputs_of(output, &topics, &mut records, &mut totals);
                ended.push((record.topic.clone(), record.partition, record.offset, finished));
            }
        }
        // Transient broker trouble: keep trying; nothing is marked finished until written.
        let mut wait = Duration::from_millis(100);
        while let Err(err) = sink.send_all(records.clone()).await {
            anyhow::ensure!(err.is_retryable(), "writing send results: {err}");
            tracing::warn!(%err, "writing send results; retrying");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
        let mut progress = progress.lock().unwrap_or_else(|e| e.into_inner());
        for (topic, partition, offset, finished) in ended {
            // Not finished (its partition moved): read again, it starts again.
            if finished {
                progress.finished(&topic, partition, offset);
            }
        }
    }
    Ok(())
}

/// The records one output becomes; returns its source record, and whether the output finished it (false: it was
/// dropped unsent or between attempts because its partition moved, and is not finished here).
fn outputs_of<'a>(output: &'a Output, topics: &Topics, records: &mut Vec<OutRecord>, totals: &mut DeliverTotals) -> (&'a Record, bool) {
    match output {
        Output::Done(done) => {
            let record = &done.job.token.record;
            let delivery = &done.job.delivery;
            let key = delivery.delivery_id.as_deref().unwrap_or(&delivery.message_id).as_bytes().to_vec();
            for result in &done.results {
                metrics::counter!("notiflow_sends_total", "channel" => result.channel.clone(), "provider" => result.provider.clone(), "status" => result.status)
                    .increment(1);
                let payload = serde_json::to_vec(result).expect("send results serialize");
                // An accepted attempt is keyed like its receipts (provider message id), so stage 50
                // finds both in the same partition.
                let key = result.provider_message_id.as_deref().map_or_else(|| key.clone(), |id| id.as_bytes().to_vec());
                records.push(OutRecord { topic: topics.sends.clone(), key: Some(key), payload, headers: vec![] });
            }
            totals.attempts += done.results.len() as u64;
            let last: Option<&SendResult> = done.results.last();
            let (event, reason) = match &done.outcome {
                Final::Accepted(_) => ("sent", None),
                Final::Failed(reason) => ("send_failed", Some(reason.as_str())),
                // Its partition moved: the attempts made are on record, the new owner ends it.
                Final::Released => return (record, false),
            };
            let mut fields = event_fields(event, delivery, record, done.job.lane);
            fields["provider"] = json!(last.map(|r| r.provider.as_str()));
            fields["provider_message_id"] = json!(last.and_then(|r| r.provider_message_id.as_deref()));
            fields["attempts"] = json!(done.results.len());
            fields["handoff_ms"] = json!(done.handoff.as_secs_f64() * 1e3);
            if let Some(reason) = reason {
                fields["reason"] = json!(reason);
                fields["provider_code"] = json!(last.and_then(|r| r.provider_code.as_deref()));
                totals.failed += 1;
                let detail = format!("{reason} after {} attempts", done.results.len());
                let rejected = Rejected { reason, error: &detail, tenant: Some(&delivery.tenant), request_id: Some(&delivery.request_id), udf: None };
                records.push(dead_letter(record, &rejected, &topics.dlq));
            } else {
                totals.accepted += 1;
            }
            records.push(event_record(&fields, &delivery.message_id, &topics.events));
            (record, true)
        }
        Output::Parked { record, lane, channel } => {
            totals.parked += 1;
            let mut headers: Vec<Header> = record.headers.iter().filter(|h| h.name != LANE_HEADER).cloned().collect();
            headers.push(Header::new(LANE_HEADER, lane.as_str()));
            let topic = topics.parked.get(channel).expect("a parked topic per channel with a provider").clone();
            records.push(OutRecord { topic, key: record.key.clone(), payload: record.payload.clone().unwrap_or_default(), headers });
            (record, true)
        }
        Output::Skipped { record, lane, delivery, reason, error } => {
            if *reason == "recall" {
                totals.recalls += 1;
                if let (Some(inbox), Some(recall)) = (&topics.inbox, delivery) {
                    records.push(notiflow_inbox::op_record(&InboxChannel::recall(recall), inbox));
                }
                return (record, true);
            }
            totals.not_sendable += 1;
            let rejected = Rejected {
                reason,
                error,
                tenant: delivery.as_ref().map(|d| d.tenant.as_str()),
                request_id: delivery.as_ref().map(|d| d.request_id.as_str()),
                udf: None,
            };
            records.push(dead_letter(record, &rejected, &topics.dlq));
            if let Some(delivery) = delivery {
                let mut fields = event_fields("send_failed", delivery, record, *lane);
                fields["reason"] = json!(reason);
                records.push(event_record(&fields, &delivery.message_id, &topics.events));
            }
            (record, true)
        }
    }
}

fn event_fields(event: &str, delivery: &Delivery, record: &Record, lane: Lane) -> serde_json::Value {
    json!({
        "event": event,
        "message_id": delivery.message_id,
        "delivery_id": delivery.delivery_id,
        "tenant": delivery.tenant,
        "request_id": delivery.request_id,
        "kind": delivery.kind,
        "priority": lane.as_str(),
        "category": delivery.category,
        "recipient": delivery.recipient,
        "channel": delivery.channel,
        "source": source_of(record),
        "at": crate::events::now_rfc3339(),
    })
}

fn event_record(fields: &serde_json::Value, message_id: &str, events: &Arc<str>) -> OutRecord {
    OutRecord { topic: events.clone(), key: Some(message_id.as_bytes().to_vec()), payload: fields.to_string().into_bytes(), headers: vec![] }
}
