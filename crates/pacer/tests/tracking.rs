//! Tracking end to end: the race example (course derived from the recorded data, league
//! table in SQL) replayed over MQTT gives the finish order and times the raw fixes give.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::Pacer;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/race");

fn haversine_m(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (p1, p2) = (a.0.to_radians(), b.0.to_radians());
    let (dp, dl) = (p2 - p1, (b.1 - a.1).to_radians());
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * 6_371_000.0 * h.sqrt().asin()
}

/// Each runner's finish time (s) from the raw fixes alone, without any course: the finish
/// is where alice stopped her watch (the course is her track); a runner finishes at the fix
/// closest to it once they have been more than 2 km away from it (the farthest point of
/// the course is 2.2 km from the finish).
fn finish_times_from_raw_fixes(fixes: &[serde_json::Value]) -> BTreeMap<String, (i64, usize)> {
    let last_of_alice = fixes.iter().rev().find(|f| f["who"] == "alice").unwrap();
    let finish = (last_of_alice["lat"].as_f64().unwrap(), last_of_alice["lon"].as_f64().unwrap());
    let mut runners: BTreeMap<String, Vec<&serde_json::Value>> = BTreeMap::new();
    for f in fixes {
        runners.entry(f["who"].as_str().unwrap().to_string()).or_default().push(f);
    }
    runners
        .into_iter()
        .map(|(who, fixes)| {
            let position = |f: &serde_json::Value| (f["lat"].as_f64().unwrap(), f["lon"].as_f64().unwrap());
            let away = fixes.iter().position(|f| haversine_m(position(f), finish) > 2000.0).unwrap();
            let closest = fixes[away..]
                .iter()
                .min_by(|a, b| haversine_m(position(a), finish).total_cmp(&haversine_m(position(b), finish)))
                .unwrap();
            (who, (closest["timeepoc"].as_i64().unwrap(), fixes.len()))
        })
        .collect()
}

