//! Tracking functions: what a device's consecutive fixes say about its movement, its
//! progress along a course and its zones. `COURSE_DISTANCE`, `TO_FINISH`, `FINISH_TIME`,
//! `PROJECTED_FINISH`, `SPEED`, `HEADING`, `PACE`, `ZONE_EVENT` and `IN_ZONE` all fold a
//! device's fixes, in order, into one [`TrackState`] and read a different field of it.
//!
//! A fix that implies an impossible speed from the last accepted one (a GPS jump) is
//! ignored; so is a forward jump of progress faster than that speed, which is how a match
//! on the wrong pass of an out-and-back section would show. Progress never goes back.

use std::sync::Arc;

use geo::{Bearing, Haversine, Point};
use serde::{Deserialize, Serialize};

use crate::course::Course;
use crate::geo_fn::{geo_distance, DistanceUnit};
use crate::zone::Zone;

/// Progress may run this far ahead of what the speed limit allows.
const PROGRESS_SLACK_M: f64 = 200.0;
/// A device counts as finished once it covered this share of the course…
pub const FINISH_SHARE: f64 = 0.95;
/// …and reached the end of the course, or came this close to it (metres).
pub const FINISH_RADIUS_M: f64 = 25.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackKind {
    /// Metres along the course.
    CourseDistance,
    /// Metres left to the end of the course; 0 once finished.
    ToFinish,
    /// Event time (ms) the device crossed the finish, or NULL.
    FinishTime,
    /// Event time (ms) it will finish at its average speed so far (its finish time once
    /// finished).
    ProjectedFinish,
    /// km/h between the last two accepted fixes.
    Speed,
    /// Degrees clockwise from north between the last two accepted fixes.
    Heading,
    /// Minutes per km between the last two accepted fixes.
    Pace,
    /// 'enter' or 'exit' on the fix that completes a (debounced) transition, else NULL.
    ZoneEvent,
    /// Whether the device is in the zone (debounced).
    InZone,
}

/// What the first argument of a tracking function names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    None,
    Course,
    Zone,
}

/// A tracking function's value.
#[derive(Debug, Clone, PartialEq)]
pub enum TrackValue {
    Number(f64),
    /// Event time, ms.
    Time(i64),
    Text(&'static str),
    Bool(bool),
}

impl TrackKind {
    pub const ALL: [(&'static str, TrackKind); 9] = [
        ("COURSE_DISTANCE", TrackKind::CourseDistance),
        ("TO_FINISH", TrackKind::ToFinish),
        ("FINISH_TIME", TrackKind::FinishTime),
        ("PROJECTED_FINISH", TrackKind::ProjectedFinish),
        ("SPEED", TrackKind::Speed),
        ("HEADING", TrackKind::Heading),
        ("PACE", TrackKind::Pace),
        ("ZONE_EVENT", TrackKind::ZoneEvent),
        ("IN_ZONE", TrackKind::InZone),
    ];

    pub fn named(name: &str) -> Option<TrackKind> {
        Self::ALL.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, k)| *k)
    }

    pub fn place(self) -> Place {
        match self {
            TrackKind::Speed | TrackKind::Heading | TrackKind::Pace => Place::None,
            TrackKind::ZoneEvent | TrackKind::InZone => Place::Zone,
            _ => Place::Course,
        }
    }

    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, k)| *k == self).map_or("", |(n, _)| n)
    }
}

/// How one tracking aggregate reads fixes.
#[derive(Debug, Clone)]
pub struct Tracking {
    pub kind: TrackKind,
    pub course: Option<Arc<Course>>,
    pub zone: Option<Arc<Zone>>,
    /// Fixes implying more than this from the last accepted fix are GPS jumps.
    pub max_speed_kmh: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Fix {
    pub lat: f64,
    pub lon: f64,
    /// Event time, ms.
    pub t: i64,
}

/// What a group's fixes added up to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrackState {
    last: Option<Fix>,
    /// The accepted fix before `last`, for speed and heading.
    before: Option<Fix>,
    /// Metres along the course, and where the first fix was.
    progress: Option<f64>,
    /// When progress last moved.
    progress_t: i64,
    start_progress: f64,
    first_t: i64,
    finished_at: Option<i64>,
    /// In the zone, as far as debouncing has confirmed.
    #[serde(default)]
    inside: bool,
    /// Fixes on the other side since, and when the first was.
    #[serde(default)]
    pending: u32,
    #[serde(default)]
    pending_since: i64,
    /// The transition the latest fix completed: Some(true) entered, Some(false) left.
    #[serde(default)]
    event: Option<bool>,
}

