//! The streaming SQL engine: ksqlDB statements parsed, planned and run over the log.
//!
//! `Engine::execute` takes statement text. DDL (CREATE, DROP, TERMINATE, INSERT INTO) is
//! appended to the internal `__catalog` stream before it takes effect, and replayed from it
//! at start-up, so sources and persistent queries survive restarts (ksqlDB's command topic).
//! Persistent queries run as tasks (see `query`); push queries stream rows to the caller;
//! pull queries read the log up to now and answer at once.

pub mod aggregate;
pub mod ast;
pub mod columnar;
pub(crate) mod decode;
pub mod expr;
pub mod functions;
pub mod operator;
pub mod pair_join;
pub mod parse;
pub mod plan;
pub mod query;
pub mod relation;
pub mod repartition;
pub mod value;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use pacer_core::{NewRecord, Record};
use pacer_history::{HistoryStore, Segment};
use pacer_log::{
    is_internal, validate_stream_name, FilteredLog, Log, Positions, RecordFilter, StartAt, StreamReader, TimeOrdered,
};
use serde::Serialize;
use serde_json::{Map, Value as Json};
use tokio::sync::{mpsc, watch, Mutex};

use crate::geometry::Geometry;
use ast::{Emit, JoinKind, Select, SourceKind, Statement};
use expr::PlanError;
use operator::Operator;
use plan::{Column, Plan, Shape, Source};
use query::QueryRunner;
use relation::Row;

/// Internal stream of the DDL statements that built the catalog, in order.
const CATALOG: &str = "__catalog";
/// Rows a pull query on a stream returns when it has no LIMIT.
pub const DEFAULT_PULL_LIMIT: usize = 10_000;

/// What one pull or history query may hold at once: the rows it reads from a source, the
/// rows a join makes, and their bytes (JSON values, roughly as held in memory). Past either
/// the query stops with an error naming the limit, instead of taking the process's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryLimits {
    pub rows: usize,
    pub bytes: usize,
    /// State entries a persistent query keeps in memory (windows of groups, rows a join
    /// holds), per task.
    pub state_rows: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits { rows: 1_000_000, bytes: 256 << 20, state_rows: 2_000_000 }
    }
}

/// Bytes of rows the pull and history queries running now hold together (for /metrics,
/// beside each query's `query_bytes`).
pub fn held_bytes() -> prometheus_client::metrics::gauge::Gauge {
    static HELD: std::sync::LazyLock<prometheus_client::metrics::gauge::Gauge> =
        std::sync::LazyLock::new(Default::default);
    HELD.clone()
}

/// What one query holds of its budget so far; given back (in /metrics) when it ends.
#[derive(Default)]
pub(crate) struct Used {
    rows: usize,
    bytes: usize,
}

impl Drop for Used {
    fn drop(&mut self) {
        held_bytes().dec_by(self.bytes as i64);
    }
}

impl QueryLimits {
    /// Counts `more` rows of `bytes` into `used`; the error names what grew too big.
    pub(crate) fn take(&self, used: &mut Used, more: usize, bytes: usize, what: &str) -> Result<(), PlanError> {
        used.rows += more;
        used.bytes += bytes;
        held_bytes().inc_by(bytes as i64);
        if used.rows > self.rows {
            return Err(PlanError(format!(
                "{what}: more than {} rows ([sql] query_rows): narrow it with WHERE, a time range or LIMIT",
                self.rows
            )));
        }
        if used.bytes > self.bytes {
            return Err(PlanError(format!(
                "{what}: more than {} MiB of rows ([sql] query_bytes): narrow it with WHERE, a time range or LIMIT",
                self.bytes >> 20
            )));
        }
        Ok(())
    }
}

/// Roughly what a row holds in memory, its allocations' overhead included: an ordered map's
/// entry (key, value, index slot) is about 80 bytes before the key's and strings' text, and
/// a vector of rows keeps up to half as much again spare as it grows (checked against
/// VmHWM: a self-join held to 256 MiB peaked at 347 MB, from 72 MB before it).
pub(crate) fn row_bytes(value: &Map<String, Json>) -> usize {
    fn entries(map: &Map<String, Json>) -> usize {
        96 + map.iter().map(|(k, v)| 80 + k.len() + size(v)).sum::<usize>()
    }
    fn size(v: &Json) -> usize {
        match v {
            Json::String(s) => 16 + s.len(),
            Json::Array(items) => 32 + items.iter().map(|i| 72 + size(i)).sum::<usize>(),
            Json::Object(map) => entries(map),
            _ => 0,
        }
    }
    (entries(value) + 64) * 3 / 2
}

/// Transparent: the message is the cause's, said once in an error chain.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error(transparent)]
    Syntax(#[from] parse::SyntaxError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Log(#[from] pacer_log::LogError),
    #[error("history: {0}")]
    History(String),
    /// The caller may not run this statement (see [`Caller`]).
    #[error("{0}")]
    Forbidden(String),
}

fn invalid<T>(message: impl Into<String>) -> Result<T, SqlError> {
    Err(SqlError::Plan(PlanError(message.into())))
}

/// A table of results: what pull queries, SHOW and DESCRIBE answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Json>>,
}

/// What one statement did.
#[derive(Debug)]
pub enum Response {
    /// DDL: what changed, in words.
    Message(String),
    Rows(QueryResult),
    /// A push query: rows as they come, until the receiver is dropped.
    Push {
        columns: Vec<String>,
        rows: mpsc::Receiver<Map<String, Json>>,
    },
}

/// Options a client sends with a statement, named as ksqlDB's `streamsProperties`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct StatementOptions {
    /// `earliest` makes push queries start at the beginning of their input.
    #[serde(rename = "auto.offset.reset")]
    pub auto_offset_reset: Option<String>,
}

