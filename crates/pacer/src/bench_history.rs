//! `pacer bench history`: the history query of the SQL II issue (per device and minute:
//! COUNT, AVG, MIN, MAX) as `pacer sql` runs it, over the Parquet segments Pacer compacts
//! its log into, and over the log's rows for comparison. `scripts/bench-history.sh` runs
//! DuckDB over the same segment files in the same run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use pacer_history::{Compactor, CompactorConfig, HistoryStore};
use pacer_log::Log;
use pacer_sql::engine::{Engine, Response, StatementOptions};

use crate::bench_sql::write_readings;

pub struct HistoryBench {
    pub records: u64,
    pub keys: u64,
    /// Directory for the log.
    pub dir: PathBuf,
    /// Where the Parquet segments go (kept, for DuckDB).
    pub parquet: PathBuf,
    pub segment_rows: usize,
    /// Timed runs of the query over Parquet; the median is reported.
    pub runs: usize,
    /// Also time the query over the log's rows (no history).
    pub log_rows: bool,
}

pub const QUERY: &str = "SELECT device, DATE_BIN(INTERVAL '1' MINUTE, ROWTIME) AS minute, COUNT(*) AS n, \
AVG(temp) AS avg_temp, MIN(temp) AS min_temp, MAX(temp) AS max_temp FROM readings \
GROUP BY device, DATE_BIN(INTERVAL '1' MINUTE, ROWTIME) LIMIT 100000000";

pub async fn history(b: HistoryBench) -> anyhow::Result<()> {
    anyhow::ensure!(b.keys > 0 && b.records >= b.keys, "--records must be at least --keys, which must be positive");
    anyhow::ensure!(b.runs > 0, "--runs must be at least 1");
    let root = tempfile::Builder::new().prefix("pacer-bench-history-").tempdir_in(&b.dir).context("bench directory")?;
    let log: Arc<dyn Log> = Arc::new(write_readings(root.path(), b.records, b.keys, None).await?);

    let store = HistoryStore::open(&b.parquet)?;
    anyhow::ensure!(
        store.segments("readings")?.is_empty(),
        "{} already holds history of readings: give an empty directory",
        b.parquet.display()
    );
    let compactor = Compactor::new(
        store.clone(),
        log.clone(),
        CompactorConfig {
            stream: "readings".into(),
            every: std::time::Duration::from_secs(3600),
            max_rows: b.segment_rows,
            keep_ms: None,
        },
    )?;
    let started = Instant::now();
    let compacted = compactor.compact().await?;
    let segments = store.segments("readings")?;
    let bytes: u64 = segments.iter().filter_map(|s| std::fs::metadata(&s.path).ok()).map(|m| m.len()).sum();
    println!(
        "compaction: {compacted} records into {} Parquet segments ({:.1} MB) in {:.1} s",
        segments.len(),
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );

    let geometry = Arc::new(pacer_sql::Geometry::default());
    let engine = Engine::start(log.clone(), Some(store), geometry.clone(), Default::default()).await?;
    let create = "CREATE STREAM readings (device VARCHAR, ts BIGINT, temp DOUBLE) \
                  WITH (kafka_topic='readings', value_format='JSON');";
    engine.execute(create, &StatementOptions::default()).await?;
    println!("query: {QUERY}");
    let mut times = Vec::new();
    let mut checksum = String::new();
    for _ in 0..b.runs {
        let (secs, sum) = timed(&engine, b.records).await?;
        times.push(secs);
        checksum = sum;
    }
    let runs: Vec<String> = times.iter().map(|t| format!("{t:.3}")).collect();
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "pacer over Parquet: {} events in {median:.3} s median (runs {} s) = {:.0} events/s on one core; {checksum}",
        b.records,
        runs.join(", "),
        b.records as f64 / median
    );
    if b.log_rows {
        let log_only = Engine::start(log, None, geometry, Default::default()).await?;
        let (secs, checksum) = timed(&log_only, b.records).await?;
        println!(
            "pacer over the log's rows: {} events in {secs:.3} s = {:.0} events/s on one core; {checksum}",
            b.records,
            b.records as f64 / secs
        );
    }
    Ok(())
}

/// Runs the query once: seconds taken, and a checksum of its rows (windows, events in
/// them, sum of max_temp) that DuckDB's must equal.
async fn timed(engine: &Engine, records: u64) -> anyhow::Result<(f64, String)> {
    let started = Instant::now();
    let response = engine.execute(QUERY, &StatementOptions::default()).await?.pop();
    let secs = started.elapsed().as_secs_f64();
    let Some(Response::Rows(result)) = response else { anyhow::bail!("the history query returns rows") };
    let column =
        |name: &str| result.columns.iter().position(|c| c.eq_ignore_ascii_case(name)).context("a column of the query");
    let (n, max) = (column("N")?, column("MAX_TEMP")?);
    let events: i64 = result.rows.iter().map(|r| r[n].as_i64().unwrap_or(0)).sum();
    let sum_of_max: f64 = result.rows.iter().map(|r| r[max].as_f64().unwrap_or(0.0)).sum();
    anyhow::ensure!(events as u64 == records, "the query counted {events} events of {records}");
    Ok((secs, format!("{} windows, {events} events in them, sum of max_temp {sum_of_max:.2}", result.rows.len())))
}
