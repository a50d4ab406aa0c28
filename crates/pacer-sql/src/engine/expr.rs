//! Expressions compiled for running: columns resolved to row slots, functions looked up,
//! types checked once before a query starts. Evaluating one never panics; a bad record
//! (a failed cast, a division by zero) gives an error for that record only.

use sqlparser::ast::{
    self as sql, AccessExpr, BinaryOperator, CeilFloorKind, FunctionArg, FunctionArgExpr, FunctionArguments, Subscript,
    UnaryOperator,
};

use super::functions::{self, ScalarFunction};
use super::value::{DataType, Value};

/// Why a statement cannot be planned: unknown names, wrong types, unsupported shapes.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct PlanError(pub String);

pub fn plan_error<T>(message: impl Into<String>) -> Result<T, PlanError> {
    Err(PlanError(message.into()))
}

#[derive(Debug, Clone)]
pub enum Expr {
    Column(usize),
    Literal(Value),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    IsNull {
        expr: Box<Expr>,
        negated: bool,
    },
    Between {
        expr: Box<Expr>,
        low: Box<Expr>,
        high: Box<Expr>,
        negated: bool,
    },
    InList {
        expr: Box<Expr>,
        list: Vec<Expr>,
        negated: bool,
    },
    Like {
        expr: Box<Expr>,
        pattern: regex::Regex,
        negated: bool,
    },
    Case {
        operand: Option<Box<Expr>>,
        whens: Vec<(Expr, Expr)>,
        otherwise: Option<Box<Expr>>,
    },
    Cast(Box<Expr>, DataType),
    Call(&'static ScalarFunction, Vec<Expr>),
    /// `struct->field`, `map['key']`.
    Field(Box<Expr>, String),
    /// `array[i]`, 1-based; negative counts from the end, like ksqlDB.
    Index(Box<Expr>, Box<Expr>),
}

impl Expr {
    /// Renumbers every column slot with `f` (slots only known once planning is done).
    pub fn remap_columns(&mut self, f: &impl Fn(usize) -> usize) {
        match self {
            Expr::Column(slot) => *slot = f(*slot),
            Expr::Literal(_) => {}
            Expr::Not(e) | Expr::Neg(e) | Expr::Cast(e, _) | Expr::Field(e, _) => e.remap_columns(f),
            Expr::IsNull { expr, .. } | Expr::Like { expr, .. } => expr.remap_columns(f),
            Expr::Binary(_, a, b) | Expr::And(a, b) | Expr::Or(a, b) | Expr::Index(a, b) => {
                a.remap_columns(f);
                b.remap_columns(f);
            }
            Expr::Between { expr, low, high, .. } => {
                for e in [expr, low, high] {
                    e.remap_columns(f);
                }
            }
            Expr::InList { expr, list, .. } => {
                expr.remap_columns(f);
                list.iter_mut().for_each(|e| e.remap_columns(f));
            }
            Expr::Case { operand, whens, otherwise } => {
                operand.iter_mut().chain(otherwise.iter_mut()).for_each(|e| e.remap_columns(f));
                for (when, then) in whens {
                    when.remap_columns(f);
                    then.remap_columns(f);
                }
            }
            Expr::Call(_, args) => args.iter_mut().for_each(|e| e.remap_columns(f)),
        }
    }
}

impl std::fmt::Debug for ScalarFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Concat,
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

/// What names mean where an expression is compiled.
pub trait Scope {
    /// The slot and type of a column.
    fn column(&mut self, name: &str) -> Result<(usize, DataType), PlanError>;

