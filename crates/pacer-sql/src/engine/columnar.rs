//! History queries over Parquet segments, a column at a time: the grouped aggregations
//! people run over history (per device and minute: COUNT, SUM, AVG, MIN, MAX, STDDEV_SAMP,
//! LATEST_BY_OFFSET), computed over Arrow arrays instead of decoding each record.
//!
//! It answers exactly what the row operator answers over the same records: the groups'
//! rows come out through the operator's own HAVING and projection. Queries of another shape,
//! or columns of a type this path does not read, go the row way (`Unsupported`).

use std::collections::HashMap;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int32Type, Int64Type, TimestampMillisecondType};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType as ArrowType;
use foldhash::fast::RandomState;

use super::aggregate::{Acc, AggKind, Kept};
use super::ast::{Emit, SourceKind, WindowKind};
use super::expr::{BinOp, Expr};
use super::operator::grouped_row;
use super::plan::{Item, Plan, Shape, FIRST_FIELD, ROWKEY, ROWTIME};
use super::value::{DataType, Value};

/// Why a query or a batch cannot go the columnar way; the caller reads rows instead.
#[derive(Debug)]
pub struct Unsupported(pub String);

fn unsupported<T>(why: impl Into<String>) -> Result<T, Unsupported> {
    Err(Unsupported(why.into()))
}

/// A column the query reads.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Col {
    /// The record key (ROWKEY, or a KEY column declared STRING).
    Key,
    /// Event time: the record's, or the declared timestamp column.
    Time,
    Field(usize),
}

/// One part of a group's identity.
#[derive(Debug, Clone, Copy)]
enum Part {
    /// A column's value, numbered as first seen.
    Code(Col),
    /// Event time floored to a bucket (`DATE_BIN`, `TIME_FLOOR`; ROWTIME itself: 1 ms).
    Bucket { stride: i64, origin: i64 },
}

/// `column op constant` (a comparison operator); conditions are ANDed.
#[derive(Debug, Clone)]
struct Condition {
    col: Col,
    cmp: BinOp,
    value: Value,
}

/// How one aggregate reads its column.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Number {
    Int,
    Double,
}

#[derive(Debug)]
enum Accs {
    Count {
        col: Option<Col>,
        n: Vec<i64>,
    },
    Sum {
        col: Col,
        out: Number,
        int: Vec<i64>,
        double: Vec<f64>,
        seen: Vec<bool>,
    },
    Avg {
        col: Col,
        sum: Vec<f64>,
        n: Vec<i64>,
    },
    Stddev {
        col: Col,
        n: Vec<i64>,
        mean: Vec<f64>,
        m2: Vec<f64>,
    },
    /// MIN, MAX, LATEST_BY_OFFSET, EARLIEST_BY_OFFSET over numbers; `set` false: no value yet.
    One {
        col: Col,
        kind: AggKind,
        out: Number,
        v: Vec<f64>,
        int: Vec<i64>,
        null: Vec<bool>,
        set: Vec<bool>,
    },
}

/// Values of a column numbered as first seen, so groups are pairs of integers.
#[derive(Default)]
struct Codes {
    texts: HashMap<String, u64, RandomState>,
    ints: HashMap<i64, u64, RandomState>,
    /// By their bits; and booleans: segments may type a column differently.
    doubles: HashMap<u64, u64, RandomState>,
    bools: [Option<u64>; 2],
    values: Vec<Value>,
    null: Option<u64>,
}

impl Codes {
    fn code(&mut self, v: Value) -> u64 {
        let next = self.values.len() as u64;
        let code = match &v {
            Value::Null => *self.null.get_or_insert(next),
            Value::String(s) => match self.texts.get(s.as_str()) {
                Some(c) => *c,
                None => *self.texts.entry(s.clone()).or_insert(next),
            },
            Value::Int(i) => *self.ints.entry(*i).or_insert(next),
            Value::Double(x) => *self.doubles.entry(x.to_bits()).or_insert(next),
            Value::Bool(b) => *self.bools[*b as usize].get_or_insert(next),
            _ => unreachable!("only scalar columns are grouped"),
        };
        if code == next {
            self.values.push(v);
        }
        code
    }

    fn text(&mut self, s: &str) -> u64 {
        match self.texts.get(s) {
            Some(c) => *c,
            None => self.code(Value::String(s.to_string())),
        }
    }
}

