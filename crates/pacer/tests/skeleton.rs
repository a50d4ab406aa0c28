//! The walking skeleton end to end, as a user runs it: a real `pacer up` process, real
//! MQTT clients (mosquitto_pub from Debian, rumqttc), the real HTTP API and `pacer tail`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

mod common;

use common::Pacer;

#[test]
fn a_qos1_publish_is_read_back_by_tail_and_arrives_on_the_live_feed() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = Pacer::start(dir.path());
    // At start Pacer records its built-in SQL in the catalog: count from here.
    let appended = |metrics: &str| -> u64 {
        let line = metrics.lines().find(|l| l.starts_with("pacer_log_records_appended_total ")).unwrap();
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let before = appended(&pacer.get("/metrics"));
    pacer.mosquitto_pub("sensors/t1", 1, r#"{"temp":21.5}"#);

    let records = pacer.tail("mqtt", 1);
    assert_eq!(records[0]["value"]["temp"], 21.5);
    assert_eq!(records[0]["key"], "sensors/t1");
    assert_eq!(records[0]["headers"]["mqtt.topic"], "sensors/t1");
    assert_eq!(records[0]["headers"]["mqtt.qos"], "1");
    assert_eq!(records[0]["headers"]["mqtt.client_id"], "skeleton-test");

    let first_event = |query: &str| {
        let url = format!("{}/api/v1/live?stream=mqtt&from=beginning{query}", pacer.http);
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let response = reqwest::get(&url).await.unwrap();
            assert_eq!(response.headers()["content-type"], "text/event-stream");
            let mut body = response.bytes_stream();
            let mut text = String::new();
            while !text.contains("\n\n") {
                let chunk = tokio::time::timeout(Duration::from_secs(20), body.next()).await.expect("an SSE event");
                text.push_str(&String::from_utf8_lossy(&chunk.unwrap().unwrap()));
            }
            text
        })
    };
    let event = first_event("");
    assert!(event.contains("event: records"), "{event}");
    assert!(event.contains("id: 0:1"), "{event}");
    assert!(event.contains(r#"\"temp\":21.5"#) || event.contains(r#""temp":21.5"#), "{event}");
    // The dashboard's form: key, timestamp and value only.
    let event = first_event("&compact=true");
    let data = event.lines().find_map(|l| l.strip_prefix("data: ")).expect("a data line");
    let records: serde_json::Value = serde_json::from_str(data).unwrap();
    let record = records[0].as_object().unwrap();
    assert_eq!(record.keys().collect::<Vec<_>>(), ["key", "timestamp", "value"], "{event}");
    assert_eq!(record["key"], "sensors/t1");
    assert_eq!(record["value"]["temp"], 21.5);
    assert!(record["timestamp"].as_i64().unwrap() > 0);

    let metrics = pacer.get("/metrics");
    assert!(metrics.contains("pacer_mqtt_messages_in_total 1"), "{metrics}");
    assert_eq!(appended(&metrics), before + 1, "{metrics}");
    let streams = pacer.get("/api/v1/streams");
    assert!(streams.contains(r#""name":"mqtt""#), "{streams}");
}

#[test]
fn acknowledged_records_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pacer.toml");
    std::fs::write(&config, "[log]\npartitions = 3\n").unwrap();
    let data = dir.path().join("data");
    let start = || Pacer::start_with(&data, &["--config", config.to_str().unwrap()]);
    let pacer = start();
    for i in 0..20 {
        pacer.mosquitto_pub(
            &format!("race/r{i}"),
            1,
            &format!(r#"{{"who":"r{i}","timeepoc":{i},"lat":-33.87,"lon":151.21}}"#),
        );
    }
    drop(pacer); // SIGKILL: no shutdown path runs

    let pacer = start();
    let records = pacer.tail("race", 20);
    let mut keys: Vec<_> = records.iter().map(|r| r["key"].as_str().unwrap().to_string()).collect();
    keys.sort_by_key(|k| k[1..].parse::<u32>().unwrap());
    assert_eq!(keys, (0..20).map(|i| format!("r{i}")).collect::<Vec<_>>());
    let partitions: std::collections::BTreeSet<_> = records.iter().map(|r| r["partition"].as_u64().unwrap()).collect();
    assert_eq!(partitions.len(), 3, "20 keys spread over the 3 partitions");
    let r19 = records.iter().find(|r| r["key"] == "r19").unwrap();
    assert_eq!(r19["timestamp"], 19_000);
    // The tracking query resumed from its checkpoint: after one more fix of r0 has gone
    // through it, every runner counts exactly the fixes it sent, none twice.
    pacer.mosquitto_pub("race/r0", 1, r#"{"who":"r0","timeepoc":100,"lat":-33.87,"lon":151.21}"#);
    pacer.wait_for_record("race_status", |r| r["key"] == "r0" && r["value"]["fixes"] == 2);
    // The partitions are consumed independently: wait until every runner has a status.
    for i in 1..20 {
        pacer.wait_for_record("race_status", |r| r["key"] == format!("r{i}").as_str());
    }
    let out = pacer.sql("SELECT who, fixes FROM race_status");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.ends_with("(20 rows)\n"), "{text}");
    let fixes: Vec<&str> =
        text.lines().skip(2).filter_map(|l| l.trim_matches('|').split('|').nth(1)).map(str::trim).collect();
    assert_eq!(fixes.iter().filter(|f| **f == "1").count(), 19, "{text}");
    assert_eq!(fixes.iter().filter(|f| **f == "2").count(), 1, "{text}");
}

#[test]
fn undecodable_payloads_go_to_dead_letters_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = Pacer::start(dir.path());
    pacer.mosquitto_pub("race/alice", 1, "lat=1,lon=2");
    let dead = pacer.tail("_dead_letters", 1);
    let value = &dead[0]["value"];
    assert_eq!(value["topic"], "race/alice");
    assert_eq!(value["stream"], "race");
    assert!(value["reason"].as_str().unwrap().contains("not JSON"), "{value}");
    assert_eq!(value["payload_base64"], "bGF0PTEsbG9uPTI=");
}

#[test]
fn a_malformed_packet_closes_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = Pacer::start(dir.path());
    let mut bad = TcpStream::connect(("127.0.0.1", pacer.mqtt_port)).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    bad.write_all(b"\x10\x0c\x00\x04XQTT\x04\x02\x00\x3c\x00\x00").unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(bad.read(&mut buf).unwrap(), 0, "server should close the connection");

    pacer.mosquitto_pub("sensors/after", 1, "still here");
    assert_eq!(pacer.tail("mqtt", 1)[0]["value"], "still here");
    assert!(pacer.get("/metrics").contains("pacer_mqtt_malformed_packets_total 1"));
}

#[tokio::test]
async fn subscribers_receive_what_publishers_send() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = tokio::task::spawn_blocking({
        let path = dir.path().to_path_buf();
        move || Pacer::start(&path)
    })
    .await
    .unwrap();
    let (client, mut events) = AsyncClient::new(MqttOptions::new("watcher", "127.0.0.1", pacer.mqtt_port), 10);
    client.subscribe("race/+", QoS::AtLeastOnce).await.unwrap();
    let received = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match events.poll().await.expect("MQTT connection") {
                Event::Incoming(Packet::SubAck(_)) => {
                    let port = pacer.mqtt_port;
                    tokio::task::spawn_blocking(move || {
                        let status = Command::new("mosquitto_pub")
                            .args(["-p", &port.to_string(), "-h", "127.0.0.1", "-q", "1", "-t", "race/ben"])
                            .args(["-m", r#"{"who":"ben","timeepoc":1,"lat":-33.87,"lon":151.21}"#])
                            .status()
                            .unwrap();
                        assert!(status.success());
                    });
                }
                Event::Incoming(Packet::Publish(p)) => return p,
                _ => {}
            }
        }
    })
    .await
    .expect("a publish within 30 s");
    assert_eq!(received.topic, "race/ben");
    assert_eq!(received.qos, QoS::AtLeastOnce);
    assert!(String::from_utf8_lossy(&received.payload).contains("\"who\":\"ben\""));
}