    /// A whole sub-expression this scope computes itself (an aggregate, a GROUP BY
    /// expression after grouping), or None to compile it normally.
    fn replace(&mut self, _expr: &sql::Expr) -> Result<Option<(usize, DataType)>, PlanError> {
        Ok(None)
    }
}

/// Compiles `e` against `scope`, returning it with its type.
pub fn compile(e: &sql::Expr, scope: &mut dyn Scope) -> Result<(Expr, DataType), PlanError> {
    // One level of recursion per level of the expression (up to MAX_EXPRESSION_DEPTH): this
    // runs once per query, so it takes more stack where a thread's runs short.
    stacker::maybe_grow(STACK_RED_ZONE, STACK_GROWTH, || compile_here(e, scope))
}

/// Stack left below which deep planning continues on a new segment, and that segment's size.
pub(crate) const STACK_RED_ZONE: usize = 128 * 1024;
pub(crate) const STACK_GROWTH: usize = 4 << 20;

fn compile_here(e: &sql::Expr, scope: &mut dyn Scope) -> Result<(Expr, DataType), PlanError> {
    if let Some((slot, t)) = scope.replace(e)? {
        return Ok((Expr::Column(slot), t));
    }
    let boxed = |scope: &mut dyn Scope, e: &sql::Expr| compile(e, scope).map(|(e, t)| (Box::new(e), t));
    Ok(match e {
        sql::Expr::Identifier(id) => {
            let (slot, t) = scope.column(&id.value)?;
            (Expr::Column(slot), t)
        }
        // `alias.column`: the engine reads one source, so the alias only has to exist.
        sql::Expr::CompoundIdentifier(parts) => {
            let (slot, t) = scope.column(&parts.last().expect("compound identifiers have parts").value)?;
            (Expr::Column(slot), t)
        }
        sql::Expr::Value(v) => literal(&v.value)?,
        // `INTERVAL '5' MINUTES`, `INTERVAL '1 minute'`: a number of milliseconds, so
        // `ROWTIME - INTERVAL '1' HOUR` and DATE_BIN(INTERVAL '1' MINUTE, …) read naturally.
        sql::Expr::Interval(interval) => {
            let amount = match interval.value.as_ref() {
                sql::Expr::Value(v) => match &v.value {
                    sql::Value::SingleQuotedString(s) | sql::Value::Number(s, _) => s.clone(),
                    _ => return plan_error(format!("{e}: an interval's amount is a quoted number")),
                },
                _ => return plan_error(format!("{e}: an interval's amount is a quoted number")),
            };
            let text = match &interval.leading_field {
                Some(unit) => format!("{amount} {unit}"),
                None => amount,
            };
            let ms = super::functions::duration_ms(&text).map_err(|m| PlanError(format!("{e}: {m}")))?;
            (Expr::Literal(Value::Int(ms)), DataType::BigInt)
        }
        sql::Expr::Nested(inner) => compile(inner, scope)?,
        sql::Expr::IsNull(inner) | sql::Expr::IsNotNull(inner) => {
            let (inner, _) = boxed(scope, inner)?;
            (Expr::IsNull { expr: inner, negated: matches!(e, sql::Expr::IsNotNull(_)) }, DataType::Boolean)
        }
        sql::Expr::UnaryOp { op: UnaryOperator::Not, expr } => {
            let (inner, t) = boxed(scope, expr)?;
            expect_boolean("NOT", &t)?;
            (Expr::Not(inner), DataType::Boolean)
        }
        sql::Expr::UnaryOp { op: UnaryOperator::Minus, expr } => {
            let (inner, t) = boxed(scope, expr)?;
            expect_numeric("-", &t)?;
            (Expr::Neg(inner), t)
        }
        sql::Expr::UnaryOp { op: UnaryOperator::Plus, expr } => compile(expr, scope)?,
        sql::Expr::BinaryOp { left, op, right } => {
            let (l, lt) = boxed(scope, left)?;
            // `struct->field`: the right side is a name, not a column.
            if matches!(op, BinaryOperator::Arrow) {
                let sql::Expr::Identifier(field) = right.as_ref() else {
                    return plan_error(format!("{e}: expected a field name after ->"));
                };
                let t = field_type(&lt, &field.value);
                return Ok((Expr::Field(l, field.value.clone()), t));
            }
            let (r, rt) = boxed(scope, right)?;
            binary(op, l, lt, r, rt, e)?
        }
        sql::Expr::Between { expr, negated, low, high } => {
            let (expr, t) = boxed(scope, expr)?;
            let (low, lt) = boxed(scope, low)?;
            let (high, ht) = boxed(scope, high)?;
            comparable(&t, &lt, e)?;
            comparable(&t, &ht, e)?;
            (Expr::Between { expr, low, high, negated: *negated }, DataType::Boolean)
        }
        sql::Expr::InList { expr, list, negated } => {
            let (expr, t) = boxed(scope, expr)?;
            let mut items = Vec::with_capacity(list.len());
            for item in list {
                let (item, it) = compile(item, scope)?;
                comparable(&t, &it, e)?;
                items.push(item);
            }
            (Expr::InList { expr, list: items, negated: *negated }, DataType::Boolean)
        }
        sql::Expr::Like { negated, expr, pattern, escape_char, .. } => {
            let (expr, t) = boxed(scope, expr)?;
            expect_string("LIKE", &t)?;
            let sql::Expr::Value(v) = pattern.as_ref() else {
                return plan_error(format!("{e}: LIKE takes a quoted pattern"));
            };
            let sql::Value::SingleQuotedString(p) = &v.value else {
                return plan_error(format!("{e}: LIKE takes a quoted pattern"));
            };
            let escape = escape_char.as_ref().and_then(|c| c.to_string().trim_matches('\'').chars().next());
            (Expr::Like { expr, pattern: like_regex(p, escape), negated: *negated }, DataType::Boolean)
        }
        sql::Expr::Case { operand, conditions, else_result, .. } => {
            let operand = match operand {
                Some(o) => Some(boxed(scope, o)?.0),
                None => None,
            };
            let mut whens = Vec::with_capacity(conditions.len());
            let mut result_type = None;
            for when in conditions {
                let (condition, _) = compile(&when.condition, scope)?;
                let (result, rt) = compile(&when.result, scope)?;
                unify(&mut result_type, rt, e)?;
                whens.push((condition, result));
            }
            let otherwise = match else_result {
                Some(o) => {
                    let (o, ot) = boxed(scope, o)?;
                    unify(&mut result_type, ot, e)?;
                    Some(o)
                }
                None => None,
            };
            (Expr::Case { operand, whens, otherwise }, result_type.unwrap_or(DataType::Any))
        }
        sql::Expr::Cast { expr, data_type, .. } => {
            let (inner, from) = boxed(scope, expr)?;
            let to = sql_type(data_type)?;
            if from == DataType::Timestamp && to == DataType::String {
                // A TIMESTAMP is milliseconds at run time; ksqlDB writes it as ISO-8601 text.
                let pattern = Expr::Literal(Value::from("yyyy-MM-dd'T'HH:mm:ss.SSS"));
                let format = functions::lookup("FORMAT_TIMESTAMP").expect("FORMAT_TIMESTAMP is built in");
                return Ok((Expr::Call(format, vec![*inner, pattern]), DataType::String));
            }
            (Expr::Cast(inner, to.clone()), to)
        }
        sql::Expr::Function(f) => {
            let name = f.name.to_string();
            if f.over.is_some() {
                return plan_error(format!(
                    "{e}: window functions rank the groups of a query with GROUP BY; use them in its SELECT list"
                ));
            }
            if super::aggregate::is_aggregate(&name) {
                return plan_error(format!(
                    "{e}: aggregate functions belong in the SELECT list or HAVING of a query with GROUP BY"
                ));
            }
            let args = match &f.args {
                FunctionArguments::None => Vec::new(),
                FunctionArguments::List(list) => list.args.iter().collect(),
                FunctionArguments::Subquery(_) => return plan_error(format!("{e}: subqueries are not supported")),
            };
            let mut compiled = Vec::with_capacity(args.len());
            for arg in args {
                match arg {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(a)) => compiled.push(compile(a, scope)?),
                    _ => return plan_error(format!("{e}: {name} takes plain arguments")),
                }
            }
            call(&name, compiled)?
        }
        sql::Expr::Ceil { expr, field: CeilFloorKind::DateTimeField(sql::DateTimeField::NoDateTime) } => {
            call("CEIL", vec![compile(expr, scope)?])?
        }
        sql::Expr::Floor { expr, field: CeilFloorKind::DateTimeField(sql::DateTimeField::NoDateTime) } => {
            call("FLOOR", vec![compile(expr, scope)?])?
        }
        sql::Expr::Substring { expr, substring_from, substring_for, .. } => {
            let mut args = vec![compile(expr, scope)?];
            for part in [substring_from, substring_for].into_iter().flatten() {
                args.push(compile(part, scope)?);
            }
            call("SUBSTRING", args)?
        }
        sql::Expr::Trim { expr, trim_where: None, trim_what: None, trim_characters: None } => {
            call("TRIM", vec![compile(expr, scope)?])?
        }
        sql::Expr::CompoundFieldAccess { root, access_chain } => {
            let (mut current, mut t) = compile(root, scope)?;
            for access in access_chain {
                match access {
                    AccessExpr::Dot(sql::Expr::Identifier(field)) => {
                        t = field_type(&t, &field.value);
                        current = Expr::Field(Box::new(current), field.value.clone());
                    }
                    AccessExpr::Subscript(Subscript::Index { index }) => {
                        let (index, it) = compile(index, scope)?;
                        match (&index, &t) {
                            (Expr::Literal(Value::String(key)), _) => {
                                t = field_type(&t, key);
                                current = Expr::Field(Box::new(current), key.clone());
                            }
                            _ => {
                                expect_numeric("an array index", &it)?;
                                t = match t {
                                    DataType::Array(item) => *item,
                                    _ => DataType::Any,
                                };
                                current = Expr::Index(Box::new(current), Box::new(index));
                            }
                        }
                    }
                    other => return plan_error(format!("{other}: unsupported field access")),
                }
            }
            (current, t)
        }
        other => return plan_error(format!("{other}: this kind of expression is not supported")),
    })
}

