//! Aggregate functions: their types, and the accumulators a window or group keeps.
//!
//! Accumulators serialize to JSON for checkpoints, and merge, so session windows can join.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use super::expr::{plan_error, Expr, PlanError};
use super::plan::ROWTIME;
use super::value::{DataType, Value};
use crate::track::{Fix, TrackKind, TrackState, TrackValue, Tracking};

/// COLLECT_LIST and COLLECT_SET keep at most this many values, like ksqlDB's default.
const COLLECT_LIMIT: usize = 1000;

const NAMES: &[&str] = &[
    "COUNT",
    "COUNT_DISTINCT",
    "SUM",
    "AVG",
    "MIN",
    "MAX",
    "STDDEV_SAMP",
    "STDDEV_SAMPLE",
    "LATEST_BY_OFFSET",
    "EARLIEST_BY_OFFSET",
    "COLLECT_LIST",
    "COLLECT_SET",
    "TOPK",
    "TOPKDISTINCT",
    // Tracking (crate::track): fold a group's fixes in order.
    "COURSE_DISTANCE",
    "TO_FINISH",
    "FINISH_TIME",
    "PROJECTED_FINISH",
    "SPEED",
    "HEADING",
    "PACE",
    "ZONE_EVENT",
    "IN_ZONE",
];

/// Every aggregate's name, for SHOW FUNCTIONS.
pub fn names() -> &'static [&'static str] {
    NAMES
}

