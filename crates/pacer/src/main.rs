//! The `pacer` command: `up`, `demo`, `tail`, `sql`.

mod bench;
mod bench_history;
mod bench_sql;
mod bench_tracking;
mod client;
mod config;
mod produce;
mod server;
mod simulate;
mod tail;
mod token;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use config::Config;
use server::Server;

// Every record passes through short-lived strings, maps and buffers; mimalloc serves them
// from per-thread pages (glibc's malloc spent a third of a join's time in malloc and free).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The stack of each runtime thread (tokio's default is 2 MiB). Statements are planned
/// and evaluated by recursion over their expressions, up to MAX_EXPRESSION_DEPTH (1000)
/// levels deep, and copying or dropping sqlparser's trees recurses too: a few KiB a level in a
/// debug build. Only the part used is ever committed.
const THREAD_STACK_BYTES: usize = 32 << 20;

#[derive(Parser)]
#[command(
    name = "pacer",
    version,
    about = "Telemetry over MQTT, a durable log, live queries and a dashboard, in one program"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct ServerArgs {
    /// Directory of the embedded log [default: pacer-data, or a fresh temporary one for `demo`]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// MQTT listener address [default: 0.0.0.0:1883]
    #[arg(long)]
    mqtt_listen: Option<String>,
    /// HTTP listener address (dashboard, API, /metrics) [default: 0.0.0.0:8080]
    #[arg(long)]
    http_listen: Option<String>,
    /// OsmAnd protocol listener (Traccar client apps); "" turns it off [default: 0.0.0.0:5055]
    #[arg(long)]
    osmand_listen: Option<String>,
    /// When the log fsyncs: always, batch (group commit) or off [default: batch]
    #[arg(long, value_parser = parse_fsync)]
    fsync: Option<pacer_log::FsyncPolicy>,
}

