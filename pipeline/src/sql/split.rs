//! Splits a SQL file into statements, remembering the line each starts on,
//! and lifts Arroyo's `WATERMARK FOR col [AS expr]` clause out of a
//! `CREATE TABLE` column list (the SQL parser does not know it).

/// One statement of a file: its text (without the `;`) and 1-based start line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawStatement {
    pub text: String,
    pub line: usize,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Code,
    Single,
    Double,
    LineComment,
    BlockComment,
}

/// Walks `text` and calls `visit(byte_index, char, in_code)` for each char;
/// `in_code` is false inside strings, quoted identifiers and comments.
fn scan(text: &str, mut visit: impl FnMut(usize, char, bool)) {
    let mut mode = Mode::Code;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let next = chars.peek().map(|(_, n)| *n);
        match mode {
            Mode::Code => match (c, next) {
                ('\'', _) => mode = Mode::Single,
                ('"', _) => mode = Mode::Double,
                ('-', Some('-')) => mode = Mode::LineComment,
                ('/', Some('*')) => mode = Mode::BlockComment,
                _ => {}
            },
            Mode::Single if c == '\'' => {
                if next == Some('\'') {
                    chars.next();
                } else {
                    mode = Mode::Code;
                }
            }
            Mode::Double if c == '"' => mode = Mode::Code,
            Mode::LineComment if c == '\n' => mode = Mode::Code,
            Mode::BlockComment if c == '*' && next == Some('/') => {
                visit(i, c, false);
                let (j, slash) = chars.next().expect("peeked");
                visit(j, slash, false);
                mode = Mode::Code;
                continue;
            }
            _ => {}
        }
        let in_code = mode == Mode::Code && !matches!((c, next), ('-', Some('-')) | ('/', Some('*')));
        visit(i, c, in_code);
    }
}

pub fn split_statements(text: &str) -> Vec<RawStatement> {
    let mut statements = Vec::new();
    let mut start = 0;
    let mut ends = Vec::new();
    scan(text, |i, c, in_code| {
        if in_code && c == ';' {
            ends.push(i);
        }
    });
    ends.push(text.len());
    for end in ends {
        let chunk = &text[start..end];
        start = (end + 1).min(text.len());
        if let Some(offset) = first_code_char(chunk) {
            let absolute = end - chunk.len() + offset;
            statements.push(RawStatement {
                text: chunk[offset..].trim_end().to_string(),
                line: text[..absolute].matches('\n').count() + 1,
            });
        }
    }
    statements
}

/// Byte offset of the first character that is neither blank nor comment.
fn first_code_char(chunk: &str) -> Option<usize> {
    let mut found = None;
    scan(chunk, |i, c, in_code| {
        if found.is_none() && in_code && !c.is_whitespace() {
            found = Some(i);
        }
    });
    found
}

/// `WATERMARK FOR column [AS expr]` from a CREATE TABLE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatermarkClause {
    pub column: String,
    /// SQL expression of the watermark (e.g. `ts - INTERVAL '5' SECOND`); `None`: the column itself.
    pub expr: Option<String>,
}

