//! Reports: one SQL file per dashboard panel (`dashboards/reports/*.sql`),
//! run against ClickHouse when `[clickhouse]` is set, else against the
//! Parquet archive with DataFusion (the embedded default's stand-in).
//!
//! The same text runs on both: tables `notify_deliveries` and `notify_events`
//! (columns unqualified), SQL both dialects share, and `quantile_exact(col,
//! level)`, rewritten to ClickHouse's `quantileExact(level)(col)` and
//! provided to DataFusion with ClickHouse's definition (the value at
//! position floor(level * n) of the sorted non-null values).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use arrow::array::{Array, ArrayRef, AsArray, Float64Array, ListArray};
use arrow::datatypes::{DataType, Field, Float64Type};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Accumulator, Volatility, create_udaf};
use datafusion::prelude::{ParquetReadOptions, SessionContext};

use notiflow_parquet::ArchiveLocation;

use crate::config::Config;
use crate::warehouse::DATASETS;

pub struct Report {
    pub name: String,
    /// The file's first comment line.
    pub title: String,
    /// Columns the dashboard charts (a `-- chart: a, b` line); empty: every numeric column.
    pub chart: Vec<String>,
    pub sql: String,
}

/// Every report in `dir`, by name.
pub fn list(dir: &Path) -> anyhow::Result<Vec<Report>> {
    let mut reports = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reports folder {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "sql") {
            let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
            reports.push(load(dir, &name)?);
        }
    }
    reports.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(reports)
}

pub fn load(dir: &Path, name: &str) -> anyhow::Result<Report> {
    anyhow::ensure!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "report names are letters, digits and _: {name:?}");
    let path: PathBuf = dir.join(format!("{name}.sql"));
    let sql = std::fs::read_to_string(&path).with_context(|| format!("no report {name} ({})", path.display()))?;
    let title = sql.lines().next().and_then(|l| l.strip_prefix("--")).map(|t| t.trim().to_string()).unwrap_or_else(|| name.to_string());
    let chart = sql
        .lines()
        .find_map(|l| l.trim().strip_prefix("-- chart:"))
        .map(|cols| cols.split(',').map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect())
        .unwrap_or_default();
    let body: String = sql.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n");
    Ok(Report { name: name.into(), title, chart, sql: body.trim().trim_end_matches(';').to_string() })
}

/// A result as text cells. Fractional numbers are written the same way
/// whichever store answered (`95` not `95.0`, as ClickHouse prints them).
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

fn normalize(cell: String) -> String {
    match cell.parse::<f64>() {
        Ok(number) if cell.contains('.') && number.is_finite() => format!("{number}"),
        _ => cell,
    }
}

impl Table {
    fn new(columns: Vec<String>, rows: Vec<Vec<String>>) -> Self {
        Table { columns, rows: rows.into_iter().map(|r| r.into_iter().map(normalize).collect()).collect() }
    }

    pub fn render(&self) -> String {
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|i| self.rows.iter().map(|r| r[i].chars().count()).chain([self.columns[i].chars().count()]).max().unwrap_or(0))
            .collect();
        let line = |cells: &[String]| {
            let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!(" {c:<w$} ")).collect();
            format!("|{}|\n", padded.join("|"))
        };
        let rule = format!("+{}+\n", widths.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("+"));
        let mut out = rule.clone();
        out.push_str(&line(&self.columns));
        out.push_str(&rule);
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out.push_str(&rule);
        out
    }

    /// The cell of `column` in the row whose first cell is `key`.
    pub fn cell(&self, key: &str, column: &str) -> Option<&str> {
        let index = self.columns.iter().position(|c| c == column)?;
        self.rows.iter().find(|r| r[0] == key).map(|r| r[index].as_str())
    }
}

/// The report's SQL with every table narrowed to one tenant.
pub fn for_tenant(sql: &str, tenant: Option<&str>) -> anyhow::Result<String> {
    let Some(tenant) = tenant else { return Ok(sql.to_string()) };
    anyhow::ensure!(
        !tenant.is_empty() && tenant.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
        "tenant ids are letters, digits, - _ and .: {tenant:?}"
    );
    let mut out = sql.to_string();
    for dataset in DATASETS {
        let table = dataset.table;
        let narrowed = format!("(SELECT * FROM {table} WHERE tenant = '{tenant}') AS {table}");
        out = replace_word(&out, table, &narrowed);
    }
    Ok(out)
}

fn replace_word(text: &str, word: &str, with: &str) -> String {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(word) {
        let before_ok = rest[..i].chars().next_back().is_none_or(|c| !is_ident(c)) && (i > 0 || out.chars().next_back().is_none_or(|c| !is_ident(c)));
        let after_ok = rest[i + word.len()..].chars().next().is_none_or(|c| !is_ident(c));
        out.push_str(&rest[..i]);
        out.push_str(if before_ok && after_ok { with } else { word });
        rest = &rest[i + word.len()..];
    }
    out.push_str(rest);
    out
}