/// Who runs a statement, as far as the engine needs to know.
#[derive(Clone)]
pub struct Caller {
    /// May change the catalog: CREATE, DROP, INSERT INTO, TERMINATE.
    pub may_change_catalog: bool,
    /// The records its queries may read; None: all of them.
    pub reads: Option<RecordFilter>,
}

impl Caller {
    /// Pacer itself (the configured SQL file, the command line): anything.
    pub fn trusted() -> Caller {
        Caller { may_change_catalog: true, reads: None }
    }
}

/// Where one statement's queries read: the log (through the caller's filter) and the
/// Parquet history, whose records are filtered the same way.
pub(crate) struct Reads<'a> {
    log: Arc<dyn Log>,
    history: Option<&'a HistoryStore>,
    keep: Option<RecordFilter>,
    limits: QueryLimits,
}

impl Reads<'_> {
    /// Everything in the log, no history: what a persistent query's window stage reads.
    pub(crate) fn log_only(log: Arc<dyn Log>, limits: QueryLimits) -> Reads<'static> {
        Reads { log, history: None, keep: None, limits }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct QueryInfo {
    pub id: String,
    pub sql: String,
    pub source: String,
    pub sink: String,
    pub state: String,
}

struct RunningQuery {
    info: QueryInfo,
    stop: watch::Sender<bool>,
    /// Set when the query's task ended with an error.
    failure: Arc<std::sync::Mutex<Option<String>>>,
    /// Input partitions this node runs.
    owned: Arc<std::sync::Mutex<Vec<u32>>>,
}

struct Catalog {
    /// By lower-cased name.
    sources: BTreeMap<String, Source>,
    queries: BTreeMap<String, RunningQuery>,
    insert_count: u64,
}

pub struct Engine {
    log: Arc<dyn Log>,
    catalog: Mutex<Catalog>,
    /// Tables joined to streams as they flow, by topic.
    table_caches: std::sync::Mutex<HashMap<String, Arc<relation::TableCache>>>,
    /// Courses (and tracking settings) queries refer to by name.
    geometry: Arc<Geometry>,
    /// Streams' older records as Parquet segments, read before the log.
    history: Option<HistoryStore>,
    limits: QueryLimits,
}

impl Engine {
    /// Opens the engine over `log` (and the Parquet history of its streams), replaying its
    /// catalog: sources come back and persistent queries resume from their checkpoints.
    pub async fn start(
        log: Arc<dyn Log>,
        history: Option<HistoryStore>,
        geometry: Arc<Geometry>,
        limits: QueryLimits,
    ) -> Result<Arc<Engine>, SqlError> {
        let engine = Arc::new(Engine {
            log: log.clone(),
            geometry,
            history,
            limits,
            table_caches: Default::default(),
            catalog: Mutex::new(Catalog { sources: BTreeMap::new(), queries: BTreeMap::new(), insert_count: 0 }),
        });
        let mut reader = log.reader(CATALOG, StartAt::Beginning)?;
        let mut replayed = 0;
        loop {
            let batch = reader.try_batch().await?;
            if batch.is_empty() {
                break;
            }
            for record in batch {
                let sql = String::from_utf8_lossy(&record.value).into_owned();
                for (statement, text) in parse::parse_with_text(&sql)? {
                    if let Err(e) = engine
                        .run_statement(statement, &text, false, &StatementOptions::default(), &Caller::trusted())
                        .await
                    {
                        tracing::error!(sql = %text, error = %e, "a catalog statement failed on replay");
                    }
                    replayed += 1;
                }
            }
        }
        tracing::info!(statements = replayed, "sql catalog loaded");
        Ok(engine)
    }

    /// Runs every statement in `sql`, in order; stops at the first that fails.
    pub async fn execute(&self, sql: &str, options: &StatementOptions) -> Result<Vec<Response>, SqlError> {
        self.execute_as(sql, options, &Caller::trusted()).await
    }

    /// Runs every statement in `sql` for `caller`: one it may not run stops them all
    /// before any has run, and its queries read only what it may read.
    pub async fn execute_as(
        &self,
        sql: &str,
        options: &StatementOptions,
        caller: &Caller,
    ) -> Result<Vec<Response>, SqlError> {
        let statements = parse::parse_with_text(sql)?;
        if !caller.may_change_catalog {
            if let Some((_, text)) = statements.iter().find(|(s, _)| s.changes_catalog()) {
                return Err(SqlError::Forbidden(format!(
                    "{}: only admins may change the catalog (CREATE, DROP, INSERT INTO, TERMINATE)",
                    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
                )));
            }
        }
        let mut responses = Vec::new();
        for (statement, text) in statements {
            responses.push(self.run_statement(statement, &text, true, options, caller).await?);
        }
        Ok(responses)
    }

    /// Runs the statements of a SQL file at start-up: a CREATE whose name already exists,
    /// or an INSERT INTO already running, is left as it is, so the file can run at every start.
    pub async fn execute_file(&self, sql: &str) -> Result<(), SqlError> {
        for (statement, text) in parse::parse_file(sql)? {
            let existing = {
                let catalog = self.catalog.lock().await;
                match &statement {
                    Statement::CreateSource { name, .. } | Statement::CreateAs { name, .. } => {
                        catalog.sources.contains_key(&name.to_ascii_lowercase()).then(|| name.clone())
                    }
                    // An INSERT INTO has no name: the same statement running is the same query.
                    Statement::InsertInto { .. } => {
                        catalog.queries.values().find(|q| q.info.sql == text).map(|q| q.info.id.clone())
                    }
                    _ => None,
                }
            };
            if let Some(name) = existing {
                tracing::debug!(name, "already in the catalog; left as it is");
                continue;
            }
            self.run_statement(statement, &text, true, &StatementOptions::default(), &Caller::trusted()).await?;
        }
        Ok(())
    }

