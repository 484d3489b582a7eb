//! Prometheus metrics and health: a process-wide recorder, and `GET /metrics`,
//! `GET /healthz` (the process answers) and `GET /readyz` (the command has
//! started: connected, subscribed or listening) on `[metrics] listen`, served
//! by every long-running command.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Installs the recorder once per process; later calls return the same handle.
pub fn recorder() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(&[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5])
                .expect("static buckets are valid")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            describe();
            handle
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!("notiflow_records_in_total", "Records consumed, per topic.");
    metrics::describe_counter!("notiflow_records_out_total", "Records produced, per topic.");
    metrics::describe_counter!("notiflow_dlq_total", "Records dead-lettered, per reason code.");
    metrics::describe_histogram!("notiflow_batch_seconds", "Time from batch read to offsets committed.");
    metrics::describe_gauge!("notiflow_consumer_lag", "Records behind the partition end, per topic partition.");
    metrics::describe_gauge!("notiflow_late_rows", "Rows a windowed operator dropped as late since start, per flow and stage.");
    metrics::describe_counter!("notiflow_offset_gap_records_total", "Source offsets the broker skipped (records never delivered).");
    metrics::describe_counter!("notiflow_udf_errors_total", "Rows a UDF failed on (returned as null), per UDF.");
    metrics::describe_counter!("notiflow_checkpoints_total", "Checkpoints written.");
    metrics::describe_gauge!("notiflow_last_checkpoint_timestamp_seconds", "When the last checkpoint was written (Unix seconds; age = time() - this).");
    metrics::describe_counter!("notiflow_sends_total", "deliver: send attempts per channel, provider and status (accepted, retrying, failed).");
    metrics::describe_gauge!("notiflow_held_records", "Records held for later (quiet hours, send_at), per flow.");
    metrics::describe_histogram!("notiflow_handoff_seconds", "deliver: dispatch record read -> handed to a provider worker, per channel and lane.");
    metrics::describe_gauge!("notiflow_provider_circuit", "deliver: a provider's circuit breaker per channel and provider (0 closed, 1 open, 2 probing).");
    metrics::describe_counter!("notiflow_gateway_responses_total", "gateway: error responses, per error code.");
    metrics::describe_counter!("notiflow_gateway_accepted_total", "gateway: requests written to notify.requests.");
    metrics::describe_counter!("notiflow_receipts_pulled_total", "receipts: delivery receipts pulled from providers.");
    metrics::describe_counter!("notiflow_receipts_pull_errors_total", "receipts: failed receipt pulls.");
    metrics::describe_counter!("notiflow_receipts_refused_total", "receipts: callbacks refused, per reason.");
    metrics::describe_counter!("notiflow_clickhouse_rows_total", "sink: rows inserted into ClickHouse, per table.");
    metrics::describe_counter!("notiflow_clickhouse_retries_total", "sink: ClickHouse inserts retried.");
    metrics::describe_counter!("notiflow_sink_undecodable_total", "sink: records that could not be decoded (skipped).");
    metrics::describe_counter!("notiflow_bad_data_dropped_total", "Lookup-table records dropped as unreadable, per table.");
    metrics::describe_counter!("notiflow_clicks_unrecorded_total", "Tracked clicks redirected but not recorded.");
}

static READY: AtomicBool = AtomicBool::new(false);

/// The command has started (`/readyz` answers 200 from now on).
pub fn mark_ready() {
    READY.store(true, Ordering::Relaxed);
}

/// The command cannot do its work for now (its brokers are down): `/readyz` answers 503 until `mark_ready`.
pub fn mark_unready() {
    READY.store(false, Ordering::Relaxed);
}

/// Installs the recorder and, unless `[metrics] listen` is empty, serves
/// `/metrics`, `/healthz` and `/readyz` there for a long-running `command`.
pub async fn serve_for(config: &crate::config::Config, command: &str) -> anyhow::Result<Option<SocketAddr>> {
    let handle = recorder();
    if config.metrics.listen.is_empty() {
        return Ok(None);
    }
    let addr = serve(&config.metrics.listen, handle).await.map_err(|err| {
        anyhow::anyhow!(
            "{command}: [metrics] listen {}: {err} (each long-running notiflow command on a host needs its own address; empty disables it)",
            config.metrics.listen
        )
    })?;
    tracing::info!(%addr, command, "metrics at /metrics, health at /healthz and /readyz");
    Ok(Some(addr))
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the process ends. Returns the bound address.
pub async fn serve(listen: &str, handle: PrometheusHandle) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(move || std::future::ready(handle.render())))
        .route("/healthz", get(|| std::future::ready("ok\n")))
        .route(
            "/readyz",
            get(|| async {
                if READY.load(Ordering::Relaxed) {
                    (axum::http::StatusCode::OK, "ready\n")
                } else {
                    (axum::http::StatusCode::SERVICE_UNAVAILABLE, "starting\n")
                }
            }),
        );
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!(%err, "metrics endpoint stopped");
        }
    });
    Ok(addr)
}

#[cfg(test)]
mod tests {
    /// Metric names in a text: `notiflow_` followed by name characters.
    fn names(text: &str) -> std::collections::BTreeSet<String> {
        text.match_indices("notiflow_")
            .map(|(i, _)| text[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>())
            .filter(|n| n.len() > "notiflow_".len())
            .collect()
    }

    #[test]
    fn the_operations_dashboard_queries_only_metrics_notiflow_records() {
        let source = include_str!("metrics_http.rs");
        let described: std::collections::BTreeSet<String> =
            source.split("describe_").skip(1).filter_map(|s| s.split('"').nth(1)).map(str::to_string).collect();
        let dashboard = include_str!("../../dashboards/grafana/provisioning/dashboards/operations.json");
        let used = names(dashboard);
        assert!(used.len() >= 10, "{used:?}");
        for name in used {
            let base = ["_bucket", "_sum", "_count"].iter().fold(name.clone(), |n, suffix| n.strip_suffix(suffix).map(str::to_string).unwrap_or(n));
            assert!(described.contains(&base), "operations.json queries {name}, which no command records");
        }
    }
}
