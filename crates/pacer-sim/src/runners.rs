//! Synthetic runners along a course: phones reporting in real time (see `devices`), each
//! with a pace of its own that drifts, and GPS noise. The same seed gives the same race.

use std::sync::Arc;

use pacer_sql::Course;

use crate::devices::Device;

/// How runners report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The seed's JSON on `race/{who}`: who, timeepoc, lat, lon, alt, batt, speed (km/h).
    Race,
    /// OwnTracks locations on `owntracks/{who}/phone`.
    OwnTracks,
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

/// A runner on a course, as a simulated device: done one fix after the finish.
pub struct RaceDevice {
    pub runner: Runner,
    pub course: Arc<Course>,
    pub format: Format,
    finished: bool,
}

impl RaceDevice {
    pub fn new(index: u32, seed: u64, course: Arc<Course>, format: Format) -> Self {
        RaceDevice { runner: Runner::new(index, seed), course, format, finished: false }
    }
}

impl Device for RaceDevice {
    fn client_id(&self) -> String {
        format!("pacer-sim-{}", self.runner.who)
    }

    fn report(&mut self, seconds: f64, now_ms: i64) -> Option<(String, String)> {
        if self.finished {
            return None;
        }
        self.runner.advance(seconds);
        self.finished = self.runner.distance >= self.course.length_m();
        Some(self.runner.report(&self.course, self.format, now_ms.div_euclid(1000)))
    }
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