/// `quantile_exact(col, level)` -> `quantileExact(level)(col)`.
pub fn clickhouse_dialect(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(i) = rest.find("quantile_exact(") {
        out.push_str(&rest[..i]);
        let args_start = i + "quantile_exact(".len();
        let Some(close) = rest[args_start..].find(')') else { break };
        let args = &rest[args_start..args_start + close];
        match args.rsplit_once(',') {
            Some((column, level)) => out.push_str(&format!("quantileExact({})({})", level.trim(), column.trim())),
            None => out.push_str(&rest[i..args_start + close + 1]),
        }
        rest = &rest[args_start + close + 1..];
    }
    out.push_str(rest);
    out
}

pub async fn run(config: &Config, report: &Report, tenant: Option<&str>) -> anyhow::Result<Table> {
    let sql = for_tenant(&report.sql, tenant)?;
    match &config.clickhouse {
        Some(clickhouse) => run_clickhouse(&clickhouse.client()?, &sql).await,
        None => run_archive(&config.archive.location()?, &sql).await,
    }
}

pub async fn run_clickhouse(client: &clickhouse::Client, sql: &str) -> anyhow::Result<Table> {
    let sql = clickhouse_dialect(sql);
    let mut cursor = client.query(&sql).fetch_bytes("TabSeparatedWithNames").context("report query")?;
    let body = cursor.collect().await.with_context(|| format!("ClickHouse: {sql}"))?;
    let text = String::from_utf8_lossy(&body);
    let mut lines = text.lines().map(|l| l.split('\t').map(unescape_tsv).collect::<Vec<_>>());
    let columns = lines.next().unwrap_or_default();
    Ok(Table::new(columns, lines.collect()))
}

fn unescape_tsv(cell: &str) -> String {
    let mut out = String::with_capacity(cell.len());
    let mut chars = cell.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('t') => out.push('\t'),
                Some('n') => out.push('\n'),
                Some('N') => out.push_str("NULL"),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub async fn run_archive(location: &ArchiveLocation, sql: &str) -> anyhow::Result<Table> {
    let ctx = archive_session(location).await?;
    let frame = ctx.sql(sql).await?;
    let columns = frame.schema().fields().iter().map(|f| f.name().clone()).collect();
    let mut table = to_table(&frame.collect().await?)?;
    table.columns = columns;
    Ok(table)
}

/// A session with the archive's datasets (local or S3) registered under their
/// ClickHouse table names, and `quantile_exact`.
pub async fn archive_session(location: &ArchiveLocation) -> anyhow::Result<SessionContext> {
    let ctx = SessionContext::new();
    ctx.register_udaf(quantile_exact());
    if location.is_s3() {
        ctx.register_object_store(&url::Url::parse(location.root_url())?, location.store());
    }
    for dataset in DATASETS {
        // An empty table when nothing was archived yet: reports still run.
        if location.has_files(dataset.name).await? {
            let schema = dataset.arrow_schema();
            let options = ParquetReadOptions::default()
                .table_partition_cols(vec![("dt".to_string(), DataType::Utf8), ("hour".to_string(), DataType::Utf8)])
                .schema(&schema);
            ctx.register_parquet(dataset.table, location.dataset_url(dataset.name), options).await?;
        } else {
            ctx.register_batch(dataset.table, RecordBatch::new_empty(dataset.arrow_schema()))?;
        }
    }
    Ok(ctx)
}

pub async fn query(ctx: &SessionContext, sql: &str) -> anyhow::Result<Vec<RecordBatch>> {
    Ok(ctx.sql(sql).await?.collect().await?)
}

fn to_table(batches: &[RecordBatch]) -> anyhow::Result<Table> {
    let Some(first) = batches.first() else { return Ok(Table { columns: vec![], rows: vec![] }) };
    let columns = first.schema().fields().iter().map(|f| f.name().clone()).collect();
    let options = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for batch in batches {
        let formatters = batch.columns().iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &options)).collect::<Result<Vec<_>, _>>()?;
        for row in 0..batch.num_rows() {
            rows.push(formatters.iter().map(|f| f.value(row).to_string()).collect());
        }
    }
    Ok(Table::new(columns, rows))
}

pub fn render(batches: &[RecordBatch]) -> String {
    arrow::util::pretty::pretty_format_batches(batches).map(|t| t.to_string()).unwrap_or_else(|e| e.to_string())
}

