//! Reading a pipeline directory: every `*.sql` file in name order, split into
//! statements, each parsed into a table, view or insert definition with the
//! file and line it came from.

pub mod options;
pub mod split;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use datafusion::sql::sqlparser::ast::{
    CreateTableOptions, DataType as SqlType, ObjectName, SqlOption, Statement, TableObject,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

pub use options::{BadData, Connector, KafkaTable, StartOffset, TableRole};
pub use split::WatermarkClause;

/// Where a definition came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// A pipeline that cannot run, and where.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{location}: {message}")]
pub struct SqlError {
    pub location: Location,
    pub message: String,
}

impl SqlError {
    pub fn new(location: &Location, message: impl Into<String>) -> Self {
        SqlError { location: location.clone(), message: message.into() }
    }
}

#[derive(Debug, Clone)]
pub struct TableDef {
    pub name: String,
    /// `CREATE TABLE name (columns)` without WITH and WATERMARK, JSON columns
    /// as TEXT: what DataFusion plans to get the Arrow schema.
    pub columns_sql: String,
    /// Columns declared `JSON`: raw JSON text in and out.
    pub json_columns: Vec<String>,
    pub watermark: Option<WatermarkClause>,
    pub connector: Connector,
}

#[derive(Debug, Clone)]
pub enum Definition {
    Table(TableDef),
    /// The whole `CREATE VIEW` statement (DataFusion plans it).
    View { name: String, sql: String },
    /// `INSERT INTO sink <query>`.
    Insert { sink: String, query: String },
}

#[derive(Debug, Clone)]
pub struct SqlStatement {
    pub location: Location,
    pub definition: Definition,
}

/// All statements of a pipeline directory, in order.
#[derive(Debug, Clone)]
pub struct PipelineSql {
    pub name: String,
    pub statements: Vec<SqlStatement>,
}

impl PipelineSql {
    pub fn load_dir(dir: &Path) -> Result<PipelineSql, SqlError> {
        let location = Location { file: dir.display().to_string(), line: 0 };
        let entries = std::fs::read_dir(dir).map_err(|e| SqlError::new(&location, format!("cannot read directory: {e}")))?;
        let mut files: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "sql"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(SqlError::new(&location, "no .sql files"));
        }
        let mut sources = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| SqlError::new(&Location { file: file.display().to_string(), line: 0 }, e.to_string()))?;
            sources.push((file.display().to_string(), text));
        }
        let name = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "pipeline".into());
        Self::parse(&name, &sources)
    }

    /// Parses `(file name, text)` pairs in order.
    pub fn parse(name: &str, sources: &[(String, String)]) -> Result<PipelineSql, SqlError> {
        let mut statements = Vec::new();
        for (file, text) in sources {
            for raw in split::split_statements(text) {
                let location = Location { file: file.clone(), line: raw.line };
                let definition = parse_statement(&raw.text, &location)?;
                statements.push(SqlStatement { location, definition });
            }
        }
        Ok(PipelineSql { name: name.to_string(), statements })
    }
}

fn parse_statement(text: &str, location: &Location) -> Result<Definition, SqlError> {
    let first_word = text.split_whitespace().take(2).collect::<Vec<_>>().join(" ").to_ascii_uppercase();
    let (text_for_parser, watermark) = if first_word == "CREATE TABLE" {
        split::extract_watermark(text).map_err(|m| SqlError::new(location, m))?
    } else {
        (text.to_string(), None)
    };
    let mut parsed = Parser::parse_sql(&GenericDialect {}, &text_for_parser).map_err(|e| parse_error(location, &text_for_parser, &e.to_string()))?;
    if parsed.len() != 1 {
        return Err(SqlError::new(location, "expected one statement"));
    }
    match parsed.remove(0) {
        Statement::CreateTable(mut create) => {
            let name = object_name(&create.name);
            let options = match std::mem::take(&mut create.table_options) {
                CreateTableOptions::With(options) => options_map(&options, location)?,
                CreateTableOptions::None => BTreeMap::new(),
                _ => return Err(SqlError::new(location, "table options go in WITH (...)")),
            };
            if options.is_empty() {
                return Err(SqlError::new(
                    location,
                    format!("table {name} has no WITH (connector = ...) options; tables are sources or sinks"),
                ));
            }
            let connector = options::connector_from_options(&options).map_err(|m| SqlError::new(location, format!("table {name}: {m}")))?;
            let mut json_columns = Vec::new();
            for column in &mut create.columns {
                if matches!(column.data_type, SqlType::JSON) {
                    json_columns.push(column.name.value.clone());
                    column.data_type = SqlType::Text;
                }
            }
            if let Some(wm) = &watermark
                && !create.columns.iter().any(|c| c.name.value == wm.column)
            {
                return Err(SqlError::new(location, format!("WATERMARK FOR {}: no such column in {name}", wm.column)));
            }
            Ok(Definition::Table(TableDef {
                name,
                columns_sql: Statement::CreateTable(create).to_string(),
                json_columns,
                watermark,
                connector,
            }))
        }
        Statement::CreateView(view) => Ok(Definition::View { name: object_name(&view.name), sql: text.to_string() }),
        Statement::Insert(insert) => {
            let TableObject::TableName(table) = &insert.table else {
                return Err(SqlError::new(location, "INSERT INTO needs a table name"));
            };
            let query = insert.source.as_ref().ok_or_else(|| SqlError::new(location, "INSERT INTO needs a SELECT"))?;
            if !insert.columns.is_empty() {
                return Err(SqlError::new(location, "INSERT INTO t (columns) is not supported: name the columns in the SELECT"));
            }
            Ok(Definition::Insert { sink: object_name(table), query: query.to_string() })
        }
        other => Err(SqlError::new(
            location,
            format!(
                "unsupported statement `{}`: a pipeline holds CREATE TABLE ... WITH (...), CREATE VIEW and INSERT INTO",
                other.to_string().chars().take(40).collect::<String>()
            ),
        )),
    }
}

