//! Exactly-once inserts of Kafka records into one ClickHouse table.
//!
//! Every row carries the Kafka partition and offset it came from
//! (`kafka_partition`, `kafka_offset`), so the table itself records how far
//! each partition got: after a restart, or after an insert whose answer was
//! lost, the sink asks the table (`max(kafka_offset)` per partition) and skips
//! what is already there. That is exact as long as each INSERT is atomic and
//! a partition's rows land in offset order: an INSERT of fewer rows than
//! `max_insert_block_size` (about 1M) into one table partition (one day)
//! becomes one part, all or nothing; [`plan_inserts`] cuts a batch so that no
//! INSERT spans two days and every partition's rows go in order.

use std::collections::BTreeMap;
use std::time::Duration;

use clickhouse::Client;

use crate::ClickHouseError;

/// One row ready to insert, in RowBinary (columns in the sink's order), with its origin.
#[derive(Debug, Clone)]
pub struct PreparedRow {
    pub partition: i32,
    pub offset: i64,
    /// Day of the table partition this row lands in (days since the epoch).
    pub day: i64,
    /// The row's RowBinary encoding, `kafka_partition` / `kafka_offset` included.
    pub bytes: Vec<u8>,
}

pub struct TableSink {
    client: Client,
    table: String,
    columns: Vec<String>,
    /// Next offset to insert per Kafka partition (from the table).
    next: BTreeMap<i32, i64>,
}

/// What a sink expects of its table: column name and ClickHouse type as
/// `system.columns` spells it (e.g. `Nullable(Float64)`).
pub type ExpectedColumns<'a> = &'a [(&'a str, &'a str)];

impl TableSink {
    /// Checks the table's columns against `expected` (a missing column or a
    /// different type fails with both listed) and reads how far each Kafka
    /// partition got.
    pub async fn open(client: Client, database: &str, table: &str, expected: ExpectedColumns<'_>) -> Result<Self, ClickHouseError> {
        let actual: Vec<(String, String)> = client
            .query("SELECT name, type FROM system.columns WHERE database = ? AND table = ?")
            .bind(database)
            .bind(table)
            .fetch_all()
            .await
            .map_err(|source| ClickHouseError::Query { what: format!("columns of {table}"), source })?;
        if actual.is_empty() {
            return Err(ClickHouseError::Schema { table: table.into(), problems: vec![format!("table {database}.{table} does not exist")] });
        }
        let problems: Vec<String> = expected
            .iter()
            .filter_map(|(name, ty)| match actual.iter().find(|(n, _)| n == name) {
                None => Some(format!("column `{name}` {ty} is missing")),
                Some((_, found)) if found != ty => Some(format!("column `{name}` is {found}, expected {ty}")),
                Some(_) => None,
            })
            .collect();
        if !problems.is_empty() {
            return Err(ClickHouseError::Schema { table: table.into(), problems });
        }
        let mut sink = TableSink { client, table: table.into(), columns: expected.iter().map(|(n, _)| n.to_string()).collect(), next: BTreeMap::new() };
        sink.reload_progress().await?;
        Ok(sink)
    }

    /// Next offset per Kafka partition, as the table says.
    pub fn next_offsets(&self) -> &BTreeMap<i32, i64> {
        &self.next
    }

    async fn reload_progress(&mut self) -> Result<(), ClickHouseError> {
        let rows: Vec<(u32, u64)> = self
            .client
            .query(&format!("SELECT kafka_partition, max(kafka_offset) FROM {} GROUP BY kafka_partition", self.table))
            .fetch_all()
            .await
            .map_err(|source| ClickHouseError::Query { what: format!("progress of {}", self.table), source })?;
        self.next = rows.into_iter().map(|(p, max)| (p as i32, max as i64 + 1)).collect();
        Ok(())
    }

