//! MQTT over TLS (checked by mosquitto_pub against a CA it trusts), over WebSocket and over
//! WebSocket inside TLS (rumqttc's websocket transports), against a real `pacer up`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::Pacer;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, Transport};

fn start_with_config(dir: &Path, config: &str) -> Pacer {
    std::fs::write(dir.join("pacer.toml"), config).unwrap();
    Pacer::start_with(&dir.join("data"), &["--config", dir.join("pacer.toml").to_str().unwrap()])
}

/// Pacer with an MQTT/TLS listener, and that listener's port.
fn start_with_tls(dir: &Path) -> (Pacer, String) {
    common::write_certificates(dir);
    let pacer = start_with_config(
        dir,
        "[mqtt]\ntls_listen = \"127.0.0.1:0\"\ntls_cert = \"server.pem\"\ntls_key = \"server.key\"\n",
    );
    let port = pacer.listeners["mqtts"].rsplit(':').next().unwrap().to_string();
    (pacer, port)
}

#[test]
fn mosquitto_pub_publishes_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (pacer, port) = start_with_tls(dir.path());
    let out = Command::new("mosquitto_pub")
        .args(["-h", "localhost", "-p", &port, "--cafile"])
        .arg(dir.path().join("ca.pem"))
        .args(["-q", "1", "-t", "secure/t1", "-m", "over tls"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let records = pacer.tail("mqtt", 1);
    assert_eq!(records[0]["value"], "over tls");

    // A client that does not trust the certificate is turned away by its own check.
    let untrusting = Command::new("mosquitto_pub")
        .args(["-h", "localhost", "-p", &port, "--cafile", "/etc/ssl/certs/ca-certificates.crt"])
        .args(["-q", "1", "-t", "secure/t1", "-m", "x"])
        .output()
        .unwrap();
    assert!(!untrusting.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_talks_mqtt_over_websocket() {
    let dir = tempfile::tempdir().unwrap();
    let pacer =
        tokio::task::block_in_place(|| start_with_config(dir.path(), "[mqtt]\nwebsocket_listen = \"127.0.0.1:0\"\n"));
    let port: u16 = pacer.listeners["ws"].rsplit(':').next().unwrap().parse().unwrap();
    let mut options = MqttOptions::new("browser-like", format!("ws://127.0.0.1:{port}/mqtt"), port);
    options.set_transport(Transport::Ws).set_keep_alive(Duration::from_secs(30));
    let got = round_trip(options, "buses/24", "at Victoria").await;
    assert_eq!((got.topic.as_str(), &got.payload[..]), ("buses/24", &b"at Victoria"[..]));
}

/// Subscribes to `topic`, publishes `payload` on it once subscribed, and returns what comes
/// back (30 s at most).
async fn round_trip(options: MqttOptions, topic: &str, payload: &str) -> rumqttc::Publish {
    let (client, mut events) = AsyncClient::new(options, 10);
    client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match events.poll().await.expect("connection") {
                Event::Incoming(Packet::SubAck(_)) => {
                    client.publish(topic, QoS::AtLeastOnce, false, payload).await.unwrap();
                }
                Event::Incoming(Packet::Publish(p)) => return p,
                _ => {}
            }
        }
    })
    .await
    .expect("the message comes back within 30 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_talks_mqtt_over_secure_websocket() {
    let dir = tempfile::tempdir().unwrap();
    common::write_certificates(dir.path());
    let config = "[mqtt]\nwss_listen = \"127.0.0.1:0\"\ntls_cert = \"server.pem\"\ntls_key = \"server.key\"\n";
    let pacer = tokio::task::block_in_place(|| start_with_config(dir.path(), config));
    let port: u16 = pacer.listeners["wss"].rsplit(':').next().unwrap().parse().unwrap();
    let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
    let mut options = MqttOptions::new("dashboard", format!("wss://localhost:{port}/mqtt"), port);
    options.set_transport(Transport::wss(ca, None, None)).set_keep_alive(Duration::from_secs(30));
    let got = round_trip(options, "generators/g7", "fuel 420").await;
    assert_eq!((got.topic.as_str(), &got.payload[..]), ("generators/g7", &b"fuel 420"[..]));
    assert_eq!(pacer.tail("mqtt", 1)[0]["value"], "fuel 420", "stored like any publish");
}

/// `pacer simulate … --tls --cafile`: simulated devices over MQTT/TLS.
#[test]
fn pacer_simulate_publishes_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (pacer, port) = start_with_tls(dir.path());
    let out = Command::new(common::PACER)
        .args(["simulate", "generators", "--devices", "2", "--rate", "5", "--duration", "1"])
        .args(["--host", "localhost", "--port", &port, "--tls", "--cafile"])
        .arg(dir.path().join("ca.pem"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("0 errors"), "{said} {}", String::from_utf8_lossy(&out.stderr));
    let records = pacer.tail("mqtt", 1);
    assert!(records[0]["key"].as_str().unwrap().starts_with("emergency_generators/gen-"), "{:?}", records[0]);
}
