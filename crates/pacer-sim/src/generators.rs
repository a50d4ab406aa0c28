//! Emergency generators (the InfluxDB seed): each on `emergency_generators/{id}` with
//! generatorID, lat, lon, temperature, fuel, power and load. Fuel drains with load; a
//! generator that runs low is refuelled a while later.

use crate::devices::Device;

/// Fuel units per second at full load.
const BURN_PER_SECOND: f64 = 2.0;
/// Below this a refuel truck is on its way…
const LOW_FUEL: f64 = 150.0;
/// …and tops the tank up to this.
const FULL_TANK: f64 = 1500.0;

pub struct Generator {
    pub id: String,
    lat: f64,
    lon: f64,
    pub fuel: f64,
    load: f64,
    /// Seconds until the refuel truck arrives, once called.
    truck_in: Option<f64>,
    rng: fastrand::Rng,
}

impl Generator {
    /// Generator `index` of a fleet, spread over the continental US.
    pub fn new(index: u32, seed: u64) -> Generator {
        let mut rng = fastrand::Rng::with_seed(seed ^ (u64::from(index) + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
        Generator {
            id: format!("gen-{index:03}"),
            lat: 30.0 + rng.f64() * 17.0,
            lon: -120.0 + rng.f64() * 45.0,
            // Some start low: their alarm is up from the first reading.
            fuel: 200.0 + rng.f64() * 1300.0,
            load: 0.3 + rng.f64() * 0.6,
            truck_in: None,
            rng,
        }
    }

    pub fn advance(&mut self, seconds: f64) {
        self.load = (self.load + (self.rng.f64() - 0.5) * 0.1 * seconds.sqrt()).clamp(0.1, 1.0);
        self.fuel = (self.fuel - BURN_PER_SECOND * self.load * seconds).max(0.0);
        match self.truck_in {
            None if self.fuel < LOW_FUEL => self.truck_in = Some(30.0 + self.rng.f64() * 60.0),
            Some(left) if left <= seconds => {
                self.fuel = FULL_TANK;
                self.truck_in = None;
            }
            Some(left) => self.truck_in = Some(left - seconds),
            None => {}
        }
    }

    /// A reading stamped with the time it was taken (ms since the epoch).
    pub fn reading(&mut self, now_ms: i64) -> serde_json::Value {
        let power = if self.fuel > 0.0 { (self.load * 250.0).round() } else { 0.0 };
        let temperature = 40.0 + self.load * 50.0 + (self.rng.f64() - 0.5) * 2.0;
        serde_json::json!({
            "generatorID": self.id, "lat": self.lat, "lon": self.lon,
            "temperature": (temperature * 10.0).round() / 10.0, "fuel": self.fuel.round(),
            "power": power, "load": (self.load * 100.0).round() / 100.0, "timestamp": now_ms,
        })
    }
}

impl Device for Generator {
    fn client_id(&self) -> String {
        format!("pacer-sim-{}", self.id)
    }

    fn report(&mut self, seconds: f64, now_ms: i64) -> Option<(String, String)> {
        self.advance(seconds);
        Some((format!("emergency_generators/{}", self.id), self.reading(now_ms).to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuel_drains_with_load_and_low_tanks_get_refuelled() {
        let mut g = Generator::new(1, 7);
        g.fuel = 300.0;
        let mut lowest = g.fuel;
        let mut refuelled = false;
        for _ in 0..600 {
            let before = g.fuel;
            g.advance(1.0);
            lowest = lowest.min(g.fuel);
            refuelled |= g.fuel > before;
        }
        assert!(lowest < LOW_FUEL, "it ran low: {lowest}");
        assert!(refuelled, "and was refuelled");
        let r = g.reading(1_795_000_000_000);
        for field in ["generatorID", "lat", "lon", "temperature", "fuel", "power", "load"] {
            assert!(!r[field].is_null(), "{field} in {r}");
        }
        assert_eq!(r["timestamp"], 1_795_000_000_000i64);
    }
}