pub struct Aggregation {
    plan: Plan,
    /// The GROUP BY parts, codes first, each with its place in GROUP BY.
    parts: Vec<(Part, usize)>,
    /// Tumbling window size and grace: the window is a part of the group after `parts`.
    window: Option<(i64, i64)>,
    /// The latest event time so far, which closes windows.
    stream_time: i64,
    conditions: Vec<Condition>,
    accs: Vec<Accs>,
    codes: Vec<Codes>,
    /// Group number by its parts (each packed in a u64).
    groups: HashMap<[u64; 2], u32, RandomState>,
    keys: Vec<[u64; 2]>,
    last: Vec<i64>,
    /// For the first part when it is a code: the other part and group it met last, as
    /// readings come in time order per device.
    recent: Vec<(u64, u32)>,
    /// Rows that were not JSON objects: the row operator rejects them too.
    pub rejected: usize,
}

impl Aggregation {
    /// The columnar form of `plan`, when it has one.
    pub fn new(plan: &Plan) -> Result<Aggregation, Unsupported> {
        let Shape::Aggregate { group_by, calls, window, over, items, .. } = &plan.shape else {
            return unsupported("not an aggregation");
        };
        if !over.is_empty() || plan.lookup.is_some() || plan.pair.is_some() || plan.stage.is_some() {
            return unsupported("window functions, joins or stages");
        }
        if items.iter().any(|i| matches!(i, Item::WholeValue)) {
            return unsupported("a whole value in a grouped row");
        }
        if plan.source.kind != SourceKind::Stream {
            return unsupported("a table's history is its latest rows");
        }
        if plan.emit == Emit::Final {
            return unsupported("EMIT FINAL: a pull query shows every group");
        }
        let window = match window.map(|w| (w.kind, w.grace)) {
            None => None,
            Some((WindowKind::Tumbling { size }, grace)) => Some((size, grace)),
            Some(_) => return unsupported("hopping and session windows"),
        };
        let col = |e: &Expr| -> Result<Col, Unsupported> {
            match e {
                Expr::Column(ROWKEY) => Ok(Col::Key),
                Expr::Column(ROWTIME) => Ok(Col::Time),
                Expr::Column(slot) if *slot >= FIRST_FIELD => {
                    let i = slot - FIRST_FIELD;
                    let field = &plan.fields[i];
                    if plan.timestamp_field == Some(i) {
                        Ok(Col::Time)
                    } else if field.key {
                        match field.data_type {
                            DataType::String => Ok(Col::Key),
                            _ => unsupported("a key column of another type than STRING"),
                        }
                    } else if matches!(field.data_type, DataType::Array(_) | DataType::Map(_) | DataType::Struct(_)) {
                        unsupported("a nested column")
                    } else {
                        Ok(Col::Field(i))
                    }
                }
                _ => unsupported("an expression this path does not compute"),
            }
        };
        let mut parts = Vec::new();
        for g in group_by {
            parts.push(match g {
                Expr::Call(f, args) if matches!(f.name, "DATE_BIN" | "TIME_FLOOR") => {
                    let (time, stride, origin) = match (f.name, args.as_slice()) {
                        ("DATE_BIN", [stride, time]) => (time, stride, None),
                        ("DATE_BIN", [stride, time, origin]) => (time, stride, Some(origin)),
                        ("TIME_FLOOR", [time, stride]) => (time, stride, None),
                        ("TIME_FLOOR", [time, stride, origin]) => (time, stride, Some(origin)),
                        _ => return unsupported("a time bucket of another form"),
                    };
                    if col(time)? != Col::Time {
                        return unsupported("a bucket of another column than the event time");
                    }
                    let ms = |e: &Expr| match e {
                        Expr::Literal(Value::Int(i)) => Ok(*i),
                        Expr::Literal(Value::String(s)) => {
                            super::functions::duration_ms(s).or_else(|_| pacer_core::parse_time(s)).map_err(Unsupported)
                        }
                        _ => unsupported("a bucket whose stride or origin is not a constant"),
                    };
                    let stride = ms(stride)?;
                    if stride <= 0 {
                        return unsupported("a bucket of no width");
                    }
                    Part::Bucket { stride, origin: origin.map(ms).transpose()?.unwrap_or(0) }
                }
                e => match col(e)? {
                    Col::Time => Part::Bucket { stride: 1, origin: 0 },
                    c => Part::Code(c),
                },
            });
        }
        if parts.len() + window.is_some() as usize > 2 {
            return unsupported("more than two grouping parts");
        }
        let mut conditions = Vec::new();
        if let Some(filter) = &plan.filter {
            conjuncts(filter, &col, &mut conditions)?;
        }
        let mut accs = Vec::new();
        for call in calls {
            if call.shares.is_some() || call.track.is_some() {
                return unsupported("tracking functions");
            }
            let arg = match &call.arg {
                Some(e) => Some(col(e)?),
                None => None,
            };
            let number = |c: Col| -> Result<Number, Unsupported> {
                match c {
                    Col::Time => Ok(Number::Int),
                    Col::Key => unsupported("a number from the key"),
                    Col::Field(i) => match plan.fields[i].data_type {
                        DataType::Int | DataType::BigInt | DataType::Timestamp => Ok(Number::Int),
                        DataType::Double | DataType::Decimal(..) => Ok(Number::Double),
                        _ => unsupported("an aggregate over a column not declared numeric"),
                    },
                }
            };
            if arg == Some(Col::Time) && call.kind != AggKind::Count {
                return unsupported("an aggregate over the event time");
            }
            let need = || arg.ok_or_else(|| Unsupported("an aggregate without its column".into()));
            accs.push(match call.kind {
                AggKind::CountRows => Accs::Count { col: None, n: Vec::new() },
                AggKind::Count => Accs::Count { col: Some(need()?), n: Vec::new() },
                AggKind::Sum => {
                    let c = need()?;
                    number(c)?;
                    let out = if call.output == DataType::Double { Number::Double } else { Number::Int };
                    Accs::Sum { col: c, out, int: Vec::new(), double: Vec::new(), seen: Vec::new() }
                }
                AggKind::Avg => {
                    number(need()?)?;
                    Accs::Avg { col: need()?, sum: Vec::new(), n: Vec::new() }
                }
                AggKind::StddevSamp => {
                    number(need()?)?;
                    Accs::Stddev { col: need()?, n: Vec::new(), mean: Vec::new(), m2: Vec::new() }
                }
                kind @ (AggKind::Min | AggKind::Max | AggKind::Latest | AggKind::Earliest) => {
                    let c = need()?;
                    Accs::One {
                        col: c,
                        kind,
                        out: number(c)?,
                        v: Vec::new(),
                        int: Vec::new(),
                        null: Vec::new(),
                        set: Vec::new(),
                    }
                }
                _ => return unsupported("an aggregate this path does not compute"),
            });
        }
        // Codes first: the cache of recent groups is indexed by the first.
        let mut parts: Vec<(Part, usize)> = parts.into_iter().zip(0..).collect();
        parts.sort_by_key(|(p, _)| matches!(p, Part::Bucket { .. }));
        let codes = parts.iter().map(|_| Codes::default()).collect();
        Ok(Aggregation {
            plan: plan.clone(),
            parts,
            window,
            conditions,
            accs,
            codes,
            groups: HashMap::default(),
            keys: Vec::new(),
            last: Vec::new(),
            recent: Vec::new(),
            stream_time: i64::MIN,
            rejected: 0,
        })
    }

