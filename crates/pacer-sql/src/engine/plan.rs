//! From a parsed SELECT and the source it reads to a plan: which fields to decode, the
//! filter, and either a projection or a grouped aggregation, with every name and type
//! checked. Nothing here touches the log.

use sqlparser::ast::{self as sql, FunctionArg, FunctionArgExpr, FunctionArguments, SelectItem};

use super::aggregate::{is_aggregate, AggregateCall};
use super::ast::{Emit, Select, SourceKind, Window, WindowKind};
use super::expr::{compile, plan_error, Expr, PlanError, Scope};
use super::value::DataType;
use crate::geometry::Geometry;
use crate::track::{Place, TrackKind, Tracking};

/// A declared column of a source.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Column {
    pub name: String,
    #[serde(with = "type_text")]
    pub data_type: DataType,
    /// Read from (and written to) the record key.
    pub key: bool,
}

/// A stream or table queries can read: a log stream and how its records look.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Source {
    pub name: String,
    pub kind: SourceKind,
    /// The log stream (Kafka topic) holding its records.
    pub topic: String,
    /// Declared columns; empty for a log stream nobody declared, whose JSON fields are
    /// readable by name with type ANY.
    pub columns: Vec<Column>,
    /// The column that holds event time, when not the record timestamp.
    pub timestamp: Option<String>,
    /// Windowed tables are keyed by key and window start.
    pub windowed: bool,
}

/// Pseudo columns every input row has, at these slots.
pub const ROWTIME: usize = 0;
pub const ROWKEY: usize = 1;
pub const ROWPARTITION: usize = 2;
pub const ROWOFFSET: usize = 3;
/// The whole JSON value, for `SELECT *` over an undeclared stream.
pub const WHOLE_VALUE: usize = 4;
/// Slot of the first decoded field.
pub const FIRST_FIELD: usize = 5;
const PSEUDO: [(&str, DataType); 4] = [
    ("ROWTIME", DataType::BigInt),
    ("ROWKEY", DataType::String),
    ("ROWPARTITION", DataType::Int),
    ("ROWOFFSET", DataType::BigInt),
];

/// A field the decoder puts into the row, at `FIRST_FIELD + its index`.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub data_type: DataType,
    pub key: bool,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub source: Source,
    pub fields: Vec<Field>,
    /// Index into `fields` of the event-time column.
    pub timestamp_field: Option<usize>,
    pub filter: Option<Expr>,
    pub shape: Shape,
    pub output: Vec<Column>,
    pub emit: Emit,
    pub limit: Option<u64>,
    /// The query reads ROWKEY (decoding it costs an allocation per record otherwise spared).
    pub reads_key: bool,
    /// For a windowed query with CTEs or joins: what becomes of each window's rows.
    pub stage: Option<std::sync::Arc<super::relation::WindowStage>>,
    /// For a stream joined with tables: what meets each record before it is decoded.
    pub lookup: Option<std::sync::Arc<super::relation::LookupJoin>>,
    /// For a join of two streams or two tables: both inputs, and how they pair.
    pub pair: Option<std::sync::Arc<super::pair_join::PairJoin>>,
}

#[derive(Debug, Clone)]
pub enum Shape {
    /// One output row per input row. `key` is PARTITION BY (else the input key stays).
    /// `keyed` are tracking functions, with state per record key, whose values follow the
    /// decoded fields in the row; `after` the WHERE conditions that read them.
    Project { items: Vec<Item>, key: Option<Expr>, keyed: Vec<AggregateCall>, after: Option<Expr> },
    /// Grouped (and maybe windowed) aggregation. Items and HAVING read the grouped row:
    /// group values, then WINDOWSTART and WINDOWEND, then aggregate results.
    Aggregate {
        group_by: Vec<Expr>,
        calls: Vec<AggregateCall>,
        window: Option<Window>,
        having: Option<Expr>,
        items: Vec<Item>,
        /// Window functions, computed over the groups of one window; the grouped row
        /// holds their values after the aggregates'.
        over: Vec<OverCall>,
        /// The orderings they use (calls with the same OVER clause share one).
        orders: Vec<GroupOrder>,
    },
}