/// ClickHouse's `quantileExact(level)(x)` as `quantile_exact(x, level)`.
fn quantile_exact() -> datafusion::logical_expr::AggregateUDF {
    create_udaf(
        "quantile_exact",
        vec![DataType::Float64, DataType::Float64],
        Arc::new(DataType::Float64),
        Volatility::Immutable,
        Arc::new(|_| Ok(Box::new(QuantileExact::default()))),
        Arc::new(vec![DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true))), DataType::Float64]),
    )
}

#[derive(Debug, Default)]
struct QuantileExact {
    values: Vec<f64>,
    level: Option<f64>,
}

impl QuantileExact {
    fn take(&mut self, values: &Float64Array) {
        self.values.extend(values.iter().flatten());
    }

    fn note_level(&mut self, levels: &ArrayRef) {
        let levels = levels.as_primitive::<Float64Type>();
        if self.level.is_none() {
            self.level = levels.iter().flatten().next();
        }
    }
}

impl Accumulator for QuantileExact {
    fn update_batch(&mut self, values: &[ArrayRef]) -> datafusion::common::Result<()> {
        self.take(values[0].as_primitive::<Float64Type>());
        self.note_level(&values[1]);
        Ok(())
    }

    fn evaluate(&mut self) -> datafusion::common::Result<ScalarValue> {
        let (Some(level), false) = (self.level, self.values.is_empty()) else { return Ok(ScalarValue::Float64(None)) };
        self.values.sort_by(f64::total_cmp);
        let n = self.values.len();
        let index = if level < 1.0 { ((level * n as f64) as usize).min(n - 1) } else { n - 1 };
        Ok(ScalarValue::Float64(Some(self.values[index])))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.values.capacity() * 8
    }

    fn state(&mut self) -> datafusion::common::Result<Vec<ScalarValue>> {
        let list = ListArray::from_iter_primitive::<Float64Type, _, _>([Some(self.values.iter().map(|v| Some(*v)))]);
        Ok(vec![ScalarValue::List(Arc::new(list)), ScalarValue::Float64(self.level)])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> datafusion::common::Result<()> {
        let lists = states[0].as_list::<i32>();
        for i in 0..lists.len() {
            if !lists.is_null(i) {
                self.take(lists.value(i).as_primitive::<Float64Type>());
            }
        }
        self.note_level(&states[1]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_rewritten_for_clickhouse() {
        assert_eq!(
            clickhouse_dialect("SELECT quantile_exact(send_latency_ms, 0.5) AS p50, quantile_exact( x ,0.99) FROM t"),
            "SELECT quantileExact(0.5)(send_latency_ms) AS p50, quantileExact(0.99)(x) FROM t"
        );
    }

    #[test]
    fn tenant_narrows_every_table_and_refuses_quotes() {
        let sql = for_tenant("SELECT count(*) FROM notify_deliveries, notify_deliveries_x", Some("acme")).unwrap();
        assert_eq!(sql, "SELECT count(*) FROM (SELECT * FROM notify_deliveries WHERE tenant = 'acme') AS notify_deliveries, notify_deliveries_x");
        assert!(for_tenant("SELECT 1", Some("a' OR 1=1 --")).is_err());
    }

    /// Grafana's panels run the same SQL as `notiflow report` (ClickHouse dialect): a changed
    /// report must be changed there too.
    #[test]
    fn grafana_panels_run_the_report_sql() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(root.join("dashboards/grafana/provisioning/dashboards/notiflow.json")).unwrap()).unwrap();
        let reports = list(&root.join("dashboards/reports")).unwrap();
        let panels = dashboard["panels"].as_array().unwrap();
        assert_eq!(panels.len(), reports.len(), "one panel per report");
        for report in &reports {
            let panel = panels.iter().find(|p| p["title"] == report.title.as_str()).unwrap_or_else(|| panic!("no panel titled {:?}", report.title));
            assert_eq!(panel["targets"][0]["rawSql"].as_str().unwrap(), clickhouse_dialect(&report.sql), "panel {:?}", report.title);
        }
    }

    #[tokio::test]
    async fn quantile_exact_matches_clickhouse_definition() {
        let ctx = SessionContext::new();
        ctx.register_udaf(quantile_exact());
        // 10 values 1..=10 and a null: p50 is the value at index floor(0.5 * 10) = 5 -> 6; p99 -> index 9 -> 10.
        let sql = "SELECT quantile_exact(v, 0.5) AS p50, quantile_exact(v, 0.99) AS p99, quantile_exact(v, 0.0) AS p0 FROM \
                   (VALUES (1.0),(2.0),(3.0),(4.0),(5.0),(6.0),(7.0),(8.0),(9.0),(10.0),(NULL)) AS t(v)";
        let table = to_table(&query(&ctx, sql).await.unwrap()).unwrap();
        assert_eq!(table.rows, vec![vec!["6".to_string(), "10".to_string(), "1".to_string()]]);
    }
}
