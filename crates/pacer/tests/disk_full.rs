//! A full disk: publishes are refused (the connection closes without PUBACK, MQTT 3.1.1 has
//! no negative ack), what was stored stays readable, nothing is corrupted, and publishing
//! works again once there is space. The disk is a 1 MiB tmpfs, so this runs as root (CI does).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Pacer;

/// A small tmpfs mounted for the test's life.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> SmallDisk {
        let status =
            Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).status();
        assert!(status.is_ok_and(|s| s.success()), "mounting a tmpfs failed: this test needs root (CI runs as root)");
        SmallDisk(dir.to_path_buf())
    }

    fn grow(&self, size: &str) {
        let status = Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(&self.0).status().unwrap();
        assert!(status.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn publish(pacer: &Pacer, topic: &str, message: &str) -> bool {
    Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &pacer.mqtt_port.to_string(), "-q", "1", "-t", topic, "-m", message])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[test]
fn a_full_disk_refuses_publishes_keeps_data_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(dir.path(), "1m");
    let pacer = Pacer::start(&dir.path().join("data"));

    let big = "x".repeat(100_000);
    let mut acked = 0;
    while publish(&pacer, &format!("fill/{acked}"), &big) {
        acked += 1;
        assert!(acked < 20, "a 1 MiB disk cannot take 20 messages of 100 kB");
    }
    assert!(acked >= 1, "at least one message fits");

    // Everything acknowledged is there and readable; the refused one is not.
    let stored = pacer.tail("mqtt", acked);
    assert_eq!(stored.len(), acked);
    assert!(stored.iter().all(|r| r["value"].as_str().is_some_and(|v| v.len() == 100_000)));
    let streams: serde_json::Value = serde_json::from_str(&pacer.get("/api/v1/streams")).unwrap();
    assert_eq!(streams["streams"][0]["records"], acked);

    // Space comes back: publishing works again, with the next offset.
    disk.grow("8m");
    assert!(publish(&pacer, "fill/after", "small"));
    let all = pacer.tail("mqtt", acked + 1);
    assert_eq!(all[acked]["value"], "small");
    assert_eq!(all[acked]["offset"], acked);
    drop(pacer);

    // And a restart finds an intact log.
    let pacer = Pacer::start(&dir.path().join("data"));
    assert_eq!(pacer.tail("mqtt", acked + 1).len(), acked + 1);
}