/// A window function: `RANK() OVER (ORDER BY …)`, the league table's position.
#[derive(Debug, Clone)]
pub struct OverCall {
    pub kind: OverKind,
    /// Index into the plan's `orders`.
    pub order: usize,
}

#[derive(Debug, Clone)]
pub enum OverKind {
    Rank,
    DenseRank,
    RowNumber,
    /// The value of this expression (over the grouped row) for the first group: the leader.
    FirstValue(Expr),
}

/// How an OVER clause orders the groups of a window: within equal PARTITION BY values,
/// by the ORDER BY keys. Expressions read the grouped row without window values.
#[derive(Debug, Clone)]
pub struct GroupOrder {
    pub partition_by: Vec<Expr>,
    pub order_by: Vec<SortKey>,
}

#[derive(Debug, Clone)]
pub struct SortKey {
    pub expr: Expr,
    pub descending: bool,
    pub nulls_first: bool,
}
#[derive(Debug, Clone)]
pub enum Item {
    Expr(Expr),
    /// Every field of the JSON value of an undeclared stream.
    WholeValue,
}

/// Window function results are compiled to these placeholder slots, renumbered once the
/// number of aggregates is known; so are keyed tracking functions, once the decoded fields
/// are.
const OVER_PLACEHOLDER: usize = 1 << 24;
const KEYED_PLACEHOLDER: usize = 1 << 23;

/// The conditions of `a AND b AND …`.
pub(crate) fn conjuncts(e: &sql::Expr) -> Vec<&sql::Expr> {
    match e {
        sql::Expr::BinaryOp { left, op: sql::BinaryOperator::And, right } => {
            let mut all = conjuncts(left);
            all.extend(conjuncts(right));
            all
        }
        sql::Expr::Nested(inner) => conjuncts(inner),
        other => vec![other],
    }
}

fn reads_keyed(e: &Expr) -> bool {
    let found = std::cell::Cell::new(false);
    e.clone().remap_columns(&|slot| {
        found.set(found.get() || slot >= KEYED_PLACEHOLDER);
        slot
    });
    found.get()
}

