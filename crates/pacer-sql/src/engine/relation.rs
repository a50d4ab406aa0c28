//! Queries over whole relations: joins, CTEs and Flink's window table functions, for history
//! (pull) queries and for the per-window stage of windowed queries.
//!
//! A relation is a list of rows (JSON objects with their event time) with named, typed
//! columns. Joins pair rows by equal values (hash joins on the `=` conditions of ON); the rest
//! of the SELECT (WHERE, GROUP BY, aggregates, HAVING, the projection) then runs through the
//! same planner and operator as streaming queries, so the two never disagree.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use bytes::Bytes;
use pacer_core::Record;
use serde_json::{Map, Value as Json};
use sqlparser::ast::{self as sql, Ident, SelectItem};

use super::ast::{Emit, Join, JoinKind, Select, SourceKind, Window};
use super::expr::{plan_error, PlanError};
use super::operator::{json_field, Operator, Output};
use super::plan::{self, conjuncts, Column, Shape, Source};
use super::{row_bytes, whole, LatestRows, QueryLimits, QueryResult};
use crate::geometry::Geometry;

/// A row and its event time (ms).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub timestamp: i64,
    pub value: Map<String, Json>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Relation {
    pub columns: Vec<Column>,
    pub rows: Vec<Row>,
}

/// Relations by lower-cased name: the CTEs so far, and the sources a query reads.
pub type Env = HashMap<String, Relation>;

impl Relation {
    pub fn from_rows(columns: Vec<Column>, rows: Vec<Row>) -> Relation {
        Relation { columns, rows }
    }

    /// As a pull query answers: the columns in order, a list of values per row.
    pub fn into_result(self) -> QueryResult {
        let names: Vec<String> = self.columns.into_iter().map(|c| c.name).collect();
        let rows = self
            .rows
            .into_iter()
            .map(|mut r| names.iter().map(|c| r.value.remove(c).unwrap_or(Json::Null)).collect())
            .collect();
        QueryResult { columns: names, rows }
    }

    /// The same rows with every column named `qualifier.column`.
    fn qualified(&self, qualifier: &str) -> Relation {
        let name = |c: &str| format!("{qualifier}.{c}");
        Relation {
            columns: self.columns.iter().map(|c| Column { name: name(&c.name), ..c.clone() }).collect(),
            rows: self
                .rows
                .iter()
                .map(|r| Row {
                    timestamp: r.timestamp,
                    value: r.value.iter().map(|(k, v)| (name(k), v.clone())).collect(),
                })
                .collect(),
        }
    }
}

/// The names a query reads that are not its own CTEs: streams and tables of the catalog.
pub fn base_names(select: &Select) -> Vec<String> {
    let mut defined: Vec<String> = Vec::new();
    let mut out = Vec::new();
    let mut visit = |s: &Select, defined: &[String]| {
        for name in std::iter::once(&s.from).chain(s.joins.iter().map(|j| &j.source)) {
            let lower = name.to_ascii_lowercase();
            if !defined.contains(&lower) && !out.contains(&lower) {
                out.push(lower);
            }
        }
    };
    for (name, cte) in &select.ctes {
        visit(cte, &defined);
        defined.push(name.to_ascii_lowercase());
    }
    visit(select, &defined);
    out
}

/// How long after a window table function's window ends its records may still arrive (event
/// time): Flink's watermark delay, which its DDL declares and ours does not. Devices reporting
/// over their own connections arrive a little out of order.
pub const WINDOW_TABLE_GRACE_MS: i64 = 5_000;

