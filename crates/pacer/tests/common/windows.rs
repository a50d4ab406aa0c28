//! EMIT FINAL under fire, for either log backend: a windowed aggregation and a query whose
//! closed windows go through WITH and a join are killed with SIGKILL at random moments while
//! they work through their input; every closed window comes out exactly once, with the values
//! an uninterrupted run gives.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use serde_json::Value;

use super::Pacer;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1e-12)
}

/// EMIT FINAL across `kill -9`: with the query killed at random moments while it works
/// through its input, every closed window is emitted exactly once, with the values an
/// uninterrupted run gives.
pub fn emit_final_survives_kill_9(kills: usize, start: impl Fn() -> Pacer) {
    const DEVICES: i64 = 40;
    const FIXES: i64 = 500;
    const BASE: i64 = 28_333_333 * 60_000; // a whole minute

    let pacer = start();
    let mut lines = String::new();
    let mut expected: BTreeMap<(String, i64), (i64, f64, f64)> = BTreeMap::new();
    for i in 0..FIXES {
        for d in 0..DEVICES {
            let (dev, ts, speed) = (format!("dev-{d}"), BASE + i * 1000, ((d * 7 + i * 13) % 50) as f64 + 0.5);
            lines.push_str(&serde_json::json!({"dev": dev, "ts": ts, "speed": speed}).to_string());
            lines.push('\n');
            let window = ts - ts.rem_euclid(60_000);
            if window + 60_000 <= BASE + (FIXES - 1) * 1000 {
                let e = expected.entry((dev, window)).or_insert((0, f64::MIN, 0.0));
                *e = (e.0 + 1, e.1.max(speed), e.2 + speed);
            }
        }
    }
    pacer.produce("gen", None, &lines);

    let out = pacer.sql(
        "CREATE STREAM gen (dev VARCHAR, ts BIGINT, speed DOUBLE) WITH (kafka_topic='gen', value_format='JSON', timestamp='ts');
         CREATE TABLE per_minute AS SELECT dev, COUNT(*) AS n, MAX(speed) AS top, SUM(speed) AS total FROM gen
         WINDOW TUMBLING (SIZE 1 MINUTE, GRACE PERIOD 0 SECONDS) GROUP BY dev EMIT FINAL;
         CREATE STREAM leaders AS
         WITH m AS (SELECT window_start, window_end, dev, MAX(speed) AS top
                    FROM TABLE(TUMBLE(TABLE gen, DESCRIPTOR(ts), INTERVAL '1' MINUTE))
                    GROUP BY window_start, window_end, dev),
              best AS (SELECT window_start, MAX(top) AS fastest FROM m GROUP BY window_start)
         SELECT m.window_start, m.dev, m.top FROM m JOIN best b ON m.window_start = b.window_start AND m.top = b.fastest;",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pacer = super::kill_at_random(pacer, kills, 0, 250, start);

    let seen: Mutex<HashMap<(String, i64), usize>> = Mutex::default();
    pacer.wait_for_record("per_minute", |r| {
        let v = &r["value"];
        let mut seen = seen.lock().unwrap();
        *seen.entry((v["dev"].as_str().unwrap().to_string(), v["WINDOWSTART"].as_i64().unwrap())).or_default() += 1;
        expected.keys().all(|k| seen.contains_key(k))
    });
    let stored: Value = serde_json::from_str(&pacer.get("/api/v1/streams/per_minute/records?limit=100000")).unwrap();
    let rows = stored["records"].as_array().unwrap();
    let mut emitted: HashMap<(String, i64), Vec<&Value>> = HashMap::new();
    for r in rows {
        let v = &r["value"];
        emitted
            .entry((v["dev"].as_str().unwrap().to_string(), v["WINDOWSTART"].as_i64().unwrap()))
            .or_default()
            .push(v);
    }
    for (key, (n, top, total)) in &expected {
        let got = emitted.get(key).unwrap_or_else(|| panic!("window {key:?} lost"));
        assert_eq!(got.len(), 1, "window {key:?} emitted {} times: {got:?}", got.len());
        let v = got[0];
        assert_eq!(v["n"].as_i64(), Some(*n), "{key:?}");
        assert_eq!(v["top"].as_f64(), Some(*top), "{key:?}");
        assert!(close(v["total"].as_f64().unwrap(), *total), "{key:?}");
    }
    // Windows still open when the input ended may close later by the idle clock, once each.
    assert!(emitted.values().all(|v| v.len() == 1), "a window was emitted twice");

    // The query with WITH and a join runs each closed window through its rest once: the
    // fastest device(s) of every minute, none lost, none twice. (Its windows close 5 s of
    // event time after their end.)
    let mut fastest: BTreeMap<i64, (f64, Vec<String>)> = BTreeMap::new();
    for ((dev, window), (_, top, _)) in &expected {
        if window + 65_000 > BASE + (FIXES - 1) * 1000 {
            continue;
        }
        let best = fastest.entry(*window).or_insert((f64::MIN, Vec::new()));
        if *top > best.0 {
            *best = (*top, vec![dev.clone()]);
        } else if *top == best.0 {
            best.1.push(dev.clone());
        }
    }
    let last_window = *fastest.keys().last().unwrap();
    // Every leader of the last window has arrived (on Kafka they may sit in two partitions).
    let last_leaders = Mutex::new(std::collections::HashSet::new());
    pacer.wait_for_record("leaders", |r| {
        if r["value"]["window_start"] == last_window {
            last_leaders.lock().unwrap().insert(r["value"]["dev"].to_string());
        }
        last_leaders.lock().unwrap().len() >= fastest[&last_window].1.len()
    });
    let stored: Value = serde_json::from_str(&pacer.get("/api/v1/streams/leaders/records?limit=100000")).unwrap();
    let mut leaders: BTreeMap<i64, (f64, Vec<String>)> = BTreeMap::new();
    for r in stored["records"].as_array().unwrap() {
        let v = &r["value"];
        let window = v["window_start"].as_i64().unwrap();
        let entry = leaders.entry(window).or_insert((v["top"].as_f64().unwrap(), Vec::new()));
        entry.1.push(v["dev"].as_str().unwrap().to_string());
    }
    for (_, devs) in leaders.values_mut() {
        let before = devs.len();
        devs.sort();
        devs.dedup();
        assert_eq!(devs.len(), before, "a leader written twice: {devs:?}");
    }
    for (_, devs) in fastest.values_mut() {
        devs.sort();
    }
    leaders.retain(|w, _| *w <= last_window);
    assert_eq!(leaders, fastest);
}
