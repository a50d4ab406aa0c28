//! Fuzzing the SQL front end on stable Rust: valid statements of every shape the engine runs,
//! mutated a token at a time (dropped, repeated, swapped for a keyword, operator or odd
//! literal), parsed, planned and run against a real log. Whatever the text, the engine
//! answers (rows or an error) within seconds and never panics; and it still answers a plain
//! query afterwards. A few hundred cases run in every test run; PACER_FUZZ_CASES runs more.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use pacer_core::NewRecord;
use pacer_log::{EmbeddedLog, EmbeddedLogConfig, FsyncPolicy, Log};
use pacer_sql::engine::{Engine, Response, StatementOptions};
use pacer_sql::Geometry;
use proptest::prelude::*;

/// Statements of the shapes the engine plans: what mutations start from.
const STATEMENTS: &[&str] = &[
    "SELECT who, speed FROM s WHERE speed > 3 AND who LIKE 'a%' LIMIT 5",
    "SELECT who, COUNT(*) AS n, AVG(speed) AS a, MAX(speed) AS m FROM s GROUP BY who",
    "SELECT who, WINDOWSTART AS ws, MIN(speed) AS lo FROM s WINDOW TUMBLING (SIZE 1 MINUTE) GROUP BY who",
    "SELECT who, COUNT(*) AS n FROM s WINDOW HOPPING (SIZE 2 MINUTES, ADVANCE BY 30 SECONDS) GROUP BY who EMIT CHANGES",
    "SELECT who, COUNT(*) AS n FROM s WINDOW SESSION (5 MINUTES) GROUP BY who",
    "SELECT CASE WHEN speed > 10 THEN 'fast' WHEN speed IS NULL THEN NULL ELSE 'slow' END AS pace FROM s",
    "SELECT CAST(speed AS VARCHAR) || '-' || UCASE(who) AS label, ROUND(speed * 3.6, 1) AS kmh FROM s",
    "SELECT who FROM s WHERE who IN ('a', 'b', 'c') AND speed BETWEEN 1 AND 20",
    "SELECT GEO_DISTANCE(lat, lon, -33.87, 151.21, 'km') AS d, COURSE_DISTANCE('c', lat, lon) AS p FROM s",
    "SELECT window_start, who, AVG(speed) AS a FROM TABLE(HOP(TABLE s, DESCRIPTOR(ROWTIME), INTERVAL '30' SECONDS, INTERVAL '1' MINUTE)) GROUP BY window_start, window_end, who",
    "WITH f AS (SELECT who, MAX(speed) AS top FROM s GROUP BY who) SELECT s.who, f.top FROM s JOIN f ON s.who = f.who",
    "SELECT a.who, b.speed FROM s a JOIN s b WITHIN 10 SECONDS ON a.who = b.who",
    "SELECT who, RANK() OVER (ORDER BY speed DESC) AS r FROM s GROUP BY who",
    "SELECT who, LATEST_BY_OFFSET(speed) AS last, STDDEV_SAMP(speed) AS sd FROM s GROUP BY who HAVING COUNT(*) > 1",
    "SELECT DATE_BIN(INTERVAL '1' MINUTE, ROWTIME) AS m, COUNT(*) AS n FROM s GROUP BY DATE_BIN(INTERVAL '1' MINUTE, ROWTIME)",
    "SELECT JSON_VALUE(info, '$.a.b') AS v, info->x AS y, tags[1] AS t FROM s",
    "CREATE STREAM fast AS SELECT who, speed FROM s WHERE speed > 10 EMIT CHANGES;",
    "CREATE TABLE per_who AS SELECT who, COUNT(*) AS n FROM s GROUP BY who;",
    "CREATE STREAM t2 (k VARCHAR KEY, v INT) WITH (kafka_topic='t2', value_format='JSON');",
    "INSERT INTO t2 SELECT who AS k, 1 AS v FROM s;",
    "DROP STREAM IF EXISTS fast; TERMINATE ALL;",
    "SHOW STREAMS; SHOW QUERIES; DESCRIBE s",
    "SELECT SUBSTRING(who, 1, 2) AS p, TRIM(who) AS t, ABS(-speed) AS a, FLOOR(speed) AS f FROM s",
    "SELECT who, ROWTIME, ROWKEY FROM s WHERE ROWTIME >= '2026-01-01T00:00:00Z' AND NOT (speed < 0)",
];