#[test]
fn pacer_sql_answers_a_pull_query_on_the_tracking_table() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = Pacer::start(dir.path());
    // alice at the start line, ben 30 course points (about 1 km) further on.
    pacer.mosquitto_pub("race/alice", 1, r#"{"who":"alice","timeepoc":100,"lat":-33.870528,"lon":151.21292}"#);
    pacer.mosquitto_pub("race/ben", 1, r#"{"who":"ben","timeepoc":100,"lat":-33.861917,"lon":151.211458}"#);

    // The table holds each runner's latest status: ben's fix moved alice to second.
    pacer.wait_for_record("race_status", |r| r["key"] == "alice" && r["value"]["rank"] == 2);
    let out = pacer.sql("SELECT who, rank FROM race_status WHERE rank <= 2");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip(2)
        .filter(|l| l.starts_with('|'))
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect();
    let mut rows = rows;
    rows.sort();
    assert_eq!(rows, vec![vec!["alice", "2"], vec!["ben", "1"]], "{text}");

    let bad = pacer.sql("SELECT who FROM race_status WHERE rank = = 1");
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("Line: 1, Column"), "{err}");
}

#[test]
fn a_silent_client_is_dropped_after_one_and_a_half_keep_alives_and_its_will_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = Pacer::start(dir.path());
    let mut device = TcpStream::connect(("127.0.0.1", pacer.mqtt_port)).unwrap();
    device.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // CONNECT, MQTT 3.1.1, clean session + will (QoS 0), keep-alive 1 s, client id "dev1",
    // will "offline" on status/dev1.
    let mut connect = vec![0x10, 38, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x06, 0, 1];
    connect.extend_from_slice(b"\x00\x04dev1\x00\x0bstatus/dev1\x00\x07offline");
    device.write_all(&connect).unwrap();
    let mut connack = [0u8; 4];
    device.read_exact(&mut connack).unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0]);

    let started = std::time::Instant::now();
    let mut buf = [0u8; 8];
    assert_eq!(device.read(&mut buf).unwrap(), 0, "the broker should close the silent connection");
    assert!(started.elapsed() >= Duration::from_millis(1400), "closed after {:?}", started.elapsed());

    let will = pacer.tail("mqtt", 1);
    assert_eq!(will[0]["value"], "offline");
    assert_eq!(will[0]["headers"]["mqtt.topic"], "status/dev1");
    assert_eq!(will[0]["headers"]["mqtt.client_id"], "dev1");
}

