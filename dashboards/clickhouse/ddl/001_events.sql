-- Lifecycle events from notify.events, one row per event.
-- Runs on ClickHouse 18.16 and current servers: no TTL (retention drops day
-- partitions), no DateTime64 (milliseconds kept in at_ms), no LowCardinality.
CREATE TABLE IF NOT EXISTS notify_events
(
    at         DateTime,
    at_ms      UInt16,
    event      String,
    message_id String,
    tenant     String,
    request_id String,
    kind       String,
    priority   String,
    category   String,
    reason     String,
    topic      String,
    source     String
)
ENGINE = MergeTree()
PARTITION BY toYYYYMMDD(at)
ORDER BY (tenant, event, at, message_id);