/// Flink's window table functions as the engine's windows: `FROM TABLE(HOP(TABLE t,
/// DESCRIPTOR(col), slide, size)) … GROUP BY window_start, window_end, k` is a hopping window
/// grouped by `k`, with `window_start`/`window_end` its WINDOWSTART/WINDOWEND, closed
/// `WINDOW_TABLE_GRACE_MS` after its end (Flink emits a window once the watermark passes its
/// end). Gives the rewritten query and the event-time column when it is not ROWTIME.
pub fn desugar_window_table(select: &Select) -> Result<(Select, Option<String>), PlanError> {
    let Some(table) = &select.window_table else { return Ok((select.clone(), None)) };
    if select.window.is_some() {
        return plan_error("a window table function and a WINDOW clause: use one of them");
    }
    let is_bound = |e: &sql::Expr| bound_name(e).is_some();
    let grouped_bounds = select.group_by.iter().filter(|e| is_bound(e)).count();
    if grouped_bounds != 2 {
        return plan_error(format!(
            "FROM TABLE({}(…)) needs GROUP BY window_start, window_end (and any other keys): Flink's window aggregation",
            if matches!(table.kind, super::ast::WindowKind::Hopping { .. }) { "HOP" } else { "TUMBLE" }
        ));
    }
    let mut out = select.clone();
    out.window_table = None;
    out.window = Some(Window { kind: table.kind, grace: WINDOW_TABLE_GRACE_MS, retention: None });
    out.group_by.retain(|e| !is_bound(e));
    for item in &mut out.items {
        // `SELECT window_start` keeps its Flink name.
        if let SelectItem::UnnamedExpr(e) = item {
            if let Some(name) = bound_name(e) {
                *item = SelectItem::ExprWithAlias { expr: e.clone(), alias: Ident::new(name) };
            }
        }
    }
    rename(&mut out, &|parts| {
        let [last] = parts else { return None };
        match last.value.to_ascii_lowercase().as_str() {
            "window_start" => Some("WINDOWSTART".into()),
            "window_end" => Some("WINDOWEND".into()),
            _ => None,
        }
    });
    let time = (!table.time_column.eq_ignore_ascii_case("ROWTIME")).then(|| table.time_column.clone());
    Ok((out, time))
}

/// `window_start` or `window_end`, as written, when the expression is one of them.
fn bound_name(e: &sql::Expr) -> Option<String> {
    let ident = match e {
        sql::Expr::Identifier(id) => id,
        sql::Expr::CompoundIdentifier(parts) => parts.last()?,
        _ => return None,
    };
    let lower = ident.value.to_ascii_lowercase();
    (lower == "window_start" || lower == "window_end").then(|| ident.value.clone())
}

/// Replaces column references (`a` or `q.a`, as their parts) by plain identifiers where `f`
/// gives a name, in every expression of the query.
fn rename(select: &mut Select, f: &dyn Fn(&[Ident]) -> Option<String>) {
    let mut visit = |e: &mut sql::Expr| {
        let parts: Option<Vec<Ident>> = match e {
            sql::Expr::Identifier(id) => Some(vec![id.clone()]),
            sql::Expr::CompoundIdentifier(parts) => Some(parts.clone()),
            _ => None,
        };
        if let Some(name) = parts.and_then(|p| f(&p)) {
            *e = sql::Expr::Identifier(Ident::with_quote('"', name));
        }
        ControlFlow::<()>::Continue(())
    };
    for item in &mut select.items {
        let _ = sql::visit_expressions_mut(item, &mut visit);
    }
    for e in select
        .selection
        .iter_mut()
        .chain(&mut select.group_by)
        .chain(&mut select.partition_by)
        .chain(&mut select.having)
    {
        let _ = sql::visit_expressions_mut(e, &mut visit);
    }
}

/// A persistent query with CTEs or joins, split into its windows (a CTE aggregating a window
/// table function over a stream: its name and query) and the rest, which runs per window.
pub fn split_windowed(select: &Select) -> Result<(String, Select, Select), PlanError> {
    let windowed: Vec<usize> = (0..select.ctes.len()).filter(|&i| select.ctes[i].1.window_table.is_some()).collect();
    match windowed.as_slice() {
        [i] => {
            let (name, cte) = select.ctes[*i].clone();
            if !cte.joins.is_empty() {
                return plan_error(format!("{name}: a window table function's CTE reads one stream, without joins"));
            }
            let mut rest = select.clone();
            rest.ctes.remove(*i);
            if rest.window_table.is_some() {
                return plan_error("one window table function per query");
            }
            Ok((name, cte, rest))
        }
        [] => plan_error(
            "a persistent query with WITH takes its windows from a window table function in a CTE \
             (WITH w AS (SELECT window_start, window_end, … FROM TABLE(HOP(TABLE s, DESCRIPTOR(ROWTIME), …)) \
             GROUP BY window_start, window_end, …) …); without windows, WITH runs in pull queries",
        ),
        _ => plan_error("one window table function per query"),
    }
}