pub fn plan(select: &Select, source: &Source, geometry: &Geometry) -> Result<Plan, PlanError> {
    let mut input = InputScope { source, fields: Vec::new(), reads_key: false };
    if !source.columns.is_empty() {
        input.fields = source
            .columns
            .iter()
            .map(|c| Field { name: c.name.clone(), data_type: c.data_type.clone(), key: c.key })
            .collect();
    }
    let timestamp_field = match &source.timestamp {
        Some(name) => Some(input.column(name)?.0 - FIRST_FIELD),
        None => None,
    };
    let grouped = !select.group_by.is_empty() || select.items.iter().any(has_aggregate);
    // Without GROUP BY, tracking functions keep state per record key, and the WHERE
    // conditions that read them apply after they took the record in.
    let mut stream = StreamScope { calls: Vec::new(), call_texts: Vec::new(), fixes: Vec::new(), geometry };
    let (mut filter, mut after) = (None, None);
    for condition in select.selection.iter().flat_map(conjuncts) {
        let (compiled, _) =
            if grouped { compile(condition, &mut input)? } else { compile(condition, &mut stream.over(&mut input))? };
        let slot = if reads_keyed(&compiled) { &mut after } else { &mut filter };
        *slot = Some(match slot.take() {
            None => compiled,
            Some(before) => Expr::And(Box::new(before), Box::new(compiled)),
        });
    }
    if select.window.is_some() && !grouped {
        return plan_error("WINDOW needs GROUP BY (or an aggregate)");
    }
    if select.having.is_some() && !grouped {
        return plan_error("HAVING needs GROUP BY");
    }
    let (shape, output) = if grouped {
        if !select.partition_by.is_empty() {
            return plan_error("PARTITION BY cannot be combined with GROUP BY (the group is the key)");
        }
        let mut group_by = Vec::new();
        let mut group_types = Vec::new();
        for e in &select.group_by {
            let (compiled, t) = compile(e, &mut input)?;
            group_by.push(compiled);
            group_types.push(t);
        }
        let mut scope = GroupScope {
            input: &mut input,
            group_sql: &select.group_by,
            group_types,
            calls: Vec::new(),
            call_texts: Vec::new(),
            fixes: Vec::new(),
            over: Vec::new(),
            orders: Vec::new(),
            order_texts: Vec::new(),
            in_over: false,
            geometry,
        };
        let (mut items, mut output) = select_items(&select.items, &mut scope, source)?;
        // Windowed rows always say which window they are: the table's identity is the key
        // and the window start.
        // (A window table function's query names them as Flink does, and shows what it chose.)
        let flink =
            output.iter().any(|c| ["window_start", "window_end"].iter().any(|n| c.name.eq_ignore_ascii_case(n)));
        if select.window.is_some() && !flink {
            for (offset, name) in ["WINDOWSTART", "WINDOWEND"].into_iter().enumerate() {
                if !output.iter().any(|c| c.name.eq_ignore_ascii_case(name)) {
                    let slot = window_start_slot(select.group_by.len()) + offset;
                    items.push(Item::Expr(Expr::Column(slot)));
                    output.push(Column { name: name.into(), data_type: DataType::BigInt, key: false });
                }
            }
        }
        let having = match &select.having {
            Some(e) => Some(compile(e, &mut scope)?.0),
            None => None,
        };
        let (calls, over, orders) = (scope.calls, scope.over, scope.orders);
        if !over.is_empty() {
            if having.is_some() {
                return plan_error("HAVING with window functions is not supported yet");
            }
            if select.emit == Emit::Final {
                return plan_error("window functions need EMIT CHANGES (their values change as groups update)");
            }
            if matches!(select.window, Some(Window { kind: WindowKind::Session { .. }, .. })) {
                return plan_error("window functions rank the groups of a tumbling or hopping window, not of sessions");
            }
            let first_over = first_aggregate_slot(group_by.len()) + calls.len();
            let renumber =
                |slot: usize| if slot >= OVER_PLACEHOLDER { first_over + slot - OVER_PLACEHOLDER } else { slot };
            for item in &mut items {
                if let Item::Expr(e) = item {
                    e.remap_columns(&renumber);
                }
            }
        }
        (Shape::Aggregate { group_by, calls, window: select.window, having, items, over, orders }, output)
    } else {
        if select.emit == Emit::Final {
            return plan_error("EMIT FINAL needs a windowed aggregation");
        }
        let key = match select.partition_by.as_slice() {
            [] => None,
            [e] => Some(compile(e, &mut input)?.0),
            _ => return plan_error("PARTITION BY takes one expression"),
        };
        let (mut items, output) = select_items(&select.items, &mut stream.over(&mut input), source)?;
        let first_keyed = FIRST_FIELD + input.fields.len();
        let renumber =
            |slot: usize| if slot >= KEYED_PLACEHOLDER { first_keyed + slot - KEYED_PLACEHOLDER } else { slot };
        for e in items
            .iter_mut()
            .filter_map(|i| match i {
                Item::Expr(e) => Some(e),
                Item::WholeValue => None,
            })
            .chain(after.as_mut())
        {
            e.remap_columns(&renumber);
        }
        (Shape::Project { items, key, keyed: stream.calls, after }, output)
    };
    Ok(Plan {
        source: source.clone(),
        fields: input.fields,
        timestamp_field,
        filter,
        shape,
        output,
        emit: select.emit,
        limit: select.limit,
        reads_key: input.reads_key,
        stage: None,
        lookup: None,
        pair: None,
    })
}

fn select_items(
    items: &[SelectItem],
    scope: &mut dyn Scope,
    source: &Source,
) -> Result<(Vec<Item>, Vec<Column>), PlanError> {
    let mut out = Vec::new();
    let mut columns = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let (e, name) = match item {
            SelectItem::UnnamedExpr(e) => (e, output_name(e, i)),
            SelectItem::ExprWithAlias { expr, alias } => (expr, alias.value.clone()),
            SelectItem::ExprWithAliases { .. } => return plan_error(format!("{item}: one alias per column")),
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                if source.columns.is_empty() {
                    out.push(Item::WholeValue);
                    columns.push(Column { name: "*".into(), data_type: DataType::Any, key: false });
                    continue;
                }
                for c in &source.columns {
                    let (slot, t) = scope.column(&c.name)?;
                    out.push(Item::Expr(Expr::Column(slot)));
                    columns.push(Column { name: c.name.clone(), data_type: t, key: false });
                }
                continue;
            }
        };
        let (compiled, t) = compile(e, scope)?;
        if columns.iter().any(|c: &Column| c.name.eq_ignore_ascii_case(&name)) {
            return plan_error(format!("{name}: two output columns have this name; give one an alias with AS"));
        }
        out.push(Item::Expr(compiled));
        columns.push(Column { name, data_type: t, key: false });
    }
    Ok((out, columns))
}

