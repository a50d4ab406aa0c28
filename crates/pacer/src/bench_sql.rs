//! `pacer bench sql`: the streaming SQL engine measured in-process on one core, and
//! `pacer bench sql-latency`: publish → persistent query → push query, end to end.
//!
//! The first writes readings of many devices into an embedded log (and, for DuckDB, the
//! same JSON lines to a file), then runs a windowed GROUP BY over them with the engine's
//! operator on one thread, from reading the log to closed windows, and prints events/s and
//! a result checksum that an independent engine can be compared with.
//!
//! The second talks to a running Pacer like a user: it creates a windowed EMIT CHANGES
//! table, opens a push query on it over HTTP, publishes readings over MQTT at a fixed rate
//! with their send time inside, and measures send → push-query row.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use pacer_core::NewRecord;
use pacer_log::{EmbeddedLog, EmbeddedLogConfig, FsyncPolicy, Log, StartAt, StreamReader};
use pacer_sql::engine::ast::{SourceKind, Statement};
use pacer_sql::engine::operator::{Operator, Output};
use pacer_sql::engine::pair_join::PairJoin;
use pacer_sql::engine::plan::{plan, Column, Source};
use pacer_sql::engine::query::input_reader;
use pacer_sql::engine::{parse, value::DataType};

/// What `pacer bench sql` and `pacer bench join` read: readings of devices, one per device
/// per second, in an embedded log.
#[derive(clap::Args)]
pub struct ReadingsBench {
    /// Readings (per stream, for the join)
    #[arg(long, default_value_t = 10_000_000)]
    pub records: u64,
    /// Devices (the GROUP BY or join keys)
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Directory for the log
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Also write the readings as JSON lines to this file (the join: FILE.left, FILE.right)
    #[arg(long)]
    pub ndjson: Option<PathBuf>,
}

/// `pacer bench sql`: the readings, and how to run the query over them.
#[derive(clap::Args)]
pub struct SqlBench {
    #[command(flatten)]
    pub readings: ReadingsBench,
    /// Run the query this many times over the same log and print the median too (0: only
    /// write the log); on a shared machine one run says little
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Keep the log in this directory, and read it from there when it holds one already
    /// (then --records, --keys and --ndjson are not used): runs of other engines can go
    /// between runs of this one
    #[arg(long)]
    pub log: Option<PathBuf>,
}

/// The query measured: the issue's windowed GROUP BY.
pub const QUERY: &str =
    "SELECT device, COUNT(*) AS n, AVG(temp) AS avg_temp, MIN(temp) AS min_temp, MAX(temp) AS max_temp
FROM readings WINDOW TUMBLING (SIZE 1 MINUTE, GRACE PERIOD 0 SECONDS) GROUP BY device EMIT FINAL";

/// One reading per device per second, starting on a whole minute.
const BASE_MS: i64 = 28_333_333 * 60_000;