/// Evaluates a query: its CTEs in order, each then readable by name, then its body.
pub fn evaluate_query(
    select: &Select,
    env: &Env,
    geometry: &Geometry,
    limits: &QueryLimits,
) -> Result<Relation, PlanError> {
    // The CTEs beside `env`, which is not copied: it may hold whole streams.
    let mut ctes = Env::new();
    for (name, cte) in &select.ctes {
        let rows = evaluate(cte, &|n| ctes.get(n).or_else(|| env.get(n)), geometry, limits)?;
        ctes.insert(name.to_ascii_lowercase(), rows);
    }
    let body = Select { ctes: Vec::new(), ..select.clone() };
    evaluate(&body, &|n| ctes.get(n).or_else(|| env.get(n)), geometry, limits)
}

/// A window table function's query over data that is all there (history, a closed window's
/// rows): no record is late, whatever order they come in.
pub fn without_lateness(mut select: Select) -> Select {
    if let Some(window) = &mut select.window {
        window.grace = i64::MAX / 4;
    }
    select
}

/// What a windowed query with CTEs or joins does with each window once it has closed: the
/// rest of the query (its other CTEs, its joins, its body) over that window's rows, with the
/// tables it joins as they are at that moment, as Flink evaluates a window's results.
#[derive(Debug)]
pub struct WindowStage {
    /// The CTE whose rows are a window's: a window table function's aggregation.
    pub name: String,
    pub columns: Vec<Column>,
    /// The query without that CTE.
    pub rest: Select,
    /// The streams and tables it reads, whole, at each window.
    pub sources: Vec<Source>,
    pub geometry: Arc<Geometry>,
    pub limits: QueryLimits,
}

impl WindowStage {
    /// The rows of the windows in `outputs` (the windowed aggregation's final rows).
    pub async fn run(&self, log: &Arc<dyn pacer_log::Log>, outputs: &[Output]) -> Result<Vec<Output>, String> {
        let mut windows: Vec<(i64, Vec<Row>)> = Vec::new();
        for o in outputs {
            let (Some(start), Some(value)) = (o.window, &o.value) else { continue };
            let row = Row { timestamp: o.timestamp, value: value.clone() };
            match windows.iter_mut().find(|(s, _)| *s == start) {
                Some((_, rows)) => rows.push(row),
                None => windows.push((start, vec![row])),
            }
        }
        if windows.is_empty() {
            return Ok(Vec::new());
        }
        let mut env = Env::new();
        for source in &self.sources {
            // Live tables and the window's own rows: what the log holds now, not history.
            let reads = super::Reads::log_only(log.clone(), self.limits);
            let rows = whole(&reads, source.clone(), &self.geometry).await.map_err(|e| e.to_string())?;
            env.insert(source.name.to_ascii_lowercase(), rows);
        }
        let mut out = Vec::new();
        for (start, rows) in windows {
            env.insert(self.name.to_ascii_lowercase(), Relation { columns: self.columns.clone(), rows });
            let result = evaluate_query(&self.rest, &env, &self.geometry, &self.limits).map_err(|e| e.to_string())?;
            out.extend(result.rows.into_iter().enumerate().map(|(i, row)| Output {
                key: None,
                value: Some(row.value),
                timestamp: row.timestamp,
                id: format!("window {start} row {i}"),
                window: None,
            }));
        }
        Ok(out)
    }
}