/// ksqlDB's names for unaliased columns: the column's own name, else KSQL_COL_n.
fn output_name(e: &sql::Expr, i: usize) -> String {
    match e {
        sql::Expr::Identifier(id) => id.value.clone(),
        sql::Expr::CompoundIdentifier(parts) => parts.last().map(|p| p.value.clone()).unwrap_or_default(),
        sql::Expr::BinaryOp { right, op: sql::BinaryOperator::Arrow, .. } => right.to_string(),
        _ => format!("KSQL_COL_{i}"),
    }
}

fn has_aggregate(item: &SelectItem) -> bool {
    let e = match item {
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
        _ => return false,
    };
    let mut found = false;
    let _ = sql::visit_expressions(e, |e| {
        if let sql::Expr::Function(f) = e {
            let name = f.name.to_string();
            found |= is_aggregate(&name) && TrackKind::named(&name).is_none();
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    found
}

/// Names in WHERE, GROUP BY and the arguments of aggregates: the input row.
struct InputScope<'a> {
    source: &'a Source,
    fields: Vec<Field>,
    reads_key: bool,
}

impl Scope for InputScope<'_> {
    fn column(&mut self, name: &str) -> Result<(usize, DataType), PlanError> {
        if let Some(i) = PSEUDO.iter().position(|(n, _)| n.eq_ignore_ascii_case(name)) {
            self.reads_key |= i == ROWKEY;
            return Ok((i, PSEUDO[i].1.clone()));
        }
        if let Some(i) = self.fields.iter().position(|f| f.name.eq_ignore_ascii_case(name)) {
            return Ok((FIRST_FIELD + i, self.fields[i].data_type.clone()));
        }
        if !self.source.columns.is_empty() {
            let known: Vec<&str> = self.source.columns.iter().map(|c| c.name.as_str()).collect();
            return plan_error(format!("{name}: no such column in {} (it has {})", self.source.name, known.join(", ")));
        }
        // An undeclared stream: any JSON field, typed at run time.
        self.fields.push(Field { name: name.to_string(), data_type: DataType::Any, key: false });
        Ok((FIRST_FIELD + self.fields.len() - 1, DataType::Any))
    }
}

/// `COURSE_DISTANCE('course', lat, lon)`, `ZONE_EVENT('zone', lat, lon)`, `SPEED(lat, lon)`, …
fn tracking_call(
    e: &sql::Expr,
    kind: TrackKind,
    args: &[&FunctionArg],
    geometry: &Geometry,
    input: &mut InputScope,
) -> Result<(AggregateCall, String), PlanError> {
    let name = kind.name();
    let exprs = args
        .iter()
        .map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) => Ok(x),
            _ => plan_error(format!("{e}: {name} takes plain arguments")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut tracking = Tracking { kind, course: None, zone: None, max_speed_kmh: geometry.max_speed_kmh };
    let (lat, lon) = match (kind.place(), exprs.as_slice()) {
        (Place::None, [lat, lon]) => (lat, lon),
        (Place::None, _) => return plan_error(format!("{e}: takes a latitude and a longitude: {name}(lat, lon)")),
        (place, [named, lat, lon]) => {
            let what = if place == Place::Course { "course" } else { "zone" };
            let quoted = match named {
                sql::Expr::Value(v) => match &v.value {
                    sql::Value::SingleQuotedString(n) => Some(n),
                    _ => None,
                },
                _ => None,
            };
            let Some(n) = quoted else {
                return plan_error(format!("{e}: the {what} is a quoted name: {name}('{what}', lat, lon)"));
            };
            let problem = |m: String| PlanError(format!("{e}: {m}"));
            match place {
                Place::Course => tracking.course = Some(geometry.course(n).map_err(problem)?),
                _ => tracking.zone = Some(geometry.zone(n).map_err(problem)?),
            }
            (lat, lon)
        }
        (place, _) => {
            let what = if place == Place::Course { "course" } else { "zone" };
            return plan_error(format!("{e}: takes a {what}, a latitude and a longitude: {name}('{what}', lat, lon)"));
        }
    };
    // What its accumulator folds: the same place and fixes make the same state.
    let place = tracking.course.as_ref().map(|c| c.name.as_str()).or(tracking.zone.as_ref().map(|z| z.name.as_str()));
    let fixes = format!("{:?} {} {lat} {lon}", (kind.place(), place), kind.place() == Place::None).to_ascii_lowercase();
    let (lat, lon) = (compile(lat, input)?, compile(lon, input)?);
    let call = AggregateCall::tracking(tracking, lat, lon).map_err(|m| PlanError(format!("{e}: {}", m.0)))?;
    Ok((call, fixes))
}

/// Tracking functions in a query without GROUP BY: state per record key.
struct StreamScope<'g> {
    calls: Vec<AggregateCall>,
    call_texts: Vec<String>,
    /// Each call's fixes and place (see GroupScope).
    fixes: Vec<String>,
    geometry: &'g Geometry,
}

