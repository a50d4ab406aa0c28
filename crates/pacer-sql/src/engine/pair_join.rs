//! Joins of two inputs as they flow: ksqlDB's stream–stream join (`JOIN … WITHIN`) and its
//! table–table join on primary keys.
//!
//! Both inputs come through one reader (a [`pacer_log::Union`] of their streams, merged by
//! event time). Each record meets what the other side holds, and the joined rows go on
//! through the same planner and operator as any query's rows, under the qualified names
//! (`o.id`, `p.amount`) a pull query's join gives them.
//!
//! A stream–stream join holds each side's rows while a row of the other side can still pair
//! with them: a record is late once it is more than the grace period behind stream time, so
//! a row at `t` waits until stream time passes `t + reach + grace`. Then an outer join's
//! unmatched row comes out with the other side NULL (as ksqlDB does with a GRACE PERIOD).
//! A table–table join holds each side's latest row per key; an update on either side emits
//! the joined row, or a tombstone when a key that joined no longer does. What is held is
//! checkpointed with the operator's state, so a restart resumes it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use pacer_core::Record;
use pacer_log::Union;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use super::ast::{JoinKind, Select, SourceKind, Within};
use super::expr::{plan_error, PlanError};
use super::operator::{column_time, json_field, json_time};
use super::plan::{self, Column, Plan, Shape, Source};
use super::relation::{equi_keys, key_text, qualify_names};
use crate::geometry::Geometry;

/// Header of a joined row naming the records it pairs: its cause, so a restart knows the
/// rows it wrote.
pub const PAIR_HEADER: &str = "pacer.pair";

/// What a two-input join pairs, and how.
#[derive(Debug)]
pub struct PairJoin {
    pub kind: JoinKind,
    /// Left, then right.
    pub sides: [JoinSide; 2],
    /// A stream–stream join's time bounds; None joins two tables.
    pub within: Option<Within>,
}

#[derive(Debug)]
pub struct JoinSide {
    pub qualifier: String,
    pub topic: String,
    /// The declared columns.
    pub columns: Vec<Column>,
    /// The column joined on.
    pub key: String,
    /// The column holding event time, when not the record timestamp.
    pub timestamp: Option<String>,
}