    pub async fn queries(&self) -> Vec<QueryInfo> {
        self.catalog.lock().await.queries.values().map(|q| q.info_now()).collect()
    }

    /// Names of the sources that are tables, for readers that show latest rows per key.
    pub async fn tables(&self) -> Vec<String> {
        let catalog = self.catalog.lock().await;
        catalog.sources.values().filter(|s| s.kind == SourceKind::Table).map(|s| s.topic.clone()).collect()
    }

    async fn run_statement(
        &self,
        statement: Statement,
        text: &str,
        persist: bool,
        options: &StatementOptions,
        caller: &Caller,
    ) -> Result<Response, SqlError> {
        let reads = Reads {
            log: match &caller.reads {
                Some(keep) => Arc::new(FilteredLog::new(self.log.clone(), keep.clone())),
                None => self.log.clone(),
            },
            history: self.history.as_ref(),
            keep: caller.reads.clone(),
            limits: self.limits,
        };
        match statement {
            Statement::CreateSource { kind, name, columns, properties, or_replace, if_not_exists } => {
                let mut catalog = self.catalog.lock().await;
                if catalog.sources.contains_key(&name.to_ascii_lowercase()) && !or_replace {
                    if if_not_exists {
                        return Ok(Response::Message(format!("{name} already exists")));
                    }
                    return invalid(format!("{name} already exists (DROP it first, or CREATE OR REPLACE)"));
                }
                check_format(&properties)?;
                let topic = properties.get("KAFKA_TOPIC").cloned().unwrap_or_else(|| name.clone());
                validate_stream_name(&topic)?;
                let columns: Vec<Column> =
                    columns.into_iter().map(|c| Column { name: c.name, data_type: c.data_type, key: c.key }).collect();
                let timestamp = properties.get("TIMESTAMP").cloned();
                if let Some(t) = &timestamp {
                    if !columns.is_empty() && !columns.iter().any(|c| c.name.eq_ignore_ascii_case(t)) {
                        return invalid(format!("TIMESTAMP='{t}': no such column in {name}"));
                    }
                }
                let source = Source { name: name.clone(), kind, topic, columns, timestamp, windowed: false };
                self.persist(persist, text).await?;
                catalog.sources.insert(name.to_ascii_lowercase(), source);
                Ok(Response::Message(format!("{} {name} created", title(kind))))
            }
            Statement::CreateAs { kind, name, properties, query, or_replace, if_not_exists } => {
                let mut catalog = self.catalog.lock().await;
                let key = name.to_ascii_lowercase();
                if catalog.sources.contains_key(&key) {
                    if if_not_exists {
                        return Ok(Response::Message(format!("{name} already exists")));
                    }
                    if !or_replace {
                        return invalid(format!("{name} already exists (DROP it first, or CREATE OR REPLACE)"));
                    }
                }
                check_format(&properties)?;
                let (plan, source, columns) = if query.ctes.is_empty() {
                    let (plan, source) = self.plan_continuous(&catalog, &query).await?;
                    let aggregated = matches!(plan.shape, Shape::Aggregate { .. });
                    match (kind, aggregated) {
                        (SourceKind::Stream, true) => {
                            return invalid("an aggregation makes a table: CREATE TABLE … AS SELECT … GROUP BY")
                        }
                        (SourceKind::Table, false) if source.kind != SourceKind::Table => {
                            return invalid("CREATE TABLE … AS SELECT needs GROUP BY (or a table to select from)")
                        }
                        _ => {}
                    }
                    let columns = plan.output.iter().filter(|c| c.name != "*").cloned().collect();
                    (plan, source, columns)
                } else {
                    if kind != SourceKind::Stream {
                        return invalid("a query with WITH or joins writes a stream of rows: CREATE STREAM … AS");
                    }
                    self.window_stage(&catalog, &query)?
                };
                let topic = properties.get("KAFKA_TOPIC").cloned().unwrap_or_else(|| name.clone());
                validate_stream_name(&topic)?;
                written_from_outside(&topic)?;
                let id = format!(
                    "{}_{}",
                    if kind == SourceKind::Table { "CTAS" } else { "CSAS" },
                    name.to_ascii_uppercase()
                );
                if let Some(old) = catalog.queries.remove(&id) {
                    let _ = old.stop.send(true);
                }
                let sink = Source {
                    name: name.clone(),
                    kind,
                    topic: topic.clone(),
                    columns,
                    timestamp: None,
                    windowed: plan.stage.is_none() && matches!(plan.shape, Shape::Aggregate { window: Some(_), .. }),
                };
                self.persist(persist, text).await?;
                catalog.sources.insert(key, sink);
                let info = QueryInfo {
                    id: id.clone(),
                    sql: text.to_string(),
                    source: source.name,
                    sink: topic,
                    state: String::new(),
                };
                catalog.queries.insert(id.clone(), self.spawn(info, plan));
                Ok(Response::Message(format!("{} {name} created; query {id} running", title(kind))))
            }
            Statement::InsertInto { target, query } => {
                let mut catalog = self.catalog.lock().await;
                let Some(sink) = catalog.sources.get(&target.to_ascii_lowercase()).cloned() else {
                    return invalid(format!("{target}: no such stream (create it before INSERT INTO)"));
                };
                if sink.kind != SourceKind::Stream {
                    return invalid(format!("{target} is a table; INSERT INTO writes streams"));
                }
                written_from_outside(&sink.topic)?;
                if !query.ctes.is_empty() {
                    return invalid("INSERT INTO takes a query without WITH (CREATE STREAM … AS WITH … runs one)");
                }
                let (plan, source) = self.plan_continuous(&catalog, &query).await?;
                if matches!(plan.shape, Shape::Aggregate { .. }) {
                    return invalid("INSERT INTO takes a query without GROUP BY");
                }
                catalog.insert_count += 1;
                let id = format!("INSERTQUERY_{}", catalog.insert_count);
                self.persist(persist, text).await?;
                let info = QueryInfo {
                    id: id.clone(),
                    sql: text.to_string(),
                    source: source.name,
                    sink: sink.topic,
                    state: String::new(),
                };
                catalog.queries.insert(id.clone(), self.spawn(info, plan));
                Ok(Response::Message(format!("query {id} running")))
            }
            Statement::Select(select) => {
                if select.emit != Emit::None && select.ctes.is_empty() && !select.joins.is_empty() {
                    let (plan, _) = {
                        let catalog = self.catalog.lock().await;
                        if reads.keep.is_some() && self.joins_tables(&catalog, &select)? {
                            // The joined tables are followed whole, for every query that joins them.
                            return Err(SqlError::Forbidden(
                                "a push query joining a table reads the whole table: only admins may run one; \
                                 run it as a pull query, or ask for a derived stream"
                                    .into(),
                            ));
                        }
                        self.plan_continuous(&catalog, &select).await?
                    };
                    let earliest =
                        options.auto_offset_reset.as_deref().is_some_and(|r| r.eq_ignore_ascii_case("earliest"));
                    return self.push(&reads, plan, if earliest { StartAt::Beginning } else { StartAt::End });
                }
                if !select.ctes.is_empty() || !select.joins.is_empty() {
                    if select.emit != Emit::None {
                        return invalid(
                            "push queries with WITH are not supported yet; run it as a pull query \
                             (without EMIT), or CREATE STREAM … AS over a window table function",
                        );
                    }
                    let mut result = self.pull_relational(&reads, &select).await?;
                    result.rows.truncate(select.limit.map_or(DEFAULT_PULL_LIMIT, |l| l as usize));
                    return Ok(Response::Rows(result.into_result()));
                }
                let (select, source) = {
                    let catalog = self.catalog.lock().await;
                    let (mut windowed, source) = self.windowed(&catalog, &select)?;
                    windowed.emit = select.emit; // a pull query stays one
                    if select.emit == Emit::None && select.window_table.is_some() {
                        windowed = relation::without_lateness(windowed);
                    }
                    (windowed, source)
                };
                let plan = plan::plan(&select, &source, &self.geometry)?;
                if select.emit == Emit::None {
                    return Ok(Response::Rows(self.pull(&reads, plan).await?));
                }
                let earliest = options.auto_offset_reset.as_deref().is_some_and(|r| r.eq_ignore_ascii_case("earliest"));
                Ok(self.push(&reads, plan, if earliest { StartAt::Beginning } else { StartAt::End })?)
            }
            Statement::Drop { kind, name, if_exists, delete_topic } => {
                let mut catalog = self.catalog.lock().await;
                let key = name.to_ascii_lowercase();
                let Some(source) = catalog.sources.get(&key) else {
                    if if_exists {
                        return Ok(Response::Message(format!("{name} does not exist")));
                    }
                    return invalid(format!("{name}: no such {}", kind.as_str().to_lowercase()));
                };
                if source.kind != kind {
                    return invalid(format!("{name} is a {}, not a {}", source.kind.as_str(), kind.as_str()));
                }
                if delete_topic {
                    return invalid(
                        "DELETE TOPIC is not supported: the log keeps the stream (retention removes old records)",
                    );
                }
                if let Some(q) = catalog.queries.values().find(|q| q.info.sink == source.topic) {
                    return invalid(format!("{name} is written by query {}: TERMINATE {} first", q.info.id, q.info.id));
                }
                self.persist(persist, text).await?;
                catalog.sources.remove(&key);
                Ok(Response::Message(format!("{} {name} dropped", title(kind))))
            }
            Statement::Terminate { query } => {
                let mut catalog = self.catalog.lock().await;
                let ids: Vec<String> = match &query {
                    None => catalog.queries.keys().cloned().collect(),
                    Some(id) => match catalog.queries.keys().find(|k| k.eq_ignore_ascii_case(id)) {
                        Some(k) => vec![k.clone()],
                        None => return invalid(format!("{id}: no such query (SHOW QUERIES lists them)")),
                    },
                };
                self.persist(persist, text).await?;
                for id in &ids {
                    if let Some(q) = catalog.queries.remove(id) {
                        let _ = q.stop.send(true);
                    }
                }
                Ok(Response::Message(format!(
                    "terminated {}",
                    if ids.is_empty() { "nothing".into() } else { ids.join(", ") }
                )))
            }
            Statement::Show(what) => Ok(Response::Rows(self.show(what).await)),
            Statement::Describe { name } => {
                let catalog = self.catalog.lock().await;
                let source = self.source(&catalog, &name)?;
                let rows = source
                    .columns
                    .iter()
                    .map(|c| vec![Json::from(c.name.clone()), Json::from(c.data_type.to_string()), Json::from(c.key)])
                    .collect();
                Ok(Response::Rows(QueryResult { columns: ["field", "type", "key"].map(String::from).to_vec(), rows }))
            }
        }
    }

