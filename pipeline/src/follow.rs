//! Servers that keep a topic's contents in memory (the inbox, the gateway's
//! tenant registry, request index and message timelines) replay it, then
//! follow it for as long as they run.

use std::time::Duration;

use notiflow_connector::{BatchLimits, LogReader, Record, Source};
use notiflow_kafka::{KafkaConfig, KafkaReader, KafkaSource};
use tokio::sync::watch;

/// Where the replay starts.
#[derive(Debug, Clone, Copy)]
pub enum Replay {
    /// The whole log (compacted topics).
    All,
    /// Records from this time on (ms since the epoch): a window of a long log.
    Since(i64),
}

/// Replays `topic`, then applies each new record as it arrives. The returned
/// flag turns true once the replay reached where the topic ended at the call.
pub async fn follow_topic<F>(kafka: &KafkaConfig, topic: &str, replay: Replay, mut apply: F) -> anyhow::Result<watch::Receiver<bool>>
where
    F: FnMut(&Record) + Send + 'static,
{
    let reader = KafkaReader::new(kafka);
    let ends = partition_ends(&reader, topic).await?;
    let starts: Vec<(i32, i64)> = match replay {
        Replay::All => ends.iter().map(|(partition, _)| (*partition, 0)).collect(),
        Replay::Since(ms) => match reader.offsets_at_time(topic, ms).await {
            Ok(starts) => starts,
            Err(err) => {
                tracing::warn!(%topic, %err, "the broker cannot look offsets up by time; replaying the whole topic");
                ends.iter().map(|(partition, _)| (*partition, 0)).collect()
            }
        },
    };
    let mut behind: Vec<(i32, i64)> =
        ends.into_iter().filter(|(partition, end)| starts.iter().any(|(p, start)| p == partition && start < end)).collect();
    let (ready_tx, ready) = watch::channel(behind.is_empty());
    let assigned: Vec<(String, i32, i64)> = starts.iter().map(|(partition, from)| (topic.to_string(), *partition, *from)).collect();
    let mut source = KafkaSource::assigned(kafka, &assigned)?;
    let topic = topic.to_string();
    tokio::spawn(async move {
        let limits = BatchLimits { max_records: 2000, max_wait: Duration::from_millis(20) };
        loop {
            let batch = match source.next_batch(limits).await {
                Ok(batch) => batch,
                Err(err) => {
                    tracing::warn!(%topic, %err, "following the topic; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            for record in &batch {
                apply(record);
                if !behind.is_empty() {
                    behind.retain(|(partition, end)| !(record.partition == *partition && record.offset + 1 >= *end));
                    if behind.is_empty() {
                        ready_tx.send_replace(true);
                    }
                }
            }
        }
    });
    Ok(ready)
}

/// The end offset of every partition; a topic created a moment ago may show
/// no partitions in metadata yet, so ask again briefly.
pub async fn partition_ends(reader: &KafkaReader, topic: &str) -> anyhow::Result<Vec<(i32, i64)>> {
    for _ in 0..50 {
        let ends = reader.end_offsets(topic).await?;
        if !ends.is_empty() {
            return Ok(ends);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("topic {topic} shows no partitions")
}