fn parse_fsync(s: &str) -> Result<pacer_log::FsyncPolicy, String> {
    match s {
        "always" => Ok(pacer_log::FsyncPolicy::Always),
        "batch" => Ok(pacer_log::FsyncPolicy::Batch),
        "off" => Ok(pacer_log::FsyncPolicy::Off),
        _ => Err(format!("{s:?}: expected always, batch or off")),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Runs Pacer: MQTT broker, log, queries, dashboard
    Up {
        /// Configuration file; every key has a default
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Runs Pacer and replays the 2019 Sydney half marathon into it over MQTT
    Demo {
        /// Event time runs this many times faster than real time
        #[arg(long, default_value_t = 30.0)]
        speed: f64,
        /// Stop once the replay is done instead of serving on
        #[arg(long)]
        exit_after_replay: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Prints a stream's records as JSON lines, from a running Pacer
    Tail {
        stream: String,
        /// Start at the first record instead of waiting for new ones
        #[arg(long, conflicts_with = "from")]
        from_beginning: bool,
        /// Start at the first record at or after this time (ms since the epoch or RFC 3339)
        #[arg(long)]
        from: Option<String>,
        /// Only records with this key
        #[arg(long)]
        key: Option<String>,
        /// Stop after this many records
        #[arg(long, short = 'n')]
        limit: Option<u64>,
        #[command(flatten)]
        remote: client::Remote,
    },
    /// Appends JSON lines (or a JSON array) from stdin to a stream of a running Pacer
    Produce {
        stream: String,
        /// Key of every record
        #[arg(long, conflicts_with = "key_field")]
        key: Option<String>,
        /// Key each record by this field of its value (e.g. deviceId)
        #[arg(long)]
        key_field: Option<String>,
        #[command(flatten)]
        remote: client::Remote,
    },
    /// Runs a SQL statement on a running Pacer
    Sql {
        statement: String,
        /// How a pull query's rows are printed: a table, or a file's contents (json, csv,
        /// parquet, geojson, gpx)
        #[arg(long, default_value = "table", value_parser = ["table", "json", "csv", "parquet", "geojson", "gpx"])]
        format: String,
        #[command(flatten)]
        remote: client::Remote,
    },
    /// Adds, changes or removes a user in a mosquitto-format password file
    Passwd {
        file: PathBuf,
        user: String,
        /// The password; read from the first line of stdin when not given
        #[arg(long)]
        password: Option<String>,
        /// Remove the user instead
        #[arg(long, short = 'D')]
        delete: bool,
    },
    /// Creates, lists or revokes bearer tokens (for scripts, Prometheus, Grafana)
    Token {
        #[command(subcommand)]
        action: token::Action,
    },
    /// Devices publishing a scenario over MQTT to any broker (Pacer, mosquitto, EMQX)
    Simulate {
        #[command(subcommand)]
        scenario: Scenario,
    },
    /// Measures a broker (Pacer or any other) with real MQTT clients
    Bench {
        #[command(subcommand)]
        bench: Bench,
    },
}

#[derive(Subcommand)]
enum Scenario {
    /// The race: the bundled 2019 Sydney half replayed at --speed (default 30), or, with
    /// --devices, synthetic runners along its course
    Race {
        #[command(flatten)]
        fleet: simulate::Fleet,
        /// Synthetic runners (without it: the bundled race's four)
        #[arg(long)]
        devices: Option<u32>,
        #[arg(long, value_enum, default_value = "race")]
        format: simulate::FormatArg,
        /// Synthetic runners' course: GPX (track or route) or GeoJSON [default: the Sydney half's]
        #[arg(long)]
        course: Option<PathBuf>,
    },
    /// Emergency generators on emergency_generators/{id}: fuel draining with load, refuels
    Generators {
        #[command(flatten)]
        fleet: simulate::Fleet,
        #[arg(long, default_value_t = 10)]
        devices: u32,
    },
    /// Cars with MQTTX's Tesla schema on mqttx/simulate/tesla/{clientid}
    Vehicles {
        #[command(flatten)]
        fleet: simulate::Fleet,
        #[arg(long, default_value_t = 10)]
        devices: u32,
    },
    /// Buses moving along the three London lines on buses/{line}/{key}
    Buses {
        #[command(flatten)]
        fleet: simulate::Fleet,
        #[arg(long, default_value_t = 6)]
        devices: u32,
    },
    /// The 1000 Zurich door readers on access/{deviceId}: rejections near 47.37, 8.52
    Access {
        #[command(flatten)]
        fleet: simulate::Fleet,
        /// Only the first N readers [default: all 1000]
        #[arg(long)]
        devices: Option<u32>,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// Opens many idle MQTT connections and holds them (to measure memory per connection)
    Connections {
        /// An IP address: sources are spread over 127.0.0.2, 127.0.0.3, …
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, default_value_t = 1883)]
        port: u16,
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// Seconds to hold them open
        #[arg(long, default_value_t = 30)]
        hold: u64,
    },
    /// Publishers → broker → subscribers: delivered msg/s and send-to-receive latency
    Pubsub {
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, default_value_t = 1883)]
        port: u16,
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        #[arg(long, default_value_t = 1)]
        subscribers: usize,
        /// Messages each publisher sends
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        #[arg(long, default_value_t = 206)]
        payload_bytes: usize,
        #[arg(long, default_value_t = 0)]
        qos: u8,
        /// More subscribers to the same messages that never read them
        #[arg(long, default_value_t = 0)]
        stalled: usize,
    },
    /// Append, replay and start-up of the embedded log, per fsync policy
    Log {
        /// Records appended per policy
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        #[arg(long, default_value_t = 200)]
        record_bytes: usize,
        /// Concurrent producers (think: MQTT connections)
        #[arg(long, default_value_t = 64)]
        producers: usize,
        /// Records per append call
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Directory on the disk to measure
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Policies to measure, comma-separated
        #[arg(long, default_value = "always,batch,off", value_delimiter = ',', value_parser = parse_fsync)]
        fsync: Vec<pacer_log::FsyncPolicy>,
    },
    /// A windowed GROUP BY run by the SQL engine on one core (compare with DuckDB: scripts/bench-sql.sh)
    Sql(bench_sql::SqlBench),
    /// A stream–stream join (WITHIN 1 SECOND) run by the SQL engine on one core (compare with
    /// DuckDB: scripts/bench-join.sh)
    Join(bench_sql::ReadingsBench),
    /// The history query (per device and minute) over Parquet segments Pacer compacted
    /// from its log, and over the log's rows (compare with DuckDB: scripts/bench-history.sh)
    History {
        #[arg(long, default_value_t = 10_000_000)]
        records: u64,
        /// Devices (GROUP BY keys)
        #[arg(long, default_value_t = 1000)]
        keys: u64,
        /// Directory for the log
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Directory for the Parquet segments (kept, for other tools to read)
        #[arg(long)]
        parquet: PathBuf,
        #[arg(long, default_value_t = 1_000_000)]
        segment_rows: usize,
        /// Timed runs over Parquet (the median is reported)
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Also time the query over the log's rows
        #[arg(long)]
        log_rows: bool,
    },
    /// The demo's league table (course progress, finish, rank) on one core, beside a plain
    /// last-fix table
    Tracking {
        /// Runners (the league table's size)
        #[arg(long, default_value_t = 1000)]
        runners: u64,
        /// Seconds of the race, one fix per runner per second
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// Directory for the log
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Publish over MQTT → windowed EMIT CHANGES query → push query over HTTP: latency
    SqlLatency {
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, default_value_t = 1883)]
        port: u16,
        #[arg(long, default_value = "http://127.0.0.1:8080", env = "PACER_SERVER")]
        server: String,
        /// Messages per second
        #[arg(long, default_value_t = 20_000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 1000)]
        devices: u64,
        #[arg(long, default_value_t = 1)]
        qos: u8,
    },
    /// Publish throughput and PUBLISH→PUBACK latency
    Publish {
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, default_value_t = 1883)]
        port: u16,
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// Messages each client publishes
        #[arg(long, default_value_t = 25_000)]
        messages: usize,
        #[arg(long, default_value_t = 200)]
        payload_bytes: usize,
        #[arg(long, default_value_t = 1)]
        qos: u8,
        /// Unacknowledged publishes each client keeps open
        #[arg(long, default_value_t = 100)]
        inflight: u16,
    },
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PACER_LOG").unwrap_or_else(|_| "info,rumqttc=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(THREAD_STACK_BYTES)
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up { config, server: args } => {
            let mut config = match config {
                Some(path) => Config::load(&path)?,
                None => Config::default(),
            };
            apply(&mut config, &args);
            let mut server = Server::start(config).await?;
            println!("{}", server.ready_line());
            server.wait().await
        }
        Command::Demo { speed, exit_after_replay, server } => demo(speed, exit_after_replay, server).await,
        Command::Bench { bench } => run_bench(bench).await,
        Command::Simulate { scenario } => match scenario {
            Scenario::Race { fleet, devices, format, course } => {
                simulate::race(simulate::RaceArgs { fleet, devices, format, course }).await
            }
            Scenario::Generators { fleet, devices } => simulate::generators(fleet, devices).await,
            Scenario::Vehicles { fleet, devices } => simulate::vehicles(fleet, devices).await,
            Scenario::Buses { fleet, devices } => simulate::buses(fleet, devices).await,
            Scenario::Access { fleet, devices } => simulate::access(fleet, devices).await,
        },
        Command::Tail { stream, from_beginning, from, key, limit, remote } => {
            tail::tail(tail::TailOptions { remote, stream, from_beginning, from_time: from, key, limit }).await
        }
        Command::Token { action } => token::run(action),
        Command::Passwd { file, user, password, delete } => {
            let password = match (delete, password) {
                (true, _) => None,
                (false, Some(p)) => Some(p),
                (false, None) => {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line).context("reading the password from stdin")?;
                    Some(line.trim_end_matches(['\n', '\r']).to_string())
                }
            };
            anyhow::ensure!(password.as_deref() != Some(""), "the password is empty");
            pacer_auth::update_password_file(&file, &user, password.as_deref())?;
            eprintln!("{} {user} in {}", if delete { "removed" } else { "set" }, file.display());
            Ok(())
        }
        Command::Produce { stream, key, key_field, remote } => {
            let key = match (&key, &key_field) {
                (Some(k), _) => produce::KeyFrom::Fixed(k),
                (None, Some(f)) => produce::KeyFrom::Field(f),
                (None, None) => produce::KeyFrom::None,
            };
            produce::produce(&remote, &stream, key).await
        }
        Command::Sql { statement, format, remote } => sql(&remote, &statement, &format).await,
    }
}

