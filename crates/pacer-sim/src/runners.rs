//! Synthetic runners along a course: N phones, each its own MQTT client, reporting at a
//! fixed rate in real time, with a pace of their own that drifts, and GPS noise. The same
//! seed gives the same race.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pacer_sql::Course;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::watch;

/// How runners report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The seed's JSON on `race/{who}`: who, timeepoc, lat, lon, alt, batt, speed (km/h).
    Race,
    /// OwnTracks locations on `owntracks/{who}/phone`.
    OwnTracks,
}

#[derive(Debug, Clone)]
pub struct RunnersOptions {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub runners: u32,
    /// Fixes per second per runner.
    pub rate_hz: f64,
    pub seed: u64,
    pub format: Format,
    pub course: Arc<Course>,
}

/// Counters the progress display reads.
#[derive(Debug, Default)]
pub struct Progress {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub errors: AtomicU64,
}

/// One runner's legs and lungs.
#[derive(Debug, Clone)]
pub struct Runner {
    pub who: String,
    /// Metres along the course.
    pub distance: f64,
    /// Its own steady speed, m/s, and today's drift from it (a fraction).
    base_speed: f64,
    drift: f64,
    battery: f64,
    rng: fastrand::Rng,
}

impl Runner {
    pub fn new(index: u32, seed: u64) -> Runner {
        let mut rng = fastrand::Rng::with_seed(seed ^ (u64::from(index) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        Runner {
            who: format!("runner{index:04}"),
            // From the start corral's first 50 m, at 2.5–4.5 m/s (a 2:20 to a 1:18 half).
            distance: rng.f64() * 50.0,
            base_speed: 2.5 + rng.f64() * 2.0,
            drift: 0.0,
            battery: 60.0 + rng.f64() * 40.0,
            rng,
        }
    }

    pub fn speed(&self) -> f64 {
        self.base_speed * (1.0 + self.drift)
    }

    /// Runs for `seconds`: the pace drifts a little (within ±10%), the battery drains.
    pub fn advance(&mut self, seconds: f64) {
        self.drift = (self.drift + (self.rng.f64() - 0.5) * 0.02 * seconds.sqrt()).clamp(-0.1, 0.1);
        self.distance += self.speed() * seconds;
        self.battery = (self.battery - seconds / 360.0).max(1.0);
    }

    /// Where its phone says it is: the course position plus a few metres of GPS noise.
    pub fn fix(&mut self, course: &Course) -> (f64, f64) {
        let (lat, lon) = course.point_at(self.distance);
        let metres = |rng: &mut fastrand::Rng| (rng.f64() - 0.5) * 6.0;
        let north = metres(&mut self.rng);
        let east = metres(&mut self.rng);
        (lat + north / 111_195.0, lon + east / (111_195.0 * lat.to_radians().cos()))
    }

    /// (topic, payload) of a fix at `now` (Unix seconds).
    pub fn report(&mut self, course: &Course, format: Format, now: i64) -> (String, String) {
        let (lat, lon) = self.fix(course);
        let kmh = self.speed() * 3.6;
        match format {
            Format::Race => (
                format!("race/{}", self.who),
                serde_json::json!({"who": self.who, "timeepoc": now, "lat": lat, "lon": lon, "alt": 0.0,
                                   "batt": self.battery.round(), "speed": (kmh * 100.0).round() / 100.0})
                .to_string(),
            ),
            Format::OwnTracks => (
                format!("owntracks/{}/phone", self.who),
                serde_json::json!({"_type": "location", "tid": &self.who[self.who.len() - 2..], "tst": now,
                                   "lat": lat, "lon": lon, "vel": kmh.round(), "batt": self.battery.round(), "acc": 5})
                .to_string(),
            ),
        }
    }
}

/// Runs every runner until `stop` turns true or they all finished. Returns once each has
/// disconnected.
pub async fn run(o: RunnersOptions, progress: Arc<Progress>, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    anyhow::ensure!(o.rate_hz > 0.0, "--rate must be above 0, got {}", o.rate_hz);
    let mut tasks = Vec::new();
    for i in 0..o.runners {
        let (o, progress, stop) = (o.clone(), progress.clone(), stop.clone());
        tasks.push(tokio::spawn(async move { run_one(Runner::new(i, o.seed), o, progress, stop).await }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

async fn run_one(
    mut runner: Runner,
    o: RunnersOptions,
    progress: Arc<Progress>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut mqtt = MqttOptions::new(format!("pacer-sim-{}", runner.who), o.host.clone(), o.port);
    mqtt.set_keep_alive(Duration::from_secs(30));
    if let Some(user) = &o.username {
        mqtt.set_credentials(user.clone(), o.password.clone().unwrap_or_default());
    }
    let (client, mut events) = AsyncClient::new(mqtt, 64);
    let counters = progress.clone();
    let driver = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    counters.acked.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                Ok(_) => {}
                Err(e) => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "simulated runner: MQTT connection failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    let period = Duration::from_secs_f64(1.0 / o.rate_hz);
    // Spread the runners over the period, as phones are not in step.
    let offset = period.mul_f64(fastrand::Rng::with_seed(o.seed ^ runner.distance.to_bits()).f64());
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    let length = o.course.length_m();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        runner.advance(period.as_secs_f64());
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
        let (topic, payload) = runner.report(&o.course, o.format, now);
        if client.publish(topic, QoS::AtLeastOnce, false, payload).await.is_err() {
            progress.errors.fetch_add(1, Ordering::Relaxed);
            break;
        }
        progress.sent.fetch_add(1, Ordering::Relaxed);
        if runner.distance >= length {
            break;
        }
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line() -> Course {
        Course::new("line", vec![(0.0, 0.0), (0.1, 0.0)]).unwrap()
    }

    #[test]
    fn the_same_seed_runs_the_same_race() {
        let course = line();
        let race = |seed| {
            let mut runner = Runner::new(7, seed);
            (0..100)
                .map(|_| {
                    runner.advance(1.0);
                    runner.report(&course, Format::Race, 0).1
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(race(1), race(1));
        assert_ne!(race(1), race(2));
    }

    #[test]
    fn runners_keep_a_pace_of_their_own_near_the_course() {
        let course = line();
        let mut runner = Runner::new(3, 42);
        let start = runner.distance;
        for _ in 0..600 {
            runner.advance(1.0);
        }
        let speed = (runner.distance - start) / 600.0;
        assert!((2.2..5.0).contains(&speed), "{speed} m/s");
        let (lat, lon) = runner.fix(&course);
        assert!(lat.abs() * 111_195.0 <= 3.0, "GPS noise is a few metres: {lat}");
        assert!((course.progress(lat, lon, None) - runner.distance).abs() < 5.0);
        let (topic, payload) = runner.report(&course, Format::OwnTracks, 1_700_000_000);
        assert_eq!(topic, "owntracks/runner0003/phone");
        let v: serde_json::Value = serde_json::from_str(&payload).unwrap();
        assert_eq!((v["_type"].as_str(), v["tst"].as_i64()), (Some("location"), Some(1_700_000_000)));
    }
}
