//! `notiflow bench`: throughput, latency and memory of the engine, each case
//! measured in the same run as the baseline it is compared with (a raw
//! rdkafka consume -> produce passthrough through the same broker).
//! Figures are what this machine did in this run; nothing here is asserted.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, Int32Array, RecordBatch, StringArray, TimestampNanosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::physical_expr::expressions::Column;
use notiflow_connector::memory::MemoryBroker;
use notiflow_connector::{AssignmentChange, BatchLimits, LogReader, Offsets, OutRecord, Record, Sink, Source, TopicAdmin, TopicSpec};
use notiflow_kafka::{KafkaAdmin, KafkaConfig, KafkaSink, KafkaSource};
use tokio::sync::watch;

use crate::config::Config;
use crate::engine::row_number::{LineageColumns, RowNumberLimit, WindowKind};
use crate::job::{BatchProcessor, StopWhen, run_job};
use crate::samples::sample_requests;

pub struct BenchOptions {
    /// Run only the cases whose name contains this text.
    pub only: Option<String>,
    /// Requests per second for the latency cases (one case per rate).
    pub rates: Vec<usize>,
    /// Broker for the Kafka cases; `None` runs the compute-only cases.
    pub brokers: Option<String>,
    /// ClickHouse HTTP URL for the sink cases; `None` skips them.
    pub clickhouse: Option<String>,
    pub records: usize,
    /// Distinct keys for the dedupe case.
    pub dedupe_keys: usize,
    pub sql_dir: PathBuf,
    /// Pipeline members (threads in one consumer group) for the whole-pipeline
    /// cases, one case per count.
    pub workers: Vec<usize>,
}

#[derive(Debug, Clone)]
pub struct CaseResult {
    pub name: String,
    pub records: usize,
    pub seconds: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Latency samples behind p50/p99/max.
    pub samples: usize,
    pub peak_rss_mb: Option<f64>,
    pub note: String,
}

impl CaseResult {
    /// A throughput case (no latency samples), with this process's peak RSS.
    fn throughput(name: String, records: usize, seconds: f64, note: String) -> Self {
        CaseResult { name, records, seconds, p50_ms: None, p99_ms: None, max_ms: None, samples: 0, peak_rss_mb: peak_rss_mb(), note }
    }

    pub fn rate(&self) -> f64 {
        self.records as f64 / self.seconds.max(1e-9)
    }
}

/// Resets the kernel's peak-RSS mark (Linux: `5` to clear_refs) so each case gets its own peak.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn proc_status_mb(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub(crate) fn peak_rss() -> Option<f64> {
    peak_rss_mb()
}

fn peak_rss_mb() -> Option<f64> {
    proc_status_mb("VmHWM:")
}

