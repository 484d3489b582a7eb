//! Prometheus metrics: a process-wide recorder and `GET /metrics`.

use std::net::SocketAddr;

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
}

/// Serves `/metrics` until the process ends. Returns the bound address.
pub async fn serve(listen: &str, handle: PrometheusHandle) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = Router::new().route("/metrics", get(move || std::future::ready(handle.render())));
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!(%err, "metrics endpoint stopped");
        }
    });
    Ok(addr)
}