pub async fn sql(bench: SqlBench) -> anyhow::Result<()> {
    let b = &bench.readings;
    anyhow::ensure!(b.keys > 0 && b.records >= b.keys, "--records must be at least --keys, which must be positive");
    let temporary;
    let log = match &bench.log {
        Some(dir) if dir.read_dir().is_ok_and(|mut entries| entries.next().is_some()) => {
            let mut config = EmbeddedLogConfig::new(dir);
            config.fsync = FsyncPolicy::Off;
            EmbeddedLog::open(config).with_context(|| format!("opening the log in {}", dir.display()))?
        }
        Some(dir) => write_readings(dir, b.records, b.keys, b.ndjson.as_deref()).await?,
        None => {
            temporary =
                tempfile::Builder::new().prefix("pacer-bench-sql-").tempdir_in(&b.dir).context("bench directory")?;
            write_readings(temporary.path(), b.records, b.keys, b.ndjson.as_deref()).await?
        }
    };
    if bench.runs == 0 {
        return Ok(());
    }

    let source = readings_source("readings");
    let Some(Statement::Select(select)) = parse::parse(QUERY)?.pop() else {
        anyhow::bail!("the bench query is a SELECT")
    };
    let plan = plan(&select, &source, &pacer_sql::Geometry::default())?;
    println!("query: {}", QUERY.replace('\n', " "));
    let mut rates = Vec::new();
    for _ in 0..bench.runs {
        let mut operator = Operator::new(plan.clone());
        let started = Instant::now();
        let (mut windows, mut counted, mut sum_of_max) = (0u64, 0i64, 0f64);
        let events = run_operator(log.reader("readings", StartAt::Beginning)?.as_mut(), &mut operator, |out| {
            tally(out, &mut windows, &mut counted, &mut sum_of_max)
        })
        .await?;
        if events == 0 {
            let place = bench.log.as_ref().map_or(String::new(), |dir| format!(" in {}", dir.display()));
            anyhow::bail!("the log{place} holds no readings: give --log an empty or missing directory to write them");
        }
        let mut out = Vec::new();
        // End of input: a batch engine sees every window closed, so close them all here too.
        operator.advance(i64::MAX, &mut out);
        tally(&mut out, &mut windows, &mut counted, &mut sum_of_max)?;
        let secs = started.elapsed().as_secs_f64();
        let rate = events as f64 / secs;
        println!(
            "pacer: {events} events in {secs:.3} s = {rate:.0} events/s on one core; {windows} closed windows, {counted} events in them, sum of max_temp {sum_of_max:.2}"
        );
        rates.push(rate);
    }
    if rates.len() > 1 {
        println!("pacer median of {} runs: {:.0} events/s", rates.len(), median(&mut rates));
    }
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The declared stream `name` of readings as the benches write them.
fn readings_source(name: &str) -> Source {
    Source {
        name: name.into(),
        kind: SourceKind::Stream,
        topic: name.into(),
        columns: [("device", DataType::String), ("ts", DataType::BigInt), ("temp", DataType::Double)]
            .into_iter()
            .map(|(name, data_type)| Column { name: name.into(), data_type, key: false })
            .collect(),
        timestamp: None,
        windowed: false,
    }
}

/// An embedded log in `dir` holding `records` readings of `keys` devices, one per device per
/// second from a whole minute on (and, if asked, the same as JSON lines in `ndjson`).
pub async fn write_readings(
    dir: &std::path::Path,
    records: u64,
    keys: u64,
    ndjson: Option<&std::path::Path>,
) -> anyhow::Result<EmbeddedLog> {
    let mut config = EmbeddedLogConfig::new(dir);
    config.fsync = FsyncPolicy::Off;
    let log = EmbeddedLog::open(config)?;
    append_readings(&log, "readings", records, keys, 0, ndjson).await?;
    Ok(log)
}

/// Appends `records` readings of `keys` devices to `stream`, one per device per second from
/// a whole minute plus `offset_ms` on.
async fn append_readings(
    log: &EmbeddedLog,
    stream: &str,
    records: u64,
    keys: u64,
    offset_ms: i64,
    ndjson: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let mut ndjson = match ndjson {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => None,
    };
    let progress = ProgressBar::new(records).with_style(
        ProgressStyle::with_template(&format!("writing {stream} {{bar:40}} {{pos}}/{{len}} {{per_sec}}"))
            .expect("valid template"),
    );
    let mut batch = Vec::with_capacity(10_000);
    for i in 0..records {
        let device = i % keys;
        let ts = BASE_MS + offset_ms + (i / keys) as i64 * 1000;
        // A deterministic spread of temperatures, different per device and second.
        let temp = ((i.wrapping_add(offset_ms as u64).wrapping_mul(2_654_435_761) >> 7) % 4000) as f64 / 100.0 - 5.0;
        let line = format!(r#"{{"device":"d-{device}","ts":{ts},"temp":{temp}}}"#);
        if let Some(out) = &mut ndjson {
            writeln!(out, "{line}")?;
        }
        batch.push(NewRecord::new(ts, Some(Bytes::from(format!("d-{device}"))), line));
        if batch.len() == batch.capacity() {
            log.append(stream, std::mem::take(&mut batch)).await?;
            batch.reserve(10_000);
            progress.set_position(i + 1);
        }
    }
    if !batch.is_empty() {
        log.append(stream, batch).await?;
    }
    if let Some(mut out) = ndjson {
        out.flush()?;
    }
    progress.finish_and_clear();
    Ok(())
}

/// The stream–stream join measured: each reading with the other stream's readings of its
/// device at most a second apart (the other stream is half a second behind: two each).
pub const JOIN_QUERY: &str = "SELECT l.device, l.temp, r.temp AS other FROM readings l
JOIN later r WITHIN 1 SECOND GRACE PERIOD 0 SECONDS ON l.device = r.device EMIT CHANGES";

/// `pacer bench join`: two streams of `records` readings each, joined as they flow on one
/// core, from reading the log (both streams merged by event time) to the joined rows.
pub async fn join(b: ReadingsBench) -> anyhow::Result<()> {
    anyhow::ensure!(b.keys > 0 && b.records >= b.keys, "--records must be at least --keys, which must be positive");
    let root = tempfile::Builder::new().prefix("pacer-bench-join-").tempdir_in(&b.dir).context("bench directory")?;
    let mut config = EmbeddedLogConfig::new(root.path());
    config.fsync = FsyncPolicy::Off;
    let embedded = std::sync::Arc::new(EmbeddedLog::open(config)?);
    let ndjson = |side: &str| b.ndjson.as_ref().map(|p| PathBuf::from(format!("{}.{side}", p.display())));
    append_readings(&embedded, "readings", b.records, b.keys, 0, ndjson("left").as_deref()).await?;
    append_readings(&embedded, "later", b.records, b.keys, 500, ndjson("right").as_deref()).await?;
    let log: std::sync::Arc<dyn Log> = embedded;

    let Some(Statement::Select(select)) = parse::parse(JOIN_QUERY)?.pop() else {
        anyhow::bail!("the bench query is a SELECT")
    };
    let plan = PairJoin::plan(
        &select,
        &readings_source("readings"),
        &readings_source("later"),
        &pacer_sql::Geometry::default(),
    )?;
    let mut reader = input_reader(&log, &plan, None, StartAt::Beginning)?;
    let mut operator = Operator::new(plan);

    let started = Instant::now();
    let (mut pairs, mut sum_other) = (0u64, 0f64);
    let events = run_operator(reader.as_mut(), &mut operator, |out| {
        for o in out.drain(..) {
            let v = o.value.context("joined rows have values")?;
            pairs += 1;
            sum_other += v["other"].as_f64().unwrap_or(0.0);
        }
        Ok(())
    })
    .await?;
    let secs = started.elapsed().as_secs_f64();
    println!("query: {}", JOIN_QUERY.replace('\n', " "));
    println!(
        "pacer: {events} events in {secs:.3} s = {:.0} events/s on one core; {pairs} pairs, sum of other {sum_other:.2}",
        events as f64 / secs
    );
    Ok(())
}

/// Runs what `reader` holds now through `operator`, handing each batch's rows to `take`;
/// returns how many records went in.
pub async fn run_operator(
    reader: &mut dyn StreamReader,
    operator: &mut Operator,
    mut take: impl FnMut(&mut Vec<Output>) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let (mut events, mut out) = (0u64, Vec::new());
    loop {
        let records = reader.try_batch().await?;
        if records.is_empty() {
            return Ok(events);
        }
        for record in &records {
            operator.process(record, &mut out).map_err(anyhow::Error::msg)?;
        }
        events += records.len() as u64;
        take(&mut out)?;
    }
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

pub struct LatencyBench {
    pub host: String,
    pub port: u16,
    pub server: String,
    /// Messages per second.
    pub rate: u64,
    pub seconds: u64,
    pub devices: u64,
    pub qos: u8,
}

pub async fn latency(b: LatencyBench) -> anyhow::Result<()> {
    use futures::StreamExt;
    use rumqttc::{AsyncClient, MqttOptions, QoS};

    let suffix = pacer_core::now_ms();
    let table = format!("latency_{suffix}");
    let setup = format!(
        "CREATE STREAM IF NOT EXISTS latency_in (device VARCHAR, sent BIGINT) WITH (kafka_topic='mqtt', value_format='JSON');
         CREATE TABLE {table} AS SELECT device, LATEST_BY_OFFSET(sent) AS sent, COUNT(*) AS n FROM latency_in
         WINDOW TUMBLING (SIZE 1 MINUTE) GROUP BY device EMIT CHANGES;"
    );
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/sql", b.server.trim_end_matches('/'));
    let response =
        http.post(&url).json(&serde_json::json!({ "sql": setup })).send().await.context("reaching Pacer's HTTP API")?;
    anyhow::ensure!(response.status().is_success(), "setting up the query failed: {}", response.text().await?);
    let push = http
        .post(&url)
        .json(&serde_json::json!({ "sql": format!("SELECT device, sent FROM {table} EMIT CHANGES") }))
        .send()
        .await?;
    anyhow::ensure!(push.status().is_success(), "the push query failed: {}", push.text().await?);
    let mut rows = push.bytes_stream();
    let expected = b.rate * b.seconds;
    let receiver = tokio::spawn(async move {
        let mut latencies: Vec<u64> = Vec::with_capacity(expected as usize);
        let mut text = String::new();
        let mut header = true;
        while latencies.len() < expected as usize {
            let Ok(Some(chunk)) = tokio::time::timeout(std::time::Duration::from_secs(10), rows.next()).await else {
                break;
            };
            let received = now_micros();
            text.push_str(&String::from_utf8_lossy(&chunk?));
            while let Some(end) = text.find('\n') {
                let line: String = text.drain(..=end).collect();
                if std::mem::take(&mut header) {
                    continue;
                }
                let row: serde_json::Value = serde_json::from_str(&line)?;
                if let Some(sent) = row["sent"].as_i64() {
                    latencies.push((received - sent).max(0) as u64);
                }
            }
        }
        anyhow::Ok(latencies)
    });

    let mut options = MqttOptions::new(format!("pacer-latency-{suffix}"), b.host.clone(), b.port);
    options.set_keep_alive(std::time::Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(options, 10_000);
    // Latency is measured, so the load generator sends each publish at once (rumqttc leaves
    // Nagle's algorithm on by default).
    events.network_options.set_tcp_nodelay(true);
    let driver = tokio::spawn(async move {
        loop {
            if events.poll().await.is_err() {
                break;
            }
        }
    });
    let qos = match b.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    // Sends in 1 ms ticks, so the rate holds without bursts of a whole second.
    let per_tick = (b.rate as f64 / 1000.0).max(1.0);
    let mut interval = tokio::time::interval(std::time::Duration::from_millis(1));
    let started = Instant::now();
    let (mut sent, mut owed) = (0u64, 0f64);
    let progress = ProgressBar::new(expected)
        .with_style(ProgressStyle::with_template("publishing {bar:40} {pos}/{len} {per_sec}").expect("valid template"));
    while sent < expected {
        interval.tick().await;
        owed += per_tick;
        while owed >= 1.0 && sent < expected {
            let device = sent % b.devices;
            let payload = format!(r#"{{"device":"d-{device}","sent":{}}}"#, now_micros());
            client.publish(format!("latency/d-{device}"), qos, false, payload).await?;
            sent += 1;
            owed -= 1.0;
        }
        progress.set_position(sent);
    }
    let publish_secs = started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    let mut latencies = receiver.await??;
    driver.abort();
    let _ = http
        .post(&url)
        .json(&serde_json::json!({ "sql": format!("TERMINATE CTAS_{}", table.to_uppercase()) }))
        .send()
        .await;
    anyhow::ensure!(!latencies.is_empty(), "no rows came back from the push query");
    latencies.sort_unstable();
    let q = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    println!(
        "published {sent} in {publish_secs:.2} s ({:.0} msg/s, QoS {}); {} rows back; publish → push-query row: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        sent as f64 / publish_secs,
        b.qos,
        latencies.len(),
        q(0.5),
        q(0.99),
        q(0.999),
        q(1.0)
    );
    Ok(())
}

fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}
