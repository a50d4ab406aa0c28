//! The durability contract under fire: publishers at QoS 1 number their messages, Pacer is
//! killed with SIGKILL at random moments and restarted on the same data directory, and at the
//! end every acknowledged message is in the log. A message appears twice only if its
//! publisher retried it after a lost PUBACK, and those retries are counted.
//!
//! The publisher is Debian's mosquitto_pub: exit status 0 means it received the PUBACK.
//! PACER_KILLS sets the number of kills (default 10).

mod common;

#[test]
fn every_acknowledged_publish_survives_repeated_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    common::kill9::every_acknowledged_publish_survives_kill_9(|| common::Pacer::start(dir.path()));
}