impl PairJoin {
    /// Plans `select` (FROM one stream JOIN another WITHIN …, or FROM one table JOIN
    /// another ON their keys): both sides' columns under qualified names, then the usual
    /// planner over them.
    pub fn plan(select: &Select, left: &Source, right: &Source, geometry: &Geometry) -> Result<Plan, PlanError> {
        let [join] = select.joins.as_slice() else {
            return plan_error("a continuous join of two streams or two tables joins one to the other; join more in steps (CREATE STREAM … AS … then join that)");
        };
        let tables = left.kind == SourceKind::Table;
        match (left.kind, right.kind, join.within) {
            (SourceKind::Stream, SourceKind::Stream, None) => {
                return plan_error(format!(
                    "{} JOIN {}: a stream–stream join needs WITHIN (e.g. WITHIN 1 HOUR GRACE PERIOD 1 MINUTE)",
                    left.name, right.name
                ))
            }
            (SourceKind::Table, SourceKind::Table, Some(_)) => {
                return plan_error("WITHIN is for stream–stream joins; tables join on their PRIMARY KEYs")
            }
            (SourceKind::Table, SourceKind::Stream, _) => {
                return plan_error(format!(
                    "{} JOIN {}: put the stream first (FROM {} JOIN {}): a stream meets the table as it flows",
                    left.name, right.name, right.name, left.name
                ))
            }
            _ => {}
        }
        for source in [left, right] {
            if source.columns.is_empty() || source.windowed {
                return plan_error(format!(
                    "{}: a continuous join reads declared streams and tables (CREATE {} {} (…) WITH (…))",
                    source.name,
                    source.kind.as_str(),
                    source.name
                ));
            }
        }
        let qualifiers = [
            select.alias.clone().unwrap_or_else(|| select.from.clone()),
            join.alias.clone().unwrap_or_else(|| join.source.clone()),
        ];
        let qualified = |source: &Source, q: &str| -> Vec<Column> {
            source
                .columns
                .iter()
                .map(|c| Column { name: format!("{q}.{}", c.name), data_type: c.data_type.clone(), key: false })
                .collect()
        };
        let (left_columns, right_columns) = (qualified(left, &qualifiers[0]), qualified(right, &qualifiers[1]));
        let (left_key, right_key) = match equi_keys(&join.on, &left_columns, &right_columns)?.as_slice() {
            [(l, r)] => (l.clone(), r.clone()),
            _ => {
                return plan_error(format!(
                    "ON {}: a continuous join pairs one column of each side (a.x = b.y)",
                    join.on
                ))
            }
        };
        let declared = |q: &str, qualified: &str| qualified[q.len() + 1..].to_string();
        let keys = [declared(&qualifiers[0], &left_key), declared(&qualifiers[1], &right_key)];
        if tables {
            for (source, key) in [left, right].into_iter().zip(&keys) {
                if !source.columns.iter().any(|c| c.key && c.name.eq_ignore_ascii_case(key)) {
                    return plan_error(format!(
                        "ON {}: tables join on their PRIMARY KEYs ({key} is not {}'s)",
                        join.on, source.name
                    ));
                }
            }
        }
        let mut columns = left_columns;
        columns.extend(right_columns);
        let mut rewritten = qualify_names(select, &columns)?;
        rewritten.joins.clear();
        let source = Source {
            name: left.name.clone(),
            kind: left.kind,
            topic: left.topic.clone(),
            columns,
            // A pair's time is the later of its rows' event times, set on the joined record.
            timestamp: None,
            windowed: false,
        };
        let mut plan = plan::plan(&rewritten, &source, geometry)?;
        if tables && !matches!(&plan.shape, Shape::Project { key: None, keyed, .. } if keyed.is_empty()) {
            return plan_error(
                "a table–table join as it flows selects and filters (no GROUP BY, PARTITION BY or tracking functions); \
                 aggregate its output table in a query of its own",
            );
        }
        let [left_q, right_q] = qualifiers;
        let [left_key, right_key] = keys;
        let side = |source: &Source, qualifier: String, key: String| JoinSide {
            qualifier,
            topic: source.topic.clone(),
            columns: source.columns.clone(),
            key,
            timestamp: source.timestamp.clone(),
        };
        plan.pair = Some(Arc::new(PairJoin {
            kind: join.kind,
            sides: [side(left, left_q, left_key), side(right, right_q, right_key)],
            within: join.within,
        }));
        Ok(plan)
    }

    /// Whether both sides join on their record key: streams Kafka's partitioner placed by
    /// that key hold a pair's rows at the same partition number (given equal partition
    /// counts), so the join runs one task per partition, as ksqlDB's co-partitioned joins do.
    pub fn joins_record_keys(&self) -> bool {
        self.sides.iter().all(|side| side.columns.iter().any(|c| c.key && c.name.eq_ignore_ascii_case(&side.key)))
    }

    /// The log streams the join reads, left first.
    pub fn topics(&self) -> [&str; 2] {
        [&self.sides[0].topic, &self.sides[1].topic]
    }

    /// A record's event time as its side declares it (the record's own timestamp when the
    /// column is missing; the join then rejects the record).
    pub fn event_time(&self, record: &Record) -> i64 {
        match &self.sides[Union::input_of(record.partition).0.min(1)].timestamp {
            Some(column) => column_time(record, column),
            None => record.timestamp,
        }
    }

    /// When a row of `side` at `time` can pair no more: the other side's rows may lie up to
    /// its reach later, and come up to the grace period behind stream time.
    fn expiry(within: &Within, side: usize, time: i64) -> i64 {
        let reach = if side == 0 { within.after } else { within.before };
        time.saturating_add(reach).saturating_add(within.grace)
    }
}

/// The record of a pair (or a row alone): both sides' columns, the later time, the join key
/// as its key. `cause` names what made it when that is not the pair itself (a table update).
fn joined(side: usize, mine: (At, &Held), other: Option<(At, &Held)>, cause: Option<At>) -> Record {
    let mut time = mine.1.time;
    let mut ats: [Option<At>; 2] = [None, None];
    ats[side] = Some(mine.0);
    let value = match other {
        Some((at, held)) => {
            time = time.max(held.time);
            ats[1 - side] = Some(at);
            splice(&mine.1.row, &held.row)
        }
        None => mine.1.row.clone(),
    };
    let text = |a: Option<At>| a.map_or(String::new(), |(p, o)| format!("{p}:{o}"));
    let cause = match cause {
        Some(at) => text(Some(at)),
        // Left before right, so a replay pairing them the other way round names it alike.
        None => format!("{}+{}", text(ats[0]), text(ats[1])),
    };
    Record {
        partition: mine.0 .0,
        offset: mine.0 .1,
        timestamp: time,
        key: (!mine.1.key.is_empty()).then(|| Bytes::from(mine.1.key.clone())),
        value: Bytes::from(value),
        headers: vec![(PAIR_HEADER.to_string(), Bytes::from(cause))],
    }
}