impl<'g> StreamScope<'g> {
    /// This scope reading `input`'s columns.
    fn over<'s, 'a, 'b>(&'s mut self, input: &'a mut InputScope<'b>) -> StreamInput<'s, 'a, 'b, 'g> {
        StreamInput { stream: self, input }
    }
}

struct StreamInput<'s, 'a, 'b, 'g> {
    stream: &'s mut StreamScope<'g>,
    input: &'a mut InputScope<'b>,
}

impl Scope for StreamInput<'_, '_, '_, '_> {
    fn column(&mut self, name: &str) -> Result<(usize, DataType), PlanError> {
        self.input.column(name)
    }

    fn replace(&mut self, e: &sql::Expr) -> Result<Option<(usize, DataType)>, PlanError> {
        let sql::Expr::Function(f) = e else { return Ok(None) };
        let Some(kind) = TrackKind::named(&f.name.to_string()) else { return Ok(None) };
        let text = e.to_string();
        let s = &mut *self.stream;
        if let Some(i) = s.call_texts.iter().position(|t| t.eq_ignore_ascii_case(&text)) {
            return Ok(Some((KEYED_PLACEHOLDER + i, s.calls[i].output.clone())));
        }
        let args: Vec<&FunctionArg> = match &f.args {
            FunctionArguments::List(list) => list.args.iter().collect(),
            _ => Vec::new(),
        };
        let (mut call, fixes) = tracking_call(e, kind, &args, s.geometry, self.input)?;
        call.shares = s.fixes.iter().position(|f| *f == fixes);
        let t = call.output.clone();
        s.calls.push(call);
        s.call_texts.push(text);
        s.fixes.push(fixes);
        Ok(Some((KEYED_PLACEHOLDER + s.calls.len() - 1, t)))
    }
}

/// Names after GROUP BY: grouped expressions, window bounds, aggregates and window
/// functions.
struct GroupScope<'a, 'b> {
    input: &'a mut InputScope<'b>,
    group_sql: &'a [sql::Expr],
    group_types: Vec<DataType>,
    calls: Vec<AggregateCall>,
    /// Each call's SQL text: the same aggregate written twice is computed once.
    call_texts: Vec<String>,
    /// Each call's fixes and place, for tracking functions: those over the same share one
    /// accumulator (the first one's).
    fixes: Vec<Option<String>>,
    over: Vec<OverCall>,
    orders: Vec<GroupOrder>,
    order_texts: Vec<String>,
    /// Compiling inside an OVER clause, where window functions cannot nest.
    in_over: bool,
    geometry: &'a Geometry,
}

/// Where the grouped row keeps WINDOWSTART, WINDOWEND and the first aggregate.
pub fn window_start_slot(groups: usize) -> usize {
    groups
}

pub fn first_aggregate_slot(groups: usize) -> usize {
    groups + 2
}