fn current_rss_mb() -> Option<f64> {
    proc_status_mb("VmRSS:")
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    Some(sorted[rank.min(sorted.len() - 1)])
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Wraps a processor to measure latency up to the moment a batch's outputs
/// are acknowledged: from each record read's producer timestamp, or, with
/// `end_to_end`, from the request time (`requested_at`) of each output on
/// those topics (a request's whole way through every stage and topic hop).
struct Timed<P> {
    inner: P,
    end_to_end: Option<Vec<Arc<str>>>,
    /// Start times (ms) of each batch in flight, oldest first.
    pending: std::collections::VecDeque<Vec<i64>>,
    latencies_ms: Vec<f64>,
    /// When the first record was processed and the last outputs acknowledged:
    /// throughput is counted between them (group joins and idle ends are not work).
    first_record: Option<Instant>,
    last_ack: Option<Instant>,
}

impl<P> Timed<P> {
    fn per_record(inner: P) -> Self {
        Timed { inner, end_to_end: None, pending: Default::default(), latencies_ms: vec![], first_record: None, last_ack: None }
    }

    /// What this member measured, to be combined with the other members'.
    fn measured(self, records_in: u64) -> Measured {
        Measured { records_in, first_record: self.first_record, last_ack: self.last_ack, latencies_ms: self.latencies_ms }
    }

    fn end_to_end(inner: P, topics: Vec<Arc<str>>) -> Self {
        Timed { inner, end_to_end: Some(topics), pending: Default::default(), latencies_ms: vec![], first_record: None, last_ack: None }
    }
}

/// What the members of one case measured together.
#[derive(Default)]
struct Measured {
    records_in: u64,
    first_record: Option<Instant>,
    last_ack: Option<Instant>,
    latencies_ms: Vec<f64>,
}

impl Measured {
    fn add(mut self, member: Measured) -> Measured {
        self.records_in += member.records_in;
        self.first_record = self.first_record.into_iter().chain(member.first_record).min();
        self.last_ack = self.last_ack.into_iter().chain(member.last_ack).max();
        self.latencies_ms.extend(member.latencies_ms);
        self
    }

    /// Seconds from the first record any member processed to the last outputs any acknowledged.
    fn busy_seconds(&self) -> f64 {
        self.first_record.zip(self.last_ack).map(|(a, b)| b.saturating_duration_since(a).as_secs_f64()).unwrap_or(0.0)
    }

    fn sorted_latencies(&mut self) -> Vec<f64> {
        self.latencies_ms.sort_by(f64::total_cmp);
        std::mem::take(&mut self.latencies_ms)
    }
}

/// Runs `workers` members of a case (`crate::workers`: a thread and runtime
/// each, one consumer group) and combines what they measured.
fn members<F, Fut>(workers: usize, stop: &watch::Sender<bool>, member: F) -> anyhow::Result<Measured>
where
    F: Fn(usize) -> Fut + Sync,
    Fut: Future<Output = anyhow::Result<Measured>>,
{
    let measured = tokio::task::block_in_place(|| crate::workers::on_threads(workers, "bench-member", stop, member))?;
    Ok(measured.into_iter().fold(Measured::default(), Measured::add))
}

/// Case names: one member is the plain name.
fn with_workers(name: &str, workers: usize) -> String {
    if workers == 1 { name.to_string() } else { format!("{name}, {workers} workers") }
}

/// `requested_at` of an output row (JSON, `YYYY-MM-DDTHH:MM:SS.fff`), in ms.
fn requested_at_ms(payload: &[u8]) -> Option<i64> {
    const FIELD: &[u8] = br#""requested_at":""#;
    let at = payload.windows(FIELD.len()).position(|w| w == FIELD)? + FIELD.len();
    let end = at + payload[at..].iter().position(|&b| b == b'"')?;
    let text = std::str::from_utf8(&payload[at..end]).ok()?.trim_end_matches('Z');
    let time = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f").ok()?;
    Some(time.and_utc().timestamp_millis())
}

impl<P: BatchProcessor> BatchProcessor for &mut P {
    async fn process(&mut self, records: &[Record], out: &mut Vec<OutRecord>) -> anyhow::Result<()> {
        (**self).process(records, out).await
    }

    fn durable(&mut self, written: &notiflow_connector::Positions, consumed: &Offsets) -> anyhow::Result<Option<crate::job::Commit>> {
        (**self).durable(written, consumed)
    }

    fn finish(&mut self) -> anyhow::Result<Option<crate::job::Commit>> {
        (**self).finish()
    }

    fn timers_due(&self) -> bool {
        (**self).timers_due()
    }

    fn commit_due(&self) -> bool {
        (**self).commit_due()
    }

    fn acked(&mut self) {
        (**self).acked()
    }

    async fn rebalance(&mut self, changes: Vec<notiflow_connector::AssignmentChange>) -> anyhow::Result<()> {
        (**self).rebalance(changes).await
    }
}

impl<P: BatchProcessor> BatchProcessor for Timed<P> {
    async fn process(&mut self, records: &[Record], out: &mut Vec<OutRecord>) -> anyhow::Result<()> {
        if !records.is_empty() {
            self.first_record.get_or_insert_with(Instant::now);
        }
        self.inner.process(records, out).await?;
        let starts = match &self.end_to_end {
            None => records.iter().filter_map(|r| r.timestamp_ms).collect(),
            Some(topics) => out.iter().filter(|r| topics.contains(&r.topic)).filter_map(|r| requested_at_ms(&r.payload)).collect(),
        };
        self.pending.push_back(starts);
        Ok(())
    }

    fn acked(&mut self) {
        let now = now_ms();
        if let Some(starts) = self.pending.pop_front() {
            if !starts.is_empty() {
                self.last_ack = Some(Instant::now());
            }
            self.latencies_ms.extend(starts.into_iter().map(|t| (now - t) as f64));
        }
        self.inner.acked();
    }

    fn durable(&mut self, written: &notiflow_connector::Positions, consumed: &Offsets) -> anyhow::Result<Option<crate::job::Commit>> {
        self.inner.durable(written, consumed)
    }

    fn finish(&mut self) -> anyhow::Result<Option<crate::job::Commit>> {
        self.inner.finish()
    }

    fn timers_due(&self) -> bool {
        self.inner.timers_due()
    }

    fn commit_due(&self) -> bool {
        self.inner.commit_due()
    }

    async fn rebalance(&mut self, changes: Vec<notiflow_connector::AssignmentChange>) -> anyhow::Result<()> {
        self.inner.rebalance(changes).await
    }
}

/// Copies every record to one output topic unchanged: the baseline. It
/// commits offsets once a second, like `notiflow run` (checkpoint interval).
struct Passthrough {
    topic: Arc<str>,
    consumed: Offsets,
    last_commit: Instant,
}

impl BatchProcessor for Passthrough {
    async fn process(&mut self, records: &[Record], out: &mut Vec<OutRecord>) -> anyhow::Result<()> {
        out.extend(records.iter().map(|r| OutRecord {
            topic: self.topic.clone(),
            key: r.key.clone(),
            payload: r.payload.clone().unwrap_or_default(),
            headers: vec![],
        }));
        Ok(())
    }

    fn durable(&mut self, _: &notiflow_connector::Positions, consumed: &Offsets) -> anyhow::Result<Option<crate::job::Commit>> {
        self.consumed.merge(consumed);
        if self.last_commit.elapsed() < CHECKPOINT_INTERVAL {
            return Ok(None);
        }
        self.last_commit = Instant::now();
        Ok(Some(crate::job::Commit::offsets(self.consumed.clone())))
    }

    fn finish(&mut self) -> anyhow::Result<Option<crate::job::Commit>> {
        Ok(Some(crate::job::Commit::offsets(self.consumed.clone())))
    }

    fn timers_due(&self) -> bool {
        false
    }

    fn commit_due(&self) -> bool {
        self.last_commit.elapsed() >= CHECKPOINT_INTERVAL
    }
}

/// Pipelines checkpoint (and commit) at `notiflow run`'s default interval.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

fn request_records(topic: &Arc<str>, count: usize, max_bytes: usize) -> Vec<OutRecord> {
    sample_requests(count, 0, max_bytes)
        .into_iter()
        .map(|s| OutRecord { topic: topic.clone(), key: Some(s.key), payload: s.payload, headers: vec![] })
        .collect()
}

/// The raw rdkafka loop every broker case is compared with.
const RAW_LOOP: &str = "raw rdkafka loop: BaseConsumer -> BaseProducer, one thread (baseline)";
/// The same loop with an idempotent producer, the guarantee notiflow's sink has.
const RAW_IDEMPOTENT: &str = "raw rdkafka loop, idempotent producer (notiflow's sink guarantee)";

pub async fn run(options: &BenchOptions) -> anyhow::Result<Vec<CaseResult>> {
    let mut results = Vec::new();
    let wanted = |name: &str| options.only.as_ref().is_none_or(|o| name.contains(o.as_str()));
    if let Some(brokers) = &options.brokers {
        let kafka = KafkaConfig::new(brokers.clone());
        if wanted(RAW_LOOP) {
            results.push(raw_loop_case(&kafka, options, RAW_LOOP, false).await?);
        }
        if wanted(RAW_IDEMPOTENT) {
            results.push(raw_loop_case(&kafka, options, RAW_IDEMPOTENT, true).await?);
        }
        for (name, sql) in [
            ("job-loop passthrough (notiflow's Kafka source, job loop and sink; no SQL)", None),
            ("stateless SQL stage (project + filter)", Some(stateless_sql()?)),
        ] {
            if wanted(name) {
                results.push(kafka_case(&kafka, name, options, sql, 1).await?);
            }
        }
        for &workers in &options.workers {
            let name = with_workers("whole request pipeline over the broker (sql/: 4 stages, topic hops, example catalog)", workers);
            if wanted(&name) {
                results.push(kafka_case(&kafka, &name, options, Some(options.sql_dir.clone()), workers).await?);
            }
        }
        for &rate in &options.rates {
            for &workers in &options.workers {
                let name = with_workers(&format!("whole request pipeline at {rate} requests/s over the broker (latency: request -> dispatch ack)"), workers);
                if wanted(&name) {
                    results.push(latency_case(&kafka, &name, options, rate, workers).await?);
                }
            }
            let name = format!("two-hop raw rdkafka chain at {rate} records/s (latency floor: producer -> 2nd hop ack)");
            if wanted(&name) {
                results.push(raw_chain_case(&kafka, &name, rate).await?);
            }
        }
        if wanted("gateway") {
            reset_peak_rss();
            results.extend(crate::gateway::bench::single_sends(&kafka, options.records.min(100_000)).await?);
        }
    }
    if let Some(url) = &options.clickhouse {
        if wanted("sink: rows into ClickHouse and Parquet") {
            reset_peak_rss();
            results.extend(crate::warehouse::bench::sink_throughput(url, options.records).await?);
        }
    }
    for &workers in &options.workers {
        if wanted(&with_workers("whole request pipeline, in-process", workers)) {
            results.push(in_process_pipeline(options, workers).await?);
        }
    }
    for &rate in &options.rates {
        for &workers in &options.workers {
            let name = with_workers(&format!("whole request pipeline at {rate} requests/s, in-process source and sink (engine latency)"), workers);
            if wanted(&name) {
                results.push(in_process_latency(options, &name, rate, workers).await?);
            }
        }
    }
    if wanted("priority") {
        reset_peak_rss();
        results.extend(crate::deliver::bench::priority_handoff(1_000_000).await?);
    }
    if wanted("fairness") {
        reset_peak_rss();
        results.extend(crate::deliver::bench::tenant_fairness(1_000_000).await?);
    }
    if wanted("interval join") {
        results.push(in_process_join(options.records).await?);
    }
    if wanted("UDF") {
        results.extend(udf_overhead(options.records.max(1_000_000)).await?);
    }
    for kind in [WindowKind::Tumbling, WindowKind::Sliding] {
        if wanted(&format!("dedupe operator, {}", if kind == WindowKind::Tumbling { "tumbling" } else { "sliding" })) {
            results.push(dedupe_operator(options.dedupe_keys, kind)?);
        }
    }
    Ok(results)
}

/// A pipeline on the broker with topics of its own (every topic it reads or
/// writes renamed with `prefix`), the example catalog published, lookups
/// loaded and checkpoints on: as `notiflow run` starts. Returns the config,
/// the run and a source over every stream topic (stages hop through topics).
async fn pipeline_on_broker(kafka: &KafkaConfig, prefix: &str, sql_dir: &std::path::Path, name: &str) -> anyhow::Result<BrokerPipeline> {
    let mut config = Config::embedded();
    config.kafka = Some(kafka.clone());
    config.topics.partitions = 2;
    let probe = crate::load_pipeline(sql_dir, &config).await?;
    let mut logical = probe.source_topics();
    logical.extend(probe.output_topics());
    config.topics.rename = logical.iter().map(|t| (t.clone(), format!("{prefix}.{t}"))).collect();
    let run = crate::load_pipeline(sql_dir, &config).await?;
    KafkaAdmin::new(kafka)?.ensure_topics(&crate::topic_specs(&run, &config)).await?;
    let catalog: Vec<OutRecord> =
        crate::demo::catalog_records(&config)?.into_iter().filter(|r| logical.iter().any(|t| config.topics.resolve(t) == r.topic.as_ref())).collect();
    KafkaSink::new(kafka)?.send_all(catalog).await?;
    let state_topic = format!("notiflow-bench-state-{}-{name}-{}", std::process::id(), now_ms());
    KafkaAdmin::new(kafka)?.ensure_topics(&[notiflow_connector::TopicSpec { name: state_topic.clone(), partitions: 1, compacted: true }]).await?;
    // Members share the state topic, so a partition's state follows it on a rebalance.
    let stream_partitions = run.stream_topics().len() * config.topics.partitions as usize;
    Ok(BrokerPipeline { kafka: kafka.clone(), config, sql_dir: sql_dir.to_path_buf(), group: format!("{prefix}-group"), state_topic, stream_partitions })
}

/// The request pipeline set up on the broker (topics, catalog, state topic),
/// ready for members of its consumer group.
struct BrokerPipeline {
    kafka: KafkaConfig,
    config: Config,
    sql_dir: PathBuf,
    group: String,
    state_topic: String,
    /// Partitions of the topics the pipeline consumes (shared by the members).
    stream_partitions: usize,
}

impl BrokerPipeline {
    /// One member: its own plans, lookup tables, consumer and checkpoints.
    async fn member(&self) -> anyhow::Result<(crate::engine::PipelineRun, KafkaSource)> {
        let mut run = crate::load_pipeline(&self.sql_dir, &self.config).await?;
        let lookups = run.prepare(&notiflow_kafka::KafkaReader::new(&self.kafka)).await?;
        let checkpointing = crate::engine::Checkpointing {
            state: crate::engine::checkpoint::StateTopic::new(self.state_topic.clone()),
            interval: CHECKPOINT_INTERVAL,
        };
        run.enable_checkpoints(checkpointing, crate::logs::Logs::Kafka(notiflow_kafka::KafkaReader::new(&self.kafka))).await?;
        let topics = run.stream_topics();
        let source = KafkaSource::new(&self.kafka, &self.group, &topics.iter().map(String::as_str).collect::<Vec<_>>(), "earliest")?
            .follow(&self.kafka, &lookups)?;
        Ok((run, source))
    }
}

/// Produces `records` at `rate` per second in 10 ms ticks without waiting for
/// acknowledgements between ticks (each record's timestamp is its send time);
/// resolves once all are acknowledged.
fn paced_producer(kafka: &KafkaConfig, records: Vec<OutRecord>, rate: usize) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let producer = KafkaSink::new(kafka)?;
    let per_tick = (rate / 100).max(1);
    Ok(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(10));
        let mut acks = Vec::new();
        for chunk in records.chunks(per_tick) {
            ticker.tick().await;
            acks.push(producer.submit(chunk.to_vec()).await?);
        }
        for ack in acks {
            ack.await?;
        }
        anyhow::Ok(())
    }))
}