#[test]
fn connections_past_max_connections_are_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pacer.toml"), "[mqtt]\nmax_connections = 2\n").unwrap();
    let config = dir.path().join("pacer.toml");
    let pacer = Pacer::start_with(&dir.path().join("data"), &["--config", config.to_str().unwrap()]);
    let connect = |id: &str| {
        let mut s = TcpStream::connect(("127.0.0.1", pacer.mqtt_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut packet = vec![0x10, (12 + id.len()) as u8, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0];
        packet.extend_from_slice(&(id.len() as u16).to_be_bytes());
        packet.extend_from_slice(id.as_bytes());
        s.write_all(&packet).unwrap();
        let mut answer = [0u8; 4];
        // Closed with the CONNECT unread, the socket may say reset instead of end of stream.
        let n = match s.read(&mut answer) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
            other => other.unwrap(),
        };
        (s, answer[..n].to_vec())
    };
    let (_a, first) = connect("one");
    let (_b, second) = connect("two");
    let (_c, third) = connect("three");
    assert_eq!(first, [0x20, 2, 0, 0]);
    assert_eq!(second, [0x20, 2, 0, 0]);
    assert_eq!(third, [0x20, 2, 0, 3], "the third is told: server unavailable (3.1.1's word for it)");
    let metrics = pacer.get("/metrics");
    assert!(metrics.contains("pacer_mqtt_connections_refused_total 1"), "{metrics}");
}