fn call(name: &str, args: Vec<(Expr, DataType)>) -> Result<(Expr, DataType), PlanError> {
    let Some(f) = functions::lookup(name) else {
        return plan_error(format!("{name}: no such function (SHOW FUNCTIONS lists them)"));
    };
    if args.len() < f.min_args || args.len() > f.max_args {
        let expected = match (f.min_args, f.max_args) {
            (a, b) if a == b => format!("{a}"),
            (a, usize::MAX) => format!("at least {a}"),
            (a, b) => format!("{a} to {b}"),
        };
        return plan_error(format!("{}: takes {expected} arguments, got {}", f.name, args.len()));
    }
    let types: Vec<DataType> = args.iter().map(|(_, t)| t.clone()).collect();
    let t = (f.return_type)(&types).map_err(|m| PlanError(format!("{}: {m}", f.name)))?;
    Ok((Expr::Call(f, args.into_iter().map(|(e, _)| e).collect()), t))
}

fn binary(
    op: &BinaryOperator,
    l: Box<Expr>,
    lt: DataType,
    r: Box<Expr>,
    rt: DataType,
    whole: &sql::Expr,
) -> Result<(Expr, DataType), PlanError> {
    let arithmetic = |op: BinOp| -> Result<(Expr, DataType), PlanError> {
        expect_numeric(&whole.to_string(), &lt)?;
        expect_numeric(&whole.to_string(), &rt)?;
        let t = if op == BinOp::Div && lt == DataType::Any { DataType::Any } else { DataType::widen(&lt, &rt) };
        Ok((Expr::Binary(op, l.clone(), r.clone()), t))
    };
    let comparison = |op: BinOp| -> Result<(Expr, DataType), PlanError> {
        comparable(&lt, &rt, whole)?;
        Ok((Expr::Binary(op, l.clone(), r.clone()), DataType::Boolean))
    };
    match op {
        BinaryOperator::Plus => arithmetic(BinOp::Add),
        BinaryOperator::Minus => arithmetic(BinOp::Sub),
        BinaryOperator::Multiply => arithmetic(BinOp::Mul),
        BinaryOperator::Divide => arithmetic(BinOp::Div),
        BinaryOperator::Modulo => arithmetic(BinOp::Mod),
        BinaryOperator::StringConcat => Ok((Expr::Binary(BinOp::Concat, l, r), DataType::String)),
        BinaryOperator::Eq => comparison(BinOp::Eq),
        BinaryOperator::NotEq => comparison(BinOp::NotEq),
        BinaryOperator::Lt => comparison(BinOp::Lt),
        BinaryOperator::LtEq => comparison(BinOp::LtEq),
        BinaryOperator::Gt => comparison(BinOp::Gt),
        BinaryOperator::GtEq => comparison(BinOp::GtEq),
        BinaryOperator::And | BinaryOperator::Or => {
            expect_boolean(&whole.to_string(), &lt)?;
            expect_boolean(&whole.to_string(), &rt)?;
            let e = if matches!(op, BinaryOperator::And) { Expr::And(l, r) } else { Expr::Or(l, r) };
            Ok((e, DataType::Boolean))
        }
        other => plan_error(format!("{whole}: operator {other} is not supported")),
    }
}

