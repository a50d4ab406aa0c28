//! Runs a plan over records, one at a time: decode, filter, then project or aggregate into
//! windows. Knows nothing of the log; the query runner feeds it and writes what it emits.
//!
//! Event time drives windows: stream time is the largest timestamp seen. A window closes
//! when stream time passes its end plus the grace period; EMIT FINAL emits it then, once;
//! a record for a closed window is late and rejected with the reason.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use pacer_core::Record;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use super::aggregate::Acc;
use super::ast::{Emit, WindowKind};
use super::plan::{
    first_aggregate_slot, Field, Item, Plan, Shape, FIRST_FIELD, ROWKEY, ROWOFFSET, ROWPARTITION, ROWTIME, WHOLE_VALUE,
};
use super::value::{DataType, Value};

/// Start of the single "window" of an unwindowed aggregate.
const NO_WINDOW: i64 = i64::MIN;

/// A row the query emits.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub key: Option<String>,
    /// None deletes the key from a table (a tombstone).
    pub value: Option<Map<String, Json>>,
    pub timestamp: i64,
    /// Names what caused the row, so a restart can tell rows it already wrote.
    pub id: String,
    /// The window's start, for windowed rows (tombstones have no value to say it).
    pub window: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct WindowState {
    group: Vec<Value>,
    start: i64,
    end: i64,
    accs: Vec<Acc>,
    /// Latest event time that updated the window: its rows' timestamp.
    last: i64,
}

pub struct Operator {
    plan: Arc<Plan>,
    /// By state id: group text, NUL, window start (so a group's windows sort together).
    windows: BTreeMap<String, WindowState>,
    /// (close time, state id) of open windows, earliest first.
    closing: BTreeSet<(i64, String)>,
    stream_time: i64,
    /// State ids changed or removed since the last `take_changes`.
    changed: HashSet<String>,
    whole_value: bool,
}