    /// Whether a query joins a stream with tables as it flows (see `lookup_plan`).
    fn joins_tables(&self, catalog: &Catalog, select: &Select) -> Result<bool, SqlError> {
        let (left, right) = (self.source(catalog, &select.from)?, self.source(catalog, &select.joins[0].source)?);
        Ok(right.kind == SourceKind::Table && left.kind != SourceKind::Table)
    }

    /// The plan of a query without WITH that runs as records come, and the source it reads:
    /// a stream joined with tables, or one source (a window table function as its window).
    async fn plan_continuous(&self, catalog: &Catalog, select: &Select) -> Result<(Plan, Source), SqlError> {
        if select.joins.is_empty() {
            let (select, source) = self.windowed(catalog, select)?;
            return Ok((plan::plan(&select, &source, &self.geometry)?, source));
        }
        let left = self.source(catalog, &select.from)?;
        let right = self.source(catalog, &select.joins[0].source)?;
        let plan = if right.kind == SourceKind::Stream || left.kind == SourceKind::Table {
            if select.window_table.is_some() {
                return invalid("a window table function with joins goes in a CTE: WITH w AS (SELECT … FROM TABLE(HOP(…)) …) SELECT … FROM w JOIN …");
            }
            pair_join::PairJoin::plan(select, &left, &right, &self.geometry)?
        } else {
            self.lookup_plan(catalog, select).await?
        };
        let source = plan.source.clone();
        Ok((plan, source))
    }

