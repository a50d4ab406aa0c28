//! MQTT 5 with a real MQTT 5 client (rumqttc's v5 module): properties passed through,
//! subscription identifiers, no-local, shared subscriptions, assigned client ids.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::Pacer;
use rumqttc::v5::mqttbytes::v5::{ConnAck, Filter, Packet, Publish, PublishProperties, SubscribeProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};

fn client(pacer: &Pacer, id: &str) -> (AsyncClient, EventLoop) {
    let mut o = MqttOptions::new(id, "127.0.0.1", pacer.mqtt_port);
    o.set_keep_alive(Duration::from_secs(30));
    AsyncClient::new(o, 20)
}

async fn connack(events: &mut EventLoop) -> ConnAck {
    loop {
        if let Event::Incoming(Packet::ConnAck(ack)) = events.poll().await.expect("connect") {
            return ack;
        }
    }
}

async fn suback(events: &mut EventLoop) {
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = events.poll().await.expect("subscribe") {
            return;
        }
    }
}

async fn puback(events: &mut EventLoop) {
    loop {
        if let Event::Incoming(Packet::PubAck(_)) = events.poll().await.expect("publish") {
            return;
        }
    }
}

/// Polls until `n` PUBLISHes arrived, or gives up after `wait` and returns what came.
async fn received(events: &mut EventLoop, n: usize, wait: Duration) -> Vec<Publish> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, async {
        while out.len() < n {
            if let Event::Incoming(Packet::Publish(p)) = events.poll().await.expect("receive") {
                out.push(p);
            }
        }
    })
    .await;
    out
}