impl Operator {
    pub fn new(plan: Plan) -> Operator {
        let whole_value = match &plan.shape {
            Shape::Project { items, .. } | Shape::Aggregate { items, .. } => {
                items.iter().any(|i| matches!(i, Item::WholeValue))
            }
        };
        Operator {
            plan: Arc::new(plan),
            windows: BTreeMap::new(),
            closing: BTreeSet::new(),
            stream_time: i64::MIN,
            changed: HashSet::new(),
            whole_value,
        }
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn stream_time(&self) -> i64 {
        self.stream_time
    }

    /// Runs one record through; rows it causes go to `out`. An error rejects this record
    /// only (the reason goes to the dead-letter stream).
    pub fn process(&mut self, record: &Record, out: &mut Vec<Output>) -> Result<(), String> {
        let row = self.decode(record)?;
        if let Some(filter) = &self.plan.filter {
            if !filter.eval(&row)?.is_true() {
                return Ok(());
            }
        }
        let timestamp = row[ROWTIME].as_i64().unwrap_or(record.timestamp);
        let id = format!("{}:{}", record.partition, record.offset);
        match &self.plan.shape {
            Shape::Project { items, key } => {
                let key = match key {
                    Some(k) => key_text(&[k.eval(&row)?]),
                    None => record.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
                };
                let value = Some(project(items, &self.plan.output, &row)?);
                out.push(Output { key, value, timestamp, id, window: None });
            }
            Shape::Aggregate { .. } => self.aggregate(&row, timestamp, &id, out)?,
        }
        Ok(())
    }

    fn aggregate(&mut self, row: &[Value], timestamp: i64, id: &str, out: &mut Vec<Output>) -> Result<(), String> {
        let plan = self.plan.clone();
        let Shape::Aggregate { group_by, calls, window, .. } = &plan.shape else { unreachable!() };
        let close = |end: i64| close_time(*window, end);
        let group = group_by.iter().map(|g| g.eval(row)).collect::<Result<Vec<_>, _>>()?;
        let inputs = calls.iter().map(|c| c.input(row)).collect::<Result<Vec<_>, _>>()?;
        let group_text = key_text(&group).unwrap_or_default();
        let grace = window.map_or(0, |w| w.grace);
        let windows: Vec<(i64, i64)> = match window.map(|w| w.kind) {
            None => vec![(NO_WINDOW, i64::MAX)],
            Some(WindowKind::Tumbling { size }) => {
                let start = timestamp - timestamp.rem_euclid(size);
                vec![(start, start + size)]
            }
            Some(WindowKind::Hopping { size, advance }) => {
                let mut start = timestamp - timestamp.rem_euclid(advance);
                let mut starts = Vec::new();
                while start > timestamp - size {
                    starts.push((start, start + size));
                    start -= advance;
                }
                starts.reverse();
                starts
            }
            Some(WindowKind::Session { gap }) => vec![self.join_session(&group_text, timestamp, gap, out)],
        };
        let mut updated = Vec::with_capacity(windows.len());
        for (start, end) in windows {
            let state_id = format!("{group_text}\u{0}{start}");
            if start != NO_WINDOW && !self.windows.contains_key(&state_id) && close(end) <= self.stream_time {
                continue;
            }
            let state = self.windows.entry(state_id.clone()).or_insert_with(|| WindowState {
                group: group.clone(),
                start,
                end,
                accs: calls.iter().map(|c| c.start()).collect(),
                last: timestamp,
            });
            if start != NO_WINDOW && state.end != end {
                // A session grew: it closes later.
                self.closing.remove(&(close(state.end), state_id.clone()));
                state.end = end;
            }
            if start != NO_WINDOW {
                self.closing.insert((close(end), state_id.clone()));
            }
            updated.push(state_id);
        }
        if updated.is_empty() {
            return Err(format!(
                "late record: event time {timestamp} is past every window it belongs to (stream time {}, grace period {grace} ms)",
                self.stream_time
            ));
        }
        for state_id in updated {
            let state = self.windows.get_mut(&state_id).expect("created above");
            for ((call, acc), v) in calls.iter().zip(&mut state.accs).zip(&inputs) {
                call.add_value(acc, v.clone());
            }
            state.last = state.last.max(timestamp);
            self.changed.insert(state_id.clone());
            if self.plan.emit != Emit::Final {
                let state = &self.windows[&state_id];
                out.push(self.window_row(state, format!("{id}:{}", state.start))?);
            }
        }
        self.advance(timestamp, out);
        Ok(())
    }

    /// The session a record at `timestamp` belongs to: sessions of its group within `gap` of
    /// it merge into one (earliest first); removed ones are deleted from the table.
    fn join_session(&mut self, group_text: &str, timestamp: i64, gap: i64, out: &mut Vec<Output>) -> (i64, i64) {
        let plan = self.plan.clone();
        let Shape::Aggregate { calls, window, .. } = &plan.shape else { unreachable!() };
        let close = |end: i64| close_time(*window, end);
        let prefix = format!("{group_text}\u{0}");
        let touching: Vec<String> = self
            .windows
            .range(prefix.clone()..)
            .take_while(|(id, _)| id.starts_with(&prefix))
            .filter(|(_, s)| s.start - gap <= timestamp && timestamp <= s.end + gap)
            .map(|(id, _)| id.clone())
            .collect();
        let mut sessions: Vec<WindowState> = Vec::new();
        for id in &touching {
            let state = self.windows.remove(id).expect("listed above");
            self.closing.remove(&(close(state.end), id.clone()));
            self.changed.insert(id.clone());
            sessions.push(state);
        }
        sessions.sort_by_key(|s| s.start);
        let (mut start, mut end) = (timestamp, timestamp);
        let mut merged: Option<WindowState> = None;
        for session in sessions {
            start = start.min(session.start);
            end = end.max(session.end);
            if self.plan.emit != Emit::Final {
                out.push(Output {
                    key: key_text(&session.group),
                    value: None,
                    timestamp: session.last,
                    id: format!("{}@{}-", group_text, session.start),
                    window: Some(session.start),
                });
            }
            match &mut merged {
                None => merged = Some(session),
                Some(m) => {
                    for ((call, acc), later) in calls.iter().zip(&mut m.accs).zip(session.accs) {
                        call.merge(acc, later);
                    }
                    m.last = m.last.max(session.last);
                }
            }
        }
        if let Some(mut m) = merged {
            m.start = start;
            m.end = end;
            let id = format!("{group_text}\u{0}{start}");
            self.changed.insert(id.clone());
            self.closing.insert((close(end), id.clone()));
            self.windows.insert(id, m);
        }
        (start, end)
    }

    /// Moves stream time to `t` (never back), closing windows whose end plus grace passed:
    /// EMIT FINAL rows come out here.
    pub fn advance(&mut self, t: i64, out: &mut Vec<Output>) {
        if t <= self.stream_time {
            return;
        }
        self.stream_time = t;
        while let Some((close, _)) = self.closing.first() {
            if *close > t {
                break;
            }
            let (_, state_id) = self.closing.pop_first().expect("peeked");
            let Some(state) = self.windows.remove(&state_id) else { continue };
            self.changed.insert(state_id.clone());
            if self.plan.emit == Emit::Final {
                let id = format!("{}@{}", key_text(&state.group).unwrap_or_default(), state.start);
                match self.window_row(&state, id) {
                    Ok(row) => out.push(row),
                    Err(e) => tracing::warn!(error = %e, "a closed window's row could not be computed"),
                }
            }
        }
    }

    /// The row of one window (or group): HAVING decides between the row and a tombstone.
    fn window_row(&self, state: &WindowState, id: String) -> Result<Output, String> {
        let Shape::Aggregate { calls, having, items, group_by, .. } = &self.plan.shape else { unreachable!() };
        let mut row = state.group.clone();
        let (start, end) = if state.start == NO_WINDOW {
            (Value::Null, Value::Null)
        } else {
            (Value::Int(state.start), Value::Int(state.end))
        };
        row.push(start);
        row.push(end);
        debug_assert_eq!(row.len(), first_aggregate_slot(group_by.len()));
        row.extend(calls.iter().zip(&state.accs).map(|(c, a)| c.result(a)));
        let key = key_text(&state.group);
        let keep = match having {
            Some(h) => h.eval(&row)?.is_true(),
            None => true,
        };
        let value = if keep { Some(project(items, &self.plan.output, &row)?) } else { None };
        let window = (state.start != NO_WINDOW).then_some(state.start);
        Ok(Output { key, value, timestamp: state.last, id, window })
    }

    /// State changed since the last call, for a checkpoint: (state id, JSON or None when
    /// the window is gone).
    pub fn take_changes(&mut self) -> Vec<(String, Option<String>)> {
        let mut changes: Vec<(String, Option<String>)> = self
            .changed
            .drain()
            .map(|id| {
                let json = self.windows.get(&id).map(|s| serde_json::to_string(s).expect("window state serializes"));
                (id, json)
            })
            .collect();
        changes.sort();
        changes
    }

    /// Puts checkpointed state back.
    pub fn restore(&mut self, state_id: String, json: Option<&str>, stream_time: i64) -> Result<(), String> {
        self.stream_time = self.stream_time.max(stream_time);
        self.closing.retain(|(_, id)| *id != state_id);
        match json {
            None => {
                self.windows.remove(&state_id);
            }
            Some(json) => {
                let state: WindowState = serde_json::from_str(json).map_err(|e| format!("checkpointed state: {e}"))?;
                if state.start != NO_WINDOW {
                    let window = match &self.plan.shape {
                        Shape::Aggregate { window, .. } => *window,
                        Shape::Project { .. } => None,
                    };
                    self.closing.insert((close_time(window, state.end), state_id.clone()));
                }
                self.windows.insert(state_id, state);
            }
        }
        Ok(())
    }

    /// Turns a record into a row: pseudo columns, then the plan's fields with their types.
    fn decode(&self, record: &Record) -> Result<Vec<Value>, String> {
        let mut row = vec![Value::Null; FIRST_FIELD + self.plan.fields.len()];
        row[ROWTIME] = Value::Int(record.timestamp);
        let key = record.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned());
        row[ROWKEY] = key.clone().map_or(Value::Null, Value::String);
        row[ROWPARTITION] = Value::Int(record.partition as i64);
        row[ROWOFFSET] = Value::Int(record.offset as i64);
        let needs_value = self.whole_value || self.plan.fields.iter().any(|f| !f.key);
        let object = if needs_value {
            match serde_json::from_slice::<Json>(&record.value) {
                Ok(Json::Object(map)) => map,
                Ok(other) => return Err(format!("value is not a JSON object: {}", truncate(&other.to_string()))),
                Err(e) => {
                    return Err(format!(
                        "value is not JSON ({e}): {}",
                        truncate(&String::from_utf8_lossy(&record.value))
                    ))
                }
            }
        } else {
            Map::new()
        };
        for (i, field) in self.plan.fields.iter().enumerate() {
            row[FIRST_FIELD + i] = if field.key {
                match &key {
                    Some(k) => coerce(&Json::String(k.clone()), field)?,
                    None => Value::Null,
                }
            } else {
                let raw = object
                    .get(&field.name)
                    .or_else(|| object.iter().find(|(k, _)| k.eq_ignore_ascii_case(&field.name)).map(|(_, v)| v));
                raw.map_or(Ok(Value::Null), |raw| coerce(raw, field))?
            };
        }
        if let Some(t) = self.plan.timestamp_field {
            match &row[FIRST_FIELD + t] {
                Value::Int(ms) => row[ROWTIME] = Value::Int(*ms),
                Value::String(s) => {
                    row[ROWTIME] = Value::Int(
                        pacer_core::parse_time(s)
                            .map_err(|e| format!("timestamp column {}: {e}", self.plan.fields[t].name))?,
                    )
                }
                Value::Null => return Err(format!("timestamp column {} is missing", self.plan.fields[t].name)),
                other => return Err(format!("timestamp column {}: {other} is not a time", self.plan.fields[t].name)),
            }
        }
        if self.whole_value {
            row[WHOLE_VALUE] = Value::from_json(&Json::Object(object));
        }
        Ok(row)
    }
}