#[test]
fn the_replayed_race_finishes_in_the_order_and_at_the_times_of_the_raw_fixes() {
    let text = std::fs::read_to_string(Path::new(EXAMPLE).join("sydney-half-2019.jsonl")).unwrap();
    let raw: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let expected = finish_times_from_raw_fixes(&raw);

    let dir = tempfile::tempdir().unwrap();
    let config = Path::new(EXAMPLE).join("pacer.toml");
    let pacer = Pacer::start_with(dir.path(), &["--config", config.to_str().unwrap()]);
    // The course is alice's recorded track (21.3 km), not the built-in GeoJSON.
    let courses: serde_json::Value = serde_json::from_str(&pacer.get("/api/v1/courses")).unwrap();
    let course = &courses["features"][0];
    assert_eq!(course["properties"]["name"], "sydney-half");
    let length = course["properties"]["length_m"].as_f64().unwrap();
    assert!((21_000.0..21_500.0).contains(&length), "{length}");

    let fixes = pacer_sim::parse_race(&text).unwrap();
    let options = pacer_sim::ReplayOptions { host: "127.0.0.1".into(), port: pacer.mqtt_port, speed: 5000.0 };
    let acked = tokio::runtime::Runtime::new().unwrap().block_on(pacer_sim::replay_race(fixes, options)).unwrap();
    assert_eq!(acked as usize, raw.len());
    // Every fix has gone through the league table once each runner's count is complete.
    for (who, (_, count)) in &expected {
        pacer.wait_for_record("race_status", |r| r["key"] == who.as_str() && r["value"]["fixes"] == *count);
    }

    let (status, answer) = pacer.post_sql("SELECT who, rank, finished_at, to_finish_m FROM race_status");
    assert_eq!(status, 200, "{answer}");
    let mut rows: Vec<(i64, String, i64)> = answer["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r[3], 0.0, "{r}: finished, nothing left to run");
            let finished = r[2].as_i64().unwrap_or_else(|| panic!("{r} has no finish time"));
            (r[1].as_i64().unwrap(), r[0].as_str().unwrap().to_string(), finished)
        })
        .collect();
    rows.sort();
    for (_, who, finished_ms) in &rows {
        let independent = expected[who].0;
        let difference = (finished_ms / 1000 - independent).abs();
        assert!(difference <= 30, "{who}: Pacer says {finished_ms} ms, the raw fixes {independent} s");
    }
    let mut by_time: Vec<(&i64, &String)> = expected.iter().map(|(who, (t, _))| (t, who)).collect();
    by_time.sort();
    let order: Vec<&String> = rows.iter().map(|(_, who, _)| who).collect();
    assert_eq!(order, by_time.iter().map(|(_, who)| *who).collect::<Vec<_>>());
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2, 3, 4]);
    // What the data says: ben first; simon (whose watch passed 11 m from the finish at
    // 21:52:23) before alice and derek.
    assert_eq!(order, ["ben", "simon", "alice", "derek"]);

    // The finish area (40 m around the end of the course) gives each runner exactly the
    // transitions its raw fixes make across that circle.
    let last_of_alice = raw.iter().rev().find(|f| f["who"] == "alice").unwrap();
    let finish = (last_of_alice["lat"].as_f64().unwrap(), last_of_alice["lon"].as_f64().unwrap());
    let mut expected_events: Vec<(String, String, i64)> = Vec::new();
    let mut inside: BTreeMap<String, bool> = BTreeMap::new();
    let mut by_time: Vec<&serde_json::Value> = raw.iter().collect();
    by_time.sort_by_key(|f| f["timeepoc"].as_i64());
    for f in by_time {
        let who = f["who"].as_str().unwrap().to_string();
        let now = haversine_m((f["lat"].as_f64().unwrap(), f["lon"].as_f64().unwrap()), finish) <= 40.0;
        let was = inside.insert(who.clone(), now).unwrap_or(false);
        if now != was {
            let event = if now { "enter" } else { "exit" };
            expected_events.push((who, event.to_string(), f["timeepoc"].as_i64().unwrap() * 1000));
        }
    }
    let mut got: Vec<(String, String, i64)> = pacer
        .tail("race_zone_events", expected_events.len())
        .iter()
        .map(|r| {
            let v = &r["value"];
            (
                v["who"].as_str().unwrap().to_string(),
                v["event"].as_str().unwrap().to_string(),
                v["at"].as_i64().unwrap(),
            )
        })
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0).then(a.2.cmp(&b.2)));
    expected_events.sort_by(|a, b| a.0.cmp(&b.0).then(a.2.cmp(&b.2)));
    assert_eq!(got, expected_events);
    assert!(expected_events.iter().filter(|e| e.1 == "enter").count() >= 4, "every runner reaches the finish area");
}

/// (lat, lon, unix seconds) of every point of a real recorded run: a Garmin export from the
/// `gpx` crate's fixtures, read here with plain string search.
fn garmin_track() -> Vec<(f64, f64, i64)> {
    let gpx = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../pacer-sql/tests/fixtures/garmin-activity.gpx"
    ))
    .unwrap();
    let attribute = |text: &str, name: &str| -> f64 {
        let start = text.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        text[start..start + text[start..].find('"').unwrap()].parse().unwrap()
    };
    gpx.split("<trkpt ")
        .skip(1)
        .map(|point| {
            let time = &point[point.find("<time>").unwrap() + 6..point.find("</time>").unwrap()];
            (attribute(point, "lat"), attribute(point, "lon"), pacer_core::parse_time(time).unwrap() / 1000)
        })
        .collect()
}

