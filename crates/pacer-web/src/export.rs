//! Query results as files other tools open: CSV (spreadsheets, pandas), Parquet (DuckDB,
//! Spark, pandas), GeoJSON (QGIS, geojson.io, Leaflet) and GPX (Strava, Garmin Connect,
//! OsmAnd). `POST /api/v1/sql` with `"format"`, `pacer sql --format`, and the Recorder API's
//! `format=` write them here.
//!
//! Positions are found by column name, as people name them: `lat`/`latitude`,
//! `lon`/`lng`/`longitude`; a time column (`ts`, `time`, `timestamp`, `ROWTIME`, `at`,
//! milliseconds) dates GPX points; `alt` gives their elevation; a device column (`who`,
//! `device`, `deviceId`, `tid`, `name`, `id`) makes one GPX track per device.

use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow_schema::{DataType, Field, Schema};
use pacer_history::columns::Cells;
use serde_json::{json, Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
    Parquet,
    GeoJson,
    Gpx,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "json" => Ok(Format::Json),
            "csv" => Ok(Format::Csv),
            "parquet" => Ok(Format::Parquet),
            "geojson" => Ok(Format::GeoJson),
            "gpx" => Ok(Format::Gpx),
            other => Err(format!("format {other:?}: expected json, csv, parquet, geojson or gpx")),
        }
    }
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Parquet => "application/vnd.apache.parquet",
            Format::GeoJson => "application/geo+json",
            Format::Gpx => "application/gpx+xml",
        }
    }

    /// The rows in this format; an error says what the rows lack for it.
    pub fn write(self, columns: &[String], rows: &[Vec<Value>]) -> Result<Vec<u8>, String> {
        Ok(match self {
            Format::Json => json!({ "columns": columns, "rows": rows }).to_string().into_bytes(),
            Format::Csv => csv(columns, rows).into_bytes(),
            Format::Parquet => parquet(columns, rows)?,
            Format::GeoJson => geojson(columns, rows)?.to_string().into_bytes(),
            Format::Gpx => gpx(columns, rows)?.into_bytes(),
        })
    }
}

/// A header line, then a line per row; cells quoted where they must be.
pub fn csv(columns: &[String], rows: &[Vec<Value>]) -> String {
    let cell = |v: &Value| match v {
        Value::Null => String::new(),
        Value::String(s) if s.contains([',', '"', '\n', '\r']) => format!("\"{}\"", s.replace('"', "\"\"")),
        Value::String(s) => s.clone(),
        other => {
            let text = other.to_string();
            if text.contains([',', '"']) {
                format!("\"{}\"", text.replace('"', "\"\""))
            } else {
                text
            }
        }
    };
    let mut out = columns.iter().map(|c| cell(&Value::from(c.as_str()))).collect::<Vec<_>>().join(",");
    out.push('\n');
    for row in rows {
        out.push_str(&row.iter().map(cell).collect::<Vec<_>>().join(","));
        out.push('\n');
    }
    out
}

/// Names of columns that hold times (ms since the epoch): Parquet types them as timestamps.
const TIME_COLUMNS: &[&str] =
    &["ts", "time", "timestamp", "rowtime", "at", "window_start", "window_end", "windowstart", "windowend"];

/// One Parquet file, a column per result column, typed as history segments type them
/// (integers, doubles, booleans, text, JSON text for the rest), integers named like times
/// as timestamps.
pub fn parquet(columns: &[String], rows: &[Vec<Value>]) -> Result<Vec<u8>, String> {
    let mut fields = Vec::with_capacity(columns.len());
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(columns.len());
    for (i, name) in columns.iter().enumerate() {
        let mut cells = Cells::Null(0);
        for row in rows {
            cells.push(row.get(i));
        }
        let (data_type, array): (DataType, ArrayRef) = match cells {
            Cells::Int(values) if TIME_COLUMNS.iter().any(|t| name.eq_ignore_ascii_case(t)) => {
                let array = TimestampMillisecondArray::from(values).with_timezone("UTC");
                (pacer_history::columns::timestamp_type(), Arc::new(array))
            }
            // A column of nulls only: text, so the file still has it.
            Cells::Null(n) => (DataType::Utf8, Arc::new(StringArray::from(vec![None::<&str>; n]))),
            cells => cells.into_array().expect("a column with values"),
        };
        fields.push(Field::new(name, data_type, true));
        arrays.push(array);
    }
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), arrays).map_err(|e| format!("Parquet: {e}"))?;
    let mut out = Vec::new();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(&mut out, schema, None).map_err(|e| format!("Parquet: {e}"))?;
    writer.write(&batch).map_err(|e| format!("Parquet: {e}"))?;
    writer.close().map_err(|e| format!("Parquet: {e}"))?;
    Ok(out)
}

/// The index of the first column named one of `names` (any case).
fn column(columns: &[String], names: &[&str]) -> Option<usize> {
    names.iter().find_map(|n| columns.iter().position(|c| c.eq_ignore_ascii_case(n)))
}

fn position_columns(columns: &[String], what: &str) -> Result<(usize, usize), String> {
    match (column(columns, &["lat", "latitude"]), column(columns, &["lon", "lng", "long", "longitude"])) {
        (Some(lat), Some(lon)) => Ok((lat, lon)),
        _ => Err(format!("{what} needs a lat and a lon column; the result has {}", columns.join(", "))),
    }
}

