//! `pacer bench log`: the embedded log measured in-process, with nothing else in the way.
//!
//! Concurrent producers append records of a given size under each fsync policy; then the
//! log written with group commit is replayed from the start and reopened, timing recovery.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use pacer_core::NewRecord;
use pacer_log::{EmbeddedLog, EmbeddedLogConfig, FsyncPolicy, Log, StartAt};

pub struct LogBench {
    pub records: u64,
    pub record_bytes: usize,
    pub producers: usize,
    /// Records per append call.
    pub batch: usize,
    /// Where the logs are written (the disk being measured).
    pub dir: PathBuf,
    pub policies: Vec<FsyncPolicy>,
}

pub async fn log(mut b: LogBench) -> anyhow::Result<()> {
    anyhow::ensure!(b.producers > 0 && b.batch > 0, "--producers and --batch must be at least 1");
    // Every producer appends the same number of records.
    b.records = b.records / b.producers as u64 * b.producers as u64;
    let root = tempfile::Builder::new().prefix("pacer-bench-log-").tempdir_in(&b.dir).context("bench directory")?;
    println!(
        "{} records of {} bytes, {} producers, {} per append, in {}",
        b.records,
        b.record_bytes,
        b.producers,
        b.batch,
        b.dir.display()
    );
    let mut replay_dir = None;
    for policy in &b.policies {
        let dir = root.path().join(format!("{policy:?}").to_lowercase());
        let (elapsed, bytes) = append(&b, &dir, *policy).await?;
        let secs = elapsed.as_secs_f64();
        println!(
            "append fsync={:<6} {:>10.0} records/s {:>8.1} MB/s (on disk {:.1} MB/s)",
            format!("{policy:?}").to_lowercase(),
            b.records as f64 / secs,
            (b.records as f64 * b.record_bytes as f64) / secs / 1e6,
            bytes as f64 / secs / 1e6,
        );
        if *policy == FsyncPolicy::Batch || replay_dir.is_none() {
            replay_dir = Some(dir);
        }
    }
    let dir = replay_dir.context("no policy measured")?;

    let started = Instant::now();
    let log = EmbeddedLog::open(EmbeddedLogConfig::new(&dir))?;
    let opened = started.elapsed();
    println!("start-up with {} records: {:.3} s", b.records, opened.as_secs_f64());

    let started = Instant::now();
    let mut reader = log.reader("bench", StartAt::Beginning)?;
    let mut read = 0u64;
    loop {
        let batch = reader.try_batch().await?;
        if batch.is_empty() {
            break;
        }
        read += batch.len() as u64;
    }
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(read == b.records, "replay read {read} records, {} were appended", b.records);
    println!(
        "replay {:>10.0} records/s {:>8.1} MB/s",
        read as f64 / secs,
        read as f64 * b.record_bytes as f64 / secs / 1e6
    );
    Ok(())
}

/// Appends `b.records` with `b.producers` concurrent producers; returns the time and the
/// bytes the log wrote.
async fn append(b: &LogBench, dir: &std::path::Path, fsync: FsyncPolicy) -> anyhow::Result<(Duration, u64)> {
    let mut config = EmbeddedLogConfig::new(dir);
    config.fsync = fsync;
    let log = Arc::new(EmbeddedLog::open(config)?);
    let value = Bytes::from(vec![b'x'; b.record_bytes]);
    let per_producer = b.records / b.producers as u64;
    let progress = ProgressBar::new(per_producer * b.producers as u64)
        .with_style(ProgressStyle::with_template("{bar:40} {pos}/{len} records {per_sec}").expect("valid template"));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..b.producers {
        let (log, value, progress, batch) = (log.clone(), value.clone(), progress.clone(), b.batch);
        tasks.push(tokio::spawn(async move {
            let key = Bytes::from(format!("device-{p}"));
            let mut done = 0u64;
            while done < per_producer {
                let n = (batch as u64).min(per_producer - done);
                let records =
                    (0..n).map(|i| NewRecord::new((done + i) as i64, Some(key.clone()), value.clone())).collect();
                log.append("bench", records).await?;
                done += n;
                progress.inc(n);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = started.elapsed();
    progress.finish_and_clear();
    let bytes = log.streams().iter().map(|s| s.bytes).sum();
    Ok((elapsed, bytes))
}
