//! The ksqlDB grammar on top of sqlparser: our code reads the statement shapes ksqlDB adds
//! (CREATE STREAM, WINDOW …, EMIT …, TERMINATE), sqlparser reads every expression and select
//! item, and both report errors with the line and column.

use sqlparser::ast::Expr;
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Token, TokenWithSpan};

use super::ast::*;
use super::value::DataType;

/// A statement that did not parse: the message names what was expected, where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct SyntaxError(pub String);

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
const CLAUSE_WORDS: &[&str] =
    &["WINDOW", "WHERE", "GROUP", "HAVING", "EMIT", "PARTITION", "LIMIT", "JOIN", "INNER", "LEFT", "RIGHT", "FULL"];
/// The words of those that start a join.
const JOIN_WORDS: &[&str] = &["JOIN", "INNER", "LEFT", "RIGHT", "FULL"];

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
                self.expect_word("SELECT")?;
                let query = Box::new(self.select()?);
                return Ok(Statement::CreateAs { kind, name, properties, query, or_replace, if_not_exists });
            }
            return Ok(Statement::CreateSource { kind, name, columns, properties, or_replace, if_not_exists });
        }
        if self.word("INSERT") {
            self.expect_word("INTO")?;
            let target = self.name()?;
            let _ = self.properties()?;
            self.expect_word("SELECT")?;
            return Ok(Statement::InsertInto { target, query: Box::new(self.select()?) });
        }
        if self.word("SELECT") {
            return Ok(Statement::Select(Box::new(self.select()?)));
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

    /// After `SELECT`: the rest of a query.
    fn select(&mut self) -> R<Select> {
        let items = self.p.parse_projection()?;
        self.expect_word("FROM")?;
        let from = self.name()?;
        let bare_alias = matches!(&self.p.peek_token().token, Token::Word(w)
            if w.quote_style.is_some() || !CLAUSE_WORDS.iter().any(|c| w.value.eq_ignore_ascii_case(c)));
        let alias = if self.word("AS") || bare_alias { Some(self.name()?) } else { None };
        if JOIN_WORDS.iter().any(|w| self.peek_word(w)) {
            return self.fail(
                "WINDOW, WHERE, GROUP BY, PARTITION BY, HAVING, EMIT or LIMIT (joins come with the SQL II work)",
            );
        }
        let window = if self.word("WINDOW") { Some(self.window()?) } else { None };
        let selection = if self.word("WHERE") { Some(self.p.parse_expr()?) } else { None };
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
        let having = if self.word("HAVING") { Some(self.p.parse_expr()?) } else { None };
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
        Ok(Select { items, from, alias, window, selection, group_by, partition_by, having, emit, limit })
    }

    fn expressions(&mut self) -> R<Vec<Expr>> {
        if self.p.consume_token(&Token::LParen) {
            let list = self.p.parse_comma_separated(Parser::parse_expr)?;
            self.p.expect_token(&Token::RParen)?;
            return Ok(list);
        }
        self.p.parse_comma_separated(Parser::parse_expr)
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

    /// `5 MINUTES` and the like, in milliseconds.
    fn duration(&mut self) -> R<i64> {
        let n = self.p.parse_literal_uint()? as i64;
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
        Ok(n * ms)
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
        let start = self.p.index();
        for w in words {
            if !self.word(w) {
                while self.p.index() > start {
                    self.p.prev_token();
                }
                return false;
            }
        }
        true
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
    fn errors_name_the_position_and_what_was_expected() {
        let e = parse("SELECT who FROM s WINDOW TUMBLING (SIZE 5 FORTNIGHTS)").unwrap_err().to_string();
        assert!(e.contains("Expected: a time unit") && e.contains("Line: 1, Column: 43"), "{e}");
        let e = parse("CREATE STREAM s (a VARCHAR,\n b NUMBERISH)").unwrap_err().to_string();
        assert!(e.contains("Expected: a type") && e.contains("Line: 2, Column: 4"), "{e}");
        let e = parse("SELECT a FROM s WHERE").unwrap_err().to_string();
        assert!(e.contains("Line: 1, Column: 22"), "{e}");
        let e = parse("SELECT a FROM s GROUP a").unwrap_err().to_string();
        assert!(e.contains("Expected: BY"), "{e}");
        let e = parse("SELECT a FROM s JOIN t ON a = b").unwrap_err().to_string();
        assert!(e.contains("joins"), "{e}");
        let Some(Statement::Select(limited)) = parse("SELECT * FROM s LIMIT 3").unwrap().pop() else { panic!() };
        assert_eq!((limited.alias.as_deref(), limited.limit), (None, Some(3)), "LIMIT right after FROM");
    }
}
