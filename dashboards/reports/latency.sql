-- Latency per channel (ms): enqueue -> provider accepted, accepted -> delivered; p50 / p90 / p99
-- chart: send_p50_ms, send_p90_ms, send_p99_ms, delivery_p50_ms, delivery_p90_ms, delivery_p99_ms
-- floor(x * 10 + 0.5) / 10 rounds halves up on ClickHouse 18.16, current ClickHouse (whose round()
-- rounds halves to even) and DataFusion alike.
SELECT channel,
    count(*) AS deliveries,
    floor(quantile_exact(send_latency_ms, 0.5) * 10 + 0.5) / 10 AS send_p50_ms,
    floor(quantile_exact(send_latency_ms, 0.9) * 10 + 0.5) / 10 AS send_p90_ms,
    floor(quantile_exact(send_latency_ms, 0.99) * 10 + 0.5) / 10 AS send_p99_ms,
    floor(quantile_exact(delivery_latency_ms, 0.5) * 10 + 0.5) / 10 AS delivery_p50_ms,
    floor(quantile_exact(delivery_latency_ms, 0.9) * 10 + 0.5) / 10 AS delivery_p90_ms,
    floor(quantile_exact(delivery_latency_ms, 0.99) * 10 + 0.5) / 10 AS delivery_p99_ms
FROM notify_deliveries
GROUP BY channel
ORDER BY channel
