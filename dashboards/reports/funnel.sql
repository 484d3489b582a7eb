-- Funnel: requested -> dispatched -> sent -> delivered -> read -> clicked (distinct messages / deliveries)
-- coalesce: ClickHouse 18.16 answers NULL for a count(DISTINCT) that saw only NULLs.
SELECT
    coalesce(count(DISTINCT CASE WHEN event = 'accepted' THEN message_id ELSE NULL END), 0) AS requested,
    coalesce(count(DISTINCT CASE WHEN event = 'dispatched' THEN delivery_id ELSE NULL END), 0) AS dispatched,
    coalesce(count(DISTINCT CASE WHEN event = 'sent' THEN delivery_id ELSE NULL END), 0) AS sent,
    coalesce(count(DISTINCT CASE WHEN event = 'delivered' THEN delivery_id ELSE NULL END), 0) AS delivered,
    coalesce(count(DISTINCT CASE WHEN event = 'read' THEN delivery_id ELSE NULL END), 0) AS read,
    coalesce(count(DISTINCT CASE WHEN event = 'clicked' THEN delivery_id ELSE NULL END), 0) AS clicked
FROM notify_events