    /// The plan of a stream joined with tables as it flows; each table is kept in memory,
    /// following its stream, shared by the queries that join it.
    async fn lookup_plan(&self, catalog: &Catalog, select: &Select) -> Result<Plan, SqlError> {
        if select.window_table.is_some() {
            return invalid("a window table function with joins goes in a CTE: WITH w AS (SELECT … FROM TABLE(HOP(…)) …) SELECT … FROM w JOIN …");
        }
        let stream = self.source(catalog, &select.from)?;
        let mut tables = Vec::new();
        for join in &select.joins {
            if join.within.is_some() {
                return invalid(format!(
                    "{}: WITHIN is for stream–stream joins; a stream meets a table as it is",
                    join.source
                ));
            }
            if !matches!(join.kind, JoinKind::Inner | JoinKind::Left) {
                return invalid(format!("{}: a stream–table join is INNER or LEFT", join.source));
            }
            let table = self.source(catalog, &join.source)?;
            if table.kind != SourceKind::Table || table.columns.is_empty() || table.windowed {
                return invalid(format!(
                    "{}: a stream joins declared tables as it flows (CREATE TABLE {} (k VARCHAR PRIMARY KEY, …) WITH (…)); \
                     other joins run as pull queries, or per window in a CTE",
                    join.source, join.source
                ));
            }
            let cached = self.table_caches.lock().expect("not poisoned").get(&table.topic).cloned();
            let rows = match cached {
                Some(rows) => rows,
                None => {
                    let rows = relation::TableCache::follow(self.log.clone(), table.clone()).await?;
                    self.table_caches.lock().expect("not poisoned").insert(table.topic.clone(), rows.clone());
                    rows
                }
            };
            tables.push((table, rows));
        }
        Ok(relation::LookupJoin::plan(select, &stream, tables, &self.geometry)?)
    }

    /// A persistent windowed query with CTEs or joins: the plan of its window table function's
    /// aggregation, carrying the rest as the stage each closed window goes through; the source
    /// it reads; its output columns. Names and types are checked now, over empty relations.
    fn window_stage(&self, catalog: &Catalog, query: &Select) -> Result<(Plan, Source, Vec<Column>), SqlError> {
        let (name, windows, rest) = relation::split_windowed(query)?;
        let (windows, source) = self.windowed(catalog, &windows)?;
        let mut plan = plan::plan(&windows, &source, &self.geometry)?;
        let mut env = relation::Env::new();
        env.insert(name.to_ascii_lowercase(), relation::Relation::from_rows(plan.output.clone(), Vec::new()));
        let mut sources = Vec::new();
        for base in relation::base_names(&rest) {
            if env.contains_key(&base) {
                continue;
            }
            let s = self.source(catalog, &base)?;
            if s.columns.is_empty() {
                return invalid(format!(
                    "{base}: declare its columns (CREATE STREAM|TABLE {base} (…) WITH (…)) to join it"
                ));
            }
            env.insert(base, relation::Relation::from_rows(s.columns.clone(), Vec::new()));
            sources.push(s);
        }
        let columns = relation::evaluate_query(&rest, &env, &self.geometry, &self.limits)?.columns;
        let stage = relation::WindowStage {
            name,
            columns: plan.output.clone(),
            rest,
            sources,
            geometry: self.geometry.clone(),
            limits: self.limits,
        };
        plan.stage = Some(Arc::new(stage));
        Ok((plan, source, columns))
    }

    /// A persistent query's SELECT with a window table function as the engine's window (it
    /// emits each window once, when it ends, as Flink does), and the source it reads.
    fn windowed(&self, catalog: &Catalog, query: &Select) -> Result<(Select, Source), SqlError> {
        let (mut select, time) = relation::desugar_window_table(query)?;
        let mut source = self.source(catalog, &select.from)?;
        if query.window_table.is_some() {
            source.timestamp = time.or(source.timestamp);
            if select.emit == Emit::None {
                select.emit = Emit::Final;
            }
        }
        Ok((select, source))
    }

    /// A declared source, or an undeclared log stream readable by field name.
    fn source(&self, catalog: &Catalog, name: &str) -> Result<Source, SqlError> {
        if let Some(s) = catalog.sources.get(&name.to_ascii_lowercase()) {
            return Ok(s.clone());
        }
        match self.log.streams().into_iter().find(|s| s.name.eq_ignore_ascii_case(name)) {
            Some(s) => Ok(Source {
                name: s.name.clone(),
                kind: SourceKind::Stream,
                topic: s.name,
                columns: Vec::new(),
                timestamp: None,
                windowed: false,
            }),
            None => invalid(format!("{name}: no such stream or table (SHOW STREAMS lists them)")),
        }
    }