/// When a window ending at `end` stops taking records: its end plus the grace period, and
/// for sessions also the gap (a record that close would still extend it).
fn close_time(window: Option<super::ast::Window>, end: i64) -> i64 {
    match window {
        Some(w) => {
            let gap = match w.kind {
                WindowKind::Session { gap } => gap,
                _ => 0,
            };
            end.saturating_add(gap).saturating_add(w.grace)
        }
        None => i64::MAX,
    }
}

/// A JSON field as the declared type; a mismatch rejects the record, as ksqlDB's JSON
/// deserializer does.
fn coerce(raw: &Json, field: &Field) -> Result<Value, String> {
    let mismatch =
        || Err(format!("field {}: expected {}, got {}", field.name, field.data_type, truncate(&raw.to_string())));
    Ok(match (&field.data_type, raw) {
        (_, Json::Null) => Value::Null,
        (DataType::Any | DataType::Array(_) | DataType::Map(_) | DataType::Struct(_), _) => Value::from_json(raw),
        (DataType::Double | DataType::Decimal(..), Json::Number(n)) => Value::Double(n.as_f64().unwrap_or(f64::NAN)),
        (DataType::Double | DataType::Decimal(..), Json::String(s)) => match s.trim().parse() {
            Ok(d) => Value::Double(d),
            Err(_) => return mismatch(),
        },
        (DataType::Int | DataType::BigInt | DataType::Timestamp, Json::Number(n)) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => match n.as_f64() {
                Some(d) if d.fract() == 0.0 => Value::Int(d as i64),
                _ => return mismatch(),
            },
        },
        (DataType::Int | DataType::BigInt, Json::String(s)) => match s.trim().parse() {
            Ok(i) => Value::Int(i),
            Err(_) => return mismatch(),
        },
        (DataType::Timestamp, Json::String(s)) => match pacer_core::parse_time(s) {
            Ok(ms) => Value::Int(ms),
            Err(_) => return mismatch(),
        },
        (DataType::String | DataType::Bytes, Json::String(s)) => Value::String(s.clone()),
        (DataType::String, Json::Number(_) | Json::Bool(_)) => Value::String(raw.to_string()),
        (DataType::Boolean, Json::Bool(b)) => Value::Bool(*b),
        (DataType::Boolean, Json::String(s)) if s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false") => {
            Value::Bool(s.eq_ignore_ascii_case("true"))
        }
        _ => return mismatch(),
    })
}

