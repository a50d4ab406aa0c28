//! A course: a named line that devices move along (a race route, a bus line).
//!
//! Progress along it is the closest point on its segments (in a flat projection centred on
//! the device) plus the haversine length of the course before it (DESIGN:
//! `LineLocatePoint` on raw lon/lat would be distorted). Where the
//! course passes the same place twice (loops, out-and-back, a finish beside the start) the
//! device's previous progress picks the right pass, and progress never goes backwards on a
//! GPS glitch.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use geo::{Distance, Haversine, Point};

/// How far behind its last progress a device may be matched (GPS noise), in metres.
const BACKTRACK_M: f64 = 100.0;
/// How far ahead of its last progress the search looks first, in metres.
const LOOKAHEAD_M: f64 = 2000.0;
/// Beyond this distance from the course inside the look-ahead window, search the rest.
const OFF_COURSE_M: f64 = 200.0;
/// Among candidate matches this close to the best one, the earliest along the course wins.
const TIE_M: f64 = 30.0;
/// The mean Earth radius the haversine lengths use.
const EARTH_RADIUS_M: f64 = 6_371_008.8;

#[derive(Debug, Clone)]
pub struct Course {
    pub name: String,
    points: Vec<Point>,
    /// Metres from the start to each point.
    cumulative: Vec<f64>,
}

impl Course {
    /// A course from (lon, lat) points. Needs at least two.
    pub fn new(name: impl Into<String>, lon_lat: Vec<(f64, f64)>) -> anyhow::Result<Self> {
        let name = name.into();
        anyhow::ensure!(lon_lat.len() >= 2, "course {name:?} needs at least two points, it has {}", lon_lat.len());
        let points: Vec<Point> = lon_lat.into_iter().map(|(lon, lat)| Point::new(lon, lat)).collect();
        let mut cumulative = Vec::with_capacity(points.len());
        let mut total = 0.0;
        cumulative.push(0.0);
        for w in points.windows(2) {
            total += Haversine.distance(w[0], w[1]);
            cumulative.push(total);
        }
        Ok(Course { name, points, cumulative })
    }

    /// The first LineString in a GeoJSON document (Feature, FeatureCollection or geometry).
    pub fn from_geojson(name: impl Into<String>, text: &str) -> anyhow::Result<Self> {
        let name = name.into();
        let doc: serde_json::Value =
            serde_json::from_str(text).map_err(|e| anyhow::anyhow!("course {name:?}: not JSON: {e}"))?;
        let line = find_line(&doc).ok_or_else(|| anyhow::anyhow!("course {name:?}: no LineString in the GeoJSON"))?;
        let coords = line
            .iter()
            .map(|c| match c.as_array().map(|a| a.as_slice()) {
                Some([lon, lat, ..]) => Some((lon.as_f64()?, lat.as_f64()?)),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| anyhow::anyhow!("course {name:?}: a coordinate is not [lon, lat]"))?;
        Course::new(name, coords)
    }

    /// A course from a file: GPX (its tracks' points, else its routes'), GeoJSON (the
    /// first LineString), or JSON lines of fixes with `lat`/`lon` (or `latitude`/
    /// `longitude`) fields, taking only the lines whose fields equal `only` (a recorded
    /// track of one device in a file of many).
    pub fn from_file(name: &str, path: &Path, only: &BTreeMap<String, serde_json::Value>) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let extension = path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
        match extension.as_str() {
            "gpx" => Course::from_gpx(name, &text),
            "jsonl" | "ndjson" => Course::from_json_lines(name, &text, only),
            "geojson" | "json" => Course::from_geojson(name, &text),
            other => anyhow::bail!("{}: unknown course format {other:?} (gpx, geojson, json or jsonl)", path.display()),
        }
    }

    /// The points of a GPX file's tracks (a recorded track), else of its routes.
    pub fn from_gpx(name: &str, text: &str) -> anyhow::Result<Self> {
        let doc = gpx::read(text.as_bytes()).map_err(|e| anyhow::anyhow!("course {name:?}: not GPX: {e}"))?;
        let lon_lat = |points: &mut dyn Iterator<Item = &gpx::Waypoint>| -> Vec<(f64, f64)> {
            points.map(|w| (w.point().x(), w.point().y())).collect()
        };
        let mut points = lon_lat(&mut doc.tracks.iter().flat_map(|t| &t.segments).flat_map(|s| &s.points));
        if points.is_empty() {
            points = lon_lat(&mut doc.routes.iter().flat_map(|r| &r.points));
        }
        Course::new(name, points)
    }