/// Evaluates one SELECT (no CTEs of its own) over relations: its FROM and JOINs, found by
/// lower-cased name.
fn evaluate<'a>(
    select: &Select,
    relations: &dyn Fn(&str) -> Option<&'a Relation>,
    geometry: &Geometry,
    limits: &QueryLimits,
) -> Result<Relation, PlanError> {
    let (select, time) = desugar_window_table(select)?;
    let select = without_lateness(select);
    let lookup = |name: &str| {
        relations(&name.to_ascii_lowercase()).ok_or_else(|| PlanError(format!("{name}: no such stream, table or CTE")))
    };
    let joined;
    let (mut select, input) = if select.joins.is_empty() {
        let input = lookup(&select.from)?;
        (select, input)
    } else {
        let mut input = lookup(&select.from)?.qualified(select.alias.as_deref().unwrap_or(&select.from));
        for join in &select.joins {
            let right = lookup(&join.source)?.qualified(join.alias.as_deref().unwrap_or(&join.source));
            input = hash_join(input, right, join, limits)?;
        }
        joined = input;
        (qualify_names(&select, &joined.columns)?, &joined)
    };
    select.joins.clear();
    select.ctes.clear();
    select.emit = Emit::None;
    let source = Source {
        name: select.from.clone(),
        kind: SourceKind::Stream,
        topic: String::new(),
        columns: input.columns.clone(),
        timestamp: time,
        windowed: false,
    };
    let plan = plan::plan(&select, &source, geometry)?;
    let aggregated = matches!(plan.shape, Shape::Aggregate { .. });
    let columns = plan.output.clone();
    let mut operator = Operator::new(plan);
    let (mut rows, mut latest, mut out) = (Vec::new(), LatestRows::default(), Vec::new());
    for (offset, row) in input.rows.iter().enumerate() {
        let record = Record {
            partition: 0,
            offset: offset as u64,
            timestamp: row.timestamp,
            key: None,
            value: Bytes::from(serde_json::to_vec(&row.value).expect("JSON values serialize")),
            headers: Vec::new(),
        };
        // As in pull queries, a row an expression fails on is left out.
        let _ = operator.process(&record, &mut out);
        for o in out.drain(..) {
            let row = o.value.map(|value| Row { timestamp: o.timestamp, value });
            if aggregated {
                latest.put(o.key, o.window, row);
            } else {
                rows.extend(row);
            }
        }
    }
    if aggregated {
        rows = latest.into_values();
    }
    if let Some(limit) = select.limit {
        rows.truncate(limit as usize);
    }
    Ok(Relation { columns, rows })
}

/// Pairs each left row with the right rows its ON condition holds for: equalities between a
/// column of each side, joined by AND; with WITHIN, only rows that close in event time. Outer
/// joins keep the unmatched rows of their side (the other side's columns NULL). A NULL never
/// equals anything. A pair's time is the later of its rows'.
fn hash_join(left: Relation, right: Relation, join: &Join, limits: &QueryLimits) -> Result<Relation, PlanError> {
    let what = format!("the JOIN of {}", join.source);
    let mut used = super::Used::default();
    let keys = equi_keys(&join.on, &left.columns, &right.columns)?;
    let key = |row: &Row, side: fn(&(String, String)) -> &String| -> Option<String> {
        let mut text = String::new();
        for k in &keys {
            match row.value.get(side(k)) {
                None | Some(Json::Null) => return None,
                Some(v) => text.push_str(&v.to_string()),
            }
            text.push('\u{0}');
        }
        Some(text)
    };
    let mut index: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, row) in right.rows.iter().enumerate() {
        if let Some(k) = key(row, |k| &k.1) {
            index.entry(k).or_default().push(i);
        }
    }
    let close = |l: &Row, r: &Row| {
        join.within.is_none_or(|w| (l.timestamp - w.before..=l.timestamp + w.after).contains(&r.timestamp))
    };
    let mut right_matched = vec![false; right.rows.len()];
    let mut rows = Vec::new();
    for row in left.rows {
        let candidates = key(&row, |k| &k.0).and_then(|k| index.get(&k)).map_or(&[][..], Vec::as_slice);
        let mut matched = false;
        for &i in candidates.iter().filter(|&&i| close(&row, &right.rows[i])) {
            matched = true;
            right_matched[i] = true;
            let mut value = row.value.clone();
            value.extend(right.rows[i].value.iter().map(|(k, v)| (k.clone(), v.clone())));
            limits.take(&mut used, 1, row_bytes(&value), &what)?;
            rows.push(Row { timestamp: row.timestamp.max(right.rows[i].timestamp), value });
        }
        if !matched && join.kind.keeps_unmatched(0) {
            limits.take(&mut used, 1, row_bytes(&row.value), &what)?;
            rows.push(row);
        }
    }
    if join.kind.keeps_unmatched(1) {
        for (r, _) in right.rows.into_iter().zip(right_matched).filter(|(_, m)| !m) {
            limits.take(&mut used, 1, row_bytes(&r.value), &what)?;
            rows.push(r);
        }
    }
    let mut columns = left.columns;
    columns.extend(right.columns);
    Ok(Relation { columns, rows })
}

/// The (left, right) qualified column pairs an ON condition says must be equal.
pub(crate) fn equi_keys(on: &sql::Expr, left: &[Column], right: &[Column]) -> Result<Vec<(String, String)>, PlanError> {
    let mut keys = Vec::new();
    for condition in conjuncts(on) {
        let sql::Expr::BinaryOp { left: a, op: sql::BinaryOperator::Eq, right: b } = condition else {
            return plan_error(format!("ON {condition}: joins pair rows by equal columns (a.x = b.y AND …)"));
        };
        let (a, b) = (column_of(a, left, right)?, column_of(b, left, right)?);
        keys.push(match (a, b) {
            (Side::Left(l), Side::Right(r)) | (Side::Right(r), Side::Left(l)) => (l, r),
            _ => return plan_error(format!("ON {condition}: compare a column of each side of the join")),
        });
    }
    Ok(keys)
}

