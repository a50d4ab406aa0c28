//! Simulators: devices that publish over real MQTT to any broker.
//!
//! `devices` runs any number of simulated devices, each its own MQTT client: synthetic
//! `runners` along a course, `generators`, `vehicles`, `buses`, `access` readers.
//!
//! The race replay plays the 2019 Sydney half marathon (bundled) in event-time order at a
//! speed-up factor, one MQTT client per runner as a phone would be, QoS 1, on `race/{who}`
//! with the seed's JSON as payload.

pub mod access;
pub mod bench;
pub mod buses;
pub mod devices;
pub mod generators;
pub mod runners;
pub mod vehicles;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::time::Instant;

/// The 2019 Sydney half marathon: who, timeepoc (s), lat, lon, alt, batt, speed (km/h).
pub const SYDNEY_HALF_2019: &str = include_str!("../../../examples/race/sydney-half-2019.jsonl");
/// The course the runners follow, as a GeoJSON LineString.
pub const SYDNEY_HALF_COURSE: &str = include_str!("../../../examples/race/sydney-half-course.geojson");
/// Where the Sydney half finishes (lat, lon).
pub const SYDNEY_HALF_FINISH: (f64, f64) = (-33.87014, 151.211945);

/// One fix of the race file.
#[derive(Debug, Clone)]
pub struct Fix {
    pub who: String,
    pub time_s: i64,
    pub line: String,
}

/// Parses a race file (JSON lines with `who` and `timeepoc`), in event-time order.
pub fn parse_race(text: &str) -> anyhow::Result<Vec<Fix>> {
    let mut fixes = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("race data line {}: not JSON", i + 1))?;
        let who = v["who"].as_str().with_context(|| format!("race data line {}: no \"who\"", i + 1))?;
        let time_s = v["timeepoc"].as_i64().with_context(|| format!("race data line {}: no \"timeepoc\"", i + 1))?;
        fixes.push(Fix { who: who.to_string(), time_s, line: line.to_string() });
    }
    fixes.sort_by_key(|f| f.time_s);
    Ok(fixes)
}

#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub host: String,
    pub port: u16,
    /// Event time runs this many times faster than wall time.
    pub speed: f64,
}

/// Publishes every fix at its (sped-up) time; returns how many were acknowledged.
pub async fn replay_race(fixes: Vec<Fix>, options: ReplayOptions) -> anyhow::Result<u64> {
    anyhow::ensure!(options.speed > 0.0, "--speed must be above 0, got {}", options.speed);
    let Some(t0) = fixes.first().map(|f| f.time_s) else { return Ok(0) };
    let mut by_runner: BTreeMap<String, Vec<Fix>> = BTreeMap::new();
    for fix in fixes {
        by_runner.entry(fix.who.clone()).or_default().push(fix);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (who, fixes) in by_runner {
        let options = options.clone();
        tasks.push(tokio::spawn(async move { run_runner(who, fixes, t0, start, options).await }));
    }
    let mut acked = 0;
    for task in tasks {
        acked += task.await.context("replay task panicked")??;
    }
    Ok(acked)
}

/// One runner's phone: its own MQTT connection, publishing its fixes on time.
async fn run_runner(who: String, fixes: Vec<Fix>, t0: i64, start: Instant, o: ReplayOptions) -> anyhow::Result<u64> {
    let mut mqtt = MqttOptions::new(format!("pacer-replay-{who}"), o.host.clone(), o.port);
    mqtt.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(mqtt, 64);
    let total = fixes.len() as u64;
    let topic = format!("race/{who}");
    let publisher = tokio::spawn(async move {
        for fix in fixes {
            let due = start + Duration::from_secs_f64((fix.time_s - t0) as f64 / o.speed);
            tokio::time::sleep_until(due).await;
            client.publish(topic.as_str(), QoS::AtLeastOnce, false, fix.line.into_bytes()).await?;
        }
        anyhow::Ok(client)
    });
    let mut acked = 0;
    while acked < total {
        match events.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
            Ok(_) => {}
            Err(e) => anyhow::bail!("runner {who}: MQTT connection to {}:{} failed: {e}", o.host, o.port),
        }
    }
    let client = publisher.await.context("publisher panicked")??;
    let _ = client.disconnect().await;
    Ok(acked)
}

/// Great-circle distance between two (lat, lon) points, metres.
pub fn haversine_m(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (p1, p2) = (a.0.to_radians(), b.0.to_radians());
    let (dp, dl) = (p2 - p1, (b.1 - a.1).to_radians());
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * 6_371_008.8 * h.sqrt().asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_race_has_four_runners_in_time_order() {
        let fixes = parse_race(SYDNEY_HALF_2019).unwrap();
        assert_eq!(fixes.len(), 2386);
        assert!(fixes.windows(2).all(|w| w[0].time_s <= w[1].time_s));
        let mut who: Vec<_> = fixes.iter().map(|f| f.who.as_str()).collect();
        who.sort();
        who.dedup();
        assert_eq!(who, ["alice", "ben", "derek", "simon"]);
        assert!(parse_race("{\"who\":\"x\"}").unwrap_err().to_string().contains("timeepoc"));
    }
}