/// `pacer bench …`: measurements against a running broker, or of the log in-process.
async fn run_bench(bench: Bench) -> anyhow::Result<()> {
    match bench {
        Bench::Connections { host, port, count, hold } => {
            let bench = pacer_sim::bench::ConnectionsBench { host, port, count, hold: Duration::from_secs(hold) };
            pacer_sim::bench::connections(bench).await
        }
        Bench::Pubsub { host, port, publishers, subscribers, messages, payload_bytes, qos, stalled } => {
            let bench = pacer_sim::bench::PubSubBench {
                host,
                port,
                publishers,
                subscribers,
                messages_per_publisher: messages,
                payload_bytes,
                qos,
                stalled,
            };
            println!("{}", pacer_sim::bench::pubsub(bench).await?);
            Ok(())
        }
        Bench::SqlLatency { host, port, server, rate, seconds, devices, qos } => {
            bench_sql::latency(bench_sql::LatencyBench { host, port, server, rate, seconds, devices, qos }).await
        }
        Bench::Tracking { runners, seconds, dir } => {
            bench_tracking::tracking(bench_tracking::TrackingBench { runners, seconds, dir }).await
        }
        Bench::History { records, keys, dir, parquet, segment_rows, runs, log_rows } => {
            let bench = bench_history::HistoryBench { records, keys, dir, parquet, segment_rows, runs, log_rows };
            bench_history::history(bench).await
        }
        Bench::Join(readings) => bench_sql::join(readings).await,
        Bench::Sql(bench) => bench_sql::sql(bench).await,
        Bench::Log { records, record_bytes, producers, batch, dir, fsync } => {
            bench::log(bench::LogBench { records, record_bytes, producers, batch, dir, policies: fsync }).await
        }
        Bench::Publish { host, port, clients, messages, payload_bytes, qos, inflight } => {
            let bench = pacer_sim::bench::PublishBench {
                host,
                port,
                clients,
                messages_per_client: messages,
                payload_bytes,
                qos,
                inflight,
            };
            let report = pacer_sim::bench::publish(bench).await?;
            println!("{report}");
            Ok(())
        }
    }
}

