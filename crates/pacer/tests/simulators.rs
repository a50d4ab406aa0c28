//! Each simulator scenario publishes over real MQTT to a running Pacer, and its example
//! pipeline (examples/<scenario>/pacer.toml) produces the derived rows the raw readings say.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{Pacer, PACER};
use serde_json::Value;

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");

fn start_example(dir: &Path, example: &str) -> Pacer {
    let config = Path::new(EXAMPLES).join(example).join("pacer.toml");
    Pacer::start_with(dir, &["--config", config.to_str().unwrap()])
}

fn simulate(pacer: &Pacer, args: &[&str]) -> String {
    let out = Command::new(PACER)
        .args(["simulate"])
        .args(args)
        .args(["--port", &pacer.mqtt_port.to_string()])
        .output()
        .expect("run pacer simulate");
    assert!(out.status.success(), "pacer simulate failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Every record of `stream` (at most 100,000); none when it does not exist (yet).
fn records(pacer: &Pacer, stream: &str) -> Vec<Value> {
    let body: Value =
        serde_json::from_str(&pacer.get(&format!("/api/v1/streams/{stream}/records?limit=100000"))).unwrap();
    match body["records"].as_array() {
        Some(records) => records.clone(),
        None if body["error"].as_str().is_some_and(|e| e.starts_with("no stream named")) => Vec::new(),
        None => panic!("{stream}: {body}"),
    }
}

#[test]
fn generators_below_500_fuel_get_the_refuel_alarm() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = start_example(dir.path(), "generators");
    let said = simulate(&pacer, &["generators", "--devices", "20", "--rate", "5", "--duration", "2", "--seed", "3"]);
    assert!(said.contains("20 generators:") && said.contains("0 errors"), "{said}");

    // The last reading of each generator, from the raw stream.
    let mut last: BTreeMap<String, f64> = BTreeMap::new();
    for r in records(&pacer, "emergency_generators") {
        assert_eq!(r["key"], r["value"]["generatorID"], "keyed by generator");
        last.insert(r["key"].as_str().unwrap().to_string(), r["value"]["fuel"].as_f64().unwrap());
    }
    assert_eq!(last.len(), 20);
    for (id, fuel) in &last {
        let row = pacer.wait_for_record("generator_alarms", |r| r["key"] == id.as_str() && r["value"]["fuel"] == *fuel);
        let expected = if *fuel < 500.0 { "refuel" } else { "no action" };
        assert_eq!(row["value"]["alarm"], expected, "{id} with {fuel} fuel");
        assert_eq!(row["value"]["region"], "US");
    }
    let low = last.values().filter(|f| **f < 500.0).count();
    assert!(low > 0 && low < 20, "both alarms occur with this seed: {low} of 20 low");
}

#[test]
fn vehicles_report_the_tesla_schema_keyed_by_client_id_at_publish_time() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = start_example(dir.path(), "vehicles");
    let before = pacer_core::now_ms();
    let said = simulate(&pacer, &["vehicles", "--devices", "5", "--rate", "4", "--duration", "2", "--seed", "9"]);
    let after = pacer_core::now_ms();
    assert!(said.contains("5 vehicles:") && said.contains("0 errors"), "{said}");

    let all = records(&pacer, "my-vehicles");
    let mut reports: BTreeMap<String, i64> = BTreeMap::new();
    for r in &all {
        let key = r["key"].as_str().unwrap();
        assert!(key.starts_with("mqttx_"), "keyed by client id: {key}");
        assert_eq!(r["headers"]["mqtt.client_id"], key);
        assert_eq!(r["headers"]["mqtt.topic"], format!("mqttx/simulate/tesla/{key}"));
        let t = r["timestamp"].as_i64().unwrap();
        assert!((before..=after).contains(&t), "publish time, {t} not in {before}..{after}");
        for field in pacer_sim::vehicles::FIELDS {
            assert!(!r["value"][field].is_null(), "{field} in {}", r["value"]);
        }
        *reports.entry(key.to_string()).or_default() += 1;
    }
    assert_eq!(reports.len(), 5);
    for (vehicle, count) in &reports {
        pacer.wait_for_record("vehicle_status", |r| r["key"] == vehicle.as_str() && r["value"]["reports"] == *count);
    }
}