/// Reads (empty) batches until the consumer group has given this member its
/// share (`share` stream partitions) and every member has its share, handing
/// each change to the pipeline: a paced producer started after this measures
/// the pipeline, not the group join.
async fn join_group(run: &mut crate::engine::PipelineRun, source: &mut KafkaSource, share: usize, joined: &JoinedMembers) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut assigned = std::collections::BTreeSet::new();
    let mut counted = false;
    loop {
        let batch = source.next_batch(BatchLimits { max_records: 1, max_wait: Duration::from_millis(100) }).await?;
        anyhow::ensure!(batch.is_empty(), "records arrived before the producer started");
        let changes = source.assignment_changes();
        for change in &changes {
            match change {
                AssignmentChange::Assigned(partitions) => assigned.extend(partitions.iter().cloned()),
                AssignmentChange::Revoked(partitions) => partitions.iter().for_each(|p| {
                    assigned.remove(p);
                }),
            }
        }
        if !changes.is_empty() {
            run.rebalance(changes).await?;
        }
        if assigned.len() == share && !counted {
            counted = true;
            joined.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        if counted && joined.count.load(std::sync::atomic::Ordering::SeqCst) == joined.members {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the group did not settle on {} members within 60 s", joined.members);
    }
}

/// How many members of a case have their share of the partitions.
struct JoinedMembers {
    members: usize,
    count: std::sync::atomic::AtomicUsize,
}

/// The request pipeline over the broker while a producer writes at a fixed
/// rate: latency from each request's producer timestamp to the moment each of
/// its deliveries is acknowledged on a dispatch topic (every stage and topic
/// hop on the way).
async fn latency_case(kafka: &KafkaConfig, name: &str, options: &BenchOptions, rate: usize, workers: usize) -> anyhow::Result<CaseResult> {
    let prefix = format!("lat_{}_{}", std::process::id(), now_ms());
    let setup = pipeline_on_broker(kafka, &prefix, &options.sql_dir, "latency").await?;
    let input: Arc<str> = Arc::from(setup.config.topics.resolve("notify.requests").as_str());
    let dispatch = dispatch_topics(&setup.config);
    let joined = JoinedMembers { members: workers, count: Default::default() };
    let (all_joined_tx, all_joined) = watch::channel(false);

    // Producer: `rate` requests per second for 5 s, once every member has its partitions.
    let total = rate * 5;
    let records = request_records(&input, total, setup.config.pipeline.max_request_bytes);
    let producing = {
        let kafka = kafka.clone();
        let mut all_joined = all_joined.clone();
        tokio::spawn(async move {
            all_joined.wait_for(|j| *j).await?;
            paced_producer(&kafka, records, rate)?.await?
        })
    };
    let (stop, shutdown) = watch::channel(false);
    let idle = StopWhen::GroupIdleFor(Duration::from_millis(1500), Default::default());
    reset_peak_rss();
    let mut measured = members(workers, &stop, |_member| {
        let (setup, joined, dispatch, shutdown, all_joined_tx, idle) =
            (&setup, &joined, dispatch.clone(), shutdown.clone(), &all_joined_tx, idle.clone());
        async move {
            let (mut run, mut source) = setup.member().await?;
            join_group(&mut run, &mut source, setup.stream_partitions / workers, joined).await?;
            all_joined_tx.send_replace(true);
            let sink = KafkaSink::new(&setup.kafka)?;
            let limits = BatchLimits { max_records: 4096, max_wait: Duration::from_millis(2) };
            let mut timed = Timed::end_to_end(&mut run, dispatch);
            let (records_in, _) = run_job(&mut timed, &mut source, &sink, limits, idle, shutdown).await?;
            Ok(timed.measured(records_in))
        }
    })?;
    producing.await??;
    let latencies = measured.sorted_latencies();
    Ok(CaseResult {
        name: name.into(),
        records: total,
        seconds: measured.busy_seconds(),
        p50_ms: percentile(&latencies, 50.0),
        p99_ms: percentile(&latencies, 99.0),
        max_ms: latencies.last().copied(),
        samples: latencies.len(),
        peak_rss_mb: peak_rss_mb(),
        note: format!(
            "{total} requests ({} records incl. stage hops), {} deliveries timed; {workers} member(s) in one consumer group; client settings: linger.ms {}, fetch.wait.max.ms {}; producer paced in 10 ms ticks, not waiting for acks; latency = request's producer timestamp (ms) -> its delivery acknowledged on a dispatch topic",
            measured.records_in,
            latencies.len(),
            kafka.linger_ms,
            kafka.fetch_wait_max_ms
        ),
    })
}

/// The dispatch topics (as `config` names them): where a request's deliveries end.
fn dispatch_topics(config: &Config) -> Vec<Arc<str>> {
    ["notify.dispatch.high", "notify.dispatch.normal", "notify.dispatch.low"].iter().map(|t| Arc::from(config.topics.resolve(t).as_str())).collect()
}

/// Creates `names` (2 partitions each) under a fresh prefix; returns their full names.
async fn fresh_topics(kafka: &KafkaConfig, kind: &str, names: &[&str]) -> anyhow::Result<Vec<String>> {
    let prefix = format!("{kind}_{}_{}", std::process::id(), now_ms());
    let topics: Vec<String> = names.iter().map(|n| format!("{prefix}.{n}")).collect();
    KafkaAdmin::new(kafka)?.ensure_topics(&topics.iter().map(|t| TopicSpec::new(t.clone(), 2)).collect::<Vec<_>>()).await?;
    Ok(topics)
}

/// The baseline: rdkafka's own consume -> produce loop over the same records
/// (`idempotent`: with the producer guarantee notiflow's sink has).
async fn raw_loop_case(kafka: &KafkaConfig, options: &BenchOptions, name: &str, idempotent: bool) -> anyhow::Result<CaseResult> {
    let topics = fresh_topics(kafka, "raw", &["in", "out"]).await?;
    let input: Arc<str> = Arc::from(topics[0].as_str());
    let records = request_records(&input, options.records, Config::embedded().pipeline.max_request_bytes);
    let mean_bytes = records.iter().map(|r| r.payload.len()).sum::<usize>() / records.len().max(1);
    KafkaSink::new(kafka)?.send_all(records).await?;
    let settings = notiflow_kafka::RawLoop {
        group_id: format!("{}-group", topics[0]),
        input: topics[0].clone(),
        output: topics[1].clone(),
        expected: options.records as u64,
        idle: Duration::from_secs(10),
        keep_timestamps: false,
        idempotent,
    };
    let config = kafka.clone();
    reset_peak_rss();
    let raw = tokio::task::spawn_blocking(move || notiflow_kafka::raw_passthrough(&config, &settings, || {})).await??;
    anyhow::ensure!(raw.records == options.records as u64, "the raw loop copied {} of {} records", raw.records, options.records);
    Ok(CaseResult::throughput(
        name.into(),
        options.records,
        raw.elapsed.as_secs_f64(),
        format!(
            "{} request records (the pipeline's input, {mean_bytes} bytes on average) copied topic -> topic; fetch.wait.max.ms {}, linger.ms {}, {}; first record read -> last acknowledged",
            options.records,
            kafka.fetch_wait_max_ms,
            kafka.linger_ms,
            if idempotent { "idempotent producer (acks=all), as notiflow's sink" } else { "librdkafka's default producer (not idempotent)" }
        ),
    ))
}

/// What latency two raw rdkafka hops (a -> b -> c, as a request's way to a
/// dispatch topic has two) cost on this broker at this rate: the floor the
/// pipeline's latency figure should be read against.
async fn raw_chain_case(kafka: &KafkaConfig, name: &str, rate: usize) -> anyhow::Result<CaseResult> {
    let topics = fresh_topics(kafka, "chain", &["a", "b", "c"]).await?;
    let total = rate * 5;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let hop = |from: usize| {
        let (config, ready) = (kafka.clone(), ready_tx.clone());
        let settings = notiflow_kafka::RawLoop {
            group_id: format!("{}-hop{from}", topics[from]),
            input: topics[from].clone(),
            output: topics[from + 1].clone(),
            expected: total as u64,
            idle: Duration::from_secs(10),
            keep_timestamps: true,
            idempotent: true,
        };
        tokio::task::spawn_blocking(move || {
            notiflow_kafka::raw_passthrough(&config, &settings, move || {
                let _ = ready.send(());
            })
        })
    };
    let (first, second) = (hop(0), hop(1));
    // Both hops own their partitions before the first record is produced.
    tokio::task::spawn_blocking(move || ready_rx.recv().and_then(|_| ready_rx.recv())).await??;
    let input: Arc<str> = Arc::from(topics[0].as_str());
    paced_producer(kafka, request_records(&input, total, Config::embedded().pipeline.max_request_bytes), rate)?.await??;
    let (first, second) = (first.await??, second.await??);
    anyhow::ensure!(second.records == total as u64, "the chain carried {} of {total} records (first hop {})", second.records, first.records);
    let mut latencies = second.latencies_ms;
    latencies.sort_by(f64::total_cmp);
    Ok(CaseResult {
        name: name.into(),
        records: total,
        seconds: second.elapsed.as_secs_f64(),
        p50_ms: percentile(&latencies, 50.0),
        p99_ms: percentile(&latencies, 99.0),
        max_ms: latencies.last().copied(),
        samples: latencies.len(),
        peak_rss_mb: None,
        note: format!(
            "two BaseConsumer -> BaseProducer loops (idempotent producers, as notiflow's sink), each record keeps the first producer's timestamp; linger.ms {}, fetch.wait.max.ms {}; latency = producer timestamp -> second hop's write acknowledged",
            kafka.linger_ms, kafka.fetch_wait_max_ms
        ),
    })
}

/// A one-INSERT stateless pipeline, written to a temp folder.
fn stateless_sql() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("notiflow-bench-stateless-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("10_stateless.sql"),
        "CREATE TABLE requests (request_id TEXT, tenant TEXT, template TEXT, recipients JSON, params JSON, priority TEXT, category TEXT)
         WITH (connector = 'kafka', type = 'source', topic = 'bench.in');
         CREATE TABLE routed (message_id TEXT, tenant TEXT, template TEXT, recipients JSON, params JSON, priority TEXT)
         WITH (connector = 'kafka', type = 'sink', topic = 'bench.out');
         INSERT INTO routed SELECT message_id(tenant, request_id) AS message_id, tenant, template, recipients, params,
             coalesce(priority, 'normal') AS priority, _key
         FROM requests WHERE category <> 'spam';",
    )?;
    Ok(dir)
}

