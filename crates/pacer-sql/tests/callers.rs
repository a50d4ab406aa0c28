//! A statement runs as its caller: one that may not change the catalog is refused DDL, and
//! its queries (pull, push, joins, history in Parquet) answer over only the records it may
//! read. No query writes Pacer's own streams, whoever asks.

use std::sync::Arc;

use bytes::Bytes;
use pacer_core::NewRecord;
use pacer_history::{Compactor, CompactorConfig, HistoryStore};
use pacer_log::{EmbeddedLog, EmbeddedLogConfig, FsyncPolicy, Log, RecordFilter};
use pacer_sql::engine::{Caller, Engine, Response, SqlError, StatementOptions};
use pacer_sql::Geometry;
use serde_json::{json, Value};

const BASE: i64 = 1_790_000_000_000;

fn fixes(from: i64, to: i64) -> Vec<NewRecord> {
    (from..to)
        .map(|i| {
            let who = ["alice", "bob", "carol"][(i % 3) as usize];
            let value = json!({"who": who, "speed": i % 17}).to_string();
            NewRecord::new(BASE + i * 1000, Some(Bytes::from(who)), value)
        })
        .collect()
}

async fn run(engine: &Engine, sql: &str, caller: &Caller) -> Result<Vec<Vec<Value>>, SqlError> {
    match engine.execute_as(sql, &StatementOptions::default(), caller).await?.pop() {
        Some(Response::Rows(result)) => Ok(result.rows),
        _ => panic!("{sql}: not rows"),
    }
}

#[tokio::test]
async fn a_caller_reads_only_its_records_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EmbeddedLogConfig::new(dir.path().join("log"));
    config.fsync = FsyncPolicy::Off;
    config.partitions = 2;
    let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(config).unwrap());
    let store = HistoryStore::open(dir.path().join("history")).unwrap();
    log.append("fixes", fixes(0, 3000)).await.unwrap();
    // The first records as Parquet history, the rest only in the log.
    let compactor = Compactor::new(
        store.clone(),
        log.clone(),
        CompactorConfig {
            stream: "fixes".into(),
            every: std::time::Duration::from_secs(3600),
            max_rows: 1000,
            keep_ms: None,
        },
    )
    .unwrap();
    assert_eq!(compactor.compact().await.unwrap(), 3000);
    log.append("fixes", fixes(3000, 3600)).await.unwrap();
    let engine =
        Engine::start(log.clone(), Some(store), Arc::new(Geometry::default()), Default::default()).await.unwrap();
    engine
        .execute("CREATE STREAM fixes (who VARCHAR, speed BIGINT) WITH (kafka_topic='fixes');", &Default::default())
        .await
        .unwrap();

    let alice_only: RecordFilter = Arc::new(|_, r| r.key.as_deref() == Some(b"alice".as_slice()));
    let alice = Caller { may_change_catalog: false, reads: Some(alice_only) };
    let everyone = Caller::trusted();

    // A count over history and log: columnar for the trusted caller, rows for alice.
    let count = "SELECT who, COUNT(*) AS n FROM fixes GROUP BY who";
    let mut all = run(&engine, count, &everyone).await.unwrap();
    all.sort_by_key(|r| r[0].to_string());
    assert_eq!(
        all,
        [vec![json!("alice"), json!(1200)], vec![json!("bob"), json!(1200)], vec![json!("carol"), json!(1200)]]
    );
    assert_eq!(run(&engine, count, &alice).await.unwrap(), [vec![json!("alice"), json!(1200)]]);

    let rows = run(&engine, "SELECT who FROM fixes LIMIT 5000", &alice).await.unwrap();
    assert_eq!(rows.len(), 1200);
    assert!(rows.iter().all(|r| r[0] == "alice"));
    let joined = "WITH fast AS (SELECT who, MAX(speed) AS top FROM fixes GROUP BY who) \
                  SELECT f.who, COUNT(*) AS n FROM fixes f JOIN fast ON f.who = fast.who GROUP BY f.who";
    assert_eq!(run(&engine, joined, &alice).await.unwrap(), [vec![json!("alice"), json!(1200)]]);

    // A push query sees alice's new records and not the others'.
    let push = engine.execute_as("SELECT who, speed FROM fixes EMIT CHANGES", &Default::default(), &alice).await;
    let Some(Response::Push { mut rows, .. }) = push.unwrap().pop() else { panic!("a push query") };
    log.append("fixes", fixes(3600, 3606)).await.unwrap();
    for _ in 0..2 {
        let row = tokio::time::timeout(std::time::Duration::from_secs(30), rows.recv()).await.unwrap().unwrap();
        assert_eq!(row.get("who").or(row.get("WHO")), Some(&json!("alice")), "{row:?}");
    }

    for ddl in [
        "CREATE STREAM copy AS SELECT * FROM fixes;",
        "DROP STREAM fixes;",
        "TERMINATE ALL;",
        "SELECT 1 AS x FROM fixes; CREATE STREAM s2 (a INT) WITH (kafka_topic='s2');",
    ] {
        let refused = engine.execute_as(ddl, &Default::default(), &alice).await;
        assert!(matches!(refused, Err(SqlError::Forbidden(_))), "{ddl}: {refused:?}");
    }
    let streams = run(&engine, "SHOW STREAMS", &everyone).await.unwrap();
    assert!(streams.iter().any(|r| r[0] == "fixes"));
    assert!(!streams.iter().any(|r| r[0] == "s2"), "nothing of a refused batch ran: {streams:?}");

    // Nobody writes Pacer's own streams, not even a trusted caller.
    for sql in [
        "CREATE STREAM sneaky WITH (kafka_topic='__retained') AS SELECT * FROM fixes;",
        "CREATE STREAM catalog (x VARCHAR) WITH (kafka_topic='__catalog'); INSERT INTO catalog SELECT who AS x FROM fixes;",
    ] {
        let refused = engine.execute(sql, &Default::default()).await;
        assert!(matches!(refused, Err(SqlError::Forbidden(_))), "{sql}: {refused:?}");
    }
}