impl Scope for GroupScope<'_, '_> {
    fn column(&mut self, name: &str) -> Result<(usize, DataType), PlanError> {
        let groups = self.group_sql.len();
        if name.eq_ignore_ascii_case("WINDOWSTART") {
            return Ok((window_start_slot(groups), DataType::BigInt));
        }
        if name.eq_ignore_ascii_case("WINDOWEND") {
            return Ok((window_start_slot(groups) + 1, DataType::BigInt));
        }
        for (i, g) in self.group_sql.iter().enumerate() {
            let plain = match g {
                sql::Expr::Identifier(id) => Some(&id.value),
                sql::Expr::CompoundIdentifier(parts) => parts.last().map(|p| &p.value),
                _ => None,
            };
            if plain.is_some_and(|p| p.eq_ignore_ascii_case(name)) {
                return Ok((i, self.group_types[i].clone()));
            }
        }
        plan_error(format!(
            "{name}: not in GROUP BY; group by it or use it inside an aggregate such as LATEST_BY_OFFSET({name})"
        ))
    }

    fn replace(&mut self, e: &sql::Expr) -> Result<Option<(usize, DataType)>, PlanError> {
        let text = e.to_string();
        if let Some(i) = self.group_sql.iter().position(|g| g.to_string().eq_ignore_ascii_case(&text)) {
            return Ok(Some((i, self.group_types[i].clone())));
        }
        let sql::Expr::Function(f) = e else { return Ok(None) };
        if f.over.is_some() {
            return self.window_function(e, f).map(Some);
        }
        let name = f.name.to_string();
        if !is_aggregate(&name) {
            return Ok(None);
        }
        let first = first_aggregate_slot(self.group_sql.len());
        if let Some(i) = self.call_texts.iter().position(|t| t.eq_ignore_ascii_case(&text)) {
            return Ok(Some((first + i, self.calls[i].output.clone())));
        }
        let args: Vec<&FunctionArg> = match &f.args {
            FunctionArguments::List(list) => list.args.iter().collect(),
            _ => Vec::new(),
        };
        if let Some(kind) = TrackKind::named(&name) {
            let (mut call, fixes) = tracking_call(e, kind, &args, self.geometry, self.input)?;
            call.shares = self.fixes.iter().position(|f| f.as_deref() == Some(fixes.as_str()));
            self.fixes.push(Some(fixes));
            return Ok(Some(self.push_call(call, text)));
        }
        let distinct = matches!(&f.args, FunctionArguments::List(l) if l.duplicate_treatment == Some(sql::DuplicateTreatment::Distinct));
        let (arg, k) = match args.as_slice() {
            [] | [FunctionArg::Unnamed(FunctionArgExpr::Wildcard)] => (None, None),
            [FunctionArg::Unnamed(FunctionArgExpr::Expr(a))] => (Some(compile(a, self.input)?), None),
            [FunctionArg::Unnamed(FunctionArgExpr::Expr(a)), FunctionArg::Unnamed(FunctionArgExpr::Expr(k))] => {
                let k = k
                    .to_string()
                    .parse::<i64>()
                    .map_err(|_| PlanError(format!("{e}: the second argument must be a whole number")))?;
                (Some(compile(a, self.input)?), Some(k))
            }
            _ => return plan_error(format!("{e}: unsupported arguments")),
        };
        let name = if distinct && name.eq_ignore_ascii_case("COUNT") { "COUNT_DISTINCT".to_string() } else { name };
        let call = AggregateCall::new(&name, arg, k)?;
        self.fixes.push(None);
        Ok(Some(self.push_call(call, text)))
    }
}

impl GroupScope<'_, '_> {
    fn push_call(&mut self, call: AggregateCall, text: String) -> (usize, DataType) {
        let t = call.output.clone();
        self.calls.push(call);
        self.call_texts.push(text);
        (first_aggregate_slot(self.group_sql.len()) + self.calls.len() - 1, t)
    }

    /// `RANK() OVER (ORDER BY …)` and friends: a placeholder slot, renumbered after planning.
    fn window_function(&mut self, e: &sql::Expr, f: &sql::Function) -> Result<(usize, DataType), PlanError> {
        if self.in_over {
            return plan_error(format!("{e}: window functions cannot nest"));
        }
        let Some(sql::WindowType::WindowSpec(spec)) = &f.over else {
            return plan_error(format!("{e}: named windows are not supported; write OVER (ORDER BY …)"));
        };
        if spec.window_frame.is_some() {
            return plan_error(format!(
                "{e}: window frames (ROWS/RANGE …) are not supported; the frame is every group"
            ));
        }
        self.in_over = true;
        let compiled = self.compile_over(e, f, spec);
        self.in_over = false;
        let (kind, t, order) = compiled?;
        self.over.push(OverCall { kind, order });
        Ok((OVER_PLACEHOLDER + self.over.len() - 1, t))
    }

