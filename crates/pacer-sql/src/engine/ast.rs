//! The statements the engine runs, as parsed: ksqlDB's shapes, with sqlparser's expressions.

use std::collections::BTreeMap;

use sqlparser::ast::{Expr, SelectItem};

use super::value::DataType;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SourceKind {
    Stream,
    Table,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Stream => "STREAM",
            SourceKind::Table => "TABLE",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    /// `CREATE STREAM|TABLE name (columns) WITH (…)`: declares a source over a log stream.
    CreateSource {
        kind: SourceKind,
        name: String,
        columns: Vec<ColumnDef>,
        properties: Properties,
        or_replace: bool,
        if_not_exists: bool,
    },
    /// `CREATE STREAM|TABLE name [WITH (…)] AS SELECT …`: starts a persistent query.
    CreateAs {
        kind: SourceKind,
        name: String,
        properties: Properties,
        query: Box<Select>,
        or_replace: bool,
        if_not_exists: bool,
    },
    /// `INSERT INTO name SELECT …`: a persistent query writing into an existing stream.
    InsertInto {
        target: String,
        query: Box<Select>,
    },
    /// A push query (`EMIT CHANGES`) or a pull query.
    Select(Box<Select>),
    Drop {
        kind: SourceKind,
        name: String,
        if_exists: bool,
        delete_topic: bool,
    },
    Show(Show),
    Describe {
        name: String,
    },
    /// `TERMINATE id` or `TERMINATE ALL` (None).
    Terminate {
        query: Option<String>,
    },
}

impl Statement {
    /// Whether it changes the catalog (what runs and what exists), rather than reading.
    pub fn changes_catalog(&self) -> bool {
        !matches!(self, Statement::Select(_) | Statement::Show(_) | Statement::Describe { .. })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    Streams,
    Tables,
    Queries,
    Functions,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ColumnDef {
    pub name: String,
    pub data_type: DataType,
    /// Declared `KEY` (stream) or `PRIMARY KEY` (table): read from the record key.
    pub key: bool,
}

/// `WITH (…)` properties, names upper-cased.
pub type Properties = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq)]
pub struct Select {
    /// `WITH name AS (SELECT …), …` before the query (the outermost one only).
    pub ctes: Vec<(String, Select)>,
    pub items: Vec<SelectItem>,
    pub from: String,
    pub alias: Option<String>,
    /// `FROM TABLE(HOP(TABLE from, DESCRIPTOR(col), slide, size))` or `TUMBLE(…, size)`:
    /// Flink's window table functions; each row belongs to its windows.
    pub window_table: Option<WindowTable>,
    pub joins: Vec<Join>,
    pub window: Option<Window>,
    pub selection: Option<Expr>,
    pub group_by: Vec<Expr>,
    pub partition_by: Vec<Expr>,
    pub having: Option<Expr>,
    pub emit: Emit,
    pub limit: Option<u64>,
}

/// A window table function in FROM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowTable {
    pub kind: WindowKind,
    /// The DESCRIPTOR column: event time (ROWTIME, or the column holding it).
    pub time_column: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    Inner,
    /// Every left row, with NULLs where the right side has no match.
    Left,
    /// Every right row, with NULLs where the left side has no match.
    Right,
    /// Every row of both sides.
    Full,
}

impl JoinKind {
    /// Whether rows of `side` (0 left, 1 right) without a match still make a row.
    pub fn keeps_unmatched(self, side: usize) -> bool {
        matches!((self, side), (JoinKind::Left, 0) | (JoinKind::Right, 1) | (JoinKind::Full, _))
    }
}

/// `[INNER | LEFT | RIGHT | FULL] [OUTER] JOIN source [alias] [WITHIN …] ON condition`.
#[derive(Debug, Clone, PartialEq)]
pub struct Join {
    pub kind: JoinKind,
    pub source: String,
    pub alias: Option<String>,
    /// `WITHIN`: how far apart in event time two stream rows may be to pair.
    pub within: Option<Within>,
    pub on: Expr,
}

/// ksqlDB's `WITHIN 1 HOUR` or `WITHIN (10 SECONDS, 1 HOUR)` `[GRACE PERIOD …]`: a right row
/// pairs with a left row at `t` when its time lies in `[t - before, t + after]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Within {
    pub before: i64,
    pub after: i64,
    /// How long after stream time passed a row's reach records may still come (ms).
    pub grace: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emit {
    /// No EMIT clause: a pull query (or, in CREATE … AS, the same as CHANGES).
    None,
    Changes,
    /// One row per window, once the window closed (its end plus the grace period passed).
    Final,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    Tumbling { size: i64 },
    Hopping { size: i64, advance: i64 },
    Session { gap: i64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub kind: WindowKind,
    /// How long after a window's end records may still update it (ms); ksqlDB's default.
    pub grace: i64,
    /// How long closed windows stay queryable (ms).
    pub retention: Option<i64>,
}

/// ksqlDB's grace period when none is given: 24 hours.
pub const DEFAULT_GRACE_MS: i64 = 24 * 3600 * 1000;