async fn kafka_case(kafka: &KafkaConfig, name: &str, options: &BenchOptions, sql: Option<PathBuf>, workers: usize) -> anyhow::Result<CaseResult> {
    let prefix = format!("bench_{}_{}", std::process::id(), now_ms());
    let limits = BatchLimits { max_records: 4096, max_wait: Duration::from_millis(20) };
    // Idle for the whole group: a member may wait while another still writes to its partitions.
    let stop = StopWhen::GroupIdleFor(Duration::from_millis(1500), Default::default());
    let (stopping, shutdown) = watch::channel(false);
    let measured = match &sql {
        Some(dir) => {
            let setup = pipeline_on_broker(kafka, &prefix, dir, "throughput").await?;
            let logical = if dir == &options.sql_dir { "notify.requests" } else { "bench.in" };
            let input: Arc<str> = Arc::from(setup.config.topics.resolve(logical).as_str());
            // The backlog is written once every member has its partitions: what is
            // timed is the members at work, not a rebalance (a member taking over
            // partitions mid-stream restores their state and re-reads the outputs
            // written since their checkpoint; that is measured on its own elsewhere).
            let joined = JoinedMembers { members: workers, count: Default::default() };
            let (all_joined_tx, mut all_joined) = watch::channel(false);
            let backlog = request_records(&input, options.records, setup.config.pipeline.max_request_bytes);
            let producing = {
                let kafka = kafka.clone();
                tokio::spawn(async move {
                    all_joined.wait_for(|j| *j).await?;
                    KafkaSink::new(&kafka)?.send_all(backlog).await?;
                    anyhow::Ok(())
                })
            };
            reset_peak_rss();
            let measured = members(workers, &stopping, |_member| {
                let (setup, shutdown, stop, joined, all_joined_tx) = (&setup, shutdown.clone(), stop.clone(), &joined, &all_joined_tx);
                async move {
                    let (mut run, mut source) = setup.member().await?;
                    join_group(&mut run, &mut source, setup.stream_partitions / workers, joined).await?;
                    all_joined_tx.send_replace(true);
                    let sink = KafkaSink::new(&setup.kafka)?;
                    let mut timed = Timed::per_record(run);
                    let (n, _) = run_job(&mut timed, &mut source, &sink, limits, stop, shutdown).await?;
                    Ok(timed.measured(n))
                }
            })?;
            producing.await??;
            measured
        }
        None => {
            let mut config = Config::embedded();
            config.topics.rename = ["bench.in", "bench.out"].iter().map(|t| (t.to_string(), format!("{prefix}.{t}"))).collect();
            let input: Arc<str> = Arc::from(config.topics.resolve("bench.in").as_str());
            KafkaAdmin::new(kafka)?.ensure_topics(&["bench.in", "bench.out"].map(|t| TopicSpec::new(config.topics.resolve(t), 2))).await?;
            KafkaSink::new(kafka)?.send_all(request_records(&input, options.records, config.pipeline.max_request_bytes)).await?;
            let mut source = KafkaSource::new(kafka, &format!("{prefix}-group"), &[input.as_ref()], "earliest")?;
            let passthrough =
                Passthrough { topic: Arc::from(config.topics.resolve("bench.out").as_str()), consumed: Offsets::default(), last_commit: Instant::now() };
            let sink = KafkaSink::new(kafka)?;
            let mut timed = Timed::per_record(passthrough);
            reset_peak_rss();
            let (n, _) = run_job(&mut timed, &mut source, &sink, limits, stop, shutdown).await?;
            timed.measured(n)
        }
    };
    // Later stages read what earlier ones wrote: more records than requests.
    anyhow::ensure!(measured.records_in as usize >= options.records, "{name}: consumed {} of {} requests", measured.records_in, options.records);
    Ok(CaseResult::throughput(
        name.into(),
        options.records,
        measured.busy_seconds(),
        format!(
            "{} requests ({} records incl. stage hops) written as one backlog once {workers} member(s) of one consumer group had their partitions; first record processed -> last outputs acknowledged (the group join is not counted, as for the raw loop)",
            options.records, measured.records_in
        ),
    ))
}

