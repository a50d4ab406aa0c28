//! Runs a plan over records, one at a time: decode, filter, then project or aggregate into
//! windows. Knows nothing of the log; the query runner feeds it and writes what it emits.
//!
//! Event time drives windows: stream time is the largest timestamp seen. A window closes
//! when stream time passes its end plus the grace period; EMIT FINAL emits it then, once;
//! a record for a closed window is late and rejected with the reason.
//!
//! Built for one record at a time at millions per second: JSON values are decoded straight
//! into the row's slots (only the fields the query reads), windows are found by group
//! without allocating, and state is marked dirty rather than copied per record.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use compact_str::CompactString;
use foldhash::fast::RandomState;
use smallvec::SmallVec;
use std::fmt;

use pacer_core::Record;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use super::aggregate::{add_row, evaluate_inputs, Acc, AggregateCall};
use super::ast::{Emit, Window, WindowKind};
use super::decode::{coerce, decode_fields, not_json, truncate, Raw};
use super::expr::Expr;
use super::pair_join::{PairState, PAIR_HEADER};
use super::plan::{
    first_aggregate_slot, Column, GroupOrder, Item, OverKind, Plan, Shape, FIRST_FIELD, ROWKEY, ROWOFFSET,
    ROWPARTITION, ROWTIME, WHOLE_VALUE,
};
use super::value::Value;

/// A record's group: one string column of the row, or computed values.
enum Group {
    Column(usize),
    Values(Vec<Value>),
}

/// Start of the single "window" of an unwindowed aggregate.
const NO_WINDOW: i64 = i64::MIN;
/// How a join's held rows are named among the checkpointed state.
const PAIR_STATE: &str = "\u{2}pair:";

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
    /// Its window functions' values, as last emitted.
    #[serde(default)]
    over: Vec<Value>,
    /// Changed since the last checkpoint (and listed in `Operator::changed`).
    #[serde(skip)]
    dirty: bool,
}

type Windows = SmallVec<[WindowState; 1]>;

pub struct Operator {
    plan: Plan,
    state: State,
}

/// What an operator keeps between records. Apart from the plan so that the plan is
/// borrowed, not reference-counted, for every record.
struct State {
    /// Open windows by group text; a group has only a few at a time. Short names and a
    /// group's first window are kept in the table itself: each is a cache miss less per
    /// record among many groups.
    groups: HashMap<CompactString, Windows, RandomState>,
    /// (close time, group, start) of open windows, earliest first.
    closing: BTreeSet<(i64, Box<str>, i64)>,
    stream_time: i64,
    /// Windows changed or removed since the last `take_changes`.
    changed: Vec<(Box<str>, i64)>,
    whole_value: bool,
    /// Reused for every record.
    row: Vec<Value>,
    inputs: Vec<Value>,
    /// Which fields the record being decoded set.
    filled: Vec<bool>,
    /// The groups of each window in the order of each OVER clause, by (order, window
    /// start); built when first needed, and again after a restore.
    rankings: HashMap<(usize, i64), Ranking>,
    /// A join of two inputs: what each side holds.
    pair: Option<PairState>,
}

/// The groups of one window in one OVER clause's order.
#[derive(Default)]
struct Ranking {
    /// By PARTITION BY value: the groups in order.
    partitions: HashMap<String, Vec<Ranked>>,
    /// Each group's partition and sort key.
    placed: HashMap<Box<str>, (String, Vec<Value>)>,
}

impl Operator {
    pub fn new(plan: Plan) -> Operator {
        let whole_value = match &plan.shape {
            Shape::Project { items, .. } | Shape::Aggregate { items, .. } => {
                items.iter().any(|i| matches!(i, Item::WholeValue))
            }
        };
        let keyed = match &plan.shape {
            Shape::Project { keyed, .. } => keyed.len(),
            Shape::Aggregate { .. } => 0,
        };
        let pair = plan.pair.clone().map(PairState::new);
        let state = State {
            row: vec![Value::Null; FIRST_FIELD + plan.fields.len() + keyed],
            groups: HashMap::default(),
            closing: BTreeSet::new(),
            stream_time: i64::MIN,
            changed: Vec::new(),
            whole_value,
            inputs: Vec::new(),
            filled: Vec::new(),
            rankings: HashMap::new(),
            pair,
        };
        Operator { plan, state }
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn stream_time(&self) -> i64 {
        self.state.stream_time()
    }

    /// Runs one record through; rows it causes go to `out`. An error rejects this record
    /// only (the reason goes to the dead-letter stream).
    pub fn process(&mut self, record: &Record, out: &mut Vec<Output>) -> Result<(), String> {
        self.state.process(&self.plan, record, out)
    }

    /// A record's event time and the text of the group it falls in (`None` when the query's
    /// WHERE leaves it out), without aggregating it: what a node needs to send each group's
    /// records to the one place that aggregates them.
    pub fn group_of(&mut self, record: &Record) -> Result<(i64, Option<String>), String> {
        self.state.group_of(&self.plan, record)
    }

    /// Moves stream time to `t` (never back), closing windows whose end plus grace passed:
    /// EMIT FINAL rows come out here.
    pub fn advance(&mut self, t: i64, out: &mut Vec<Output>) {
        self.state.advance(&self.plan, t, out)
    }

    /// The end of a bounded input (a pull query): every window and group still open emits
    /// its row, by window start and then group.
    pub fn finish(&mut self, out: &mut Vec<Output>) {
        self.state.finish(&self.plan, out)
    }

    /// State changed since the last call, for a checkpoint: (state id, JSON or None when
    /// the window is gone).
    pub fn take_changes(&mut self) -> Vec<(String, Option<String>)> {
        self.state.take_changes()
    }

    /// How many state entries a snapshot would hold.
    pub fn state_len(&self) -> usize {
        self.state.state_len()
    }

    /// Every state entry, and what went since the last checkpoint: a checkpoint that stands
    /// on its own, so what its stream held before it may go.
    pub fn snapshot(&mut self) -> Vec<(String, Option<String>)> {
        self.state.snapshot()
    }

    /// Puts checkpointed state back.
    pub fn restore(&mut self, state_id: String, json: Option<&str>, stream_time: i64) -> Result<(), String> {
        self.state.restore(&self.plan, state_id, json, stream_time)
    }
}

impl State {
    fn stream_time(&self) -> i64 {
        self.pair.as_ref().map_or(self.stream_time, |p| p.stream_time().max(self.stream_time))
    }

