-- A tenant's own database for its analysts (`notiflow tenant analysts`):
-- copies of the tenant's rows only, kept current by materialized views on
-- the shared tables. The tenant's analyst user may read this database and
-- nothing else (users.d XML written by the same command), on ClickHouse 18.16
-- (which has no row policies) and current servers alike; the reports in
-- dashboards/reports run unchanged against it.
-- Placeholders: {shared} the shared database, {own} the tenant's (both
-- quoted), {tenant} the tenant id (checked against the registry's pattern).
-- POPULATE copies the rows already there when the view is created; rows
-- inserted during that copy may be missed, so run it before the tenant sends
-- (or re-create the tenant's database at a quiet time).

CREATE DATABASE IF NOT EXISTS {own};

CREATE MATERIALIZED VIEW IF NOT EXISTS {own}.notify_events
ENGINE = MergeTree()
PARTITION BY toDate(at)
ORDER BY (event, at, message_id)
POPULATE AS SELECT * FROM {shared}.notify_events WHERE tenant = '{tenant}';

CREATE MATERIALIZED VIEW IF NOT EXISTS {own}.notify_deliveries
ENGINE = MergeTree()
PARTITION BY toDate(sent_at)
ORDER BY (channel, provider, sent_at, delivery_id)
POPULATE AS SELECT * FROM {shared}.notify_deliveries WHERE tenant = '{tenant}';
