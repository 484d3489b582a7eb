-- Stage 20: one message per recipient and channel, rendered.
--
-- Each accepted send is expanded to its recipients (UNNEST). A `user_id`
-- recipient is looked up in notify.profiles (addresses per channel, time
-- zone, locale, opt-outs, quiet hours); a direct address (phone, email,
-- device token, open_id, inbox user) reaches its own channel only. The
-- channels are the request's (default: all) that the approved template has
-- and the recipient can be reached on, minus opt-outs (choose_channels).
-- The template's content for the channel, in the recipient's locale when it
-- has a translation, is rendered with the request's params; a variable the
-- params lack dead-letters the request as `template_error`.
-- Messages go to notify.messages keyed by tenant/recipient, so stage 30's
-- per-recipient windows (dedupe, caps) hold their state where the key is.

-- Templates: latest approved version per tenant/name (`notiflow template put`).
CREATE TABLE templates (
    id TEXT, tenant TEXT, name TEXT, version BIGINT, status TEXT,
    channels JSON, locale TEXT, content JSON, translations JSON, dedupe_window_s BIGINT
) WITH (connector = 'kafka', type = 'lookup', topic = 'notify.templates', 'lookup.key_field' = 'id');

-- Profiles: per tenant/user_id (`notiflow profile put`).
CREATE TABLE profiles (
    id TEXT, tenant TEXT, user_id TEXT, addresses JSON, timezone TEXT, locale TEXT,
    opt_outs JSON, quiet_start TEXT, quiet_end TEXT
) WITH (connector = 'kafka', type = 'lookup', topic = 'notify.profiles', 'lookup.key_field' = 'id');

CREATE TABLE messages (
    delivery_id TEXT, message_id TEXT, request_id TEXT, tenant TEXT, template TEXT, template_version BIGINT,
    recipient TEXT, channel TEXT, address TEXT, priority TEXT, category TEXT, locale TEXT,
    timezone TEXT, quiet_start TEXT, quiet_end TEXT, local_day TEXT,
    subject TEXT, body TEXT, html TEXT, content_hash TEXT, dedupe_window_s BIGINT,
    requested_at TIMESTAMP, send_at TIMESTAMP, expires_at TIMESTAMP, partition_key TEXT
) WITH (connector = 'kafka', type = 'sink', format = 'json', topic = 'notify.messages', 'sink.key_field' = 'partition_key');

CREATE VIEW with_template AS
SELECT a.*, t.version AS template_version, t.channels AS template_channels, t.locale AS template_locale,
    t.content, t.translations, t.dedupe_window_s
FROM accepted a LEFT JOIN templates t ON a.tenant || '/' || a.template = t.id
WHERE a.type = 'send';

CREATE VIEW recipients AS
SELECT message_id, request_id, tenant, template, template_version, template_channels, template_locale,
    content, translations, dedupe_window_s, channels, params, priority, category, locale, send_at, expires_at, requested_at,
    _partition, _offset, unnest(recipients) AS r
FROM with_template WHERE template_version IS NOT NULL;

-- Who the recipient is, and where they can be reached.
CREATE VIEW reachable AS
SELECT x.*,
    CASE WHEN x.r['user_id'] IS NOT NULL THEN 'user:' || x.r['user_id']
         WHEN x.r['phone'] IS NOT NULL THEN 'phone:' || x.r['phone']
         WHEN x.r['email'] IS NOT NULL THEN 'email:' || lower(x.r['email'])
         WHEN x.r['device_token'] IS NOT NULL THEN x.r['platform'] || ':' || x.r['device_token']
         WHEN x.r['open_id'] IS NOT NULL THEN 'wechat:' || x.r['open_id']
         ELSE 'inbox:' || x.r['inbox_user'] END AS recipient,
    CASE WHEN x.r['user_id'] IS NOT NULL THEN p.addresses
         WHEN x.r['phone'] IS NOT NULL THEN '["sms"]'
         WHEN x.r['email'] IS NOT NULL THEN '["email"]'
         WHEN x.r['platform'] = 'webpush' THEN '["webpush"]'
         WHEN x.r['platform'] = 'apns' THEN '["apns"]'
         WHEN x.r['device_token'] IS NOT NULL THEN '["push"]'
         WHEN x.r['open_id'] IS NOT NULL THEN '["wechat"]'
         ELSE '["inbox"]' END AS reachable,
    coalesce(x.r['phone'], x.r['email'], x.r['device_token'], x.r['open_id'], x.r['inbox_user']) AS direct_address,
    p.addresses, p.opt_outs,
    coalesce(p.timezone, 'UTC') AS timezone,
    coalesce(x.locale, p.locale, x.template_locale, 'en') AS recipient_locale,
    p.quiet_start, p.quiet_end
