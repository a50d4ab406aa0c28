//! `pacer bench sql`: the streaming SQL engine measured in-process on one core.
//!
//! Writes readings of many devices into an embedded log (and, for DuckDB, the same JSON
//! lines to a file), then runs a windowed GROUP BY over them with the engine's operator on
//! one thread, from reading the log to closed windows, and prints events/s and a result
//! checksum that an independent engine can be compared with.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use pacer_core::NewRecord;
use pacer_log::{EmbeddedLog, EmbeddedLogConfig, FsyncPolicy, Log, StartAt};
use pacer_sql::engine::ast::{SourceKind, Statement};
use pacer_sql::engine::operator::{Operator, Output};
use pacer_sql::engine::plan::{plan, Column, Source};
use pacer_sql::engine::{parse, value::DataType};

pub struct SqlBench {
    pub records: u64,
    pub keys: u64,
    pub dir: PathBuf,
    /// Also write the readings as JSON lines here (for DuckDB).
    pub ndjson: Option<PathBuf>,
}

/// The query measured: the issue's windowed GROUP BY.
pub const QUERY: &str =
    "SELECT device, COUNT(*) AS n, AVG(temp) AS avg_temp, MIN(temp) AS min_temp, MAX(temp) AS max_temp
FROM readings WINDOW TUMBLING (SIZE 1 MINUTE, GRACE PERIOD 0 SECONDS) GROUP BY device EMIT FINAL";

/// One reading per device per second, starting on a whole minute.
const BASE_MS: i64 = 28_333_333 * 60_000;

pub async fn sql(b: SqlBench) -> anyhow::Result<()> {
    anyhow::ensure!(b.keys > 0 && b.records >= b.keys, "--records must be at least --keys, which must be positive");
    let root = tempfile::Builder::new().prefix("pacer-bench-sql-").tempdir_in(&b.dir).context("bench directory")?;
    let mut config = EmbeddedLogConfig::new(root.path());
    config.fsync = FsyncPolicy::Off;
    let log = EmbeddedLog::open(config)?;
    let mut ndjson = match &b.ndjson {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => None,
    };
    let progress = ProgressBar::new(b.records)
        .with_style(ProgressStyle::with_template("writing {bar:40} {pos}/{len} {per_sec}").expect("valid template"));
    let mut batch = Vec::with_capacity(10_000);
    for i in 0..b.records {
        let device = i % b.keys;
        let ts = BASE_MS + (i / b.keys) as i64 * 1000;
        // A deterministic spread of temperatures, different per device and second.
        let temp = ((i.wrapping_mul(2_654_435_761) >> 7) % 4000) as f64 / 100.0 - 5.0;
        let line = format!(r#"{{"device":"d-{device}","ts":{ts},"temp":{temp}}}"#);
        if let Some(out) = &mut ndjson {
            writeln!(out, "{line}")?;
        }
        batch.push(NewRecord::new(ts, Some(Bytes::from(format!("d-{device}"))), line));
        if batch.len() == batch.capacity() {
            log.append("readings", std::mem::take(&mut batch)).await?;
            batch.reserve(10_000);
            progress.set_position(i + 1);
        }
    }
    if !batch.is_empty() {
        log.append("readings", batch).await?;
    }
    if let Some(mut out) = ndjson {
        out.flush()?;
    }
    progress.finish_and_clear();

    let columns = [("device", DataType::String), ("ts", DataType::BigInt), ("temp", DataType::Double)]
        .into_iter()
        .map(|(name, data_type)| Column { name: name.into(), data_type, key: false })
        .collect();
    let source = Source {
        name: "readings".into(),
        kind: SourceKind::Stream,
        topic: "readings".into(),
        columns,
        timestamp: None,
        windowed: false,
    };
    let Some(Statement::Select(select)) = parse::parse(QUERY)?.pop() else {
        anyhow::bail!("the bench query is a SELECT")
    };
    let mut operator = Operator::new(plan(&select, &source)?);

    let started = Instant::now();
    let mut reader = log.reader("readings", StartAt::Beginning)?;
    let (mut events, mut windows, mut counted, mut sum_of_max) = (0u64, 0u64, 0i64, 0f64);
    let mut out = Vec::new();
    loop {
        let records = reader.try_batch().await?;
        if records.is_empty() {
            break;
        }
        for record in &records {
            operator.process(record, &mut out).map_err(anyhow::Error::msg)?;
        }
        events += records.len() as u64;
        tally(&mut out, &mut windows, &mut counted, &mut sum_of_max)?;
    }
    // End of input: a batch engine sees every window closed, so close them all here too.
    operator.advance(i64::MAX, &mut out);
    tally(&mut out, &mut windows, &mut counted, &mut sum_of_max)?;
    let secs = started.elapsed().as_secs_f64();
    println!("query: {}", QUERY.replace('\n', " "));
    println!(
        "pacer: {events} events in {secs:.3} s = {:.0} events/s on one core; {windows} closed windows, {counted} events in them, sum of max_temp {sum_of_max:.2}",
        events as f64 / secs
    );
    Ok(())
}

/// Adds closed windows to the checksum: windows, events in them, sum of max_temp.
fn tally(out: &mut Vec<Output>, windows: &mut u64, counted: &mut i64, sum_of_max: &mut f64) -> anyhow::Result<()> {
    for o in out.drain(..) {
        let v = o.value.context("EMIT FINAL rows have values")?;
        *windows += 1;
        *counted += v["n"].as_i64().unwrap_or(0);
        *sum_of_max += v["max_temp"].as_f64().unwrap_or(0.0);
    }
    Ok(())
}