/// The request pipeline set up on a fresh in-process log (topics, catalog),
/// ready for members of its consumer group.
struct InProcessPipeline {
    broker: MemoryBroker,
    config: Config,
    sql_dir: PathBuf,
    input: Arc<str>,
    /// Topics whose records the pipeline consumes (shared by the members).
    stream_topics: Vec<String>,
}

const IN_PROCESS_GROUP: &str = "bench";

impl InProcessPipeline {
    async fn new(options: &BenchOptions) -> anyhow::Result<Self> {
        let config = Config::embedded();
        let probe = crate::load_pipeline(&options.sql_dir, &config).await?;
        let broker = MemoryBroker::new();
        broker.ensure_topics(&crate::topic_specs(&probe, &config)).await?;
        broker.append(crate::demo::catalog_records(&config)?)?;
        let input: Arc<str> = Arc::from(config.topics.resolve("notify.requests").as_str());
        Ok(InProcessPipeline { broker, sql_dir: options.sql_dir.clone(), input, stream_topics: probe.stream_topics(), config })
    }

    fn requests(&self, count: usize) -> Vec<OutRecord> {
        request_records(&self.input, count, self.config.pipeline.max_request_bytes)
    }

    /// Member `member` of `members`: its own plans and lookup tables, its share of the partitions.
    async fn member(&self, member: usize, members: usize) -> anyhow::Result<(crate::engine::PipelineRun, notiflow_connector::memory::MemorySource)> {
        let mut run = crate::load_pipeline(&self.sql_dir, &self.config).await?;
        run.prepare(&self.broker).await?;
        let topics = run.source_topics();
        let lookups: Vec<&str> = topics.iter().filter(|t| !self.stream_topics.contains(t)).map(String::as_str).collect();
        let source =
            self.broker.consumer(IN_PROCESS_GROUP, &topics.iter().map(String::as_str).collect::<Vec<_>>()).member_of(member, members, &lookups);
        Ok((run, source))
    }

