//! `notiflow dashboard`: the built-in page (dashboards/page/index.html) with a
//! chart and a table per report, served with the reports' data as JSON.
//! Same reports, same stores as `notiflow report`: ClickHouse when
//! `[clickhouse]` is set, else the Parquet archive. No outside scripts: the
//! page draws its charts itself (SVG), so it works offline.
//!
//! Routes: `GET /` (the page), `GET /api/reports` (names and titles),
//! `GET /api/reports/{name}?tenant=ID` (`{"title", "columns", "rows"}`), `GET /healthz`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::config::Config;
use crate::report;

const PAGE: &str = include_str!("../../dashboards/page/index.html");

struct Dashboard {
    config: Config,
    reports: PathBuf,
}

/// Serves until interrupted; prints the bound address first (port 0 picks one).
pub async fn serve(config: Config, reports: PathBuf, listen: &str) -> anyhow::Result<()> {
    report::list(&reports)?; // A missing reports folder fails at start, not on the first request.
    let state = Arc::new(Dashboard { config, reports });
    let app = Router::new()
        .route("/", get(|| async { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE) }))
        .route("/healthz", get(|| async { StatusCode::OK }))
        .route("/api/reports", get(list))
        .route("/api/reports/{name}", get(run))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("dashboard listen {listen}"))?;
    println!("dashboard: listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).with_graceful_shutdown(crate::shutdown::requested()).await?;
    Ok(())
}

fn failure(status: StatusCode, message: String) -> Response {
    (status, axum::Json(json!({"error": message}))).into_response()
}

async fn list(State(dashboard): State<Arc<Dashboard>>) -> Response {
    match report::list(&dashboard.reports) {
        Ok(reports) => axum::Json(reports.iter().map(|r| json!({"name": r.name, "title": r.title})).collect::<Vec<_>>()).into_response(),
        Err(err) => failure(StatusCode::INTERNAL_SERVER_ERROR, format!("{err:#}")),
    }
}

async fn run(State(dashboard): State<Arc<Dashboard>>, Path(name): Path<String>, Query(query): Query<HashMap<String, String>>) -> Response {
    let report = match report::load(&dashboard.reports, &name) {
        Ok(report) => report,
        Err(err) => return failure(StatusCode::NOT_FOUND, format!("{err:#}")),
    };
    let tenant = query.get("tenant").map(String::as_str).filter(|t| !t.is_empty());
    match report::run(&dashboard.config, &report, tenant).await {
        Ok(table) => axum::Json(json!({"name": report.name, "title": report.title, "chart": report.chart, "columns": table.columns, "rows": table.rows})).into_response(),
        Err(err) => failure(StatusCode::BAD_REQUEST, format!("{err:#}")),
    }
}