fn project(items: &[Item], output: &[super::plan::Column], row: &[Value]) -> Result<Map<String, Json>, String> {
    let mut map = Map::new();
    for (item, column) in items.iter().zip(output) {
        match item {
            Item::Expr(e) => {
                map.insert(column.name.clone(), e.eval(row)?.to_json());
            }
            Item::WholeValue => {
                if let Value::Map(fields) = &row[WHOLE_VALUE] {
                    for (k, v) in fields {
                        map.insert(k.clone(), v.to_json());
                    }
                }
            }
        }
    }
    Ok(map)
}

/// The record key for grouped values: one value as its text, several as a JSON array.
pub fn key_text(values: &[Value]) -> Option<String> {
    match values {
        [] => None,
        [Value::Null] => None,
        [one] => Some(one.to_string()),
        many => Some(Json::Array(many.iter().map(Value::to_json).collect()).to_string()),
    }
}

fn truncate(s: &str) -> String {
    if s.len() <= 200 {
        return s.to_string();
    }
    let mut end = 200;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ast::{SourceKind, Statement};
    use crate::engine::parse::parse;
    use crate::engine::plan::{plan, Column, Source};
    use bytes::Bytes;

    fn operator(sql: &str) -> Operator {
        let Statement::Select(select) = parse(sql).unwrap().pop().unwrap() else { panic!() };
        let columns = [("who", DataType::String), ("speed", DataType::Double)]
            .into_iter()
            .map(|(n, t)| Column { name: n.into(), data_type: t, key: false })
            .collect();
        let source = Source {
            name: "s".into(),
            kind: SourceKind::Stream,
            topic: "s".into(),
            columns,
            timestamp: None,
            windowed: false,
        };
        Operator::new(plan(&select, &source).unwrap())
    }

    fn record(offset: u64, t: i64, who: &str, speed: f64) -> Record {
        let value = serde_json::json!({"who": who, "speed": speed}).to_string();
        Record {
            partition: 0,
            offset,
            timestamp: t,
            key: Some(Bytes::from(who.to_string())),
            value: Bytes::from(value),
            headers: vec![],
        }
    }

    #[test]
    fn tumbling_windows_emit_final_once_after_grace() {
        let mut op = operator(
            "SELECT who, COUNT(*) AS n, MAX(speed) AS top FROM s WINDOW TUMBLING (SIZE 10 SECONDS, GRACE PERIOD 2 SECONDS) GROUP BY who EMIT FINAL",
        );
        let mut out = Vec::new();
        for (i, (t, who, speed)) in
            [(1_000, "a", 5.0), (4_000, "b", 7.0), (9_000, "a", 6.0), (10_500, "a", 1.0), (11_000, "b", 2.0)]
                .iter()
                .enumerate()
        {
            op.process(&record(i as u64, *t, who, *speed), &mut out).unwrap();
        }
        assert!(out.is_empty(), "nothing closed yet: {out:?}");
        // Within the grace period a late record still counts.
        op.process(&record(5, 9_500, "b", 9.0), &mut out).unwrap();
        op.process(&record(6, 12_000, "a", 1.0), &mut out).unwrap();
        let rows: Vec<_> = out.iter().map(|o| (o.key.clone().unwrap(), o.value.clone().unwrap())).collect();
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(rows[0].1["n"], 2);
        assert_eq!(rows[0].1["top"], 6.0);
        assert_eq!(rows[0].1["WINDOWSTART"], 0);
        assert_eq!(rows[0].1["WINDOWEND"], 10_000);
        assert_eq!((rows[1].0.as_str(), rows[1].1["n"].clone(), rows[1].1["top"].clone()), ("b", 2.into(), 9.0.into()));
        // Past the grace period: rejected with the reason, nothing emitted twice.
        let late = op.process(&record(7, 9_900, "a", 3.0), &mut out).unwrap_err();
        assert!(late.starts_with("late record"), "{late}");
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn hopping_windows_and_changes() {
        let mut op = operator("SELECT who, COUNT(*) AS n FROM s WINDOW HOPPING (SIZE 60 SECONDS, ADVANCE BY 30 SECONDS) GROUP BY who EMIT CHANGES");
        let mut out = Vec::new();
        op.process(&record(0, 45_000, "a", 1.0), &mut out).unwrap();
        let starts: Vec<_> = out.iter().map(|o| o.value.as_ref().unwrap()["WINDOWSTART"].clone()).collect();
        assert_eq!(starts, [Json::from(0), Json::from(30_000)], "a record at 45 s is in [0, 60) and [30, 90)");
    }

    #[test]
    fn session_windows_merge_when_a_record_bridges_them() {
        let mut op = operator("SELECT who, COUNT(*) AS n, SUM(speed) AS total FROM s WINDOW SESSION (30 SECONDS) GROUP BY who EMIT CHANGES");
        let mut out = Vec::new();
        for (i, t) in [0, 10_000, 100_000, 75_000, 45_000].iter().enumerate() {
            op.process(&record(i as u64, *t, "a", 1.0), &mut out).unwrap();
        }
        // The table as a reader folds it: latest row per window start, tombstones delete.
        let fold = |out: &[Output]| {
            let mut table = std::collections::BTreeMap::new();
            for o in out {
                match &o.value {
                    Some(v) => table.insert(o.window.unwrap(), (v["n"].clone(), v["WINDOWEND"].clone())),
                    None => table.remove(&o.window.unwrap()),
                };
            }
            table
        };
        assert_eq!(
            fold(&out),
            [(0, (Json::from(2), Json::from(10_000))), (45_000, (Json::from(3), Json::from(100_000)))].into(),
            "[0, 10 s] and [45 s, 100 s] stay apart: 35 s between them"
        );
        op.process(&record(5, 40_000, "a", 1.0), &mut out).unwrap();
        assert_eq!(fold(&out), [(0, (Json::from(6), Json::from(100_000)))].into(), "40 s is within 30 s of both");
        assert_eq!(out.last().unwrap().value.as_ref().unwrap()["total"], 6.0);
    }

    #[test]
    fn bad_records_are_rejected_with_a_reason_and_change_nothing() {
        let mut op = operator("SELECT who, SUM(speed) AS total FROM s GROUP BY who");
        let mut out = Vec::new();
        op.process(&record(0, 1, "a", 2.0), &mut out).unwrap();
        let bad = Record { value: Bytes::from(r#"{"who":"a","speed":"fast"}"#), ..record(1, 2, "a", 0.0) };
        let e = op.process(&bad, &mut out).unwrap_err();
        assert_eq!(e, r#"field speed: expected DOUBLE, got "fast""#);
        let e = op.process(&Record { value: Bytes::from("{nope"), ..record(2, 3, "a", 0.0) }, &mut out).unwrap_err();
        assert!(e.starts_with("value is not JSON"), "{e}");
        op.process(&record(3, 4, "a", 3.0), &mut out).unwrap();
        assert_eq!(out.last().unwrap().value.as_ref().unwrap()["total"], 5.0);
    }

    #[test]
    fn state_restores_from_its_changes() {
        let sql = "SELECT who, AVG(speed) AS avg FROM s WINDOW TUMBLING (SIZE 10 SECONDS, GRACE PERIOD 0 SECONDS) GROUP BY who EMIT FINAL";
        let mut first = operator(sql);
        let mut out = Vec::new();
        first.process(&record(0, 1_000, "a", 2.0), &mut out).unwrap();
        first.process(&record(1, 2_000, "a", 4.0), &mut out).unwrap();
        let mut second = operator(sql);
        for (id, json) in first.take_changes() {
            second.restore(id, json.as_deref(), first.stream_time()).unwrap();
        }
        second.process(&record(2, 10_000, "b", 1.0), &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].value.as_ref().unwrap()["avg"], 3.0);
        assert_eq!(out[0].id, "a@0");
    }
}
