//! Streaming SQL end to end: ksqlDB statements sent with `pacer sql` over race data
//! published with mosquitto_pub, results checked against an independent computation.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use common::Pacer;
use serde_json::Value;

const RACE: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/race/sydney-half-2019.jsonl"));
const FINISH: (f64, f64) = (-33.87014, 151.211945);

/// Publishes every fix of the race over MQTT, one mosquitto_pub per runner (QoS 1, line mode).
fn publish_race(pacer: &Pacer) -> usize {
    let mut by_runner: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for line in RACE.lines() {
        let fix: Value = serde_json::from_str(line).unwrap();
        by_runner.entry(fix["who"].as_str().unwrap().to_string()).or_default().push(line);
    }
    for (who, lines) in &by_runner {
        let mut child = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &pacer.mqtt_port.to_string(),
                "-q",
                "1",
                "-t",
                &format!("race/{who}"),
                "-l",
            ])
            .stdin(Stdio::piped())
            .spawn()
            .expect("mosquitto_pub must be installed (Debian mosquitto-clients)");
        child.stdin.take().unwrap().write_all(lines.join("\n").as_bytes()).unwrap();
        assert!(child.wait().unwrap().success());
    }
    RACE.lines().count()
}

/// Haversine with ksqlDB's radius, written out here rather than taken from Pacer.
fn km_to_finish(lat: f64, lon: f64) -> f64 {
    let (p1, p2) = (lat.to_radians(), FINISH.0.to_radians());
    let (dp, dl) = ((FINISH.0 - lat).to_radians(), (FINISH.1 - lon).to_radians());
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * 6371.0 * a.sqrt().atan2((1.0 - a).sqrt())
}

#[derive(Debug, Default)]
struct Expected {
    min_speed: f64,
    max_speed: f64,
    dist: f64,
    count: i64,
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1e-12)
}

#[test]
fn the_race_ksql_of_the_design_matches_an_independent_computation() {
    let dir = tempfile::tempdir().unwrap();
    // Without the built-in race queries (which include this one): the statements run here.
    std::fs::write(dir.path().join("none.sql"), "").unwrap();
    std::fs::write(dir.path().join("pacer.toml"), "[sql]\nfile = \"none.sql\"\n").unwrap();
    let config = dir.path().join("pacer.toml");
    let pacer = Pacer::start_with(&dir.path().join("data"), &["--config", config.to_str().unwrap()]);
    let create = "CREATE STREAM data_demo_stream (who VARCHAR, timeepoc BIGINT, lat DOUBLE, lon DOUBLE, alt DOUBLE, batt INT, speed DOUBLE)
                    WITH (kafka_topic='race', value_format='JSON');
                  CREATE TABLE runner_status AS
                  SELECT who,
                         MIN(speed) AS min_speed, MAX(speed) AS max_speed,
                         MIN(GEO_DISTANCE(lat, lon, -33.87014, 151.211945, 'km')) AS dist_to_finish,
                         COUNT(*) AS num_events
                  FROM data_demo_stream WINDOW TUMBLING (SIZE 5 MINUTE)
                  GROUP BY who;";
    let out = pacer.sql(create);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("Stream data_demo_stream created") && said.contains("query CTAS_RUNNER_STATUS running"),
        "{said}"
    );

    let total = publish_race(&pacer);

    // The table's changelog: wait until its latest rows count every fix.
    let latest: Mutex<HashMap<(String, i64), i64>> = Mutex::default();
    pacer.wait_for_record("runner_status", |r| {
        let v = &r["value"];
        let mut latest = latest.lock().unwrap();
        latest.insert(
            (v["who"].as_str().unwrap().to_string(), v["WINDOWSTART"].as_i64().unwrap()),
            v["num_events"].as_i64().unwrap(),
        );
        latest.values().sum::<i64>() == total as i64
    });

    let mut expected: BTreeMap<(String, i64), Expected> = BTreeMap::new();
    for line in RACE.lines() {
        let fix: Value = serde_json::from_str(line).unwrap();
        let t = fix["timeepoc"].as_i64().unwrap() * 1000;
        let window = t - t.rem_euclid(300_000);
        let speed = fix["speed"].as_f64().unwrap();
        let d = km_to_finish(fix["lat"].as_f64().unwrap(), fix["lon"].as_f64().unwrap());
        let e = expected.entry((fix["who"].as_str().unwrap().to_string(), window)).or_insert(Expected {
            min_speed: f64::MAX,
            max_speed: f64::MIN,
            dist: f64::MAX,
            count: 0,
        });
        e.min_speed = e.min_speed.min(speed);
        e.max_speed = e.max_speed.max(speed);
        e.dist = e.dist.min(d);
        e.count += 1;
    }

    let (status, table) = pacer.post_sql("SELECT * FROM runner_status");
    assert_eq!(status, 200, "{table}");
    let columns: Vec<&str> = table["columns"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(columns, ["who", "min_speed", "max_speed", "dist_to_finish", "num_events", "WINDOWSTART", "WINDOWEND"]);
    let rows = table["rows"].as_array().unwrap();
    assert_eq!(rows.len(), expected.len(), "one row per runner and 5-minute window");
    for row in rows {
        let key = (row[0].as_str().unwrap().to_string(), row[5].as_i64().unwrap());
        let e = expected.get(&key).unwrap_or_else(|| panic!("unexpected window {key:?}"));
        assert_eq!(row[6].as_i64().unwrap(), key.1 + 300_000);
        assert_eq!(row[4].as_i64().unwrap(), e.count, "{key:?}");
        assert!(close(row[1].as_f64().unwrap(), e.min_speed), "{key:?} min_speed {row:?} vs {e:?}");
        assert!(close(row[2].as_f64().unwrap(), e.max_speed), "{key:?} max_speed {row:?} vs {e:?}");
        assert!(close(row[3].as_f64().unwrap(), e.dist), "{key:?} dist_to_finish {row:?} vs {e:?}");
    }

    // A pull query by key, as ksqlDB users write it.
    let (_, simon) = pacer.post_sql("SELECT who, num_events FROM runner_status WHERE who = 'simon' AND num_events > 0");
    let simon_rows = simon["rows"].as_array().unwrap();
    assert_eq!(simon_rows.len(), expected.keys().filter(|(w, _)| w == "simon").count());
    assert!(simon_rows.iter().all(|r| r[0] == "simon"));
}

