//! The named places SQL functions refer to (courses and zones) and the tracking settings
//! they share. Loaded from the configuration at start; queries resolve names when planned,
//! so a misspelt course is an error before the query runs.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::course::Course;
use crate::zone::Zone;

/// Fixes implying more than this (km/h) from the last accepted one are GPS jumps, unless
/// the configuration says otherwise.
pub const DEFAULT_MAX_SPEED_KMH: f64 = 300.0;

#[derive(Debug, Clone)]
pub struct Geometry {
    /// By lower-cased name.
    courses: BTreeMap<String, Arc<Course>>,
    zones: BTreeMap<String, Arc<Zone>>,
    pub max_speed_kmh: f64,
}

impl Default for Geometry {
    fn default() -> Self {
        Geometry { courses: BTreeMap::new(), zones: BTreeMap::new(), max_speed_kmh: DEFAULT_MAX_SPEED_KMH }
    }
}

impl Geometry {
    pub fn add_course(&mut self, course: Course) {
        self.courses.insert(course.name.to_ascii_lowercase(), Arc::new(course));
    }

    pub fn add_zone(&mut self, zone: Zone) {
        self.zones.insert(zone.name.to_ascii_lowercase(), Arc::new(zone));
    }

    pub fn course(&self, name: &str) -> Result<Arc<Course>, String> {
        find(&self.courses, name, "course", |c| &c.name)
    }

    pub fn zone(&self, name: &str) -> Result<Arc<Zone>, String> {
        find(&self.zones, name, "zone", |z| &z.name)
    }

    pub fn courses(&self) -> impl Iterator<Item = &Arc<Course>> {
        self.courses.values()
    }

    pub fn zones(&self) -> impl Iterator<Item = &Arc<Zone>> {
        self.zones.values()
    }
}

fn find<T>(
    places: &BTreeMap<String, Arc<T>>,
    name: &str,
    what: &str,
    name_of: fn(&T) -> &String,
) -> Result<Arc<T>, String> {
    places.get(&name.to_ascii_lowercase()).cloned().ok_or_else(|| {
        let known: Vec<&str> = places.values().map(|p| name_of(p).as_str()).collect();
        match known.as_slice() {
            [] => format!("no {what} named '{name}' (none is configured: add a [[{what}]])"),
            _ => format!("no {what} named '{name}' (configured: {})", known.join(", ")),
        }
    })
}