    /// A recorded track from JSON lines of fixes, in file order.
    pub fn from_json_lines(name: &str, text: &str, only: &BTreeMap<String, serde_json::Value>) -> anyhow::Result<Self> {
        let mut points = Vec::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let fix: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| anyhow::anyhow!("course {name:?}: line {} is not JSON: {e}", i + 1))?;
            if only.iter().any(|(k, v)| fix.get(k) != Some(v)) {
                continue;
            }
            let number = |keys: [&str; 2]| keys.iter().find_map(|k| fix.get(*k).and_then(serde_json::Value::as_f64));
            match (number(["lat", "latitude"]), number(["lon", "longitude"])) {
                (Some(lat), Some(lon)) => points.push((lon, lat)),
                _ => anyhow::bail!("course {name:?}: line {} has no numeric lat and lon", i + 1),
            }
        }
        Course::new(name, points)
    }

    pub fn length_m(&self) -> f64 {
        *self.cumulative.last().unwrap()
    }

    /// (lat, lon) `metres` along the course (clamped to its ends); straight between points.
    pub fn point_at(&self, metres: f64) -> (f64, f64) {
        let metres = metres.clamp(0.0, self.length_m());
        let i = self.cumulative.partition_point(|c| *c <= metres).clamp(1, self.points.len() - 1);
        let (a, b) = (self.points[i - 1], self.points[i]);
        let span = self.cumulative[i] - self.cumulative[i - 1];
        let share = if span > 0.0 { (metres - self.cumulative[i - 1]) / span } else { 0.0 };
        (a.y() + (b.y() - a.y()) * share, a.x() + (b.x() - a.x()) * share)
    }

    /// (lon, lat) of the finish.
    pub fn end(&self) -> (f64, f64) {
        let p = self.points.last().expect("a course has points");
        (p.x(), p.y())
    }

    /// The course as (lon, lat) pairs, for drawing.
    pub fn lon_lat(&self) -> Vec<[f64; 2]> {
        self.points.iter().map(|p| [p.x(), p.y()]).collect()
    }

    /// Metres covered along the course at (lat, lon), given the device's previous progress.
    pub fn progress(&self, lat: f64, lon: f64, previous: Option<f64>) -> f64 {
        let here = Point::new(lon, lat);
        let found = match previous {
            None => self.best_match(here, 0.0, f64::INFINITY),
            Some(prev) => {
                let near = self.best_match(here, prev - BACKTRACK_M, prev + LOOKAHEAD_M);
                match near {
                    Some((off, _)) if off <= OFF_COURSE_M => near,
                    _ => self.best_match(here, prev - BACKTRACK_M, f64::INFINITY).or(near),
                }
            }
        };
        let progress = found.map_or(0.0, |(_, p)| p);
        previous.map_or(progress, |prev| progress.max(prev))
    }

    /// (distance off the course, progress) of the closest point on segments overlapping
    /// [from, to] metres; among near-ties the earliest.
    ///
    /// Distances are taken in a flat projection centred on the device (metres east and
    /// north): within a few km that is within 0.1% of the great-circle distance, far below
    /// GPS error, and this runs for every segment near every fix.
    fn best_match(&self, here: Point, from: f64, to: f64) -> Option<(f64, f64)> {
        let east = here.y().to_radians().cos() * EARTH_RADIUS_M;
        let flat = |p: Point| {
            let dlon = (p.x() - here.x() + 540.0).rem_euclid(360.0) - 180.0;
            (dlon.to_radians() * east, (p.y() - here.y()).to_radians() * EARTH_RADIUS_M)
        };
        let first = self.cumulative.partition_point(|c| *c < from).saturating_sub(1);
        let mut candidates = Vec::new();
        for i in first..self.points.len() - 1 {
            if self.cumulative[i] > to {
                break;
            }
            let ((ax, ay), (bx, by)) = (flat(self.points[i]), flat(self.points[i + 1]));
            let (dx, dy) = (bx - ax, by - ay);
            let length2 = dx * dx + dy * dy;
            let t = if length2 > 0.0 { (-(ax * dx + ay * dy) / length2).clamp(0.0, 1.0) } else { 0.0 };
            let off = (ax + t * dx).hypot(ay + t * dy);
            let along = self.cumulative[i] + t * (self.cumulative[i + 1] - self.cumulative[i]);
            if (from..=to).contains(&along) {
                candidates.push((off, along));
            }
        }
        let best = candidates.iter().map(|c| c.0).fold(f64::INFINITY, f64::min);
        candidates.into_iter().find(|c| c.0 <= best + TIE_M)
    }
}

