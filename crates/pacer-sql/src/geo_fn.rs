//! Geographic scalar functions with ksqlDB's semantics.

use geo::{Distance, HaversineMeasure, Point};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DistanceUnit {
    Km,
    Mi,
}

impl DistanceUnit {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "km" | "kilometers" | "kilometres" => Some(DistanceUnit::Km),
            "mi" | "miles" => Some(DistanceUnit::Mi),
            _ => None,
        }
    }

    /// Earth radius ksqlDB uses for this unit.
    fn radius(self) -> f64 {
        match self {
            DistanceUnit::Km => 6371.0,
            DistanceUnit::Mi => 3959.0,
        }
    }
}

/// `GEO_DISTANCE(lat1, lon1, lat2, lon2, unit)`: great-circle (haversine) distance.
pub fn geo_distance(lat1: f64, lon1: f64, lat2: f64, lon2: f64, unit: DistanceUnit) -> f64 {
    HaversineMeasure::new(unit.radius()).distance(Point::new(lon1, lat1), Point::new(lon2, lat2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sydney_opera_house_to_harbour_bridge() {
        // Opera House to the south pylon of the Harbour Bridge, checked by hand: 0.6504 km.
        let d = geo_distance(-33.8568, 151.2153, -33.8523, 151.2108, DistanceUnit::Km);
        assert!((d - 0.6504).abs() < 0.0005, "{d}");
        let mi = geo_distance(-33.8568, 151.2153, -33.8523, 151.2108, DistanceUnit::Mi);
        assert!((d / mi - 6371.0 / 3959.0).abs() < 1e-9);
        assert_eq!(DistanceUnit::parse("KM"), Some(DistanceUnit::Km));
    }
}
