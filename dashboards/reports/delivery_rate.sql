-- Delivery rate per channel and provider (delivered / all deliveries, %)
-- chart: delivered, failed, undelivered_timeout, send_failed, sent_unreported
-- floor(x * 100 + 0.5) / 100: halves round up on every engine (current ClickHouse's round() rounds them to even).
SELECT channel, provider,
    count(*) AS deliveries,
    sum(CASE WHEN state = 'delivered' THEN 1 ELSE 0 END) AS delivered,
    sum(CASE WHEN state = 'failed' THEN 1 ELSE 0 END) AS failed,
    sum(CASE WHEN state = 'undelivered_timeout' THEN 1 ELSE 0 END) AS undelivered_timeout,
    sum(CASE WHEN state = 'send_failed' THEN 1 ELSE 0 END) AS send_failed,
    sum(CASE WHEN state = 'sent' THEN 1 ELSE 0 END) AS sent_unreported,
    floor(10000.0 * sum(CASE WHEN state = 'delivered' THEN 1 ELSE 0 END) / count(*) + 0.5) / 100 AS delivery_rate_pct
FROM notify_deliveries
GROUP BY channel, provider
ORDER BY channel, provider