    /// Whether the group has committed every record of the consumed topics.
    async fn drained(&self) -> anyhow::Result<bool> {
        for topic in &self.stream_topics {
            for (partition, end) in self.broker.end_offsets(topic).await? {
                if self.broker.committed(IN_PROCESS_GROUP, topic, partition).unwrap_or(0) < end {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Raises `stop` once `producing` is done and the group has consumed
    /// everything, stage hops included (members cannot tell by themselves:
    /// one may be idle while another still writes to its partitions).
    fn stop_when_drained(self: &Arc<Self>, stop: watch::Sender<bool>, producing: Option<tokio::task::JoinHandle<anyhow::Result<()>>>) -> tokio::task::JoinHandle<anyhow::Result<()>> {
        let this = self.clone();
        tokio::spawn(async move {
            if let Some(producing) = producing {
                producing.await??;
            }
            let mut drained_checks = 0;
            while drained_checks < 3 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                drained_checks = if this.drained().await? { drained_checks + 1 } else { 0 };
            }
            stop.send_replace(true);
            Ok(())
        })
    }
}

/// The request pipeline with the in-process log: compute only, no broker.
async fn in_process_pipeline(options: &BenchOptions, workers: usize) -> anyhow::Result<CaseResult> {
    let setup = Arc::new(InProcessPipeline::new(options).await?);
    setup.broker.append(setup.requests(options.records))?;
    let (stop, shutdown) = watch::channel(false);
    let stopping = setup.stop_when_drained(stop.clone(), None);
    reset_peak_rss();
    let measured = members(workers, &stop, |member| {
        let (setup, shutdown) = (&setup, shutdown.clone());
        async move {
            let (run, mut source) = setup.member(member, workers).await?;
            let limits = BatchLimits { max_records: 4096, max_wait: Duration::from_millis(5) };
            let mut timed = Timed::per_record(run);
            let (records, _) = run_job(&mut timed, &mut source, &setup.broker.producer(), limits, StopWhen::Shutdown, shutdown).await?;
            Ok(timed.measured(records))
        }
    })?;
    stopping.await??;
    anyhow::ensure!(measured.records_in as usize >= options.records, "consumed {} of {} requests", measured.records_in, options.records);
    Ok(CaseResult::throughput(
        with_workers("whole request pipeline, in-process source and sink (compute only)", workers),
        options.records,
        measured.busy_seconds(),
        format!(
            "{} requests ({} records incl. stage hops); all 4 stages, contract check, example catalog; {workers} member(s), a thread each; first record processed -> last outputs written",
            options.records, measured.records_in
        ),
    ))
}

/// The request pipeline with an in-process source and sink while requests
/// arrive at a fixed rate (1 ms ticks): the engine's own share of the latency,
/// without broker or client waits.
async fn in_process_latency(options: &BenchOptions, name: &str, rate: usize, workers: usize) -> anyhow::Result<CaseResult> {
    let setup = Arc::new(InProcessPipeline::new(options).await?);
    let seconds = 5;
    let records = setup.requests(rate * seconds);
    let per_tick = (rate / 1000).max(1);
    let appender = setup.broker.clone();
    let producing = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(1));
        for chunk in records.chunks(per_tick) {
            ticker.tick().await;
            appender.append(chunk.to_vec())?;
        }
        anyhow::Ok(())
    });
    let (stop, shutdown) = watch::channel(false);
    let stopping = setup.stop_when_drained(stop.clone(), Some(producing));
    let dispatch = dispatch_topics(&setup.config);
    reset_peak_rss();
    let mut measured = members(workers, &stop, |member| {
        let (setup, shutdown, dispatch) = (&setup, shutdown.clone(), dispatch.clone());
        async move {
            let (mut run, mut source) = setup.member(member, workers).await?;
            let limits = BatchLimits { max_records: 4096, max_wait: Duration::from_millis(2) };
            let mut timed = Timed::end_to_end(&mut run, dispatch);
            let (records, _) = run_job(&mut timed, &mut source, &setup.broker.producer(), limits, StopWhen::Shutdown, shutdown).await?;
            Ok(timed.measured(records))
        }
    })?;
    stopping.await??;
    let latencies = measured.sorted_latencies();
    Ok(CaseResult {
        name: name.into(),
        records: rate * seconds,
        seconds: measured.busy_seconds(),
        p50_ms: percentile(&latencies, 50.0),
        p99_ms: percentile(&latencies, 99.0),
        max_ms: latencies.last().copied(),
        samples: latencies.len(),
        peak_rss_mb: peak_rss_mb(),
        note: format!(
            "no broker; {} records incl. stage hops, {} deliveries timed: request appended (ms resolution) -> its delivery written to a dispatch topic; {workers} member(s); what the engine adds",
            measured.records_in,
            latencies.len()
        ),
    })
}