    async fn persist(&self, persist: bool, text: &str) -> Result<(), SqlError> {
        if persist {
            self.log.append(CATALOG, vec![NewRecord::new(pacer_core::now_ms(), None, text.to_string())]).await?;
        }
        Ok(())
    }

    fn spawn(&self, info: QueryInfo, plan: Plan) -> RunningQuery {
        let (stop, stopped) = watch::channel(false);
        let failure = Arc::new(std::sync::Mutex::new(None));
        let owned = Arc::new(std::sync::Mutex::new(Vec::new()));
        let runner = QueryRunner {
            id: info.id.clone(),
            log: self.log.clone(),
            plan,
            sink: info.sink.clone(),
            spread_groups: self.log.shared(),
            owned: owned.clone(),
            failure: failure.clone(),
            state_rows: self.limits.state_rows,
        };
        tokio::spawn(runner.keep_running(stopped));
        RunningQuery { info, stop, failure, owned }
    }

    async fn show(&self, what: ast::Show) -> QueryResult {
        let catalog = self.catalog.lock().await;
        let text = |s: &str| Json::from(s.to_string());
        match what {
            ast::Show::Streams | ast::Show::Tables => {
                let kind = if what == ast::Show::Streams { SourceKind::Stream } else { SourceKind::Table };
                let mut rows: Vec<Vec<Json>> = catalog
                    .sources
                    .values()
                    .filter(|s| s.kind == kind)
                    .map(|s| vec![text(&s.name), text(kind.as_str()), text(&s.topic), text("JSON")])
                    .collect();
                if kind == SourceKind::Stream {
                    let declared: Vec<&str> = catalog.sources.values().map(|s| s.topic.as_str()).collect();
                    for s in self.log.streams() {
                        if !declared.contains(&s.name.as_str()) {
                            rows.push(vec![text(&s.name), text("STREAM"), text(&s.name), text("JSON (undeclared)")]);
                        }
                    }
                }
                QueryResult { columns: ["name", "kind", "topic", "format"].map(String::from).to_vec(), rows }
            }
            ast::Show::Queries => QueryResult {
                columns: ["id", "state", "source", "sink", "sql", "partitions"].map(String::from).to_vec(),
                rows: catalog
                    .queries
                    .values()
                    .map(|q| {
                        let i = q.info_now();
                        // The input partitions this node runs (the others run on other nodes).
                        let owned: Vec<Json> = q.owned.lock().unwrap().iter().map(|&p| Json::from(p)).collect();
                        vec![
                            text(&i.id),
                            text(&i.state),
                            text(&i.source),
                            text(&i.sink),
                            text(&i.sql),
                            Json::from(owned),
                        ]
                    })
                    .collect(),
            },
            ast::Show::Functions => QueryResult {
                columns: ["name", "kind"].map(String::from).to_vec(),
                rows: functions::all()
                    .iter()
                    .map(|f| vec![text(f.name), text("SCALAR")])
                    .chain(aggregate::names().iter().map(|n| vec![text(n), text("AGGREGATE")]))
                    .collect(),
            },
        }
    }

    /// A pull query with CTEs or joins: the sources it reads, each whole as of now, then its
    /// CTEs in order, then its body.
    async fn pull_relational(&self, reads: &Reads<'_>, select: &Select) -> Result<relation::Relation, SqlError> {
        let mut env = relation::Env::new();
        for name in relation::base_names(select) {
            let source = {
                let catalog = self.catalog.lock().await;
                self.source(&catalog, &name)?
            };
            env.insert(name, whole(reads, source, &self.geometry).await?);
        }
        Ok(relation::evaluate_query(select, &env, &self.geometry, &reads.limits)?)
    }

    /// A pull query: the history and the log read up to now; an aggregation over Parquet
    /// history a column at a time when it can be.
    async fn pull(&self, reads: &Reads<'_>, plan: Plan) -> Result<QueryResult, SqlError> {
        let limit = plan.limit.map_or(DEFAULT_PULL_LIMIT, |l| l as usize);
        // Columns are aggregated without records, so only where every record may be read.
        if let (Some(history), None) = (reads.history, &reads.keep) {
            if let Some(mut rows) = columnar_pull(self.log.as_ref(), history, &plan).await? {
                rows.truncate(limit);
                return Ok(QueryResult { columns: plan.output.into_iter().map(|c| c.name).collect(), rows });
            }
        }
        let (columns, rows) = pull_rows(reads, plan, limit).await?;
        Ok(relation::Relation::from_rows(columns, rows).into_result())
    }

    /// A push query: a task running the plan from `start`, sending rows until the
    /// receiver goes away.
    fn push(&self, reads: &Reads<'_>, plan: Plan, start: StartAt) -> Result<Response, SqlError> {
        let columns: Vec<String> = plan.output.iter().map(|c| c.name.clone()).collect();
        let limit = plan.limit;
        let mut reader = query::input_reader(&reads.log, &plan, None, start)?;
        let mut operator = Operator::new(plan);
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            let mut sent = 0u64;
            let mut out = Vec::new();
            loop {
                let batch = tokio::select! {
                    _ = tx.closed() => return,
                    batch = reader.next_batch() => match batch {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::warn!(error = %e, "push query ended");
                            return;
                        }
                    },
                };
                for record in &batch {
                    let _ = operator.process(record, &mut out);
                }
                for o in out.drain(..) {
                    let Some(value) = o.value else { continue };
                    if tx.send(value).await.is_err() {
                        return;
                    }
                    sent += 1;
                    if limit.is_some_and(|l| sent >= l) {
                        return;
                    }
                }
            }
        });
        Ok(Response::Push { columns, rows: rx })
    }
}

