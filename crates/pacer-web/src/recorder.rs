//! The OwnTracks Recorder's API over the `locations` stream, so the Recorder's own web
//! pages (last positions, live map, track map) and scripts work against Pacer:
//! `/api/0/list`, `/api/0/last`, `/api/0/locations` (json, csv, geojson, linestring, gpx)
//! and the `/ws/last` WebSocket. A device is a key `user/device` (OsmAnd devices are
//! `osmand/{id}`). Objects carry what the Recorder adds: `topic`, `username`, `device`,
//! `isotst` and `disptst` (UTC). Each caller sees only the devices whose records it may
//! read (its own, with an ACL like `pattern read owntracks/%u/#`).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use pacer_core::{header as record_header, now_ms, Record};
use pacer_log::{Log, StartAt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::access::Caller;
use crate::records::RangeReader;
use crate::WebState;

/// Where locations are, and where OwnTracks events (transitions, waypoints) are.
const LOCATIONS: &str = "locations";
const EVENTS: &str = "owntracks";
/// `/api/0/locations` without `from`: the last six hours, as the Recorder does.
const DEFAULT_HISTORY_MS: i64 = 6 * 3600 * 1000;
const MAX_LOCATIONS: usize = 1_000_000;
/// Bytes of stored locations one answer reads at most (it sorts them, so it holds them all).
const MAX_LOCATION_BYTES: usize = 64 << 20;

/// The last location of every device, kept by following the streams, and the live feed
/// `/ws/last` pushes.
pub struct LastLocations {
    last: RwLock<BTreeMap<String, Arc<Seen>>>,
    live: broadcast::Sender<Arc<Seen>>,
}

/// A record as the Recorder shows it, with what decides who may see it.
struct Seen {
    stream: &'static str,
    record: Record,
    object: Value,
}

impl Seen {
    /// Whether a caller whose filter is `keep` (None: everything) may see it.
    fn kept(&self, keep: &Option<pacer_log::RecordFilter>) -> bool {
        keep.as_ref().is_none_or(|keep| keep(self.stream, &self.record))
    }
}

impl LastLocations {
    /// Starts following the streams (from their beginning, then live).
    pub fn follow(log: Arc<dyn Log>) -> Arc<Self> {
        let (live, _) = broadcast::channel(1024);
        let this = Arc::new(LastLocations { last: RwLock::new(BTreeMap::new()), live });
        for stream in [LOCATIONS, EVENTS] {
            let (this, log) = (this.clone(), log.clone());
            tokio::spawn(async move {
                if let Err(e) = this.run(log.as_ref(), stream).await {
                    tracing::error!(stream, error = %e, "the OwnTracks Recorder API stopped following its stream");
                }
            });
        }
        this
    }

    async fn run(&self, log: &dyn Log, stream: &'static str) -> Result<(), pacer_log::LogError> {
        let mut reader = log.reader(stream, StartAt::Beginning)?;
        loop {
            for record in reader.next_batch().await? {
                let Some(object) = enriched(&record) else { continue };
                let ty = object["_type"].as_str().unwrap_or_default().to_string();
                let key = key_of(&record);
                let seen = Arc::new(Seen { stream, record, object });
                if ty == "location" {
                    let newer = self
                        .last
                        .read()
                        .unwrap()
                        .get(&key)
                        .is_none_or(|old| old.object["tst"].as_i64() <= seen.object["tst"].as_i64());
                    if newer {
                        self.last.write().unwrap().insert(key, seen.clone());
                    }
                }
                if matches!(ty.as_str(), "location" | "transition" | "waypoint") {
                    let _ = self.live.send(seen);
                }
            }
        }
    }
}

fn key_of(record: &Record) -> String {
    record.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default()
}

/// (user, device) of a key: `jane/phone`; a key without a slash is both.
fn user_device(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or((key, key))
}

/// The stored object with the fields the Recorder adds.
fn enriched(record: &Record) -> Option<Value> {
    let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(&record.value) else { return None };
    let key = key_of(record);
    let (user, device) = user_device(&key);
    let topic = record
        .header(record_header::TOPIC)
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .unwrap_or_else(|| format!("owntracks/{key}"));
    object.entry("topic").or_insert(json!(topic));
    object.entry("username").or_insert(json!(user));
    object.entry("device").or_insert(json!(device));
    if let Some(tst) = object.get("tst").and_then(Value::as_i64) {
        if let Some(t) = DateTime::<Utc>::from_timestamp(tst, 0) {
            object.entry("isotst").or_insert(json!(t.format("%Y-%m-%dT%H:%M:%SZ").to_string()));
            object.entry("disptst").or_insert(json!(t.format("%Y-%m-%d %H:%M:%S").to_string()));
        }
    }
    Some(Value::Object(object))
}

/// `user`, `device`, `from`, `to`, `limit`, `format`, `fields`; the `X-Limit-*` headers win.
#[derive(Debug, Default, Deserialize)]
pub struct Params {
    user: Option<String>,
    device: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<usize>,
    format: Option<String>,
    fields: Option<String>,
}

impl Params {
    fn with_headers(mut self, headers: &HeaderMap) -> Params {
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        for (slot, name) in [
            (&mut self.user, "x-limit-user"),
            (&mut self.device, "x-limit-device"),
            (&mut self.from, "x-limit-from"),
            (&mut self.to, "x-limit-to"),
        ] {
            if let Some(v) = get(name) {
                *slot = Some(v);
            }
        }
        self
    }

    /// Keeps only the `fields` asked for, in that order.
    fn select(&self, object: Value) -> Value {
        let (Some(fields), Value::Object(map)) = (&self.fields, &object) else { return object };
        let wanted = fields.split(',').map(str::trim);
        Value::Object(wanted.filter_map(|k| Some((k.to_string(), map.get(k)?.clone()))).collect())
    }
}

fn recorder_json(body: Value) -> Response {
    Json(body).into_response()
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, message.to_string()).into_response()
}