fn literal(v: &sql::Value) -> Result<(Expr, DataType), PlanError> {
    let (value, t) = match v {
        sql::Value::Number(n, _) => match n.parse::<i64>() {
            Ok(i) => (Value::Int(i), if i32::try_from(i).is_ok() { DataType::Int } else { DataType::BigInt }),
            Err(_) => match n.parse::<f64>() {
                Ok(d) => (Value::Double(d), DataType::Double),
                Err(_) => return plan_error(format!("{n}: not a number")),
            },
        },
        sql::Value::SingleQuotedString(s) => (Value::String(s.clone()), DataType::String),
        sql::Value::Boolean(b) => (Value::Bool(*b), DataType::Boolean),
        sql::Value::Null => (Value::Null, DataType::Any),
        other => return plan_error(format!("{other}: unsupported literal (strings take single quotes)")),
    };
    Ok((Expr::Literal(value), t))
}

/// A type named in CAST, in ksqlDB's spelling.
fn sql_type(t: &sql::DataType) -> Result<DataType, PlanError> {
    let text = t.to_string().to_ascii_uppercase();
    let base = text.split('(').next().unwrap_or_default().trim();
    Ok(match base {
        "BOOLEAN" | "BOOL" => DataType::Boolean,
        "INT" | "INTEGER" => DataType::Int,
        "BIGINT" => DataType::BigInt,
        "DOUBLE" | "FLOAT" | "REAL" | "DOUBLE PRECISION" => DataType::Double,
        "DECIMAL" | "NUMERIC" => {
            let digits: Vec<u8> = text.split(|c: char| !c.is_ascii_digit()).filter_map(|d| d.parse().ok()).collect();
            DataType::Decimal(digits.first().copied().unwrap_or(38), digits.get(1).copied().unwrap_or(0))
        }
        "VARCHAR" | "STRING" | "TEXT" | "CHAR" => DataType::String,
        "BYTES" => DataType::Bytes,
        "TIMESTAMP" => DataType::Timestamp,
        _ => return plan_error(format!("CAST to {t} is not supported")),
    })
}

