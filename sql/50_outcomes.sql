-- Stage 50: what became of every delivery. The send results of `notiflow
-- deliver` (notify.sends) meet the providers' delivery reports and inbox
-- reads (notify.receipts, written by `notiflow receipts serve`).
--
-- Both topics are keyed by the provider's message id (a send that has one),
-- so a send and its receipts share a partition and the joins below keep
-- their state per partition (checkpointed, exact across restarts).
--
-- Output: one row per delivery in notify.deliveries (state, reason,
-- latencies), which the sink job writes to ClickHouse and the Parquet
-- archive; and the lifecycle events delivered / undelivered / read / clicked
-- in notify.events.
--
-- To change how long a report may take: the `+ INTERVAL '1' HOUR` of the
-- first join (after it a send is `undelivered_timeout`). Channels whose
-- providers report delivery are listed in `reported_sends`.

CREATE TABLE sends_in (
    message_id TEXT, delivery_id TEXT, tenant TEXT, request_id TEXT, priority TEXT, category TEXT,
    requested_at TIMESTAMP, channel TEXT, provider TEXT, attempt BIGINT, status TEXT, provider_message_id TEXT,
    failure_reason TEXT, provider_code TEXT, latency_ms DOUBLE, at TIMESTAMP,
    WATERMARK FOR at AS at - INTERVAL '10' SECOND
) WITH (connector = 'kafka', type = 'source', format = 'json', topic = 'notify.sends');

-- Receipts may come before their send result is written: the joins look
-- 10 minutes back from the send. A receipt more than a minute older than the
-- newest one of its partition is late: dropped (gauge notiflow_late_rows).
CREATE TABLE receipts_in (
    kind TEXT, channel TEXT, provider TEXT, provider_message_id TEXT, delivery_id TEXT, tenant TEXT,
    message_id TEXT, url TEXT, recipient TEXT, status TEXT, error_code TEXT, at TIMESTAMP,
    WATERMARK FOR at AS at - INTERVAL '1' MINUTE
) WITH (connector = 'kafka', type = 'source', format = 'json', topic = 'notify.receipts');

CREATE TABLE deliveries (
    delivery_id TEXT, message_id TEXT, request_id TEXT, tenant TEXT, priority TEXT, category TEXT,
    channel TEXT, provider TEXT, provider_message_id TEXT, state TEXT NOT NULL, reason TEXT, attempts BIGINT,
    requested_at TIMESTAMP, sent_at TIMESTAMP, outcome_at TIMESTAMP,
    send_latency_ms DOUBLE, delivery_latency_ms DOUBLE
) WITH (connector = 'kafka', type = 'sink', format = 'json', topic = 'notify.deliveries', 'sink.key_field' = 'delivery_id');

-- Accepted sends on channels whose providers report delivery.
CREATE VIEW reported_sends AS
SELECT * FROM sends_in WHERE status = 'accepted' AND channel IN ('sms');

-- The first outcome per message: providers repeat reports (Twilio retries a
-- callback it did not see answered), and a repeat must not make a second row.
CREATE VIEW outcome_receipts AS
SELECT * FROM (
    SELECT *, ROW_NUMBER() OVER (PARTITION BY provider, provider_message_id, sliding(INTERVAL '1' DAY) ORDER BY _timestamp) AS rn
    FROM receipts_in WHERE kind IN ('delivered', 'failed')
) WHERE rn = 1;

-- A reported send with its outcome, or none after an hour.
CREATE VIEW reported AS
SELECT s.delivery_id, s.message_id, s.request_id, s.tenant, s.priority, s.category, s.channel, s.provider,
    s.provider_message_id, s.attempt, s.requested_at, s.at AS sent_at, r.at AS outcome_at,
    concat('notify.sends/', s._partition, '/', s._offset) AS source,
    coalesce(r.kind, 'undelivered_timeout') AS state,
    CASE WHEN r.kind = 'failed' THEN coalesce(r.error_code, r.status)
         WHEN r.kind IS NULL THEN 'no delivery report within 1 hour' END AS reason
FROM reported_sends s LEFT JOIN outcome_receipts r
    ON s.provider = r.provider AND s.provider_message_id = r.provider_message_id
    AND r.at BETWEEN s.at - INTERVAL '10' MINUTE AND s.at + INTERVAL '1' HOUR;