    fn compile_over(
        &mut self,
        e: &sql::Expr,
        f: &sql::Function,
        spec: &sql::WindowSpec,
    ) -> Result<(OverKind, DataType, usize), PlanError> {
        let args: Vec<&FunctionArg> = match &f.args {
            FunctionArguments::List(list) => list.args.iter().collect(),
            _ => Vec::new(),
        };
        let name = f.name.to_string().to_ascii_uppercase();
        let (kind, t) = match (name.as_str(), args.as_slice()) {
            ("RANK", []) => (OverKind::Rank, DataType::BigInt),
            ("DENSE_RANK", []) => (OverKind::DenseRank, DataType::BigInt),
            ("ROW_NUMBER", []) => (OverKind::RowNumber, DataType::BigInt),
            ("FIRST_VALUE", [FunctionArg::Unnamed(FunctionArgExpr::Expr(arg))]) => {
                let (arg, t) = compile(arg, self)?;
                (OverKind::FirstValue(arg), t)
            }
            ("RANK" | "DENSE_RANK" | "ROW_NUMBER", _) => {
                return plan_error(format!("{e}: {name}() takes no arguments"))
            }
            ("FIRST_VALUE", _) => return plan_error(format!("{e}: FIRST_VALUE takes one expression")),
            _ => return plan_error(format!("{e}: not a window function (RANK, DENSE_RANK, ROW_NUMBER, FIRST_VALUE)")),
        };
        if spec.order_by.is_empty() {
            return plan_error(format!("{e}: say how groups are ordered: OVER (ORDER BY …)"));
        }
        let text = format!("{} {}", spec.partition_by.len(), spec).to_ascii_lowercase();
        if let Some(i) = self.order_texts.iter().position(|t| *t == text) {
            return Ok((kind, t, i));
        }
        let mut partition_by = Vec::with_capacity(spec.partition_by.len());
        for p in &spec.partition_by {
            partition_by.push(compile(p, self)?.0);
        }
        let mut order_by = Vec::with_capacity(spec.order_by.len());
        for o in &spec.order_by {
            let descending = match &o.options.sort {
                None | Some(sql::OrderBySort::Asc) => false,
                Some(sql::OrderBySort::Desc) => true,
                Some(sql::OrderBySort::Using(_)) => {
                    return plan_error(format!("{o}: ORDER BY … USING is not supported"))
                }
            };
            // As in PostgreSQL: NULLs sort as if larger than any value.
            let nulls_first = o.options.nulls_first.unwrap_or(descending);
            order_by.push(SortKey { expr: compile(&o.expr, self)?.0, descending, nulls_first });
        }
        self.orders.push(GroupOrder { partition_by, order_by });
        self.order_texts.push(text);
        Ok((kind, t, self.orders.len() - 1))
    }
}

/// DataType in its SQL spelling inside the catalog's JSON.
mod type_text {
    use super::DataType;

    pub fn serialize<S: serde::Serializer>(t: &DataType, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_string())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<DataType, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        parse_type(&text).ok_or_else(|| serde::de::Error::custom(format!("unknown type {text}")))
    }

    pub fn parse_type(text: &str) -> Option<DataType> {
        let sql = format!("CREATE STREAM t (c {text})");
        match super::super::parse::parse(&sql).ok()?.pop()? {
            super::super::ast::Statement::CreateSource { mut columns, .. } => columns.pop().map(|c| c.data_type),
            _ => None,
        }
        .or_else(|| (text == "ANY").then_some(DataType::Any))
    }
}

