-- Latency per channel (ms): enqueue -> provider accepted, accepted -> delivered; p50 / p90 / p99
-- chart: send_p50_ms, send_p90_ms, send_p99_ms, delivery_p50_ms, delivery_p90_ms, delivery_p99_ms
SELECT channel,
    count(*) AS deliveries,
    round(quantile_exact(send_latency_ms, 0.5), 1) AS send_p50_ms,
    round(quantile_exact(send_latency_ms, 0.9), 1) AS send_p90_ms,
    round(quantile_exact(send_latency_ms, 0.99), 1) AS send_p99_ms,
    round(quantile_exact(delivery_latency_ms, 0.5), 1) AS delivery_p50_ms,
    round(quantile_exact(delivery_latency_ms, 0.9), 1) AS delivery_p90_ms,
    round(quantile_exact(delivery_latency_ms, 0.99), 1) AS delivery_p99_ms
FROM notify_deliveries
GROUP BY channel
ORDER BY channel
