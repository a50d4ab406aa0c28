//! A stream–stream join under fire, for either log backend: departures joined with arrivals
//! WITHIN four hours, killed with SIGKILL at random moments while it works through both
//! streams; every trip comes out exactly once, paired or (a LEFT join's unmatched rows, once
//! the window closed) alone.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use serde_json::Value;

use super::Pacer;

/// `trips` departures, each with an arrival. With `after_progress`, each kill waits for another share of the query's rows (so it lands
/// after checkpoints, in a restored query); else the kills land within 250 ms of each start.
pub fn stream_join_survives_kill_9(trips: i64, kills: usize, after_progress: bool, start: impl Fn() -> Pacer) {
    const BASE: i64 = 1_795_000_000_000;
    const WITHIN_MS: i64 = 4 * 3_600_000;
    const GRACE_MS: i64 = 60_000;

    // A departure every 2 s; its arrival 0–39 minutes later, some 3 hours later, some 5 (too
    // late to pair), and every 50th a minute before it left (no pair either).
    let mut departures = String::new();
    let mut arrivals: Vec<(i64, String)> = Vec::new();
    let mut paired: BTreeMap<String, (String, String, i64)> = BTreeMap::new();
    let mut alone: BTreeMap<String, i64> = BTreeMap::new();
    let mut last_time = 0;
    for i in 0..trips {
        let (trip, from, to) = (format!("t{i}"), format!("s{}", i % 7), format!("s{}", (i * 3 + 1) % 7));
        let left = BASE + i * 2_000;
        let delay = match (i % 50, i % 10) {
            (0, _) => -60_000,
            // Held across many checkpoints, paired at last; and too late to pair.
            (_, 7) => 3 * 3_600_000,
            (_, 3) => 5 * 3_600_000,
            _ => (i * 37 % 40) * 60_000,
        };
        departures.push_str(&format!("{}\n", serde_json::json!({"trip": trip, "stop": from, "ts": left})));
        arrivals
            .push((left + delay, format!("{}\n", serde_json::json!({"trip": trip, "stop": to, "ts": left + delay}))));
        last_time = last_time.max(left + delay);
        if (0..=WITHIN_MS).contains(&delay) {
            paired.insert(trip, (from, to, delay / 1000));
        } else {
            alone.insert(trip, left);
        }
    }
    // Unpaired departures whose window closed within the data must come out alone; later
    // ones may (the idle clock closes them as wall-clock time passes).
    let must_close: HashSet<&String> =
        alone.iter().filter(|(_, left)| *left + WITHIN_MS + GRACE_MS < last_time).map(|(t, _)| t).collect();

    let pacer = start();
    pacer.produce("departures", Some("trip"), &departures);
    // Each stream in its own time order, as devices report.
    arrivals.sort();
    pacer.produce("arrivals", Some("trip"), &arrivals.into_iter().map(|(_, line)| line).collect::<String>());
    let out = pacer.sql(
        "CREATE STREAM departures (trip VARCHAR KEY, stop VARCHAR, ts BIGINT) WITH (kafka_topic='departures', value_format='JSON', timestamp='ts');
         CREATE STREAM arrivals (trip VARCHAR KEY, stop VARCHAR, ts BIGINT) WITH (kafka_topic='arrivals', value_format='JSON', timestamp='ts');
         CREATE STREAM trips AS SELECT d.trip, d.stop AS origin, a.stop AS destination, (a.ts - d.ts) / 1000 AS seconds
           FROM departures d LEFT JOIN arrivals a WITHIN (0 SECONDS, 4 HOURS) GRACE PERIOD 1 MINUTE ON d.trip = a.trip
           EMIT CHANGES;",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Spread over the query's work: each kill lands at a random moment once the query wrote
    // another share of its rows since it last started.
    let mut pacer = pacer;
    let share = trips as usize / (kills + 2);
    if !after_progress {
        pacer = super::kill_at_random(pacer, kills, 0, 250, &start);
    }
    for kill in (1..=kills).filter(|_| after_progress) {
        let written = std::sync::atomic::AtomicUsize::new(0);
        pacer.wait_for_record("trips", |_| {
            written.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 >= kill * share
        });
        pacer = super::kill_at_random(pacer, 1, 0, 100, &start);
    }

    let seen: Mutex<HashSet<String>> = Mutex::default();
    pacer.wait_for_record("trips", |r| {
        let mut seen = seen.lock().unwrap();
        seen.insert(r["value"]["trip"].as_str().unwrap_or_default().to_string());
        paired.keys().chain(must_close.iter().copied()).all(|t| seen.contains(t))
    });
    let stored: Value = serde_json::from_str(&pacer.get("/api/v1/streams/trips/records?limit=100000")).unwrap();
    let mut rows: HashMap<String, Vec<Value>> = HashMap::new();
    let stored = stored["records"].as_array().unwrap_or_else(|| panic!("no records: {stored}"));
    for r in stored {
        rows.entry(r["value"]["trip"].as_str().unwrap().to_string()).or_default().push(r["value"].clone());
    }
    for (trip, (from, to, seconds)) in &paired {
        let got = rows.get(trip).unwrap_or_else(|| panic!("trip {trip} lost"));
        let want = serde_json::json!({"trip": trip, "origin": from, "destination": to, "seconds": seconds});
        assert_eq!(got, &vec![want], "trip {trip}");
    }
    for trip in &must_close {
        let want = serde_json::json!({"trip": trip, "origin": format!("s{}", trip[1..].parse::<i64>().unwrap() % 7),
            "destination": null, "seconds": null});
        assert_eq!(rows.get(*trip), Some(&vec![want]), "trip {trip} departs unpaired, once");
    }
    for (trip, got) in &rows {
        assert!(paired.contains_key(trip) || alone.contains_key(trip), "{trip}: no such trip");
        assert_eq!(got.len(), 1, "trip {trip} written {} times: {got:?}", got.len());
    }
}