/// Two JSON objects' texts as one object (their names differ: each side's are qualified).
fn splice(a: &str, b: &str) -> String {
    match (a, b) {
        ("{}", _) => b.to_string(),
        (_, "{}") => a.to_string(),
        _ => {
            let mut out = String::with_capacity(a.len() + b.len());
            out.push_str(&a[..a.len() - 1]);
            out.push(',');
            out.push_str(&b[1..]);
            out
        }
    }
}

/// A row one side holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Held {
    time: i64,
    key: String,
    /// Its columns, qualified, as a JSON object's text: a pair's value is two of them
    /// spliced, with no JSON tree built per pair.
    row: String,
    /// Paired at least once (an outer join emits the unmatched ones alone).
    #[serde(default)]
    matched: bool,
}

/// Where a held row's record is: (union partition, offset).
type At = (u32, u64);

/// What a running join holds: each side's rows, and when they expire.
pub struct PairState {
    join: Arc<PairJoin>,
    held: [BTreeMap<At, Held>; 2],
    /// The held rows of each side by join key.
    by_key: [HashMap<String, BTreeSet<At>>; 2],
    /// (expiry, side, where) of a stream–stream join's rows, earliest first.
    expiring: BTreeSet<(i64, usize, At)>,
    stream_time: i64,
    /// Rows added, changed or dropped since the last checkpoint.
    changed: Vec<(usize, At)>,
}

impl PairState {
    pub fn new(join: Arc<PairJoin>) -> PairState {
        PairState {
            join,
            held: Default::default(),
            by_key: Default::default(),
            expiring: BTreeSet::new(),
            stream_time: i64::MIN,
            changed: Vec::new(),
        }
    }

    pub fn stream_time(&self) -> i64 {
        self.stream_time
    }

