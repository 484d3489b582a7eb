-- Stage 40: release held messages when due, cancel recalled ones, and route
-- the rest by priority to the dispatch topics, with their lifecycle events.
--
-- notify.deferred is a timer source: each record waits, outside the pipeline,
-- until the wall clock reaches its release_at (quiet hours' end, send_at).
-- Held records are saved in the partition's checkpoint: they survive restarts
-- and move with their partition. A recall wakes every held message of its
-- request at once (hold.wake_*), so it is cancelled now, not at its due time;
-- a message whose recall came before it is never held.
-- expires_at was checked against the planned send time in stage 30; channels
-- check it again before sending.

CREATE TABLE deferred_in (
    delivery_id TEXT, message_id TEXT, request_id TEXT, tenant TEXT, template TEXT, template_version BIGINT,
    recipient TEXT, channel TEXT, address TEXT, priority TEXT, category TEXT, locale TEXT,
    subject TEXT, body TEXT, html TEXT, expires_at TIMESTAMP, requested_at TIMESTAMP, release_at TIMESTAMP, recall_key TEXT
) WITH (
    connector = 'kafka', type = 'source', format = 'json', topic = 'notify.deferred',
    'hold.until_field' = 'release_at',
    -- A recall (a new key in `recalls`) releases its request's held messages at once.
    'hold.wake_field' = 'recall_key', 'hold.wake_lookup' = 'recalls'
);

CREATE VIEW released AS
SELECT r.*, c.id AS recalled_by
FROM deferred_in r LEFT JOIN recalls c ON r.recall_key = c.id;

CREATE VIEW outgoing AS
SELECT delivery_id, message_id, request_id, tenant, template, template_version, recipient, channel, address,
    priority, category, locale, subject, body, html, expires_at, requested_at, recalled_by,
    concat('notify.messages/', _partition, '/', _offset) AS source
FROM due_now
UNION ALL
SELECT delivery_id, message_id, request_id, tenant, template, template_version, recipient, channel, address,
    priority, category, locale, subject, body, html, expires_at, requested_at, recalled_by,
    concat('notify.deferred/', _partition, '/', _offset) AS source
FROM released;

CREATE VIEW sendable AS SELECT * FROM outgoing WHERE recalled_by IS NULL;

INSERT INTO dispatch_high
SELECT 'send' AS type, delivery_id, message_id, request_id, tenant, template, template_version, recipient, channel,
    address, priority, category, locale, subject, body, html, expires_at, requested_at, CAST(NULL AS TEXT) AS reason
FROM sendable WHERE priority = 'high';

INSERT INTO dispatch_normal
SELECT 'send' AS type, delivery_id, message_id, request_id, tenant, template, template_version, recipient, channel,
    address, priority, category, locale, subject, body, html, expires_at, requested_at, CAST(NULL AS TEXT) AS reason
FROM sendable WHERE priority = 'normal';

INSERT INTO dispatch_low
SELECT 'send' AS type, delivery_id, message_id, request_id, tenant, template, template_version, recipient, channel,
    address, priority, category, locale, subject, body, html, expires_at, requested_at, CAST(NULL AS TEXT) AS reason
FROM sendable WHERE priority = 'low';

INSERT INTO events
SELECT CASE WHEN recalled_by IS NULL THEN 'dispatched' ELSE 'recalled' END AS event,
    message_id, delivery_id, tenant, request_id, 'send' AS kind, priority, category, recipient, channel,
    CASE WHEN recalled_by IS NULL THEN CAST(NULL AS TEXT) ELSE 'the request was recalled before this was sent' END AS reason,
    CASE WHEN recalled_by IS NULL THEN concat('notify.dispatch.', priority) END AS topic,
    CAST(NULL AS TEXT) AS release_at, source,
    to_char(processing_time(), '%Y-%m-%dT%H:%M:%S%.3fZ') AS at
FROM outgoing;