    /// The columns to read from a segment.
    pub fn columns(&self) -> Vec<String> {
        let mut names = vec![
            pacer_history::columns::ROWTIME.to_string(),
            pacer_history::columns::ROWKEY.to_string(),
            pacer_history::columns::ROWVALUE.to_string(),
        ];
        names.extend(self.plan.fields.iter().map(|f| f.name.clone()));
        names
    }

    /// Event times outside this range cannot match the WHERE clause (segments wholly
    /// outside it need not be read). Only for the record's own time.
    pub fn time_range(&self) -> (i64, i64) {
        let (mut lo, mut hi) = (i64::MIN, i64::MAX);
        if self.plan.timestamp_field.is_some() {
            return (lo, hi);
        }
        for c in self.conditions.iter().filter(|c| c.col == Col::Time) {
            let Some(v) = c.value.as_i64() else { continue };
            match c.cmp {
                BinOp::Eq => (lo, hi) = (lo.max(v), hi.min(v)),
                BinOp::Gt => lo = lo.max(v.saturating_add(1)),
                BinOp::GtEq => lo = lo.max(v),
                BinOp::Lt => hi = hi.min(v.saturating_sub(1)),
                BinOp::LtEq => hi = hi.min(v),
                _ => {}
            }
        }
        (lo, hi)
    }