#[test]
fn statements_are_checked_before_they_run() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = Pacer::start(dir.path());
    let (status, body) =
        pacer.post_sql("CREATE STREAM s (who VARCHAR, speed DOUBLE) WITH (kafka_topic='race', value_format='JSON')");
    assert_eq!((status, body["message"].as_str()), (200, Some("Stream s created")));

    let (status, body) = pacer.post_sql("SELECT who FROM s WINDOW TUMBLING (SIZE 5 FORTNIGHTS) GROUP BY who");
    assert_eq!(status, 400);
    let e = body["error"].as_str().unwrap();
    assert!(e.contains("Expected: a time unit") && e.contains("Line: 1, Column: 43"), "{e}");

    let (_, body) = pacer.post_sql("CREATE TABLE t AS SELECT who, SUM(who) AS x FROM s GROUP BY who");
    assert!(body["error"].as_str().unwrap().contains("SUM: expected a number, got STRING"), "{body}");
    let (_, body) = pacer.post_sql("CREATE TABLE t AS SELECT who, speed FROM s GROUP BY who");
    assert!(body["error"].as_str().unwrap().contains("speed: not in GROUP BY"), "{body}");
    let (_, body) = pacer.post_sql("SHOW QUERIES");
    let ids: Vec<&str> = body["rows"].as_array().unwrap().iter().map(|r| r[0].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        ["CSAS_RACE_ZONE_EVENTS", "CTAS_RACE_STATUS", "CTAS_RUNNER_STATUS"],
        "the built-in race queries, and nothing the failed statements started"
    );

    let out = pacer.sql("SELECT nope FROM s");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope: no such column in s (it has who, speed)"));
}

/// EMIT FINAL across `kill -9` on the embedded log (common::windows has the test).
#[test]
fn emit_final_survives_kill_9_without_losing_or_repeating_a_window() {
    let kills: usize = std::env::var("PACER_KILLS").ok().and_then(|k| k.parse().ok()).unwrap_or(10);
    let dir = tempfile::tempdir().unwrap();
    common::windows::emit_final_survives_kill_9(kills, || Pacer::start(dir.path()));
}

/// A stream–stream join across `kill -9` on the embedded log (common::joins has the test),
/// with small segments: whole-state checkpoints let the older ones go, and restarts from
/// what is left lose nothing.
#[test]
fn stream_stream_join_survives_kill_9_without_losing_or_repeating_a_pair() {
    let kills: usize = std::env::var("PACER_KILLS").ok().and_then(|k| k.parse().ok()).unwrap_or(10);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pacer.toml");
    std::fs::write(&config, "[log]\nsegment_bytes = 65536\n").unwrap();
    let args = ["--config", config.to_str().unwrap()];
    common::joins::stream_join_survives_kill_9(10_000, kills, true, || Pacer::start_with(dir.path(), &args));
    let state =
        // Keyed by the trip they join on, the streams' one partition is one task's.
        walkdir(dir.path()).into_iter().find(|p| p.ends_with("__query_csas_trips.p0/0")).expect("the state stream");
    let first: u64 = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.strip_suffix(".log")?.parse().ok())
        .min()
        .unwrap();
    assert!(first > 0, "checkpoints before the last whole one were dropped");
}

/// Every directory under `dir`.
fn walkdir(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(entries) = std::fs::read_dir(&out[i]) {
            out.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()));
        }
        i += 1;
    }
    out
}

