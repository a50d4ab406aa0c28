//! History queries over Parquet segments answer exactly what the same queries answer over
//! the log: an engine reading compacted history (columnar where it can) against one reading
//! only the log, over the same records.

use std::sync::Arc;

use bytes::Bytes;
use pacer_core::NewRecord;
use pacer_history::{Compactor, CompactorConfig, HistoryStore};
use pacer_log::{EmbeddedLog, EmbeddedLogConfig, FsyncPolicy, Log};
use pacer_sql::engine::ast::{SourceKind, Statement};
use pacer_sql::engine::plan::{plan, Column, Source};
use pacer_sql::engine::value::DataType;
use pacer_sql::engine::{columnar, parse, Engine, Response, StatementOptions};
use pacer_sql::Geometry;
use serde_json::Value;

const BASE: i64 = 1_790_000_000_000;

/// Readings of 7 devices, a few a second, slightly out of order, with missing and
/// odd values: what history queries meet.
fn readings(from: usize, to: usize) -> Vec<NewRecord> {
    (from..to)
        .map(|i| {
            let device = format!("d-{}", i % 7);
            let jitter = ((i * 7919) % 5) as i64 * 300;
            let t = BASE + i as i64 * 400 - jitter;
            let value = match i % 53 {
                0 => "not json".to_string(),
                1 => format!(r#"{{"device":"{device}","status":"ok"}}"#),
                _ => {
                    let temp = ((i * 2_654_435_761) % 4000) as f64 / 100.0 - 5.0;
                    let status = if i % 3 == 0 { "warn" } else { "ok" };
                    format!(r#"{{"device":"{device}","temp":{temp},"level":{},"status":"{status}"}}"#, i % 11)
                }
            };
            NewRecord::new(t, Some(Bytes::from(device)), value)
        })
        .collect()
}

const QUERIES: &[(&str, bool)] = &[
    (
        "SELECT device, DATE_BIN(INTERVAL '1' MINUTE, ROWTIME) AS minute, COUNT(*) AS n, COUNT(temp) AS nt, \
         SUM(level) AS sl, SUM(temp) AS st, AVG(temp) AS a, MIN(temp) AS mn, MAX(level) AS mx, \
         STDDEV_SAMP(temp) AS sd, LATEST_BY_OFFSET(temp) AS lt, EARLIEST_BY_OFFSET(level) AS el \
         FROM readings GROUP BY device, DATE_BIN(INTERVAL '1' MINUTE, ROWTIME)",
        true,
    ),
    (
        "SELECT TIME_FLOOR(ROWTIME, 'PT5M') AS bucket, device, ROUND(AVG(temp), 3) AS a, COUNT(*) * 2 AS twice \
         FROM readings WHERE ROWTIME >= 1790000300000 AND temp > 10 AND status = 'ok' \
         GROUP BY TIME_FLOOR(ROWTIME, 'PT5M'), device HAVING COUNT(*) > 3",
        true,
    ),
    (
        "SELECT device, WINDOWSTART AS ws, WINDOWEND AS we, MAX(temp) AS m FROM readings \
         WINDOW TUMBLING (SIZE 30 SECONDS) GROUP BY device",
        true,
    ),
    ("SELECT level, COUNT(*) AS n, MIN(device) AS first FROM readings GROUP BY level", false),
    (
        "SELECT ROWTIME AS t, status, COUNT(*) AS n FROM readings WHERE ROWTIME < 1790000100000 \
         GROUP BY ROWTIME, status",
        true,
    ),
    ("SELECT status, COUNT(*) AS n FROM readings WHERE level BETWEEN 2 AND 5 GROUP BY status", true),
    // Whole temperatures are JSON integers: a DOUBLE column groups 3 and 3.0 as one.
    ("SELECT temp, COUNT(*) AS n, MAX(level) AS l FROM readings WHERE temp < 0 GROUP BY temp", true),
    (
        "SELECT device, COUNT(*) AS n FROM readings WINDOW HOPPING (SIZE 1 MINUTE, ADVANCE BY 30 SECONDS) \
         GROUP BY device",
        false,
    ),
    ("SELECT device, temp, ROWTIME AS t FROM readings WHERE temp > 34.5", false),
    (
        "WITH top AS (SELECT device, MAX(temp) AS m FROM readings GROUP BY device) \
         SELECT COUNT(*) AS devices, MAX(m) AS hottest FROM top",
        false,
    ),
];

#[tokio::test]
async fn history_queries_over_parquet_equal_the_same_queries_over_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EmbeddedLogConfig::new(dir.path().join("log"));
    config.fsync = FsyncPolicy::Off;
    config.partitions = 3;
    let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(config).unwrap());
    let store = HistoryStore::open(dir.path().join("history")).unwrap();
    for chunk in readings(0, 6000).chunks(500) {
        log.append("readings", chunk.to_vec()).await.unwrap();
    }
    // Two segments, then more records that only the log has.
    let compactor = Compactor::new(
        store.clone(),
        log.clone(),
        CompactorConfig {
            stream: "readings".into(),
            every: std::time::Duration::from_secs(3600),
            max_rows: 4000,
            keep_ms: None,
        },
    )
    .unwrap();
    assert_eq!(compactor.compact().await.unwrap(), 6000);
    assert_eq!(store.segments("readings").unwrap().len(), 2);
    log.append("readings", readings(6000, 7500)).await.unwrap();
    assert_eq!(compactor.compact().await.unwrap(), 1500, "a second pass takes only what is new");
    log.append("readings", readings(7500, 8000)).await.unwrap();

    let geometry = Arc::new(Geometry::default());
    let with_history =
        Engine::start(log.clone(), Some(store.clone()), geometry.clone(), Default::default()).await.unwrap();
    let create = "CREATE STREAM readings (device VARCHAR, temp DOUBLE, level BIGINT, status VARCHAR) \
                  WITH (kafka_topic='readings', value_format='JSON');";
    with_history.execute(create, &StatementOptions::default()).await.unwrap();
    let log_only = Engine::start(log.clone(), None, geometry.clone(), Default::default()).await.unwrap();

    let source = Source {
        name: "readings".into(),
        kind: SourceKind::Stream,
        topic: "readings".into(),
        columns: [
            ("device", DataType::String),
            ("temp", DataType::Double),
            ("level", DataType::BigInt),
            ("status", DataType::String),
        ]
        .into_iter()
        .map(|(name, data_type)| Column { name: name.into(), data_type, key: false })
        .collect(),
        timestamp: None,
        windowed: false,
    };
    for &(sql, columnar) in QUERIES {
        if let Some(Statement::Select(select)) = parse::parse(sql).unwrap().pop() {
            if select.ctes.is_empty() {
                let plan = plan(&select, &source, &geometry).unwrap();
                assert_eq!(columnar::Aggregation::new(&plan).is_ok(), columnar, "columnar or not: {sql}");
            }
        }
        let history_rows = rows(&with_history, sql).await;
        let log_rows = rows(&log_only, sql).await;
        assert!(!log_rows.is_empty(), "{sql}");
        assert_eq!(history_rows.len(), log_rows.len(), "{sql}");
        for (h, l) in history_rows.iter().zip(&log_rows) {
            assert!(same(h, l), "{sql}\n  history: {h:?}\n  log:     {l:?}");
        }
    }
}

/// The rows, sorted: partitions interleave differently in the log and in the segments,
/// so groups first appear in another order.
async fn rows(engine: &Engine, sql: &str) -> Vec<Vec<Value>> {
    match engine.execute(sql, &StatementOptions::default()).await.unwrap().pop() {
        Some(Response::Rows(mut result)) => {
            result.rows.sort_by_cached_key(|r| Value::Array(r.clone()).to_string());
            result.rows
        }
        _ => panic!("{sql}: not rows"),
    }
}

/// Equal, numbers to 1e-9 relative (sums may meet their terms in another order).
fn same(a: &[Value], b: &[Value]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
            _ => x == y,
        })
}
