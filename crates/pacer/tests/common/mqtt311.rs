//! An MQTT 3.1.1 client (rumqttc) for the tests: connect, subscribe, receive, leave.

use std::time::Duration;

use rumqttc::{AsyncClient, ConnAck, Event, EventLoop, MqttOptions, Packet, Publish};

use super::Pacer;

pub fn options(pacer: &Pacer, client_id: &str, clean: bool) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, "127.0.0.1", pacer.mqtt_port);
    o.set_clean_session(clean).set_keep_alive(Duration::from_secs(30));
    o
}

/// Polls until CONNACK.
pub async fn connected(events: &mut EventLoop) -> ConnAck {
    loop {
        if let Event::Incoming(Packet::ConnAck(ack)) = events.poll().await.expect("connect") {
            return ack;
        }
    }
}

/// Polls until a SUBACK.
pub async fn subscribed(events: &mut EventLoop) {
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = events.poll().await.expect("subscribe") {
            return;
        }
    }
}

/// Polls until `n` PUBLISHes arrived (rumqttc acknowledges them).
pub async fn received(events: &mut EventLoop, n: usize) -> Vec<Publish> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while out.len() < n {
            if let Event::Incoming(Packet::Publish(p)) = events.poll().await.expect("receive") {
                out.push(p);
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {n} messages arrived", out.len()));
    out
}

/// Sends DISCONNECT and lets it go out.
pub async fn disconnect(client: AsyncClient, mut events: EventLoop) {
    client.disconnect().await.unwrap();
    while events.poll().await.is_ok() {}
}