impl TrackState {
    /// Event time of the last accepted fix.
    pub fn last_time(&self) -> Option<i64> {
        self.last.map(|f| f.t)
    }
}

impl Tracking {
    /// Folds one fix in. Out-of-range positions and GPS jumps change nothing.
    pub fn add(&self, state: &mut TrackState, fix: Fix) {
        state.event = None;
        if !(-90.0..=90.0).contains(&fix.lat) || !(-180.0..=180.0).contains(&fix.lon) {
            return;
        }
        if let Some(last) = state.last {
            let hours = (fix.t - last.t) as f64 / 3_600_000.0;
            if hours <= 0.0 {
                return; // out of order or a repeat: speed and progress need time to pass
            }
            let km = geo_distance(last.lat, last.lon, fix.lat, fix.lon, DistanceUnit::Km);
            if km / hours > self.max_speed_kmh {
                return;
            }
        }
        if let Some(course) = &self.course {
            self.advance(course, state, fix);
        }
        if let Some(zone) = &self.zone {
            debounce(zone, state, fix);
        }
        if state.last.is_none() {
            state.first_t = fix.t;
        }
        state.before = state.last;
        state.last = Some(fix);
    }

    fn advance(&self, course: &Course, state: &mut TrackState, fix: Fix) {
        let here = course.progress(fix.lat, fix.lon, state.progress);
        let (Some(previous), Some(last)) = (state.progress, state.last) else {
            state.progress = Some(here);
            state.progress_t = fix.t;
            state.start_progress = here;
            return;
        };
        // Matched too far ahead to have got there since progress last moved: keep the old
        // progress (a recorded course zigzags with its GPS noise, hence the slack).
        let hours = (fix.t - state.progress_t) as f64 / 3_600_000.0;
        if here - previous > self.max_speed_kmh * hours * 1000.0 + PROGRESS_SLACK_M {
            return;
        }
        state.progress = Some(here);
        state.progress_t = fix.t;
        if state.finished_at.is_some() {
            return;
        }
        let length = course.length_m();
        let covered = here - state.start_progress;
        let (end_lon, end_lat) = course.end();
        let from_end = geo_distance(fix.lat, fix.lon, end_lat, end_lon, DistanceUnit::Km) * 1000.0;
        if covered >= FINISH_SHARE * length && (here >= length || from_end <= FINISH_RADIUS_M) {
            // Between the two fixes, where progress reached the end: progress stops at the
            // end of the course, so a fix past it counts as the end plus its distance beyond.
            let reached = if here >= length { length + from_end } else { here };
            let share =
                if reached > previous { ((length - previous) / (reached - previous)).clamp(0.0, 1.0) } else { 1.0 };
            state.finished_at = Some(last.t + ((fix.t - last.t) as f64 * share).round() as i64);
        }
    }

    /// The function's value; None is NULL.
    pub fn result(&self, state: &TrackState) -> Option<TrackValue> {
        match self.kind {
            TrackKind::FinishTime | TrackKind::ProjectedFinish => {
                self.number(state).map(|t| TrackValue::Time(t as i64))
            }
            TrackKind::ZoneEvent => state.event.map(|e| TrackValue::Text(if e { "enter" } else { "exit" })),
            TrackKind::InZone => state.last.map(|_| TrackValue::Bool(state.inside)),
            _ => self.number(state).map(TrackValue::Number),
        }
    }