    /// Adds a batch of rows (a segment's, or the log's tail made columnar).
    pub fn add(&mut self, batch: &RecordBatch) -> Result<(), Unsupported> {
        let n = batch.num_rows();
        let columns = Columns::of(batch, &self.plan)?;
        let times = columns.times()?;
        let mut selected: Vec<bool> = match columns.whole {
            Some(whole) => (0..n).map(|i| whole.is_null(i)).collect(),
            None => vec![true; n],
        };
        self.rejected += selected.iter().filter(|s| !**s).count();
        for c in &self.conditions {
            columns.filter(c, &times, &mut selected)?;
        }
        // Each part of each row as a u64.
        let mut packed: Vec<Vec<u64>> = Vec::with_capacity(2);
        for (p, (part, _)) in self.parts.iter().enumerate() {
            packed.push(match part {
                Part::Code(col) => {
                    let declared = match col {
                        Col::Field(i) => self.plan.fields[*i].data_type.clone(),
                        _ => DataType::Any,
                    };
                    columns.codes(*col, &declared, &times, &mut self.codes[p])?
                }
                Part::Bucket { stride, origin } => {
                    times.iter().map(|&t| (t - (t - origin).rem_euclid(*stride)) as u64).collect()
                }
            });
        }
        if let Some((size, grace)) = self.window {
            let mut starts = Vec::with_capacity(n);
            for (i, &t) in times.iter().enumerate() {
                let start = t - t.rem_euclid(size);
                if selected[i] {
                    // The row operator turns away a record whose window had closed; so
                    // does this path, by leaving the query to it.
                    if (start + size).saturating_add(grace) <= self.stream_time {
                        return unsupported("a record late for its window");
                    }
                    self.stream_time = self.stream_time.max(t);
                }
                starts.push(start as u64);
            }
            packed.push(starts);
        }
        let first_is_code = matches!(self.parts.first(), Some((Part::Code(_), _)));
        let mut gids = vec![u32::MAX; n];
        for i in 0..n {
            if !selected[i] {
                continue;
            }
            let key = [packed.first().map_or(0, |p| p[i]), packed.get(1).map_or(0, |p| p[i])];
            let gid = if first_is_code {
                let code = key[0] as usize;
                if code >= self.recent.len() {
                    self.recent.resize(code + 1, (u64::MAX, u32::MAX));
                }
                match self.recent[code] {
                    (other, g) if other == key[1] && g != u32::MAX => g,
                    _ => {
                        let g = self.group(key);
                        self.recent[code] = (key[1], g);
                        g
                    }
                }
            } else {
                self.group(key)
            };
            gids[i] = gid;
            let last = &mut self.last[gid as usize];
            *last = (*last).max(times[i]);
        }
        let groups = self.keys.len();
        for acc in &mut self.accs {
            acc.add(&columns, &gids, groups)?;
        }
        Ok(())
    }

    fn group(&mut self, key: [u64; 2]) -> u32 {
        let next = self.keys.len() as u32;
        let g = *self.groups.entry(key).or_insert(next);
        if g == next {
            self.keys.push(key);
            self.last.push(i64::MIN);
        }
        g
    }

    /// Each group's row (the output columns' values), in the order the groups first
    /// appeared: what the row operator says of each group at the end of the input.
    pub fn finish(self) -> Result<Vec<Vec<serde_json::Value>>, String> {
        let Shape::Aggregate { group_by, .. } = &self.plan.shape else { unreachable!() };
        let mut rows = Vec::with_capacity(self.keys.len());
        for (g, key) in self.keys.iter().enumerate() {
            let mut group = vec![Value::Null; group_by.len()];
            for (p, ((part, slot), &k)) in self.parts.iter().zip(key).enumerate() {
                group[*slot] = match part {
                    Part::Code(_) => self.codes[p].values[k as usize].clone(),
                    Part::Bucket { .. } => Value::Int(k as i64),
                };
            }
            let window = self.window.map(|(size, _)| {
                let start = key[self.parts.len()] as i64;
                (start, start + size)
            });
            let accs = self.accs.iter().map(|a| a.result(g)).collect();
            rows.extend(grouped_row(&self.plan, group, window, accs, self.last[g])?);
        }
        Ok(rows)
    }
}