    fn process(&mut self, plan: &Plan, record: &Record, out: &mut Vec<Output>) -> Result<(), String> {
        if let Some(pair) = &mut self.pair {
            let joined = pair.process(record)?;
            return self.process_pairs(plan, joined, out);
        }
        if let Some(lookup) = &plan.lookup {
            // A stream–table join: the record with its tables' rows, or nothing (inner join,
            // no row for its key).
            return match lookup.join(record)? {
                Some(joined) => self.process_joined(plan, &joined, out),
                None => Ok(()),
            };
        }
        self.process_joined(plan, record, out)
    }

    /// Runs a two-input join's records through. An empty value is a table join's tombstone,
    /// and so is a table join's row the query filters out: the key no longer joins.
    fn process_pairs(&mut self, plan: &Plan, joined: Vec<Record>, out: &mut Vec<Output>) -> Result<(), String> {
        let tables = plan.pair.as_ref().is_some_and(|p| p.within.is_none());
        let mut failed = None;
        for record in joined {
            let before = out.len();
            if !record.value.is_empty() {
                if let Err(e) = self.process_joined(plan, &record, out) {
                    failed.get_or_insert(e);
                    continue;
                }
            }
            if record.value.is_empty() || (tables && out.len() == before) {
                out.push(Output {
                    key: record.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
                    value: None,
                    timestamp: record.timestamp,
                    id: Cause(&record).to_string(),
                    window: None,
                });
            }
        }
        failed.map_or(Ok(()), Err)
    }

    fn group_of(&mut self, plan: &Plan, record: &Record) -> Result<(i64, Option<String>), String> {
        self.with_row(|op, row, filled| op.group_of_row(plan, record, row, filled))
    }

    /// Runs `f` with the operator's reusable row buffers, lent out so `f` may borrow the
    /// operator mutably too.
    fn with_row<T>(&mut self, f: impl FnOnce(&mut Self, &mut [Value], &mut Vec<bool>) -> T) -> T {
        let mut row = std::mem::take(&mut self.row);
        let mut filled = std::mem::take(&mut self.filled);
        let result = f(self, &mut row, &mut filled);
        self.row = row;
        self.filled = filled;
        result
    }

    fn group_of_row(
        &self,
        plan: &Plan,
        record: &Record,
        row: &mut [Value],
        filled: &mut Vec<bool>,
    ) -> Result<(i64, Option<String>), String> {
        self.decode(plan, record, row, filled)?;
        let time = row[ROWTIME].as_i64().unwrap_or(record.timestamp);
        if let Some(filter) = &plan.filter {
            if !filter.eval(row)?.is_true() {
                return Ok((time, None));
            }
        }
        let group = match &plan.shape {
            Shape::Aggregate { group_by, .. } => {
                let values = group_by.iter().map(|g| g.eval(row)).collect::<Result<Vec<_>, _>>()?;
                key_text(&values).unwrap_or_default()
            }
            Shape::Project { .. } => String::new(),
        };
        Ok((time, Some(group)))
    }

    fn process_joined(&mut self, plan: &Plan, record: &Record, out: &mut Vec<Output>) -> Result<(), String> {
        self.with_row(|op, row, filled| op.process_row(plan, record, row, filled, out))
    }

    fn process_row(
        &mut self,
        plan: &Plan,
        record: &Record,
        row: &mut [Value],
        filled: &mut Vec<bool>,
        out: &mut Vec<Output>,
    ) -> Result<(), String> {
        self.decode(plan, record, row, filled)?;
        if let Some(filter) = &plan.filter {
            if !filter.eval(row)?.is_true() {
                return Ok(());
            }
        }
        let timestamp = row[ROWTIME].as_i64().unwrap_or(record.timestamp);
        match &plan.shape {
            Shape::Project { items, key, keyed, after } => {
                if !keyed.is_empty() {
                    self.track_by_key(record, row, keyed, timestamp)?;
                    if let Some(after) = after {
                        if !after.eval(row)?.is_true() {
                            return Ok(());
                        }
                    }
                }
                let key = match key {
                    Some(k) => key_text(&[k.eval(row)?]),
                    None => record.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
                };
                let value = Some(project(items, &plan.output, row)?);
                let id = Cause(record).to_string();
                out.push(Output { key, value, timestamp, id, window: None });
            }
            Shape::Aggregate { .. } => self.aggregate(plan, record, row, timestamp, out)?,
        }
        Ok(())
    }

