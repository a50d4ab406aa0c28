//! The OsmAnd protocol of Traccar's client apps, on its own port: a fix as query or form
//! parameters (`id`, `lat`, `lon` or `location=lat,lon`, `timestamp`, `speed` in knots,
//! `bearing`, `altitude`, `accuracy`, `batt`), by GET or POST, or Traccar Client's JSON
//! (`{"location": {"coords": …}, "device_id": …}`, speed in m/s). Each fix is published on
//! `osmand/{id}` as an OwnTracks location (speeds in km/h, `tst` in seconds), so the
//! default rules put it in the `locations` stream beside the OwnTracks apps'.
//!
//! The protocol has no credentials, so the device id decides ([`OsmandDevices`]): ids
//! listed in `[osmand] devices`, ids the ACL lets publish on `osmand/{id}` as a user of that
//! name, and, where anonymous clients are let in, what the ACL lets them publish. Without a
//! password file and with no ids listed, any id; the others get 403.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use pacer_auth::Authorizer;
use pacer_core::{now_ms, parse_time, Publication};
use pacer_mqtt::{Broker, PublishRefused};
use serde_json::{json, Map, Value};

const KNOTS_TO_KMH: f64 = 1.852;

/// Which device ids may send fixes.
pub struct OsmandDevices {
    pub auth: Arc<Authorizer>,
    /// Taken whatever the ACL says. Without a password file and with none listed: any id.
    pub listed: Vec<String>,
    /// Host names the listener answers to (empty: any), as for the HTTP listener.
    pub hosts: Vec<String>,
}

/// Who a fix is taken from.
enum Sender {
    /// Listed in `[osmand] devices`.
    Listed,
    /// A user named as the device (with a password file and an ACL), or an anonymous client
    /// (where allowed): the ACL decides.
    As(pacer_auth::Identity),
    Refused,
}

impl OsmandDevices {
    fn sender(&self, id: &str) -> Sender {
        if self.listed.iter().any(|d| d == id) {
            return Sender::Listed;
        }
        if self.auth.checks_passwords() && self.auth.has_acl() {
            let device = self.auth.device(id);
            let topic = format!("osmand/{id}");
            if self.auth.may_use_topic(&device, None, &topic, pacer_auth::Access::Write) {
                return Sender::As(device);
            }
        }
        match self.auth.anonymous() {
            // Open (no password file, nothing listed), or anonymous clients let in on purpose.
            Ok(anonymous) if self.listed.is_empty() || self.auth.checks_passwords() => Sender::As(anonymous),
            _ => Sender::Refused,
        }
    }
}

struct Osmand {
    broker: Broker,
    devices: OsmandDevices,
}

pub fn router(broker: Broker, devices: OsmandDevices) -> Router {
    Router::new().fallback(receive).with_state(Arc::new(Osmand { broker, devices }))
}