/// Command-line flags win over the config file.
fn apply(config: &mut Config, args: &ServerArgs) {
    if let Some(dir) = &args.data_dir {
        config.log.dir = dir.clone();
    }
    if let Some(addr) = &args.mqtt_listen {
        config.mqtt.listen = addr.clone();
    }
    if let Some(addr) = &args.http_listen {
        config.http.listen = addr.clone();
    }
    if let Some(addr) = &args.osmand_listen {
        config.osmand.listen = addr.clone();
    }
    if let Some(fsync) = args.fsync {
        config.log.fsync = fsync;
    }
}

async fn demo(speed: f64, exit_after_replay: bool, args: ServerArgs) -> anyhow::Result<()> {
    let mut config = Config::default();
    // A fresh log each run, so every demo starts at the start line.
    let temp = match &args.data_dir {
        Some(_) => None,
        None => Some(tempfile::Builder::new().prefix("pacer-demo-").tempdir().context("creating a demo data dir")?),
    };
    if let Some(t) = &temp {
        config.log.dir = t.path().to_path_buf();
    }
    apply(&mut config, &args);
    let mut server = Server::start(config).await?;
    println!("{}", server.ready_line());
    let port = server.mqtt_addr.port();
    let local = format!("http://localhost:{}", server.http_addr.port());
    println!("Open {local} to watch the 2019 Sydney half marathon at {speed}x.");
    let fixes = pacer_sim::parse_race(pacer_sim::SYDNEY_HALF_2019)?;
    let options = pacer_sim::ReplayOptions { host: "127.0.0.1".into(), port, speed };
    let mut replay = tokio::spawn(pacer_sim::replay_race(fixes, options));
    let replayed = tokio::select! {
        result = &mut replay => result.context("replay panicked")??,
        result = server.wait() => return result,
    };
    println!("replay finished: {replayed} fixes published and acknowledged");
    if exit_after_replay {
        return Ok(());
    }
    println!("serving on; Ctrl-C to stop");
    server.wait().await
}

