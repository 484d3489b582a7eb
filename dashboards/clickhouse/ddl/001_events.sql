-- Lifecycle events from notify.events, one row per event (`notiflow sink`).
-- Runs on ClickHouse 18.16 and current servers: no TTL (retention drops day
-- partitions), no DateTime64, no LowCardinality. The server's timezone must
-- be UTC (days are cut in UTC: one insert, one day, one part).
-- kafka_partition/kafka_offset: where the row came from; the sink resumes
-- from max(kafka_offset) per partition, so a restart inserts nothing twice.
CREATE TABLE IF NOT EXISTS notify_events
(
    at              DateTime,
    event           String,
    message_id      String,
    delivery_id     String,
    tenant          String,
    request_id      String,
    kind            String,
    priority        String,
    category        String,
    channel         String,
    provider        String,
    reason          String,
    topic           String,
    source          String,
    kafka_partition UInt32,
    kafka_offset    UInt64
)
ENGINE = MergeTree()
PARTITION BY toDate(at)
ORDER BY (tenant, event, at, message_id);

-- Events per minute, tenant, event and channel (the volume panels).
CREATE MATERIALIZED VIEW IF NOT EXISTS notify_events_per_minute
ENGINE = SummingMergeTree()
PARTITION BY toDate(minute)
ORDER BY (tenant, event, channel, minute)
AS SELECT toStartOfMinute(at) AS minute, tenant, event, channel, count() AS events
FROM notify_events
GROUP BY minute, tenant, event, channel;