/// Every row of a source as of now (a table: its latest row per key), for joins and CTEs.
pub(crate) async fn whole(
    reads: &Reads<'_>,
    source: Source,
    geometry: &Geometry,
) -> Result<relation::Relation, SqlError> {
    let everything = parse::parse(&format!("SELECT * FROM \"{}\"", source.name))?;
    let Some(Statement::Select(select)) = everything.into_iter().next() else { unreachable!("a SELECT") };
    let plan = plan::plan(&select, &source, geometry)?;
    let (columns, rows) = pull_rows(reads, plan, reads.limits.rows + 1).await?;
    if rows.len() > reads.limits.rows {
        return invalid(format!(
            "{}: more than {} rows ([sql] query_rows); joins and WITH read their sources whole, so narrow it first",
            source.name, reads.limits.rows
        ));
    }
    Ok(relation::Relation::from_rows(columns, rows))
}

/// The rows of `plan` over its source's records up to now, each with its event time: a pull
/// query's answer, and a relation for the queries that join or window it. A table source
/// counts only its latest row per key (and window); so does an aggregation's result. Without
/// aggregation, reading stops after `cap` rows. Also gives the output column names, with `*`
/// spelled out.
async fn pull_rows(reads: &Reads<'_>, plan: Plan, cap: usize) -> Result<(Vec<Column>, Vec<Row>), SqlError> {
    let table_source = plan.source.kind == SourceKind::Table;
    let aggregated = matches!(plan.shape, Shape::Aggregate { .. });
    let topic = plan.source.topic.clone();
    let limit = plan.limit.map(|l| l as usize);
    let mut columns = plan.output.clone();
    let order = operator::event_time(&plan);
    // An aggregation's answer is each group's last row: made once per group when the input
    // ends (or its window closes), not once per record. Ranking still needs every change.
    let mut plan = plan;
    let once_per_group = matches!(&plan.shape, Shape::Aggregate { over, .. } if over.is_empty());
    if once_per_group {
        plan.emit = Emit::Final;
    }
    let mut operator = Operator::new(plan);
    // Parquet history first, then the log from where it ends.
    let (mut segments, start) = match reads.history {
        Some(h) => {
            let (segments, covered) = history_of(h, &topic).await?;
            (segments.into(), StartAt::Positions(covered))
        }
        None => (std::collections::VecDeque::new(), StartAt::Beginning),
    };
    let mut reader = TimeOrdered::open(reads.log.clone(), &topic, start, order)?;
    let mut latest: LatestRows = LatestRows::default();
    let mut table: LatestRows = LatestRows::default();
    let mut rows: Vec<Row> = Vec::new();
    let mut out = Vec::new();
    let (mut rejected, mut first_reason) = (0usize, None);
    let mut used = Used::default();
    let what = format!("the query over {topic}");
    'read: loop {
        // A table's current state is its latest row per key (and window), read first.
        let batch = match segments.pop_front() {
            Some(segment) => {
                let mut records = segment_records(segment).await?;
                if let Some(keep) = &reads.keep {
                    records.retain(|r| keep(&topic, r));
                }
                records
            }
            None => reader.try_batch().await?,
        };
        let records = match (batch.is_empty() && segments.is_empty(), table_source) {
            (true, false) => break,
            (true, true) => table.take_records(),
            (false, true) => {
                batch.into_iter().for_each(|r| table.put_record(r));
                continue;
            }
            (false, false) => batch,
        };
        for record in &records {
            if let Err(reason) = operator.process(record, &mut out) {
                rejected += 1;
                first_reason.get_or_insert(reason);
            }
            for o in out.drain(..) {
                if aggregated {
                    latest.put(o.key, o.window, o.value.map(|value| Row { timestamp: o.timestamp, value }));
                } else if let Some(value) = o.value {
                    reads.limits.take(&mut used, 1, row_bytes(&value), &what)?;
                    rows.push(Row { timestamp: o.timestamp, value });
                }
            }
            if !aggregated && rows.len() >= cap {
                break 'read;
            }
            if aggregated && latest.len() > reads.limits.rows {
                return invalid(format!("{what}: more than {} groups ([sql] query_rows)", reads.limits.rows));
            }
        }
        if table_source {
            break;
        }
    }
    if once_per_group {
        operator.finish(&mut out);
        for o in out.drain(..) {
            latest.put(o.key, o.window, o.value.map(|value| Row { timestamp: o.timestamp, value }));
        }
    }
    if rejected > 0 {
        // A pull query answers with the rows it could compute; the skipped ones are named.
        tracing::warn!(stream = %topic, rejected, first_reason = first_reason.as_deref().unwrap_or(""), "pull query skipped records it could not read");
    }
    if aggregated {
        rows = latest.into_values();
    }
    if let Some(l) = limit {
        rows.truncate(l);
    }
    if columns.iter().any(|c| c.name == "*") {
        columns = expand_wildcard(&columns, &rows);
    }
    Ok((columns, rows))
}

/// Refuses a query writing into one of Pacer's own streams (`__…`): only Pacer writes them.
fn written_from_outside(topic: &str) -> Result<(), SqlError> {
    if is_internal(topic) {
        return Err(SqlError::Forbidden(format!("{topic} is one of Pacer's own streams: no query may write it")));
    }
    Ok(())
}

/// A stream's Parquet segments, and where the log takes over from them.
async fn history_of(history: &HistoryStore, topic: &str) -> Result<(Vec<Segment>, Positions), SqlError> {
    let (history, topic) = (history.clone(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let segments = history.segments(&topic)?;
        let covered = history.covered(&topic, &segments)?;
        Ok((segments, covered))
    })
    .await
    .map_err(|e| SqlError::History(e.to_string()))?
    .map_err(|e: pacer_history::HistoryError| SqlError::History(e.to_string()))
}