/// A table–table join as it flows: every change on either side updates the joined table,
/// and a key that no longer joins is deleted from it.
#[test]
fn table_table_join_follows_both_tables() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = Pacer::start(dir.path());
    let out = pacer.sql(
        "CREATE TABLE vehicles (id VARCHAR PRIMARY KEY, model VARCHAR) WITH (kafka_topic='vehicles', value_format='JSON');
         CREATE TABLE assignments (vehicle VARCHAR PRIMARY KEY, route VARCHAR) WITH (kafka_topic='assignments', value_format='JSON');
         CREATE TABLE fleet AS SELECT v.id, v.model, a.route FROM vehicles v LEFT JOIN assignments a ON v.id = a.vehicle;",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let post = |stream: &str, records: Value| {
        assert_eq!(pacer.post(&format!("/api/v1/streams/{stream}/records"), &records).0, 200)
    };
    post(
        "vehicles",
        serde_json::json!([{"key": "b1", "value": {"model": "Citaro"}, "timestamp": 1_000},
            {"key": "b2", "value": {"model": "Enviro400"}, "timestamp": 1_001},
            {"key": "b3", "value": {"model": "Citaro"}, "timestamp": 1_002}]),
    );
    post(
        "assignments",
        serde_json::json!([{"key": "b1", "value": {"route": "7"}, "timestamp": 1_003},
            {"key": "b3", "value": {"route": "31"}, "timestamp": 1_004},
            {"key": "b9", "value": {"route": "4"}, "timestamp": 1_005}]),
    );
    let fleet = || -> BTreeMap<String, (Value, Value)> {
        let (status, body) = pacer.post_sql("SELECT id, model, route FROM fleet");
        assert_eq!(status, 200, "{body}");
        let rows = body["rows"].as_array().unwrap().iter().map(|r| r.as_array().unwrap().clone());
        rows.map(|r| (r[0].as_str().unwrap().to_string(), (r[1].clone(), r[2].clone()))).collect()
    };
    pacer.wait_for_record("fleet", |r| r["key"] == "b3" && r["value"]["route"] == "31");
    let want = |rows: &[(&str, &str, Option<&str>)]| -> BTreeMap<String, (Value, Value)> {
        rows.iter().map(|(id, model, route)| (id.to_string(), (Value::from(*model), Value::from(*route)))).collect()
    };
    assert_eq!(fleet(), want(&[("b1", "Citaro", Some("7")), ("b2", "Enviro400", None), ("b3", "Citaro", Some("31"))]));
    // Bus 3 leaves the fleet (a tombstone), bus 1 changes route, bus 2 gets one.
    post("vehicles", serde_json::json!([{"key": "b3", "value": null, "timestamp": 2_000}]));
    post(
        "assignments",
        serde_json::json!([{"key": "b1", "value": {"route": "12"}, "timestamp": 2_001},
            {"key": "b2", "value": {"route": "88"}, "timestamp": 2_002}]),
    );
    pacer.wait_for_record("fleet", |r| r["key"] == "b2" && r["value"]["route"] == "88");
    assert_eq!(fleet(), want(&[("b1", "Citaro", Some("12")), ("b2", "Enviro400", Some("88"))]));
    // What the stream of the table holds: each change once, b3's deletion a tombstone.
    let body: Value = serde_json::from_str(&pacer.get("/api/v1/streams/fleet/records?limit=100")).unwrap();
    let changes: Vec<(String, Value)> = body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["key"].as_str().unwrap().to_string(), r["value"]["route"].clone()))
        .collect();
    let expected: Vec<(String, Value)> = [
        ("b1", Value::Null),
        ("b2", Value::Null),
        ("b3", Value::Null),
        ("b1", Value::from("7")),
        ("b3", Value::from("31")),
        ("b3", Value::Null),
        ("b1", Value::from("12")),
        ("b2", Value::from("88")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(changes, expected);
}

/// Reads a push query's NDJSON answer until `rows` rows came (30 s at most).
fn push_rows(pacer: &Pacer, statement: &str, publish: impl FnOnce(), rows: usize) -> (Value, Vec<Value>) {
    use futures::StreamExt;
    let url = format!("{}/api/v1/sql", pacer.http);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let response =
            reqwest::Client::new().post(&url).json(&serde_json::json!({ "sql": statement })).send().await.unwrap();
        assert_eq!(response.headers()["content-type"], "application/x-ndjson");
        let mut body = response.bytes_stream();
        let mut text = String::new();
        let mut lines: Vec<Value> = Vec::new();
        let mut publish = Some(publish);
        let read = async {
            while lines.len() < rows + 1 {
                let chunk = body.next().await.expect("the push query ended early").unwrap();
                text.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = text.find('\n') {
                    let line: String = text.drain(..=end).collect();
                    lines.push(serde_json::from_str(&line).unwrap());
                    // The header line means the query is reading: now publish.
                    if let Some(p) = publish.take() {
                        tokio::task::block_in_place(p);
                    }
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(30), read).await.expect("push query rows within 30 s");
        let header = lines.remove(0);
        (header, lines)
    })
}

#[test]
fn push_queries_insert_into_dead_letters_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sql_file = dir.path().join("queries.sql");
    std::fs::write(
        &sql_file,
        "CREATE STREAM readings (device VARCHAR KEY, temp DOUBLE) WITH (kafka_topic='readings', value_format='JSON');
         CREATE STREAM hot AS SELECT device, temp, temp * 9 / 5 + 32 AS fahrenheit FROM readings WHERE temp > 30;
         CREATE STREAM alerts (device VARCHAR, fahrenheit DOUBLE) WITH (kafka_topic='alerts');
         INSERT INTO alerts SELECT device, fahrenheit FROM hot WHERE fahrenheit > 100;",
    )
    .unwrap();
    let config = dir.path().join("pacer.toml");
    std::fs::write(&config, format!("[sql]\nfile = {:?}\n", sql_file.file_name().unwrap())).unwrap();
    let data = dir.path().join("data");
    let mut pacer = Pacer::start_with(&data, &["--config", config.to_str().unwrap()]);
    let produce = |pacer: &Pacer, device: &str, lines: &str| {
        let mut child = Command::new(common::PACER)
            .args(["produce", "readings", "--key", device, "--server", &pacer.http])
            .stdin(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(lines.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success());
    };

    // A push query sees rows published after it started, computed per row.
    let (header, rows) = push_rows(
        &pacer,
        "SELECT device, fahrenheit FROM hot EMIT CHANGES LIMIT 2",
        || produce(&pacer, "g1", "{\"temp\": 20}\n{\"temp\": 35}\n{\"temp\": \"hot\"}\n{\"temp\": 40}\n"),
        2,
    );
    assert_eq!(header["columns"], serde_json::json!(["device", "fahrenheit"]));
    assert_eq!(
        rows,
        [
            serde_json::json!({"device": "g1", "fahrenheit": 95.0}),
            serde_json::json!({"device": "g1", "fahrenheit": 104.0})
        ]
    );

    // INSERT INTO fed alerts; the undecodable record went to the dead letters with the reason.
    let alert = pacer.wait_for_record("alerts", |r| r["value"]["device"] == "g1");
    assert_eq!(alert["value"]["fahrenheit"], 104.0);
    let dead = pacer.wait_for_record("_dead_letters", |r| r["value"]["query"] == "CSAS_HOT");
    assert_eq!(dead["value"]["reason"], "field temp: expected DOUBLE, got \"hot\"");
    assert_eq!(dead["value"]["offset"], 2);

    let (_, queries) = pacer.post_sql("SHOW QUERIES");
    let ids: Vec<&str> = queries["rows"].as_array().unwrap().iter().map(|r| r[0].as_str().unwrap()).collect();
    assert_eq!(ids, ["CSAS_HOT", "INSERTQUERY_1"]);
    assert!(queries["rows"].as_array().unwrap().iter().all(|r| r[1] == "RUNNING"));
    let (status, dropped) = pacer.post_sql("DROP STREAM hot");
    assert_eq!(status, 400);
    assert!(dropped["error"].as_str().unwrap().contains("TERMINATE CSAS_HOT first"), "{dropped}");
    let (_, described) = pacer.post_sql("DESCRIBE hot");
    assert_eq!(described["rows"][2], serde_json::json!(["fahrenheit", "DOUBLE", false]));

    // After a restart the catalog is back (the SQL file does not start anything twice) and
    // the queries continue where they were.
    drop(pacer);
    pacer = Pacer::start_with(&data, &["--config", config.to_str().unwrap()]);
    let (_, queries) = pacer.post_sql("SHOW QUERIES");
    assert_eq!(queries["rows"].as_array().unwrap().len(), 2);
    produce(&pacer, "g2", "{\"temp\": 50}\n");
    let alert = pacer.wait_for_record("alerts", |r| r["value"]["device"] == "g2");
    assert_eq!(alert["value"]["fahrenheit"], 122.0);
    let stored: Value = serde_json::from_str(&pacer.get("/api/v1/streams/hot/records?limit=100")).unwrap();
    let temps: Vec<f64> =
        stored["records"].as_array().unwrap().iter().map(|r| r["value"]["temp"].as_f64().unwrap()).collect();
    assert_eq!(temps, [35.0, 40.0, 50.0], "each input row once, across the restart");

    let (_, terminated) = pacer.post_sql("TERMINATE INSERTQUERY_1");
    assert_eq!(terminated["message"], "terminated INSERTQUERY_1");
}

/// SQL II: in history queries a stream joined with a table (LEFT and INNER), Flink's TUMBLE
/// over a column's event time, and CTEs joining a windowed aggregate with an aggregate of
/// it; then the stream–table join as a persistent query, following the table as it changes.
/// Each answer checked against the rows computed here.
#[test]
fn joins_and_window_table_functions_in_history_and_continuous_queries() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = Pacer::start(dir.path());
    for statement in [
        "CREATE STREAM readings (sensor VARCHAR, ts BIGINT, temp DOUBLE) WITH (kafka_topic='readings', value_format='JSON')",
        "CREATE TABLE sensors (sensor VARCHAR PRIMARY KEY, site VARCHAR) WITH (kafka_topic='sensors', value_format='JSON')",
    ] {
        assert_eq!(pacer.post_sql(statement).0, 200);
    }
    // Three sensors every 20 s for 200 s; the record timestamps are not the readings' times,
    // and the log holds them newest first: history has no late records.
    let t0: i64 = 1_795_000_000_000 / 60_000 * 60_000;
    let temp = |s: i64, k: i64| 20.0 + s as f64 * 0.5 + ((k * 7 + s * 3) % 5) as f64;
    let mut readings = Vec::new();
    for k in (0..10).rev() {
        for s in 1..=3 {
            readings.push(serde_json::json!({"key": format!("s{s}"), "timestamp": 1_000 + k,
                "value": {"sensor": format!("s{s}"), "ts": t0 + k * 20_000, "temp": temp(s, k)}}));
        }
    }
    assert_eq!(pacer.post("/api/v1/streams/readings/records", &Value::from(readings)).0, 200);
    let sites =
        serde_json::json!([{"key": "s1", "value": {"site": "north"}}, {"key": "s2", "value": {"site": "south"}}]);
    assert_eq!(pacer.post("/api/v1/streams/sensors/records", &sites).0, 200);
    let rows = |sql: &str| -> Vec<Vec<Value>> {
        let (status, body) = pacer.post_sql(sql);
        assert_eq!(status, 200, "{sql}: {body}");
        body["rows"].as_array().unwrap().iter().map(|r| r.as_array().unwrap().clone()).collect()
    };

    // Enrichment: every reading, with its sensor's site where the table has one.
    let joined = rows("SELECT r.sensor, s.site, r.temp FROM readings r LEFT JOIN sensors s ON r.sensor = s.sensor");
    assert_eq!(joined.len(), 30);
    for row in &joined {
        let site = match row[0].as_str().unwrap() {
            "s1" => Value::from("north"),
            "s2" => Value::from("south"),
            _ => Value::Null,
        };
        assert_eq!(row[1], site, "{row:?}");
    }
    let inner = rows("SELECT readings.sensor, site FROM readings JOIN sensors ON readings.sensor = sensors.sensor");
    assert_eq!(inner.len(), 20, "s3 has no site: an inner join leaves it out");

    // One-minute windows of the readings' own time.
    let mut expected: BTreeMap<(i64, String), (f64, i64)> = BTreeMap::new();
    for k in 0..10 {
        for s in 1..=3 {
            let start = (t0 + k * 20_000) / 60_000 * 60_000;
            let e = expected.entry((start, format!("s{s}"))).or_default();
            e.0 += temp(s, k);
            e.1 += 1;
        }
    }
    let windows = rows(
        "SELECT window_start, window_end, sensor, AVG(temp) AS avg_temp, COUNT(*) AS n
         FROM TABLE(TUMBLE(TABLE readings, DESCRIPTOR(ts), INTERVAL '1' MINUTE))
         GROUP BY window_start, window_end, sensor",
    );
    assert_eq!(windows.len(), expected.len());
    for row in &windows {
        let start = row[0].as_i64().unwrap();
        assert_eq!(row[1].as_i64().unwrap(), start + 60_000);
        let (sum, n) = expected[&(start, row[2].as_str().unwrap().to_string())];
        assert!((row[3].as_f64().unwrap() - sum / n as f64).abs() < 1e-9, "{row:?}");
        assert_eq!(row[4], n);
    }

    // The hottest sensor of each window: a windowed aggregate joined with its own maximum.
    let hottest = rows(
        "WITH w AS (SELECT window_start, window_end, sensor, AVG(temp) AS avg_temp
                    FROM TABLE(TUMBLE(TABLE readings, DESCRIPTOR(ts), INTERVAL '1' MINUTE))
                    GROUP BY window_start, window_end, sensor),
              top AS (SELECT window_start, MAX(avg_temp) AS hottest FROM w GROUP BY window_start)
         SELECT w.window_start, w.sensor, t.hottest FROM w JOIN top t
           ON w.window_start = t.window_start AND w.avg_temp = t.hottest",
    );
    let mut by_window: BTreeMap<i64, (f64, Vec<String>)> = BTreeMap::new();
    for ((start, sensor), (sum, n)) in &expected {
        let avg = sum / *n as f64;
        let best = by_window.entry(*start).or_insert((f64::MIN, Vec::new()));
        if avg > best.0 {
            *best = (avg, vec![sensor.clone()]);
        } else if avg == best.0 {
            best.1.push(sensor.clone());
        }
    }
    let mut got: BTreeMap<i64, (f64, Vec<String>)> = BTreeMap::new();
    for row in &hottest {
        let e = got.entry(row[0].as_i64().unwrap()).or_insert((row[2].as_f64().unwrap(), Vec::new()));
        e.1.push(row[1].as_str().unwrap().to_string());
        e.1.sort();
    }
    assert_eq!(got, by_window);

    // Mistakes are named before anything runs.
    let error = |sql: &str| {
        let (status, body) = pacer.post_sql(sql);
        assert_eq!(status, 400, "{sql}: {body}");
        body["error"].as_str().unwrap().to_string()
    };
    let e = error("SELECT sensor FROM readings r JOIN sensors s ON r.sensor = s.sensor");
    assert!(e.contains("sensor: ambiguous, qualify it (r.sensor or s.sensor)"), "{e}");
    let e = error("SELECT r.temp FROM readings r JOIN sensors s ON sensor = sensor");
    assert!(e.contains("sensor: both sides of the join have it; qualify it (r.sensor or s.sensor)"), "{e}");
    let e = error("SELECT r.temp FROM readings r JOIN sensors s ON r.temp > 1");
    assert!(e.contains("joins pair rows by equal columns"), "{e}");
    let e = error("SELECT r.nope FROM readings r JOIN sensors s ON r.sensor = s.sensor");
    assert!(e.contains("r.nope: no such column"), "{e}");
    let e = error("SELECT window_start, COUNT(*) FROM TABLE(TUMBLE(TABLE readings, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) GROUP BY sensor");
    assert!(e.contains("GROUP BY window_start, window_end"), "{e}");
    let e = error("CREATE STREAM x AS WITH c AS (SELECT * FROM readings) SELECT * FROM c");
    assert!(e.contains("without windows, WITH runs in pull queries"), "{e}");
    let e = error("CREATE STREAM x AS SELECT r.temp FROM readings r JOIN sensors s ON r.temp = s.site");
    assert!(e.contains("by the table's PRIMARY KEY (s.sensor = …)"), "{e}");
    let e = error("CREATE STREAM x AS SELECT r.temp FROM readings r JOIN readings q ON r.sensor = q.sensor");
    assert!(e.contains("readings JOIN readings: a stream–stream join needs WITHIN"), "{e}");
    let e = error("CREATE STREAM x AS SELECT r.temp FROM readings r FULL JOIN sensors s ON r.sensor = s.sensor");
    assert!(e.contains("sensors: a stream–table join is INNER or LEFT"), "{e}");

    // The same enrichment as a persistent query: every reading with its sensor's site as the
    // table has it when the reading comes, a site added later included.
    let (status, body) = pacer.post_sql(
        "CREATE STREAM sited AS SELECT r.sensor, s.site, r.temp FROM readings r LEFT JOIN sensors s ON r.sensor = s.sensor",
    );
    assert_eq!(status, 200, "{body}");
    pacer.wait_for_record("sited", |r| r["value"]["sensor"] == "s3" && r["value"]["temp"] == temp(3, 9));
    let body: Value = serde_json::from_str(&pacer.get("/api/v1/streams/sited/records?limit=100")).unwrap();
    let sited = body["records"].as_array().unwrap();
    assert_eq!(sited.len(), 30);
    let sites = |sensor: &str| -> Vec<Value> {
        sited.iter().filter(|r| r["value"]["sensor"] == sensor).map(|r| r["value"]["site"].clone()).collect()
    };
    assert_eq!(sites("s1"), vec![Value::from("north"); 10]);
    assert_eq!(sites("s3"), vec![Value::Null; 10]);
    let east = serde_json::json!([{"key": "s3", "value": {"site": "east"}}]);
    assert_eq!(pacer.post("/api/v1/streams/sensors/records", &east).0, 200);
    // The table is followed as it changes: a reading of s3 after the change finds its site.
    let mut reading = 99.0;
    loop {
        let later = serde_json::json!([{"key": "s3", "timestamp": 2_000,
            "value": {"sensor": "s3", "ts": t0 + 200_000, "temp": reading}}]);
        assert_eq!(pacer.post("/api/v1/streams/readings/records", &later).0, 200);
        let row = pacer.wait_for_record("sited", |r| r["value"]["temp"] == reading);
        if row["value"]["site"] == "east" {
            break;
        }
        // Processed before the table's change reached the join: the next one sees it.
        reading += 0.25;
        assert!(reading < 110.0, "the join never saw the table's change");
    }
}