/// The WHERE clause as `column op constant` conditions joined by AND.
fn conjuncts(
    e: &Expr,
    col: &dyn Fn(&Expr) -> Result<Col, Unsupported>,
    out: &mut Vec<Condition>,
) -> Result<(), Unsupported> {
    let constant = |e: &Expr, c: Col| match e {
        Expr::Literal(Value::String(s)) if c == Col::Time => {
            pacer_core::parse_time(s).map(Value::Int).map_err(Unsupported)
        }
        Expr::Literal(v @ (Value::Int(_) | Value::Double(_) | Value::String(_) | Value::Bool(_))) => Ok(v.clone()),
        _ => unsupported("a condition that is not column against constant"),
    };
    match e {
        Expr::And(a, b) => {
            conjuncts(a, col, out)?;
            conjuncts(b, col, out)
        }
        Expr::Between { expr, low, high, negated: false } => {
            let c = col(expr)?;
            out.push(Condition { col: c, cmp: BinOp::GtEq, value: constant(low, c)? });
            out.push(Condition { col: c, cmp: BinOp::LtEq, value: constant(high, c)? });
            Ok(())
        }
        Expr::Binary(op, a, b) => {
            let (c, v, flipped) = match (col(a), col(b)) {
                (Ok(c), _) => (c, constant(b, c)?, false),
                (_, Ok(c)) => (c, constant(a, c)?, true),
                _ => return unsupported("a condition between two expressions"),
            };
            // `5 < speed` is `speed > 5`.
            let cmp = match (op, flipped) {
                (BinOp::Lt, true) => BinOp::Gt,
                (BinOp::LtEq, true) => BinOp::GtEq,
                (BinOp::Gt, true) => BinOp::Lt,
                (BinOp::GtEq, true) => BinOp::LtEq,
                (BinOp::Eq | BinOp::NotEq | BinOp::Lt | BinOp::LtEq | BinOp::Gt | BinOp::GtEq, _) => *op,
                _ => return unsupported("arithmetic in a condition"),
            };
            out.push(Condition { col: c, cmp, value: v });
            Ok(())
        }
        _ => unsupported("a condition this path does not compute"),
    }
}

/// One batch's columns, found by the plan's field names (any case).
struct Columns<'a> {
    key: Option<&'a dyn Array>,
    time: Option<&'a dyn Array>,
    whole: Option<&'a dyn Array>,
    fields: Vec<Option<&'a dyn Array>>,
}

impl<'a> Columns<'a> {
    fn of(batch: &'a RecordBatch, plan: &Plan) -> Result<Columns<'a>, Unsupported> {
        let find = |name: &str| {
            batch
                .schema_ref()
                .fields()
                .iter()
                .position(|f| f.name().eq_ignore_ascii_case(name))
                .map(|i| batch.column(i).as_ref())
        };
        let time = match plan.timestamp_field {
            Some(t) => find(&plan.fields[t].name),
            None => find(pacer_history::columns::ROWTIME),
        };
        Ok(Columns {
            key: find(pacer_history::columns::ROWKEY),
            time,
            whole: find(pacer_history::columns::ROWVALUE),
            fields: plan.fields.iter().map(|f| find(&f.name)).collect(),
        })
    }

    fn get(&self, col: Col) -> Option<&'a dyn Array> {
        match col {
            Col::Key => self.key,
            Col::Time => self.time,
            Col::Field(i) => self.fields[i],
        }
    }

    /// Event times; a row without one cannot be placed, so such batches go the row way.
    fn times(&self) -> Result<Vec<i64>, Unsupported> {
        let Some(array) = self.time else { return unsupported("no event time column") };
        if array.null_count() > 0 {
            return unsupported("rows without an event time");
        }
        match array.data_type() {
            ArrowType::Timestamp(arrow_schema::TimeUnit::Millisecond, _) => {
                Ok(array.as_primitive::<TimestampMillisecondType>().values().to_vec())
            }
            ArrowType::Int64 => Ok(array.as_primitive::<Int64Type>().values().to_vec()),
            _ => unsupported(format!("event times of type {}", array.data_type())),
        }
    }