/// A point Feature per row with a position, its other columns as properties.
pub fn geojson(columns: &[String], rows: &[Vec<Value>]) -> Result<Value, String> {
    let (lat, lon) = position_columns(columns, "GeoJSON")?;
    let features: Vec<Value> = rows
        .iter()
        .filter_map(|row| {
            let (y, x) = (row.get(lat)?.as_f64()?, row.get(lon)?.as_f64()?);
            let properties: Map<String, Value> = columns
                .iter()
                .zip(row)
                .enumerate()
                .filter(|(i, _)| *i != lat && *i != lon)
                .map(|(_, (c, v))| (c.clone(), v.clone()))
                .collect();
            Some(json!({"type": "Feature", "geometry": {"type": "Point", "coordinates": [x, y]}, "properties": properties}))
        })
        .collect();
    Ok(json!({"type": "FeatureCollection", "features": features}))
}

/// A track per device (in the order they first appear), its points in row order.
pub fn gpx(columns: &[String], rows: &[Vec<Value>]) -> Result<String, String> {
    let (lat, lon) = position_columns(columns, "GPX")?;
    let time = column(columns, &["ts", "time", "timestamp", "rowtime", "at"]);
    let ele = column(columns, &["alt", "altitude", "ele", "elevation"]);
    let device = column(columns, &["who", "device", "deviceid", "tid", "name", "id"]);
    let mut tracks: Vec<(Option<String>, String)> = Vec::new();
    for row in rows {
        let (Some(y), Some(x)) = (row.get(lat).and_then(Value::as_f64), row.get(lon).and_then(Value::as_f64)) else {
            continue;
        };
        let name = device.and_then(|d| row.get(d)).filter(|v| !v.is_null()).map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        let mut point = format!("    <trkpt lat='{y:.6}' lon='{x:.6}'>\n");
        if let Some(e) = ele.and_then(|i| row.get(i)).and_then(Value::as_f64) {
            point.push_str(&format!("\t<ele>{e:.2}</ele>\n"));
        }
        if let Some(t) = time.and_then(|i| row.get(i)).and_then(Value::as_i64) {
            point.push_str(&format!("\t<time>{}</time>\n", iso_time(t)));
        }
        point.push_str("    </trkpt>\n");
        match tracks.iter_mut().find(|(n, _)| *n == name) {
            Some((_, points)) => points.push_str(&point),
            None => tracks.push((name, point)),
        }
    }
    let mut out = String::from(
        "<?xml version='1.0' encoding='UTF-8' standalone='no' ?>\n<gpx version='1.1' creator='Pacer' \
         xmlns='http://www.topografix.com/GPX/1/1'>\n",
    );
    for (name, points) in tracks {
        out.push_str(" <trk>\n");
        if let Some(name) = name {
            out.push_str(&format!("  <name>{}</name>\n", escape_xml(&name)));
        }
        out.push_str("  <trkseg>\n");
        out.push_str(&points);
        out.push_str("  </trkseg>\n </trk>\n");
    }
    out.push_str("</gpx>\n");
    Ok(out)
}

/// RFC 3339 in UTC, with milliseconds only when there are some.
fn iso_time(ms: i64) -> String {
    let Some(t) = chrono::DateTime::from_timestamp_millis(ms) else { return ms.to_string() };
    if ms % 1000 == 0 {
        t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    } else {
        t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
    }
}

fn escape_xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('\'', "&apos;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Vec<String>, Vec<Vec<Value>>) {
        let columns = ["who", "ts", "lat", "lon", "alt", "note"].map(String::from).to_vec();
        let rows = vec![
            vec![json!("ann"), json!(1_000), json!(47.5), json!(8.5), json!(410), json!("gate, north")],
            vec![json!("bob"), json!(1_500), json!(47.6), json!(8.6), Value::Null, json!("say \"hi\"")],
            vec![json!("ann"), json!(2_000), json!(47.7), json!(8.7), json!(412.5), Value::Null],
        ];
        (columns, rows)
    }

    #[test]
    fn csv_quotes_what_needs_it() {
        let (columns, rows) = sample();
        assert_eq!(
            csv(&columns, &rows),
            "who,ts,lat,lon,alt,note\nann,1000,47.5,8.5,410,\"gate, north\"\nbob,1500,47.6,8.6,,\"say \"\"hi\"\"\"\n\
             ann,2000,47.7,8.7,412.5,\n"
        );
    }

    #[test]
    fn geojson_has_a_point_per_row_and_the_rest_as_properties() {
        let (columns, rows) = sample();
        let g = geojson(&columns, &rows).unwrap();
        assert_eq!(g["features"].as_array().unwrap().len(), 3);
        assert_eq!(g["features"][1]["geometry"]["coordinates"], json!([8.6, 47.6]));
        assert_eq!(
            g["features"][1]["properties"],
            json!({"who": "bob", "ts": 1500, "alt": null, "note": "say \"hi\""})
        );
        let e = geojson(&["who".into()], &[]).unwrap_err();
        assert!(e.contains("needs a lat and a lon column; the result has who"), "{e}");
    }

    #[test]
    fn gpx_makes_a_track_per_device() {
        let (columns, rows) = sample();
        let g = gpx(&columns, &rows).unwrap();
        let ann = g.find("<name>ann</name>").unwrap();
        let bob = g.find("<name>bob</name>").unwrap();
        assert!(ann < bob, "{g}");
        let second_of_ann = g.find("lat='47.700000' lon='8.700000'").unwrap();
        assert!(ann < second_of_ann && second_of_ann < bob, "ann's points together: {g}");
        assert!(g.contains("<ele>410.00</ele>") && g.contains("<time>1970-01-01T00:00:01.500Z</time>"), "{g}");
        assert!(g.contains("<time>1970-01-01T00:00:02Z</time>"), "{g}");
    }
}