fn field_type(t: &DataType, field: &str) -> DataType {
    match t {
        DataType::Struct(fields) => {
            fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(field)).map_or(DataType::Any, |(_, t)| t.clone())
        }
        DataType::Map(value) => (**value).clone(),
        _ => DataType::Any,
    }
}

fn unify(current: &mut Option<DataType>, next: DataType, whole: &sql::Expr) -> Result<(), PlanError> {
    match current {
        None => *current = Some(next),
        Some(DataType::Any) => *current = Some(next),
        Some(t) if next == DataType::Any || *t == next => {}
        Some(t) if t.is_numeric() && next.is_numeric() => *current = Some(DataType::widen(t, &next)),
        Some(t) => return plan_error(format!("{whole}: the branches return {t} and {next}")),
    }
    Ok(())
}

fn expect_numeric(what: &str, t: &DataType) -> Result<(), PlanError> {
    if t.is_numeric() || matches!(t, DataType::Any | DataType::Timestamp) {
        return Ok(());
    }
    plan_error(format!("{what}: expected a number, got {t}"))
}

fn expect_boolean(what: &str, t: &DataType) -> Result<(), PlanError> {
    if matches!(t, DataType::Boolean | DataType::Any) {
        return Ok(());
    }
    plan_error(format!("{what}: expected a BOOLEAN, got {t}"))
}