    /// Each row's code for the column's value.
    /// Values are taken as the row operator takes them for the `declared` type (integers
    /// in a DOUBLE column are doubles); other mismatches go the row way.
    fn codes(&self, col: Col, declared: &DataType, times: &[i64], codes: &mut Codes) -> Result<Vec<u64>, Unsupported> {
        let n = times.len();
        let Some(array) = self.get(col) else {
            let null = codes.code(Value::Null);
            return Ok(vec![null; n]);
        };
        if col == Col::Time {
            return Ok(times.iter().map(|&t| codes.code(Value::Int(t))).collect());
        }
        let null = || Value::Null;
        let fits = matches!(
            (declared, array.data_type()),
            (DataType::Any, _)
                | (DataType::String, ArrowType::Utf8 | ArrowType::Dictionary(..))
                | (DataType::Double | DataType::Decimal(..), ArrowType::Float64 | ArrowType::Int64)
                | (DataType::Int | DataType::BigInt | DataType::Timestamp, ArrowType::Int64)
                | (DataType::Boolean, ArrowType::Boolean)
        );
        if !fits {
            return unsupported(format!("a {declared} column holding {}", array.data_type()));
        }
        let doubles = matches!(declared, DataType::Double | DataType::Decimal(..));
        Ok(match array.data_type() {
            ArrowType::Dictionary(k, v) if **k == ArrowType::Int32 && **v == ArrowType::Utf8 => {
                let dict = array.as_dictionary::<Int32Type>();
                let values = dict.values().as_string::<i32>();
                let mapped: Vec<u64> = (0..values.len()).map(|i| codes.text(values.value(i))).collect();
                let null_code = codes.code(null());
                dict.keys().iter().map(|k| k.map_or(null_code, |k| mapped[k as usize])).collect()
            }
            ArrowType::Utf8 => {
                let null_code = codes.code(null());
                array.as_string::<i32>().iter().map(|s| s.map_or(null_code, |s| codes.text(s))).collect()
            }
            ArrowType::Int64 => array
                .as_primitive::<Int64Type>()
                .iter()
                .map(|v| match v {
                    None => codes.code(Value::Null),
                    Some(v) if doubles => codes.code(Value::Double(v as f64)),
                    Some(v) => codes.code(Value::Int(v)),
                })
                .collect(),
            ArrowType::Float64 => array
                .as_primitive::<Float64Type>()
                .iter()
                .map(|v| codes.code(v.map_or(Value::Null, Value::Double)))
                .collect(),
            ArrowType::Boolean => {
                array.as_boolean().iter().map(|v| codes.code(v.map_or(Value::Null, Value::Bool))).collect()
            }
            other => return unsupported(format!("grouping by a column of type {other}")),
        })
    }

    /// Clears `selected` where the condition does not hold (NULL never holds).
    fn filter(&self, c: &Condition, times: &[i64], selected: &mut [bool]) -> Result<(), Unsupported> {
        let holds = |o: std::cmp::Ordering| match c.cmp {
            BinOp::Eq => o.is_eq(),
            BinOp::NotEq => o.is_ne(),
            BinOp::Lt => o.is_lt(),
            BinOp::LtEq => o.is_le(),
            BinOp::Gt => o.is_gt(),
            _ => o.is_ge(),
        };
        if c.col == Col::Time {
            let v = c.value.as_i64().ok_or_else(|| Unsupported("a time compared with a non-integer".into()))?;
            for (s, t) in selected.iter_mut().zip(times) {
                *s &= holds(t.cmp(&v));
            }
            return Ok(());
        }
        let Some(array) = self.get(c.col) else {
            selected.iter_mut().for_each(|s| *s = false);
            return Ok(());
        };
        let numbers = Numbers::of(array);
        match (&numbers, &c.value) {
            (Some(numbers), v) if v.as_f64().is_some() => {
                let v = v.as_f64().expect("checked");
                for (i, s) in selected.iter_mut().enumerate() {
                    *s &= numbers.get(i).is_some_and(|x| x.partial_cmp(&v).is_some_and(holds));
                }
            }
            (None, Value::String(v)) => {
                for (i, s) in selected.iter_mut().enumerate() {
                    *s &= pacer_history::columns::text_at(array, i).is_some_and(|x| holds(x.as_str().cmp(v.as_str())));
                }
            }
            _ => return unsupported("a comparison of different types"),
        }
        Ok(())
    }
}