    fn aggregate(
        &mut self,
        plan: &Plan,
        record: &Record,
        row: &[Value],
        timestamp: i64,
        out: &mut Vec<Output>,
    ) -> Result<(), String> {
        let Shape::Aggregate { group_by, calls, window, over, .. } = &plan.shape else { unreachable!() };
        evaluate_inputs(calls, row, &mut self.inputs)?;
        // The group's text without allocating when it is one string column (the usual
        // GROUP BY device); its values are only copied when a window opens.
        let (group, owned_text) = match group_by.as_slice() {
            [Expr::Column(slot)] if matches!(row[*slot], Value::String(_)) => (Group::Column(*slot), None),
            _ => {
                let values = group_by.iter().map(|g| g.eval(row)).collect::<Result<Vec<_>, _>>()?;
                let text = key_text(&values).unwrap_or_default();
                (Group::Values(values), Some(text))
            }
        };
        let text: &str = match (&group, &owned_text) {
            (Group::Column(slot), _) => row[*slot].as_str().expect("checked above"),
            (_, Some(t)) => t,
            _ => unreachable!(),
        };
        let grace = window.map_or(0, |w| w.grace);
        let close = |end: i64| close_time(*window, end);
        // Most records fall in one window: keep that case off the heap.
        let one: [(i64, i64); 1];
        let hops: Vec<(i64, i64)>;
        let spans: &[(i64, i64)] = match window.map(|w| w.kind) {
            None => {
                one = [(NO_WINDOW, i64::MAX)];
                &one
            }
            Some(WindowKind::Tumbling { size }) => {
                let start = timestamp - timestamp.rem_euclid(size);
                one = [(start, start + size)];
                &one
            }
            Some(WindowKind::Hopping { size, advance }) => {
                let mut start = timestamp - timestamp.rem_euclid(advance);
                let mut starts = Vec::new();
                while start > timestamp - size {
                    starts.push((start, start + size));
                    start -= advance;
                }
                starts.reverse();
                hops = starts;
                &hops
            }
            Some(WindowKind::Session { gap }) => {
                one = [self.join_session(plan, text, timestamp, gap, out)];
                &one
            }
        };
        let mut accepted = false;
        // Windows of a hopping window that had closed when the record came.
        let mut missed: Vec<i64> = Vec::new();
        for &(start, end) in spans {
            let windows = match self.groups.get_mut(text) {
                Some(w) => w,
                None => self.groups.entry(CompactString::from(text)).or_default(),
            };
            let i = match windows.iter().position(|w| w.start == start) {
                Some(i) => i,
                None => {
                    if start != NO_WINDOW && close(end) <= self.stream_time {
                        missed.push(start);
                        continue;
                    }
                    let accs = calls.iter().map(|c| c.start()).collect();
                    let values = match &group {
                        Group::Column(slot) => vec![row[*slot].clone()],
                        Group::Values(values) => values.clone(),
                    };
                    let over = vec![Value::Null; over.len()];
                    windows.push(WindowState { group: values, start, end, accs, last: timestamp, over, dirty: false });
                    if start != NO_WINDOW {
                        self.closing.insert((close(end), Box::from(text), start));
                    }
                    windows.len() - 1
                }
            };
            accepted = true;
            let state = &mut windows[i];
            add_row(calls, &mut state.accs, row, &self.inputs);
            state.last = state.last.max(timestamp);
            if !state.dirty {
                state.dirty = true;
                self.changed.push((Box::from(text), start));
            }
            if over.is_empty() && plan.emit == Emit::Final {
                // Nothing to say about this record until the window closes.
                continue;
            }
            let cause = format!("{}:{start}", Cause(record));
            let reranked = if over.is_empty() { Vec::new() } else { self.rerank(plan, text, start, &cause, timestamp) };
            if plan.emit != Emit::Final {
                let state = self.window(text, start).expect("updated above");
                out.push(window_row(plan, state, cause)?);
                out.extend(reranked);
            }
        }
        if !accepted {
            if self.groups.get(text).is_some_and(|w| w.is_empty()) {
                self.groups.remove(text);
            }
            return Err(format!(
                "late record: event time {timestamp} is past every window it belongs to (stream time {}, grace period {grace} ms)",
                self.stream_time
            ));
        }
        self.advance(plan, timestamp, out);
        if !missed.is_empty() {
            // Counted where it could be, and said where it could not: nothing goes unnoticed.
            let starts: Vec<String> = missed.iter().map(i64::to_string).collect();
            return Err(format!(
                "late record for the windows starting at {}: event time {timestamp} is past their end and grace \
                 period ({grace} ms; stream time {}); counted in its later windows",
                starts.join(", "),
                self.stream_time
            ));
        }
        Ok(())
    }

    /// Feeds the record to the tracking functions of its key and puts their values in the
    /// row after the decoded fields. Kept like an unwindowed group, so checkpoints and
    /// restores treat both alike.
    fn track_by_key(
        &mut self,
        record: &Record,
        row: &mut [Value],
        calls: &[AggregateCall],
        t: i64,
    ) -> Result<(), String> {
        evaluate_inputs(calls, row, &mut self.inputs)?;
        let key = record.key.as_ref().map(|k| String::from_utf8_lossy(k)).unwrap_or_default();
        let windows = self.groups.entry(CompactString::from(&*key)).or_default();
        if windows.is_empty() {
            let accs = calls.iter().map(|c| c.start()).collect();
            let group = vec![Value::String(key.to_string())];
            windows.push(WindowState {
                group,
                start: NO_WINDOW,
                end: i64::MAX,
                accs,
                last: t,
                over: Vec::new(),
                dirty: false,
            });
        }
        let state = &mut windows[0];
        let first = row.len() - calls.len();
        add_row(calls, &mut state.accs, row, &self.inputs);
        for (i, call) in calls.iter().enumerate() {
            row[first + i] = call.result(&state.accs[call.shares.unwrap_or(i)]);
        }
        state.last = state.last.max(t);
        if !state.dirty {
            state.dirty = true;
            self.changed.push((Box::from(&*key), NO_WINDOW));
        }
        Ok(())
    }

    fn window(&self, group: &str, start: i64) -> Option<&WindowState> {
        self.groups.get(group)?.iter().find(|w| w.start == start)
    }

