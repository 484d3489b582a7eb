-- What the pipeline held back: dedupe, caps, quiet hours, schedules, expiry, recalls, opt-outs, rejections
SELECT event, count(*) AS events
FROM notify_events
WHERE event IN ('deduped', 'capped', 'deferred', 'scheduled', 'expired', 'recalled', 'opted_out', 'no_channel', 'rejected', 'duplicate_request')
GROUP BY event
ORDER BY event