async fn receive(
    State(osmand): State<Arc<Osmand>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // Tracker apps send neither; a web page in someone's browser (an <img>, a form) does.
    let from_a_page = headers.contains_key(header::ORIGIN)
        || headers.get("sec-fetch-site").is_some_and(|site| site != "none" && site != "same-origin");
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    if from_a_page || (!host.is_empty() && !crate::access::serves(&osmand.devices.hosts, host)) {
        return (StatusCode::FORBIDDEN, "OsmAnd takes fixes from tracker apps, not from web pages").into_response();
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    let fix = if is_json { from_json(&body) } else { from_params(query.as_deref().unwrap_or_default(), &body) };
    let (id, location) = match fix {
        Ok(fix) => fix,
        Err(reason) => return (StatusCode::BAD_REQUEST, reason).into_response(),
    };
    let publication = Publication {
        topic: format!("osmand/{id}"),
        payload: Bytes::from(Value::Object(location).to_string()),
        qos: 1,
        retain: false,
        client_id: format!("osmand-{id}"),
        username: None,
        received_at: now_ms(),
        ..Default::default()
    };
    let published = match osmand.devices.sender(&id) {
        Sender::Listed => osmand.broker.publish(publication).await,
        Sender::As(identity) => osmand.broker.publish_as(&identity, publication).await,
        Sender::Refused => Err(PublishRefused::NotAuthorized(publication.topic)),
    };
    match published {
        Ok(()) => StatusCode::OK.into_response(),
        Err(PublishRefused::NotAuthorized(_)) => {
            tracing::info!(device = %id, "OsmAnd fix refused: the device is not allowed");
            let why = format!("device {id:?} is not allowed: list it in [osmand] devices, or let user {id:?} publish on osmand/{id} in the ACL");
            (StatusCode::FORBIDDEN, why).into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

/// Query string and form body parameters (the body's win).
fn from_params(query: &str, body: &[u8]) -> Result<(String, Map<String, Value>), String> {
    let mut params: Vec<(String, String)> =
        serde_urlencoded::from_str(query).map_err(|e| format!("bad query string: {e}"))?;
    if !body.is_empty() {
        params.extend(
            serde_urlencoded::from_bytes::<Vec<(String, String)>>(body).map_err(|e| format!("bad form body: {e}"))?,
        );
    }
    let get =
        |names: &[&str]| names.iter().find_map(|n| params.iter().rev().find(|(k, _)| k == n).map(|(_, v)| v.as_str()));
    let number = |names: &[&str]| -> Result<Option<f64>, String> {
        get(names)
            .map(|v| v.trim().parse::<f64>().map_err(|_| format!("{} = {v:?} is not a number", names[0])))
            .transpose()
    };
    let id = get(&["id", "deviceid"]).ok_or("no id (or deviceid)")?.to_string();
    let (lat, lon) = match (number(&["lat"])?, number(&["lon"])?, get(&["location"])) {
        (Some(lat), Some(lon), _) => (lat, lon),
        (_, _, Some(location)) => {
            let (lat, lon) =
                location.split_once(',').ok_or_else(|| format!("location = {location:?} is not lat,lon"))?;
            let parse =
                |x: &str| x.trim().parse::<f64>().map_err(|_| format!("location = {location:?} is not lat,lon"));
            (parse(lat)?, parse(lon)?)
        }
        _ => return Err("no position: give lat and lon, or location=lat,lon".into()),
    };
    let time = match get(&["timestamp"]) {
        Some(t) => timestamp_ms(t)?,
        None => now_ms(),
    };
    let fields = [
        ("vel", number(&["speed"])?.map(|knots| knots * KNOTS_TO_KMH)),
        ("cog", number(&["bearing", "heading"])?),
        ("alt", number(&["altitude"])?),
        ("acc", number(&["accuracy"])?),
        ("batt", number(&["batt"])?),
    ];
    location(id, lat, lon, time, &fields)
}

/// Traccar Client's JSON (the background geolocation SDK's location).
fn from_json(body: &[u8]) -> Result<(String, Map<String, Value>), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let id = match &v["device_id"] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return Err("no device_id".into()),
    };
    let at = &v["location"];
    let coords = &at["coords"];
    let (Some(lat), Some(lon)) = (coords["latitude"].as_f64(), coords["longitude"].as_f64()) else {
        return Err("no location.coords.latitude and longitude".into());
    };
    let time = match at["timestamp"].as_str() {
        Some(t) => timestamp_ms(t)?,
        None => now_ms(),
    };
    let fields = [
        ("vel", coords["speed"].as_f64().filter(|s| *s >= 0.0).map(|ms| ms * 3.6)),
        ("cog", coords["heading"].as_f64().filter(|h| *h >= 0.0)),
        ("alt", coords["altitude"].as_f64()),
        ("acc", coords["accuracy"].as_f64()),
        ("batt", at["battery"]["level"].as_f64().filter(|l| *l >= 0.0).map(|l| (l * 100.0).round())),
    ];
    location(id, lat, lon, time, &fields)
}

/// The fix as an OwnTracks location.
fn location(
    id: String,
    lat: f64,
    lon: f64,
    time_ms: i64,
    fields: &[(&str, Option<f64>)],
) -> Result<(String, Map<String, Value>), String> {
    if id.is_empty() || id.contains(['/', '+', '#']) {
        return Err(format!("id {id:?} must be one topic level (no /, + or #)"));
    }
    if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
        return Err(format!("position ({lat}, {lon}) is out of range"));
    }
    let mut location = Map::new();
    location.insert("_type".into(), json!("location"));
    location.insert("lat".into(), json!(lat));
    location.insert("lon".into(), json!(lon));
    location.insert("tst".into(), json!(time_ms.div_euclid(1000)));
    for (name, value) in fields {
        if let Some(x) = value {
            location.insert((*name).into(), json!(x));
        }
    }
    location.insert("tid".into(), json!(id));
    Ok((id, location))
}

/// Unix seconds or milliseconds, RFC 3339, or `yyyy-MM-dd HH:mm:ss` (UTC).
fn timestamp_ms(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let ms = match text.parse::<f64>() {
        // Milliseconds from 1973 on; seconds before the year 5138.
        Ok(n) if n.is_finite() => {
            if n.abs() >= 1e11 {
                n as i64
            } else {
                (n * 1000.0) as i64
            }
        }
        _ => parse_time(text)
            .or_else(|_| parse_time(&format!("{}Z", text.replacen(' ', "T", 1))))
            .map_err(|_| format!("timestamp {text:?}: expected Unix seconds or milliseconds, or an ISO 8601 time"))?,
    };
    pacer_core::check_event_time(ms).map_err(|e| format!("timestamp {text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_become_an_owntracks_location() {
        let (id, l) = from_params(
            "id=123456&lat=47.37&lon=8.52&timestamp=1700000000&speed=10&bearing=90&altitude=410&accuracy=5&batt=87",
            b"",
        )
        .unwrap();
        assert_eq!(id, "123456");
        assert_eq!(
            (l["lat"].clone(), l["lon"].clone(), l["tst"].clone()),
            (json!(47.37), json!(8.52), json!(1700000000))
        );
        assert!((l["vel"].as_f64().unwrap() - 18.52).abs() < 1e-9, "10 knots in km/h");
        assert_eq!(
            (l["cog"].clone(), l["alt"].clone(), l["acc"].clone(), l["batt"].clone()),
            (json!(90.0), json!(410.0), json!(5.0), json!(87.0))
        );

        let (_, l) = from_params("deviceid=7&location=1.5,-2.25&timestamp=2023-11-14%2022:13:20", b"").unwrap();
        assert_eq!(
            (l["lat"].clone(), l["lon"].clone(), l["tst"].clone()),
            (json!(1.5), json!(-2.25), json!(1700000000))
        );
        let (_, l) = from_params("", b"id=7&lat=1&lon=2&timestamp=1700000000123").unwrap();
        assert_eq!(l["tst"], 1700000000, "milliseconds");
        let (_, l) = from_params("id=7&lat=1&lon=2&timestamp=2023-11-14T22:13:20Z", b"").unwrap();
        assert_eq!(l["tst"], 1700000000);

        assert!(from_params("lat=1&lon=2", b"").unwrap_err().contains("no id"));
        assert!(from_params("id=1&lat=1", b"").unwrap_err().contains("no position"));
        assert!(from_params("id=1&lat=north&lon=1", b"").unwrap_err().contains("lat = \"north\""));
        assert!(from_params("id=a/b&lat=1&lon=1", b"").unwrap_err().contains("one topic level"));
    }

    #[test]
    fn traccar_client_json_speeds_are_metres_per_second() {
        let body = br#"{"location":{"timestamp":"2023-11-14T22:13:20.000Z","coords":{"latitude":47.37,
            "longitude":8.52,"accuracy":4,"speed":5,"heading":180,"altitude":400},"battery":{"level":0.5}},
            "device_id":"48241179"}"#;
        let (id, l) = from_json(body).unwrap();
        assert_eq!(id, "48241179");
        assert_eq!(l["tst"], 1700000000);
        assert_eq!((l["vel"].clone(), l["batt"].clone(), l["cog"].clone()), (json!(18.0), json!(50.0), json!(180.0)));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, failure_persistence: None, ..Default::default() })]

        /// Whatever a client sends, it gets a fix or a reason, and a fix is a place on Earth
        /// at a time Pacer keeps.
        #[test]
        fn any_request_gets_a_fix_or_a_reason(
            query in "[a-z=&%0-9.,:+ TZ-]{0,120}",
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..160),
            id in "[^&=]{0,12}", lat in "[-+0-9.eE]{0,12}", lon in "[-+0-9.eEinfNa]{0,12}", ts in "[-0-9.:T Z]{0,24}",
        ) {
            let fixes = [
                from_params(&query, &body),
                from_json(&body),
                from_params(&format!("id={id}&lat={lat}&lon={lon}&timestamp={ts}"), b""),
            ];
            for (id, l) in fixes.into_iter().flatten() {
                proptest::prop_assert!(!id.is_empty() && !id.contains(['/', '+', '#']));
                let (lat, lon) = (l["lat"].as_f64().unwrap(), l["lon"].as_f64().unwrap());
                proptest::prop_assert!((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon));
                proptest::prop_assert!(l["tst"].as_i64().is_some_and(|t| t >= 0));
            }
        }
    }
}