pub fn is_aggregate(name: &str) -> bool {
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggKind {
    /// COUNT(*)
    CountRows,
    Count,
    CountDistinct,
    Sum,
    Avg,
    Min,
    Max,
    StddevSamp,
    Latest,
    Earliest,
    CollectList,
    CollectSet,
    TopK(usize),
    TopKDistinct(usize),
    Track(TrackKind),
}

/// One aggregate in a query: what it computes, over which input expression.
#[derive(Debug, Clone)]
pub struct AggregateCall {
    pub kind: AggKind,
    /// None for COUNT(*); the latitude for tracking aggregates.
    pub arg: Option<Expr>,
    /// Tracking aggregates: the longitude, and how fixes are read.
    pub track: Option<(Expr, Tracking)>,
    pub output: DataType,
    /// Reads the accumulator of this earlier call instead of keeping its own: tracking
    /// functions over the same fixes and place fold them once.
    pub shares: Option<usize>,
}

impl AggregateCall {
    /// Checks a call's arguments. `arg` is the compiled first argument; `k` the literal
    /// second argument of TOPK.
    pub fn new(name: &str, arg: Option<(Expr, DataType)>, k: Option<i64>) -> Result<AggregateCall, PlanError> {
        let upper = name.to_ascii_uppercase();
        let Some((arg, t)) = arg else {
            if upper == "COUNT" {
                return Ok(AggregateCall {
                    kind: AggKind::CountRows,
                    arg: None,
                    track: None,
                    output: DataType::BigInt,
                    shares: None,
                });
            }
            return plan_error(format!("{upper}: takes one argument"));
        };
        let numeric = |t: &DataType| {
            if t.is_numeric() || *t == DataType::Any {
                Ok(())
            } else {
                plan_error(format!("{upper}: expected a number, got {t}"))
            }
        };
        let top_k = || match k {
            Some(k) if k > 0 => Ok(k as usize),
            _ => plan_error(format!("{upper}: takes a column and how many values to keep, e.g. {upper}(speed, 3)")),
        };
        let (kind, output) = match upper.as_str() {
            "COUNT" => (AggKind::Count, DataType::BigInt),
            "COUNT_DISTINCT" => (AggKind::CountDistinct, DataType::BigInt),
            "SUM" => {
                numeric(&t)?;
                (AggKind::Sum, if t == DataType::Any { DataType::Double } else { t.clone() })
            }
            "AVG" => {
                numeric(&t)?;
                (AggKind::Avg, DataType::Double)
            }
            "MIN" => (AggKind::Min, t.clone()),
            "MAX" => (AggKind::Max, t.clone()),
            "STDDEV_SAMP" | "STDDEV_SAMPLE" => {
                numeric(&t)?;
                (AggKind::StddevSamp, DataType::Double)
            }
            "LATEST_BY_OFFSET" => (AggKind::Latest, t.clone()),
            "EARLIEST_BY_OFFSET" => (AggKind::Earliest, t.clone()),
            "COLLECT_LIST" => (AggKind::CollectList, DataType::Array(Box::new(t.clone()))),
            "COLLECT_SET" => (AggKind::CollectSet, DataType::Array(Box::new(t.clone()))),
            "TOPK" => (AggKind::TopK(top_k()?), DataType::Array(Box::new(t.clone()))),
            "TOPKDISTINCT" => (AggKind::TopKDistinct(top_k()?), DataType::Array(Box::new(t.clone()))),
            _ => return plan_error(format!("{upper}: not an aggregate function")),
        };
        if k.is_some() && !matches!(kind, AggKind::TopK(_) | AggKind::TopKDistinct(_)) {
            return plan_error(format!("{upper}: takes one argument"));
        }
        Ok(AggregateCall { kind, arg: Some(arg), track: None, output, shares: None })
    }

    /// A tracking aggregate over (lat, lon) fixes at ROWTIME.
    pub fn tracking(tracking: Tracking, lat: (Expr, DataType), lon: (Expr, DataType)) -> Result<Self, PlanError> {
        for (what, t) in [("latitude", &lat.1), ("longitude", &lon.1)] {
            if !(t.is_numeric() || *t == DataType::Any) {
                return plan_error(format!("the {what} must be a number, got {t}"));
            }
        }
        let output = match tracking.kind {
            TrackKind::FinishTime | TrackKind::ProjectedFinish => DataType::BigInt,
            TrackKind::ZoneEvent => DataType::String,
            TrackKind::InZone => DataType::Boolean,
            _ => DataType::Double,
        };
        Ok(AggregateCall {
            kind: AggKind::Track(tracking.kind),
            arg: Some(lat.0),
            track: Some((lon.0, tracking)),
            output,
            shares: None,
        })
    }

    pub fn start(&self) -> Acc {
        match self.kind {
            AggKind::CountRows | AggKind::Count => Acc::Count { n: 0 },
            AggKind::Sum => Acc::Sum { int: 0, double: 0.0, floating: self.output == DataType::Double, seen: false },
            AggKind::Avg => Acc::Avg { sum: 0.0, n: 0 },
            AggKind::StddevSamp => Acc::Stddev { n: 0, mean: 0.0, m2: 0.0 },
            AggKind::Min | AggKind::Max | AggKind::Latest | AggKind::Earliest => Acc::One(Kept(None)),
            AggKind::CountDistinct
            | AggKind::CollectList
            | AggKind::CollectSet
            | AggKind::TopK(_)
            | AggKind::TopKDistinct(_) => Acc::Values { items: Vec::new() },
            AggKind::Track(_) => Acc::Track { fixes: Box::default() },
        }
    }

    /// Adds one input row.
    pub fn add(&self, acc: &mut Acc, row: &[Value]) -> Result<(), String> {
        self.add_value(acc, &self.input(row)?);
        Ok(())
    }

    /// The input of COUNT(*) or of a call over a plain column: read in place, nothing to
    /// evaluate and nothing that can fail.
    fn plain_input<'r>(&self, row: &'r [Value]) -> Option<&'r Value> {
        static ROW: Value = Value::Bool(true);
        match (&self.arg, &self.track) {
            (None, _) => Some(&ROW),
            (Some(Expr::Column(slot)), None) => Some(&row[*slot]),
            _ => None,
        }
    }

    /// The value this aggregate takes from a row (evaluated before any state changes, so a
    /// row that fails changes nothing).
    pub fn input(&self, row: &[Value]) -> Result<Value, String> {
        match (&self.arg, &self.track) {
            (Some(lat), Some((lon, _))) => {
                let fix = [lat.eval(row)?, lon.eval(row)?, row[ROWTIME].clone()];
                if fix.iter().any(Value::is_null) {
                    return Ok(Value::Null);
                }
                match fix.iter().map(Value::as_f64).collect::<Option<Vec<f64>>>() {
                    Some(numbers) => Ok(Value::Array(numbers.into_iter().map(Value::Double).collect())),
                    None => Err(format!("a fix needs numbers, got lat {} and lon {}", fix[0], fix[1])),
                }
            }
            (Some(e), None) => e.eval(row),
            (None, _) => Ok(Value::Bool(true)),
        }
    }

    pub fn add_value(&self, acc: &mut Acc, v: &Value) {
        if v.is_null() && !matches!(self.kind, AggKind::Latest | AggKind::Earliest | AggKind::CollectList) {
            return;
        }
        match (self.kind, acc) {
            (AggKind::CountRows | AggKind::Count, Acc::Count { n }) => *n += 1,
            (AggKind::Sum, Acc::Sum { int, double, floating, seen }) => {
                *seen = true;
                match v {
                    Value::Int(i) if !*floating => *int = int.wrapping_add(*i),
                    other => {
                        if !*floating {
                            *floating = true;
                            *double = *int as f64;
                        }
                        *double += other.as_f64().unwrap_or(0.0);
                    }
                }
            }
            (AggKind::Avg, Acc::Avg { sum, n }) => {
                if let Some(x) = v.as_f64() {
                    *sum += x;
                    *n += 1;
                }
            }
            (AggKind::StddevSamp, Acc::Stddev { n, mean, m2 }) => {
                if let Some(x) = v.as_f64() {
                    // Welford: stable where sum-of-squares loses digits.
                    *n += 1;
                    let delta = x - *mean;
                    *mean += delta / *n as f64;
                    *m2 += delta * (x - *mean);
                }
            }
            (AggKind::Min | AggKind::Max, Acc::One(Kept(kept))) => {
                let wanted = if self.kind == AggKind::Min { Ordering::Less } else { Ordering::Greater };
                match (v, kept) {
                    // Doubles over doubles, the usual MIN and MAX of readings: compared and
                    // written in place, as `compare` and `clone` would.
                    (Value::Double(x), Some(Value::Double(kept))) => {
                        if x.partial_cmp(kept) == Some(wanted) {
                            *kept = *x;
                        }
                    }
                    (_, kept) => {
                        if kept.as_ref().is_none_or(|k| v.compare(k) == Some(wanted)) {
                            *kept = Some(v.clone());
                        }
                    }
                }
            }
            (AggKind::Latest, Acc::One(Kept(kept))) => *kept = Some(v.clone()),
            (AggKind::Earliest, Acc::One(Kept(kept))) => {
                if kept.is_none() {
                    *kept = Some(v.clone());
                }
            }
            (AggKind::CollectList, Acc::Values { items }) => {
                if items.len() < COLLECT_LIMIT {
                    items.push(v.clone());
                }
            }
            (AggKind::CollectSet | AggKind::CountDistinct, Acc::Values { items }) => {
                let limit = if self.kind == AggKind::CountDistinct { usize::MAX } else { COLLECT_LIMIT };
                if items.len() < limit && !items.contains(v) {
                    items.push(v.clone());
                }
            }
            (AggKind::TopK(k) | AggKind::TopKDistinct(k), Acc::Values { items }) => {
                if self.kind == AggKind::TopKDistinct(k) && items.contains(v) {
                    return;
                }
                let at = items.iter().position(|x| v.compare(x).is_some_and(|o| o.is_gt())).unwrap_or(items.len());
                if at < k {
                    items.insert(at, v.clone());
                    items.truncate(k);
                }
            }
            (AggKind::Track(_), Acc::Track { fixes }) => {
                let (Some((_, tracking)), Value::Array(fix)) = (&self.track, v) else { return };
                if let [Value::Double(lat), Value::Double(lon), Value::Double(t)] = fix.as_slice() {
                    tracking.add(fixes, Fix { lat: *lat, lon: *lon, t: *t as i64 });
                }
            }
            (kind, acc) => unreachable!("accumulator {acc:?} does not belong to {kind:?}"),
        }
    }

    /// Folds `later` (a session window that came after) into `acc`.
    pub fn merge(&self, acc: &mut Acc, later: Acc) {
        match (acc, later) {
            (Acc::Count { n }, Acc::Count { n: m }) => *n += m,
            (Acc::Sum { int, double, floating, seen }, Acc::Sum { int: i2, double: d2, floating: f2, seen: s2 }) => {
                if *floating || f2 {
                    let a = if *floating { *double } else { *int as f64 };
                    let b = if f2 { d2 } else { i2 as f64 };
                    *double = a + b;
                    *floating = true;
                } else {
                    *int = int.wrapping_add(i2);
                }
                *seen |= s2;
            }
            (Acc::Avg { sum, n }, Acc::Avg { sum: s2, n: n2 }) => {
                *sum += s2;
                *n += n2;
            }
            (Acc::Stddev { n, mean, m2 }, Acc::Stddev { n: nb, mean: mb, m2: m2b }) => {
                if nb == 0 {
                    return;
                }
                let total = *n + nb;
                let delta = mb - *mean;
                *m2 += m2b + delta * delta * (*n as f64) * (nb as f64) / total as f64;
                *mean += delta * nb as f64 / total as f64;
                *n = total;
            }
            (acc @ Acc::One(_), Acc::One(Kept(Some(v)))) => match self.kind {
                AggKind::Earliest if matches!(acc, Acc::One(Kept(Some(_)))) => {}
                _ => self.add_value(acc, &v),
            },
            (Acc::One(_), Acc::One(Kept(None))) => {}
            (acc @ Acc::Values { .. }, Acc::Values { items }) => {
                for v in items {
                    self.add_value(acc, &v);
                }
            }
            // Sessions that merge: the later one's fixes carry on from the earlier's.
            (Acc::Track { fixes }, Acc::Track { fixes: later }) => {
                if later.last_time() > fixes.last_time() {
                    *fixes = later;
                }
            }
            (acc, later) => unreachable!("cannot merge {later:?} into {acc:?}"),
        }
    }

    pub fn result(&self, acc: &Acc) -> Value {
        match acc {
            Acc::Count { n } => Value::Int(*n),
            Acc::Sum { seen: false, .. } => Value::Null,
            Acc::Sum { int, double, floating, .. } => {
                if *floating {
                    Value::Double(*double)
                } else {
                    Value::Int(*int)
                }
            }
            Acc::Avg { n: 0, .. } => Value::Null,
            Acc::Avg { sum, n } => Value::Double(sum / *n as f64),
            Acc::Stddev { n, m2, .. } if *n >= 2 => Value::Double((m2 / (*n - 1) as f64).sqrt()),
            Acc::Stddev { n: 1, .. } => Value::Double(0.0),
            Acc::Stddev { .. } => Value::Null,
            Acc::One(Kept(v)) => v.clone().unwrap_or(Value::Null),
            Acc::Values { items } if self.kind == AggKind::CountDistinct => Value::Int(items.len() as i64),
            Acc::Values { items } => Value::Array(items.clone()),
            Acc::Track { fixes } => {
                let Some((_, tracking)) = &self.track else { return Value::Null };
                match tracking.result(fixes) {
                    None => Value::Null,
                    Some(TrackValue::Number(x)) => Value::Double(x),
                    Some(TrackValue::Time(t)) => Value::Int(t),
                    Some(TrackValue::Text(t)) => Value::from(t),
                    Some(TrackValue::Bool(b)) => Value::Bool(b),
                }
            }
        }
    }
}