/// `content_hash(body)` through the C ABI against the same logic as a native
/// DataFusion function, in the same query shape over the same rows.
async fn udf_overhead(rows: usize) -> anyhow::Result<Vec<CaseResult>> {
    use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
    let config = Config::embedded();
    let udfs = crate::engine::udf::discover(&config.udfs.dir, &config.udfs.lib_dir()).map_err(anyhow::Error::msg)?;
    let Some(udf) = udfs.iter().find(|u| u.name == "content_hash" && u.library.exists()) else {
        eprintln!("skipping the UDF cases: content_hash is not built (bash udfs/build.sh; set NOTIFLOW_UDF_LIB_DIR)");
        return Ok(vec![]);
    };
    let ctx = datafusion::prelude::SessionContext::new();
    ctx.register_udf(crate::engine::udf::load(udf, &Default::default()).map_err(anyhow::Error::msg)?);
    ctx.register_udf(create_udf(
        "content_hash_native",
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let array = args[0].to_array(1)?;
            let strings = array.as_any().downcast_ref::<StringArray>().expect("utf8");
            // The same work as the UDF: hash, format into a builder, nulls stay null.
            let mut out = arrow::array::StringBuilder::with_capacity(strings.len(), strings.len() * 16);
            for s in strings.iter() {
                match s {
                    Some(s) => {
                        let hash = s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
                        out.append_value(format!("{hash:016x}"));
                    }
                    None => out.append_null(),
                }
            }
            Ok(ColumnarValue::Array(Arc::new(out.finish())))
        }),
    ));
    let schema = Arc::new(Schema::new(vec![Field::new("body", DataType::Utf8, true)]));
    let batches: Vec<RecordBatch> = (0..rows)
        .step_by(8192)
        .map(|start| {
            let n = 8192.min(rows - start);
            RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from_iter((start..start + n).map(|i| (i % 17 != 0).then(|| format!("Hello user {i}"))))) as _])
        })
        .collect::<Result<_, _>>()?;
    ctx.register_batch("t", arrow::compute::concat_batches(&schema, &batches)?)?;
    let mut results = Vec::new();
    for (name, function) in [("native DataFusion function (baseline)", "content_hash_native"), ("Rust UDF through the C ABI", "content_hash")] {
        let frame = ctx.sql(&format!("SELECT {function}(body) FROM t")).await?;
        let started = Instant::now();
        let out = frame.collect().await?;
        let seconds = started.elapsed().as_secs_f64();
        anyhow::ensure!(out.iter().map(RecordBatch::num_rows).sum::<usize>() == rows);
        results.push(CaseResult {
            name: format!("UDF content_hash: {name}"),
            records: rows,
            seconds,
            p50_ms: None,
            p99_ms: None,
            max_ms: None,
        samples: 0,
        peak_rss_mb: None,
            note: format!("{:.1} ns/row", seconds * 1e9 / rows as f64),
        });
    }
    let ratio = results[1].seconds / results[0].seconds;
    results[1].note.push_str(&format!("; {ratio:.2}x the native function (target <= 1.5x)"));
    Ok(results)
}