    /// Places `group` anew in every OVER order of its window and recomputes the window
    /// functions of the partitions that changed. Returns the rows of other groups whose
    /// values changed (the runners it passed), caused by the same record.
    fn rerank(&mut self, plan: &Plan, group: &str, start: i64, cause: &str, timestamp: i64) -> Vec<Output> {
        let Shape::Aggregate { over, orders, .. } = &plan.shape else { unreachable!() };
        // (order, partition, first and last index whose window values may have changed)
        let mut affected: Vec<(usize, String, usize, usize)> = Vec::new();
        for (o, order) in orders.iter().enumerate() {
            let mut fresh = false;
            if !self.rankings.contains_key(&(o, start)) {
                let mut ranking = Ranking::default();
                for (name, windows) in &self.groups {
                    if let Some(state) = windows.iter().find(|w| w.start == start) {
                        ranking.place(order, name, placement(plan, order, state));
                    }
                }
                self.rankings.insert((o, start), ranking);
                fresh = true;
            }
            let Some(state) = self.window(group, start) else { return Vec::new() };
            let (partition, key) = placement(plan, order, state);
            let ranking = self.rankings.get_mut(&(o, start)).expect("built above");
            let old = ranking.remove(order, group);
            let at = ranking.place(order, group, (partition.clone(), key.clone()));
            let entries = &ranking.partitions[&partition];
            let len = entries.len();
            let (mut lo, mut hi) = match &old {
                _ if fresh => (0, len - 1),
                Some((p, _, _)) if *p != partition => {
                    let left = ranking.partitions.get(p).map_or(0, Vec::len);
                    if left > 0 {
                        affected.push((o, p.clone(), 0, left - 1));
                    }
                    (at, len - 1)
                }
                Some((_, was, _)) => (at.min(*was), at.max(*was)),
                None => (at, len - 1),
            };
            // Groups tied with its old or new key rank against it too.
            let tied_with_it = |k: &[Value]| {
                compare_keys(order, k, &key).is_eq()
                    || old.as_ref().is_some_and(|(_, _, was)| compare_keys(order, k, was).is_eq())
            };
            while lo > 0 && tied_with_it(&entries[lo - 1].0) {
                lo -= 1;
            }
            while hi + 1 < len && tied_with_it(&entries[hi + 1].0) {
                hi += 1;
            }
            // The leader's values are everyone's FIRST_VALUE; DENSE_RANK counts from the top.
            let leader_moved =
                lo == 0 && over.iter().any(|c| c.order == o && matches!(c.kind, OverKind::FirstValue(_)));
            let dense = over.iter().any(|c| c.order == o && matches!(c.kind, OverKind::DenseRank));
            let hi = if leader_moved || dense { len - 1 } else { hi };
            affected.push((o, partition, lo, hi));
        }
        let mut changed: Vec<Box<str>> = Vec::new();
        for (o, partition, lo, hi) in affected {
            let order = &orders[o];
            let Some(entries) = self.rankings.get(&(o, start)).and_then(|r| r.partitions.get(&partition)) else {
                continue;
            };
            let leader = entries
                .first()
                .and_then(|(_, g)| self.groups.get(&**g))
                .and_then(|w| w.iter().find(|w| w.start == start));
            let leader = leader.map(|s| base_row(plan, s));
            // FIRST_VALUE is the same for every group: computed once.
            let calls: Vec<(usize, &OverKind, Value)> = over
                .iter()
                .enumerate()
                .filter(|(_, c)| c.order == o)
                .map(|(c, call)| {
                    let first = match (&call.kind, &leader) {
                        (OverKind::FirstValue(e), Some(row)) => e.eval(row).unwrap_or(Value::Null),
                        _ => Value::Null,
                    };
                    (c, &call.kind, first)
                })
                .collect();
            let tied = |i: usize| i > 0 && compare_keys(order, &entries[i - 1].0, &entries[i].0).is_eq();
            // RANK is one more than the groups strictly ahead: start where the tie begins.
            let mut first = lo.min(entries.len().saturating_sub(1));
            while tied(first) {
                first -= 1;
            }
            let mut last = hi.min(entries.len().saturating_sub(1));
            while last + 1 < entries.len() && tied(last + 1) {
                last += 1;
            }
            let mut dense = entries[..first].iter().enumerate().filter(|(i, _)| !tied(*i)).count() as i64;
            let mut rank = first as i64 + 1;
            for (i, (_, name)) in entries.iter().enumerate().take(last + 1).skip(first) {
                if !tied(i) {
                    rank = i as i64 + 1;
                    dense += 1;
                }
                let Some(state) = self.groups.get_mut(&**name).and_then(|w| w.iter_mut().find(|w| w.start == start))
                else {
                    continue;
                };
                let mut differs = false;
                for (c, kind, first) in &calls {
                    let v = match kind {
                        OverKind::Rank => Value::Int(rank),
                        OverKind::DenseRank => Value::Int(dense),
                        OverKind::RowNumber => Value::Int(i as i64 + 1),
                        OverKind::FirstValue(_) => first.clone(),
                    };
                    if state.over[*c] != v {
                        state.over[*c] = v;
                        differs = true;
                    }
                }
                if differs {
                    if !state.dirty {
                        state.dirty = true;
                        self.changed.push((name.clone(), start));
                    }
                    if &**name != group {
                        changed.push(name.clone());
                    }
                }
            }
        }
        // A group in two orderings changed once.
        changed.sort_unstable();
        changed.dedup();
        let mut out = Vec::with_capacity(changed.len());
        for name in changed {
            let Some(state) = self.window(&name, start) else { continue };
            match window_row(plan, state, format!("{cause}:{name}")) {
                Ok(mut row) => {
                    row.timestamp = row.timestamp.max(timestamp);
                    out.push(row);
                }
                Err(e) => tracing::warn!(error = %e, "a re-ranked group's row could not be computed"),
            }
        }
        out
    }

    /// The session a record at `timestamp` belongs to: sessions of its group within `gap` of
    /// it merge into one (earliest first); removed ones are deleted from the table.
    fn join_session(&mut self, plan: &Plan, text: &str, timestamp: i64, gap: i64, out: &mut Vec<Output>) -> (i64, i64) {
        let Shape::Aggregate { calls, window, .. } = &plan.shape else { unreachable!() };
        let close = |end: i64| close_time(*window, end);
        let Some(windows) = self.groups.get_mut(text) else { return (timestamp, timestamp) };
        let mut touching: Vec<WindowState> = Vec::new();
        let mut i = 0;
        while i < windows.len() {
            if windows[i].start - gap <= timestamp && timestamp <= windows[i].end + gap {
                touching.push(windows.swap_remove(i));
            } else {
                i += 1;
            }
        }
        touching.sort_by_key(|s| s.start);
        let (mut start, mut end) = (timestamp, timestamp);
        let mut merged: Option<WindowState> = None;
        for session in touching {
            start = start.min(session.start);
            end = end.max(session.end);
            self.closing.remove(&(close(session.end), Box::from(text), session.start));
            self.changed.push((Box::from(text), session.start));
            if plan.emit != Emit::Final {
                out.push(Output {
                    key: key_text(&session.group),
                    value: None,
                    timestamp: session.last,
                    id: format!("{text}@{}-", session.start),
                    window: Some(session.start),
                });
            }
            match &mut merged {
                None => merged = Some(session),
                Some(m) => {
                    for ((call, acc), later) in calls.iter().zip(&mut m.accs).zip(session.accs) {
                        if call.shares.is_none() {
                            call.merge(acc, later);
                        }
                    }
                    m.last = m.last.max(session.last);
                }
            }
        }
        if let Some(mut m) = merged {
            m.start = start;
            m.end = end;
            m.dirty = true;
            self.changed.push((Box::from(text), start));
            self.closing.insert((close(end), Box::from(text), start));
            windows.push(m);
        }
        (start, end)
    }