/// What a token may be swapped for or joined by.
const VOCABULARY: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "GROUP",
    "BY",
    "WINDOW",
    "TUMBLING",
    "EMIT",
    "CHANGES",
    "FINAL",
    "JOIN",
    "ON",
    "WITH",
    "AS",
    "(",
    ")",
    ",",
    ";",
    "*",
    "+",
    "-",
    "/",
    "%",
    "||",
    "=",
    "<>",
    "AND",
    "OR",
    "NOT",
    "NULL",
    "CASE",
    "END",
    "'x'",
    "''",
    "1e999",
    "-9223372036854775808",
    "0",
    "0.0",
    "NaN",
    "TABLE",
    "HOP",
    "DESCRIPTOR",
    "INTERVAL",
    "'-1'",
    "SECONDS",
    "->",
    "[",
    "]",
    "[0]",
    "COUNT(*)",
    "s",
    "who",
    "speed",
    "ROWTIME",
    "LIMIT",
    "OVER",
];

fn cases(default: u32) -> u32 {
    std::env::var("PACER_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Words and punctuation of a statement, in order.
fn tokens(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for c in sql.chars() {
        if c.is_alphanumeric() || matches!(c, '_' | '.' | '\'' | '$' | '-') {
            word.push(c);
            continue;
        }
        if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
        if !c.is_whitespace() {
            out.push(c.to_string());
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

fn mutate(pick: usize, edits: &[(usize, usize, u8)]) -> String {
    let mut t = tokens(STATEMENTS[pick % STATEMENTS.len()]);
    for &(at, word, kind) in edits {
        let at = at % (t.len() + 1);
        let word = VOCABULARY[word % VOCABULARY.len()].to_string();
        match kind % 4 {
            0 if at < t.len() => t[at] = word,
            1 => t.insert(at, word),
            2 if at < t.len() => {
                t.remove(at);
            }
            3 if at < t.len() => {
                let again = t[at].clone();
                t.insert(at, again);
            }
            _ => {}
        }
    }
    t.join(" ")
}

/// One engine over a log with a few fixes, shared by the cases (as a server's is).
fn engine() -> &'static (tokio::runtime::Runtime, Arc<Engine>) {
    static ENGINE: OnceLock<(tokio::runtime::Runtime, Arc<Engine>)> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
        let engine = runtime.block_on(async {
            let mut config = EmbeddedLogConfig::new(dir.path());
            config.fsync = FsyncPolicy::Off;
            let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(config).unwrap());
            let fixes: Vec<NewRecord> = (0..50)
                .map(|i| {
                    let who = ["a", "b", "c"][i % 3];
                    let value = format!(
                        r#"{{"who":"{who}","speed":{},"lat":-33.87,"lon":151.2,"info":{{"a":{{"b":1}}}},"tags":["x"]}}"#,
                        i % 13
                    );
                    NewRecord::new(1_790_000_000_000 + i as i64 * 1000, Some(Bytes::from(who)), value)
                })
                .collect();
            log.append("s", fixes).await.unwrap();
            let engine = Engine::start(log, None, Arc::new(Geometry::default()), Default::default()).await.unwrap();
            let declare = "CREATE STREAM s (who VARCHAR, speed DOUBLE, lat DOUBLE, lon DOUBLE, \
                           info MAP<VARCHAR, VARCHAR>, tags ARRAY<VARCHAR>) WITH (kafka_topic='s');";
            engine.execute(declare, &StatementOptions::default()).await.unwrap();
            engine
        });
        (runtime, engine)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(400), failure_persistence: None, ..Default::default() })]

    #[test]
    fn mutated_statements_get_an_answer_and_never_a_panic(
        pick in 0usize..1000,
        edits in proptest::collection::vec((0usize..200, 0usize..1000, 0u8..4), 0..5),
    ) {
        let sql = mutate(pick, &edits);
        let (runtime, engine) = engine();
        let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            runtime.block_on(async {
                let options = StatementOptions::default();
                let run = engine.execute(&sql, &options);
                match tokio::time::timeout(Duration::from_secs(20), run).await {
                    // A push query's rows are not awaited: its start is what is under test.
                    Ok(Ok(responses)) => responses.into_iter().for_each(drop::<Response>),
                    Ok(Err(e)) => prop_assert!(!e.to_string().is_empty(), "an error says something"),
                    Err(_) => prop_assert!(false, "no answer in 20 s to: {sql}"),
                }
                Ok(())
            })
        }));
        prop_assert!(answered.is_ok(), "panicked on: {}", sql);
        answered.unwrap()?;
        let still = runtime.block_on(engine.execute("SELECT who FROM s LIMIT 1", &StatementOptions::default()));
        prop_assert!(still.is_ok(), "after {sql}: {:?}", still.err());
    }
}
