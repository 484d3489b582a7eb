-- Stage 10: accept requests and drop repeated ones.
--
-- Records on notify.requests are checked against the producer contract
-- (schemas/notify.requests.schema.json, the key rule and the tenant
-- registry) before they are decoded; a record that fails goes to notify.dlq
-- with its reason code and original bytes, and a `rejected` event.
-- A send that passes gets an `accepted` event and goes on to stage 20
-- (recipients); a recall is published to the compacted topic notify.recalls
-- (stages 30 and 40 cancel what has not been sent) and to the high lane
-- (channels withdraw what has).

CREATE TABLE requests (
    type        TEXT,
    request_id  TEXT NOT NULL,
    tenant      TEXT NOT NULL,
    template    TEXT,
    recipients  STRUCT<user_id TEXT, phone TEXT, email TEXT, device_token TEXT, platform TEXT, open_id TEXT, app_id TEXT, inbox_user TEXT>[],
    params      JSON,
    channels    JSON,
    priority    TEXT,
    category    TEXT,
    locale      TEXT,
    send_at     TIMESTAMP,
    expires_at  TIMESTAMP,
    reason      TEXT
) WITH (
    connector = 'kafka',
    type = 'source',
    format = 'json',
    topic = 'notify.requests',
    'json.contract' = 'notify.requests',
    bad_data = 'dlq',
    'dlq.topic' = 'notify.dlq',
    -- A request is never lost to the idempotency window for arriving late.
    late_rows = 'pass'
);

-- Idempotency: a repeat of the same (tenant, request_id, type) within 24 hours
-- of the first is dropped, exactly: the state is checkpointed, survives
-- restarts and follows its partition (the record key is tenant/request_id).
-- A recall shares its request's id but is a different type: it passes.
-- `first_requests` is shared (computed once for every INSERT that reads it);
-- the repeats' flow at the end keeps its own copy of the window.
CREATE VIEW ranked_requests AS
SELECT *,
    ROW_NUMBER() OVER (PARTITION BY tenant, request_id, CASE WHEN type = 'recall' THEN 'recall' ELSE 'send' END, sliding(INTERVAL '24' HOUR) ORDER BY _timestamp) AS rn
FROM requests;

CREATE VIEW first_requests AS SELECT * FROM ranked_requests WHERE rn = 1;

-- Defaults the contract promises: a send unless it says recall; normal
-- priority; transactional category. A recall travels in the high lane so it
-- overtakes the sends it cancels.
CREATE VIEW accepted AS
SELECT
    coalesce(type, 'send') AS type,
    message_id(tenant, request_id) AS message_id,
    request_id,
    tenant,
    template,
    recipients,
    params,
    channels,
    CASE WHEN type = 'recall' THEN 'high' ELSE coalesce(priority, 'normal') END AS priority,
    CASE WHEN type = 'recall' THEN NULL ELSE coalesce(category, 'transactional') END AS category,
    locale,
    send_at,
    expires_at,
    reason,
    _timestamp AS requested_at,
    _partition,
    _offset
FROM first_requests;

-- One record per delivery (message x recipient x channel), for the channel
-- connectors; a recall has no recipient or channel and asks every channel to
-- withdraw what it sent for the request. Keyed by delivery id: deliveries
-- spread evenly over the partitions, so each deliver instance's share of a
-- provider's rate limit (its share of the partitions) matches its traffic.
CREATE TABLE dispatch_high (
    type TEXT, delivery_id TEXT, message_id TEXT, request_id TEXT, tenant TEXT, template TEXT, template_version BIGINT,
    recipient TEXT, channel TEXT, address TEXT, priority TEXT, category TEXT, locale TEXT,
    subject TEXT, body TEXT, html TEXT, expires_at TIMESTAMP, requested_at TIMESTAMP, reason TEXT
) WITH (connector = 'kafka', type = 'sink', format = 'json', topic = 'notify.dispatch.high', 'sink.key_field' = 'delivery_id');