    /// Inserts the rows not yet in the table, retrying transient failures
    /// (the table is re-read before each retry, so a retry never duplicates).
    /// Returns how many rows were inserted.
    pub async fn write(&mut self, rows: &[PreparedRow], attempts: u32) -> Result<usize, ClickHouseError> {
        let mut wait = Duration::from_millis(200);
        let mut attempt = 1;
        loop {
            match self.write_once(rows).await {
                Ok(n) => return Ok(n),
                Err(err) if attempt < attempts => {
                    metrics::counter!("notiflow_clickhouse_retries_total", "table" => self.table.clone()).increment(1);
                    tracing::warn!(table = %self.table, %err, attempt, "insert failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(10));
                    attempt += 1;
                    // The failed insert may have landed: ask the table.
                    let _ = self.reload_progress().await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    async fn write_once(&mut self, rows: &[PreparedRow]) -> Result<usize, ClickHouseError> {
        let fresh: Vec<&PreparedRow> = rows.iter().filter(|r| r.offset >= self.next.get(&r.partition).copied().unwrap_or(0)).collect();
        let mut inserted = 0;
        for insert in plan_inserts(&fresh) {
            let mut body = Vec::with_capacity(insert.iter().map(|r| r.bytes.len()).sum());
            for row in &insert {
                body.extend_from_slice(&row.bytes);
            }
            let sql = format!("INSERT INTO {} ({}) FORMAT RowBinary", self.table, self.columns.join(", "));
            let mut statement = self.client.insert_formatted_with(sql);
            let sent = async {
                statement.send(body.into()).await?;
                statement.end().await
            };
            sent.await.map_err(|source| ClickHouseError::Query { what: format!("insert into {}", self.table), source })?;
            for row in &insert {
                let next = self.next.entry(row.partition).or_insert(0);
                *next = (*next).max(row.offset + 1);
            }
            inserted += insert.len();
        }
        metrics::counter!("notiflow_clickhouse_rows_total", "table" => self.table.clone()).increment(inserted as u64);
        Ok(inserted)
    }
}

/// Cuts rows (in read order) into INSERTs that each hold one day only and
/// keep every Kafka partition's rows in offset order across INSERTs: rows of
/// a partition are taken in runs of one day; the k-th runs of all partitions
/// go in round k, one INSERT per day of the round.
pub fn plan_inserts<'a>(rows: &[&'a PreparedRow]) -> Vec<Vec<&'a PreparedRow>> {
    let mut runs: BTreeMap<i32, Vec<Vec<&'a PreparedRow>>> = BTreeMap::new();
    for row in rows {
        let partition_runs = runs.entry(row.partition).or_default();
        match partition_runs.last_mut() {
            Some(run) if run[0].day == row.day => run.push(row),
            _ => partition_runs.push(vec![row]),
        }
    }
    let rounds = runs.values().map(Vec::len).max().unwrap_or(0);
    let mut inserts = Vec::new();
    for round in 0..rounds {
        let mut by_day: BTreeMap<i64, Vec<&'a PreparedRow>> = BTreeMap::new();
        for partition_runs in runs.values() {
            if let Some(run) = partition_runs.get(round) {
                by_day.entry(run[0].day).or_default().extend(run.iter().copied());
            }
        }
        inserts.extend(by_day.into_values());
    }
    inserts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(partition: i32, offset: i64, day: i64) -> PreparedRow {
        PreparedRow { partition, offset, day, bytes: vec![] }
    }

    #[test]
    fn inserts_hold_one_day_and_keep_partition_order() {
        let rows = [row(0, 1, 10), row(1, 5, 10), row(0, 2, 11), row(0, 3, 10), row(1, 6, 10)];
        let refs: Vec<&PreparedRow> = rows.iter().collect();
        let inserts = plan_inserts(&refs);
        let shape: Vec<Vec<(i32, i64, i64)>> = inserts.iter().map(|i| i.iter().map(|r| (r.partition, r.offset, r.day)).collect()).collect();
        // Round 0: p0's [1], p1's [5, 6] (all day 10); round 1: p0's [2] (day 11); round 2: p0's [3] (day 10).
        assert_eq!(shape, vec![vec![(0, 1, 10), (1, 5, 10), (1, 6, 10)], vec![(0, 2, 11)], vec![(0, 3, 10)]]);
        for insert in &inserts {
            assert!(insert.iter().all(|r| r.day == insert[0].day));
        }
    }

    #[test]
    fn one_day_is_one_insert() {
        let rows: Vec<PreparedRow> = (0..100).map(|i| row(i % 4, i as i64, 20_000)).collect();
        let refs: Vec<&PreparedRow> = rows.iter().collect();
        assert_eq!(plan_inserts(&refs).len(), 1);
    }
}