/// How tests declare sources and plan statements over them.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use crate::engine::ast::Statement;

    /// A stream or table with these `(name, type, key)` columns; its topic is its name.
    pub fn source(name: &str, kind: SourceKind, columns: &[(&str, DataType, bool)]) -> Source {
        Source {
            name: name.into(),
            kind,
            topic: name.into(),
            columns: columns
                .iter()
                .map(|(n, t, k)| Column { name: n.to_string(), data_type: t.clone(), key: *k })
                .collect(),
            timestamp: None,
            windowed: false,
        }
    }

    /// A stream with these columns, none of them a key.
    pub fn stream(name: &str, columns: &[(&str, DataType)]) -> Source {
        let columns: Vec<_> = columns.iter().map(|(n, t)| (*n, t.clone(), false)).collect();
        source(name, SourceKind::Stream, &columns)
    }

    /// The SELECT in `sql`.
    pub fn select(sql: &str) -> Select {
        match crate::engine::parse::parse(sql).unwrap().pop().unwrap() {
            Statement::Select(s) => *s,
            other => panic!("{other:?}"),
        }
    }

    /// The plan of the SELECT in `sql` over `source`.
    pub fn plan_sql(sql: &str, source: &Source, geometry: &Geometry) -> Plan {
        plan(&select(sql), source, geometry).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{select, stream};
    use super::*;

    fn race() -> Source {
        let columns = [
            ("who", DataType::String),
            ("lat", DataType::Double),
            ("lon", DataType::Double),
            ("speed", DataType::Double),
        ];
        Source { topic: "race".into(), ..stream("race_stream", &columns) }
    }

    #[test]
    fn grouped_queries_resolve_groups_windows_and_aggregates() {
        let s = select(
            "SELECT who, WINDOWSTART AS ws, MIN(speed) AS lo, COUNT(*) n, AVG(speed) * 2 AS twice FROM race_stream
             WINDOW TUMBLING (SIZE 5 MINUTES) GROUP BY who HAVING COUNT(*) > 1",
        );
        let p = plan(&s, &race(), &Geometry::default()).unwrap();
        let names: Vec<_> = p.output.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["who", "ws", "lo", "n", "twice", "WINDOWSTART", "WINDOWEND"]);
        let Shape::Aggregate { calls, items, .. } = &p.shape else { panic!() };
        assert_eq!(calls.len(), 3, "MIN, COUNT, AVG; HAVING's COUNT(*) is the same COUNT");
        assert!(matches!(items[1], Item::Expr(Expr::Column(1))), "WINDOWSTART after the one group column");
        assert_eq!(p.output[3].data_type, DataType::BigInt);
    }

    #[test]
    fn mistakes_are_named_before_running() {
        let e = plan(&select("SELECT who, speed FROM race_stream GROUP BY who"), &race(), &Geometry::default())
            .unwrap_err()
            .0;
        assert!(e.contains("speed: not in GROUP BY"), "{e}");
        let e = plan(&select("SELECT who FROM race_stream WHERE altitude > 3"), &race(), &Geometry::default())
            .unwrap_err()
            .0;
        assert!(e.contains("altitude: no such column in race_stream"), "{e}");
        let e = plan(&select("SELECT who FROM race_stream EMIT FINAL"), &race(), &Geometry::default()).unwrap_err().0;
        assert!(e.contains("EMIT FINAL needs"), "{e}");
        let e = plan(&select("SELECT SUM(who) FROM race_stream GROUP BY lat"), &race(), &Geometry::default())
            .unwrap_err()
            .0;
        assert!(e.contains("expected a number, got STRING"), "{e}");
    }

    #[test]
    fn undeclared_streams_read_fields_by_name() {
        let mut source = race();
        source.columns.clear();
        let p = plan(&select("SELECT *, batt + 1 AS b FROM race WHERE who = 'ben'"), &source, &Geometry::default())
            .unwrap();
        let names: Vec<_> = p.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["who", "batt"]);
        assert!(matches!(&p.shape, Shape::Project { items, .. } if matches!(items[0], Item::WholeValue)));
    }

    #[test]
    fn types_round_trip_through_the_catalog() {
        for t in ["DOUBLE", "ARRAY<STRUCT<a INTEGER, b ARRAY<STRING>>>", "MAP<STRING, BIGINT>", "DECIMAL(10, 2)"] {
            assert_eq!(type_text::parse_type(t).map(|t| t.to_string()).as_deref(), Some(t));
        }
    }
}
