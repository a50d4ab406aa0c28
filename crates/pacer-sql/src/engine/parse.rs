//! The ksqlDB grammar on top of sqlparser: our code reads the statement shapes ksqlDB adds
//! (CREATE STREAM, WINDOW …, EMIT …, TERMINATE), sqlparser reads every expression and select
//! item, and both report errors with the line and column.
//!
//! Statements come from anyone who may query, so their size is bounded: at most
//! [`MAX_SQL_BYTES`] of text, and expressions at most [`MAX_EXPRESSION_DEPTH`] deep (as DuckDB's
//! `max_expression_depth`), so planning and evaluating them, which recurse, stay within a
//! thread's stack. Parsing runs on a stack of its own, large enough to build and drop the
//! deepest tree the text allows before it is refused.

use std::ops::ControlFlow;

use sqlparser::ast::{Expr, Visit, Visitor};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Location, Token, TokenWithSpan};

use super::ast::*;
use super::value::DataType;

/// A statement that did not parse: the message names what was expected, where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct SyntaxError(pub String);

/// Most bytes of SQL text taken at once.
pub const MAX_SQL_BYTES: usize = 256 * 1024;
/// Deepest nesting of an expression (each operator, call or parenthesis is a level).
pub const MAX_EXPRESSION_DEPTH: usize = 1000;
/// The stack parsing runs on: a chain `1+1+…` as long as MAX_SQL_BYTES allows is a tree
/// that deep, built and dropped recursively.
const PARSE_STACK_BYTES: usize = 128 << 20;

/// Parses one or more statements separated by `;`.
pub fn parse(sql: &str) -> Result<Vec<Statement>, SyntaxError> {
    Ok(parse_with_text(sql)?.into_iter().map(|(s, _)| s).collect())
}

/// Parses statements, each with its own text (to keep in the catalog and show in SHOW QUERIES);
/// at least one.
pub fn parse_with_text(sql: &str) -> Result<Vec<(Statement, String)>, SyntaxError> {
    let statements = parse_file(sql)?;
    if statements.is_empty() {
        return Err(SyntaxError("expected a statement, found nothing".into()));
    }
    Ok(statements)
}

/// The statements of a file, which may hold none (only comments, or nothing).
pub fn parse_file(sql: &str) -> Result<Vec<(Statement, String)>, SyntaxError> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(SyntaxError(format!(
            "the SQL text is {} bytes; at most {MAX_SQL_BYTES} are taken at once: send the statements one by one",
            sql.len()
        )));
    }
    // What is refused is dropped here too, on the big stack.
    stacker::grow(PARSE_STACK_BYTES, || parse_statements(sql))
}

fn parse_statements(sql: &str) -> Result<Vec<(Statement, String)>, SyntaxError> {
    let dialect = GenericDialect {};
    let parser = Parser::new(&dialect).try_with_sql(sql).map_err(|e| syntax_error(sql, e))?;
    let mut p = Grammar { p: parser, pending_gt: false };
    let mut statements = Vec::new();
    loop {
        while p.p.consume_token(&Token::SemiColon) {}
        if p.p.peek_token().token == Token::EOF {
            break;
        }
        let start = p.p.peek_token().span.start;
        let statement = p.statement().map_err(|e| syntax_error(sql, e))?;
        let end = p.p.get_current_token().span.end;
        let text = sql.get(byte_offset(sql, start)..byte_offset(sql, end)).unwrap_or(sql).trim().to_string();
        statements.push((statement, text));
        if !p.p.consume_token(&Token::SemiColon) && p.p.peek_token().token != Token::EOF {
            let found = p.p.peek_token();
            return Err(syntax_error(sql, p.p.expected::<()>("end of statement", found).unwrap_err()));
        }
    }
    Ok(statements)
}

/// Refuses expressions nested deeper than [`MAX_EXPRESSION_DEPTH`], naming where they start.
fn check_depth<T: Visit + ?Sized>(node: &T, start: Location) -> Result<(), ParserError> {
    struct Depth(usize);
    impl Visitor for Depth {
        type Break = ();
        fn pre_visit_expr(&mut self, _: &Expr) -> ControlFlow<Self::Break> {
            self.0 += 1;
            if self.0 > MAX_EXPRESSION_DEPTH {
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        }
        fn post_visit_expr(&mut self, _: &Expr) -> ControlFlow<Self::Break> {
            self.0 -= 1;
            ControlFlow::Continue(())
        }
    }
    match node.visit(&mut Depth(0)) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(()) => Err(ParserError::ParserError(format!(
            "the expression at Line: {}, Column: {} nests more than {MAX_EXPRESSION_DEPTH} levels deep (operators, calls, \
             parentheses): split it, or use IN (…) for long lists of alternatives",
            start.line, start.column
        ))),
    }
}

