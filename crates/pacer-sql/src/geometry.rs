//! The named places SQL functions refer to (courses; zones next) and the tracking settings
//! they share. Loaded from the configuration at start; queries resolve names when planned,
//! so a misspelt course is an error before the query runs.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::course::Course;

/// Fixes implying more than this (km/h) from the last accepted one are GPS jumps, unless
/// the configuration says otherwise.
pub const DEFAULT_MAX_SPEED_KMH: f64 = 300.0;

#[derive(Debug, Clone)]
pub struct Geometry {
    /// By lower-cased name.
    courses: BTreeMap<String, Arc<Course>>,
    pub max_speed_kmh: f64,
}

impl Default for Geometry {
    fn default() -> Self {
        Geometry { courses: BTreeMap::new(), max_speed_kmh: DEFAULT_MAX_SPEED_KMH }
    }
}

impl Geometry {
    pub fn add_course(&mut self, course: Course) {
        self.courses.insert(course.name.to_ascii_lowercase(), Arc::new(course));
    }

    pub fn course(&self, name: &str) -> Result<Arc<Course>, String> {
        self.courses.get(&name.to_ascii_lowercase()).cloned().ok_or_else(|| {
            let known: Vec<&str> = self.courses.values().map(|c| c.name.as_str()).collect();
            match known.as_slice() {
                [] => format!("no course named '{name}' (none is configured: add a [[course]])"),
                _ => format!("no course named '{name}' (configured: {})", known.join(", ")),
            }
        })
    }

    pub fn courses(&self) -> impl Iterator<Item = &Arc<Course>> {
        self.courses.values()
    }
}
