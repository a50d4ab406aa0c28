//! Arbitrary bytes through the packet codec as MQTT 3.1.1 and MQTT 5, whole and split,
//! and every decoded packet through what the session makes of it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pacer_mqtt::fuzzing::decode_bytes(data);
});