INSERT INTO deliveries
SELECT delivery_id, message_id, request_id, tenant, priority, category, channel, provider, provider_message_id,
    state, reason, attempt AS attempts, requested_at, sent_at, outcome_at,
    CAST(CAST(sent_at AS BIGINT) - CAST(requested_at AS BIGINT) AS DOUBLE) / 1e6 AS send_latency_ms,
    -- A report stamped before our send result (provider clocks) counts as 0 (greatest() skips nulls).
    CASE WHEN outcome_at IS NOT NULL
        THEN greatest(CAST(CAST(outcome_at AS BIGINT) - CAST(sent_at AS BIGINT) AS DOUBLE) / 1e6, 0.0) END AS delivery_latency_ms
FROM reported;

-- Channels without delivery reports end when the provider accepts (the inbox
-- stores it: delivered); sends that failed for good end at once.
INSERT INTO deliveries
SELECT delivery_id, message_id, request_id, tenant, priority, category, channel, provider, provider_message_id,
    CASE WHEN status = 'failed' THEN 'send_failed' WHEN channel = 'inbox' THEN 'delivered' ELSE 'sent' END AS state,
    CASE WHEN status = 'failed' THEN coalesce(failure_reason, provider_code) END AS reason,
    attempt AS attempts, requested_at, at AS sent_at,
    CASE WHEN status = 'accepted' AND channel = 'inbox' THEN at END AS outcome_at,
    CASE WHEN status = 'accepted' THEN CAST(CAST(at AS BIGINT) - CAST(requested_at AS BIGINT) AS DOUBLE) / 1e6 END AS send_latency_ms,
    CASE WHEN status = 'accepted' AND channel = 'inbox' THEN 0.0 END AS delivery_latency_ms
FROM sends_in
WHERE status = 'failed' OR (status = 'accepted' AND channel NOT IN ('sms'));

INSERT INTO events
SELECT CASE WHEN state = 'delivered' THEN 'delivered' ELSE 'undelivered' END AS event,
    message_id, delivery_id, tenant, request_id, 'send' AS kind, priority, category, CAST(NULL AS TEXT) AS recipient,
    channel, reason, CAST(NULL AS TEXT) AS topic, CAST(NULL AS TEXT) AS release_at, source,
    to_char(coalesce(outcome_at, sent_at + INTERVAL '1' HOUR), '%Y-%m-%dT%H:%M:%S%.3fZ') AS at
FROM reported;

-- Reads of anything sent in the last 7 days.
CREATE VIEW engagement_receipts AS
SELECT * FROM receipts_in WHERE kind = 'read';

CREATE VIEW accepted_sends AS
SELECT * FROM sends_in WHERE status = 'accepted';

INSERT INTO events
SELECT r.kind AS event, s.message_id, s.delivery_id, s.tenant, s.request_id, 'send' AS kind, s.priority, s.category,
    r.recipient, s.channel, CAST(NULL AS TEXT) AS reason, CAST(NULL AS TEXT) AS topic, CAST(NULL AS TEXT) AS release_at,
    concat('notify.receipts/', r._partition, '/', r._offset) AS source,
    to_char(r.at, '%Y-%m-%dT%H:%M:%S%.3fZ') AS at
FROM accepted_sends s JOIN engagement_receipts r
    ON s.provider = r.provider AND s.provider_message_id = r.provider_message_id
    AND r.at BETWEEN s.at - INTERVAL '10' MINUTE AND s.at + INTERVAL '7' DAY;

-- Clicks on tracked links: the signed link names its delivery, no join needed
-- (the link itself is in notify.receipts, `url`).
INSERT INTO events
SELECT 'clicked' AS event, message_id, delivery_id, tenant, CAST(NULL AS TEXT) AS request_id, 'send' AS kind,
    CAST(NULL AS TEXT) AS priority, CAST(NULL AS TEXT) AS category, CAST(NULL AS TEXT) AS recipient, channel,
    CAST(NULL AS TEXT) AS reason, CAST(NULL AS TEXT) AS topic, CAST(NULL AS TEXT) AS release_at,
    concat('notify.receipts/', _partition, '/', _offset) AS source,
    to_char(at, '%Y-%m-%dT%H:%M:%S%.3fZ') AS at
FROM receipts_in WHERE kind = 'clicked' AND message_id IS NOT NULL;