    /// Takes one record of either side; returns the joined records it makes (and those of
    /// rows that expired meanwhile). A record with an empty value is a tombstone.
    pub fn process(&mut self, record: &Record) -> Result<Vec<Record>, String> {
        let side = Union::input_of(record.partition).0;
        if side > 1 {
            return Err(format!("partition {} is neither side of the join", record.partition));
        }
        let spec = &self.join.sides[side];
        let tables = self.join.within.is_none();
        let object = match serde_json::from_slice::<Json>(&record.value) {
            Ok(Json::Object(map)) => Some(map),
            // A tombstone: an empty value, or JSON null.
            Ok(Json::Null) if tables => None,
            Err(_) if record.value.is_empty() && tables => None,
            Ok(_) => return Err(format!("{}: value is not a JSON object", spec.qualifier)),
            Err(e) => return Err(format!("{}: value is not JSON ({e})", spec.qualifier)),
        };
        let record_key = record.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned());
        let time = match (&spec.timestamp, &object) {
            (Some(column), Some(map)) => json_time(json_field(map, column))
                .ok_or_else(|| format!("{}: timestamp column {column} is missing or not a time", spec.qualifier))?,
            _ => record.timestamp,
        };
        let mut row = Map::new();
        if let Some(map) = &object {
            for c in &spec.columns {
                let value = if c.key { record_key.clone().map(Json::from) } else { json_field(map, &c.name).cloned() };
                if let Some(v) = value {
                    row.insert(format!("{}.{}", spec.qualifier, c.name), v);
                }
            }
        }
        let join_key = match row.get(&format!("{}.{}", spec.qualifier, spec.key)) {
            None | Some(Json::Null) => None,
            Some(v) => Some(key_text(v)),
        };
        let row = serde_json::to_string(&Json::Object(row)).expect("JSON values serialize");
        let at = (record.partition, record.offset);
        match self.join.within {
            Some(within) => self.stream_row(side, at, time, join_key, row, within),
            None => {
                let key = match spec.columns.iter().find(|c| c.key) {
                    Some(_) => record_key,
                    None => None,
                }
                .ok_or_else(|| format!("{}: a table row needs a key", spec.qualifier))?;
                Ok(self.table_row(side, at, time, key, object.map(|_| row)))
            }
        }
    }

    fn stream_row(
        &mut self,
        side: usize,
        at: At,
        time: i64,
        key: Option<String>,
        row: String,
        within: Within,
    ) -> Result<Vec<Record>, String> {
        if time.saturating_add(within.grace) < self.stream_time {
            return Err(format!(
                "late record: event time {time} is more than the grace period ({} ms) behind stream time {}",
                within.grace, self.stream_time
            ));
        }
        let mut out = Vec::new();
        let Some(key) = key else {
            // A NULL never pairs: an outer join keeps the row alone, an inner one has none.
            if self.join.kind.keeps_unmatched(side) {
                let held = Held { time, key: String::new(), row, matched: false };
                out.push(joined(side, (at, &held), None, None));
            }
            return Ok(out);
        };
        let other = 1 - side;
        // A right row at t' pairs with a left row at t when t - before <= t' <= t + after.
        let (low, high) = if side == 0 {
            (time - within.before, time + within.after)
        } else {
            (time - within.after, time + within.before)
        };
        let mut mine = Held { time, key, row, matched: false };
        for partner in self.by_key[other].get(&mine.key).into_iter().flatten() {
            let held = self.held[other].get_mut(partner).expect("indexed rows are held");
            if !(low..=high).contains(&held.time) {
                continue;
            }
            mine.matched = true;
            if !held.matched {
                held.matched = true;
                self.changed.push((other, *partner));
            }
            out.push(joined(side, (at, &mine), Some((*partner, held)), None));
        }
        self.expiring.insert((PairJoin::expiry(&within, side, time), side, at));
        self.by_key[side].entry(mine.key.clone()).or_default().insert(at);
        self.held[side].insert(at, mine);
        self.changed.push((side, at));
        out.extend(self.advance(time));
        Ok(out)
    }

    fn table_row(&mut self, side: usize, at: At, time: i64, key: String, row: Option<String>) -> Vec<Record> {
        let joins = |state: &PairState| {
            let [l, r] = [0, 1].map(|s| state.current(s, &key).is_some());
            match state.join.kind {
                JoinKind::Inner => l && r,
                JoinKind::Left => l,
                JoinKind::Right => r,
                JoinKind::Full => l || r,
            }
        };
        let joined_before = joins(self);
        if let Some(old) = self.by_key[side].remove(&key) {
            for old in old {
                self.held[side].remove(&old);
                self.changed.push((side, old));
            }
        }
        if let Some(row) = row {
            self.by_key[side].entry(key.clone()).or_default().insert(at);
            self.held[side].insert(at, Held { time, key: key.clone(), row, matched: false });
            self.changed.push((side, at));
        }
        self.stream_time = self.stream_time.max(time);
        if joins(self) {
            let pair = match (self.current(side, &key), self.current(1 - side, &key)) {
                (Some(mine), other) => joined(side, mine, other, Some(at)),
                (None, Some(other)) => joined(1 - side, other, None, Some(at)),
                (None, None) => unreachable!("a joined key has a row"),
            };
            vec![pair]
        } else if joined_before {
            vec![Record {
                partition: at.0,
                offset: at.1,
                timestamp: time,
                key: Some(Bytes::from(key)),
                value: Bytes::new(),
                headers: vec![(PAIR_HEADER.to_string(), Bytes::from(format!("{}:{}", at.0, at.1)))],
            }]
        } else {
            Vec::new()
        }
    }

    /// A table side's row for `key`.
    fn current(&self, side: usize, key: &str) -> Option<(At, &Held)> {
        let at = *self.by_key[side].get(key)?.iter().next_back()?;
        Some((at, &self.held[side][&at]))
    }

    /// Moves stream time to `t`: rows no record can pair with any more are dropped, and an
    /// outer join's unmatched ones come out alone.
    pub fn advance(&mut self, t: i64) -> Vec<Record> {
        self.stream_time = self.stream_time.max(t);
        let mut out = Vec::new();
        while self.expiring.first().is_some_and(|(expiry, _, _)| *expiry < self.stream_time) {
            let (_, side, at) = self.expiring.pop_first().expect("checked above");
            let Some(held) = self.held[side].remove(&at) else { continue };
            if let Some(ats) = self.by_key[side].get_mut(&held.key) {
                ats.remove(&at);
                if ats.is_empty() {
                    self.by_key[side].remove(&held.key);
                }
            }
            self.changed.push((side, at));
            if !held.matched && self.join.kind.keeps_unmatched(side) {
                out.push(joined(side, (at, &held), None, None));
            }
        }
        out
    }

    /// What changed since the last call, for a checkpoint: (id, JSON or None when dropped).
    pub fn take_changes(&mut self) -> Vec<(String, Option<String>)> {
        let mut changed = std::mem::take(&mut self.changed);
        changed.sort();
        changed.dedup();
        changed.into_iter().map(|(side, at)| self.entry(side, at)).collect()
    }

    /// Every row held, as checkpoints name them.
    pub fn snapshot(&self) -> Vec<(String, Option<String>)> {
        let all = self.held.iter().enumerate().flat_map(|(side, held)| held.keys().map(move |at| (side, *at)));
        all.map(|(side, at)| self.entry(side, at)).collect()
    }

    /// A row's checkpoint entry: its id, and its JSON (None once dropped).
    fn entry(&self, side: usize, at: At) -> (String, Option<String>) {
        let json = self.held[side].get(&at).map(|h| serde_json::to_string(h).expect("rows serialize"));
        (format!("{side}:{}:{}", at.0, at.1), json)
    }

    /// How many rows the join holds.
    pub fn held(&self) -> usize {
        self.held.iter().map(BTreeMap::len).sum()
    }

    /// Puts a checkpointed row back.
    pub fn restore(&mut self, id: &str, json: Option<&str>, stream_time: i64) -> Result<(), String> {
        self.stream_time = self.stream_time.max(stream_time);
        let parsed = (|| {
            let mut parts = id.split(':');
            let side: usize = parts.next()?.parse().ok()?;
            let at = (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
            (side <= 1).then_some((side, at))
        })();
        let (side, at) = parsed.ok_or_else(|| format!("checkpointed join state: bad id {id:?}"))?;
        if let Some(old) = self.held[side].remove(&at) {
            if let Some(within) = self.join.within {
                self.expiring.remove(&(PairJoin::expiry(&within, side, old.time), side, at));
            }
            self.by_key[side].entry(old.key).or_default().remove(&at);
        }
        let Some(json) = json else { return Ok(()) };
        let held: Held = serde_json::from_str(json).map_err(|e| format!("checkpointed join state: {e}"))?;
        if let Some(within) = self.join.within {
            self.expiring.insert((PairJoin::expiry(&within, side, held.time), side, at));
        }
        self.by_key[side].entry(held.key.clone()).or_default().insert(at);
        self.held[side].insert(at, held);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ast::Statement;
    use crate::engine::operator::{Operator, Output};
    use crate::engine::parse::parse;
    use crate::engine::plan::test_support::source;
    use crate::engine::value::DataType;
    use pacer_log::UNION_STRIDE;

    fn operator(sql: &str, left: &Source, right: &Source) -> Operator {
        let Some(Statement::Select(select)) = parse(sql).unwrap().pop() else { panic!("{sql}") };
        Operator::new(PairJoin::plan(&select, left, right, &Geometry::default()).unwrap())
    }

    fn record(side: u32, offset: u64, t: i64, key: &str, value: Json) -> Record {
        Record {
            partition: side * UNION_STRIDE,
            offset,
            timestamp: t,
            key: Some(Bytes::from(key.to_string())),
            value: if value.is_null() { Bytes::new() } else { Bytes::from(value.to_string()) },
            headers: Vec::new(),
        }
    }

    fn values(out: &[Output]) -> Vec<Option<Json>> {
        out.iter().map(|o| o.value.clone().map(Json::Object)).collect()
    }

    #[test]
    fn streams_pair_within_the_window_and_outer_rows_come_out_when_it_closes() {
        let orders = source(
            "orders",
            SourceKind::Stream,
            &[("id", DataType::String, false), ("total", DataType::Double, false)],
        );
        let shipments = source(
            "shipments",
            SourceKind::Stream,
            &[("order_id", DataType::String, false), ("hub", DataType::String, false)],
        );
        let mut op = operator(
            "SELECT o.id, o.total, s.hub FROM orders o FULL OUTER JOIN shipments s
               WITHIN (1 SECOND, 10 SECONDS) GRACE PERIOD 2 SECONDS ON o.id = s.order_id EMIT CHANGES",
            &orders,
            &shipments,
        );
        let order =
            |offset, t, id: &str, total: f64| record(0, offset, t, id, serde_json::json!({"id": id, "total": total}));
        let ship =
            |offset, t, id: &str, hub: &str| record(1, offset, t, id, serde_json::json!({"order_id": id, "hub": hub}));
        let mut out = Vec::new();
        op.process(&order(0, 10_000, "a", 5.0), &mut out).unwrap();
        op.process(&order(1, 10_500, "b", 7.0), &mut out).unwrap();
        assert!(out.is_empty(), "nothing pairs yet, and the outer rows wait for the window");
        // 9.5 s after order a: within its 10 s; a second shipment of a pairs again.
        op.process(&ship(0, 19_500, "a", "zurich"), &mut out).unwrap();
        op.process(&ship(1, 19_600, "a", "basel"), &mut out).unwrap();
        // Order b is 9.5 s before: inside. An order 0.5 s after a shipment (9.9 s): inside the 1 s before.
        op.process(&ship(2, 20_000, "b", "bern"), &mut out).unwrap();
        op.process(&order(2, 20_500, "b", 8.0), &mut out).unwrap();
        let pairs = serde_json::json!([
            {"id": "a", "total": 5.0, "hub": "zurich"},
            {"id": "a", "total": 5.0, "hub": "basel"},
            {"id": "b", "total": 7.0, "hub": "bern"},
            {"id": "b", "total": 8.0, "hub": "bern"},
        ]);
        assert_eq!(Json::from(values(&out).into_iter().flatten().collect::<Vec<_>>()), pairs);
        assert_eq!(out[0].timestamp, 19_500, "a pair's time is its later row's");
        out.clear();
        // Too far apart: an order 1.5 s after shipment c pairs with nothing.
        op.process(&ship(3, 21_000, "c", "geneva"), &mut out).unwrap();
        op.process(&order(3, 22_500, "c", 1.0), &mut out).unwrap();
        assert!(out.is_empty());
        // Stream time passes shipment c's reach (1 s) plus grace (2 s): it comes out alone.
        op.process(&order(4, 24_100, "d", 2.0), &mut out).unwrap();
        assert_eq!(values(&out), [Some(serde_json::json!({"id": null, "total": null, "hub": "geneva"}))]);
        out.clear();
        // A record more than the grace period behind stream time is late, and said so.
        let late = op.process(&ship(4, 22_000, "d", "chur"), &mut out).unwrap_err();
        assert!(late.contains("late record"), "{late}");
        // Order c (reach 10 s + 2 s) waits until stream time passes 34.5 s.
        op.process(&order(5, 34_500, "e", 3.0), &mut out).unwrap();
        assert!(out.is_empty());
        op.process(&order(6, 34_600, "e", 3.0), &mut out).unwrap();
        assert_eq!(values(&out), [Some(serde_json::json!({"id": "c", "total": 1.0, "hub": null}))]);
        // Causes are unique and name the pair, left first.
        let ids: BTreeSet<String> = out.iter().map(|o| o.id.clone()).collect();
        assert_eq!(ids.len(), out.len());
    }

    #[test]
    fn held_rows_survive_a_checkpoint() {
        let a = source("a", SourceKind::Stream, &[("k", DataType::String, false), ("x", DataType::BigInt, false)]);
        let b = source("b", SourceKind::Stream, &[("k", DataType::String, false), ("y", DataType::BigInt, false)]);
        let sql = "SELECT a.k, a.x, b.y FROM a LEFT JOIN b WITHIN 5 SECONDS GRACE PERIOD 0 SECONDS ON a.k = b.k";
        let row = |side, offset, t, x: i64| record(side, offset, t, "k", serde_json::json!({"k": "k", "x": x, "y": x}));
        let mut first = operator(sql, &a, &b);
        let mut out = Vec::new();
        first.process(&row(0, 0, 1_000, 1), &mut out).unwrap();
        first.process(&row(0, 1, 2_000, 2), &mut out).unwrap();
        let mut second = operator(sql, &a, &b);
        for (id, json) in first.take_changes() {
            second.restore(id, json.as_deref(), first.stream_time()).unwrap();
        }
        for op in [&mut first, &mut second] {
            op.process(&row(1, 0, 5_500, 9), &mut out).unwrap();
            op.process(&row(0, 2, 7_000, 3), &mut out).unwrap();
        }
        let (one, two) = out.split_at(out.len() / 2);
        assert_eq!(values(one), values(two));
        assert_eq!(
            values(one),
            [
                Some(serde_json::json!({"k": "k", "x": 1, "y": 9})),
                Some(serde_json::json!({"k": "k", "x": 2, "y": 9})),
                Some(serde_json::json!({"k": "k", "x": 3, "y": 9})),
            ]
        );
    }

    #[test]
    fn tables_join_on_their_keys_and_a_key_that_stops_joining_is_deleted() {
        let users =
            source("users", SourceKind::Table, &[("id", DataType::String, true), ("name", DataType::String, false)]);
        let scores = source(
            "scores",
            SourceKind::Table,
            &[("user_id", DataType::String, true), ("points", DataType::BigInt, false)],
        );
        let mut op = operator(
            "SELECT u.id, u.name, s.points FROM users u JOIN scores s ON u.id = s.user_id WHERE s.points > 0",
            &users,
            &scores,
        );
        let user = |offset, id: &str, name: &str| record(0, offset, 1, id, serde_json::json!({"name": name}));
        let score = |offset, id: &str, points: i64| record(1, offset, 2, id, serde_json::json!({"points": points}));
        let mut out = Vec::new();
        op.process(&user(0, "u1", "ann"), &mut out).unwrap();
        op.process(&score(0, "u2", 4), &mut out).unwrap();
        assert!(out.is_empty(), "an inner join waits for both sides");
        op.process(&score(1, "u1", 3), &mut out).unwrap();
        op.process(&user(1, "u1", "anna"), &mut out).unwrap();
        op.process(&score(2, "u1", 0), &mut out).unwrap(); // filtered out: deleted
        op.process(&score(3, "u1", 5), &mut out).unwrap();
        op.process(&record(0, 2, 3, "u1", Json::Null), &mut out).unwrap(); // the user goes
        op.process(&record(1, 4, 3, "u1", Json::Null), &mut out).unwrap(); // nothing joined any more
        let got: Vec<(Option<String>, Option<Json>)> =
            out.iter().map(|o| (o.key.clone(), o.value.clone().map(Json::Object))).collect();
        let row = |name: &str, points: i64| Some(serde_json::json!({"id": "u1", "name": name, "points": points}));
        let u1 = Some("u1".to_string());
        assert_eq!(
            got,
            [
                (u1.clone(), row("ann", 3)),
                (u1.clone(), row("anna", 3)),
                (u1.clone(), None),
                (u1.clone(), row("anna", 5)),
                (u1.clone(), None),
            ]
        );
    }

    #[test]
    fn mistakes_are_named() {
        let s = source("s", SourceKind::Stream, &[("k", DataType::String, false)]);
        let t = source("t", SourceKind::Table, &[("k", DataType::String, true), ("v", DataType::String, false)]);
        let error = |sql: &str, left: &Source, right: &Source| {
            let Some(Statement::Select(select)) = parse(sql).unwrap().pop() else { panic!() };
            PairJoin::plan(&select, left, right, &Geometry::default()).unwrap_err().to_string()
        };
        let e = error("SELECT * FROM s a JOIN s b ON a.k = b.k", &s, &s);
        assert!(e.contains("needs WITHIN"), "{e}");
        let e = error("SELECT * FROM t a JOIN t b WITHIN 1 SECOND ON a.k = b.k", &t, &t);
        assert!(e.contains("WITHIN is for stream–stream joins"), "{e}");
        let e = error("SELECT * FROM t a JOIN t b ON a.v = b.k", &t, &t);
        assert!(e.contains("PRIMARY KEYs (v is not t's)"), "{e}");
        let e = error("SELECT a.k, COUNT(*) FROM t a JOIN t b ON a.k = b.k GROUP BY a.k", &t, &t);
        assert!(e.contains("no GROUP BY"), "{e}");
        let e = error("SELECT * FROM t JOIN s WITHIN 1 SECOND ON t.k = s.k", &t, &s);
        assert!(e.contains("put the stream first"), "{e}");
    }
}