/// History as files other tools read: `pacer sql --format gpx` read back with the gpx crate
/// (a track per runner, every fix with its time and elevation), GeoJSON, CSV, and Parquet
/// read by DuckDB.
#[test]
fn history_exports_as_gpx_geojson_csv_and_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = Pacer::start(dir.path());
    let fix = |who: &str, i: i64| {
        format!(
            r#"{{"who":"{who}","timeepoc":{},"lat":{},"lon":151.21,"alt":{},"speed":10}}"#,
            1_558_212_482 + i,
            -33.87 + i as f64 * 0.0001,
            20 + i
        )
    };
    for who in ["ann", "bob"] {
        let count = if who == "ann" { 5 } else { 3 };
        pacer.mosquitto_pub_lines(&format!("race/{who}"), 1, &(0..count).map(|i| fix(who, i)).collect::<Vec<_>>());
    }
    let query = "SELECT who, ROWTIME AS ts, lat, lon, alt FROM race";
    let export = |format: &str, statement: &str| {
        let out = Command::new(common::PACER)
            .args(["sql", "--server", &pacer.http, "--format", format, statement])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (ok, text, err) = export("gpx", query);
    assert!(ok, "{err}");
    let read = gpx::read(text.as_bytes()).unwrap();
    let tracks: Vec<(String, usize)> = read
        .tracks
        .iter()
        .map(|t| (t.name.clone().unwrap(), t.segments.iter().map(|s| s.points.len()).sum()))
        .collect();
    assert_eq!(tracks, [("ann".to_string(), 5), ("bob".to_string(), 3)]);
    let last = read.tracks[0].segments[0].points.last().unwrap();
    assert!((last.point().y() - (-33.87 + 0.0004)).abs() < 1e-6);
    assert_eq!(last.elevation, Some(24.0));
    assert_eq!(last.time.unwrap().format().unwrap(), "2019-05-18T20:48:06.000000000Z");

    let (ok, text, err) = export("geojson", query);
    assert!(ok, "{err}");
    let geojson: Value = serde_json::from_str(&text).unwrap();
    let features = geojson["features"].as_array().unwrap();
    assert_eq!(features.len(), 8);
    assert_eq!(features[0]["geometry"]["coordinates"], serde_json::json!([151.21, -33.87]));
    assert_eq!(features[0]["properties"]["who"], "ann");

    let (ok, text, err) = export("csv", query);
    assert!(ok, "{err}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "who,ts,lat,lon,alt");
    assert_eq!(lines.len(), 9);
    assert_eq!(lines[1], "ann,1558212482000,-33.87,151.21,20.0");

    let (ok, _, err) = export("geojson", "SELECT who FROM race");
    assert!(!ok && err.contains("GeoJSON needs a lat and a lon column; the result has who"), "{err}");

    // Parquet, as DuckDB reads it: the times typed as timestamps, the numbers as numbers.
    let out = Command::new(common::PACER)
        .args(["sql", "--server", &pacer.http, "--format", "parquet", query])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let file = dir.path().join("race.parquet");
    std::fs::write(&file, &out.stdout).unwrap();
    let script = format!(
        "import duckdb\nfor row in duckdb.sql(\"SELECT who, count(*), epoch_ms(max(ts)), round(max(lat), 4), sum(alt), typeof(max(ts)) \
         FROM '{}' GROUP BY who ORDER BY who\").fetchall(): print(row)",
        file.display()
    );
    let duckdb = Command::new("python3").args(["-c", &script]).output().expect("python3");
    assert!(duckdb.status.success(), "DuckDB (pip install duckdb): {}", String::from_utf8_lossy(&duckdb.stderr));
    assert_eq!(
        String::from_utf8_lossy(&duckdb.stdout),
        "('ann', 5, 1558212486000, -33.8696, 110.0, 'TIMESTAMP WITH TIME ZONE')\n\
         ('bob', 3, 1558212484000, -33.8698, 63.0, 'TIMESTAMP WITH TIME ZONE')\n"
    );
}

/// `[[history]]` policies: a stream downsampled from another (a row per device and minute,
/// the aggregates the config names) and kept for its own time; a policy missing a part is
/// refused at start, naming the file and the entry.
#[test]
fn history_policies_downsample_streams() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pacer.toml");
    std::fs::write(
        &config,
        r#"
[[history]]
stream = "race"
keep = "7d"

[[history]]
stream = "race_1m"
from = "race"
every = "1m"
keep = "90d"
aggregate = { speed = "AVG", alt = "MAX" }
"#,
    )
    .unwrap();
    let pacer = Pacer::start_with(&dir.path().join("data"), &["--config", config.to_str().unwrap()]);
    let t0: i64 = 1_558_212_480; // a whole minute
    let fix = |who: &str, i: i64| (t0 + i * 15, (i % 7) as f64 + if who == "ann" { 10.0 } else { 12.5 }, 20 + i);
    let mut expected: BTreeMap<(String, i64), (f64, i64, i64)> = BTreeMap::new();
    // In time order: a minute is written once it has passed, and later fixes for it are late.
    for i in 0..14 {
        for who in ["ann", "bob"] {
            let (t, speed, alt) = fix(who, i);
            let minute = t * 1000 / 60_000 * 60_000;
            if minute + 60_000 <= (t0 + 13 * 15) * 1000 {
                let e = expected.entry((who.to_string(), minute)).or_insert((0.0, 0, i64::MIN));
                *e = (e.0 + speed, e.1 + 1, e.2.max(alt));
            }
            let fix =
                format!(r#"{{"who":"{who}","timeepoc":{t},"lat":-33.87,"lon":151.21,"alt":{alt},"speed":{speed}}}"#);
            pacer.mosquitto_pub(&format!("race/{who}"), 1, &fix);
        }
    }
    assert_eq!(expected.len(), 6, "three whole minutes of two runners");
    let seen: Mutex<BTreeMap<(String, i64), Value>> = Mutex::default();
    pacer.wait_for_record("race_1m", |r| {
        let v = &r["value"];
        let mut seen = seen.lock().unwrap();
        seen.insert((v["key"].as_str().unwrap().to_string(), v["WINDOWSTART"].as_i64().unwrap()), v.clone());
        expected.keys().all(|k| seen.contains_key(k))
    });
    let seen = seen.into_inner().unwrap();
    for (key, (sum, n, alt)) in &expected {
        let row = &seen[key];
        assert!(close(row["speed"].as_f64().unwrap(), sum / *n as f64), "{key:?}: {row}");
        assert_eq!(row["alt"].as_f64(), Some(*alt as f64), "{key:?}: {row}");
    }

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[history]]\nstream = \"race_5m\"\nfrom = \"race\"\naggregate = { speed = \"AVG\" }\n")
        .unwrap();
    let out = Pacer::up()
        .args(["--data-dir", dir.path().join("other").to_str().unwrap(), "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("bad.toml: [[history]] #1 (stream \"race_5m\"): a downsampled stream names from, every"),
        "{err}"
    );
}

