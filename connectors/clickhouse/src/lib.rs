//! ClickHouse connection settings and DDL for notiflow. The same DDL files run
//! on Debian's ClickHouse 18.16 (used in tests) and on current servers
//! (docker-compose): no TTL clauses, no DateTime64, no Map; retention is by
//! dropping day partitions.

pub mod sink;
mod tls;

use std::path::PathBuf;

use clickhouse::Client;
use serde::Deserialize;

pub use sink::{PreparedRow, TableSink};

/// How to reach ClickHouse over HTTP.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// Base URL of the HTTP interface, e.g. `http://127.0.0.1:8123`, or
    /// `https://host:8443` for TLS (the server's `https_port`).
    pub url: String,
    /// PEM file of the CAs that sign the server's certificate (https URLs);
    /// absent: the system's CAs.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Database holding notiflow's tables.
    #[serde(default = "default_database")]
    pub database: String,
    /// User name.
    #[serde(default = "default_user")]
    pub user: String,
    /// Name of the environment variable that holds the password (never the
    /// password itself: config files end up in repositories).
    #[serde(default)]
    pub password_env: Option<String>,
    /// `notiflow sink` inserts once this many rows are buffered...
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
    /// ...or once the oldest buffered row waited this long.
    #[serde(default = "default_batch_interval_ms")]
    pub batch_interval_ms: u64,
    /// Attempts per insert before the sink stops with the error.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Create the tables and views (the DDL in dashboards/clickhouse/ddl) at start-up when missing.
    #[serde(default = "default_create_tables")]
    pub create_tables: bool,
}

fn default_batch_rows() -> usize {
    10_000
}
fn default_batch_interval_ms() -> u64 {
    1_000
}
fn default_max_attempts() -> u32 {
    10
}
fn default_create_tables() -> bool {
    true
}

fn default_database() -> String {
    "default".into()
}

fn default_user() -> String {
    "default".into()
}

#[derive(Debug, thiserror::Error)]
pub enum ClickHouseError {
    #[error("environment variable {0} (password_env) is not set")]
    MissingPassword(String),
    #[error("TLS to ClickHouse: {0}")]
    Tls(String),
    #[error("{file}: statement {index} failed: {source}")]
    Ddl { file: String, index: usize, source: clickhouse::error::Error },
    #[error("{what}: {source}")]
    Query { what: String, source: clickhouse::error::Error },
    #[error("table {table} does not match what notiflow writes: {}", problems.join("; "))]
    Schema { table: String, problems: Vec<String> },
}

impl ClickHouseConfig {
    /// Settings that cannot work, found at start-up.
    pub fn check(&self) -> Result<(), String> {
        let https = self.url.starts_with("https://");
        if !https && !self.url.starts_with("http://") {
            return Err(format!("url {:?}: ClickHouse's HTTP interface is http:// or https://", self.url));
        }
        match &self.ca_file {
            Some(path) if !https => Err(format!("ca_file {} is for https URLs; url is {}", path.display(), self.url)),
            Some(path) if !path.is_file() => Err(format!("ca_file: {} is not a readable file", path.display())),
            _ => Ok(()),
        }
    }

    pub fn new(url: impl Into<String>) -> Self {
        ClickHouseConfig {
            url: url.into(),
            ca_file: None,
            database: default_database(),
            user: default_user(),
            password_env: None,
            batch_rows: default_batch_rows(),
            batch_interval_ms: default_batch_interval_ms(),
            max_attempts: default_max_attempts(),
            create_tables: default_create_tables(),
        }
    }

    /// A client that speaks RowBinary without the type-validation header
    /// (`RowBinaryWithNamesAndTypes` does not exist before ClickHouse 24) and
    /// without lz4 (keeps the dependency tree small; inserts are batched).
    pub fn client(&self) -> Result<Client, ClickHouseError> {
        let base = if self.url.starts_with("https://") { tls::client(self.ca_file.as_deref()).map_err(ClickHouseError::Tls)? } else { Client::default() };
        let mut client = base
            .with_url(&self.url)
            .with_database(&self.database)
            .with_user(&self.user)
            .with_validation(false);
        if let Some(var) = &self.password_env {
            let password = std::env::var(var).map_err(|_| ClickHouseError::MissingPassword(var.clone()))?;
            client = client.with_password(password);
        }
        Ok(client)
    }
}

/// Splits a DDL file into statements: `;` ends a statement, `--` starts a
/// comment to the end of the line. (DDL files hold no string literals with
/// `;` or `--`; a file that needs them must be split by hand.)
pub fn statements(sql: &str) -> Vec<String> {
    let without_comments: String = sql
        .lines()
        .map(|line| match line.find("--") {
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    without_comments.split(';').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// Runs every statement of a DDL file, in order.
pub async fn apply_ddl(client: &Client, file: &str, sql: &str) -> Result<usize, ClickHouseError> {
    let statements = statements(sql);
    for (index, statement) in statements.iter().enumerate() {
        client
            .query(statement)
            .execute()
            .await
            .map_err(|source| ClickHouseError::Ddl { file: file.to_string(), index: index + 1, source })?;
    }
    Ok(statements.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_statements_and_drops_comments() {
        let sql = "-- header\nCREATE TABLE a (x UInt8) ENGINE = Memory; -- trailing\n\nCREATE TABLE b (y String) ENGINE = Memory;\n";
        assert_eq!(
            statements(sql),
            vec!["CREATE TABLE a (x UInt8) ENGINE = Memory", "CREATE TABLE b (y String) ENGINE = Memory"]
        );
    }

    #[test]
    fn password_comes_from_the_named_variable() {
        let mut config = ClickHouseConfig::new("http://127.0.0.1:1");
        config.password_env = Some("NOTIFLOW_TEST_SURELY_UNSET_PASSWORD".into());
        assert!(matches!(config.client(), Err(ClickHouseError::MissingPassword(_))));
    }
}