/// Sends statements to `POST /api/v1/sql` and prints what comes back: rows as an aligned
/// table, DDL as its message, a push query's rows as JSON lines until Ctrl-C.
async fn sql(remote: &client::Remote, statement: &str, format: &str) -> anyhow::Result<()> {
    let url = remote.url("/api/v1/sql");
    let request = match format {
        "table" => serde_json::json!({ "sql": statement }),
        _ => serde_json::json!({ "sql": statement, "format": format }),
    };
    let mut response = remote.client()?.post(&url).json(&request).send().await.with_context(|| remote.unreachable())?;
    if response.status() == reqwest::StatusCode::UNAUTHORIZED || response.status() == reqwest::StatusCode::FORBIDDEN {
        anyhow::bail!("{}", client::refusal(response).await);
    }
    let ok = response.status().is_success();
    let streaming =
        response.headers().get("content-type").is_some_and(|t| t.as_bytes().starts_with(b"application/x-ndjson"));
    if ok && streaming {
        let mut stdout = std::io::stdout();
        while let Some(chunk) = response.chunk().await.context("the push query's stream broke")? {
            let written =
                std::io::Write::write_all(&mut stdout, &chunk).and_then(|()| std::io::Write::flush(&mut stdout));
            match written {
                // The reader went away (`| head`): that ends the query, quietly.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                other => other?,
            }
        }
        return Ok(());
    }
    if ok && format != "table" {
        let file = response.bytes().await.context("reading Pacer's answer")?;
        let mut stdout = std::io::stdout();
        std::io::Write::write_all(&mut stdout, &file).and_then(|()| std::io::Write::flush(&mut stdout))?;
        return Ok(());
    }
    let body: serde_json::Value = response.json().await.context("Pacer answered with something other than JSON")?;
    if !ok {
        anyhow::bail!("{}", body["error"].as_str().unwrap_or("the statement failed"));
    }
    let results = match body.get("results") {
        Some(serde_json::Value::Array(all)) => all.clone(),
        _ => vec![body],
    };
    for result in results {
        if let Some(message) = result["message"].as_str() {
            println!("{message}");
            continue;
        }
        let columns: Vec<String> = serde_json::from_value(result["columns"].clone())?;
        let rows: Vec<Vec<serde_json::Value>> = serde_json::from_value(result["rows"].clone())?;
        print!("{}", format_table(&columns, &rows));
    }
    Ok(())
}

fn format_table(columns: &[String], rows: &[Vec<serde_json::Value>]) -> String {
    let cell = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    let cells: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(cell).collect()).collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| cells.iter().map(|r| r.get(i).map_or(0, String::len)).chain([c.len()]).max().unwrap_or(0))
        .collect();
    let line = |values: &[String]| {
        let padded: Vec<String> = values.iter().zip(&widths).map(|(v, w)| format!("{v:<w$}")).collect();
        format!("|{}|\n", padded.join("|"))
    };
    let mut out = line(columns);
    out.push_str(&format!("|{}|\n", widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("+")));
    for row in &cells {
        out.push_str(&line(row));
    }
    out.push_str(&format!("({} row{})\n", rows.len(), if rows.len() == 1 { "" } else { "s" }));
    out
}
