-- Stage 30: per recipient, drop repeated content, cap frequency, then send
-- now or hold until quiet hours end / the scheduled time.
--
-- notify.messages is keyed by tenant/recipient, so these windows keep their
-- state with the partition (exact and checkpointed). Time is the request's
-- (requested_at): a replay decides the same way.
--
-- To change a window or a cap, edit its line below: the default dedupe
-- window (`coalesce(dedupe_window_s, 300)`; a template can set its own), or
-- the `<= N` of a category's daily cap.

-- Messages of one partition arrive nearly in request order: 30 s of
-- disorder is judged exactly; older ones pass the windows (never lost).
CREATE TABLE messages_in (
    delivery_id TEXT, message_id TEXT, request_id TEXT, tenant TEXT, template TEXT, template_version BIGINT,
    recipient TEXT, channel TEXT, address TEXT, priority TEXT, category TEXT, locale TEXT,
    timezone TEXT, quiet_start TEXT, quiet_end TEXT, local_day TEXT,
    subject TEXT, body TEXT, html TEXT, content_hash TEXT, dedupe_window_s BIGINT,
    requested_at TIMESTAMP, send_at TIMESTAMP, expires_at TIMESTAMP,
    WATERMARK FOR requested_at AS requested_at - INTERVAL '30' SECOND
) WITH (
    connector = 'kafka', type = 'source', format = 'json', topic = 'notify.messages', late_rows = 'pass'
);

-- Recalls (stage 10), to cancel what has not gone out.
CREATE TABLE recalls (id TEXT, tenant TEXT, request_id TEXT, message_id TEXT, reason TEXT)
WITH (connector = 'kafka', type = 'lookup', topic = 'notify.recalls', 'lookup.key_field' = 'id');

-- Content dedupe: the same rendered content to the same recipient on the
-- same channel within the template's dedupe_window_s (default 300 s: the
-- coalesce below) goes out once. State is kept for the maximum, 6 hours.
CREATE VIEW content_ranked AS
SELECT *, ROW_NUMBER() OVER (PARTITION BY tenant, recipient, channel, content_hash,
    sliding_within(INTERVAL '6' HOUR, coalesce(dedupe_window_s, 300)) ORDER BY _timestamp) AS rn
FROM messages_in;

CREATE VIEW fresh_content AS SELECT * FROM content_ranked WHERE rn = 1;

-- Daily caps per recipient, channel and category, counted per local day of
-- the recipient (local_day is in the key; 26 hours covers any local day).
-- One-time passwords are not capped.
CREATE VIEW marketing_ranked AS
SELECT *, ROW_NUMBER() OVER (PARTITION BY tenant, recipient, channel, local_day, sliding(INTERVAL '26' HOUR) ORDER BY _timestamp) AS sent_today
FROM fresh_content WHERE category = 'marketing';

CREATE VIEW transactional_ranked AS
SELECT *, ROW_NUMBER() OVER (PARTITION BY tenant, recipient, channel, local_day, sliding(INTERVAL '26' HOUR) ORDER BY _timestamp) AS sent_today
FROM fresh_content WHERE category = 'transactional';

CREATE VIEW marketing_within_cap AS SELECT * FROM marketing_ranked WHERE sent_today <= 3;
CREATE VIEW transactional_within_cap AS SELECT * FROM transactional_ranked WHERE sent_today <= 20;

CREATE VIEW within_caps AS
SELECT * FROM marketing_within_cap
UNION ALL SELECT * FROM transactional_within_cap
UNION ALL SELECT *, CAST(1 AS BIGINT) AS sent_today FROM fresh_content WHERE category = 'otp';

-- When it may go: not before send_at, and outside the recipient's quiet
-- hours unless it is high priority or a one-time password.
CREATE VIEW timed AS
SELECT *,
    CASE WHEN priority = 'high' OR category = 'otp' THEN NULL
         ELSE quiet_hours_until(timezone, quiet_start, quiet_end, coalesce(send_at, requested_at)) END AS quiet_until_ms
FROM within_caps;

CREATE VIEW decided AS
SELECT *,
    CASE WHEN quiet_until_ms IS NOT NULL THEN to_timestamp_millis(quiet_until_ms)
         WHEN send_at > requested_at THEN send_at END AS release_at,
    CASE WHEN quiet_until_ms IS NOT NULL THEN 'deferred' WHEN send_at > requested_at THEN 'scheduled' END AS hold
FROM timed;

