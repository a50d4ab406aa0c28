//! Zones (geofences): polygons, circles and corridors, and when a device counts as having
//! entered or left one. Debouncing keeps a device wobbling on the edge from firing an
//! event per fix: a change counts after `debounce_fixes` consecutive fixes on the new side
//! spanning at least `dwell_ms`.

use geo::{Closest, Contains, Distance, Haversine, HaversineClosestPoint, Line, LineString, MultiPolygon, Point};

#[derive(Debug, Clone)]
pub enum Area {
    /// Lon/lat polygons; containment is planar, fine at the size of a zone.
    Polygons(MultiPolygon),
    Circle {
        center: Point,
        radius_m: f64,
    },
    /// Within `half_width_m` of a line (a road, a river section).
    Corridor {
        line: LineString,
        half_width_m: f64,
    },
}

#[derive(Debug, Clone)]
pub struct Zone {
    pub name: String,
    pub area: Area,
    /// Consecutive fixes on the new side before a transition counts (at least 1).
    pub debounce_fixes: u32,
    /// And the time they must span, ms.
    pub dwell_ms: i64,
}

impl Zone {
    pub fn new(name: impl Into<String>, area: Area) -> Zone {
        Zone { name: name.into(), area, debounce_fixes: 1, dwell_ms: 0 }
    }

    pub fn circle(name: impl Into<String>, lat: f64, lon: f64, radius_m: f64) -> Zone {
        Zone::new(name, Area::Circle { center: Point::new(lon, lat), radius_m })
    }

    /// The zone as a GeoJSON Feature, for maps: a circle is its centre with `radius_m`, a
    /// corridor its line with `width_m`.
    pub fn to_geojson(&self) -> serde_json::Value {
        let (kind, geometry, extra) = match &self.area {
            Area::Circle { center, radius_m } => (
                "circle",
                serde_json::json!({"type": "Point", "coordinates": [center.x(), center.y()]}),
                ("radius_m", *radius_m),
            ),
            Area::Corridor { line, half_width_m } => {
                let coordinates: Vec<[f64; 2]> = line.points().map(|p| [p.x(), p.y()]).collect();
                (
                    "corridor",
                    serde_json::json!({"type": "LineString", "coordinates": coordinates}),
                    ("width_m", half_width_m * 2.0),
                )
            }
            Area::Polygons(polygons) => {
                let ring = |r: &LineString| r.points().map(|p| [p.x(), p.y()]).collect::<Vec<_>>();
                let coordinates: Vec<Vec<Vec<[f64; 2]>>> = polygons
                    .iter()
                    .map(|p| std::iter::once(ring(p.exterior())).chain(p.interiors().iter().map(ring)).collect())
                    .collect();
                ("polygon", serde_json::json!({"type": "MultiPolygon", "coordinates": coordinates}), ("", 0.0))
            }
        };
        let mut properties = serde_json::json!({"name": self.name, "kind": kind});
        if !extra.0.is_empty() {
            properties[extra.0] = serde_json::json!(extra.1);
        }
        serde_json::json!({"type": "Feature", "properties": properties, "geometry": geometry})
    }

    pub fn contains(&self, lat: f64, lon: f64) -> bool {
        let here = Point::new(lon, lat);
        match &self.area {
            Area::Polygons(p) => p.contains(&here),
            Area::Circle { center, radius_m } => Haversine.distance(*center, here) <= *radius_m,
            Area::Corridor { line, half_width_m } => line.lines().any(|segment: Line| {
                let closest = match segment.haversine_closest_point(&here) {
                    Closest::Intersection(p) | Closest::SinglePoint(p) => p,
                    Closest::Indeterminate => segment.start_point(),
                };
                Haversine.distance(closest, here) <= *half_width_m
            }),
        }
    }