    fn advance(&mut self, plan: &Plan, t: i64, out: &mut Vec<Output>) {
        if let Some(pair) = &mut self.pair {
            let expired = pair.advance(t);
            if let Err(e) = self.process_pairs(plan, expired, out) {
                tracing::warn!(error = %e, "a join's unmatched row could not be computed");
            }
        }
        if t <= self.stream_time {
            return;
        }
        self.stream_time = t;
        while self.closing.first().is_some_and(|(close, _, _)| *close <= t) {
            let (_, group, start) = self.closing.pop_first().expect("checked above");
            let Some(windows) = self.groups.get_mut(&*group) else { continue };
            let Some(i) = windows.iter().position(|w| w.start == start) else { continue };
            let state = windows.swap_remove(i);
            if windows.is_empty() {
                self.groups.remove(&*group);
            }
            // Every group of a window closes at once: its orderings go with the first.
            self.rankings.retain(|(_, s), _| *s != start);
            if plan.emit == Emit::Final {
                let id = format!("{group}@{start}");
                match window_row(plan, &state, id) {
                    Ok(row) => out.push(row),
                    Err(e) => tracing::warn!(error = %e, "a closed window's row could not be computed"),
                }
            }
            self.changed.push((group, start));
        }
    }

    fn finish(&mut self, plan: &Plan, out: &mut Vec<Output>) {
        let mut open: Vec<(CompactString, WindowState)> =
            self.groups.drain().flat_map(|(g, windows)| windows.into_iter().map(move |w| (g.clone(), w))).collect();
        self.closing.clear();
        open.sort_by(|(g, a), (h, b)| (a.start, g).cmp(&(b.start, h)));
        for (group, state) in open {
            match window_row(plan, &state, format!("{group}@{}", state.start)) {
                Ok(row) => out.push(row),
                Err(e) => tracing::warn!(error = %e, "a group's row could not be computed"),
            }
        }
    }

    fn take_changes(&mut self) -> Vec<(String, Option<String>)> {
        let mut seen = HashSet::new();
        let mut changes = Vec::new();
        for (group, start) in std::mem::take(&mut self.changed) {
            if !seen.insert((group.clone(), start)) {
                continue;
            }
            let state = self.groups.get_mut(&*group).and_then(|w| w.iter_mut().find(|w| w.start == start));
            let json = state.map(|s| {
                s.dirty = false;
                serde_json::to_string(s).expect("window state serializes")
            });
            changes.push((format!("{group}\u{0}{start}"), json));
        }
        changes.sort();
        if let Some(pair) = &mut self.pair {
            changes.extend(pair.take_changes().into_iter().map(|(id, json)| (format!("{PAIR_STATE}{id}"), json)));
        }
        changes
    }

    fn state_len(&self) -> usize {
        self.groups.values().map(|w| w.len()).sum::<usize>() + self.pair.as_ref().map_or(0, PairState::held)
    }

    fn snapshot(&mut self) -> Vec<(String, Option<String>)> {
        let mut entries: BTreeMap<String, Option<String>> = self.take_changes().into_iter().collect();
        for (group, windows) in &self.groups {
            for state in windows {
                let json = serde_json::to_string(state).expect("window state serializes");
                entries.insert(format!("{group}\u{0}{}", state.start), Some(json));
            }
        }
        if let Some(pair) = &self.pair {
            entries.extend(pair.snapshot().into_iter().map(|(id, json)| (format!("{PAIR_STATE}{id}"), json)));
        }
        entries.into_iter().collect()
    }

    fn restore(&mut self, plan: &Plan, state_id: String, json: Option<&str>, stream_time: i64) -> Result<(), String> {
        if let (Some(id), Some(pair)) = (state_id.strip_prefix(PAIR_STATE), &mut self.pair) {
            return pair.restore(id, json, stream_time);
        }
        self.stream_time = self.stream_time.max(stream_time);
        self.rankings.clear();
        let (group, start) = state_id
            .rsplit_once('\u{0}')
            .and_then(|(g, s)| Some((g, s.parse::<i64>().ok()?)))
            .ok_or_else(|| format!("checkpointed state: bad id {state_id:?}"))?;
        let window = match &plan.shape {
            Shape::Aggregate { window, .. } => *window,
            Shape::Project { .. } => None,
        };
        if let Some(windows) = self.groups.get_mut(group) {
            if let Some(i) = windows.iter().position(|w| w.start == start) {
                let old = windows.swap_remove(i);
                self.closing.remove(&(close_time(window, old.end), Box::from(group), start));
            }
        }
        if let Some(json) = json {
            let state: WindowState = serde_json::from_str(json).map_err(|e| format!("checkpointed state: {e}"))?;
            if state.start != NO_WINDOW {
                self.closing.insert((close_time(window, state.end), Box::from(group), state.start));
            }
            self.groups.entry(CompactString::from(group)).or_default().push(state);
        }
        Ok(())
    }

