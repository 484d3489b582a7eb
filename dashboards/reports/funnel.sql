-- Funnel: requested -> dispatched -> sent -> delivered -> read -> clicked
SELECT
    count(DISTINCT CASE WHEN event = 'accepted' THEN message_id ELSE NULL END) AS requested,
    count(DISTINCT CASE WHEN event = 'dispatched' THEN delivery_id ELSE NULL END) AS dispatched,
    count(DISTINCT CASE WHEN event = 'sent' THEN delivery_id ELSE NULL END) AS sent,
    count(DISTINCT CASE WHEN event = 'delivered' THEN delivery_id ELSE NULL END) AS delivered,
    count(DISTINCT CASE WHEN event = 'read' THEN delivery_id ELSE NULL END) AS read,
    count(DISTINCT CASE WHEN event = 'clicked' THEN delivery_id ELSE NULL END) AS clicked
FROM notify_events