    /// The zones of a GeoJSON document: every Polygon or MultiPolygon feature, and every
    /// LineString when `corridor_width_m` is given. Each is named by its `name` property;
    /// `name` names a document holding one zone.
    pub fn from_geojson(text: &str, name: Option<&str>, corridor_width_m: Option<f64>) -> anyhow::Result<Vec<Zone>> {
        let doc: geojson::GeoJson = text.parse().map_err(|e| anyhow::anyhow!("not GeoJSON: {e}"))?;
        let features: Vec<(Option<String>, geojson::Geometry)> = match doc {
            geojson::GeoJson::FeatureCollection(c) => c
                .features
                .into_iter()
                .filter_map(|f| {
                    let label = f.property("name").and_then(|n| n.as_str()).map(str::to_string);
                    Some((label, f.geometry?))
                })
                .collect(),
            geojson::GeoJson::Feature(f) => {
                let label = f.property("name").and_then(|n| n.as_str()).map(str::to_string);
                f.geometry.into_iter().map(|g| (label.clone(), g)).collect()
            }
            geojson::GeoJson::Geometry(g) => vec![(None, g)],
        };
        let mut zones = Vec::new();
        for (label, geometry) in features {
            let shape: geo::Geometry = (&geometry.value).try_into().map_err(|e| anyhow::anyhow!("{e}"))?;
            let area = match (shape, corridor_width_m) {
                (geo::Geometry::Polygon(p), _) => Area::Polygons(MultiPolygon(vec![p])),
                (geo::Geometry::MultiPolygon(p), _) => Area::Polygons(p),
                (geo::Geometry::LineString(line), Some(width)) => Area::Corridor { line, half_width_m: width / 2.0 },
                (geo::Geometry::LineString(_), None) => {
                    anyhow::bail!("a LineString is a corridor zone only with a width (width_m)")
                }
                _ => continue,
            };
            let label = match (label, name) {
                (_, Some(n)) => n.to_string(),
                (Some(l), None) => l,
                (None, None) => anyhow::bail!("a zone has no \"name\" property; name it, or give the zone a name"),
            };
            zones.push(Zone::new(label, area));
        }
        anyhow::ensure!(!zones.is_empty(), "no Polygon, MultiPolygon or (with a width) LineString in it");
        if let Some(n) = name {
            anyhow::ensure!(zones.len() == 1, "holds {} zones, so they cannot all be called {n:?}", zones.len());
        }
        Ok(zones)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn circles_polygons_and_corridors_contain_what_they_should() {
        let circle = Zone::new("c", Area::Circle { center: Point::new(8.52, 47.37), radius_m: 100.0 });
        assert!(circle.contains(47.3705, 8.52), "55 m north");
        assert!(!circle.contains(47.3712, 8.52), "133 m north");

        let square = r#"{"type":"FeatureCollection","features":[
            {"type":"Feature","properties":{"name":"yard"},"geometry":{"type":"Polygon",
             "coordinates":[[[0,0],[0.001,0],[0.001,0.001],[0,0.001],[0,0]]]}},
            {"type":"Feature","properties":{"name":"road"},"geometry":{"type":"LineString",
             "coordinates":[[0,0.01],[0.01,0.01]]}}]}"#;
        let zones = Zone::from_geojson(square, None, Some(20.0)).unwrap();
        assert_eq!(zones.iter().map(|z| z.name.as_str()).collect::<Vec<_>>(), ["yard", "road"]);
        assert!(zones[0].contains(0.0005, 0.0005) && !zones[0].contains(0.0015, 0.0005));
        assert!(zones[1].contains(0.01008, 0.005), "9 m off the road");
        assert!(!zones[1].contains(0.0102, 0.005), "22 m off the road");
        assert!(Zone::from_geojson(square, None, None).unwrap_err().to_string().contains("width"));
        assert!(Zone::from_geojson(square, Some("x"), Some(1.0)).unwrap_err().to_string().contains("2 zones"));
        // Back out as GeoJSON for the map.
        let yard = zones[0].to_geojson();
        assert_eq!(
            (yard["properties"]["kind"].as_str(), yard["geometry"]["type"].as_str()),
            (Some("polygon"), Some("MultiPolygon"))
        );
        assert_eq!(zones[1].to_geojson()["properties"]["width_m"], 20.0);
        assert_eq!(circle.to_geojson()["properties"]["radius_m"], 100.0);
        assert_eq!(circle.to_geojson()["geometry"]["coordinates"], serde_json::json!([8.52, 47.37]));
    }
}