/// A numeric column read as doubles or integers.
enum Numbers<'a> {
    Int(&'a arrow_array::Int64Array),
    Double(&'a arrow_array::Float64Array),
}

impl<'a> Numbers<'a> {
    fn of(array: &'a dyn Array) -> Option<Numbers<'a>> {
        match array.data_type() {
            ArrowType::Int64 => Some(Numbers::Int(array.as_primitive::<Int64Type>())),
            ArrowType::Float64 => Some(Numbers::Double(array.as_primitive::<Float64Type>())),
            _ => None,
        }
    }

    #[inline]
    fn get(&self, i: usize) -> Option<f64> {
        match self {
            Numbers::Int(a) => a.is_valid(i).then(|| a.value(i) as f64),
            Numbers::Double(a) => a.is_valid(i).then(|| a.value(i)),
        }
    }

    #[inline]
    fn int(&self, i: usize) -> Option<i64> {
        match self {
            Numbers::Int(a) => a.is_valid(i).then(|| a.value(i)),
            Numbers::Double(_) => None,
        }
    }
}

impl Accs {
    fn add(&mut self, columns: &Columns, gids: &[u32], groups: usize) -> Result<(), Unsupported> {
        let numbers = |col: Col| -> Result<Option<Numbers>, Unsupported> {
            match columns.get(col) {
                None => Ok(None),
                Some(a) => match Numbers::of(a) {
                    Some(n) => Ok(Some(n)),
                    None => unsupported(format!("an aggregate over a column of type {}", a.data_type())),
                },
            }
        };
        let rows = gids.iter().enumerate().filter(|(_, g)| **g != u32::MAX).map(|(i, g)| (i, *g as usize));
        match self {
            Accs::Count { col, n } => {
                n.resize(groups, 0);
                match col {
                    None | Some(Col::Time) => rows.for_each(|(_, g)| n[g] += 1),
                    Some(c) => match columns.get(*c) {
                        None => {}
                        Some(a) => rows.filter(|(i, _)| a.is_valid(*i)).for_each(|(_, g)| n[g] += 1),
                    },
                }
            }
            Accs::Sum { col, out, int, double, seen } => {
                int.resize(groups, 0);
                double.resize(groups, 0.0);
                seen.resize(groups, false);
                if let Some(nums) = numbers(*col)? {
                    sum_into(&nums, rows, *out, int, double, seen)?;
                }
            }
            Accs::Avg { col, sum, n } => {
                sum.resize(groups, 0.0);
                n.resize(groups, 0);
                if let Some(nums) = numbers(*col)? {
                    for (i, g) in rows {
                        if let Some(x) = nums.get(i) {
                            sum[g] += x;
                            n[g] += 1;
                        }
                    }
                }
            }
            Accs::Stddev { col, n, mean, m2 } => {
                n.resize(groups, 0);
                mean.resize(groups, 0.0);
                m2.resize(groups, 0.0);
                if let Some(nums) = numbers(*col)? {
                    for (i, g) in rows {
                        if let Some(x) = nums.get(i) {
                            n[g] += 1;
                            let delta = x - mean[g];
                            mean[g] += delta / n[g] as f64;
                            m2[g] += delta * (x - mean[g]);
                        }
                    }
                }
            }
            Accs::One { col, kind, out, v, int, null, set } => {
                v.resize(groups, 0.0);
                int.resize(groups, 0);
                null.resize(groups, false);
                set.resize(groups, false);
                let nums = numbers(*col)?;
                if *out == Number::Int && matches!(nums, Some(Numbers::Double(_))) {
                    return unsupported("doubles in a column declared an integer");
                }
                for (i, g) in rows {
                    let x = nums.as_ref().and_then(|n| n.get(i));
                    let xi = nums.as_ref().and_then(|n| n.int(i));
                    let better = |o: std::cmp::Ordering| match (*out, x, xi) {
                        (Number::Int, _, Some(xi)) => xi.cmp(&int[g]) == o,
                        (Number::Double, Some(x), _) => x.partial_cmp(&v[g]) == Some(o),
                        _ => false,
                    };
                    let take = match kind {
                        AggKind::Latest => true,
                        AggKind::Earliest => !set[g],
                        _ if x.is_none() => false,
                        AggKind::Min => !set[g] || better(std::cmp::Ordering::Less),
                        AggKind::Max => !set[g] || better(std::cmp::Ordering::Greater),
                        _ => false,
                    };
                    if take {
                        set[g] = true;
                        null[g] = x.is_none();
                        v[g] = x.unwrap_or(0.0);
                        int[g] = xi.unwrap_or(0);
                    }
                }
            }
        }
        Ok(())
    }

    fn result(&self, g: usize) -> Acc {
        match self {
            Accs::Count { n, .. } => Acc::Count { n: n.get(g).copied().unwrap_or(0) },
            Accs::Sum { out, int, double, seen, .. } => Acc::Sum {
                int: int.get(g).copied().unwrap_or(0),
                double: double.get(g).copied().unwrap_or(0.0),
                floating: *out == Number::Double,
                seen: seen.get(g).copied().unwrap_or(false),
            },
            Accs::Avg { sum, n, .. } => {
                Acc::Avg { sum: sum.get(g).copied().unwrap_or(0.0), n: n.get(g).copied().unwrap_or(0) }
            }
            Accs::Stddev { n, mean, m2, .. } => Acc::Stddev {
                n: n.get(g).copied().unwrap_or(0),
                mean: mean.get(g).copied().unwrap_or(0.0),
                m2: m2.get(g).copied().unwrap_or(0.0),
            },
            Accs::One { out, v, int, null, set, .. } => {
                let set = set.get(g).copied().unwrap_or(false);
                let value = if !set || null[g] {
                    Value::Null
                } else if *out == Number::Int {
                    Value::Int(int[g])
                } else {
                    Value::Double(v[g])
                };
                Acc::One(Kept::new(value, set))
            }
        }
    }
}

fn sum_into(
    nums: &Numbers,
    rows: impl Iterator<Item = (usize, usize)>,
    out: Number,
    int: &mut [i64],
    double: &mut [f64],
    seen: &mut [bool],
) -> Result<(), Unsupported> {
    if out == Number::Int && matches!(nums, Numbers::Double(_)) {
        return unsupported("doubles in a column declared an integer");
    }
    for (i, g) in rows {
        match out {
            Number::Int => {
                if let Some(x) = nums.int(i) {
                    int[g] = int[g].wrapping_add(x);
                    seen[g] = true;
                }
            }
            Number::Double => {
                if let Some(x) = nums.get(i) {
                    double[g] += x;
                    seen[g] = true;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::plan::test_support::{plan_sql, stream};
    use bytes::Bytes;
    use pacer_core::Record;

    fn aggregation(sql: &str) -> Aggregation {
        let source = stream("r", &[("temp", DataType::Double)]);
        Aggregation::new(&plan_sql(sql, &source, &crate::Geometry::default())).unwrap()
    }

    fn batch(values: &[&str]) -> RecordBatch {
        let records: Vec<Record> = values
            .iter()
            .enumerate()
            .map(|(i, v)| Record {
                partition: 0,
                offset: i as u64,
                timestamp: 1_000 + i as i64,
                key: None,
                value: Bytes::from(format!(r#"{{"temp":{v}}}"#)),
                headers: Vec::new(),
            })
            .collect();
        pacer_history::columns::to_batch(&records).unwrap()
    }

    #[test]
    fn a_double_column_groups_whole_numbers_with_their_doubles() {
        let mut a = aggregation("SELECT temp, COUNT(*) AS n FROM r GROUP BY temp");
        let doubles = batch(&["3.0", "3.5"]);
        let ints = batch(&["3", "4"]);
        assert_eq!(doubles.schema().field_with_name("temp").unwrap().data_type(), &ArrowType::Float64);
        assert_eq!(ints.schema().field_with_name("temp").unwrap().data_type(), &ArrowType::Int64);
        a.add(&doubles).unwrap();
        a.add(&ints).unwrap();
        let rows = a.finish().unwrap();
        let counts: Vec<(f64, i64)> = rows.iter().map(|r| (r[0].as_f64().unwrap(), r[1].as_i64().unwrap())).collect();
        assert_eq!(counts, [(3.0, 2), (3.5, 1), (4.0, 1)]);
    }
}
