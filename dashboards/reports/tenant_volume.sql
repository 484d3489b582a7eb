-- Volume per tenant: requests accepted, deliveries dispatched, sent, failed to send
-- chart: requests, dispatched, sent, send_failed
SELECT tenant,
    sum(CASE WHEN event = 'accepted' THEN 1 ELSE 0 END) AS requests,
    sum(CASE WHEN event = 'dispatched' THEN 1 ELSE 0 END) AS dispatched,
    sum(CASE WHEN event = 'sent' THEN 1 ELSE 0 END) AS sent,
    sum(CASE WHEN event = 'send_failed' THEN 1 ELSE 0 END) AS send_failed
FROM notify_events
WHERE tenant != ''
GROUP BY tenant
ORDER BY tenant
