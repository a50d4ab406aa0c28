//! Buses on the three London lines (examples/buses): each moves along its line at bus
//! speed, interpolated between the line's points, turning back at the ends; fields
//! bus_line, key, timestamp (ms), latitude, longitude on `buses/{line}/{key}`.

use std::sync::Arc;

use pacer_sql::Course;

use crate::devices::Device;

/// The lines: (name, GeoJSON).
pub const LINES: [(&str, &str); 3] = [
    ("1", include_str!("../../../examples/buses/london-bus-1.geojson")),
    ("2", include_str!("../../../examples/buses/london-bus-2.geojson")),
    ("3", include_str!("../../../examples/buses/london-bus-3.geojson")),
];

pub fn lines() -> anyhow::Result<Vec<Arc<Course>>> {
    LINES.iter().map(|(name, text)| Course::from_geojson(format!("line-{name}"), text).map(Arc::new)).collect()
}

pub struct Bus {
    pub line: String,
    pub key: String,
    route: Arc<Course>,
    /// Metres along the line, and which way it goes.
    pub distance: f64,
    forward: bool,
    /// m/s
    speed: f64,
    rng: fastrand::Rng,
}

impl Bus {
    /// Bus `index` of the fleet: on line index % 3, somewhere along it.
    pub fn new(index: u32, seed: u64, routes: &[Arc<Course>]) -> Bus {
        let mut rng = fastrand::Rng::with_seed(seed ^ (u64::from(index) + 1).wrapping_mul(0xE703_7ED1_A0B4_28DB));
        let route = routes[index as usize % routes.len()].clone();
        let line = LINES[index as usize % LINES.len()].0.to_string();
        Bus {
            key: format!("bus-{line}-{index}"),
            line,
            distance: rng.f64() * route.length_m(),
            forward: rng.bool(),
            speed: 4.0 + rng.f64() * 6.0,
            route,
            rng,
        }
    }

    pub fn advance(&mut self, seconds: f64) {
        self.speed = (self.speed + (self.rng.f64() - 0.5) * 2.0).clamp(0.0, 12.0);
        let step = self.speed * seconds;
        let length = self.route.length_m();
        self.distance += if self.forward { step } else { -step };
        if self.distance >= length {
            self.distance = 2.0 * length - self.distance;
            self.forward = false;
        } else if self.distance <= 0.0 {
            self.distance = -self.distance;
            self.forward = true;
        }
        self.distance = self.distance.clamp(0.0, length);
    }

    pub fn position(&self) -> (f64, f64) {
        self.route.point_at(self.distance)
    }
}

impl Device for Bus {
    fn client_id(&self) -> String {
        format!("pacer-sim-{}", self.key)
    }

    fn report(&mut self, seconds: f64, now_ms: i64) -> Option<(String, String)> {
        self.advance(seconds);
        let (latitude, longitude) = self.position();
        let payload = serde_json::json!({"bus_line": self.line, "key": self.key, "timestamp": now_ms,
                                         "latitude": latitude, "longitude": longitude});
        Some((format!("buses/{}/{}", self.line, self.key), payload.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buses_glide_along_their_line_and_turn_back_at_the_ends() {
        let routes = lines().unwrap();
        let mut bus = Bus::new(4, 1, &routes);
        assert_eq!(bus.line, "2");
        let mut previous = bus.position();
        let mut turned = false;
        let mut was_forward = bus.forward;
        for _ in 0..2000 {
            bus.advance(1.0);
            let here = bus.position();
            let moved = crate::haversine_m(previous, here);
            assert!(moved <= 12.5, "at most 12 m/s, not vertex to vertex: {moved} m");
            turned |= bus.forward != was_forward;
            was_forward = bus.forward;
            previous = here;
        }
        assert!(turned, "it reached an end and came back");
    }
}