fn start(dir: &std::path::Path) -> Pacer {
    tokio::task::block_in_place(|| Pacer::start(dir))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn properties_subscription_ids_and_no_local() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = start(dir.path());
    let (sub, mut sub_events) = client(&pacer, "dispatcher");
    connack(&mut sub_events).await;
    let props = SubscribeProperties { id: Some(7), user_properties: Vec::new() };
    sub.subscribe_with_properties("vehicles/+/cmd", QoS::AtLeastOnce, props).await.unwrap();
    suback(&mut sub_events).await;
    let props = SubscribeProperties { id: Some(9), user_properties: Vec::new() };
    let mut own = Filter::new("vehicles/#", QoS::AtLeastOnce);
    own.nolocal = true;
    sub.subscribe_many_with_properties([own], props).await.unwrap();
    suback(&mut sub_events).await;

    let (publisher, mut pub_events) = client(&pacer, "vehicle-3");
    connack(&mut pub_events).await;
    let properties = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(600),
        response_topic: Some("vehicles/3/reply".into()),
        correlation_data: Some(Bytes::from_static(b"req-42")),
        user_properties: vec![("fleet".into(), "north".into())],
        content_type: Some("application/json".into()),
        ..Default::default()
    };
    publisher
        .publish_with_properties("vehicles/3/cmd", QoS::AtLeastOnce, false, r#"{"stop":true}"#, properties)
        .await
        .unwrap();
    puback(&mut pub_events).await;

    let got = received(&mut sub_events, 1, Duration::from_secs(20)).await;
    let p = got.first().expect("the subscriber gets the message");
    let props = p.properties.clone().expect("MQTT 5 properties");
    assert_eq!(props.content_type.as_deref(), Some("application/json"));
    assert_eq!(props.response_topic.as_deref(), Some("vehicles/3/reply"));
    assert_eq!(props.correlation_data.as_deref(), Some(&b"req-42"[..]));
    assert_eq!(props.user_properties, vec![("fleet".to_string(), "north".to_string())]);
    assert_eq!(props.payload_format_indicator, Some(1));
    assert!(props.message_expiry_interval.is_some_and(|s| (590..=600).contains(&s)), "{props:?}");
    let mut ids = props.subscription_identifiers.clone();
    ids.sort();
    assert_eq!(ids, [7, 9], "one PUBLISH carries the ids of both matching subscriptions");

    // no-local: the dispatcher's own publish on vehicles/# reaches it only through the
    // subscription without no-local (id 7 matches vehicles/+/cmd).
    sub.publish("vehicles/9/cmd", QoS::AtLeastOnce, false, "go").await.unwrap();
    let own = received(&mut sub_events, 1, Duration::from_secs(20)).await;
    let ids = own[0].properties.clone().unwrap().subscription_identifiers;
    assert_eq!(ids, [7]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_subscription_gives_each_message_to_one_member() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = start(dir.path());
    let (a, mut a_events) = client(&pacer, "worker-a");
    let (b, mut b_events) = client(&pacer, "worker-b");
    connack(&mut a_events).await;
    connack(&mut b_events).await;
    a.subscribe("$share/workers/jobs/#", QoS::AtLeastOnce).await.unwrap();
    suback(&mut a_events).await;
    b.subscribe("$share/workers/jobs/#", QoS::AtLeastOnce).await.unwrap();
    suback(&mut b_events).await;

    let (publisher, mut pub_events) = client(&pacer, "scheduler");
    connack(&mut pub_events).await;
    for i in 0..10 {
        publisher.publish(format!("jobs/{i}"), QoS::AtLeastOnce, false, format!("job {i}")).await.unwrap();
        puback(&mut pub_events).await;
    }
    // Collect from both workers until ten jobs arrived in all; each must be a different job.
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    tokio::time::timeout(Duration::from_secs(30), async {
        while got_a.len() + got_b.len() < 10 {
            tokio::select! {
                e = a_events.poll() => if let Event::Incoming(Packet::Publish(p)) = e.unwrap() { got_a.push(p.payload) },
                e = b_events.poll() => if let Event::Incoming(Packet::Publish(p)) = e.unwrap() { got_b.push(p.payload) },
            }
        }
    })
    .await
    .expect("ten jobs within 30 s");
    let mut all: Vec<_> = got_a.iter().chain(&got_b).cloned().collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 10, "each job exactly once");
    assert!(!got_a.is_empty() && !got_b.is_empty(), "both workers get work: {} + {}", got_a.len(), got_b.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_client_id_is_assigned_one() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = start(dir.path());
    let (_c, mut events) = client(&pacer, "");
    let ack = connack(&mut events).await;
    let props = ack.properties.expect("CONNACK properties");
    assert!(props.assigned_client_identifier.is_some_and(|id| id.starts_with("pacer-")));
    assert_ne!(props.shared_subscription_available, Some(0), "absent or 1 means available");
    assert!(props.topic_alias_max.is_some_and(|m| m > 0));
}

/// Connects `id` with the given clean start and session expiry; returns whether a session
/// was present.
async fn session_present(
    pacer: &Pacer,
    id: &str,
    clean_start: bool,
    expiry: Option<u32>,
) -> (AsyncClient, EventLoop, bool) {
    let mut o = MqttOptions::new(id, "127.0.0.1", pacer.mqtt_port);
    o.set_keep_alive(Duration::from_secs(30)).set_clean_start(clean_start).set_session_expiry_interval(expiry);
    let (client, mut events) = AsyncClient::new(o, 20);
    let present = connack(&mut events).await.session_present;
    (client, events, present)
}

async fn leave(client: AsyncClient, mut events: EventLoop) {
    client.disconnect().await.unwrap();
    while events.poll().await.is_ok() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_decides_whether_a_session_outlives_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = start(dir.path());
    // No Session Expiry: the session ends with the connection.
    let (c, e, present) = session_present(&pacer, "sensor-1", true, None).await;
    assert!(!present);
    leave(c, e).await;
    let (c, e, present) = session_present(&pacer, "sensor-1", false, None).await;
    assert!(!present, "expiry 0: nothing to resume");
    leave(c, e).await;

    // An expiry: the session and its subscription wait, and messages queue for it.
    let (c, mut e, _) = session_present(&pacer, "sensor-2", true, Some(300)).await;
    c.subscribe("alarms/#", QoS::AtLeastOnce).await.unwrap();
    suback(&mut e).await;
    leave(c, e).await;
    let (publisher, mut pub_events) = client(&pacer, "alarm-source");
    connack(&mut pub_events).await;
    publisher.publish("alarms/smoke", QoS::AtLeastOnce, false, "room 4").await.unwrap();
    puback(&mut pub_events).await;
    let (_c, mut e, present) = session_present(&pacer, "sensor-2", false, Some(300)).await;
    assert!(present);
    let got = received(&mut e, 1, Duration::from_secs(20)).await;
    assert_eq!(got.first().map(|p| &p.payload[..]), Some(&b"room 4"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_repeat_as_aliases_to_clients_that_accept_them() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = start(dir.path());
    let mut o = MqttOptions::new("tram-board", "127.0.0.1", pacer.mqtt_port);
    o.set_keep_alive(Duration::from_secs(30)).set_topic_alias_max(Some(5));
    let (sub, mut sub_events) = AsyncClient::new(o, 20);
    connack(&mut sub_events).await;
    sub.subscribe("trams/#", QoS::AtLeastOnce).await.unwrap();
    suback(&mut sub_events).await;

    let (publisher, mut pub_events) = client(&pacer, "tram-7");
    connack(&mut pub_events).await;
    for stop in ["Central", "Museum"] {
        publisher.publish("trams/7", QoS::AtLeastOnce, false, stop).await.unwrap();
        puback(&mut pub_events).await;
    }
    let got = received(&mut sub_events, 2, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 2);
    let alias = |p: &Publish| p.properties.as_ref().and_then(|pr| pr.topic_alias);
    // The first PUBLISH sets alias 1 for the topic; the second carries only the alias.
    assert_eq!((&got[0].topic[..], alias(&got[0])), (&b"trams/7"[..], Some(1)));
    assert_eq!((&got[1].topic[..], alias(&got[1])), (&b""[..], Some(1)));
    assert_eq!(&got[1].payload[..], b"Museum");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_message_past_its_expiry_is_not_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = start(dir.path());
    let (c, mut e, _) = session_present(&pacer, "pager", true, Some(300)).await;
    c.subscribe("pages/#", QoS::AtLeastOnce).await.unwrap();
    suback(&mut e).await;
    leave(c, e).await;

    let (publisher, mut pub_events) = client(&pacer, "dispatch");
    connack(&mut pub_events).await;
    let expires = PublishProperties { message_expiry_interval: Some(1), ..Default::default() };
    publisher.publish_with_properties("pages/1", QoS::AtLeastOnce, false, "stale", expires).await.unwrap();
    puback(&mut pub_events).await;
    let keeps = PublishProperties { message_expiry_interval: Some(600), ..Default::default() };
    publisher.publish_with_properties("pages/2", QoS::AtLeastOnce, false, "fresh", keeps).await.unwrap();
    puback(&mut pub_events).await;
    // The subject here is time passing: the first message's one second runs out.
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let (_c, mut e, present) = session_present(&pacer, "pager", false, Some(300)).await;
    assert!(present);
    let got = received(&mut e, 2, Duration::from_secs(3)).await;
    let payloads: Vec<&[u8]> = got.iter().map(|p| &p.payload[..]).collect();
    assert_eq!(payloads, [&b"fresh"[..]], "the expired message is dropped, the other delivered");
    let left = got[0].properties.as_ref().and_then(|p| p.message_expiry_interval);
    assert!(left.is_some_and(|s| (590..600).contains(&s)), "the expiry counts down while queued: {left:?}");
}

/// Connects `id` with a will on `status/<id>` sent `delay` seconds after an abnormal close.
async fn with_will(pacer: &Pacer, id: &str, delay: u32, clean_start: bool) -> (AsyncClient, EventLoop) {
    use rumqttc::v5::mqttbytes::v5::{LastWill, LastWillProperties};
    let mut o = MqttOptions::new(id, "127.0.0.1", pacer.mqtt_port);
    let properties = LastWillProperties {
        delay_interval: Some(delay),
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
    };
    let will = LastWill::new(format!("status/{id}"), "offline", QoS::AtLeastOnce, false, Some(properties));
    o.set_keep_alive(Duration::from_secs(30))
        .set_clean_start(clean_start)
        .set_session_expiry_interval(Some(60))
        .set_last_will(will);
    let (client, mut events) = AsyncClient::new(o, 20);
    connack(&mut events).await;
    (client, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_waits_for_its_delay_and_a_quick_return_cancels_it() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = start(dir.path());
    let (watcher, mut watch_events) = client(&pacer, "control-room");
    connack(&mut watch_events).await;
    watcher.subscribe("status/#", QoS::AtLeastOnce).await.unwrap();
    suback(&mut watch_events).await;

    // Gone without DISCONNECT: the will comes once its delay is over.
    let (c, e) = with_will(&pacer, "gen-1", 1, true).await;
    drop((c, e));
    let got = received(&mut watch_events, 1, Duration::from_secs(15)).await;
    assert_eq!(got.first().map(|p| (&p.topic[..], &p.payload[..])), Some((&b"status/gen-1"[..], &b"offline"[..])));

    // Back within the delay: no will. Then a clean DISCONNECT, which never sends one.
    let (c, e) = with_will(&pacer, "gen-2", 3, true).await;
    drop((c, e));
    let (c, e) = with_will(&pacer, "gen-2", 3, false).await;
    leave(c, e).await;
    // Waiting out the delay is the subject: nothing may arrive for gen-2 in it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (sentinel, mut sentinel_events) = client(&pacer, "sentinel");
    connack(&mut sentinel_events).await;
    sentinel.publish("status/sentinel", QoS::AtLeastOnce, false, "ping").await.unwrap();
    puback(&mut sentinel_events).await;
    let got = received(&mut watch_events, 1, Duration::from_secs(15)).await;
    assert_eq!(got.first().map(|p| &p.topic[..]), Some(&b"status/sentinel"[..]), "the cancelled will was sent");
}

/// QoS 1 messages queued for an offline lasting session survive `kill -9` and a restart;
/// once acknowledged they are not sent again after the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_queued_for_an_offline_session_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = start(dir.path());
    let (c, mut e, _) = session_present(&pacer, "logger", true, Some(3600)).await;
    c.subscribe("jobs/#", QoS::AtLeastOnce).await.unwrap();
    suback(&mut e).await;
    leave(c, e).await;
    let (publisher, mut pub_events) = client(&pacer, "scheduler");
    connack(&mut pub_events).await;
    for job in ["one", "two", "three"] {
        publisher.publish("jobs/nightly", QoS::AtLeastOnce, false, job).await.unwrap();
        puback(&mut pub_events).await;
    }
    drop((publisher, pub_events));
    drop(pacer); // SIGKILL: nothing gets written on the way out

    let pacer = start(dir.path());
    let (c, mut e, present) = session_present(&pacer, "logger", false, Some(3600)).await;
    assert!(present);
    let got = received(&mut e, 3, Duration::from_secs(20)).await;
    let jobs: Vec<&[u8]> = got.iter().map(|p| &p.payload[..]).collect();
    assert_eq!(
        jobs,
        [&b"one"[..], b"two", b"three"],
        "every acknowledged publish reaches the subscriber after the crash"
    );
    // rumqttc acknowledged them; the broker records each acknowledgement in its journal.
    let seen = std::sync::Mutex::new(0);
    tokio::task::block_in_place(|| {
        pacer.wait_for_record("__session_queue", |r| {
            let mut seen = seen.lock().unwrap();
            *seen += r["headers"].get("queue.done").is_some() as usize;
            *seen == 3
        })
    });
    leave(c, e).await;
    drop(pacer);

    let pacer = start(dir.path());
    let (_c, mut e, present) = session_present(&pacer, "logger", false, Some(3600)).await;
    assert!(present);
    let (publisher, mut pub_events) = client(&pacer, "scheduler");
    connack(&mut pub_events).await;
    publisher.publish("jobs/nightly", QoS::AtLeastOnce, false, "four").await.unwrap();
    puback(&mut pub_events).await;
    let got = received(&mut e, 1, Duration::from_secs(20)).await;
    assert_eq!(got.first().map(|p| &p.payload[..]), Some(&b"four"[..]), "acknowledged messages are not sent again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_may_name_its_topic_by_alias() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = start(dir.path());
    let (watcher, mut watch_events) = client(&pacer, "map");
    connack(&mut watch_events).await;
    watcher.subscribe("fleet/#", QoS::AtLeastOnce).await.unwrap();
    suback(&mut watch_events).await;

    let (truck, mut truck_events) = client(&pacer, "truck-7");
    let ack = connack(&mut truck_events).await;
    let allowed = ack.properties.and_then(|p| p.topic_alias_max).unwrap_or(0);
    assert!(allowed >= 1, "the broker accepts topic aliases");
    let alias = |n| PublishProperties { topic_alias: Some(n), ..Default::default() };
    truck.publish_with_properties("fleet/7", QoS::AtLeastOnce, false, "km 12", alias(1)).await.unwrap();
    puback(&mut truck_events).await;
    truck.publish_with_properties("", QoS::AtLeastOnce, false, "km 13", alias(1)).await.unwrap();
    puback(&mut truck_events).await;

    let got = received(&mut watch_events, 2, Duration::from_secs(20)).await;
    let seen: Vec<(&[u8], &[u8])> = got.iter().map(|p| (&p.topic[..], &p.payload[..])).collect();
    assert_eq!(
        seen,
        [(&b"fleet/7"[..], &b"km 12"[..]), (&b"fleet/7"[..], &b"km 13"[..])],
        "the alias stands for its topic"
    );
}

/// Reads one MQTT packet from a raw socket: its first byte and its body.
async fn raw_packet(socket: &mut tokio::net::TcpStream) -> Option<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let kind = socket.read_u8().await.ok()?;
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let b = socket.read_u8().await.ok()?;
        len |= ((b & 0x7f) as usize) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0; len];
    socket.read_exact(&mut body).await.ok()?;
    Some((kind, body))
}

/// A client that sends more unacknowledged QoS 2 publishes than the broker's Receive
/// Maximum is disconnected with 0x93, over a real socket (written byte by byte, because
/// well-behaved client libraries never do this).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceeding_the_receive_maximum_ends_the_connection_with_0x93() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pacer.toml"), "[mqtt]\nreceive_maximum = 2\n").unwrap();
    let config = dir.path().join("pacer.toml");
    let pacer = tokio::task::block_in_place(|| {
        Pacer::start_with(&dir.path().join("data"), &["--config", config.to_str().unwrap()])
    });
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", pacer.mqtt_port)).await.unwrap();
    // CONNECT, MQTT 5, clean start, keep-alive 60, no properties, client id "rm".
    socket.write_all(&[0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0, 0, 2, b'r', b'm']).await.unwrap();
    let (kind, body) = raw_packet(&mut socket).await.expect("CONNACK");
    assert_eq!((kind, body[1]), (0x20, 0), "accepted");
    // Three QoS 2 publishes, never released: one more than the broker allows in flight.
    for id in 1..=3u8 {
        socket.write_all(&[0x34, 7, 0, 1, b't', 0, id, 0, b'x']).await.unwrap();
    }
    let mut disconnect = None;
    let deadline = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some((kind, body)) = raw_packet(&mut socket).await {
            if kind == 0xE0 {
                disconnect = body.first().copied();
                break;
            }
        }
    });
    deadline.await.expect("the broker answers within 20 s");
    assert_eq!(disconnect, Some(0x93), "DISCONNECT with Receive Maximum exceeded");
}

