-- Stage 10: accept requests, drop repeated ones, and route them by priority.
--
-- Records on notify.requests are checked against the producer contract
-- (schemas/notify.requests.schema.json, the key rule and the tenant
-- registry) before they are decoded; a record that fails goes to notify.dlq
-- with its reason code and original bytes, and a `rejected` event.
-- What passes goes to the dispatch topic of its priority, with a
-- `dispatched` lifecycle event.

CREATE TABLE requests (
    type        TEXT,
    request_id  TEXT NOT NULL,
    tenant      TEXT NOT NULL,
    template    TEXT,
    recipients  JSON,
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
    _key,
    _partition,
    _offset
FROM first_requests;

CREATE TABLE dispatch_high (
    type TEXT, message_id TEXT, request_id TEXT, tenant TEXT, template TEXT,
    recipients JSON, params JSON, channels JSON, priority TEXT, category TEXT,
    locale TEXT, send_at TIMESTAMP, expires_at TIMESTAMP, reason TEXT
) WITH (connector = 'kafka', type = 'sink', format = 'json', topic = 'notify.dispatch.high');

CREATE TABLE dispatch_normal (
    type TEXT, message_id TEXT, request_id TEXT, tenant TEXT, template TEXT,
    recipients JSON, params JSON, channels JSON, priority TEXT, category TEXT,
    locale TEXT, send_at TIMESTAMP, expires_at TIMESTAMP, reason TEXT
) WITH (connector = 'kafka', type = 'sink', format = 'json', topic = 'notify.dispatch.normal');

CREATE TABLE dispatch_low (
    type TEXT, message_id TEXT, request_id TEXT, tenant TEXT, template TEXT,
    recipients JSON, params JSON, channels JSON, priority TEXT, category TEXT,
    locale TEXT, send_at TIMESTAMP, expires_at TIMESTAMP, reason TEXT
) WITH (connector = 'kafka', type = 'sink', format = 'json', topic = 'notify.dispatch.low');

-- Lifecycle events, keyed by message id.
CREATE TABLE events (
    event TEXT NOT NULL, message_id TEXT, tenant TEXT, request_id TEXT, kind TEXT,
    priority TEXT, category TEXT, reason TEXT, topic TEXT, source TEXT NOT NULL, at TEXT NOT NULL
) WITH (connector = 'kafka', type = 'sink', format = 'json', topic = 'notify.events', 'sink.key_field' = 'message_id');

INSERT INTO dispatch_high SELECT * FROM accepted WHERE priority = 'high';
INSERT INTO dispatch_normal SELECT * FROM accepted WHERE priority = 'normal';
INSERT INTO dispatch_low SELECT * FROM accepted WHERE priority = 'low';

INSERT INTO events
SELECT
    'dispatched' AS event,
    message_id,
    tenant,
    request_id,
    type AS kind,
    priority,
    category,
    CAST(NULL AS TEXT) AS reason,
    concat('notify.dispatch.', priority) AS topic,
    concat('notify.requests/', _partition, '/', _offset) AS source,
    to_char(processing_time(), '%Y-%m-%dT%H:%M:%S%.3fZ') AS at
FROM accepted;

-- Repeats: no dispatch, a `duplicate_request` event pointing at the record.
INSERT INTO events
SELECT
    'duplicate_request' AS event,
    message_id(tenant, request_id) AS message_id,
    tenant,
    request_id,
    coalesce(type, 'send') AS kind,
    priority,
    category,
    'the same request_id was accepted within the last 24 hours' AS reason,
    CAST(NULL AS TEXT) AS topic,
    concat('notify.requests/', _partition, '/', _offset) AS source,
    to_char(processing_time(), '%Y-%m-%dT%H:%M:%S%.3fZ') AS at
FROM ranked_requests WHERE rn > 1;