/// `/api/0/list`: users; a user's devices with `user`.
pub async fn list(
    State(state): State<Arc<WebState>>,
    Extension(Caller(who)): Extension<Caller>,
    Query(p): Query<Params>,
    headers: HeaderMap,
) -> Response {
    let p = p.with_headers(&headers);
    let last = state.recorder.last.read().unwrap();
    let keep = state.access.auth.record_filter(&who);
    let keys = last.iter().filter(|(_, seen)| seen.kept(&keep)).map(|(k, _)| k);
    let mut results: Vec<&str> = match &p.user {
        None => keys.map(|k| user_device(k).0).collect(),
        Some(user) => keys.map(|k| user_device(k)).filter(|(u, _)| u == user).map(|(_, d)| d).collect(),
    };
    results.dedup();
    recorder_json(json!({ "results": results }))
}

/// `/api/0/last`: the last location of every device (of `user`, of `user` and `device`).
pub async fn last(
    State(state): State<Arc<WebState>>,
    Extension(Caller(who)): Extension<Caller>,
    Query(p): Query<Params>,
    headers: HeaderMap,
) -> Response {
    let p = p.with_headers(&headers);
    let keep = state.access.auth.record_filter(&who);
    let last = state.recorder.last.read().unwrap();
    let objects: Vec<Value> = last
        .iter()
        .filter(|(k, _)| {
            let (u, d) = user_device(k);
            p.user.as_deref().is_none_or(|user| user == u) && p.device.as_deref().is_none_or(|device| device == d)
        })
        .filter(|(_, seen)| seen.kept(&keep))
        .map(|(_, seen)| p.select(seen.object.clone()))
        .collect();
    recorder_json(Value::Array(objects))
}