/// The byte offset of a 1-based line and character column.
fn byte_offset(sql: &str, at: sqlparser::tokenizer::Location) -> usize {
    let mut offset = 0;
    for (i, line) in sql.split_inclusive('\n').enumerate() {
        if i + 1 == at.line as usize {
            return offset
                + line.char_indices().nth(at.column.saturating_sub(1) as usize).map_or(line.len(), |(b, _)| b);
        }
        offset += line.len();
    }
    sql.len()
}

/// sqlparser names the line and column, except when the statement ended too early.
pub fn syntax_error(sql: &str, e: ParserError) -> SyntaxError {
    let message = match e {
        ParserError::ParserError(m) | ParserError::TokenizerError(m) => m,
        ParserError::RecursionLimitExceeded => "the statement nests too deeply".to_string(),
    };
    if message.contains("Line:") {
        return SyntaxError(message);
    }
    let line = sql.lines().count().max(1);
    let column = sql.lines().last().map_or(0, |l| l.chars().count()) + 1;
    SyntaxError(format!("{message} at the end of the statement (Line: {line}, Column: {column})"))
}

/// Words that end a FROM clause, so they are never read as a table alias.
const CLAUSE_WORDS: &[&str] = &[
    "WINDOW",
    "WHERE",
    "GROUP",
    "HAVING",
    "EMIT",
    "PARTITION",
    "LIMIT",
    "JOIN",
    "INNER",
    "LEFT",
    "RIGHT",
    "FULL",
    "OUTER",
    "WITHIN",
    "ON",
];
/// The words of those that start a join.
const JOIN_WORDS: &[&str] = &["JOIN", "INNER", "LEFT", "RIGHT", "FULL", "OUTER"];

struct Grammar<'a> {
    p: Parser<'a>,
    /// The second half of a `>>` token closing two nested types.
    pending_gt: bool,
}

type R<T> = Result<T, ParserError>;

