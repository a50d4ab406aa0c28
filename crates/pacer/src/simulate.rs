//! `pacer simulate SCENARIO`: devices publishing over real MQTT to any broker, with a
//! progress line, a clean stop on Ctrl-C or after `--duration`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use pacer_sim::buses::{self, Bus};
use pacer_sim::devices::{self, Connection, Device, Progress};
use pacer_sim::generators::Generator;
use pacer_sim::runners::{Format, RaceDevice};
use pacer_sim::vehicles::Vehicle;
use pacer_sql::Course;

use crate::config::BUILTIN_COURSE;

#[derive(clap::Args, Clone, Debug)]
pub struct Target {
    /// Broker host
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Broker port
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    #[arg(long)]
    pub username: Option<String>,
    #[arg(long)]
    pub password: Option<String>,
    /// MQTT over TLS (port 8883 usually), trusting the CAs in --cafile
    #[arg(long, requires = "cafile")]
    pub tls: bool,
    /// PEM file of the CA(s) that signed the broker's certificate (for a public CA:
    /// /etc/ssl/certs/ca-certificates.crt)
    #[arg(long)]
    pub cafile: Option<std::path::PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum FormatArg {
    /// `race/{who}` with the seed's JSON
    Race,
    /// `owntracks/{who}/phone` with OwnTracks locations
    Owntracks,
}

/// What every scenario takes.
#[derive(clap::Args, Clone, Debug)]
pub struct Fleet {
    #[command(flatten)]
    pub target: Target,
    /// Reports per second per device
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// The same seed gives the same devices doing the same things
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Stop after this many seconds (else Ctrl-C, or when every device is done)
    #[arg(long)]
    pub duration: Option<u64>,
    /// Simulated time runs this many times faster than the clock: devices report --rate times
    /// per simulated second, stamped with simulated time [default: 1; the race's replay: 30]
    #[arg(long)]
    pub speed: Option<f64>,
}

pub struct RaceArgs {
    pub fleet: Fleet,
    pub devices: Option<u32>,
    pub format: FormatArg,
    /// A GPX or GeoJSON course for synthetic runners (default: the Sydney half's).
    pub course: Option<std::path::PathBuf>,
}

pub async fn generators(fleet: Fleet, devices: u32) -> anyhow::Result<()> {
    let all = (0..devices).map(|i| Box::new(Generator::new(i, fleet.seed)) as Box<dyn Device>).collect();
    run(all, "generators", fleet).await
}

pub async fn vehicles(fleet: Fleet, devices: u32) -> anyhow::Result<()> {
    let all = (0..devices).map(|i| Box::new(Vehicle::new(i, fleet.seed)) as Box<dyn Device>).collect();
    run(all, "vehicles", fleet).await
}

pub async fn buses(fleet: Fleet, devices: u32) -> anyhow::Result<()> {
    let routes = buses::lines()?;
    let all = (0..devices).map(|i| Box::new(Bus::new(i, fleet.seed, &routes)) as Box<dyn Device>).collect();
    run(all, "buses", fleet).await
}

/// The Zurich readers (all of them, or the first `devices`).
pub async fn access(fleet: Fleet, devices: Option<u32>) -> anyhow::Result<()> {
    let mut readers = pacer_sim::access::readers(fleet.seed)?;
    if let Some(n) = devices {
        readers.truncate(n as usize);
    }
    let all = readers.into_iter().map(|r| Box::new(r) as Box<dyn Device>).collect();
    run(all, "readers", fleet).await
}

/// The bundled race replayed at `speed`, or `devices` synthetic runners in real time.
pub async fn race(a: RaceArgs) -> anyhow::Result<()> {
    let Some(devices) = a.devices else {
        let target = a.fleet.target.clone();
        anyhow::ensure!(
            target.username.is_none(),
            "the replay of the bundled race connects anonymously; give --devices to use credentials"
        );
        let fixes = pacer_sim::parse_race(pacer_sim::SYDNEY_HALF_2019)?;
        let speed = a.fleet.speed.unwrap_or(30.0);
        let options = pacer_sim::ReplayOptions { host: target.host, port: target.port, speed };
        let acked = pacer_sim::replay_race(fixes, options).await?;
        println!("replayed the 2019 Sydney half: {acked} fixes published and acknowledged");
        return Ok(());
    };
    let course = match &a.course {
        Some(path) => Course::from_file("course", path, &Default::default())
            .with_context(|| format!("--course {}", path.display()))?,
        None => Course::from_geojson(BUILTIN_COURSE, pacer_sim::SYDNEY_HALF_COURSE)?,
    };
    let course = Arc::new(course);
    let format = match a.format {
        FormatArg::Race => Format::Race,
        FormatArg::Owntracks => Format::OwnTracks,
    };
    let seed = a.fleet.seed;
    let all =
        (0..devices).map(|i| Box::new(RaceDevice::new(i, seed, course.clone(), format)) as Box<dyn Device>).collect();
    run(all, "runners", a.fleet).await
}

/// Runs `all` with a progress line until they are done, `--duration` passes or Ctrl-C.
async fn run(all: Vec<Box<dyn Device>>, what: &str, fleet: Fleet) -> anyhow::Result<()> {
    let count = all.len();
    let target = format!("{}:{}", fleet.target.host, fleet.target.port);
    let tls_ca = match (&fleet.target.tls, &fleet.target.cafile) {
        (true, Some(path)) => Some(std::fs::read(path).with_context(|| format!("--cafile {}", path.display()))?),
        _ => None,
    };
    let connection = Connection {
        host: fleet.target.host,
        port: fleet.target.port,
        username: fleet.target.username,
        password: fleet.target.password,
        tls_ca,
    };
    let progress = Arc::new(Progress::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let clock = devices::Clock { rate_hz: fleet.rate, speed: fleet.speed.unwrap_or(1.0) };
    let mut running = tokio::spawn(devices::run(all, connection, clock, progress.clone(), stopped));
    let bar =
        ProgressBar::new_spinner().with_style(ProgressStyle::with_template("{spinner} {msg}").expect("valid template"));
    let started = Instant::now();
    let deadline = fleet.duration.map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let result = loop {
        tokio::select! {
            result = &mut running => break result,
            _ = tick.tick() => {
                let sent = progress.sent.load(Ordering::Relaxed);
                bar.set_message(format!(
                    "{count} {what} → {target}: {sent} sent, {} acknowledged, {:.0} msg/s, {} errors",
                    progress.acked.load(Ordering::Relaxed),
                    sent as f64 / started.elapsed().as_secs_f64().max(1e-3), progress.errors.load(Ordering::Relaxed)
                ));
                bar.tick();
            }
            _ = async { tokio::time::sleep_until(deadline.unwrap()).await }, if deadline.is_some() => {
                let _ = stop.send(true);
            }
            _ = tokio::signal::ctrl_c() => {
                let _ = stop.send(true);
            }
        }
    };
    bar.finish_and_clear();
    result??;
    println!(
        "{count} {what}: {} messages sent, {} acknowledged, {} errors in {:.1} s",
        progress.sent.load(Ordering::Relaxed),
        progress.acked.load(Ordering::Relaxed),
        progress.errors.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