/// `/api/0/locations`: one device's locations between `from` and `to` (default: the last
/// six hours), oldest first; with `limit`, the newest `limit`, newest first.
pub async fn locations(
    State(state): State<Arc<WebState>>,
    Extension(Caller(who)): Extension<Caller>,
    Query(p): Query<Params>,
    headers: HeaderMap,
) -> Response {
    let p = p.with_headers(&headers);
    let (Some(user), Some(device)) = (&p.user, &p.device) else {
        return refuse(StatusCode::RANGE_NOT_SATISFIABLE, "user and device are required");
    };
    let now = now_ms();
    let bound = |text: &Option<String>, default: i64| text.as_deref().map_or(Some(default), recorder_time);
    let (Some(from), Some(to)) = (bound(&p.from, now - DEFAULT_HISTORY_MS), bound(&p.to, now)) else {
        return refuse(StatusCode::RANGE_NOT_SATISFIABLE, "impossible date/time ranges");
    };
    if from > to {
        return refuse(StatusCode::RANGE_NOT_SATISFIABLE, "impossible date/time ranges");
    }
    let key = format!("{user}/{device}");
    let filter = state.access.auth.record_filter(&who);
    let keep = |r: &Record| filter.as_ref().is_none_or(|keep| keep(LOCATIONS, r));
    let mut range =
        match RangeReader::open(state.log.as_ref(), LOCATIONS, Some(from), Some(to), Some(&key), MAX_LOCATIONS) {
            Ok(range) => range,
            Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        };
    let (mut records, mut bytes) = (Vec::new(), 0);
    loop {
        match range.next(keep).await {
            Ok(Some(batch)) => {
                bytes += batch.iter().map(|r| r.value.len()).sum::<usize>();
                if bytes > MAX_LOCATION_BYTES {
                    let too_many =
                        format!("more than {} MiB of locations: narrow from and to", MAX_LOCATION_BYTES >> 20);
                    return refuse(StatusCode::PAYLOAD_TOO_LARGE, &too_many);
                }
                records.extend(batch);
            }
            Ok(None) => break,
            Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }
    let mut data: Vec<Value> = records.iter().filter_map(enriched).filter(|v| v["_type"] == "location").collect();
    data.sort_by_key(|v| v["tst"].as_i64());
    if let Some(limit) = p.limit {
        data.reverse();
        data.truncate(limit);
    }
    let data: Vec<Value> = data.into_iter().map(|v| p.select(v)).collect();
    match p.format.as_deref().unwrap_or("json") {
        "json" => recorder_json(json!({ "count": data.len(), "data": data, "status": 200 })),
        "geojson" => recorder_json(geojson(&data)),
        "linestring" => {
            let mut sorted = data.clone();
            sorted.sort_by_key(|v| v["tst"].as_i64());
            let coordinates: Vec<Value> = sorted.iter().map(|v| json!([v["lon"], v["lat"]])).collect();
            recorder_json(json!({"type": "Feature", "properties": {},
                "geometry": {"type": "LineString", "coordinates": coordinates}}))
        }
        "csv" => ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], csv(&data)).into_response(),
        "gpx" => ([(header::CONTENT_TYPE, "application/gpx+xml")], gpx(&data)).into_response(),
        _ => refuse(StatusCode::BAD_REQUEST, "unrecognized format"),
    }
}

/// The Recorder's date forms, UTC: `2024-05-01T12:30:00` (or `…T12:30`, `…T12`),
/// `2024-05-01`, `2024-05`, with anything after them ignored.
fn recorder_time(text: &str) -> Option<i64> {
    let text = text.trim();
    for (pattern, len) in [("%Y-%m-%dT%H:%M:%S", 19), ("%Y-%m-%dT%H:%M", 16), ("%Y-%m-%dT%H", 13)] {
        let head = text.get(..len).map(|h| h.replace('t', "T"));
        if let Some(t) = head.and_then(|h| NaiveDateTime::parse_from_str(&h, pattern).ok()) {
            return Some(t.and_utc().timestamp_millis());
        }
    }
    let day = text.get(..10).and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok());
    let month = || text.get(..7).and_then(|m| NaiveDate::parse_from_str(&format!("{m}-01"), "%Y-%m-%d").ok());
    day.or_else(month).map(|d| d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc().timestamp_millis())
}

fn geojson(data: &[Value]) -> Value {
    let features: Vec<Value> = data
        .iter()
        .map(|v| {
            let number = |f: &str| v.get(f).cloned().unwrap_or(json!(0));
            json!({"type": "Feature", "geometry": {"type": "Point", "coordinates": [v["lon"], v["lat"]]},
                   "properties": {"name": v.get("tid").cloned().unwrap_or(json!("")), "vel": number("vel"),
                                  "tst": number("tst"), "acc": number("acc"), "alt": number("alt"),
                                  "address": v.get("addr").cloned().unwrap_or(json!("")),
                                  "isotst": v.get("isotst").cloned().unwrap_or(json!(""))}})
        })
        .collect();
    json!({"type": "FeatureCollection", "features": features})
}

/// The first object's keys as the header; each row that object's values, in those columns.
fn csv(data: &[Value]) -> String {
    let Some(Value::Object(first)) = data.first() else { return String::new() };
    let columns: Vec<String> = first.keys().cloned().collect();
    let rows: Vec<Vec<Value>> =
        data.iter().map(|row| columns.iter().map(|c| row.get(c).cloned().unwrap_or(Value::Null)).collect()).collect();
    crate::export::csv(&columns, &rows)
}

