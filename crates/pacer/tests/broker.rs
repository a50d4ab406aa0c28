//! The broker with real clients: retained messages and persistent sessions across
//! reconnects and kill -9, QoS 2 both ways, redelivery. rumqttc speaks MQTT 3.1.1 here;
//! mosquitto_pub publishes.

mod common;

use common::mqtt311::{connected, disconnect, options, received, subscribed};
use common::Pacer;
use rumqttc::{AsyncClient, QoS};

fn start(dir: &std::path::Path) -> Pacer {
    tokio::task::block_in_place(|| Pacer::start(dir))
}

fn publish(pacer: &Pacer, args: &[&str]) {
    tokio::task::block_in_place(|| {
        let status = std::process::Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &pacer.mqtt_port.to_string()])
            .args(args)
            .status()
            .unwrap();
        assert!(status.success());
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_survive_kill_9_and_reach_new_subscribers_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = start(dir.path());
    publish(&pacer, &["-q", "1", "-r", "-t", "gen/7/status", "-m", "running"]);
    publish(&pacer, &["-q", "1", "-r", "-t", "gen/8/status", "-m", "stopped"]);
    publish(&pacer, &["-q", "1", "-r", "-t", "gen/8/status", "-m", ""]); // clears gen/8
    drop(pacer);

    let pacer = start(dir.path());
    let (client, mut events) = AsyncClient::new(options(&pacer, "late-subscriber", true), 10);
    client.subscribe("gen/+/status", QoS::AtLeastOnce).await.unwrap();
    let got = received(&mut events, 1).await;
    assert_eq!((got[0].topic.as_str(), &got[0].payload[..], got[0].retain), ("gen/7/status", &b"running"[..], true));
    assert_eq!(got[0].qos, QoS::AtLeastOnce);

    // A live publish to an existing subscription is not flagged retained (MQTT-3.3.1-9).
    publish(&pacer, &["-q", "1", "-r", "-t", "gen/9/status", "-m", "starting"]);
    let live = received(&mut events, 1).await;
    assert_eq!((live[0].topic.as_str(), live[0].retain), ("gen/9/status", false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_queues_while_away_even_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = start(dir.path());
    let (client, mut events) = AsyncClient::new(options(&pacer, "fleet-monitor", false), 10);
    assert!(!connected(&mut events).await.session_present);
    client.subscribe("fleet/#", QoS::AtLeastOnce).await.unwrap();
    subscribed(&mut events).await;
    disconnect(client, events).await;

    publish(&pacer, &["-q", "1", "-t", "fleet/bus-1", "-m", "away-1"]);
    publish(&pacer, &["-q", "1", "-t", "fleet/bus-2", "-m", "away-2"]);
    publish(&pacer, &["-q", "0", "-t", "fleet/bus-3", "-m", "qos0-not-queued"]);
    let (client, mut events) = AsyncClient::new(options(&pacer, "fleet-monitor", false), 10);
    assert!(connected(&mut events).await.session_present);
    let got = received(&mut events, 2).await;
    let payloads: Vec<_> = got.iter().map(|p| String::from_utf8_lossy(&p.payload).into_owned()).collect();
    assert_eq!(payloads, ["away-1", "away-2"]);
    disconnect(client, events).await;

    // The subscription is stored: after kill -9 the session is still there and queues again.
    drop(pacer);
    let pacer = start(dir.path());
    publish(&pacer, &["-q", "1", "-t", "fleet/bus-4", "-m", "after-restart"]);
    let (_client, mut events) = AsyncClient::new(options(&pacer, "fleet-monitor", false), 10);
    assert!(connected(&mut events).await.session_present);
    assert_eq!(&received(&mut events, 1).await[0].payload[..], b"after-restart");

    // A clean start ends it.
    let (client, mut events) = AsyncClient::new(options(&pacer, "fleet-monitor", true), 10);
    assert!(!connected(&mut events).await.session_present);
    disconnect(client, events).await;
    let (_client, mut events) = AsyncClient::new(options(&pacer, "fleet-monitor", false), 10);
    assert!(!connected(&mut events).await.session_present);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_2_flows_both_ways_and_overlapping_subscriptions_deliver_once_at_the_highest_qos() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = start(dir.path());
    let (client, mut events) = AsyncClient::new(options(&pacer, "exactly-once", true), 10);
    client.subscribe("alerts/#", QoS::ExactlyOnce).await.unwrap();
    subscribed(&mut events).await;
    client.subscribe("alerts/+/fire", QoS::AtMostOnce).await.unwrap();
    subscribed(&mut events).await;
    publish(&pacer, &["-q", "2", "-t", "alerts/site-3/fire", "-m", "evacuate"]);
    let got = received(&mut events, 1).await;
    assert_eq!((got[0].qos, &got[0].payload[..]), (QoS::ExactlyOnce, &b"evacuate"[..]));
    // Only one copy: a second message proves nothing else was queued before it.
    publish(&pacer, &["-q", "1", "-t", "alerts/site-3/smoke", "-m", "next"]);
    let next = received(&mut events, 1).await;
    assert_eq!(&next[0].payload[..], b"next");
}
