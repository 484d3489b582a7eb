-- One row per delivery (message x recipient x channel) from notify.deliveries
-- (stage 50): its end state, reason and latencies. Same rules as 001.
CREATE TABLE IF NOT EXISTS notify_deliveries
(
    sent_at             DateTime,
    delivery_id         String,
    message_id          String,
    request_id          String,
    tenant              String,
    priority            String,
    category            String,
    channel             String,
    provider            String,
    provider_message_id String,
    state               String,
    reason              String,
    attempts            Int64,
    requested_at        Nullable(DateTime),
    outcome_at          Nullable(DateTime),
    send_latency_ms     Nullable(Float64),
    delivery_latency_ms Nullable(Float64),
    kafka_partition     UInt32,
    kafka_offset        UInt64
)
ENGINE = MergeTree()
PARTITION BY toDate(sent_at)
ORDER BY (tenant, channel, provider, sent_at, delivery_id);

-- Per minute, tenant, channel, provider and state: counts and latency sums
-- (averages = sum / count; percentiles come from the rows).
CREATE MATERIALIZED VIEW IF NOT EXISTS notify_deliveries_per_minute
ENGINE = SummingMergeTree()
PARTITION BY toDate(minute)
ORDER BY (tenant, channel, provider, state, minute)
AS SELECT toStartOfMinute(sent_at) AS minute, tenant, channel, provider, state,
    count() AS deliveries,
    sum(ifNull(send_latency_ms, 0)) AS send_latency_ms_sum,
    sum(ifNull(delivery_latency_ms, 0)) AS delivery_latency_ms_sum
FROM notify_deliveries
GROUP BY minute, tenant, channel, provider, state;