fn find_line(doc: &serde_json::Value) -> Option<&Vec<serde_json::Value>> {
    match doc.get("type")?.as_str()? {
        "LineString" => doc.get("coordinates")?.as_array(),
        "Feature" => find_line(doc.get("geometry")?),
        "FeatureCollection" => doc.get("features")?.as_array()?.iter().find_map(find_line),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Out 1 km east along the equator and back on the same road.
    fn out_and_back() -> Course {
        Course::new("oab", vec![(0.0, 0.0), (0.009, 0.0), (0.0, 0.00001)]).unwrap()
    }

    #[test]
    fn progress_follows_the_right_pass_of_an_out_and_back() {
        let c = out_and_back();
        assert!((c.length_m() - 2002.0).abs() < 5.0, "{}", c.length_m());
        let p1 = c.progress(0.0, 0.0045, None);
        assert!((p1 - 500.0).abs() < 5.0, "outbound {p1}");
        let turn = c.progress(0.0, 0.0089, Some(p1));
        let back = c.progress(0.0, 0.0045, Some(turn));
        assert!((back - 1500.0).abs() < 10.0, "inbound {back}");
    }

    #[test]
    fn a_point_along_the_course_is_found_by_its_progress() {
        let c = out_and_back();
        let (lat, lon) = c.point_at(500.0);
        assert!(lat.abs() < 1e-9 && (lon - 0.0045).abs() < 1e-5, "({lat}, {lon})");
        assert!((c.progress(lat, lon, None) - 500.0).abs() < 1.0);
        let (_, lon) = c.point_at(1500.0);
        assert!((c.progress(0.0, lon, Some(1000.0)) - 1500.0).abs() < 10.0, "on the way back");
        assert_eq!(c.point_at(1e9), (0.00001, 0.0), "the end");
    }

    #[test]
    fn progress_never_goes_backwards() {
        let c = out_and_back();
        let p = c.progress(0.0, 0.0045, Some(600.0));
        assert_eq!(p, 600.0);
    }

    #[test]
    fn recorded_tracks_are_courses() {
        let garmin = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/garmin-activity.gpx");
        let c = Course::from_file("run", Path::new(garmin), &BTreeMap::new()).unwrap();
        assert!(c.lon_lat().len() > 100, "{}", c.lon_lat().len());
        let lines = "{\"who\":\"a\",\"lat\":0,\"lon\":0}\n{\"who\":\"b\",\"lat\":5,\"lon\":5}\n{\"who\":\"a\",\"lat\":0,\"lon\":0.01}\n";
        let only = BTreeMap::from([("who".to_string(), serde_json::json!("a"))]);
        let c = Course::from_json_lines("a", lines, &only).unwrap();
        assert_eq!(c.lon_lat(), vec![[0.0, 0.0], [0.01, 0.0]]);
        assert!(Course::from_json_lines("a", "{\"who\":\"a\"}", &only).unwrap_err().to_string().contains("line 1"));
    }

    #[test]
    fn geojson_feature_collections_are_read() {
        let text = r#"{"type":"FeatureCollection","features":[{"type":"Feature","properties":{},
            "geometry":{"type":"LineString","coordinates":[[151.2,-33.87],[151.21,-33.87]]}}]}"#;
        let c = Course::from_geojson("x", text).unwrap();
        assert_eq!(c.lon_lat().len(), 2);
        assert!(Course::from_geojson("x", r#"{"type":"Point","coordinates":[1,2]}"#).is_err());
    }
}
