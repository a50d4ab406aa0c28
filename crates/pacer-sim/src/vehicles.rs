//! Vehicles with MQTTX's Tesla schema (`mqttx simulate -sc tesla`), once per second on
//! `mqttx/simulate/tesla/{clientid}`: driving around a city, battery draining with distance.

use crate::devices::Device;

/// The fields of MQTTX's Tesla schema besides `location` (latitude, longitude).
pub const FIELDS: [&str; 13] = [
    "vin",
    "speed",
    "odometer",
    "soc",
    "elevation",
    "heading",
    "accuracy",
    "power",
    "shift_state",
    "range",
    "est_battery_range",
    "gps_as_of",
    "timestamp",
];

pub struct Vehicle {
    pub client_id: String,
    vin: String,
    lat: f64,
    lon: f64,
    heading: f64,
    /// km/h
    speed: f64,
    /// km
    odometer: f64,
    /// state of charge, %
    soc: f64,
    rng: fastrand::Rng,
}

impl Vehicle {
    /// Vehicle `index`, somewhere in the San Francisco Bay Area.
    pub fn new(index: u32, seed: u64) -> Vehicle {
        let mut rng = fastrand::Rng::with_seed(seed ^ (u64::from(index) + 1).wrapping_mul(0xA076_1D64_78BD_642F));
        let vin: String = (0..17).map(|_| b"ABCDEFGHJKLMNPRSTUVWXYZ0123456789"[rng.usize(..33)] as char).collect();
        Vehicle {
            client_id: format!("mqttx_{:08x}", rng.u32(..)),
            vin,
            lat: 37.3 + rng.f64() * 0.5,
            lon: -122.5 + rng.f64() * 0.6,
            heading: rng.f64() * 360.0,
            speed: rng.f64() * 80.0,
            odometer: 1000.0 + rng.f64() * 50_000.0,
            soc: 30.0 + rng.f64() * 70.0,
            rng,
        }
    }

    pub fn advance(&mut self, seconds: f64) {
        self.speed = (self.speed + (self.rng.f64() - 0.5) * 10.0 * seconds.sqrt()).clamp(0.0, 120.0);
        self.heading = (self.heading + (self.rng.f64() - 0.5) * 20.0).rem_euclid(360.0);
        let km = self.speed * seconds / 3600.0;
        let (north, east) = (km * self.heading.to_radians().cos(), km * self.heading.to_radians().sin());
        self.lat += north / 111.195;
        self.lon += east / (111.195 * self.lat.to_radians().cos());
        self.odometer += km;
        self.soc = (self.soc - km * 0.2).max(0.0);
    }

    pub fn reading(&self, now_ms: i64) -> serde_json::Value {
        let range = self.soc * 4.0;
        serde_json::json!({
            "vin": self.vin,
            "speed": self.speed.round(),
            "odometer": (self.odometer * 10.0).round() / 10.0,
            "soc": self.soc.round(),
            "elevation": 20,
            "heading": self.heading.round(),
            "accuracy": 5,
            "power": (self.speed * 0.3).round(),
            "shift_state": if self.speed > 0.5 { "D" } else { "P" },
            "range": range.round(),
            "est_battery_range": (range * 0.9).round(),
            "gps_as_of": now_ms / 1000,
            "location": { "latitude": self.lat, "longitude": self.lon },
            "timestamp": now_ms,
        })
    }
}

impl Device for Vehicle {
    fn client_id(&self) -> String {
        self.client_id.clone()
    }

    fn report(&mut self, seconds: f64, now_ms: i64) -> Option<(String, String)> {
        self.advance(seconds);
        Some((format!("mqttx/simulate/tesla/{}", self.client_id), self.reading(now_ms).to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vehicle_reports_the_tesla_schema_and_moves() {
        let mut v = Vehicle::new(0, 1);
        let start = (v.lat, v.lon, v.odometer);
        for _ in 0..60 {
            v.advance(1.0);
        }
        assert!(v.odometer >= start.2);
        let r = v.reading(1_700_000_000_000);
        for field in FIELDS {
            assert!(!r[field].is_null(), "{field} in {r}");
        }
        assert!(r["location"]["latitude"].is_f64() && r["location"]["longitude"].is_f64());
        assert_eq!(r["vin"].as_str().unwrap().len(), 17);
        assert_eq!(Vehicle::new(0, 1).client_id, Vehicle::new(0, 1).client_id, "the same seed, the same fleet");
    }
}