fn object_name(name: &ObjectName) -> String {
    name.to_string().trim_matches('"').to_string()
}

fn options_map(options: &[SqlOption], location: &Location) -> Result<BTreeMap<String, String>, SqlError> {
    let mut map = BTreeMap::new();
    for option in options {
        let SqlOption::KeyValue { key, value } = option else {
            return Err(SqlError::new(location, format!("option `{option}`: expected key = 'value'")));
        };
        let value = value.to_string();
        let value = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')).map(|v| v.replace("''", "'")).unwrap_or(value);
        if map.insert(key.value.clone(), value).is_some() {
            return Err(SqlError::new(location, format!("option '{}' is given twice", key.value)));
        }
    }
    Ok(map)
}

/// sqlparser reports `Line: N, Column: M` relative to the statement, and
/// nothing for an unexpected end (then: the statement's last line).
fn parse_error(location: &Location, statement: &str, message: &str) -> SqlError {
    let last_line = statement.trim_end().matches('\n').count() + 1;
    let line_in_statement = message
        .split("Line: ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<usize>().ok());
    let line = location.line + line_in_statement.unwrap_or(last_line) - 1;
    SqlError { location: Location { file: location.file.clone(), line }, message: format!("syntax error: {message}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PipelineSql, SqlError> {
        PipelineSql::parse("p", &[("sql/10_a.sql".to_string(), text.to_string())])
    }

    #[test]
    fn tables_views_and_inserts() {
        let program = parse(
            "CREATE TABLE requests (\n  id TEXT,\n  params JSON,\n  ts TIMESTAMP,\n  WATERMARK FOR ts AS ts - INTERVAL '1' SECOND\n) \
             WITH (connector = 'kafka', type = 'source', topic = 'notify.requests', 'source.offset' = 'latest');\n\
             CREATE VIEW v AS SELECT id FROM requests;\n\
             INSERT INTO out SELECT id FROM v;",
        )
        .unwrap();
        assert_eq!(program.statements.len(), 3);
        let Definition::Table(table) = &program.statements[0].definition else { panic!() };
        assert_eq!(table.name, "requests");
        assert_eq!(table.json_columns, vec!["params"]);
        assert_eq!(table.watermark.as_ref().unwrap().column, "ts");
        assert!(!table.columns_sql.contains("WITH") && !table.columns_sql.contains("JSON"), "{}", table.columns_sql);
        let Connector::Kafka(kafka) = &table.connector;
        assert_eq!((kafka.topic.as_str(), kafka.start_offset), ("notify.requests", StartOffset::Latest));
        assert_eq!(program.statements[1].location.line, 7);
        let Definition::Insert { sink, query } = &program.statements[2].definition else { panic!() };
        assert_eq!((sink.as_str(), query.as_str()), ("out", "SELECT id FROM v"));
    }

    #[test]
    fn errors_carry_file_and_line() {
        let err = parse("\n\nCREATE VIEW v AS SELECT id FROM t;\nDROP TABLE t;").unwrap_err();
        assert_eq!(err.location.line, 4, "{err}");
        assert!(err.to_string().starts_with("sql/10_a.sql:4: unsupported statement"), "{err}");

        let err = parse("CREATE VIEW v AS\nSELECT id\nFROM t WHERE (;").unwrap_err();
        assert_eq!(err.location.line, 3, "{err}");

        let err = parse("\nCREATE TABLE t (id TEXT) WITH (connector = 'kafka', type = 'source', topic = 't', tpoic = 'x');")
            .unwrap_err();
        assert_eq!(err.location.line, 2);
        assert!(err.message.contains("unknown option 'tpoic'"), "{err}");

        let err = parse("CREATE TABLE t (id TEXT, WATERMARK FOR ts) WITH (connector = 'kafka', type = 'source', topic = 't');")
            .unwrap_err();
        assert!(err.message.contains("no such column"), "{err}");
    }
}
