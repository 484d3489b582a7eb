//! The benchmark baseline: the smallest consume -> produce loop rdkafka
//! allows (one BaseConsumer, one BaseProducer, one thread), with the same
//! fetch wait and linger as notiflow's own source and sink; idempotence is a
//! setting (notiflow's sink is idempotent, the minimal loop is not). Every
//! broker figure of `notiflow bench` is reported as a ratio to what this loop
//! does on the same broker in the same run, so that it reads as "how close to
//! the broker's speed", not as a number that moves with the machine.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

use crate::KafkaConfig;

/// What the raw loop did.
#[derive(Debug, Clone)]
pub struct RawPassthrough {
    pub records: u64,
    /// From the first poll to the last record acknowledged (flush).
    pub elapsed: Duration,
    /// Per record written: its (original) producer timestamp -> our write
    /// acknowledged, in ms. Empty unless timestamps were kept.
    pub latencies_ms: Vec<f64>,
}

/// Records, per acknowledged write, how long ago its timestamp was.
#[derive(Default)]
struct AckLatency {
    keep: bool,
    latencies_ms: Mutex<Vec<f64>>,
}

impl ClientContext for AckLatency {}

impl ProducerContext for AckLatency {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let (true, Ok(message)) = (self.keep, result)
            && let Some(ms) = message.timestamp().to_millis()
        {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
            self.latencies_ms.lock().unwrap_or_else(|e| e.into_inner()).push((now - ms) as f64);
        }
    }
}

/// One raw loop's settings.
#[derive(Debug, Clone)]
pub struct RawLoop {
    pub group_id: String,
    pub input: String,
    pub output: String,
    /// Stop after this many records.
    pub expected: u64,
    /// Give up after this long without a record.
    pub idle: Duration,
    /// Write each record with the timestamp it was read with (a chain of
    /// loops then carries the first producer's time) and record each write's
    /// latency from it.
    pub keep_timestamps: bool,
    /// An idempotent producer (notiflow's sink is one); the minimal loop is not.
    pub idempotent: bool,
}

/// Copies `expected` records from `input` to `output` (key and value
/// unchanged), then flushes the producer and commits the consumer's offsets
/// once. Blocking: run it on a thread of its own. `on_assigned` is called
/// once the group has given the loop its partitions.
pub fn raw_passthrough(config: &KafkaConfig, settings: &RawLoop, on_assigned: impl FnOnce()) -> Result<RawPassthrough, KafkaError> {
    let RawLoop { group_id, input, output, expected, idle, keep_timestamps, idempotent } = settings.clone();
    let consumer: BaseConsumer = config
        .client_config()
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", config.fetch_wait_max_ms.to_string())
        .set("fetch.min.bytes", "1")
        .create()?;
    consumer.subscribe(&[input.as_str()])?;
    let producer: BaseProducer<AckLatency> = config
        .client_config()
        .set("linger.ms", config.linger_ms.to_string())
        .set("enable.idempotence", idempotent.to_string())
        .create_with_context(AckLatency { keep: keep_timestamps, ..Default::default() })?;
    let mut records = 0u64;
    let mut started: Option<Instant> = None;
    let mut last_record = Instant::now();
    let mut on_assigned = Some(on_assigned);
    while records < expected {
        let polled = consumer.poll(Duration::from_millis(100));
        if on_assigned.is_some() && consumer.assignment()?.count() > 0 {
            on_assigned.take().expect("checked")();
            last_record = Instant::now();
        }
        // A timed loop serves delivery reports every turn: each write's latency is taken when its report is served.
        if keep_timestamps {
            producer.poll(Duration::ZERO);
        }
        let Some(message) = polled else {
            if last_record.elapsed() > idle {
                break;
            }
            continue;
        };
        let message = message?;
        started.get_or_insert_with(Instant::now);
        last_record = Instant::now();
        let mut record = BaseRecord::<[u8], [u8]>::to(&output);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        if let (true, Some(ms)) = (keep_timestamps, message.timestamp().to_millis()) {
            record = record.timestamp(ms);
        }
        let mut pending = record;
        loop {
            match producer.send(pending) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    producer.poll(Duration::from_millis(1));
                    pending = back;
                }
                Err((err, _)) => return Err(err),
            }
        }
        records += 1;
        // Serve delivery reports now and then so the queue drains.
        if records % 1024 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(30))?;
    let elapsed = started.map(|s| s.elapsed()).unwrap_or_default();
    consumer.commit_consumer_state(CommitMode::Sync)?;
    let latencies_ms = std::mem::take(&mut *producer.context().latencies_ms.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(RawPassthrough { records, elapsed, latencies_ms })
}
