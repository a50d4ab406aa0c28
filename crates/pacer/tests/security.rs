//! Authentication and access control with mosquitto's own files: a password file written
//! by `pacer passwd` and Debian's `mosquitto_passwd`, an ACL in mosquitto's syntax, and real
//! clients being let in, turned away and held to their topics.

mod common;

use std::process::Command;

use common::{Pacer, PACER};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};

fn mosquitto_pub(pacer: &Pacer, args: &[&str]) -> std::process::Output {
    Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &pacer.mqtt_port.to_string(), "-q", "1", "-d"])
        .args(args)
        .output()
        .unwrap()
}

fn secured_pacer(dir: &std::path::Path) -> Pacer {
    let passwd = dir.join("passwd");
    let out =
        Command::new(PACER).args(["passwd"]).arg(&passwd).args(["alice", "--password", "secret1"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // bob's line in mosquitto 1.x's SHA-512 format, written by mosquitto's own tool.
    let status =
        Command::new("mosquitto_passwd").args(["-H", "sha512", "-b"]).arg(&passwd).args(["bob", "secret2"]).status();
    assert!(status.expect("mosquitto_passwd (Debian mosquitto)").success());
    std::fs::write(
        dir.join("acl"),
        "user alice\ntopic readwrite owntracks/alice/#\n\nuser bob\ntopic readwrite owntracks/bob/#\n\npattern read public/%u\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("pacer.toml"),
        "[mqtt]\nallow_anonymous = false\npassword_file = \"passwd\"\nacl_file = \"acl\"\n",
    )
    .unwrap();
    Pacer::start_with(&dir.join("data"), &["--config", dir.join("pacer.toml").to_str().unwrap()])
}

#[test]
fn credentials_and_acl_decide_who_connects_and_publishes_where() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = secured_pacer(dir.path());
    let fix = r#"{"_type":"location","tst":1,"lat":1,"lon":2}"#;

    let ok = mosquitto_pub(&pacer, &["-u", "alice", "-P", "secret1", "-t", "owntracks/alice/phone", "-m", fix]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let bad = mosquitto_pub(&pacer, &["-u", "alice", "-P", "wrong", "-t", "owntracks/alice/phone", "-m", fix]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("bad user name or password"), "{bad:?}");
    let anonymous = mosquitto_pub(&pacer, &["-t", "owntracks/alice/phone", "-m", fix]);
    assert!(String::from_utf8_lossy(&anonymous.stderr).contains("not authorised"), "{anonymous:?}");

    // bob ($6$ hash) may connect but not publish as alice: MQTT 5 says so (0x87), 3.1.1
    // gets its PUBACK as from mosquitto; neither is stored.
    let v5 = mosquitto_pub(
        &pacer,
        &["-V", "mqttv5", "-u", "bob", "-P", "secret2", "-t", "owntracks/alice/phone", "-m", fix],
    );
    assert!(String::from_utf8_lossy(&v5.stdout).contains("RC:135"), "{v5:?}");
    let v3 = mosquitto_pub(&pacer, &["-u", "bob", "-P", "secret2", "-t", "owntracks/alice/phone", "-m", fix]);
    assert!(v3.status.success());
    let own = mosquitto_pub(&pacer, &["-u", "bob", "-P", "secret2", "-t", "owntracks/bob/phone", "-m", fix]);
    assert!(own.status.success());

    let records: serde_json::Value = serde_json::from_str(&pacer.get("/api/v1/streams/locations/records")).unwrap();
    let users: Vec<_> = records["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["headers"]["mqtt.username"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["alice", "bob"], "{records}");
    assert!(pacer.get("/metrics").contains("pacer_mqtt_denied_total 2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_held_to_the_acl() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = tokio::task::block_in_place(|| secured_pacer(dir.path()));
    let mut options = MqttOptions::new("alice-laptop", "127.0.0.1", pacer.mqtt_port);
    options.set_credentials("alice", "secret1");
    let (client, mut events) = AsyncClient::new(options, 10);
    client.subscribe("owntracks/#", QoS::AtLeastOnce).await.unwrap();
    client.subscribe("owntracks/alice/+", QoS::AtLeastOnce).await.unwrap();
    client.subscribe("public/alice", QoS::AtLeastOnce).await.unwrap();
    let mut codes = Vec::new();
    while codes.len() < 3 {
        if let Event::Incoming(Packet::SubAck(ack)) = events.poll().await.unwrap() {
            codes.extend(ack.return_codes);
        }
    }
    assert_eq!(
        codes,
        [
            SubscribeReasonCode::Failure,
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::Success(QoS::AtLeastOnce)
        ]
    );
}

/// OwnTracks HTTP mode goes through the same password file and ACL as MQTT.
#[test]
fn owntracks_http_posts_are_held_to_the_same_credentials_and_acl() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = secured_pacer(dir.path());
    let fix = r#"{"_type":"location","tst":1,"lat":1,"lon":2}"#;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let post = |user: Option<(&str, &str)>, device_user: &str| {
        runtime.block_on(async {
            let mut request =
                reqwest::Client::new().post(format!("{}/pub?u={device_user}&d=phone", pacer.http)).body(fix);
            if let Some((name, password)) = user {
                request = request.basic_auth(name, Some(password));
            }
            request.send().await.unwrap().status().as_u16()
        })
    };
    assert_eq!(post(Some(("alice", "secret1")), "alice"), 200);
    assert_eq!(post(Some(("alice", "wrong")), "alice"), 401);
    assert_eq!(post(None, "alice"), 401, "anonymous clients are not allowed here");
    assert_eq!(post(Some(("bob", "secret2")), "alice"), 403, "bob may not publish as alice");
    let stored: serde_json::Value = serde_json::from_str(&pacer.get("/api/v1/streams/locations/records")).unwrap();
    let records = stored["records"].as_array().unwrap();
    assert_eq!(records.len(), 1, "only alice's own fix is stored: {stored}");
    assert_eq!(records[0]["key"], "alice/phone");
    assert_eq!(records[0]["headers"]["mqtt.username"], "alice");
}