    fn number(&self, state: &TrackState) -> Option<f64> {
        let length = self.course.as_ref().map(|c| c.length_m());
        match self.kind {
            TrackKind::CourseDistance => state.progress,
            TrackKind::ToFinish => match state.finished_at {
                Some(_) => Some(0.0),
                None => Some((length? - state.progress?).max(0.0)),
            },
            TrackKind::FinishTime => state.finished_at.map(|t| t as f64),
            TrackKind::ProjectedFinish => {
                if let Some(t) = state.finished_at {
                    return Some(t as f64);
                }
                let last = state.last?;
                let covered = state.progress? - state.start_progress;
                let elapsed = (last.t - state.first_t) as f64;
                if covered <= 0.0 || elapsed <= 0.0 {
                    return None;
                }
                let left = (length? - state.progress?).max(0.0);
                Some((last.t as f64 + left * elapsed / covered).round())
            }
            TrackKind::Speed => speed_kmh(state),
            TrackKind::Pace => speed_kmh(state).filter(|s| *s >= 0.1).map(|s| 60.0 / s),
            TrackKind::Heading => {
                let (a, b) = (state.before?, state.last?);
                (a.lat != b.lat || a.lon != b.lon)
                    .then(|| Haversine.bearing(Point::new(a.lon, a.lat), Point::new(b.lon, b.lat)))
            }
            TrackKind::ZoneEvent | TrackKind::InZone => None,
        }
    }
}

/// A fix on the other side of the zone's edge than the device's confirmed side counts
/// towards a transition; one back on the confirmed side starts the count again.
fn debounce(zone: &Zone, state: &mut TrackState, fix: Fix) {
    if zone.contains(fix.lat, fix.lon) == state.inside {
        state.pending = 0;
        return;
    }
    if state.pending == 0 {
        state.pending_since = fix.t;
    }
    state.pending += 1;
    if state.pending >= zone.debounce_fixes.max(1) && fix.t - state.pending_since >= zone.dwell_ms {
        state.inside = !state.inside;
        state.pending = 0;
        state.event = Some(state.inside);
    }
}