fn expect_string(what: &str, t: &DataType) -> Result<(), PlanError> {
    if matches!(t, DataType::String | DataType::Any) {
        return Ok(());
    }
    plan_error(format!("{what}: expected a STRING, got {t}"))
}

fn comparable(a: &DataType, b: &DataType, whole: &sql::Expr) -> Result<(), PlanError> {
    let numeric = |t: &DataType| t.is_numeric() || *t == DataType::Timestamp;
    if a == b || *a == DataType::Any || *b == DataType::Any || (numeric(a) && numeric(b)) {
        return Ok(());
    }
    plan_error(format!("{whole}: cannot compare {a} with {b}"))
}

/// SQL LIKE (`%`, `_`, optional escape) as an anchored regex.
fn like_regex(pattern: &str, escape: Option<char>) -> regex::Regex {
    let mut re = String::from("(?s)^");
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            c if Some(c) == escape => {
                if let Some(next) = chars.next() {
                    re.push_str(&regex::escape(&next.to_string()));
                }
            }
            '%' => re.push_str(".*"),
            '_' => re.push('.'),
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    re.push('$');
    regex::Regex::new(&re).expect("escaped LIKE patterns are valid regexes")
}

impl Expr {
    pub fn eval(&self, row: &[Value]) -> Result<Value, String> {
        Ok(match self {
            Expr::Column(slot) => row[*slot].clone(),
            Expr::Literal(v) => v.clone(),
            Expr::Not(e) => match e.eval(row)? {
                Value::Bool(b) => Value::Bool(!b),
                _ => Value::Null,
            },
            Expr::Neg(e) => match e.eval(row)? {
                Value::Int(i) => Value::Int(i.checked_neg().ok_or("integer overflow")?),
                Value::Double(d) => Value::Double(-d),
                _ => Value::Null,
            },
            Expr::Binary(op, l, r) => binary_value(*op, &l.eval(row)?, &r.eval(row)?)?,
            Expr::And(l, r) => match l.eval(row)? {
                Value::Bool(false) => Value::Bool(false),
                left => match (left, r.eval(row)?) {
                    (_, Value::Bool(false)) => Value::Bool(false),
                    (Value::Bool(true), Value::Bool(true)) => Value::Bool(true),
                    _ => Value::Null,
                },
            },
            Expr::Or(l, r) => match l.eval(row)? {
                Value::Bool(true) => Value::Bool(true),
                left => match (left, r.eval(row)?) {
                    (_, Value::Bool(true)) => Value::Bool(true),
                    (Value::Bool(false), Value::Bool(false)) => Value::Bool(false),
                    _ => Value::Null,
                },
            },
            Expr::IsNull { expr, negated } => Value::Bool(expr.eval(row)?.is_null() != *negated),
            Expr::Between { expr, low, high, negated } => {
                let v = expr.eval(row)?;
                match (v.compare(&low.eval(row)?), v.compare(&high.eval(row)?)) {
                    (Some(a), Some(b)) => Value::Bool((a.is_ge() && b.is_le()) != *negated),
                    _ => Value::Null,
                }
            }
            Expr::InList { expr, list, negated } => {
                let v = expr.eval(row)?;
                if v.is_null() {
                    return Ok(Value::Null);
                }
                let mut found = false;
                for item in list {
                    if v.compare(&item.eval(row)?).is_some_and(|o| o.is_eq()) {
                        found = true;
                        break;
                    }
                }
                Value::Bool(found != *negated)
            }
            Expr::Like { expr, pattern, negated } => match expr.eval(row)? {
                Value::String(s) => Value::Bool(pattern.is_match(&s) != *negated),
                _ => Value::Null,
            },
            Expr::Case { operand, whens, otherwise } => {
                let subject = match operand {
                    Some(o) => Some(o.eval(row)?),
                    None => None,
                };
                for (condition, result) in whens {
                    let c = condition.eval(row)?;
                    let hit = match &subject {
                        Some(s) => s.compare(&c).is_some_and(|o| o.is_eq()),
                        None => c.is_true(),
                    };
                    if hit {
                        return result.eval(row);
                    }
                }
                match otherwise {
                    Some(o) => o.eval(row)?,
                    None => Value::Null,
                }
            }
            Expr::Cast(e, to) => functions::cast(&e.eval(row)?, to)?,
            Expr::Call(f, args) => {
                let values = args.iter().map(|a| a.eval(row)).collect::<Result<Vec<_>, _>>()?;
                (f.eval)(&values)?
            }
            Expr::Field(e, name) => match e.eval(row)? {
                Value::Map(mut fields) => match fields.remove(name) {
                    Some(v) => v,
                    None => {
                        fields.into_iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map_or(Value::Null, |(_, v)| v)
                    }
                },
                _ => Value::Null,
            },
            Expr::Index(e, i) => match (e.eval(row)?, i.eval(row)?.as_i64()) {
                (Value::Array(mut items), Some(i)) => {
                    let n = items.len() as i64;
                    let at = if i < 0 { n + i } else { i - 1 };
                    if (0..n).contains(&at) {
                        items.swap_remove(at as usize)
                    } else {
                        Value::Null
                    }
                }
                _ => Value::Null,
            },
        })
    }
}