/// Evaluates the calls' inputs from `row` into `inputs` before any state changes, so a row
/// that fails changes nothing. Plain columns are left for `add_row` to read in place.
pub fn evaluate_inputs(calls: &[AggregateCall], row: &[Value], inputs: &mut Vec<Value>) -> Result<(), String> {
    if inputs.len() != calls.len() {
        inputs.resize(calls.len(), Value::Null);
    }
    for (call, input) in calls.iter().zip(inputs) {
        if call.shares.is_none() && call.plain_input(row).is_none() {
            *input = call.input(row)?;
        }
    }
    Ok(())
}

/// Adds one row to a window's accumulators, with the `inputs` `evaluate_inputs` gave for it.
pub fn add_row(calls: &[AggregateCall], accs: &mut [Acc], row: &[Value], inputs: &[Value]) {
    for ((call, acc), input) in calls.iter().zip(accs).zip(inputs) {
        if call.shares.is_none() {
            call.add_value(acc, call.plain_input(row).unwrap_or(input));
        }
    }
}

/// What an aggregate keeps between rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Acc {
    Count {
        n: i64,
    },
    Sum {
        int: i64,
        double: f64,
        floating: bool,
        seen: bool,
    },
    Avg {
        sum: f64,
        n: i64,
    },
    Stddev {
        n: i64,
        mean: f64,
        m2: f64,
    },
    /// MIN, MAX, LATEST_BY_OFFSET, EARLIEST_BY_OFFSET.
    One(Kept),
    /// COLLECT_LIST, COLLECT_SET, TOPK, COUNT_DISTINCT.
    Values {
        items: Vec<Value>,
    },
    /// The tracking aggregates. Boxed: it is large, and every accumulator is as large as
    /// the largest kind (windows of plain aggregates are read per record; keep them small).
    Track {
        fixes: Box<TrackState>,
    },
}