async fn segment_records(segment: Segment) -> Result<Vec<Record>, SqlError> {
    tokio::task::spawn_blocking(move || segment.records())
        .await
        .map_err(|e| SqlError::History(e.to_string()))?
        .map_err(|e| SqlError::History(e.to_string()))
}

/// A pull aggregation over a stream's Parquet history and the log after it, a column at a
/// time. None when the query or its data need the row way (or there is no history).
async fn columnar_pull(log: &dyn Log, history: &HistoryStore, plan: &Plan) -> Result<Option<Vec<Vec<Json>>>, SqlError> {
    let mut aggregation = match columnar::Aggregation::new(plan) {
        Ok(a) => a,
        Err(columnar::Unsupported(why)) => {
            tracing::debug!(why, "history query reads rows");
            return Ok(None);
        }
    };
    let topic = plan.source.topic.clone();
    let (segments, covered) = history_of(history, &topic).await?;
    if segments.is_empty() {
        return Ok(None);
    }
    let (from, to) = aggregation.time_range();
    let columns = aggregation.columns();
    let scanned = tokio::task::spawn_blocking(move || -> Result<Option<columnar::Aggregation>, String> {
        for segment in segments.iter().filter(|s| s.max_time >= from && s.min_time <= to) {
            for batch in segment.scan(Some(&columns)).map_err(|e| e.to_string())? {
                let batch = batch.map_err(|e| format!("{}: {e}", segment.path.display()))?;
                if let Err(columnar::Unsupported(why)) = aggregation.add(&batch) {
                    tracing::debug!(why, "history query reads rows");
                    return Ok(None);
                }
            }
        }
        Ok(Some(aggregation))
    })
    .await
    .map_err(|e| SqlError::History(e.to_string()))?
    .map_err(SqlError::History)?;
    let Some(mut aggregation) = scanned else { return Ok(None) };
    let mut reader = log.reader(&topic, StartAt::Positions(covered))?;
    loop {
        let records = reader.try_batch().await?;
        if records.is_empty() {
            break;
        }
        let batch = pacer_history::columns::to_batch(&records).map_err(|e| SqlError::History(e.to_string()))?;
        if let Err(columnar::Unsupported(why)) = aggregation.add(&batch) {
            tracing::debug!(why, "history query reads rows");
            return Ok(None);
        }
    }
    if aggregation.rejected > 0 {
        tracing::warn!(stream = %topic, rejected = aggregation.rejected, "pull query skipped records that are not JSON objects");
    }
    aggregation.finish().map(Some).map_err(SqlError::History)
}

impl RunningQuery {
    fn info_now(&self) -> QueryInfo {
        let mut info = self.info.clone();
        info.state = match &*self.failure.lock().unwrap() {
            Some(e) => format!("ERROR: {e}"),
            None => "RUNNING".into(),
        };
        info
    }
}

/// Latest row per key and window, in first-seen order; None removes.
#[derive(Default)]
pub(crate) struct LatestRows {
    order: Vec<(Option<String>, Option<Json>)>,
    index: HashMap<(Option<String>, Option<Json>), usize>,
    values: Vec<Option<Row>>,
    records: Vec<Option<Record>>,
}

impl LatestRows {
    fn slot(&mut self, id: (Option<String>, Option<Json>)) -> usize {
        if let Some(&i) = self.index.get(&id) {
            return i;
        }
        self.order.push(id.clone());
        self.values.push(None);
        self.records.push(None);
        self.index.insert(id, self.order.len() - 1);
        self.order.len() - 1
    }

    fn len(&self) -> usize {
        self.order.len()
    }

    pub(crate) fn put(&mut self, key: Option<String>, window: Option<i64>, value: Option<Row>) {
        let i = self.slot((key, window.map(Json::from)));
        self.values[i] = value;
    }

    fn put_record(&mut self, record: Record) {
        let key = record.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned());
        let window = match record.header(query::WINDOW_HEADER) {
            Some(start) => String::from_utf8_lossy(start).parse::<i64>().ok().map(Json::from),
            None => serde_json::from_slice::<Json>(&record.value).ok().and_then(|v| v.get("WINDOWSTART").cloned()),
        };
        let i = self.slot((key, window));
        // A copy, so a kept row does not hold on to the whole chunk the log read it from.
        let value = bytes::Bytes::copy_from_slice(&record.value);
        self.records[i] = (!value.is_empty()).then_some(Record { value, ..record });
    }

    pub(crate) fn into_values(self) -> Vec<Row> {
        self.values.into_iter().flatten().collect()
    }

    fn take_records(&mut self) -> Vec<Record> {
        std::mem::take(&mut self.records).into_iter().flatten().collect()
    }
}

/// The columns with `*` replaced by the fields the rows hold (typed at run time).
fn expand_wildcard(columns: &[Column], rows: &[Row]) -> Vec<Column> {
    let mut out: Vec<Column> = Vec::new();
    let known = |out: &[Column], name: &str| out.iter().chain(columns).any(|c| c.name == name);
    for c in columns {
        if c.name != "*" {
            out.push(c.clone());
            continue;
        }
        for row in rows {
            for k in row.value.keys() {
                if !known(&out, k) {
                    out.push(Column { name: k.clone(), data_type: value::DataType::Any, key: false });
                }
            }
        }
    }
    out
}

fn check_format(properties: &ast::Properties) -> Result<(), SqlError> {
    match properties.get("VALUE_FORMAT") {
        Some(f) if !f.eq_ignore_ascii_case("JSON") => invalid(format!("VALUE_FORMAT='{f}': only JSON is supported")),
        _ => Ok(()),
    }
}

fn title(kind: SourceKind) -> &'static str {
    match kind {
        SourceKind::Stream => "Stream",
        SourceKind::Table => "Table",
    }
}