/// One track, oldest point first.
fn gpx(data: &[Value]) -> String {
    let mut sorted: Vec<&Value> = data.iter().collect();
    sorted.sort_by_key(|v| v["tst"].as_i64());
    let columns = ["lat", "lon", "ts", "alt"].map(String::from);
    let rows: Vec<Vec<Value>> = sorted
        .iter()
        .map(|v| vec![v["lat"].clone(), v["lon"].clone(), json!(v["tst"].as_i64().map(|s| s * 1000)), v["alt"].clone()])
        .collect();
    crate::export::gpx(&columns, &rows).expect("the columns are named lat and lon")
}

/// `/ws/last`: send `LAST` for every device's last location; then every location,
/// transition and waypoint as it arrives. Frames sent are echoed, as the Recorder does.
pub async fn websocket(
    State(state): State<Arc<WebState>>,
    Extension(Caller(who)): Extension<Caller>,
    client: Option<Extension<crate::serve::ClientAddr>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let slot = match state.streams.take(client.map(|c| c.0 .0)) {
        Ok(slot) => slot,
        Err(refused) => return refused.into_response(),
    };
    upgrade.on_upgrade(move |socket| async move {
        live(socket, state, who).await;
        drop(slot);
    })
}

async fn live(mut socket: WebSocket, state: Arc<WebState>, who: pacer_auth::Identity) {
    let keep = state.access.auth.record_filter(&who);
    let mut feed = state.recorder.live.subscribe();
    loop {
        tokio::select! {
            incoming = socket.recv() => {
                let Some(Ok(message)) = incoming else { return };
                let Message::Text(text) = message else { continue };
                if text.trim() == "LAST" {
                    let last: Vec<Value> = state
                        .recorder
                        .last
                        .read()
                        .unwrap()
                        .values()
                        .filter(|seen| seen.kept(&keep))
                        .map(|seen| seen.object.clone())
                        .collect();
                    for object in last {
                        if socket.send(Message::text(object.to_string())).await.is_err() {
                            return;
                        }
                    }
                }
                if socket.send(Message::Text(text)).await.is_err() {
                    return;
                }
            }
            pushed = feed.recv() => match pushed {
                Ok(seen) if !seen.kept(&keep) => {}
                Ok(seen) => {
                    if socket.send(Message::text(seen.object.to_string())).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "a /ws/last client fell behind; it skipped some updates");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_dates_are_utc_in_its_forms() {
        assert_eq!(recorder_time("2023-11-14T22:13:20"), Some(1_700_000_000_000));
        assert_eq!(recorder_time("2023-11-14T22:13:20.000Z"), Some(1_700_000_000_000));
        assert_eq!(recorder_time("2023-11-14t22:13"), Some(1_699_999_980_000));
        assert_eq!(recorder_time("2023-11-14"), Some(1_699_920_000_000));
        assert_eq!(recorder_time("2023-11"), Some(1_698_796_800_000));
        assert_eq!(recorder_time("yesterday"), None);
    }

    #[test]
    fn csv_and_gpx_carry_every_point() {
        let data = vec![
            json!({"tst": 2, "lat": 1.5, "lon": 2.5, "addr": "Rue, Paris", "isotst": "1970-01-01T00:00:02Z"}),
            json!({"tst": 1, "lat": 1.0, "lon": 2.0, "alt": 35}),
        ];
        assert_eq!(csv(&data), "tst,lat,lon,addr,isotst\n2,1.5,2.5,\"Rue, Paris\",1970-01-01T00:00:02Z\n1,1.0,2.0,,\n");
        let g = gpx(&data);
        let first = g.find("lat='1.000000' lon='2.000000'").unwrap();
        assert!(first < g.find("lat='1.500000'").unwrap(), "oldest first: {g}");
        assert!(g.contains("<ele>35.00</ele>") && g.contains("<time>1970-01-01T00:00:02Z</time>"), "{g}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, failure_persistence: None, ..Default::default() })]

        #[test]
        fn any_date_text_is_a_time_or_none(text in "\\PC{0,40}", digits in "[0-9T:tZ-]{0,30}") {
            let _ = recorder_time(&text);
            let _ = recorder_time(&digits);
            let _ = crate::live::parse_start(Some(&text));
            let _ = crate::live::parse_start(Some(&digits));
        }
    }
}