/// The value MIN, MAX, LATEST_BY_OFFSET or EARLIEST_BY_OFFSET keeps: none until a row came
/// (a kept NULL is `Some(Value::Null)`). One field, not a value and a flag, so that every
/// accumulator is 32 bytes, not 40: a window's four fit in two cache lines, and among many
/// groups each is a cache miss per record. Checkpoints keep their `v` and `set` fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "KeptFields", into = "KeptFields")]
pub struct Kept(Option<Value>);

#[derive(Serialize, Deserialize)]
struct KeptFields {
    v: Value,
    set: bool,
}

impl From<KeptFields> for Kept {
    fn from(fields: KeptFields) -> Kept {
        Kept(fields.set.then_some(fields.v))
    }
}

impl From<Kept> for KeptFields {
    fn from(Kept(kept): Kept) -> KeptFields {
        KeptFields { set: kept.is_some(), v: kept.unwrap_or(Value::Null) }
    }
}

impl Kept {
    /// What the columnar engine folded: `value` if a row came.
    pub fn new(value: Value, set: bool) -> Kept {
        Kept(set.then_some(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fold(name: &str, k: Option<i64>, values: &[Value]) -> Value {
        let call = AggregateCall::new(name, Some((Expr::Column(0), DataType::Double)), k).unwrap();
        let mut acc = call.start();
        for v in values {
            call.add(&mut acc, std::slice::from_ref(v)).unwrap();
        }
        call.result(&acc)
    }

    #[test]
    fn aggregates_match_their_definitions() {
        let xs: Vec<Value> = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0].map(Value::Double).to_vec();
        assert_eq!(fold("count", None, &xs), Value::Int(8));
        assert_eq!(fold("sum", None, &xs), Value::Double(40.0));
        assert_eq!(fold("avg", None, &xs), Value::Double(5.0));
        assert_eq!(fold("min", None, &xs), Value::Double(2.0));
        assert_eq!(fold("max", None, &xs), Value::Double(9.0));
        // Sample standard deviation of this classic set: sqrt(32 / 7).
        let Value::Double(sd) = fold("stddev_samp", None, &xs) else { panic!() };
        assert!((sd - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
        assert_eq!(fold("latest_by_offset", None, &xs), Value::Double(9.0));
        assert_eq!(fold("earliest_by_offset", None, &xs), Value::Double(2.0));
        assert_eq!(fold("topk", Some(2), &xs), Value::Array(vec![Value::Double(9.0), Value::Double(7.0)]));
        assert_eq!(fold("topkdistinct", Some(3), &xs), Value::Array([9.0, 7.0, 5.0].map(Value::Double).to_vec()));
        assert_eq!(fold("count_distinct", None, &xs), Value::Int(5));
        assert_eq!(fold("collect_set", None, &xs[..3]), Value::Array(vec![Value::Double(2.0), Value::Double(4.0)]));
        assert_eq!(fold("sum", None, &[Value::Null]), Value::Null, "SUM of only NULLs is NULL");
        assert_eq!(fold("count", None, &[Value::Null, Value::Double(1.0)]), Value::Int(1), "COUNT(col) skips NULLs");
    }

    #[test]
    fn merged_accumulators_equal_one_pass() {
        let xs: Vec<Value> = (1..=20).map(|i| Value::Double((i * i % 7) as f64)).collect();
        for name in ["count", "sum", "avg", "min", "max", "stddev_samp", "latest_by_offset", "earliest_by_offset"] {
            let call = AggregateCall::new(name, Some((Expr::Column(0), DataType::Double)), None).unwrap();
            let (mut a, mut b) = (call.start(), call.start());
            for v in &xs[..8] {
                call.add(&mut a, std::slice::from_ref(v)).unwrap();
            }
            for v in &xs[8..] {
                call.add(&mut b, std::slice::from_ref(v)).unwrap();
            }
            call.merge(&mut a, b);
            let (Value::Double(merged), Value::Double(direct)) = (call.result(&a), fold(name, None, &xs)) else {
                assert_eq!(call.result(&a), fold(name, None, &xs), "{name}");
                continue;
            };
            assert!((merged - direct).abs() < 1e-9, "{name}: {merged} vs {direct}");
        }
    }

    #[test]
    fn state_survives_a_checkpoint() {
        let acc = Acc::Sum { int: 0, double: 2.5, floating: true, seen: true };
        let text = serde_json::to_string(&acc).unwrap();
        assert_eq!(serde_json::from_str::<Acc>(&text).unwrap(), acc);
        let one = Acc::One(Kept(Some(Value::Int(3))));
        assert_eq!(serde_json::from_str::<Acc>(&serde_json::to_string(&one).unwrap()).unwrap(), one);
        // Checkpoints written before the kept value and its flag became one field still read.
        for (old, kept) in [
            (r#"{"k":"one","v":3,"set":true}"#, Acc::One(Kept(Some(Value::Int(3))))),
            (r#"{"k":"one","v":null,"set":true}"#, Acc::One(Kept(Some(Value::Null)))),
            (r#"{"k":"one","v":null,"set":false}"#, Acc::One(Kept(None))),
        ] {
            assert_eq!(serde_json::from_str::<Acc>(old).unwrap(), kept, "{old}");
            assert_eq!(serde_json::to_string(&kept).unwrap(), old);
        }
        assert_eq!(std::mem::size_of::<Acc>(), 32, "four accumulators in two cache lines");
    }
}