/// `[[history]] parquet = true`: the stream moves into Parquet segments as it arrives;
/// history queries over segments and log together count every record once (also after a
/// kill -9 and restart), and DuckDB reads the segments as they are.
#[test]
fn history_in_parquet_segments_answers_queries_and_duckdb() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pacer.toml");
    std::fs::write(
        &config,
        "[[history]]\nstream = \"readings\"\nparquet = true\nparquet_every = \"200ms\"\nparquet_rows = 700\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let args = ["--config", config.to_str().unwrap()];
    let pacer = Pacer::start_with(&data, &args);
    let t0: i64 = 1_790_000_040_000; // a whole minute
    let reading = |i: i64| {
        let device = format!("g-{}", i % 6);
        let temp = ((i * 7919) % 1000) as f64 / 10.0 - 20.0;
        (device, t0 + i * 250, temp)
    };
    let post = |from: i64, to: i64| {
        let records: Vec<Value> = (from..to)
            .map(|i| {
                let (device, t, temp) = reading(i);
                serde_json::json!({"key": device, "timestamp": t, "value": {"device": device, "temp": temp}})
            })
            .collect();
        assert_eq!(pacer.post("/api/v1/streams/readings/records", &Value::from(records)).0, 200);
    };
    let segments = data.join(".history/readings");
    // Waits until the segments hold `n` records: their positions add up to it.
    let compacted = |n: u64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let covered: u64 = std::fs::read_to_string(segments.join("positions"))
                .unwrap_or_default()
                .trim()
                .split(',')
                .filter_map(|p| p.split_once(':')?.1.parse::<u64>().ok())
                .sum();
            if covered >= n {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "segments hold {covered} of {n} records after 60 s");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    post(0, 2000);
    compacted(2000);
    let (status, body) = pacer.post_sql(
        "CREATE STREAM readings (device VARCHAR, temp DOUBLE) WITH (kafka_topic='readings', value_format='JSON');",
    );
    assert_eq!(status, 200, "{body}");
    post(2000, 2600); // some of these only the log may hold when the queries run

    let mut expected: BTreeMap<(String, i64), (i64, f64, f64, f64)> = BTreeMap::new();
    for i in 0..2600 {
        let (device, t, temp) = reading(i);
        let e = expected.entry((device, t / 60_000 * 60_000)).or_insert((0, 0.0, f64::MAX, f64::MIN));
        *e = (e.0 + 1, e.1 + temp, e.2.min(temp), e.3.max(temp));
    }
    let hot = (0..2600).filter(|&i| reading(i).2 > 60.0).count();
    let query = "SELECT device, DATE_BIN(INTERVAL '1' MINUTE, ROWTIME) AS minute, COUNT(*) AS n, AVG(temp) AS a, \
                 MIN(temp) AS lo, MAX(temp) AS hi FROM readings GROUP BY device, DATE_BIN(INTERVAL '1' MINUTE, ROWTIME)";
    let check = |pacer: &Pacer| {
        let (status, body) = pacer.post_sql(query);
        assert_eq!(status, 200, "{body}");
        let rows = body["rows"].as_array().unwrap();
        assert_eq!(rows.len(), expected.len(), "{body}");
        for row in rows {
            let key = (row[0].as_str().unwrap().to_string(), row[1].as_i64().unwrap());
            let (n, sum, lo, hi) = expected[&key];
            assert_eq!(row[2].as_i64(), Some(n), "{key:?}: {row}");
            assert!(close(row[3].as_f64().unwrap(), sum / n as f64), "{key:?}: {row}");
            assert_eq!((row[4].as_f64(), row[5].as_f64()), (Some(lo), Some(hi)), "{key:?}: {row}");
        }
        // A query that reads rows: every record once, from the segments and the log.
        let (status, body) = pacer.post_sql("SELECT device, temp FROM readings WHERE temp > 60 LIMIT 100000");
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["rows"].as_array().unwrap().len(), hot);
    };
    check(&pacer);

    compacted(2600);
    // The streams API shows what the segments hold.
    let streams: Value = serde_json::from_str(&pacer.get("/api/v1/streams")).unwrap();
    let readings = streams["streams"].as_array().unwrap().iter().find(|s| s["name"] == "readings").unwrap();
    let history = &readings["history"];
    assert_eq!(history["rows"], 2600, "{readings}");
    assert!(history["segments"].as_u64().unwrap() >= 4, "{readings}");
    assert_eq!(history["first_timestamp"], t0, "{readings}");
    assert_eq!(history["last_timestamp"], reading(2599).1, "{readings}");
    assert!(history["bytes"].as_u64().unwrap() > 0, "{readings}");
    let script = format!(
        "import duckdb\nprint(duckdb.sql(\"SELECT count(*), count(DISTINCT ROWKEY), round(sum(temp), 3), typeof(max(ROWTIME)), \
         epoch_ms(min(ROWTIME)) FROM '{}/*.parquet'\").fetchall()[0])",
        segments.display()
    );
    let duckdb = Command::new("python3").args(["-c", &script]).output().expect("python3");
    assert!(duckdb.status.success(), "DuckDB (pip install duckdb): {}", String::from_utf8_lossy(&duckdb.stderr));
    let sum: f64 = (0..2600).map(|i| reading(i).2).sum();
    assert_eq!(
        String::from_utf8_lossy(&duckdb.stdout).trim(),
        format!("(2600, 6, {:?}, 'TIMESTAMP WITH TIME ZONE', {t0})", (sum * 1000.0).round() / 1000.0)
    );

    drop(pacer); // SIGKILL
    let pacer = Pacer::start_with(&data, &args);
    check(&pacer);
}