fn binary_value(op: BinOp, l: &Value, r: &Value) -> Result<Value, String> {
    use std::cmp::Ordering::*;
    if op == BinOp::Concat {
        return Ok(match (l, r) {
            (Value::Null, _) | (_, Value::Null) => Value::Null,
            _ => Value::String(format!("{l}{r}")),
        });
    }
    if l.is_null() || r.is_null() {
        return Ok(Value::Null);
    }
    let compared = |test: fn(std::cmp::Ordering) -> bool| l.compare(r).map_or(Value::Null, |o| Value::Bool(test(o)));
    Ok(match op {
        BinOp::Eq => compared(|o| o == Equal),
        BinOp::NotEq => compared(|o| o != Equal),
        BinOp::Lt => compared(|o| o == Less),
        BinOp::LtEq => compared(|o| o != Greater),
        BinOp::Gt => compared(|o| o == Greater),
        BinOp::GtEq => compared(|o| o != Less),
        _ => match (l, r) {
            (Value::Int(a), Value::Int(b)) => {
                let (a, b) = (*a, *b);
                let result = match op {
                    BinOp::Add => a.checked_add(b),
                    BinOp::Sub => a.checked_sub(b),
                    BinOp::Mul => a.checked_mul(b),
                    BinOp::Div if b == 0 => return Err("division by zero".into()),
                    BinOp::Div => a.checked_div(b),
                    BinOp::Mod if b == 0 => return Err("division by zero".into()),
                    BinOp::Mod => a.checked_rem(b),
                    _ => unreachable!("comparisons and || are handled above"),
                };
                Value::Int(result.ok_or("integer overflow")?)
            }
            _ => match (l.as_f64(), r.as_f64()) {
                (Some(a), Some(b)) => Value::Double(match op {
                    BinOp::Add => a + b,
                    BinOp::Sub => a - b,
                    BinOp::Mul => a * b,
                    BinOp::Div => a / b,
                    BinOp::Mod => a % b,
                    _ => unreachable!("comparisons and || are handled above"),
                }),
                _ => return Err(format!("cannot compute {l} {op:?} {r}: not numbers")),
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlparser::dialect::GenericDialect;
    use sqlparser::parser::Parser;

    struct Columns(Vec<(&'static str, DataType)>);

    impl Scope for Columns {
        fn column(&mut self, name: &str) -> Result<(usize, DataType), PlanError> {
            self.0
                .iter()
                .position(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|i| (i, self.0[i].1.clone()))
                .ok_or_else(|| PlanError(format!("{name}: no such column")))
        }
    }

    fn run(sql: &str, row: &[Value]) -> Result<Value, String> {
        let mut scope = Columns(vec![
            ("speed", DataType::Double),
            ("who", DataType::String),
            ("n", DataType::Int),
            ("pos", DataType::Struct(vec![("lat".into(), DataType::Double)])),
            ("ts", DataType::Timestamp),
        ]);
        let e = Parser::new(&GenericDialect {}).try_with_sql(sql).unwrap().parse_expr().unwrap();
        let (compiled, _) = compile(&e, &mut scope).map_err(|e| e.0)?;
        compiled.eval(row)
    }

    #[test]
    fn operators_follow_sql_and_ksqldb() {
        let pos = Value::Map([("lat".to_string(), Value::Double(-33.8))].into());
        let row = [Value::Double(12.5), Value::from("alice"), Value::Int(7), pos];
        assert_eq!(run("speed * 2 + n", &row), Ok(Value::Double(32.0)));
        assert_eq!(run("n / 2", &row), Ok(Value::Int(3)), "INT / INT divides whole numbers");
        assert_eq!(run("n % 4 = 3 AND who LIKE 'al%'", &row), Ok(Value::Bool(true)));
        assert_eq!(run("who || '-' || n", &row), Ok(Value::from("alice-7")));
        assert_eq!(run("CASE WHEN speed > 10 THEN 'fast' ELSE 'slow' END", &row), Ok(Value::from("fast")));
        assert_eq!(run("CASE who WHEN 'bob' THEN 1 WHEN 'alice' THEN 2 END", &row), Ok(Value::Int(2)));
        assert_eq!(run("n BETWEEN 1 AND 7 AND n IN (1, 7) AND n NOT IN (2)", &row), Ok(Value::Bool(true)));
        assert_eq!(run("pos->lat < 0", &row), Ok(Value::Bool(true)));
        assert_eq!(run("NULL = 1 OR n = 7", &row), Ok(Value::Bool(true)), "NULL OR TRUE is TRUE");
        assert_eq!(run("NULL = 1 AND n = 7", &row), Ok(Value::Null));
        assert_eq!(run("n / 0", &row), Err("division by zero".to_string()));
        let at = [Value::Null, Value::Null, Value::Null, Value::Null, Value::Int(1_558_212_482_123)];
        assert_eq!(run("CAST(ts AS STRING)", &at), Ok(Value::from("2019-05-18T20:48:02.123")), "ksqlDB's text form");
    }

    #[test]
    fn type_and_name_errors_come_before_running() {
        let row = [Value::Null, Value::Null, Value::Null, Value::Null];
        assert_eq!(run("speeed + 1", &row), Err("speeed: no such column".to_string()));
        assert!(run("who + 1", &row).unwrap_err().contains("expected a number, got STRING"));
        assert!(run("who = 1", &row).unwrap_err().contains("cannot compare STRING with INTEGER"));
        assert!(run("NOPE(1)", &row).unwrap_err().contains("no such function"));
        assert!(run("COUNT(*) > 1", &row).unwrap_err().contains("aggregate"));
    }
}