CREATE TABLE dispatch_normal (
    type TEXT, delivery_id TEXT, message_id TEXT, request_id TEXT, tenant TEXT, template TEXT, template_version BIGINT,
    recipient TEXT, channel TEXT, address TEXT, priority TEXT, category TEXT, locale TEXT,
    subject TEXT, body TEXT, html TEXT, expires_at TIMESTAMP, requested_at TIMESTAMP, reason TEXT
) WITH (connector = 'kafka', type = 'sink', format = 'json', topic = 'notify.dispatch.normal', 'sink.key_field' = 'delivery_id');

CREATE TABLE dispatch_low (
    type TEXT, delivery_id TEXT, message_id TEXT, request_id TEXT, tenant TEXT, template TEXT, template_version BIGINT,
    recipient TEXT, channel TEXT, address TEXT, priority TEXT, category TEXT, locale TEXT,
    subject TEXT, body TEXT, html TEXT, expires_at TIMESTAMP, requested_at TIMESTAMP, reason TEXT
) WITH (connector = 'kafka', type = 'sink', format = 'json', topic = 'notify.dispatch.low', 'sink.key_field' = 'delivery_id');

-- Lifecycle events, keyed by message id (one request's timeline stays in
-- one partition); delivery events also carry the delivery id and channel.
CREATE TABLE events (
    event TEXT NOT NULL, message_id TEXT, delivery_id TEXT, tenant TEXT, request_id TEXT, kind TEXT,
    priority TEXT, category TEXT, recipient TEXT, channel TEXT, reason TEXT, topic TEXT, release_at TEXT,
    source TEXT NOT NULL, at TEXT NOT NULL
) WITH (connector = 'kafka', type = 'sink', format = 'json', topic = 'notify.events', 'sink.key_field' = 'message_id');

-- Recalls, latest per request: stages 30 and 40 look them up.
CREATE TABLE recall_log (id TEXT, tenant TEXT, request_id TEXT, message_id TEXT, reason TEXT)
WITH (connector = 'kafka', type = 'sink', format = 'json', topic = 'notify.recalls', 'sink.key_field' = 'id');

INSERT INTO recall_log
SELECT concat(tenant, '/', request_id) AS id, tenant, request_id, message_id, reason
FROM accepted WHERE type = 'recall';

INSERT INTO dispatch_high
SELECT type, CAST(NULL AS TEXT) AS delivery_id, message_id, request_id, tenant, CAST(NULL AS TEXT) AS template,
    CAST(NULL AS BIGINT) AS template_version, CAST(NULL AS TEXT) AS recipient, CAST(NULL AS TEXT) AS channel,
    CAST(NULL AS TEXT) AS address, priority, category, locale, CAST(NULL AS TEXT) AS subject, CAST(NULL AS TEXT) AS body,
    CAST(NULL AS TEXT) AS html, expires_at, requested_at, reason
FROM accepted WHERE type = 'recall';

INSERT INTO events
SELECT
    CASE WHEN type = 'recall' THEN 'recall_requested' ELSE 'accepted' END AS event,
    message_id,
    CAST(NULL AS TEXT) AS delivery_id,
    tenant,
    request_id,
    type AS kind,
    priority,
    category,
    CAST(NULL AS TEXT) AS recipient,
    CAST(NULL AS TEXT) AS channel,
    reason,
    CAST(NULL AS TEXT) AS topic,
    CAST(NULL AS TEXT) AS release_at,
    concat('notify.requests/', _partition, '/', _offset) AS source,
    to_char(processing_time(), '%Y-%m-%dT%H:%M:%S%.3fZ') AS at
FROM accepted;

-- Repeats: nothing sent, a `duplicate_request` event pointing at the record.
INSERT INTO events
SELECT
    'duplicate_request' AS event,
    message_id(tenant, request_id) AS message_id,
    CAST(NULL AS TEXT) AS delivery_id,
    tenant,
    request_id,
    coalesce(type, 'send') AS kind,
    priority,
    category,
    CAST(NULL AS TEXT) AS recipient,
    CAST(NULL AS TEXT) AS channel,
    'the same request_id was accepted within the last 24 hours' AS reason,
    CAST(NULL AS TEXT) AS topic,
    CAST(NULL AS TEXT) AS release_at,
    concat('notify.requests/', _partition, '/', _offset) AS source,
    to_char(processing_time(), '%Y-%m-%dT%H:%M:%S%.3fZ') AS at
FROM ranked_requests WHERE rn > 1;