impl Grammar<'_> {
    fn statement(&mut self) -> R<Statement> {
        if self.word("CREATE") {
            let or_replace = self.words(&["OR", "REPLACE"]);
            let kind = self.source_kind()?;
            let if_not_exists = self.words(&["IF", "NOT", "EXISTS"]);
            let name = self.name()?;
            let columns = if self.p.consume_token(&Token::LParen) { self.columns()? } else { Vec::new() };
            let properties = self.properties()?;
            if self.word("AS") {
                if !columns.is_empty() {
                    return self.fail("AS SELECT without a column list (the query defines the columns)");
                }
                let query = Box::new(self.query()?);
                return Ok(Statement::CreateAs { kind, name, properties, query, or_replace, if_not_exists });
            }
            return Ok(Statement::CreateSource { kind, name, columns, properties, or_replace, if_not_exists });
        }
        if self.word("INSERT") {
            self.expect_word("INTO")?;
            let target = self.name()?;
            let _ = self.properties()?;
            return Ok(Statement::InsertInto { target, query: Box::new(self.query()?) });
        }
        if self.peek_word("SELECT") || self.peek_word("WITH") {
            return Ok(Statement::Select(Box::new(self.query()?)));
        }
        if self.word("DROP") {
            let kind = self.source_kind()?;
            let if_exists = self.words(&["IF", "EXISTS"]);
            let name = self.name()?;
            let delete_topic = self.words(&["DELETE", "TOPIC"]);
            return Ok(Statement::Drop { kind, name, if_exists, delete_topic });
        }
        if self.word("SHOW") || self.word("LIST") {
            let what = if self.word("STREAMS") {
                Show::Streams
            } else if self.word("TABLES") {
                Show::Tables
            } else if self.word("QUERIES") {
                Show::Queries
            } else if self.word("FUNCTIONS") {
                Show::Functions
            } else {
                return self.fail("STREAMS, TABLES, QUERIES or FUNCTIONS");
            };
            self.word("EXTENDED");
            return Ok(Statement::Show(what));
        }
        if self.word("DESCRIBE") {
            self.word("EXTENDED");
            return Ok(Statement::Describe { name: self.name()? });
        }
        if self.word("TERMINATE") {
            if self.word("ALL") {
                return Ok(Statement::Terminate { query: None });
            }
            return Ok(Statement::Terminate { query: Some(self.name()?) });
        }
        self.fail("CREATE, INSERT, SELECT, DROP, SHOW, LIST, DESCRIBE or TERMINATE")
    }

    fn source_kind(&mut self) -> R<SourceKind> {
        if self.word("STREAM") {
            Ok(SourceKind::Stream)
        } else if self.word("TABLE") {
            Ok(SourceKind::Table)
        } else {
            self.fail("STREAM or TABLE")
        }
    }

    /// `[WITH name AS (SELECT …), …] SELECT …`.
    fn query(&mut self) -> R<Select> {
        let mut ctes = Vec::new();
        if self.word("WITH") {
            loop {
                let name = self.name()?;
                self.expect_word("AS")?;
                self.p.expect_token(&Token::LParen)?;
                self.expect_word("SELECT")?;
                let select = self.select()?;
                self.p.expect_token(&Token::RParen)?;
                ctes.push((name, select));
                if !self.p.consume_token(&Token::Comma) {
                    break;
                }
            }
        }
        self.expect_word("SELECT")?;
        Ok(Select { ctes, ..self.select()? })
    }

    /// After `SELECT`: the rest of a query.
    fn select(&mut self) -> R<Select> {
        let start = self.p.peek_token().span.start;
        let items = self.p.parse_projection()?;
        check_depth(&items, start)?;
        self.expect_word("FROM")?;
        let (from, window_table) = if self.word("TABLE") { self.window_table()? } else { (self.name()?, None) };
        let alias = self.alias()?;
        let mut joins = Vec::new();
        loop {
            let kind = if self.word("JOIN") || self.words(&["INNER", "JOIN"]) {
                JoinKind::Inner
            } else if let Some(kind) = self.outer_join() {
                kind
            } else if JOIN_WORDS.iter().any(|w| self.peek_word(w)) {
                return self.fail("JOIN, INNER JOIN, LEFT, RIGHT or FULL [OUTER] JOIN");
            } else {
                break;
            };
            let source = self.name()?;
            let alias = self.alias()?;
            let within = if self.word("WITHIN") { Some(self.within()?) } else { None };
            self.expect_word("ON")?;
            joins.push(Join { kind, source, alias, within, on: self.expr()? });
        }
        let window = if self.word("WINDOW") { Some(self.window()?) } else { None };
        let selection = if self.word("WHERE") { Some(self.expr()?) } else { None };
        let mut group_by = Vec::new();
        let mut partition_by = Vec::new();
        if self.word("GROUP") {
            self.expect_word("BY")?;
            group_by = self.expressions()?;
        }
        if self.word("PARTITION") {
            self.expect_word("BY")?;
            partition_by = self.expressions()?;
        }
        let having = if self.word("HAVING") { Some(self.expr()?) } else { None };
        let emit = if self.word("EMIT") {
            if self.word("CHANGES") {
                Emit::Changes
            } else if self.word("FINAL") {
                Emit::Final
            } else {
                return self.fail("CHANGES or FINAL");
            }
        } else {
            Emit::None
        };
        let limit = if self.word("LIMIT") { Some(self.p.parse_literal_uint()?) } else { None };
        Ok(Select {
            ctes: Vec::new(),
            items,
            from,
            alias,
            window_table,
            joins,
            window,
            selection,
            group_by,
            partition_by,
            having,
            emit,
            limit,
        })
    }

    /// `AS name`, a bare name that is not a clause's first word, or nothing.
    fn alias(&mut self) -> R<Option<String>> {
        let bare = matches!(&self.p.peek_token().token, Token::Word(w)
            if w.quote_style.is_some() || !CLAUSE_WORDS.iter().any(|c| w.value.eq_ignore_ascii_case(c)));
        Ok(if self.word("AS") || bare { Some(self.name()?) } else { None })
    }

    /// After `FROM TABLE`: `(HOP(TABLE name, DESCRIPTOR(col), slide, size))` or
    /// `(TUMBLE(TABLE name, DESCRIPTOR(col), size))`, Flink's window table functions.
    fn window_table(&mut self) -> R<(String, Option<WindowTable>)> {
        self.p.expect_token(&Token::LParen)?;
        let hop = if self.word("HOP") {
            true
        } else if self.word("TUMBLE") {
            false
        } else {
            return self.fail("HOP or TUMBLE (window table functions)");
        };
        self.p.expect_token(&Token::LParen)?;
        self.expect_word("TABLE")?;
        let from = self.name()?;
        self.p.expect_token(&Token::Comma)?;
        self.expect_word("DESCRIPTOR")?;
        self.p.expect_token(&Token::LParen)?;
        let time_column = self.name()?;
        self.p.expect_token(&Token::RParen)?;
        self.p.expect_token(&Token::Comma)?;
        let first = self.interval()?;
        let kind = if hop {
            self.p.expect_token(&Token::Comma)?;
            let size = self.interval()?;
            if first > size {
                return self.fail("a slide no longer than the size (HOP(TABLE t, DESCRIPTOR(c), slide, size))");
            }
            WindowKind::Hopping { size, advance: first }
        } else {
            WindowKind::Tumbling { size: first }
        };
        self.p.expect_token(&Token::RParen)?;
        self.p.expect_token(&Token::RParen)?;
        Ok((from, Some(WindowTable { kind, time_column })))
    }

    /// `INTERVAL '30' SECONDS` (or a bare `30 SECONDS`), in milliseconds, above zero.
    fn interval(&mut self) -> R<i64> {
        let ms = if self.word("INTERVAL") {
            let token = self.p.next_token();
            let Token::SingleQuotedString(n) = &token.token else { return self.p.expected("a quoted number", token) };
            let Ok(n) = n.trim().parse::<i64>() else { return self.p.expected("a whole number in quotes", token) };
            n * self.time_unit()?
        } else {
            self.duration()?
        };
        if ms <= 0 {
            return self.fail("an interval greater than zero");
        }
        Ok(ms)
    }

    fn expressions(&mut self) -> R<Vec<Expr>> {
        let parenthesized = self.p.consume_token(&Token::LParen);
        let start = self.p.peek_token().span.start;
        let list = self.p.parse_comma_separated(Parser::parse_expr)?;
        check_depth(&list, start)?;
        if parenthesized {
            self.p.expect_token(&Token::RParen)?;
        }
        Ok(list)
    }

    /// An expression, no deeper than [`MAX_EXPRESSION_DEPTH`].
    fn expr(&mut self) -> R<Expr> {
        let start = self.p.peek_token().span.start;
        let expr = self.p.parse_expr()?;
        check_depth(&expr, start)?;
        Ok(expr)
    }

    /// After `WINDOW`: `TUMBLING (SIZE 5 MINUTES[, GRACE PERIOD …][, RETENTION …])`,
    /// `HOPPING (SIZE …, ADVANCE BY …, …)` or `SESSION (30 SECONDS, …)`.
    fn window(&mut self) -> R<Window> {
        enum Shape {
            Tumbling,
            Hopping,
            Session,
        }
        let shape = if self.word("TUMBLING") {
            Shape::Tumbling
        } else if self.word("HOPPING") {
            Shape::Hopping
        } else if self.word("SESSION") {
            Shape::Session
        } else {
            return self.fail("TUMBLING, HOPPING or SESSION");
        };
        self.p.expect_token(&Token::LParen)?;
        let (mut size, mut advance, mut gap, mut grace, mut retention) = (None, None, None, None, None);
        if matches!(shape, Shape::Session) {
            gap = Some(self.duration()?);
            let _ = self.p.consume_token(&Token::Comma);
        }
        while !self.p.consume_token(&Token::RParen) {
            if self.word("SIZE") {
                size = Some(self.duration()?);
            } else if self.word("ADVANCE") {
                self.expect_word("BY")?;
                advance = Some(self.duration()?);
            } else if self.word("GRACE") {
                self.expect_word("PERIOD")?;
                grace = Some(self.duration()?);
            } else if self.word("RETENTION") {
                retention = Some(self.duration()?);
            } else {
                return self.fail("SIZE, ADVANCE BY, GRACE PERIOD, RETENTION or )");
            }
            if !self.p.consume_token(&Token::Comma) {
                self.p.expect_token(&Token::RParen)?;
                break;
            }
        }
        if [size, advance, gap].into_iter().flatten().any(|d| d == 0) {
            return self.fail("window sizes, advances and gaps greater than zero");
        }
        let kind = match shape {
            Shape::Tumbling => {
                WindowKind::Tumbling { size: size.map_or_else(|| self.fail("SIZE in a TUMBLING window"), Ok)? }
            }
            Shape::Hopping => {
                let size = size.map_or_else(|| self.fail("SIZE in a HOPPING window"), Ok)?;
                let advance = advance.map_or_else(|| self.fail("ADVANCE BY in a HOPPING window"), Ok)?;
                if advance > size {
                    return self.fail("an ADVANCE BY no longer than the SIZE");
                }
                WindowKind::Hopping { size, advance }
            }
            Shape::Session => WindowKind::Session { gap: gap.expect("read first") },
        };
        Ok(Window { kind, grace: grace.unwrap_or(DEFAULT_GRACE_MS), retention })
    }

    /// `LEFT [OUTER] JOIN`, `RIGHT [OUTER] JOIN`, `FULL [OUTER] JOIN` or `OUTER JOIN` (full).
    fn outer_join(&mut self) -> Option<JoinKind> {
        for (word, kind) in [("LEFT", JoinKind::Left), ("RIGHT", JoinKind::Right), ("FULL", JoinKind::Full)] {
            if self.words(&[word, "JOIN"]) || self.words(&[word, "OUTER", "JOIN"]) {
                return Some(kind);
            }
        }
        self.words(&["OUTER", "JOIN"]).then_some(JoinKind::Full)
    }

    /// After `WITHIN`: `5 MINUTES` or `(before, after)`, then `GRACE PERIOD …` if given.
    fn within(&mut self) -> R<Within> {
        let (before, after) = if self.p.consume_token(&Token::LParen) {
            let before = self.duration()?;
            self.p.expect_token(&Token::Comma)?;
            let after = self.duration()?;
            self.p.expect_token(&Token::RParen)?;
            (before, after)
        } else {
            let both = self.duration()?;
            (both, both)
        };
        let grace = if self.word("GRACE") {
            self.expect_word("PERIOD")?;
            self.duration()?
        } else {
            DEFAULT_GRACE_MS
        };
        Ok(Within { before, after, grace })
    }

    /// `5 MINUTES` and the like, in milliseconds.
    fn duration(&mut self) -> R<i64> {
        let n = self.p.parse_literal_uint()? as i64;
        Ok(n * self.time_unit()?)
    }

    /// A time unit word, in milliseconds.
    fn time_unit(&mut self) -> R<i64> {
        let unit = self.p.next_token();
        let ms = match &unit.token {
            Token::Word(w) => match w.value.to_ascii_uppercase().trim_end_matches('S') {
                "MILLISECOND" => 1,
                "SECOND" => 1000,
                "MINUTE" => 60_000,
                "HOUR" => 3_600_000,
                "DAY" => 86_400_000,
                _ => return self.p.expected("a time unit (MILLISECONDS, SECONDS, MINUTES, HOURS, DAYS)", unit),
            },
            _ => return self.p.expected("a time unit (MILLISECONDS, SECONDS, MINUTES, HOURS, DAYS)", unit),
        };
        Ok(ms)
    }

    /// After `(`: column definitions up to `)`.
    fn columns(&mut self) -> R<Vec<ColumnDef>> {
        let mut columns = Vec::new();
        loop {
            let name = self.name()?;
            let data_type = self.data_type()?;
            let key = if self.word("PRIMARY") {
                self.expect_word("KEY")?;
                true
            } else {
                self.word("KEY")
            };
            columns.push(ColumnDef { name, data_type, key });
            if !self.p.consume_token(&Token::Comma) {
                self.p.expect_token(&Token::RParen)?;
                return Ok(columns);
            }
        }
    }

    fn data_type(&mut self) -> R<DataType> {
        let token = self.p.next_token();
        let Token::Word(w) = &token.token else { return self.p.expected("a type", token) };
        Ok(match w.value.to_ascii_uppercase().as_str() {
            "BOOLEAN" | "BOOL" => DataType::Boolean,
            "INT" | "INTEGER" => DataType::Int,
            "BIGINT" => DataType::BigInt,
            "DOUBLE" | "FLOAT" | "REAL" => DataType::Double,
            "VARCHAR" | "STRING" => DataType::String,
            "BYTES" => DataType::Bytes,
            "TIMESTAMP" => DataType::Timestamp,
            "DECIMAL" => {
                self.p.expect_token(&Token::LParen)?;
                let precision = self.p.parse_literal_uint()? as u8;
                self.p.expect_token(&Token::Comma)?;
                let scale = self.p.parse_literal_uint()? as u8;
                self.p.expect_token(&Token::RParen)?;
                DataType::Decimal(precision, scale)
            }
            "ARRAY" => {
                self.p.expect_token(&Token::Lt)?;
                let item = self.data_type()?;
                self.close_angle()?;
                DataType::Array(Box::new(item))
            }
            "MAP" => {
                self.p.expect_token(&Token::Lt)?;
                let _key = self.data_type()?;
                self.p.expect_token(&Token::Comma)?;
                let value = self.data_type()?;
                self.close_angle()?;
                DataType::Map(Box::new(value))
            }
            "STRUCT" => {
                self.p.expect_token(&Token::Lt)?;
                let mut fields = Vec::new();
                loop {
                    let name = self.name()?;
                    fields.push((name, self.data_type()?));
                    if !self.p.consume_token(&Token::Comma) {
                        break;
                    }
                }
                self.close_angle()?;
                DataType::Struct(fields)
            }
            _ => return self.p.expected(
                "a type (BOOLEAN, INT, BIGINT, DOUBLE, DECIMAL, VARCHAR, STRING, BYTES, TIMESTAMP, ARRAY, MAP, STRUCT)",
                token,
            ),
        })
    }

    /// `>`, where `>>` closes two nested types.
    fn close_angle(&mut self) -> R<()> {
        if std::mem::take(&mut self.pending_gt) {
            return Ok(());
        }
        let token = self.p.next_token();
        match token.token {
            Token::Gt => Ok(()),
            Token::ShiftRight => {
                self.pending_gt = true;
                Ok(())
            }
            _ => self.p.expected(">", token),
        }
    }

    /// `WITH (name = 'value', …)`, or nothing.
    fn properties(&mut self) -> R<Properties> {
        let mut properties = Properties::new();
        if !self.word("WITH") {
            return Ok(properties);
        }
        self.p.expect_token(&Token::LParen)?;
        loop {
            let name = self.name()?.to_ascii_uppercase();
            self.p.expect_token(&Token::Eq)?;
            let token = self.p.next_token();
            let value = match &token.token {
                Token::SingleQuotedString(s) => s.clone(),
                Token::Number(n, _) => n.clone(),
                Token::Word(w) => w.value.clone(),
                _ => return self.p.expected("a quoted value", token),
            };
            properties.insert(name, value);
            if !self.p.consume_token(&Token::Comma) {
                self.p.expect_token(&Token::RParen)?;
                return Ok(properties);
            }
        }
    }

    /// A stream, table, column or query name, quoted or not.
    fn name(&mut self) -> R<String> {
        Ok(self.p.parse_identifier()?.value)
    }

    fn peek_word(&self, word: &str) -> bool {
        matches!(&self.p.peek_token().token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word))
    }

    /// Consumes `word` when it comes next.
    fn word(&mut self, word: &str) -> bool {
        if self.peek_word(word) {
            self.p.next_token();
            return true;
        }
        false
    }

    /// Consumes all of `words` when they come next, or none of them.
    fn words(&mut self, words: &[&str]) -> bool {
        // Looked at before any is taken: stepping back over whitespace is not exact.
        let all = words.iter().enumerate().all(|(i, w)| {
            matches!(&self.p.peek_nth_token(i).token, Token::Word(x) if x.quote_style.is_none() && x.value.eq_ignore_ascii_case(w))
        });
        if all {
            for _ in words {
                self.p.next_token();
            }
        }
        all
    }

    fn expect_word(&mut self, word: &str) -> R<()> {
        if self.word(word) {
            return Ok(());
        }
        self.fail(word)
    }

    fn fail<T>(&self, expected: &str) -> R<T> {
        let found: TokenWithSpan = self.p.peek_token();
        self.p.expected(expected, found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_race_query_of_the_design_parses() {
        let sql = "CREATE TABLE runner_status AS
SELECT who,
       MIN(speed) AS min_speed, MAX(speed) AS max_speed,
       MIN(GEO_DISTANCE(lat, lon, -33.87014, 151.211945, 'km')) AS dist_to_finish,
       COUNT(*) AS num_events
FROM data_demo_stream WINDOW TUMBLING (SIZE 5 MINUTE)
GROUP BY who;";
        let statements = parse(sql).unwrap();
        let [Statement::CreateAs { kind, name, query, .. }] = statements.as_slice() else {
            panic!("expected CREATE TABLE AS")
        };
        assert_eq!((*kind, name.as_str()), (SourceKind::Table, "runner_status"));
        assert_eq!(query.items.len(), 5);
        assert_eq!(query.from, "data_demo_stream");
        assert_eq!(
            query.window,
            Some(Window { kind: WindowKind::Tumbling { size: 300_000 }, grace: DEFAULT_GRACE_MS, retention: None })
        );
        assert_eq!(query.group_by.len(), 1);
        assert_eq!(query.emit, Emit::None);
    }

    #[test]
    fn sources_windows_and_emit_clauses() {
        let sql = "CREATE STREAM data_demo_stream (who VARCHAR KEY, timeepoc BIGINT, lat DOUBLE, lon DOUBLE,
                     tags ARRAY<ARRAY<STRING>>, pos STRUCT<lat DOUBLE, lon DOUBLE>)
                   WITH (kafka_topic='race', value_format='JSON', timestamp='timeepoc');
                   SELECT who, COUNT(*) FROM s WINDOW HOPPING (SIZE 1 MINUTE, ADVANCE BY 30 SECONDS, GRACE PERIOD 10 SECONDS)
                   GROUP BY who EMIT FINAL;
                   SELECT * FROM s WINDOW SESSION (5 MINUTES) GROUP BY who EMIT CHANGES LIMIT 3;
                   show queries; drop table if exists t delete topic; terminate CTAS_T_1; describe s";
        let statements = parse(sql).unwrap();
        assert_eq!(statements.len(), 7);
        let Statement::CreateSource { columns, properties, .. } = &statements[0] else { panic!() };
        assert!(columns[0].key);
        assert_eq!(columns[4].data_type, DataType::Array(Box::new(DataType::Array(Box::new(DataType::String)))));
        assert_eq!(properties["TIMESTAMP"], "timeepoc");
        let Statement::Select(hop) = &statements[1] else { panic!() };
        assert_eq!(hop.window.unwrap().kind, WindowKind::Hopping { size: 60_000, advance: 30_000 });
        assert_eq!(hop.window.unwrap().grace, 10_000);
        assert_eq!(hop.emit, Emit::Final);
        let Statement::Select(session) = &statements[2] else { panic!() };
        assert_eq!(session.window.unwrap().kind, WindowKind::Session { gap: 300_000 });
        assert_eq!((session.emit, session.limit), (Emit::Changes, Some(3)));
        assert_eq!(statements[3], Statement::Show(Show::Queries));
        assert_eq!(
            statements[4],
            Statement::Drop { kind: SourceKind::Table, name: "t".into(), if_exists: true, delete_topic: true }
        );
        assert_eq!(statements[5], Statement::Terminate { query: Some("CTAS_T_1".into()) });
        let texts: Vec<String> = parse_with_text(sql).unwrap().into_iter().map(|(_, t)| t).collect();
        assert!(texts[0].starts_with("CREATE STREAM data_demo_stream") && texts[0].ends_with("timestamp='timeepoc')"));
        assert_eq!(
            texts[3..],
            ["show queries", "drop table if exists t delete topic", "terminate CTAS_T_1", "describe s"]
        );
    }

    #[test]
    fn ctes_joins_and_window_table_functions() {
        let sql = "WITH w AS (SELECT window_start, k, COUNT(*) AS n
                     FROM TABLE(HOP(TABLE s, DESCRIPTOR(ts), INTERVAL '30' SECONDS, INTERVAL '1' MINUTE))
                     GROUP BY window_start, window_end, k),
                   v AS (SELECT * FROM w)
                   SELECT a.k, b.name FROM v a JOIN t b ON a.k = b.k LEFT OUTER JOIN u ON u.k = a.k LIMIT 5";
        let Some(Statement::Select(q)) = parse(sql).unwrap().pop() else { panic!() };
        assert_eq!(q.ctes.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["w", "v"]);
        let windows = q.ctes[0].1.window_table.clone().unwrap();
        assert_eq!(windows.kind, WindowKind::Hopping { size: 60_000, advance: 30_000 });
        assert_eq!((q.ctes[0].1.from.as_str(), windows.time_column.as_str()), ("s", "ts"));
        assert_eq!((q.from.as_str(), q.alias.as_deref(), q.limit), ("v", Some("a"), Some(5)));
        let joins: Vec<_> = q.joins.iter().map(|j| (j.kind, j.source.as_str(), j.alias.as_deref())).collect();
        assert_eq!(joins, [(JoinKind::Inner, "t", Some("b")), (JoinKind::Left, "u", None)]);
        assert_eq!(q.joins[1].on.to_string(), "u.k = a.k");
        let Some(Statement::Select(q)) = parse(
            "SELECT * FROM a FULL OUTER JOIN b WITHIN (10 SECONDS, 1 MINUTE) GRACE PERIOD 5 SECONDS ON a.k = b.k
             RIGHT JOIN c WITHIN 2 HOURS ON c.k = a.k OUTER JOIN d ON d.k = a.k",
        )
        .unwrap()
        .pop() else {
            panic!()
        };
        let joins: Vec<_> = q.joins.iter().map(|j| (j.kind, j.within)).collect();
        assert_eq!(
            joins,
            [
                (JoinKind::Full, Some(Within { before: 10_000, after: 60_000, grace: 5_000 })),
                (JoinKind::Right, Some(Within { before: 7_200_000, after: 7_200_000, grace: DEFAULT_GRACE_MS })),
                (JoinKind::Full, None),
            ]
        );
        let Some(Statement::CreateAs { query, .. }) =
            parse("CREATE STREAM x AS WITH w AS (SELECT * FROM s) SELECT * FROM w").unwrap().pop()
        else {
            panic!()
        };
        assert_eq!(query.ctes.len(), 1);
        let Some(Statement::Select(t)) =
            parse("SELECT 1 FROM TABLE(TUMBLE(TABLE s, DESCRIPTOR(ROWTIME), INTERVAL '5' MINUTES))").unwrap().pop()
        else {
            panic!()
        };
        assert_eq!(t.window_table.unwrap().kind, WindowKind::Tumbling { size: 300_000 });
    }

    #[test]
    fn errors_name_the_position_and_what_was_expected() {
        let e = parse("SELECT who FROM s WINDOW TUMBLING (SIZE 5 FORTNIGHTS)").unwrap_err().to_string();
        assert!(e.contains("Expected: a time unit") && e.contains("Line: 1, Column: 43"), "{e}");
        let e = parse("CREATE STREAM s (a VARCHAR,\n b NUMBERISH)").unwrap_err().to_string();
        assert!(e.contains("Expected: a type") && e.contains("Line: 2, Column: 4"), "{e}");
        let e = parse("SELECT a FROM s WHERE").unwrap_err().to_string();
        assert!(e.contains("Line: 1, Column: 22"), "{e}");
        let e = parse("SELECT a FROM s GROUP a").unwrap_err().to_string();
        assert!(e.contains("Expected: BY"), "{e}");
        let e = parse("SELECT a FROM s x RIGHT t ON a = b").unwrap_err().to_string();
        assert!(e.contains("RIGHT or FULL [OUTER] JOIN") && e.contains("Column: 19"), "{e}");
        let e = parse("SELECT a FROM s JOIN t WITHIN 5 FORTNIGHTS ON a = b").unwrap_err().to_string();
        assert!(e.contains("Expected: a time unit") && e.contains("Column: 33"), "{e}");
        let e = parse("SELECT a FROM TABLE(HOP(TABLE s, DESCRIPTOR(ts), INTERVAL '2' MINUTES, INTERVAL '1' MINUTE))")
            .unwrap_err()
            .to_string();
        assert!(e.contains("a slide no longer than the size"), "{e}");
        let e = parse("SELECT a FROM TABLE(SESSION(TABLE s))").unwrap_err().to_string();
        assert!(e.contains("HOP or TUMBLE"), "{e}");
        let Some(Statement::Select(limited)) = parse("SELECT * FROM s LIMIT 3").unwrap().pop() else { panic!() };
        assert_eq!((limited.alias.as_deref(), limited.limit), (None, Some(3)), "LIMIT right after FROM");
    }

    #[test]
    fn deep_and_huge_statements_are_refused_with_the_limit_named() {
        let chain = |n: usize, op: &str| format!("SELECT {} AS x FROM s", vec!["1"; n].join(op));
        // MAX_EXPRESSION_DEPTH levels: the chain's n - 1 operators and the literal below them.
        assert!(parse(&chain(MAX_EXPRESSION_DEPTH, "+")).is_ok());
        let too_deep = parse(&chain(MAX_EXPRESSION_DEPTH + 1, "+")).unwrap_err().0;
        assert!(too_deep.contains("more than 1000 levels") && too_deep.contains("Line: 1, Column: 8"), "{too_deep}");
        for op in [" AND ", " || ", " * "] {
            let where_clause = format!("SELECT x FROM s WHERE {}", vec!["x = 1"; 5000].join(op));
            assert!(parse(&where_clause).is_err(), "{op}");
        }
        // As long a chain as the size limit allows is built, refused and dropped without harm.
        let longest = chain((MAX_SQL_BYTES - 40) / 2, "+");
        assert!(longest.len() <= MAX_SQL_BYTES);
        assert!(parse(&longest).unwrap_err().0.contains("levels"));
        let grouped = format!("SELECT COUNT(*) AS n FROM s GROUP BY {}", vec!["x"; 3000].join(" + "));
        assert!(parse(&grouped).unwrap_err().0.contains("levels"), "GROUP BY is checked too");
        let huge = format!("SELECT x FROM s WHERE x IN ({})", vec!["1"; MAX_SQL_BYTES / 2].join(","));
        assert!(parse(&huge).unwrap_err().0.contains("at most 262144"));
        // Wide is fine: a long IN list is one level.
        let wide = format!("SELECT x FROM s WHERE x IN ({})", vec!["1"; 20_000].join(","));
        assert!(parse(&wide).is_ok());
    }
}