    /// Fills `row` from a record: pseudo columns, then the plan's fields with their types.
    fn decode(&self, plan: &Plan, record: &Record, row: &mut [Value], filled: &mut Vec<bool>) -> Result<(), String> {
        row[ROWTIME].set_int(record.timestamp);
        let fields = &plan.fields;
        let needs_key = plan.reads_key || fields.iter().any(|f| f.key);
        let key = record.key.as_ref().filter(|_| needs_key).map(|k| String::from_utf8_lossy(k));
        if plan.reads_key {
            row[ROWKEY] = key.as_ref().map_or(Value::Null, |k| Value::String(k.to_string()));
        }
        row[ROWPARTITION].set_int(record.partition as i64);
        row[ROWOFFSET].set_int(record.offset as i64);
        if self.whole_value {
            for slot in &mut row[FIRST_FIELD..] {
                *slot = Value::Null;
            }
            let object = match serde_json::from_slice::<Json>(&record.value) {
                Ok(Json::Object(map)) => map,
                Ok(other) => return Err(format!("value is not a JSON object: {}", truncate(&other.to_string()))),
                Err(e) => return Err(not_json(&record.value, &e)),
            };
            for (i, field) in fields.iter().enumerate() {
                if field.key {
                    continue;
                }
                if let Some(raw) = json_field(&object, &field.name) {
                    row[FIRST_FIELD + i] = coerce(Raw::from(raw), field)?;
                }
            }
            row[WHOLE_VALUE] = Value::from_json(&Json::Object(object));
        } else if fields.iter().any(|f| !f.key) {
            decode_fields(&record.value, fields, &mut row[FIRST_FIELD..], filled)?;
        }
        for (i, field) in fields.iter().enumerate() {
            if field.key {
                if let Some(k) = &key {
                    row[FIRST_FIELD + i] = coerce(Raw::Str(Cow::Borrowed(k)), field)?;
                }
            }
        }
        if let Some(t) = plan.timestamp_field {
            let name = &fields[t].name;
            row[ROWTIME] = match &row[FIRST_FIELD + t] {
                Value::Int(ms) => Value::Int(*ms),
                Value::String(s) => {
                    Value::Int(pacer_core::parse_time(s).map_err(|e| format!("timestamp column {name}: {e}"))?)
                }
                Value::Null => return Err(format!("timestamp column {name} is missing")),
                other => return Err(format!("timestamp column {name}: {other} is not a time")),
            };
        }
        Ok(())
    }
}

/// What made a row of this record: its place, or for a joined record the pair it joins.
struct Cause<'a>(&'a Record);

impl fmt::Display for Cause<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.headers.iter().find(|(name, _)| name == PAIR_HEADER) {
            Some((_, pair)) => f.write_str(&String::from_utf8_lossy(pair)),
            None => write!(f, "{}:{}", self.0.partition, self.0.offset),
        }
    }
}

/// How a reader orders records by the plan's event time: the record's timestamp, or the
/// declared timestamp column (what the operator will take as ROWTIME; a record without a
/// readable one keeps its own timestamp here and is rejected by the operator).
pub(crate) fn event_time(plan: &Plan) -> pacer_log::EventTime {
    let Some(t) = plan.timestamp_field else { return Box::new(|r: &Record| r.timestamp) };
    let name = plan.fields[t].name.clone();
    Box::new(move |r: &Record| column_time(r, &name))
}

/// A record's time from the JSON field `column` of its value, or its own timestamp when the
/// field is missing or not a time.
pub(crate) fn column_time(record: &Record, column: &str) -> i64 {
    match serde_json::from_slice::<Json>(&record.value) {
        Ok(Json::Object(map)) => json_time(json_field(&map, column)).unwrap_or(record.timestamp),
        _ => record.timestamp,
    }
}

/// A JSON value as a time: milliseconds, or text `parse_time` reads.
pub(crate) fn json_time(value: Option<&Json>) -> Option<i64> {
    match value? {
        Json::Number(n) => n.as_i64(),
        Json::String(s) => pacer_core::parse_time(s).ok(),
        _ => None,
    }
}

/// A field of a JSON object by its declared name: exactly, else ignoring case (as ksqlDB
/// matches unquoted names).
pub(crate) fn json_field<'a>(map: &'a Map<String, Json>, name: &str) -> Option<&'a Json> {
    map.get(name).or_else(|| map.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
}

/// (sort key, group name).
type Ranked = (Vec<Value>, Box<str>);

/// A group's values, window bounds and aggregate results: what window functions read.
fn base_row(plan: &Plan, state: &WindowState) -> Vec<Value> {
    let Shape::Aggregate { calls, group_by, .. } = &plan.shape else { unreachable!() };
    let mut row = state.group.clone();
    let (start, end) = if state.start == NO_WINDOW {
        (Value::Null, Value::Null)
    } else {
        (Value::Int(state.start), Value::Int(state.end))
    };
    row.push(start);
    row.push(end);
    debug_assert_eq!(row.len(), first_aggregate_slot(group_by.len()));
    row.extend(calls.iter().enumerate().map(|(i, c)| c.result(&state.accs[c.shares.unwrap_or(i)])));
    row
}

/// A group's partition (as text) and sort key in one OVER order. A key that fails to
/// evaluate sorts as NULL.
fn placement(plan: &Plan, order: &GroupOrder, state: &WindowState) -> (String, Vec<Value>) {
    let row = base_row(plan, state);
    let eval = |e: &Expr| e.eval(&row).unwrap_or(Value::Null);
    let partition: Vec<Value> = order.partition_by.iter().map(eval).collect();
    let key = order.order_by.iter().map(|k| eval(&k.expr)).collect();
    (key_text(&partition).unwrap_or_default(), key)
}

/// ORDER BY of an OVER clause: each key ascending or descending, NULLs first or last.
fn compare_keys(order: &GroupOrder, a: &[Value], b: &[Value]) -> Ordering {
    for ((k, x), y) in order.order_by.iter().zip(a).zip(b) {
        let o = match (x.is_null(), y.is_null()) {
            (true, true) => Ordering::Equal,
            (true, false) => return if k.nulls_first { Ordering::Less } else { Ordering::Greater },
            (false, true) => return if k.nulls_first { Ordering::Greater } else { Ordering::Less },
            (false, false) => x.compare(y).unwrap_or(Ordering::Equal),
        };
        let o = if k.descending { o.reverse() } else { o };
        if o.is_ne() {
            return o;
        }
    }
    Ordering::Equal
}