fn speed_kmh(state: &TrackState) -> Option<f64> {
    let (a, b) = (state.before?, state.last?);
    let hours = (b.t - a.t) as f64 / 3_600_000.0;
    Some(geo_distance(a.lat, a.lon, b.lat, b.lon, DistanceUnit::Km) / hours)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1 km east along the equator.
    fn line() -> Arc<Course> {
        Arc::new(Course::new("line", vec![(0.0, 0.0), (0.009, 0.0)]).unwrap())
    }

    fn tracking(kind: TrackKind) -> Tracking {
        Tracking { kind, course: Some(line()), zone: None, max_speed_kmh: 50.0 }
    }

    fn fold(kind: TrackKind, fixes: &[(f64, i64)]) -> (Tracking, TrackState) {
        let t = tracking(kind);
        let mut state = TrackState::default();
        for &(lon, seconds) in fixes {
            t.add(&mut state, Fix { lat: 0.0, lon, t: seconds * 1000 });
        }
        (t, state)
    }

    #[test]
    fn speed_heading_and_pace_come_from_the_last_two_fixes() {
        // 0.001° of longitude on the equator is 111.19 m; in 20 s that is 20 km/h.
        let fixes = [(0.0, 0), (0.001, 20)];
        let (t, s) = fold(TrackKind::Speed, &fixes);
        let speed = t.number(&s).unwrap();
        assert!((speed - 20.01).abs() < 0.05, "{speed}");
        let (t, s) = fold(TrackKind::Pace, &fixes);
        assert!((t.number(&s).unwrap() - 60.0 / speed).abs() < 1e-9);
        let (t, s) = fold(TrackKind::Heading, &fixes);
        assert!((t.number(&s).unwrap() - 90.0).abs() < 1e-6, "due east");
        let (t, s) = fold(TrackKind::Speed, &fixes[..1]);
        assert_eq!(t.number(&s), None, "one fix has no speed");
    }

    #[test]
    fn a_gps_jump_is_ignored() {
        // The third fix is 1 km further after 10 s (360 km/h): dropped, so speed and
        // progress stay those of the second.
        let (t, s) = fold(TrackKind::Speed, &[(0.0, 0), (0.001, 20), (0.01, 30)]);
        assert!((t.number(&s).unwrap() - 20.01).abs() < 0.05);
        let (t, s) = fold(TrackKind::CourseDistance, &[(0.0, 0), (0.001, 20), (0.01, 30)]);
        assert!((t.number(&s).unwrap() - 111.2).abs() < 0.5);
    }

    #[test]
    fn a_match_on_a_later_pass_is_no_progress_until_time_allows_it() {
        // East 1 km, north 200 m, back west 1 km: a glitch 200 m north of the way out lies
        // on the way back, 1.4 km further along the course.
        let course = Course::new("loop", vec![(0.0, 0.0), (0.009, 0.0), (0.009, 0.0018), (0.0, 0.0018)]).unwrap();
        let t = Tracking {
            kind: TrackKind::CourseDistance,
            course: Some(Arc::new(course)),
            zone: None,
            max_speed_kmh: 100.0,
        };
        let mut s = TrackState::default();
        t.add(&mut s, Fix { lat: 0.0, lon: 0.0036, t: 0 });
        t.add(&mut s, Fix { lat: 0.0018, lon: 0.0036, t: 10_000 });
        assert!((t.number(&s).unwrap() - 400.0).abs() < 2.0, "{:?}", t.number(&s));
        // A minute on, being there is possible.
        t.add(&mut s, Fix { lat: 0.0018, lon: 0.0036, t: 60_000 });
        assert!((t.number(&s).unwrap() - 1800.0).abs() < 5.0, "{:?}", t.number(&s));
    }

    #[test]
    fn finish_is_interpolated_after_covering_the_course() {
        // 20 fixes 50 m apart every 10 s (18 km/h); the last is 10 m past the end.
        let fixes: Vec<(f64, i64)> = (0..=20).map(|i| (i as f64 * 0.00045 + 0.00009, i * 10)).collect();
        let (t, s) = fold(TrackKind::FinishTime, &fixes);
        let finished = t.number(&s).expect("finished") / 1000.0;
        // The end (1000.8 m) lies between the fix at 190 s (950 m… + 10) and the one at 200 s.
        assert!((finished - 198.0).abs() < 1.0, "{finished}");
        let (t, s) = fold(TrackKind::ToFinish, &fixes);
        assert_eq!(t.number(&s), Some(0.0));
        let (t, s) = fold(TrackKind::ProjectedFinish, &fixes[..10]);
        let projected = t.number(&s).unwrap() / 1000.0;
        assert!((projected - 199.0).abs() < 3.0, "at a steady pace the projection is the finish: {projected}");
    }

    #[test]
    fn zone_transitions_wait_for_the_debounce() {
        use crate::zone::Area;
        // A 100 m circle around the origin; three fixes needed on the new side.
        let mut zone = Zone::new("z", Area::Circle { center: Point::new(0.0, 0.0), radius_m: 100.0 });
        zone.debounce_fixes = 3;
        let t = Tracking { kind: TrackKind::ZoneEvent, course: None, zone: Some(Arc::new(zone)), max_speed_kmh: 100.0 };
        let mut s = TrackState::default();
        // metres east of the centre, one fix every 10 s
        let track = [300.0, 50.0, 200.0, 50.0, 40.0, 30.0, 20.0, 150.0, 160.0, 170.0, 180.0];
        let events: Vec<Option<TrackValue>> = track
            .iter()
            .enumerate()
            .map(|(i, m)| {
                t.add(&mut s, Fix { lat: 0.0, lon: m / 111_195.0, t: i as i64 * 10_000 });
                t.result(&s)
            })
            .collect();
        let enter = Some(TrackValue::Text("enter"));
        let exit = Some(TrackValue::Text("exit"));
        // A lone fix inside (50 m) then out again is a wobble; three inside in a row enter.
        assert_eq!(events, [None, None, None, None, None, enter, None, None, None, exit, None]);
    }

    #[test]
    fn starting_near_the_end_is_no_finish() {
        // A device switched on 30 m before the end covered 3% of the course.
        let (t, s) = fold(TrackKind::FinishTime, &[(0.0087, 0), (0.009, 10)]);
        assert_eq!(t.number(&s), None);
    }
}
