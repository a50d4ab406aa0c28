//! A full disk or a read-only data directory: publishes are refused (the connection closes
//! without PUBACK, MQTT 3.1.1 has no negative ack; MQTT 5 gets a PUBACK with an error code),
//! what was stored stays readable, nothing is corrupted, and publishing works again once the
//! disk takes writes. The disks are tmpfs and bind mounts, so this runs as root (CI does).

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

/// A directory bind-mounted onto itself read-only for the guard's life.
struct ReadOnly(PathBuf);

impl ReadOnly {
    fn mount(dir: &Path) -> ReadOnly {
        let bind = Command::new("mount").arg("--bind").arg(dir).arg(dir).status().unwrap();
        assert!(bind.success(), "bind mount failed: this test needs root (CI runs as root)");
        let guard = ReadOnly(dir.to_path_buf());
        guard.remount("ro");
        guard
    }

    fn remount(&self, mode: &str) {
        let status = Command::new("mount").args(["-o", &format!("remount,bind,{mode}")]).arg(&self.0).status().unwrap();
        assert!(status.success(), "remount {mode} failed");
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn publish(pacer: &Pacer, topic: &str, message: &str) -> bool {
    publish_as(pacer, "mqttv311", topic, message).status.success()
}

fn publish_as(pacer: &Pacer, version: &str, topic: &str, message: &str) -> std::process::Output {
    Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &pacer.mqtt_port.to_string(), "-V", version, "-q", "1", "-t", topic])
        .args(["-m", message])
        .output()
        .unwrap()
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

#[test]
fn a_read_only_data_dir_serves_what_it_has_refuses_publishes_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pacer = Pacer::start(&data);
    assert!(publish(&pacer, "before/ro", "kept"));
    assert_eq!(pacer.tail("mqtt", 1)[0]["value"], "kept");
    drop(pacer);

    let read_only = ReadOnly::mount(&data);
    let pacer = Pacer::start(&data);
    assert!(!publish(&pacer, "during/ro", "refused-v3"), "a 3.1.1 publisher must not get a PUBACK");
    let v5 = publish_as(&pacer, "mqttv5", "during/ro", "refused-v5");
    let stderr = String::from_utf8_lossy(&v5.stderr);
    assert!(
        stderr.contains("Publish 1 failed") && stderr.contains("Read-only"),
        "v5 PUBACK must carry the error: {stderr}"
    );
    let streams: serde_json::Value = serde_json::from_str(&pacer.get("/api/v1/streams")).unwrap();
    assert_eq!(streams["streams"][0]["records"], 1, "refused publishes must not be stored");
    assert_eq!(pacer.tail("mqtt", 1)[0]["value"], "kept", "what was stored stays readable");

    read_only.remount("rw");
    assert!(publish(&pacer, "after/ro", "stored"));
    let all = pacer.tail("mqtt", 2);
    assert_eq!(all[1]["value"], "stored");
    assert_eq!(all[1]["offset"], 1);
}
