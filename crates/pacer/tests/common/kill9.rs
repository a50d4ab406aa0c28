//! The durability contract under fire, for either log backend: publishers at QoS 1 number
//! their messages, Pacer is killed with SIGKILL at random moments and restarted, and at the end
//! every acknowledged message is in the log. A message appears twice only if its publisher
//! retried it after a lost PUBACK, and those retries are counted.
//!
//! The publisher is Debian's mosquitto_pub: exit status 0 means it received the PUBACK.

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::Pacer;

const PUBLISHERS: usize = 3;

#[derive(Default)]
struct Progress {
    port: AtomicU16,
    stop: AtomicBool,
    retries: AtomicU64,
    /// Per publisher: sequence numbers acknowledged, and how often each was sent.
    acked: Mutex<Vec<Vec<u64>>>,
    acked_changed: Condvar,
}

impl Progress {
    fn acked_total(&self) -> usize {
        self.acked.lock().unwrap().iter().map(Vec::len).sum()
    }

    /// Blocks until `n` more publishes than `since` were acknowledged.
    fn wait_for_acks(&self, since: usize, n: usize) {
        let guard = self.acked.lock().unwrap();
        let (_guard, timeout) = self
            .acked_changed
            .wait_timeout_while(guard, Duration::from_secs(60), |acked| {
                acked.iter().map(Vec::len).sum::<usize>() < since + n
            })
            .unwrap();
        assert!(!timeout.timed_out(), "no progress for 60 s: publishers cannot get acknowledgements");
    }
}

fn publisher(i: usize, progress: Arc<Progress>) {
    let mut seq = 0u64;
    while !progress.stop.load(Ordering::Relaxed) {
        let port = progress.port.load(Ordering::Relaxed).to_string();
        let status = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port, "-q", "1", "-i", &format!("durability-{i}")])
            .args(["-t", &format!("durability/p{i}"), "-m", &format!("{i}:{seq}")])
            .stderr(std::process::Stdio::null())
            .status()
            .expect("mosquitto_pub must be installed (Debian mosquitto-clients)");
        if status.success() {
            progress.acked.lock().unwrap()[i].push(seq);
            progress.acked_changed.notify_all();
            seq += 1;
        } else {
            // Pacer was down or died mid-publish: send the same number again. If the first
            // attempt was stored after all, this is the one duplicate it may cause.
            progress.retries.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A small deterministic generator for the kill moments, seeded and printed so a failing
/// run can be repeated.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Runs publishers against the Pacer `start` gives, kills it PACER_KILLS times (default 10)
/// and restarts it with `start`, then checks every acknowledged publish is in stream `mqtt`.
pub fn every_acknowledged_publish_survives_kill_9(start: impl Fn() -> Pacer) {
    let kills: usize = std::env::var("PACER_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let seed = std::env::var("PACER_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    println!("kills={kills} seed={seed}");
    let mut rng = Lcg(seed);

    let mut pacer = start();
    let progress = Arc::new(Progress { acked: Mutex::new(vec![Vec::new(); PUBLISHERS]), ..Default::default() });
    progress.port.store(pacer.mqtt_port, Ordering::Relaxed);
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|i| {
            let progress = progress.clone();
            std::thread::spawn(move || publisher(i, progress))
        })
        .collect();

    for _ in 0..kills {
        // Let the publishers get going on this incarnation, then kill it at a random moment.
        progress.wait_for_acks(progress.acked_total(), 5);
        std::thread::sleep(Duration::from_millis(rng.below(150)));
        drop(pacer); // SIGKILL
        pacer = start();
        progress.port.store(pacer.mqtt_port, Ordering::Relaxed);
    }
    progress.wait_for_acks(progress.acked_total(), 5);
    progress.stop.store(true, Ordering::Relaxed);
    for p in publishers {
        p.join().unwrap();
    }

    let streams: serde_json::Value = serde_json::from_str(&pacer.get("/api/v1/streams")).unwrap();
    let stored = streams["streams"].as_array().unwrap().iter().find(|s| s["name"] == "mqtt").unwrap()["records"]
        .as_u64()
        .unwrap() as usize;
    let records = pacer.tail("mqtt", stored);
    let mut copies: HashMap<(usize, u64), usize> = HashMap::new();
    for r in &records {
        let value = r["value"].as_str().map(str::to_string).unwrap_or_else(|| r["value"].to_string());
        if let Some((p, seq)) = value.split_once(':') {
            *copies.entry((p.parse().unwrap(), seq.parse().unwrap())).or_default() += 1;
        }
    }

    let acked = progress.acked.lock().unwrap();
    let retries = progress.retries.load(Ordering::Relaxed);
    let mut missing = Vec::new();
    for (p, seqs) in acked.iter().enumerate() {
        for &seq in seqs {
            if !copies.contains_key(&(p, seq)) {
                missing.push((p, seq));
            }
        }
    }
    let duplicates: usize = copies.values().map(|&n| n - 1).sum();
    let total_acked: usize = acked.iter().map(Vec::len).sum();
    println!("acknowledged={total_acked} stored={stored} retries={retries} duplicates={duplicates}");
    assert!(missing.is_empty(), "acknowledged but lost after kill -9: {missing:?}");
    assert!(duplicates as u64 <= retries, "{duplicates} duplicates but only {retries} retries");
    assert!(total_acked >= 5 * (kills + 1), "too little traffic to mean anything: {total_acked}");
}