#[test]
fn buses_move_along_their_lines_without_jumps() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = start_example(dir.path(), "buses");
    let said = simulate(&pacer, &["buses", "--devices", "6", "--rate", "5", "--duration", "2", "--seed", "5"]);
    assert!(said.contains("6 buses:") && said.contains("0 errors"), "{said}");
    let mut by_bus: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for r in records(&pacer, "buses") {
        let v = r["value"].clone();
        assert_eq!(r["key"], v["key"]);
        assert_eq!(r["timestamp"], v["timestamp"], "event time is the fix's timestamp");
        for field in ["bus_line", "latitude", "longitude"] {
            assert!(!v[field].is_null(), "{field} in {v}");
        }
        by_bus.entry(r["key"].as_str().unwrap().to_string()).or_default().push(v);
    }
    assert_eq!(by_bus.len(), 6);
    let lines: std::collections::BTreeSet<&str> =
        by_bus.values().map(|fixes| fixes[0]["bus_line"].as_str().unwrap()).collect();
    assert_eq!(lines.into_iter().collect::<Vec<_>>(), ["1", "2", "3"]);
    for (bus, fixes) in &by_bus {
        for pair in fixes.windows(2) {
            let at = |v: &Value| (v["latitude"].as_f64().unwrap(), v["longitude"].as_f64().unwrap());
            let metres = pacer_sim::haversine_m(at(&pair[0]), at(&pair[1]));
            let seconds =
                (pair[1]["timestamp"].as_i64().unwrap() - pair[0]["timestamp"].as_i64().unwrap()) as f64 / 1000.0;
            // At most 12 m/s between fixes (the lines' points are hundreds of metres apart).
            assert!(metres <= 12.0 * seconds.max(0.2) + 1.0, "{bus} jumped {metres} m in {seconds} s");
        }
        let n = fixes.len() as i64;
        pacer.wait_for_record("bus_positions", |r| r["key"] == bus.as_str() && r["value"]["reports"] == n);
    }
}