FROM recipients x LEFT JOIN profiles p ON x.tenant || '/' || x.r['user_id'] = p.id;

CREATE VIEW channel_choice AS
SELECT *,
    choose_channels(channels, template_channels, reachable, opt_outs, category, 'send') AS chosen,
    choose_channels(channels, template_channels, reachable, opt_outs, category, 'opted_out') AS opted_out
FROM reachable;

CREATE VIEW per_channel AS
SELECT message_id, request_id, tenant, template, template_version, content, translations, dedupe_window_s, params, priority,
    category, send_at, expires_at, requested_at, recipient, addresses, direct_address, timezone, recipient_locale,
    quiet_start, quiet_end, _partition, _offset, unnest(string_to_array(chosen, ',')) AS channel
FROM channel_choice WHERE chosen <> '';

-- The channel's content in the recipient's locale, else the template's own.
CREATE VIEW rendered AS
SELECT *,
    render_template(coalesce(json_get(json_get(json_get(translations, recipient_locale), channel), 'subject'),
                             json_get(json_get(content, channel), 'subject')),
                    coalesce(params, '{}'), recipient_locale, 'text') AS subject,
    render_template(coalesce(json_get(json_get(json_get(translations, recipient_locale), channel), 'body'),
                             json_get(json_get(content, channel), 'body')),
                    coalesce(params, '{}'), recipient_locale, 'text') AS body,
    render_template(coalesce(json_get(json_get(json_get(translations, recipient_locale), channel), 'html'),
                             json_get(json_get(content, channel), 'html')),
                    coalesce(params, '{}'), recipient_locale, 'html') AS html
FROM per_channel;

INSERT INTO messages
SELECT
    concat('d_', substr(message_id(tenant, concat(request_id, '|', recipient, '|', channel)), 3)) AS delivery_id,
    message_id, request_id, tenant, template, template_version, recipient, channel,
    coalesce(json_get(addresses, channel), direct_address) AS address,
    priority, category, recipient_locale AS locale, timezone, quiet_start, quiet_end,
    local_day(timezone, coalesce(send_at, requested_at)) AS local_day,
    subject, body, html,
    content_hash(concat(coalesce(subject, ''), chr(31), coalesce(body, ''), chr(31), coalesce(html, ''))) AS content_hash,
    dedupe_window_s, requested_at, send_at, expires_at,
    concat(tenant, '/', recipient) AS partition_key
FROM rendered;

-- A template that does not exist or has no approved version: nothing is sent.
INSERT INTO events
SELECT 'rejected' AS event, message_id, CAST(NULL AS TEXT) AS delivery_id, tenant, request_id, type AS kind,
    priority, category, CAST(NULL AS TEXT) AS recipient, CAST(NULL AS TEXT) AS channel,
    concat('unknown_template: no approved version of ', template) AS reason, CAST(NULL AS TEXT) AS topic,
    CAST(NULL AS TEXT) AS release_at, concat('notify.requests/', _partition, '/', _offset) AS source,
    to_char(processing_time(), '%Y-%m-%dT%H:%M:%S%.3fZ') AS at
FROM with_template WHERE template_version IS NULL;

-- A recipient left without any channel.
INSERT INTO events
SELECT 'no_channel' AS event, message_id, CAST(NULL AS TEXT) AS delivery_id, tenant, request_id, 'send' AS kind,
    priority, category, recipient, CAST(NULL AS TEXT) AS channel,
    CASE WHEN opted_out <> '' THEN 'every channel opted out' ELSE 'no requested channel of the template reaches the recipient' END AS reason,
    CAST(NULL AS TEXT) AS topic, CAST(NULL AS TEXT) AS release_at,
    concat('notify.requests/', _partition, '/', _offset) AS source,
    to_char(processing_time(), '%Y-%m-%dT%H:%M:%S%.3fZ') AS at
FROM channel_choice WHERE chosen = '';

-- Each channel an opt-out removed.
INSERT INTO events
SELECT 'opted_out' AS event, message_id, CAST(NULL AS TEXT) AS delivery_id, tenant, request_id, 'send' AS kind,
    priority, category, recipient, channel, concat('opt-out of ', category, ' on ', channel) AS reason,
    CAST(NULL AS TEXT) AS topic, CAST(NULL AS TEXT) AS release_at,
    concat('notify.requests/', _partition, '/', _offset) AS source,
    to_char(processing_time(), '%Y-%m-%dT%H:%M:%S%.3fZ') AS at
FROM (SELECT message_id, tenant, request_id, priority, category, recipient, _partition, _offset,
             unnest(string_to_array(opted_out, ',')) AS channel
      FROM channel_choice WHERE opted_out <> '');