enum Side {
    Left(String),
    Right(String),
}

/// Which side of a join a column reference names, as its qualified name.
fn column_of(e: &sql::Expr, left: &[Column], right: &[Column]) -> Result<Side, PlanError> {
    let parts: Vec<Ident> = match e {
        sql::Expr::Identifier(id) => vec![id.clone()],
        sql::Expr::CompoundIdentifier(parts) => parts.clone(),
        sql::Expr::Nested(inner) => return column_of(inner, left, right),
        _ => return plan_error(format!("ON … {e} …: join conditions compare columns")),
    };
    let in_left = resolve(&parts, left);
    let in_right = resolve(&parts, right);
    match (in_left, in_right) {
        (Ok(l), Err(_)) => Ok(Side::Left(l)),
        (Err(_), Ok(r)) => Ok(Side::Right(r)),
        (Ok(l), Ok(r)) => plan_error(format!("{e}: both sides of the join have it; qualify it ({l} or {r})")),
        (Err(e), Err(_)) => Err(e),
    }
}

/// The qualified column `parts` names: `q.c` exactly, or `c` when one column is `….c`.
fn resolve(parts: &[Ident], columns: &[Column]) -> Result<String, PlanError> {
    let wanted = parts.iter().map(|p| p.value.as_str()).collect::<Vec<_>>().join(".");
    if let Some(c) = columns.iter().find(|c| c.name.eq_ignore_ascii_case(&wanted)) {
        return Ok(c.name.clone());
    }
    if parts.len() == 1 {
        let suffix = format!(".{}", wanted.to_ascii_lowercase());
        let found: Vec<&Column> = columns.iter().filter(|c| c.name.to_ascii_lowercase().ends_with(&suffix)).collect();
        match found.as_slice() {
            [one] => return Ok(one.name.clone()),
            [] => {}
            many => {
                let names: Vec<&str> = many.iter().map(|c| c.name.as_str()).collect();
                return plan_error(format!("{wanted}: ambiguous, qualify it ({})", names.join(" or ")));
            }
        }
    }
    let known: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    plan_error(format!("{wanted}: no such column (the join has {})", known.join(", ")))
}