/// The interval join through SQL with the in-process log: every send gets a receipt.
async fn in_process_join(sends: usize) -> anyhow::Result<CaseResult> {
    let dir = std::env::temp_dir().join(format!("notiflow-bench-join-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("10_join.sql"),
        "CREATE TABLE sends (message_id TEXT, channel TEXT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)
         WITH (connector = 'kafka', type = 'source', topic = 'bench.sends');
         CREATE TABLE receipts (message_id TEXT, status TEXT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)
         WITH (connector = 'kafka', type = 'source', topic = 'bench.receipts');
         CREATE TABLE outcomes (message_id TEXT, channel TEXT, status TEXT) WITH (connector = 'kafka', type = 'sink', topic = 'bench.outcomes');
         INSERT INTO outcomes SELECT s.message_id, s.channel, coalesce(r.status, 'undelivered_timeout') AS status
         FROM sends s LEFT JOIN receipts r ON s.message_id = r.message_id AND r.ts BETWEEN s.ts AND s.ts + INTERVAL '1' MINUTE;",
    )?;
    let mut config = Config::embedded();
    config.topics.partitions = 2;
    let mut run = crate::load_pipeline(&dir, &config).await?;
    let broker = MemoryBroker::new();
    broker.ensure_topics(&crate::topic_specs(&run, &config)).await?;
    run.prepare(&broker).await?;
    let (sends_topic, receipts_topic): (Arc<str>, Arc<str>) = (Arc::from("bench.sends"), Arc::from("bench.receipts"));
    let mut records = Vec::with_capacity(sends * 2);
    for i in 0..sends {
        let key = Some(format!("m{i}").into_bytes());
        let ts = |ms: usize| chrono::DateTime::from_timestamp_millis(1_700_000_000_000 + ms as i64).expect("valid").naive_utc();
        records.push(OutRecord {
            topic: sends_topic.clone(),
            key: key.clone(),
            payload: format!(r#"{{"message_id":"m{i}","channel":"sms","ts":"{}"}}"#, ts(i)).into_bytes(),
            headers: vec![],
        });
        records.push(OutRecord {
            topic: receipts_topic.clone(),
            key,
            payload: format!(r#"{{"message_id":"m{i}","status":"delivered","ts":"{}"}}"#, ts(i + 500)).into_bytes(),
            headers: vec![],
        });
    }
    broker.append(records)?;
    let mut source = broker.consumer("bench", &["bench.sends", "bench.receipts"]);
    let (_keep, shutdown) = watch::channel(false);
    let limits = BatchLimits { max_records: 4096, max_wait: Duration::from_millis(5) };
    reset_peak_rss();
    let started = Instant::now();
    let (records_in, _) = run_job(&mut run, &mut source, &broker.producer(), limits, StopWhen::IdleFor(Duration::from_millis(200)), shutdown).await?;
    let seconds = (started.elapsed() - Duration::from_millis(200)).as_secs_f64();
    let joined = broker.read_all("bench.outcomes").len();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(CaseResult {
        name: "interval join (LEFT, 1 min), in-process, sends + receipts (compute only)".into(),
        records: records_in as usize,
        seconds,
        p50_ms: None,
        p99_ms: None,
        max_ms: None,
        samples: 0,
        peak_rss_mb: peak_rss_mb(),
        note: format!("{joined} joined rows out of {sends} sends (the last minute's sends wait for the watermark)"),
    })
}

/// The windowed row-number operator alone over `keys` distinct keys, each seen twice.
fn dedupe_operator(keys: usize, kind: WindowKind) -> anyhow::Result<CaseResult> {
    let fields = vec![
        Field::new("k", DataType::Utf8, false),
        Field::new("t", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
        Field::new("_source", DataType::Int32, false),
        Field::new("_partition", DataType::Int32, false),
        Field::new("_watermark", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
    ];
    let schema = Arc::new(Schema::new(fields.clone()));
    let mut out_fields = fields;
    out_fields.push(Field::new("rn", DataType::UInt64, false));
    let mut op = RowNumberLimit::new(
        vec![Arc::new(Column::new("k", 0))],
        vec![DataType::Utf8],
        Arc::new(Column::new("t", 1)),
        LineageColumns { source: 2, partition: 3, watermark: 4 },
        kind,
        300_000_000_000,
        1,
        Arc::new(Schema::new(out_fields)),
    )?;
    const BATCH: usize = 8192;
    let base = 1_700_000_000_000_000_000i64;
    reset_peak_rss();
    let rss_before = current_rss_mb();
    // Batches are built one at a time, outside the timed section, so memory
    // growth is the operator's state and time is the operator's work.
    let mut busy = Duration::ZERO;
    let mut passed = 0;
    for round in 0..2 {
        for start in (0..keys).step_by(BATCH) {
            let n = BATCH.min(keys - start);
            let t = base + (round * keys + start) as i64 * 1_000;
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from_iter_values(
                        (start..start + n).map(|i| format!("tenant-a/user-{i:09}/sms/hash-{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15))),
                    )),
                    Arc::new(TimestampNanosecondArray::from_value(t, n)),
                    Arc::new(Int32Array::from_value(0, n)),
                    Arc::new(Int32Array::from_iter_values((start..start + n).map(|i| (i % 6) as i32))),
                    Arc::new(TimestampNanosecondArray::from_value(t - 60_000_000_000, n)),
                ],
            )?;
            let started = Instant::now();
            passed += op.process_batch(&batch)?.num_rows();
            busy += started.elapsed();
        }
    }
    let seconds = busy.as_secs_f64();
    anyhow::ensure!(passed == keys, "dedupe passed {passed} of {keys} distinct keys");
    let peak = peak_rss_mb();
    let rss_after = current_rss_mb();
    Ok(CaseResult {
        name: format!("dedupe operator, {} window, {keys} distinct keys x2 (compute only)", if kind == WindowKind::Tumbling { "tumbling" } else { "sliding" }),
        records: keys * 2,
        seconds,
        p50_ms: None,
        p99_ms: None,
        max_ms: None,
        samples: 0,
        peak_rss_mb: peak,
        note: format!(
            "{} keys in state; resident memory grew {:.0} MB (from {:.0} MB) while the state was built; input rows generated outside the timing",
            op.state_keys(),
            rss_after.zip(rss_before).map(|(a, b)| a - b).unwrap_or(0.0),
            rss_before.unwrap_or(0.0)
        ),
    })
}

pub fn render(results: &[CaseResult]) -> String {
    let baseline = results.iter().find(|r| r.name == RAW_LOOP).map(CaseResult::rate);
    let mut out = String::from(
        "| case | records | seconds | records/s | vs raw rdkafka loop | p50 ms | p99 ms | max ms | latency samples | peak RSS MB |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let opt = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into());
    for r in results {
        out.push_str(&format!(
            "| {} | {} | {:.2} | {:.0} | {} | {} | {} | {} | {} | {} |\n",
            r.name,
            r.records,
            r.seconds,
            r.rate(),
            baseline.map(|b| format!("{:.2}x", r.rate() / b)).unwrap_or_else(|| "-".into()),
            opt(r.p50_ms),
            opt(r.p99_ms),
            opt(r.max_ms),
            if r.samples > 0 { r.samples.to_string() } else { "-".into() },
            opt(r.peak_rss_mb),
        ));
    }
    for r in results {
        out.push_str(&format!("- {}: {}\n", r.name, r.note));
    }
    out
}
