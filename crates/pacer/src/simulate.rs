//! `pacer simulate SCENARIO`: devices publishing over real MQTT to any broker, with a
//! progress line, a clean stop on Ctrl-C or after `--duration`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use pacer_sim::runners::{self, Format, Progress, RunnersOptions};
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
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum FormatArg {
    /// `race/{who}` with the seed's JSON
    Race,
    /// `owntracks/{who}/phone` with OwnTracks locations
    Owntracks,
}

pub struct RaceArgs {
    pub target: Target,
    pub devices: Option<u32>,
    pub rate: f64,
    pub speed: f64,
    pub seed: u64,
    pub duration: Option<u64>,
    pub format: FormatArg,
}

/// The bundled race replayed at `speed`, or `devices` synthetic runners in real time.
pub async fn race(a: RaceArgs) -> anyhow::Result<()> {
    let Some(devices) = a.devices else {
        anyhow::ensure!(
            a.target.username.is_none(),
            "the replay of the bundled race connects anonymously; give --devices to use credentials"
        );
        let fixes = pacer_sim::parse_race(pacer_sim::SYDNEY_HALF_2019)?;
        let options = pacer_sim::ReplayOptions { host: a.target.host, port: a.target.port, speed: a.speed };
        let acked = pacer_sim::replay_race(fixes, options).await?;
        println!("replayed the 2019 Sydney half: {acked} fixes published and acknowledged");
        return Ok(());
    };
    let course = Arc::new(Course::from_geojson(BUILTIN_COURSE, pacer_sim::SYDNEY_HALF_COURSE)?);
    let format = match a.format {
        FormatArg::Race => Format::Race,
        FormatArg::Owntracks => Format::OwnTracks,
    };
    let options = RunnersOptions {
        host: a.target.host.clone(),
        port: a.target.port,
        username: a.target.username,
        password: a.target.password,
        runners: devices,
        rate_hz: a.rate,
        seed: a.seed,
        format,
        course,
    };
    let progress = Arc::new(Progress::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut running = tokio::spawn(runners::run(options, progress.clone(), stopped));
    let bar =
        ProgressBar::new_spinner().with_style(ProgressStyle::with_template("{spinner} {msg}").expect("valid template"));
    let started = Instant::now();
    let deadline = a.duration.map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let result = loop {
        tokio::select! {
            result = &mut running => break result,
            _ = tick.tick() => {
                let sent = progress.sent.load(Ordering::Relaxed);
                bar.set_message(format!(
                    "{devices} runners → {}:{}: {sent} sent, {} acknowledged, {:.0} msg/s, {} errors",
                    a.target.host, a.target.port, progress.acked.load(Ordering::Relaxed),
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
        "{devices} runners: {} fixes sent, {} acknowledged, {} errors in {:.1} s",
        progress.sent.load(Ordering::Relaxed),
        progress.acked.load(Ordering::Relaxed),
        progress.errors.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