/// The Flink seed: the 1000 readers report for two simulated minutes (10× faster than the
/// clock); rejections dominate near the disruption, and the alert query (HOP windows, mean +
/// 3·stddev + 5 across readers, the readers' table joined in) flags exactly the readers there.
#[test]
fn access_alerts_flag_exactly_the_readers_near_the_disruption() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = start_example(dir.path(), "access");
    let devices_file = Path::new(EXAMPLES).join("access/devices.json");
    let produced = Command::new(PACER)
        .args(["produce", "devices", "--key-field", "deviceId", "--server", &pacer.http])
        .stdin(std::fs::File::open(&devices_file).unwrap())
        .output()
        .unwrap();
    assert!(produced.status.success(), "{}", String::from_utf8_lossy(&produced.stderr));
    let said = simulate(&pacer, &["access", "--rate", "0.5", "--speed", "10", "--duration", "13", "--seed", "11"]);
    assert!(said.contains("1000 readers:") && said.contains("0 errors"), "{said}");

    // Where each reader is, from the data, and its events, from the stream.
    let devices: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&devices_file).unwrap()).unwrap();
    let location = |id: &str| &devices.iter().find(|d| d["deviceId"] == id).unwrap()["payload"]["location"];
    let near: std::collections::BTreeSet<String> = devices
        .iter()
        .filter(|d| {
            let loc = d["payload"]["location"]["loc"].as_str().unwrap();
            let (lat, lon) = loc.split_once(',').unwrap();
            pacer_sim::haversine_m((lat.parse().unwrap(), lon.parse().unwrap()), (47.37, 8.52)) <= 100.0
        })
        .map(|d| d["deviceId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(near.len(), 5);
    let events = records(&pacer, "access_events");
    let mut counts: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for r in &events {
        let entry = counts.entry(r["key"].as_str().unwrap().to_string()).or_default();
        entry.0 += 1;
        entry.1 += i64::from(r["value"]["eventType"] == "accessRejected");
    }
    assert_eq!(counts.len(), 1000);
    let share = |ids: &mut dyn Iterator<Item = &(i64, i64)>| {
        let (events, rejected) = ids.fold((0, 0), |a, c| (a.0 + c.0, a.1 + c.1));
        rejected as f64 / events as f64
    };
    let near_share = share(&mut counts.iter().filter(|(k, _)| near.contains(*k)).map(|(_, c)| c));
    let far_share = share(&mut counts.iter().filter(|(k, _)| !near.contains(*k)).map(|(_, c)| c));
    assert!(near_share > 0.9, "near the disruption {near_share}");
    assert!(far_share < 0.05, "elsewhere {far_share}");
    // The example's table counts them as the stream holds them.
    for id in near.iter().chain(counts.keys().filter(|k| !near.contains(*k)).take(5)) {
        let (events, rejected) = counts[id];
        pacer.wait_for_record("access_counts", |r| {
            r["key"] == id.as_str() && r["value"]["events"] == events && r["value"]["rejected"] == rejected
        });
    }

    // The alert, computed from the raw events: rejections per reader in each one-minute
    // window starting every 30 s, flagged above the window's mean + 3·stddev + 5 (over the
    // readers with a rejection in it). Windows close 5 s of event time after their end; an
    // event that reached Pacer later than that for some of its windows is in the dead
    // letters, saying which (on a busy machine a few are), and counts in the others only.
    let times: Vec<i64> = events.iter().map(|r| r["timestamp"].as_i64().unwrap()).collect();
    let (first, last) = (*times.iter().min().unwrap(), *times.iter().max().unwrap());
    let last_closed = (last - 65_000).div_euclid(30_000) * 30_000;
    pacer.wait_for_record("access_alerts", |r| r["value"]["window_start"] == last_closed);
    let mut missed: BTreeMap<(u64, u64), Vec<i64>> = BTreeMap::new();
    for d in records(&pacer, "_dead_letters").iter().filter(|d| d["value"]["query"] == "CSAS_ACCESS_ALERTS") {
        let reason = d["value"]["reason"].as_str().unwrap();
        let windows = match reason.strip_prefix("late record for the windows starting at ") {
            Some(rest) => rest.split(':').next().unwrap().split(", ").map(|s| s.parse().unwrap()).collect(),
            None if reason.contains("past every window") => vec![i64::MIN],
            None => panic!("{d}"),
        };
        missed.insert((d["value"]["partition"].as_u64().unwrap(), d["value"]["offset"].as_u64().unwrap()), windows);
    }
    assert!(missed.len() * 100 < events.len(), "{} of {} events late", missed.len(), events.len());
    let mut windows: BTreeMap<i64, BTreeMap<String, i64>> = BTreeMap::new();
    // Windows that lost rejections to lateness.
    let mut short: std::collections::BTreeSet<i64> = std::collections::BTreeSet::new();
    for r in events.iter().filter(|r| r["value"]["eventType"] == "accessRejected") {
        let t = r["timestamp"].as_i64().unwrap();
        let late = missed.get(&(r["partition"].as_u64().unwrap(), r["offset"].as_u64().unwrap()));
        let mut start = t - t.rem_euclid(30_000);
        while start > t - 60_000 {
            if late.is_some_and(|w| w.contains(&start) || w == &[i64::MIN]) {
                short.insert(start);
            } else {
                *windows.entry(start).or_default().entry(r["key"].as_str().unwrap().to_string()).or_default() += 1;
            }
            start -= 30_000;
        }
    }
    let closed: Vec<i64> = windows.keys().copied().filter(|s| *s <= last_closed).collect();
    assert!(closed.len() >= 3, "two simulated minutes close at least three windows: {closed:?}");
    let mut expected: BTreeMap<(i64, String), i64> = BTreeMap::new();
    for start in &closed {
        let per_reader = &windows[start];
        let n = per_reader.len() as f64;
        let mean = per_reader.values().sum::<i64>() as f64 / n;
        let stddev = (per_reader.values().map(|&c| (c as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
        for (id, &c) in per_reader {
            if c as f64 > mean + 3.0 * stddev + 5.0 {
                expected.insert((*start, id.clone()), c);
            }
        }
        // A window the readers reported through all of flags exactly those near the disruption;
        // one that lost rejections to lateness (a reader whose connection stalled on a busy
        // machine falls short) flags none elsewhere.
        if *start >= first && start + 60_000 <= last {
            let flagged: std::collections::BTreeSet<String> =
                expected.keys().filter(|(s, _)| s == start).map(|(_, id)| id.clone()).collect();
            let near_counts: Vec<Option<&i64>> = near.iter().map(|id| per_reader.get(id)).collect();
            let why = format!("window {start}: rejections near {near_counts:?}, mean {mean:.2}, stddev {stddev:.2}");
            if short.contains(start) {
                assert!(flagged.is_subset(&near), "{why}; flagged {flagged:?}");
            } else {
                assert_eq!(flagged, near, "{why}");
            }
        }
    }
    let mut alerted: BTreeMap<(i64, String), i64> = BTreeMap::new();
    for r in records(&pacer, "access_alerts") {
        let v = &r["value"];
        let start = v["window_start"].as_i64().unwrap();
        assert_eq!(v["window_end"], start + 60_000);
        let id = v["deviceId"].as_str().unwrap();
        let where_ = location(id);
        assert_eq!((&v["city"], &v["region"], &v["location"]), (&where_["city"], &where_["region"], &where_["loc"]));
        if start <= last_closed {
            alerted.insert((start, id.to_string()), v["rejected"].as_i64().unwrap());
        }
    }
    assert_eq!(alerted, expected);
}

#[test]
fn synthetic_runners_fill_the_league_table_and_owntracks_phones_the_locations() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = Pacer::start(&dir.path().join("data"));
    let said = simulate(&pacer, &["race", "--devices", "8", "--rate", "5", "--duration", "2", "--seed", "2"]);
    assert!(said.contains("8 runners:") && said.contains("0 errors"), "{said}");
    let mut fixes: BTreeMap<String, i64> = BTreeMap::new();
    for r in records(&pacer, "race") {
        *fixes.entry(r["key"].as_str().unwrap().to_string()).or_default() += 1;
    }
    assert_eq!(fixes.len(), 8);
    for (who, n) in &fixes {
        let row = pacer.wait_for_record("race_status", |r| r["key"] == who.as_str() && r["value"]["fixes"] == *n);
        assert!(row["value"]["progress_m"].as_f64().unwrap() < 100.0, "two seconds from the start corral: {row}");
    }

    // A course of one's own (the Garmin run), and OwnTracks phones.
    let gpx = concat!(env!("CARGO_MANIFEST_DIR"), "/../pacer-sql/tests/fixtures/garmin-activity.gpx");
    let args = ["race", "--devices", "3", "--rate", "5", "--duration", "1", "--format", "owntracks", "--course", gpx];
    simulate(&pacer, &args);
    let locations = records(&pacer, "locations");
    assert!(!locations.is_empty());
    for r in &locations {
        assert!(r["key"].as_str().unwrap().ends_with("/phone"), "{r}");
        let (lat, lon) = (r["value"]["lat"].as_f64().unwrap(), r["value"]["lon"].as_f64().unwrap());
        assert!(pacer_sim::haversine_m((lat, lon), (37.2417, -121.9723)) < 200.0, "near the run's start: {lat}, {lon}");
    }
}

/// The seed's Flux task: every minute each generator's last reading of that minute, with its
/// alarm and region, reaches an MQTT subscriber (a `[[publish]]` rule over the query's table).
#[test]
fn every_minute_the_last_reading_per_generator_reaches_mqtt_subscribers() {
    use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let pacer = start_example(dir.path(), "generators");
    let (client, mut connection) = Client::new(MqttOptions::new("alarm-reader", "127.0.0.1", pacer.mqtt_port), 100);
    client.subscribe("generators/alarms/#", QoS::AtLeastOnce).unwrap();
    for event in connection.iter() {
        if let Event::Incoming(Packet::SubAck(_)) = event.expect("subscribe") {
            break;
        }
    }

    // Three generators read every 15 s for three minutes: g1 runs from 530 below 500, g2 is
    // full, g3 low. A last reading in the fourth minute ends the third.
    let t0: i64 = 1_795_000_020_000 / 60_000 * 60_000;
    let fuel = |g: usize, k: i64| match g {
        1 => 530.0 - 5.0 * k as f64,
        2 => 800.0,
        _ => 300.0 + k as f64,
    };
    // In time order, as the generators would send them (with no grace period, a reading
    // for a minute that has ended is late: it goes to the dead letters).
    for k in 0..12 {
        for g in 1..=3 {
            let reading = serde_json::json!({"generatorID": format!("g{g}"), "fuel": fuel(g, k), "load": 0.5,
                                             "temperature": 60.0, "timestamp": t0 + k * 15_000});
            pacer.mosquitto_pub(&format!("emergency_generators/g{g}"), 1, &reading.to_string());
        }
    }
    let closing = serde_json::json!({"generatorID": "g1", "fuel": 470.0, "timestamp": t0 + 180_000});
    pacer.mosquitto_pub("emergency_generators/g1", 1, &closing.to_string());

    // What the readings say: per generator and minute, the minute's last fuel.
    let mut expected: BTreeMap<(String, i64), f64> = BTreeMap::new();
    for g in 1..=3 {
        for minute in 0..3 {
            expected.insert((format!("g{g}"), t0 + minute * 60_000), fuel(g, minute * 4 + 3));
        }
    }
    let mut got: BTreeMap<(String, i64), f64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < expected.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(event) = connection.recv_timeout(left) else {
            panic!("only {} of {} minute rows arrived: {got:?}", got.len(), expected.len())
        };
        if let Event::Incoming(Packet::Publish(p)) = event.expect("receive") {
            let row: Value = serde_json::from_slice(&p.payload).unwrap();
            let generator = p.topic.strip_prefix("generators/alarms/").expect("the rule's topic").to_string();
            assert_eq!(row["generatorID"], generator.as_str());
            let fuel = row["fuel"].as_f64().unwrap();
            assert_eq!(row["alarm"], if fuel < 500.0 { "refuel" } else { "no action" }, "{row}");
            assert_eq!(row["region"], "US");
            let start = row["WINDOWSTART"].as_i64().unwrap();
            assert!(got.insert((generator, start), fuel).is_none(), "one row per generator and minute: {row}");
        }
    }
    assert_eq!(got, expected);
    // The fourth minute is still open: nothing more comes for it.
    assert!(
        !matches!(connection.recv_timeout(Duration::from_millis(500)), Ok(Ok(Event::Incoming(Packet::Publish(_))))),
        "a row for a minute that has not ended"
    );
}