impl Ranking {
    /// Puts `group` in its place; returns its index in the partition.
    fn place(&mut self, order: &GroupOrder, group: &str, (partition, key): (String, Vec<Value>)) -> usize {
        let entries = self.partitions.entry(partition.clone()).or_default();
        let at = entries
            .binary_search_by(|(k, g)| compare_keys(order, k, &key).then_with(|| (**g).cmp(group)))
            .unwrap_or_else(|at| at);
        entries.insert(at, (key.clone(), Box::from(group)));
        self.placed.insert(Box::from(group), (partition, key));
        at
    }

    /// Takes `group` out; returns the partition, index and sort key it had.
    fn remove(&mut self, order: &GroupOrder, group: &str) -> Option<(String, usize, Vec<Value>)> {
        let (partition, key) = self.placed.remove(group)?;
        let entries = self.partitions.get_mut(&partition)?;
        let at = entries.binary_search_by(|(k, g)| compare_keys(order, k, &key).then_with(|| (**g).cmp(group))).ok()?;
        entries.remove(at);
        if entries.is_empty() {
            self.partitions.remove(&partition);
        }
        Some((partition, at, key))
    }
}

/// The row of a group whose aggregates were computed elsewhere (the columnar history
/// scan), through the same HAVING and select items as the operator's own, as the values of
/// the output columns; None when HAVING drops it.
pub(crate) fn grouped_row(
    plan: &Plan,
    group: Vec<Value>,
    window: Option<(i64, i64)>,
    accs: Vec<Acc>,
    last: i64,
) -> Result<Option<Vec<Json>>, String> {
    let Shape::Aggregate { over, items, .. } = &plan.shape else { unreachable!("an aggregation") };
    let (start, end) = window.unwrap_or((NO_WINDOW, i64::MAX));
    let state = WindowState { group, start, end, accs, last, over: vec![Value::Null; over.len()], dirty: false };
    let Some(row) = kept_row(plan, &state)? else { return Ok(None) };
    items
        .iter()
        .map(|item| match item {
            Item::Expr(e) => e.eval(&row).map(|v| v.to_json()),
            Item::WholeValue => Err("a grouped row has no whole value".to_string()),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The row of one window (or group): HAVING decides between the row and a tombstone.
fn window_row(plan: &Plan, state: &WindowState, id: String) -> Result<Output, String> {
    let Shape::Aggregate { items, .. } = &plan.shape else { unreachable!() };
    let value = kept_row(plan, state)?.map(|row| project(items, &plan.output, &row)).transpose()?;
    let window = (state.start != NO_WINDOW).then_some(state.start);
    Ok(Output { key: key_text(&state.group), value, timestamp: state.last, id, window })
}

/// A window's (or group's) grouped row with its window functions' values, or None when
/// HAVING drops it.
fn kept_row(plan: &Plan, state: &WindowState) -> Result<Option<Vec<Value>>, String> {
    let Shape::Aggregate { having, .. } = &plan.shape else { unreachable!() };
    let mut row = base_row(plan, state);
    row.extend(state.over.iter().cloned());
    let keep = match having {
        Some(h) => h.eval(&row)?.is_true(),
        None => true,
    };
    Ok(keep.then_some(row))
}

/// When a window ending at `end` stops taking records: its end plus the grace period, and
/// for sessions also the gap (a record that close would still extend it).
fn close_time(window: Option<Window>, end: i64) -> i64 {
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

fn project(items: &[Item], output: &[Column], row: &[Value]) -> Result<Map<String, Json>, String> {
    let mut map = Map::with_capacity(items.len());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::plan::test_support::{plan_sql, stream};
    use crate::engine::value::DataType;
    use bytes::Bytes;

    fn operator(sql: &str) -> Operator {
        let source = stream("s", &[("who", DataType::String), ("speed", DataType::Double)]);
        Operator::new(plan_sql(sql, &source, &crate::geometry::Geometry::default()))
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
    fn a_record_late_for_some_of_its_hopping_windows_counts_in_the_others_and_says_so() {
        let mut op = operator(
            "SELECT who, COUNT(*) AS n FROM s WINDOW HOPPING (SIZE 60 SECONDS, ADVANCE BY 30 SECONDS, GRACE PERIOD 0 SECONDS) GROUP BY who EMIT FINAL",
        );
        let mut out = Vec::new();
        op.process(&record(0, 100_000, "a", 1.0), &mut out).unwrap();
        op.process(&record(1, 155_000, "a", 1.0), &mut out).unwrap();
        // 125 s belongs to [90, 150), closed at stream time 155 s, and to [120, 180), open.
        let e = op.process(&record(2, 125_000, "a", 1.0), &mut out).unwrap_err();
        assert!(e.starts_with("late record for the windows starting at 90000:"), "{e}");
        let e = op.process(&record(3, 20_000, "a", 1.0), &mut out).unwrap_err();
        assert!(e.contains("past every window"), "{e}");
        out.clear();
        op.advance(1_000_000, &mut out);
        let counts: Vec<(Option<i64>, Json)> =
            out.iter().map(|o| (o.window, o.value.as_ref().unwrap()["n"].clone())).collect();
        assert_eq!(counts, [(Some(120_000), Json::from(2)), (Some(150_000), Json::from(1))]);
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

    /// A league table over a 1 km course along the equator: position by finish time, then
    /// by distance left; the gap is the leader's distance minus one's own.
    const LEAGUE: &str = "SELECT who, COURSE_DISTANCE('line', lat, lon) AS covered,
        RANK() OVER (ORDER BY FINISH_TIME('line', lat, lon) NULLS LAST, TO_FINISH('line', lat, lon)) AS position,
        FIRST_VALUE(COURSE_DISTANCE('line', lat, lon)) OVER (ORDER BY FINISH_TIME('line', lat, lon) NULLS LAST,
            TO_FINISH('line', lat, lon)) - COURSE_DISTANCE('line', lat, lon) AS gap
        FROM fixes GROUP BY who EMIT CHANGES";

    fn league() -> Operator {
        let source =
            stream("fixes", &[("who", DataType::String), ("lat", DataType::Double), ("lon", DataType::Double)]);
        let mut geometry = crate::geometry::Geometry::default();
        geometry.add_course(crate::Course::new("line", vec![(0.0, 0.0), (0.009, 0.0)]).unwrap());
        Operator::new(plan_sql(LEAGUE, &source, &geometry))
    }

    /// A fix `metres` east of the start at `t` seconds.
    fn fix(offset: u64, t: i64, who: &str, metres: f64) -> Record {
        let value = serde_json::json!({"who": who, "lat": 0.0, "lon": metres / 111_195.0}).to_string();
        Record {
            partition: 0,
            offset,
            timestamp: t * 1000,
            key: Some(Bytes::from(who.to_string())),
            value: Bytes::from(value),
            headers: vec![],
        }
    }

    /// (who, position, gap rounded to metres) of each row.
    fn standings(out: &[Output]) -> Vec<(String, i64, i64)> {
        out.iter()
            .map(|o| {
                let v = o.value.as_ref().unwrap();
                (
                    v["who"].as_str().unwrap().to_string(),
                    v["position"].as_i64().unwrap(),
                    v["gap"].as_f64().unwrap().round() as i64,
                )
            })
            .collect()
    }

    #[test]
    fn rank_and_gap_to_the_leader_follow_overtakes() {
        let mut op = league();
        let mut out = Vec::new();
        op.process(&fix(0, 0, "a", 100.0), &mut out).unwrap();
        op.process(&fix(1, 0, "b", 200.0), &mut out).unwrap();
        op.process(&fix(2, 10, "b", 250.0), &mut out).unwrap();
        op.process(&fix(3, 20, "a", 300.0), &mut out).unwrap();
        let s = |w: &str, p: i64, g: i64| (w.to_string(), p, g);
        assert_eq!(
            standings(&out),
            [
                s("a", 1, 0),
                s("b", 1, 0),   // b leads…
                s("a", 2, 100), // …so a drops to second, 100 m behind
                s("b", 1, 0),
                s("a", 2, 150), // b moved on: only a's gap changed
                s("a", 1, 0),   // a overtakes
                s("b", 2, 50),
            ]
        );
        assert_eq!(out[2].id, "0:1:-9223372036854775808:a", "a's row is caused by b's fix");
    }

    #[test]
    fn ranks_continue_after_a_restore() {
        let records = [fix(0, 0, "a", 100.0), fix(1, 0, "b", 200.0), fix(2, 10, "c", 150.0), fix(3, 20, "a", 300.0)];
        let mut whole = Vec::new();
        let mut one = league();
        for r in &records {
            one.process(r, &mut whole).unwrap();
        }
        let mut first = league();
        let mut resumed = Vec::new();
        for r in &records[..2] {
            first.process(r, &mut resumed).unwrap();
        }
        let mut second = league();
        for (id, json) in first.take_changes() {
            second.restore(id, json.as_deref(), first.stream_time()).unwrap();
        }
        for r in &records[2..] {
            second.process(r, &mut resumed).unwrap();
        }
        assert_eq!(standings(&resumed), standings(&whole));
    }

    /// Ranks kept up incrementally equal ranks computed from scratch, after every record of
    /// a long run of moves up and down with many ties; each function on its own too, since
    /// DENSE_RANK and FIRST_VALUE widen what is recomputed for every other.
    #[test]
    fn window_functions_match_a_recomputation_after_every_record() {
        let over = "OVER (ORDER BY LATEST_BY_OFFSET(speed) DESC)";
        let all = ["r", "d", "n", "top"];
        let functions = [
            ("r", "RANK()"),
            ("d", "DENSE_RANK()"),
            ("n", "ROW_NUMBER()"),
            ("top", "FIRST_VALUE(LATEST_BY_OFFSET(speed))"),
        ];
        let mut cases: Vec<Vec<&str>> = all.iter().map(|c| vec![*c]).collect();
        cases.push(all.to_vec());
        for columns in cases {
            let items: Vec<String> = functions
                .iter()
                .filter(|(c, _)| columns.contains(c))
                .map(|(c, f)| format!("{f} {over} AS {c}"))
                .collect();
            let sql = format!("SELECT who, {} FROM s GROUP BY who EMIT CHANGES", items.join(", "));
            check_against_recomputation(operator(&sql), &columns);
        }
    }

    fn check_against_recomputation(mut op: Operator, columns: &[&str]) {
        let mut table: std::collections::BTreeMap<String, Map<String, Json>> = Default::default();
        let mut latest: std::collections::BTreeMap<String, f64> = Default::default();
        let mut seed = 12345u64;
        let mut out = Vec::new();
        for offset in 0..3000u64 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let who = format!("g{}", (seed >> 33) % 12);
            let speed = ((seed >> 40) % 6) as f64;
            op.process(&record(offset, offset as i64, &who, speed), &mut out).unwrap();
            for o in out.drain(..) {
                table.insert(o.key.unwrap(), o.value.unwrap());
            }
            latest.insert(who, speed);
            let mut order: Vec<(&String, f64)> = latest.iter().map(|(k, v)| (k, *v)).collect();
            order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
            for (i, (name, v)) in order.iter().enumerate() {
                let mut greater: Vec<f64> = latest.values().copied().filter(|x| *x > *v).collect();
                let rank = 1 + greater.len() as i64;
                greater.sort_by(f64::total_cmp);
                greater.dedup();
                let expected = [
                    ("r", Json::from(rank)),
                    ("d", Json::from(1 + greater.len() as i64)),
                    ("n", Json::from(i as i64 + 1)),
                    ("top", Json::from(order[0].1)),
                ];
                for (column, want) in expected.iter().filter(|(c, _)| columns.contains(c)) {
                    assert_eq!(table[*name][*column], *want, "{column} of {name} after record {offset}");
                }
            }
        }
    }
}