/// Removes the WATERMARK clause from a CREATE TABLE's column list.
pub fn extract_watermark(statement: &str) -> Result<(String, Option<WatermarkClause>), String> {
    // Top-level (depth 1) commas and the closing paren of the column list.
    let mut depth = 0;
    let mut boundaries = Vec::new(); // (index, is_close)
    let mut list_open = None;
    scan(statement, |i, c, in_code| {
        if !in_code {
            return;
        }
        match c {
            '(' => {
                depth += 1;
                if depth == 1 && list_open.is_none() {
                    list_open = Some(i);
                }
            }
            ')' => {
                if depth == 1 && boundaries.last().is_none_or(|(_, close)| !close) {
                    boundaries.push((i, true));
                }
                depth -= 1;
            }
            ',' if depth == 1 => boundaries.push((i, false)),
            _ => {}
        }
    });
    let Some(open) = list_open else { return Ok((statement.to_string(), None)) };
    let Some(close) = boundaries.iter().find(|(_, c)| *c).map(|(i, _)| *i) else {
        return Ok((statement.to_string(), None));
    };
    let mut items = Vec::new(); // (start, end) of each column-list item
    let mut item_start = open + 1;
    for (i, is_close) in boundaries.iter().copied().filter(|(i, _)| *i <= close) {
        items.push((item_start, i));
        item_start = i + 1;
        if is_close {
            break;
        }
    }
    let Some(pos) = items.iter().position(|(s, e)| {
        let words: Vec<&str> = statement[*s..*e].split_whitespace().take(2).collect();
        words.len() == 2 && words[0].eq_ignore_ascii_case("watermark") && words[1].eq_ignore_ascii_case("for")
    }) else {
        return Ok((statement.to_string(), None));
    };
    let (s, e) = items[pos];
    let clause = statement[s..e].trim();
    let rest = clause.split_whitespace().skip(2).collect::<Vec<_>>().join(" ");
    let (column, expr) = match rest.find(|c: char| c.is_whitespace()) {
        Some(i) => {
            let (column, tail) = rest.split_at(i);
            let tail = tail.trim();
            let expr = tail
                .strip_prefix("AS ")
                .or_else(|| tail.strip_prefix("as "))
                .ok_or_else(|| format!("expected `WATERMARK FOR {column} AS <expr>`, got `{clause}`"))?;
            (column.to_string(), Some(expr.trim().to_string()))
        }
        None => (rest.clone(), None),
    };
    if column.is_empty() {
        return Err(format!("WATERMARK FOR needs a column: `{clause}`"));
    }
    // Drop the item and one adjoining comma.
    let (cut_start, cut_end) = if pos > 0 { (items[pos - 1].1, e) } else { (s, items.get(1).map(|n| n.0).unwrap_or(e)) };
    let cleaned = format!("{}{}", &statement[..cut_start], &statement[cut_end..]);
    Ok((cleaned, Some(WatermarkClause { column: column.trim_matches('"').to_string(), expr })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_semicolons_outside_strings_and_comments() {
        let sql = "-- header; not a split\nCREATE VIEW a AS SELECT ';' AS s;\n\n/* block; */ INSERT INTO b\nSELECT 1 -- trailing;\n;\n  \n";
        let statements = split_statements(sql);
        assert_eq!(statements.len(), 2, "{statements:?}");
        assert_eq!(statements[0], RawStatement { text: "CREATE VIEW a AS SELECT ';' AS s".into(), line: 2 });
        assert_eq!(statements[1].line, 4);
        assert!(statements[1].text.starts_with("INSERT INTO b"));
    }

    #[test]
    fn lifts_the_watermark_clause() {
        let sql = "CREATE TABLE t (\n  id TEXT,\n  ts TIMESTAMP,\n  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND\n) WITH (connector = 'kafka')";
        let (cleaned, wm) = extract_watermark(sql).unwrap();
        assert_eq!(wm, Some(WatermarkClause { column: "ts".into(), expr: Some("ts - INTERVAL '5' SECOND".into()) }));
        assert_eq!(cleaned, "CREATE TABLE t (\n  id TEXT,\n  ts TIMESTAMP) WITH (connector = 'kafka')");

        let (cleaned, wm) = extract_watermark("CREATE TABLE t (WATERMARK FOR ts, ts TIMESTAMP)").unwrap();
        assert_eq!(wm.unwrap().expr, None);
        assert_eq!(cleaned, "CREATE TABLE t ( ts TIMESTAMP)");

        let (cleaned, wm) = extract_watermark("CREATE TABLE t (a STRUCT<x INT, y INT>, b TEXT)").unwrap();
        assert_eq!(wm, None);
        assert_eq!(cleaned, "CREATE TABLE t (a STRUCT<x INT, y INT>, b TEXT)");
    }
}
