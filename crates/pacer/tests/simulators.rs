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

/// Every record of `stream` (at most 10,000).
fn records(pacer: &Pacer, stream: &str) -> Vec<Value> {
    let body: Value =
        serde_json::from_str(&pacer.get(&format!("/api/v1/streams/{stream}/records?limit=10000"))).unwrap();
    body["records"].as_array().unwrap().clone()
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
        for field in [
            "vin",
            "speed",
            "odometer",
            "soc",
            "elevation",
            "heading",
            "accuracy",
            "power",
            "shift_state",
            "range",
            "est_battery_range",
            "gps_as_of",
            "timestamp",
        ] {
            assert!(!r["value"][field].is_null(), "{field} in {}", r["value"]);
        }
        *reports.entry(key.to_string()).or_default() += 1;
    }
    assert_eq!(reports.len(), 5);
    for (vehicle, count) in &reports {
        pacer.wait_for_record("vehicle_status", |r| r["key"] == vehicle.as_str() && r["value"]["reports"] == *count);
    }
}