/// A retained message a lasting session got at SUBSCRIBE and had not acknowledged when the
/// broker crashed is delivered again after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_retained_delivery_survives_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = start(dir.path());
    let (publisher, mut pub_events) = client(&pacer, "generator-7");
    connack(&mut pub_events).await;
    publisher.publish("state/generator-7", QoS::AtLeastOnce, true, "running").await.unwrap();
    puback(&mut pub_events).await;

    let mut o = MqttOptions::new("operator", "127.0.0.1", pacer.mqtt_port);
    o.set_keep_alive(Duration::from_secs(30)).set_clean_start(true).set_session_expiry_interval(Some(3600));
    o.set_manual_acks(true); // the PUBACK never goes out
    let (c, mut e) = AsyncClient::new(o, 20);
    connack(&mut e).await;
    c.subscribe("state/#", QoS::AtLeastOnce).await.unwrap();
    // The SUBACK goes out once the subscription and what it queued are stored.
    let (mut retained, mut subscribed) = (None, false);
    tokio::time::timeout(Duration::from_secs(20), async {
        while retained.is_none() || !subscribed {
            match e.poll().await.expect("subscribe") {
                Event::Incoming(Packet::Publish(p)) => retained = Some(p.payload),
                Event::Incoming(Packet::SubAck(_)) => subscribed = true,
                _ => {}
            }
        }
    })
    .await
    .expect("the retained message and the SUBACK within 20 s");
    assert_eq!(retained.as_deref(), Some(&b"running"[..]));
    drop(pacer); // SIGKILL before any acknowledgement

    let pacer = start(dir.path());
    let (_c, mut e, present) = session_present(&pacer, "operator", false, Some(3600)).await;
    assert!(present);
    let again = received(&mut e, 1, Duration::from_secs(20)).await;
    assert_eq!(again.first().map(|p| &p.payload[..]), Some(&b"running"[..]), "sent again after the restart");
}
