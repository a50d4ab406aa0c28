//! Pull queries: `SELECT … FROM name [WHERE …] [LIMIT n]` answered from the log right now.
//!
//! A table (a changelog stream such as the tracker's output) answers with its latest row per
//! key; a stream answers with its records in offset order. Columns are the fields of the JSON
//! values, plus `ROWTIME` (event time, ms) and `ROWKEY`. Also `SHOW STREAMS`. The streaming
//! SQL engine grows this into the full dialect; the parsing is sqlparser's, so errors name
//! the line and column.

use std::collections::{HashMap, HashSet};

use pacer_core::{bytes_to_json, Record};
use pacer_log::{Log, StartAt};
use serde::Serialize;
use serde_json::{Map, Value};
use sqlparser::ast::{
    BinaryOperator, Expr, LimitClause, SelectItem, SetExpr, Statement, TableFactor, UnaryOperator, Value as Literal,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;

/// Rows a pull query on a stream returns when it has no LIMIT.
pub const DEFAULT_STREAM_LIMIT: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("{0}")]
    Syntax(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Log(#[from] pacer_log::LogError),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

/// Runs one statement. `tables` names the streams that are table changelogs.
pub async fn pull_query(log: &dyn Log, tables: &HashSet<String>, sql: &str) -> Result<QueryResult, SqlError> {
    let normalized = sql.trim().trim_end_matches(';').split_whitespace().collect::<Vec<_>>().join(" ").to_uppercase();
    if matches!(normalized.as_str(), "SHOW STREAMS" | "LIST STREAMS" | "SHOW TABLES" | "LIST TABLES") {
        let rows = log
            .streams()
            .into_iter()
            .map(|s| {
                let kind = if tables.contains(&s.name) { "TABLE" } else { "STREAM" };
                vec![
                    Value::from(s.name),
                    Value::from(kind),
                    Value::from(s.partitions),
                    Value::from(s.records),
                    Value::from(s.bytes),
                ]
            })
            .collect();
        let columns = ["name", "kind", "partitions", "records", "bytes"].map(String::from).to_vec();
        return Ok(QueryResult { columns, rows });
    }

    let statements = Parser::parse_sql(&GenericDialect {}, sql).map_err(|e| syntax_error(sql, e))?;
    let [Statement::Query(query)] = statements.as_slice() else {
        return Err(SqlError::Unsupported("expected one SELECT statement (or SHOW STREAMS)".into()));
    };
    let SetExpr::Select(select) = query.body.as_ref() else {
        return Err(SqlError::Unsupported("only a plain SELECT is supported in pull queries yet".into()));
    };
    let limit = match &query.limit_clause {
        None => None,
        Some(LimitClause::LimitOffset { limit: Some(e), offset: None, .. }) => Some(
            literal(e)
                .and_then(|v| v.as_u64())
                .ok_or_else(|| SqlError::Unsupported(format!("LIMIT {e}: expected a whole number")))?
                as usize,
        ),
        Some(other) => return Err(SqlError::Unsupported(format!("{other}: only LIMIT n is supported yet"))),
    };
    let name = match select.from.as_slice() {
        [from] if from.joins.is_empty() => match &from.relation {
            TableFactor::Table { name, .. } => name.to_string(),
            other => return Err(SqlError::Unsupported(format!("FROM {other}: expected a stream or table name"))),
        },
        [] => return Err(SqlError::Unsupported("a pull query needs FROM".into())),
        _ => return Err(SqlError::Unsupported("joins are not supported yet".into())),
    };
    if select.having.is_some()
        || !matches!(&select.group_by, sqlparser::ast::GroupByExpr::Expressions(e, _) if e.is_empty())
    {
        return Err(SqlError::Unsupported("GROUP BY and HAVING need the streaming SQL engine (not there yet)".into()));
    }
    let stream = resolve_stream(log, tables, &name)?;
    let is_table = tables.contains(&stream);

    // Scan the stream; a table keeps the latest row per key, in first-seen key order.
    let mut rows: Vec<Row> = Vec::new();
    let mut by_key: HashMap<Option<bytes::Bytes>, usize> = HashMap::new();
    let mut reader = log.reader(&stream, StartAt::Beginning)?;
    loop {
        let batch = reader.try_batch().await?;
        if batch.is_empty() {
            break;
        }
        for record in batch {
            let row = Row::from(record);
            if is_table {
                match by_key.get(&row.key) {
                    Some(&i) => rows[i] = row,
                    None => {
                        by_key.insert(row.key.clone(), rows.len());
                        rows.push(row);
                    }
                }
            } else {
                rows.push(row);
            }
        }
    }

    let mut kept = Vec::new();
    for row in rows {
        if let Some(condition) = &select.selection {
            if !truthy(&eval(condition, &row)?) {
                continue;
            }
        }
        kept.push(row);
        if kept.len() >= limit.unwrap_or(if is_table { usize::MAX } else { DEFAULT_STREAM_LIMIT }) {
            break;
        }
    }
    project(&select.projection, &kept)
}

/// sqlparser names the line and column, except when the statement ended too early.
fn syntax_error(sql: &str, e: sqlparser::parser::ParserError) -> SqlError {
    let message = e.to_string();
    if message.contains("Line:") {
        return SqlError::Syntax(message);
    }
    let line = sql.lines().count().max(1);
    let column = sql.lines().last().map_or(0, |l| l.chars().count()) + 1;
    SqlError::Syntax(format!("{message} at the end of the statement (Line: {line}, Column: {column})"))
}

/// Names are matched like ksqlDB matches unquoted identifiers: case-insensitively.
fn resolve_stream(log: &dyn Log, tables: &HashSet<String>, name: &str) -> Result<String, SqlError> {
    let unquoted = name.trim_matches(|c| c == '"' || c == '`');
    log.streams()
        .into_iter()
        .map(|s| s.name)
        .chain(tables.iter().cloned())
        .find(|s| s.eq_ignore_ascii_case(unquoted))
        .ok_or_else(|| SqlError::Unsupported(format!("{name}: no such stream or table (SHOW STREAMS lists them)")))
}

struct Row {
    key: Option<bytes::Bytes>,
    timestamp: i64,
    fields: Map<String, Value>,
}

impl From<Record> for Row {
    fn from(r: Record) -> Self {
        let fields = match bytes_to_json(&r.value) {
            Value::Object(map) => map,
            other => Map::from_iter([("value".to_string(), other)]),
        };
        Row { key: r.key, timestamp: r.timestamp, fields }
    }
}

impl Row {
    fn column(&self, name: &str) -> Value {
        if name.eq_ignore_ascii_case("rowtime") {
            return Value::from(self.timestamp);
        }
        if name.eq_ignore_ascii_case("rowkey") {
            return self.key.as_ref().map_or(Value::Null, |k| Value::from(String::from_utf8_lossy(k).into_owned()));
        }
        match self.fields.get(name) {
            Some(v) => v.clone(),
            None => {
                self.fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map_or(Value::Null, |(_, v)| v.clone())
            }
        }
    }
}

fn project(items: &[SelectItem], rows: &[Row]) -> Result<QueryResult, SqlError> {
    let mut columns = Vec::new();
    let mut exprs: Vec<Option<&Expr>> = Vec::new();
    for item in items {
        match item {
            SelectItem::Wildcard(_) => {
                let mut seen = HashSet::new();
                for row in rows {
                    for k in row.fields.keys() {
                        if seen.insert(k.clone()) {
                            columns.push(k.clone());
                            exprs.push(None);
                        }
                    }
                }
            }
            SelectItem::UnnamedExpr(e) => {
                columns.push(match e {
                    Expr::Identifier(id) => id.value.clone(),
                    other => other.to_string(),
                });
                exprs.push(Some(e));
            }
            SelectItem::ExprWithAlias { expr, alias } => {
                columns.push(alias.value.clone());
                exprs.push(Some(expr));
            }
            other => return Err(SqlError::Unsupported(format!("{other}: not supported in pull queries yet"))),
        }
    }
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let mut values = Vec::with_capacity(columns.len());
        for (name, expr) in columns.iter().zip(&exprs) {
            values.push(match expr {
                Some(e) => eval(e, row)?,
                None => row.column(name),
            });
        }
        out.push(values);
    }
    Ok(QueryResult { columns, rows: out })
}

fn literal(e: &Expr) -> Option<Value> {
    match e {
        Expr::Value(v) => match &v.value {
            Literal::Number(n, _) => {
                n.parse::<i64>().map(Value::from).ok().or_else(|| n.parse::<f64>().ok().map(Value::from))
            }
            Literal::SingleQuotedString(s) => Some(Value::from(s.clone())),
            Literal::Boolean(b) => Some(Value::from(*b)),
            Literal::Null => Some(Value::Null),
            _ => None,
        },
        _ => None,
    }
}

fn eval(e: &Expr, row: &Row) -> Result<Value, SqlError> {
    Ok(match e {
        Expr::Identifier(id) => row.column(&id.value),
        Expr::CompoundIdentifier(parts) => row.column(&parts.last().map(|p| p.value.clone()).unwrap_or_default()),
        Expr::Value(_) => {
            literal(e).ok_or_else(|| SqlError::Unsupported(format!("literal {e} is not supported yet")))?
        }
        Expr::Nested(inner) => eval(inner, row)?,
        Expr::IsNull(inner) => Value::from(eval(inner, row)?.is_null()),
        Expr::IsNotNull(inner) => Value::from(!eval(inner, row)?.is_null()),
        Expr::UnaryOp { op: UnaryOperator::Not, expr } => Value::from(!truthy(&eval(expr, row)?)),
        Expr::UnaryOp { op: UnaryOperator::Minus, expr } => {
            eval(expr, row)?.as_f64().map_or(Value::Null, |n| Value::from(-n))
        }
        Expr::BinaryOp { left, op, right } => {
            let (l, r) = (eval(left, row)?, eval(right, row)?);
            binary(op, &l, &r).ok_or_else(|| SqlError::Unsupported(format!("operator {op} is not supported yet")))?
        }
        other => return Err(SqlError::Unsupported(format!("{other}: not supported in pull queries yet"))),
    })
}

fn binary(op: &BinaryOperator, l: &Value, r: &Value) -> Option<Value> {
    use std::cmp::Ordering;
    let compare = || -> Option<Ordering> {
        match (l, r) {
            (Value::Number(a), Value::Number(b)) => a.as_f64()?.partial_cmp(&b.as_f64()?),
            (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
            (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
            _ => None,
        }
    };
    let arith = |f: fn(f64, f64) -> f64| match (l.as_f64(), r.as_f64()) {
        (Some(a), Some(b)) => Value::from(f(a, b)),
        _ => Value::Null,
    };
    Some(match op {
        BinaryOperator::And => Value::from(truthy(l) && truthy(r)),
        BinaryOperator::Or => Value::from(truthy(l) || truthy(r)),
        BinaryOperator::Eq => Value::from(compare() == Some(Ordering::Equal)),
        BinaryOperator::NotEq => Value::from(matches!(compare(), Some(o) if o != Ordering::Equal)),
        BinaryOperator::Lt => Value::from(compare() == Some(Ordering::Less)),
        BinaryOperator::LtEq => Value::from(matches!(compare(), Some(Ordering::Less | Ordering::Equal))),
        BinaryOperator::Gt => Value::from(compare() == Some(Ordering::Greater)),
        BinaryOperator::GtEq => Value::from(matches!(compare(), Some(Ordering::Greater | Ordering::Equal))),
        BinaryOperator::Plus => arith(|a, b| a + b),
        BinaryOperator::Minus => arith(|a, b| a - b),
        BinaryOperator::Multiply => arith(|a, b| a * b),
        BinaryOperator::Divide => arith(|a, b| a / b),
        _ => return None,
    })
}

fn truthy(v: &Value) -> bool {
    matches!(v, Value::Bool(true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use pacer_core::NewRecord;
    use pacer_log::{EmbeddedLog, EmbeddedLogConfig};

    async fn log_with_statuses() -> (tempfile::TempDir, EmbeddedLog) {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(EmbeddedLogConfig::new(dir.path())).unwrap();
        let rows = [("alice", 3000.0, 2), ("ben", 2500.0, 1), ("alice", 2000.0, 1), ("ben", 2400.0, 2)];
        let records = rows
            .iter()
            .enumerate()
            .map(|(i, (who, to_finish, rank))| {
                let v = serde_json::json!({"who": who, "to_finish_m": to_finish, "rank": rank});
                NewRecord::new(i as i64, Some(Bytes::from(who.to_string())), v.to_string())
            })
            .collect();
        log.append("race_status", records).await.unwrap();
        (dir, log)
    }

    #[tokio::test]
    async fn a_table_answers_with_its_latest_row_per_key() {
        let (_dir, log) = log_with_statuses().await;
        let tables = HashSet::from(["race_status".to_string()]);
        let r =
            pull_query(&log, &tables, "SELECT who, rank, to_finish_m / 1000 AS km FROM RACE_STATUS WHERE rank = 1;")
                .await
                .unwrap();
        assert_eq!(r.columns, ["who", "rank", "km"]);
        assert_eq!(r.rows, vec![vec![Value::from("alice"), Value::from(1), Value::from(2.0)]]);

        let all = pull_query(&log, &tables, "select * from race_status").await.unwrap();
        assert_eq!(all.rows.len(), 2);
        let stream =
            pull_query(&log, &HashSet::new(), "SELECT ROWKEY, ROWTIME FROM race_status LIMIT 3").await.unwrap();
        assert_eq!(stream.rows.len(), 3);
        assert_eq!(stream.rows[2], vec![Value::from("alice"), Value::from(2)]);
    }

    #[tokio::test]
    async fn errors_say_where_and_what() {
        let (_dir, log) = log_with_statuses().await;
        let tables = HashSet::new();
        let e = pull_query(&log, &tables, "SELECT who FROM race_status WHERE").await.unwrap_err().to_string();
        assert!(e.contains("Expected: an expression") && e.contains("Line: 1, Column: 34"), "{e}");
        let e =
            pull_query(&log, &tables, "SELECT who FROM race_status WHERE rank = = 1").await.unwrap_err().to_string();
        assert!(e.contains("Line: 1, Column: 42"), "{e}");
        let e = pull_query(&log, &tables, "SELECT * FROM nowhere").await.unwrap_err().to_string();
        assert!(e.contains("no such stream"), "{e}");
        let shown = pull_query(&log, &tables, "show streams;").await.unwrap();
        assert_eq!(shown.rows[0][0], "race_status");
    }
}