#[test]
fn a_recorded_run_through_a_geofence_gives_exactly_its_debounced_transitions() {
    let track = garmin_track();
    assert_eq!(track.len(), 988);
    // A 40 m circle around a point of the way out; the run comes back the same way.
    let (lat, lon, _) = track[300];
    const RADIUS_M: f64 = 40.0;
    const DEBOUNCE: usize = 2;

    // The transitions, computed here: a side change counts after DEBOUNCE fixes in a row.
    let mut expected = Vec::new();
    let (mut inside, mut run) = (false, 0);
    for &(la, lo, t) in &track {
        if (haversine_m((la, lo), (lat, lon)) <= RADIUS_M) == inside {
            run = 0;
            continue;
        }
        run += 1;
        if run == DEBOUNCE {
            inside = !inside;
            run = 0;
            expected.push((if inside { "enter" } else { "exit" }, t * 1000));
        }
    }
    assert!(expected.len() >= 4 && !inside, "{expected:?}");

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pacer.toml");
    std::fs::write(
        &config,
        format!(
            "[[zone]]\nname = \"bridge\"\ncircle = {{ lat = {lat}, lon = {lon}, radius_m = {RADIUS_M} }}\n\
             debounce_fixes = {DEBOUNCE}\n[sql]\nfile = \"zones.sql\"\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("zones.sql"),
        "CREATE STREAM fixes (who VARCHAR, lat DOUBLE, lon DOUBLE) WITH (kafka_topic='race', value_format='JSON');
         CREATE STREAM zone_events AS
           SELECT who, ZONE_EVENT('bridge', lat, lon) AS event, ROWTIME AS at FROM fixes
           WHERE lat IS NOT NULL AND ZONE_EVENT('bridge', lat, lon) IS NOT NULL EMIT CHANGES;",
    )
    .unwrap();
    let pacer = Pacer::start_with(&dir.path().join("data"), &["--config", config.to_str().unwrap()]);

    // The run over MQTT, then two fixes at the centre ten minutes later: their 'enter'
    // comes last, so once it is there every transition of the run has been written.
    let mut lines: Vec<String> =
        track.iter().map(|(la, lo, t)| format!(r#"{{"who":"walker","timeepoc":{t},"lat":{la},"lon":{lo}}}"#)).collect();
    let end = track.last().unwrap().2;
    for t in [end + 600, end + 601] {
        lines.push(format!(r#"{{"who":"walker","timeepoc":{t},"lat":{lat},"lon":{lon}}}"#));
    }
    expected.push(("enter", (end + 601) * 1000));
    pacer.mosquitto_pub_lines("race/walker", 1, &lines);

    let events = pacer.tail("zone_events", expected.len());
    let got: Vec<(&str, i64)> =
        events.iter().map(|r| (r["value"]["event"].as_str().unwrap(), r["value"]["at"].as_i64().unwrap())).collect();
    assert_eq!(got, expected);
    assert!(events.iter().all(|r| r["key"] == "walker" && r["value"]["who"] == "walker"));
}

#[test]
fn an_owntracks_http_post_and_an_osmand_get_land_in_the_locations_stream() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = Pacer::start(dir.path());
    let osmand = pacer.listeners["osmand"].clone();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::new();

    // OwnTracks HTTP mode: Basic auth, user and device in headers; iOS leaves vel out at 0.
    let post = |body: &'static str| {
        runtime.block_on(async {
            let response = client
                .post(format!("{}/pub", pacer.http))
                .basic_auth("jane", Some("secret"))
                .header("X-Limit-U", "jane")
                .header("X-Limit-D", "phone")
                .body(body)
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        })
    };
    let location = r#"{"_type":"location","lat":48.85833,"lon":2.29513,"tst":1376715317,"acc":75,"tid":"jp"}"#;
    assert_eq!(post(location), (200, "[]".to_string()));
    let transition = r#"{"_type":"transition","event":"enter","desc":"Home","lat":48.85,"lon":2.29,"tst":1376715400}"#;
    assert_eq!(post(transition).0, 200);

    // OsmAnd, as Traccar Client sends it: a GET with the fix in the query; speed in knots.
    let status = runtime.block_on(async {
        let url = format!("{osmand}/?id=truck7&lat=47.37&lon=8.52&timestamp=1700000000&speed=10&batt=80");
        client.get(url).send().await.unwrap().status().as_u16()
    });
    assert_eq!(status, 200);
    let bad = runtime.block_on(async { client.get(format!("{osmand}/?id=truck7")).send().await.unwrap() });
    assert_eq!(bad.status().as_u16(), 400);

    let locations = pacer.tail("locations", 2);
    let jane = &locations[0];
    assert_eq!(jane["key"], "jane/phone");
    assert_eq!(jane["timestamp"], 1_376_715_317_000_i64);
    assert_eq!(jane["headers"]["mqtt.topic"], "owntracks/jane/phone");
    assert_eq!(
        (jane["value"]["acc"].clone(), jane["value"]["vel"].clone()),
        (serde_json::json!(75), serde_json::json!(0))
    );
    let truck = &locations[1];
    assert_eq!(truck["key"], "osmand/truck7");
    assert_eq!(truck["timestamp"], 1_700_000_000_000_i64);
    let vel = truck["value"]["vel"].as_f64().unwrap();
    assert!((vel - 18.52).abs() < 1e-9, "10 knots is 18.52 km/h, got {vel}");
    assert_eq!(
        (truck["value"]["lat"].clone(), truck["value"]["batt"].clone()),
        (serde_json::json!(47.37), serde_json::json!(80.0))
    );
    // The transition went where the app would have published it over MQTT.
    let events = pacer.tail("owntracks", 1);
    assert_eq!(events[0]["headers"]["mqtt.topic"], "owntracks/jane/phone/event");
    assert_eq!(events[0]["value"]["event"], "enter");
}

#[test]
fn device_status_follows_connections_lwt_and_silence() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pacer.toml");
    std::fs::write(&config, "[device_status]\ninactive_after_s = 3\n").unwrap();
    let pacer = Pacer::start_with(&dir.path().join("data"), &["--config", config.to_str().unwrap()]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::new();

    // An OwnTracks phone over MQTT: connects, reports, says goodbye.
    pacer.mosquitto_pub("owntracks/jane/phone", 1, r#"{"_type":"location","lat":1,"lon":2,"tst":1700000000}"#);
    // The same phone in HTTP mode: a report, then its last will.
    for body in [r#"{"_type":"location","lat":1,"lon":2,"tst":1700000060}"#, r#"{"_type":"lwt","tst":1700000070}"#] {
        let status = runtime.block_on(async {
            let url = format!("{}/pub?u=jane&d=phone", pacer.http);
            client.post(url).body(body).send().await.unwrap().status().as_u16()
        });
        assert_eq!(status, 200);
    }
    // A Traccar client that sends once and falls silent.
    let osmand = pacer.listeners["osmand"].clone();
    let status = runtime.block_on(async {
        client.get(format!("{osmand}/?id=truck7&lat=47.37&lon=8.52")).send().await.unwrap().status().as_u16()
    });
    assert_eq!(status, 200);

    let transitions: Vec<(String, String, String)> = pacer
        .tail("device_status", 6)
        .iter()
        .map(|r| {
            let v = &r["value"];
            assert_eq!(r["key"], v["device"]);
            let text = |f: &str| v[f].as_str().unwrap().to_string();
            (text("device"), text("status"), text("reason"))
        })
        .collect();
    let t = |d: &str, s: &str, r: &str| (d.to_string(), s.to_string(), r.to_string());
    assert_eq!(
        transitions,
        [
            t("jane/phone", "online", "data"),
            t("jane/phone", "offline", "disconnect"),
            t("jane/phone", "online", "data"),
            t("jane/phone", "offline", "lwt"),
            t("osmand/truck7", "online", "data"),
            t("osmand/truck7", "offline", "inactive"),
        ]
    );
}

/// The OwnTracks Recorder's API, as its web pages call it: a location POSTed in HTTP mode
/// is pushed on /ws/last, then listed, last, and in the device's track in every format.
#[test]
fn the_owntracks_recorder_api_serves_what_the_apps_sent() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let dir = tempfile::tempdir().unwrap();
    let pacer = Pacer::start(dir.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::new();
    let get = |path: &str| {
        runtime.block_on(async {
            let response = client.get(format!("{}{path}", pacer.http)).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        })
    };
    let ws_url = format!("{}/ws/last", pacer.http.replacen("http://", "ws://", 1));
    let pushed: serde_json::Value = runtime.block_on(async {
        let (mut socket, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
        let location = r#"{"_type":"location","lat":48.85833,"lon":2.29513,"tst":1700000000,"alt":35,"tid":"jp"}"#;
        let status =
            client.post(format!("{}/pub?u=jane&d=phone", pacer.http)).body(location).send().await.unwrap().status();
        assert_eq!(status.as_u16(), 200);
        let frame = tokio::time::timeout(std::time::Duration::from_secs(30), socket.next()).await.unwrap();
        let pushed = serde_json::from_str(frame.unwrap().unwrap().to_text().unwrap()).unwrap();
        // LAST: every device's last location, then the frame echoed.
        socket.send(Message::text("LAST")).await.unwrap();
        let last = socket.next().await.unwrap().unwrap();
        assert_eq!(serde_json::from_str::<serde_json::Value>(last.to_text().unwrap()).unwrap()["tid"], "jp");
        assert_eq!(socket.next().await.unwrap().unwrap().to_text().unwrap(), "LAST");
        pushed
    });
    assert_eq!(pushed["topic"], "owntracks/jane/phone");
    assert_eq!((pushed["username"].as_str(), pushed["device"].as_str()), (Some("jane"), Some("phone")));
    assert_eq!(pushed["isotst"], "2023-11-14T22:13:20Z");
    assert_eq!(pushed["disptst"], "2023-11-14 22:13:20");

    let json = |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap();
    assert_eq!(json(&get("/api/0/list").1)["results"], serde_json::json!(["jane"]));
    assert_eq!(json(&get("/api/0/list?user=jane").1)["results"], serde_json::json!(["phone"]));
    let last = json(&get("/api/0/last?fields=lat,lon,tid").1);
    assert_eq!(last, serde_json::json!([{"lat": 48.85833, "lon": 2.29513, "tid": "jp"}]));

    let track = "/api/0/locations?user=jane&device=phone&from=2023-11-14&to=2023-11-15";
    let (status, body) = get(track);
    assert_eq!(status, 200);
    let body = json(&body);
    assert_eq!((body["count"].clone(), body["status"].clone()), (serde_json::json!(1), serde_json::json!(200)));
    assert_eq!(body["data"][0]["tst"], 1700000000);
    let geo = json(&get(&format!("{track}&format=geojson")).1);
    assert_eq!(geo["features"][0]["geometry"]["coordinates"], serde_json::json!([2.29513, 48.85833]));
    assert_eq!(geo["features"][0]["properties"]["name"], "jp");
    let csv = get(&format!("{track}&format=csv&fields=tst,lat,lon")).1;
    assert_eq!(csv, "tst,lat,lon\n1700000000,48.85833,2.29513\n");
    let gpx = get(&format!("{track}&format=gpx")).1;
    assert!(gpx.contains("<trkpt lat='48.858330' lon='2.295130'>") && gpx.contains("<ele>35.00</ele>"), "{gpx}");
    // Outside the range, and without a device: as the Recorder answers.
    assert_eq!(json(&get("/api/0/locations?user=jane&device=phone&from=2024-01-01&to=2024-02-01").1)["count"], 0);
    assert_eq!(get("/api/0/locations?user=jane").0, 416);
}
