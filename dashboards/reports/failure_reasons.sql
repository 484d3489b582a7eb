-- Top failure reasons (failed, undelivered by timeout, failed to send)
SELECT reason, channel, state, count(*) AS deliveries
FROM notify_deliveries
WHERE state IN ('failed', 'undelivered_timeout', 'send_failed')
GROUP BY reason, channel, state
ORDER BY deliveries DESC, reason, channel, state
LIMIT 20