/// The query with its column references spelled as the joined relation's qualified names;
/// an unnamed column keeps the name it is known by (`c.deviceId` is `deviceId`).
pub(crate) fn qualify_names(select: &Select, columns: &[Column]) -> Result<Select, PlanError> {
    let mut out = select.clone();
    for item in &mut out.items {
        if let SelectItem::UnnamedExpr(e @ sql::Expr::CompoundIdentifier(_)) = item {
            let name = match e {
                sql::Expr::CompoundIdentifier(parts) => parts.last().expect("has parts").clone(),
                _ => unreachable!(),
            };
            *item = SelectItem::ExprWithAlias { expr: e.clone(), alias: name };
        }
    }
    let failure = std::cell::RefCell::new(None);
    let pseudo = ["ROWTIME", "ROWKEY", "ROWPARTITION", "ROWOFFSET", "WINDOWSTART", "WINDOWEND"];
    rename(&mut out, &|parts| {
        if parts.len() == 1 && pseudo.iter().any(|p| p.eq_ignore_ascii_case(&parts[0].value)) {
            return None;
        }
        match resolve(parts, columns) {
            Ok(name) => Some(name),
            Err(e) => {
                failure.borrow_mut().get_or_insert(e);
                None
            }
        }
    });
    match failure.into_inner() {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// A stream joined with tables as it flows, ksqlDB's stream–table join: each record of the
/// stream meets the tables' rows for its key as they are when it is processed, under the
/// same qualified names (`r.deviceId`, `d.payload`) a pull query's join gives them.
#[derive(Debug)]
pub struct LookupJoin {
    pub qualifier: String,
    /// The stream's declared columns.
    pub columns: Vec<Column>,
    pub tables: Vec<TableLookup>,
}

#[derive(Debug)]
pub struct TableLookup {
    pub qualifier: String,
    pub kind: JoinKind,
    /// The stream's column (qualified) that holds the table's key.
    pub probe: String,
    pub rows: Arc<TableCache>,
}

impl LookupJoin {
    /// Plans `select` (FROM a stream, JOIN tables ON their keys): the stream's columns and the
    /// tables' under qualified names, then the usual planner over them.
    pub fn plan(
        select: &Select,
        stream: &Source,
        tables: Vec<(Source, Arc<TableCache>)>,
        geometry: &Geometry,
    ) -> Result<plan::Plan, PlanError> {
        if stream.kind != SourceKind::Stream || stream.columns.is_empty() {
            return plan_error(format!(
                "{}: a continuous join reads a declared stream (CREATE STREAM {} (…) WITH (…)) and joins tables to it",
                stream.name, stream.name
            ));
        }
        let qualifier = select.alias.clone().unwrap_or_else(|| select.from.clone());
        let unkeyed = |columns: &[Column], q: &str| -> Vec<Column> {
            columns
                .iter()
                .map(|c| Column { name: format!("{q}.{}", c.name), data_type: c.data_type.clone(), key: false })
                .collect()
        };
        let mut columns = unkeyed(&stream.columns, &qualifier);
        let mut lookups = Vec::new();
        for (join, (table, rows)) in select.joins.iter().zip(tables) {
            let q = join.alias.clone().unwrap_or_else(|| join.source.clone());
            let Some(key) = table.columns.iter().find(|c| c.key) else {
                return plan_error(format!("{}: a table joined to a stream needs a PRIMARY KEY column", table.name));
            };
            let right = unkeyed(&table.columns, &q);
            let probe = match equi_keys(&join.on, &columns, &right)?.as_slice() {
                [(probe, k)] if k.eq_ignore_ascii_case(&format!("{q}.{}", key.name)) => probe.clone(),
                _ => {
                    return plan_error(format!(
                        "ON {}: a stream meets a table by the table's PRIMARY KEY ({q}.{} = …)",
                        join.on, key.name
                    ))
                }
            };
            lookups.push(TableLookup { qualifier: q, kind: join.kind, probe, rows });
            columns.extend(right);
        }
        let mut rewritten = qualify_names(select, &columns)?;
        rewritten.joins.clear();
        let source = Source {
            name: stream.name.clone(),
            kind: SourceKind::Stream,
            topic: stream.topic.clone(),
            columns,
            timestamp: stream.timestamp.as_ref().map(|t| format!("{qualifier}.{t}")),
            windowed: false,
        };
        let mut plan = plan::plan(&rewritten, &source, geometry)?;
        plan.lookup = Some(Arc::new(LookupJoin { qualifier, columns: stream.columns.clone(), tables: lookups }));
        Ok(plan)
    }

    /// The record with its tables' columns added; None when an inner join finds no row.
    pub fn join(&self, record: &Record) -> Result<Option<Record>, String> {
        let object = match serde_json::from_slice::<Json>(&record.value) {
            Ok(Json::Object(map)) => map,
            Ok(_) => return Err("value is not a JSON object".into()),
            Err(e) => return Err(format!("value is not JSON ({e})")),
        };
        let key = record.key.as_ref().map(|k| Json::from(String::from_utf8_lossy(k).into_owned()));
        let mut joined = Map::new();
        for c in &self.columns {
            let value = if c.key { key.clone() } else { json_field(&object, &c.name).cloned() };
            if let Some(v) = value {
                joined.insert(format!("{}.{}", self.qualifier, c.name), v);
            }
        }
        for table in &self.tables {
            let probe = joined.get(&table.probe).filter(|v| !v.is_null()).map(key_text);
            match probe.and_then(|k| table.rows.get(&k)) {
                Some(row) => joined.extend(row.into_iter().map(|(c, v)| (format!("{}.{c}", table.qualifier), v))),
                None if table.kind == JoinKind::Inner => return Ok(None),
                None => {}
            }
        }
        let value = Bytes::from(serde_json::to_vec(&Json::Object(joined)).expect("JSON values serialize"));
        Ok(Some(Record { value, ..record.clone() }))
    }
}

/// A key as the log holds it: strings as they are, other values as JSON.
pub(crate) fn key_text(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A table's latest row per key, kept up to date from its stream for the joins that read it.
#[derive(Debug, Default)]
pub struct TableCache {
    rows: std::sync::RwLock<HashMap<String, Map<String, Json>>>,
}

impl TableCache {
    /// Reads the table's stream to its end, then follows it on a task of its own.
    pub async fn follow(log: Arc<dyn pacer_log::Log>, table: Source) -> Result<Arc<TableCache>, pacer_log::LogError> {
        let cache = Arc::new(TableCache::default());
        let mut reader = log.reader(&table.topic, pacer_log::StartAt::Beginning)?;
        loop {
            let batch = reader.try_batch().await?;
            if batch.is_empty() {
                break;
            }
            cache.apply(&table, &batch);
        }
        let following = cache.clone();
        tokio::spawn(async move {
            loop {
                match reader.next_batch().await {
                    Ok(batch) => following.apply(&table, &batch),
                    Err(e) => {
                        tracing::error!(table = %table.name, error = %e, "a joined table stopped following its stream");
                        return;
                    }
                }
            }
        });
        Ok(cache)
    }

    fn apply(&self, table: &Source, batch: &[Record]) {
        let mut rows = self.rows.write().expect("not poisoned");
        for record in batch {
            let Some(key) = record.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()) else { continue };
            let value = match serde_json::from_slice::<Json>(&record.value) {
                Ok(Json::Object(map)) => map,
                // A tombstone (or anything but an object) removes the row.
                _ => {
                    rows.remove(&key);
                    continue;
                }
            };
            let row = table
                .columns
                .iter()
                .filter_map(|c| {
                    let v = if c.key { Some(Json::from(key.clone())) } else { value.get(&c.name).cloned() };
                    v.map(|v| (c.name.clone(), v))
                })
                .collect();
            rows.insert(key, row);
        }
    }

    fn get(&self, key: &str) -> Option<Map<String, Json>> {
        self.rows.read().expect("not poisoned").get(key).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ast::Statement;
    use crate::engine::parse::parse;
    use crate::engine::value::DataType;

    /// Rows `(time, k, v)` under columns k and v.
    fn relation(rows: &[(i64, &str, i64)]) -> Relation {
        let column = |name: &str, data_type| Column { name: name.into(), data_type, key: false };
        Relation {
            columns: vec![column("k", DataType::String), column("v", DataType::BigInt)],
            rows: rows
                .iter()
                .map(|(t, k, v)| Row {
                    timestamp: *t,
                    value: serde_json::json!({"k": k, "v": v}).as_object().unwrap().clone(),
                })
                .collect(),
        }
    }

    #[test]
    fn pull_joins_keep_their_sides_unmatched_rows_and_pair_only_close_rows_within() {
        let env: Env = [
            ("a".to_string(), relation(&[(1_000, "x", 1), (5_000, "y", 2)])),
            ("b".to_string(), relation(&[(1_500, "x", 10), (9_000, "y", 20), (2_000, "z", 30)])),
        ]
        .into();
        let rows = |sql: &str| -> Vec<(i64, Json, Json)> {
            let Some(Statement::Select(select)) = parse(sql).unwrap().pop() else { panic!() };
            let result = evaluate_query(&select, &env, &Geometry::default(), &QueryLimits::default()).unwrap();
            let mut rows: Vec<_> =
                result.rows.into_iter().map(|r| (r.timestamp, r.value["av"].clone(), r.value["bv"].clone())).collect();
            rows.sort_by_key(|r| (r.0, r.1.to_string()));
            rows
        };
        let full = rows("SELECT a.v AS av, b.v AS bv FROM a FULL JOIN b ON a.k = b.k");
        let j = |v: i64| Json::from(v);
        assert_eq!(
            full,
            [(1_500, j(1), j(10)), (2_000, Json::Null, j(30)), (9_000, j(2), j(20))],
            "a pair's time is the later row's"
        );
        // Within 2 s: y (4 s apart) no longer pairs.
        let within = rows("SELECT a.v AS av, b.v AS bv FROM a RIGHT JOIN b WITHIN 2 SECONDS ON a.k = b.k");
        assert_eq!(within, [(1_500, j(1), j(10)), (2_000, Json::Null, j(30)), (9_000, Json::Null, j(20))]);
        let before = rows("SELECT a.v AS av, b.v AS bv FROM a JOIN b WITHIN (0 SECONDS, 5 SECONDS) ON a.k = b.k");
        assert_eq!(before, [(1_500, j(1), j(10)), (9_000, j(2), j(20))]);
    }
}
