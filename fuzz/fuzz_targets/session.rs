//! Arbitrary bytes as a client's whole byte stream into the real connection state machine,
//! followed by a well-behaved client that must still be served.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pacer_mqtt::fuzzing::run_session_blocking(data);
});
