//! Replays the fuzzers' inputs (fuzz/corpus/<target>/ and the hand-made fuzz/seeds/)
//! through the same harnesses as the fuzz targets, so what fuzzing found keeps being checked
//! on stable Rust in every test run, without cargo-fuzz or nightly.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use pacer_mqtt::fuzzing::{decode_bytes, run_session_blocking, SessionOutcome};
use rmqtt_codec::{v3, v5, MqttPacket};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The files of `fuzz/<dir>`, sorted so failures name the same file every run.
fn files(dir: &str) -> Vec<(String, Vec<u8>)> {
    let dir = fuzz_dir().join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .map(|path| (path.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&path).unwrap()))
        .collect();
    files.sort();
    files
}

/// A target's minimised corpus and every seed.
fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut all = files(&format!("corpus/{target}"));
    all.extend(files("seeds"));
    all
}

/// `run_session_blocking` on a thread of its own: an input that makes the broker spin
/// without yielding, which no tokio timeout can interrupt, fails the test instead of hanging it.
fn session(name: &str, data: &[u8]) -> SessionOutcome {
    let (done, outcome) = mpsc::channel();
    let data = data.to_vec();
    std::thread::spawn(move || {
        let _ = done.send(run_session_blocking(&data));
    });
    match outcome.recv_timeout(Duration::from_secs(60)) {
        Ok(outcome) => outcome,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("session input {name} did not finish"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("session input {name} panicked"),
    }
}

/// Fewer than this means the corpus went missing, not that it was minimised further.
const MIN_INPUTS: usize = 100;

#[test]
fn the_decode_corpus_decodes_without_panicking() {
    let inputs = inputs("decode_packets");
    assert!(inputs.len() >= MIN_INPUTS, "only {} decode inputs", inputs.len());
    for (name, data) in &inputs {
        let replayed = std::panic::catch_unwind(|| decode_bytes(data));
        assert!(replayed.is_ok(), "decode_packets input {name} panicked");
    }
}

#[test]
fn every_session_input_leaves_other_clients_served() {
    let inputs = inputs("session");
    assert!(inputs.len() >= MIN_INPUTS, "only {} session inputs", inputs.len());
    let mut answered = 0;
    for (name, data) in &inputs {
        // Panics if the session hangs, the broker sends something undecodable, or the
        // bystander or the probe client is not served.
        let outcome = session(name, data);
        answered += usize::from(!outcome.replies.is_empty());
    }
    // Most inputs get as far as a CONNACK; none would if the harness lost the broker's side.
    assert!(answered * 2 > inputs.len(), "only {answered} of {} inputs got an answer", inputs.len());
}

/// The seeds named `v5-closeXX-...` break a rule of MQTT 5 right after a valid CONNECT; the
/// broker must close with DISCONNECT reason 0xXX.
#[test]
fn broken_packets_close_with_the_right_reason() {
    let mut checked = 0;
    for (name, data) in files("seeds") {
        let Some(code) = name.strip_prefix("v5-close") else { continue };
        let expected = u8::from_str_radix(&code[..2], 16).unwrap();
        let outcome = session(&name, &data);
        assert_eq!(outcome.disconnect_reason(), Some(expected), "{name}: {:?}", outcome.replies);
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} seeds with an expected reason");
}

/// The seeds named `v5-connackXX-...` send a CONNECT that does not decode; the broker must
/// refuse it with CONNACK reason 0xXX, and send nothing else.
#[test]
fn unreadable_connects_are_refused_with_the_right_reason() {
    let mut checked = 0;
    for (name, data) in files("seeds") {
        let Some(code) = name.strip_prefix("v5-connack") else { continue };
        let expected = u8::from_str_radix(&code[..2], 16).unwrap();
        let outcome = session(&name, &data);
        match &outcome.replies[..] {
            [MqttPacket::V5(v5::Packet::ConnectAck(ack))] => assert_eq!(u8::from(ack.reason_code), expected, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} seeds with an expected CONNACK");
}

/// Valid conversations end without a DISCONNECT from the broker.
#[test]
fn valid_seeds_are_not_disconnected() {
    for name in ["v5-connect-disconnect", "v5-qos-flow", "v5-properties", "v5-persistent-will-retained"] {
        let data = std::fs::read(fuzz_dir().join("seeds").join(name)).unwrap();
        let outcome = session(name, &data);
        assert!(outcome.replies.len() > 1, "{name}: {:?}", outcome.replies);
        assert_eq!(outcome.disconnect_reason(), None, "{name}: {:?}", outcome.replies);
    }
    // MQTT 3.1.1 has no server DISCONNECT: a broken packet just ends the connection after
    // the CONNACK, and the other clients are still served (checked by the harness).
    let data = std::fs::read(fuzz_dir().join("seeds/v3-garbage-after-connect")).unwrap();
    let outcome = session("v3-garbage-after-connect", &data);
    assert!(matches!(outcome.replies[..], [MqttPacket::V3(v3::Packet::ConnectAck(_))]), "{:?}", outcome.replies);
}

/// Cases each mutation test runs: a few hundred in every test run (seconds), more with
/// PACER_FUZZ_CASES for a longer hunt on stable Rust (docs/fuzzing.md).
fn cases(default: u32) -> u32 {
    std::env::var("PACER_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A target's inputs, read once for all the cases.
fn corpus(target: &'static str) -> &'static [(String, Vec<u8>)] {
    static DECODE: std::sync::OnceLock<Vec<(String, Vec<u8>)>> = std::sync::OnceLock::new();
    static SESSION: std::sync::OnceLock<Vec<(String, Vec<u8>)>> = std::sync::OnceLock::new();
    let cell = if target == "session" { &SESSION } else { &DECODE };
    cell.get_or_init(|| inputs(target))
}

/// A corpus input changed the ways a fuzzer would: bytes overwritten, inserted and cut,
/// another input spliced in.
fn mutated(inputs: &[(String, Vec<u8>)], pick: usize, edits: &[(u16, u8, u8)]) -> Vec<u8> {
    let mut data = inputs[pick % inputs.len()].1.clone();
    for &(at, byte, kind) in edits {
        let at = if data.is_empty() { 0 } else { at as usize % (data.len() + 1) };
        match kind % 4 {
            0 if at < data.len() => data[at] = byte,
            1 => data.insert(at, byte),
            2 if at < data.len() => {
                data.drain(at..(at + byte as usize % 8 + 1).min(data.len()));
            }
            3 => {
                let other = &inputs[byte as usize % inputs.len()].1;
                let end = other.len().min(at % 64 + 16);
                data.splice(at..at, other[..end].iter().copied());
            }
            _ => {}
        }
    }
    data
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: cases(512), failure_persistence: None, ..Default::default() })]

    /// Mutated packets decode (or fail to) the same whole or split, and never panic.
    #[test]
    fn mutated_packets_decode_without_panicking(pick in 0usize..10_000, edits in proptest::collection::vec((0u16..4096, proptest::num::u8::ANY, 0u8..4), 1..8)) {
        let data = mutated(corpus("decode_packets"), pick, &edits);
        let decoded = std::panic::catch_unwind(|| decode_bytes(&data));
        proptest::prop_assert!(decoded.is_ok(), "input {:?} panicked", data);
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: cases(48), failure_persistence: None, ..Default::default() })]

    /// Mutated client streams end their own connection at worst: the bystander and the probe
    /// are served, nothing hangs, every reply decodes (checked by the harness).
    #[test]
    fn mutated_sessions_leave_other_clients_served(pick in 0usize..10_000, edits in proptest::collection::vec((0u16..4096, proptest::num::u8::ANY, 0u8..4), 1..6)) {
        let data = mutated(corpus("session"), pick, &edits);
        session("a mutated session input", &data);
    }
}
