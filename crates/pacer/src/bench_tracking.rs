//! `pacer bench tracking`: the demo's league table (examples/race/race.sql: course
//! progress, finish, speed and pace per runner, RANK and gap to the leader over all of them)
//! measured in-process on one core, beside the same runners through a plain
//! LATEST_BY_OFFSET table: what tracking costs over a table that only keeps the last fix.
//!
//! Runners move along the built-in course at steady paces of their own from places spread
//! over the start corral, one fix per second each, so the field spreads out and positions
//! change all along.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use pacer_core::NewRecord;
use pacer_log::{EmbeddedLog, EmbeddedLogConfig, FsyncPolicy, Log, StartAt};
use pacer_sql::engine::ast::{SourceKind, Statement};
use pacer_sql::engine::operator::Operator;
use pacer_sql::engine::parse;
use pacer_sql::engine::plan::{plan, Column, Source};
use pacer_sql::{Course, Geometry};

use crate::bench_sql::run_operator;
use crate::config::{BUILTIN_COURSE, BUILTIN_SQL};

pub struct TrackingBench {
    pub runners: u64,
    pub seconds: u64,
    pub dir: PathBuf,
}

/// The baseline: each runner's last fix, nothing computed.
const BASELINE: &str = "SELECT who, LATEST_BY_OFFSET(lat) AS lat, LATEST_BY_OFFSET(lon) AS lon, COUNT(*) AS fixes
FROM race GROUP BY who EMIT CHANGES";

const BASE_MS: i64 = 1_558_212_482_000;

pub async fn tracking(b: TrackingBench) -> anyhow::Result<()> {
    anyhow::ensure!(b.runners > 0 && b.seconds > 0, "--runners and --seconds must be positive");
    let course = Course::from_geojson(BUILTIN_COURSE, pacer_sim::SYDNEY_HALF_COURSE)?;
    let root =
        tempfile::Builder::new().prefix("pacer-bench-tracking-").tempdir_in(&b.dir).context("bench directory")?;
    let mut config = EmbeddedLogConfig::new(root.path());
    config.fsync = FsyncPolicy::Off;
    let log = EmbeddedLog::open(config)?;
    let total = b.runners * b.seconds;
    let progress = ProgressBar::new(total)
        .with_style(ProgressStyle::with_template("writing {bar:40} {pos}/{len} {per_sec}").expect("valid template"));
    let mut batch = Vec::with_capacity(10_000);
    for second in 0..b.seconds {
        for runner in 0..b.runners {
            // 2.5 to 4.5 m/s (a 2:20 to a 1:18 half marathon), a pace of its own, from a
            // place in the first 100 m of the start corral.
            let speed = 2.5 + (runner.wrapping_mul(2_654_435_761) % 2000) as f64 / 1000.0;
            let corral = (runner.wrapping_mul(40_503) % 10_000) as f64 / 100.0;
            let (lat, lon) = course.point_at(corral + second as f64 * speed);
            let who = format!("r{runner}");
            let line = format!(r#"{{"who":"{who}","lat":{lat},"lon":{lon}}}"#);
            batch.push(NewRecord::new(BASE_MS + second as i64 * 1000, Some(Bytes::from(who)), line));
            if batch.len() == batch.capacity() {
                log.append("race", std::mem::take(&mut batch)).await?;
                batch.reserve(10_000);
                progress.set_position(second * b.runners + runner + 1);
            }
        }
    }
    if !batch.is_empty() {
        log.append("race", batch).await?;
    }
    progress.finish_and_clear();

    let (source, league) = race_queries()?;
    let mut geometry = Geometry::default();
    geometry.add_course(course);
    let log: Arc<dyn Log> = Arc::new(log);
    let Some(Statement::Select(baseline)) = parse::parse(BASELINE)?.pop() else { anyhow::bail!("a SELECT") };
    let plain = run(&log, Operator::new(plan(&baseline, &source, &geometry)?)).await?;
    let ranked = run(&log, Operator::new(plan(&league, &source, &geometry)?)).await?;
    println!("{} runners × {} s = {total} fixes; one core, in-process", b.runners, b.seconds);
    for (name, r) in [("last fix only (LATEST_BY_OFFSET)", &plain), ("league table (examples/race/race.sql)", &ranked)]
    {
        println!(
            "{name}: {:.3} s = {:.0} fixes/s, {} rows out ({:.2} per fix)",
            r.secs,
            r.fixes as f64 / r.secs,
            r.rows,
            r.rows as f64 / r.fixes as f64
        );
    }
    println!("league / plain time: {:.2}×; leader: {}", ranked.secs / plain.secs, ranked.leader);
    Ok(())
}

/// The `race` stream and the league table's (`race_status`) SELECT, as the built-in SQL
/// declares them.
fn race_queries() -> anyhow::Result<(Source, pacer_sql::engine::ast::Select)> {
    let mut source = None;
    let mut league = None;
    for statement in parse::parse(BUILTIN_SQL)? {
        match statement {
            Statement::CreateSource { name, columns, .. } if name == "race" => {
                let columns =
                    columns.into_iter().map(|c| Column { name: c.name, data_type: c.data_type, key: c.key }).collect();
                let (topic, kind, timestamp, windowed) = (name.clone(), SourceKind::Stream, None, false);
                source = Some(Source { name, kind, topic, columns, timestamp, windowed });
            }
            Statement::CreateAs { name, query, .. } if name == "race_status" => league = Some(*query),
            _ => {}
        }
    }
    Ok((source.context("race.sql declares the race stream")?, league.context("race.sql creates a table")?))
}

struct Run {
    fixes: u64,
    rows: u64,
    secs: f64,
    /// Who ranks first at the end (the league table only).
    leader: String,
}

async fn run(log: &Arc<dyn Log>, mut operator: Operator) -> anyhow::Result<Run> {
    let started = Instant::now();
    let (mut rows, mut leader) = (0u64, String::new());
    let fixes = run_operator(log.reader("race", StartAt::Beginning)?.as_mut(), &mut operator, |out| {
        rows += out.len() as u64;
        for o in out.drain(..) {
            if o.value.as_ref().and_then(|v| v.get("rank")).and_then(|r| r.as_i64()) == Some(1) {
                leader = o.key.unwrap_or_default();
            }
        }
        Ok(())
    })
    .await?;
    Ok(Run { fixes, rows, secs: started.elapsed().as_secs_f64(), leader })
}
