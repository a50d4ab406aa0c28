//! Streams from the outside: `pacer produce`, `pacer tail --from/--key`, and the HTTP
//! records API, against a real `pacer up`.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{Pacer, PACER};
use serde_json::{json, Value};

fn produce(pacer: &Pacer, stream: &str, key: &str, stdin: &str) -> std::process::Output {
    let mut child = Command::new(PACER)
        .args(["produce", stream, "--key", key, "--server", &pacer.http])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn tail(pacer: &Pacer, args: &[&str]) -> Vec<Value> {
    let out = Command::new(PACER).arg("tail").args(args).args(["--server", &pacer.http]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn produce_then_tail_by_key_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = Pacer::start(dir.path());
    let out = produce(&pacer, "readings", "gen-1", "{\"fuel\":900}\n{\"fuel\":880}\n\n{\"fuel\":860}\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("3 records appended to readings"));
    assert!(produce(&pacer, "readings", "gen-2", "{\"fuel\":100}\n").status.success());

    let gen2 = tail(&pacer, &["readings", "--from-beginning", "--key", "gen-2", "-n", "1"]);
    assert_eq!(gen2[0]["value"]["fuel"], 100);
    let all = tail(&pacer, &["readings", "--from-beginning", "-n", "4"]);
    let fuel: Vec<_> = all.iter().map(|r| r["value"]["fuel"].as_i64().unwrap()).collect();
    assert_eq!(fuel, [900, 880, 860, 100]);

    // A line that is not JSON stops the producer with its line number; what came before stays.
    let out = produce(&pacer, "readings", "gen-3", "{\"fuel\":1}\nfuel=2\n");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stdin line 2: not JSON"), "{err}");
}

#[test]
fn the_records_api_appends_and_reads_time_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = Pacer::start(dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = format!("{}/api/v1/streams/bus/records", pacer.http);
    let body = json!([
        {"key": "bus-1", "value": {"lat": 51.50}, "timestamp": "2026-11-22T08:00:00Z"},
        {"key": "bus-2", "value": {"lat": 51.51}, "timestamp": "2026-11-22T08:01:00Z"},
        {"key": "bus-1", "value": {"lat": 51.52}, "timestamp": 1795334520000i64},
    ]);
    let (status, answer): (u16, Value) = rt.block_on(async {
        let r = reqwest::Client::new().post(&url).json(&body).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    });
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["appended"].as_array().unwrap().len(), 3);

    let get = |query: &str| -> (u16, Value) {
        rt.block_on(async {
            let r = reqwest::get(format!("{url}?{query}")).await.unwrap();
            (r.status().as_u16(), r.json().await.unwrap())
        })
    };
    let (_, range) = get("from=2026-11-22T08:00:30Z&to=2026-11-22T08:02:00Z");
    let lats: Vec<_> =
        range["records"].as_array().unwrap().iter().map(|r| r["value"]["lat"].as_f64().unwrap()).collect();
    assert_eq!(lats, [51.51, 51.52]);
    let (_, bus1) = get("key=bus-1&limit=1");
    assert_eq!(bus1["records"].as_array().unwrap().len(), 1);
    assert_eq!(bus1["records"][0]["timestamp"], 1_795_334_400_000i64);

    let (_, everything) = get("from=0");
    assert_eq!(everything["records"].as_array().unwrap().len(), 3);
    let (status, err) = rt.block_on(async {
        let r = reqwest::get(format!("{}/api/v1/streams/nope/records", pacer.http)).await.unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    });
    assert_eq!((status, err["error"].as_str().unwrap()), (404, "no stream named \"nope\""));
    let (status, err) = get("from=last-tuesday");
    assert_eq!(status, 400);
    assert!(err["error"].as_str().unwrap().contains("RFC 3339"), "{err}");

    // pacer tail --from starts at the first record at or after that time.
    let from = tail(&pacer, &["bus", "--from", "2026-11-22T08:00:30Z", "-n", "2"]);
    assert_eq!(from[0]["value"]["lat"], 51.51);

    let streams: Value = serde_json::from_str(&pacer.get("/api/v1/streams")).unwrap();
    let bus = streams["streams"].as_array().unwrap().iter().find(|s| s["name"] == "bus").unwrap().clone();
    assert_eq!(bus["records"], 3);
    assert_eq!(bus["first_timestamp"], 1_795_334_400_000i64);
    assert_eq!(bus["last_timestamp"], 1_795_334_520_000i64);
}

#[test]
fn a_pasted_confluent_topic_regex_list_routes_messages_to_its_streams() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pacer.toml");
    std::fs::write(
        &config,
        r#"
[[ingest]]
topic_regex_list = "emergency_generators:emergency_generators/.*, temps:.*/temperature"
key = "{clientid}"
timestamp_field = "ts"
timestamp_unit = "iso8601"
"#,
    )
    .unwrap();
    let pacer = Pacer::start_with(&dir.path().join("data"), &["--config", config.to_str().unwrap()]);
    pacer.mosquitto_pub("emergency_generators/gen-7", 1, r#"{"fuel":420,"ts":"2026-11-22T08:00:00Z"}"#);
    pacer.mosquitto_pub("site/3/temperature", 1, r#"{"c":21.5,"ts":"2026-11-22T08:00:01+01:00"}"#);

    let generators = tail(&pacer, &["emergency_generators", "--from-beginning", "-n", "1"]);
    assert_eq!(generators[0]["value"]["fuel"], 420);
    assert_eq!(generators[0]["key"], "skeleton-test");
    assert_eq!(generators[0]["timestamp"], 1_795_334_400_000i64);
    let temps = tail(&pacer, &["temps", "--from-beginning", "-n", "1"]);
    assert_eq!(temps[0]["timestamp"], 1_795_334_400_000i64 - 3_600_000 + 1000);
}