CREATE TABLE deferred (
    delivery_id TEXT, message_id TEXT, request_id TEXT, tenant TEXT, template TEXT, template_version BIGINT,
    recipient TEXT, channel TEXT, address TEXT, priority TEXT, category TEXT, locale TEXT,
    subject TEXT, body TEXT, html TEXT, expires_at TIMESTAMP, requested_at TIMESTAMP, release_at TIMESTAMP, recall_key TEXT, partition_key TEXT
) WITH (connector = 'kafka', type = 'sink', format = 'json', topic = 'notify.deferred', 'sink.key_field' = 'partition_key');

INSERT INTO deferred
SELECT delivery_id, message_id, request_id, tenant, template, template_version, recipient, channel, address,
    priority, category, locale, subject, body, html, expires_at, requested_at, release_at,
    concat(tenant, '/', request_id) AS recall_key, concat(tenant, '/', recipient) AS partition_key
FROM decided WHERE hold IS NOT NULL AND (expires_at IS NULL OR expires_at > release_at);

INSERT INTO events
SELECT hold AS event, message_id, delivery_id, tenant, request_id, 'send' AS kind, priority, category, recipient, channel,
    CASE hold WHEN 'deferred' THEN concat('quiet hours ', quiet_start, '-', quiet_end, ' ', timezone) ELSE 'send_at' END AS reason,
    'notify.deferred' AS topic, to_char(release_at, '%Y-%m-%dT%H:%M:%S%.3fZ') AS release_at,
    concat('notify.messages/', _partition, '/', _offset) AS source,
    to_char(processing_time(), '%Y-%m-%dT%H:%M:%S%.3fZ') AS at
FROM decided WHERE hold IS NOT NULL AND (expires_at IS NULL OR expires_at > release_at);

-- Due now (not held, not expired): sent by stage 40 unless recalled.
CREATE VIEW due_now AS
SELECT d.*, c.id AS recalled_by
FROM decided d LEFT JOIN recalls c ON d.tenant || '/' || d.request_id = c.id
WHERE d.hold IS NULL AND (d.expires_at IS NULL OR d.expires_at > d.requested_at);

-- Expired before it could go (its hold would end after expires_at, or it came too late).
INSERT INTO events
SELECT 'expired' AS event, message_id, delivery_id, tenant, request_id, 'send' AS kind, priority, category, recipient, channel,
    concat('expires_at ', to_char(expires_at, '%Y-%m-%dT%H:%M:%SZ')) AS reason, CAST(NULL AS TEXT) AS topic,
    to_char(release_at, '%Y-%m-%dT%H:%M:%S%.3fZ') AS release_at,
    concat('notify.messages/', _partition, '/', _offset) AS source,
    to_char(processing_time(), '%Y-%m-%dT%H:%M:%S%.3fZ') AS at
FROM decided
WHERE expires_at IS NOT NULL AND expires_at <= coalesce(release_at, requested_at);

-- Repeated content and capped messages: not sent, with their event.
INSERT INTO events
SELECT 'deduped' AS event, message_id, delivery_id, tenant, request_id, 'send' AS kind, priority, category, recipient, channel,
    concat('the same content reached this recipient on this channel within ', coalesce(dedupe_window_s, 300), ' s') AS reason, CAST(NULL AS TEXT) AS topic,
    CAST(NULL AS TEXT) AS release_at, concat('notify.messages/', _partition, '/', _offset) AS source,
    to_char(processing_time(), '%Y-%m-%dT%H:%M:%S%.3fZ') AS at
FROM content_ranked WHERE rn > 1;

INSERT INTO events
SELECT 'capped' AS event, message_id, delivery_id, tenant, request_id, 'send' AS kind, priority, category, recipient, channel,
    'daily cap of 3 marketing messages per channel reached' AS reason, CAST(NULL AS TEXT) AS topic,
    CAST(NULL AS TEXT) AS release_at, concat('notify.messages/', _partition, '/', _offset) AS source,
    to_char(processing_time(), '%Y-%m-%dT%H:%M:%S%.3fZ') AS at
FROM marketing_ranked WHERE sent_today > 3;

INSERT INTO events
SELECT 'capped' AS event, message_id, delivery_id, tenant, request_id, 'send' AS kind, priority, category, recipient, channel,
    'daily cap of 20 transactional messages per channel reached' AS reason, CAST(NULL AS TEXT) AS topic,
    CAST(NULL AS TEXT) AS release_at, concat('notify.messages/', _partition, '/', _offset) AS source,
    to_char(processing_time(), '%Y-%m-%dT%H:%M:%S%.3fZ') AS at
FROM transactional_ranked WHERE sent_today > 20;
