//! One client connection: the MQTT 3.1.1 session state machine.
//!
//! Inbound publishes are handed to the [`PublishSink`](crate::PublishSink) and acknowledged
//! only when it says the record is durable. Several publishes can be in that wait at once
//! (clients keep their in-flight window open), and their acks go out in the order the
//! publishes came, as MQTT-4.6.0 requires. Outbound messages come from the session's queue,
//! at most `max_inflight` unacknowledged at a time.

use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Duration;

use bytestring::ByteString;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{SinkExt, StreamExt};
use pacer_core::{now_ms, Publication};
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::v3::{ConnectAck, ConnectAckReason, Packet, SubscribeReturnCode};
use rmqtt_codec::version::{ProtocolVersion, VersionCodec};
use rmqtt_codec::{v3, v5, MqttCodec, MqttPacket};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;

use crate::router::{Connected, Session};
use crate::session::{Delivery, Inflight};
use crate::topic;
use crate::Shared;

/// How long a client has to send CONNECT after opening the socket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type Transport<S> = Framed<S, MqttCodec>;
type Acks = FuturesOrdered<BoxFuture<'static, anyhow::Result<Option<Packet>>>>;

/// Why a connection ended; logged when it does.
#[derive(Debug)]
enum Close {
    /// The client sent DISCONNECT: no will.
    Clean,
    /// Anything else: the will is published.
    Abnormal(String),
}

pub async fn serve<S>(stream: S, peer: String, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut transport = Framed::new(stream, MqttCodec::Version(VersionCodec));
    let version = match tokio::time::timeout(CONNECT_TIMEOUT, transport.next()).await {
        Ok(Some(Ok((MqttPacket::Version(v), _)))) => v,
        Ok(Some(Err(e))) => {
            shared.metrics.malformed.inc();
            tracing::warn!(%peer, error = %e, "malformed first packet; closing connection");
            return;
        }
        Ok(_) => return,
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT within {CONNECT_TIMEOUT:?}; closing connection");
            return;
        }
    };
    let max = shared.config.max_packet_size;
    if version == ProtocolVersion::MQTT5 {
        // MQTT 5 arrives with the broker issue; say so in its own terms rather than hang up.
        *transport.codec_mut() = MqttCodec::V5(v5::Codec::new(max, max));
        let _ = transport.next().await;
        let ack = v5::ConnectAck {
            reason_code: v5::ConnectAckReason::UnsupportedProtocolVersion,
            reason_string: Some("this Pacer speaks MQTT 3.1.1; MQTT 5 is not supported yet".into()),
            ..Default::default()
        };
        let _ = transport.send(MqttPacket::V5(v5::Packet::ConnectAck(Box::new(ack)))).await;
        tracing::info!(%peer, "refused an MQTT 5 client: only MQTT 3.1.1 is supported yet");
        return;
    }
    *transport.codec_mut() = MqttCodec::V3(v3::Codec::new(max));
    let connect = match transport.next().await {
        Some(Ok((MqttPacket::V3(Packet::Connect(c)), _))) => c,
        Some(Err(e)) => {
            shared.metrics.malformed.inc();
            tracing::warn!(%peer, error = %e, "malformed CONNECT; closing connection");
            return;
        }
        _ => return,
    };

    let refuse = |code| MqttPacket::V3(Packet::ConnectAck(ConnectAck { return_code: code, session_present: false }));
    let client_id = if connect.client_id.is_empty() {
        if !connect.clean_session {
            let _ = transport.send(refuse(ConnectAckReason::IdentifierRejected)).await;
            return;
        }
        format!("pacer-{:016x}", rand_id())
    } else {
        connect.client_id.to_string()
    };
    if !shared.config.allow_anonymous && connect.username.is_none() {
        let _ = transport.send(refuse(ConnectAckReason::NotAuthorized)).await;
        tracing::info!(%peer, %client_id, "refused anonymous client");
        return;
    }

    let connected = shared.router.connect(&client_id, connect.clean_session);
    // A persistent session is recorded before CONNACK; a clean start ends a stored one.
    let stored = if !connect.clean_session {
        let subscriptions = connected.session.lock().unwrap().subscriptions.clone();
        shared.store.save_session(&client_id, Some(&subscriptions)).await
    } else if connected.discarded_persistent {
        shared.store.save_session(&client_id, None).await
    } else {
        Ok(())
    };
    if let Err(e) = stored {
        tracing::error!(%client_id, error = %e, "could not store the session; refusing the connection");
        shared.router.disconnect(&client_id, connected.generation);
        let _ = transport.send(refuse(ConnectAckReason::ServiceUnavailable)).await;
        return;
    }
    let ack =
        ConnectAck { return_code: ConnectAckReason::ConnectionAccepted, session_present: connected.session_present };
    if transport.send(MqttPacket::V3(Packet::ConnectAck(ack))).await.is_err() {
        shared.router.disconnect(&client_id, connected.generation);
        return;
    }
    shared.metrics.connections.inc();
    tracing::info!(%peer, %client_id, keep_alive = connect.keep_alive, clean = connect.clean_session, session_present = connected.session_present, "client connected");

    let will = connect.last_will.clone();
    let username = connect.username.as_ref().map(|u| u.to_string());
    let generation = connected.generation;
    let mut conn = Connection {
        shared: shared.clone(),
        client_id: client_id.clone(),
        username: username.clone(),
        keep_alive: connect.keep_alive,
        session: connected.session.clone(),
    };
    let close = conn.run(&mut transport, connected).await;
    shared.router.disconnect(&client_id, generation);
    shared.metrics.connections.dec();
    match close {
        Close::Clean => tracing::info!(%peer, %client_id, "client disconnected"),
        Close::Abnormal(reason) => {
            tracing::info!(%peer, %client_id, %reason, "connection lost");
            if let Some(will) = will {
                let publication = Publication {
                    topic: will.topic.to_string(),
                    payload: will.message,
                    qos: will.qos.value(),
                    retain: will.retain,
                    client_id: client_id.clone(),
                    username,
                    received_at: now_ms(),
                };
                if let Err(e) = shared.accept(publication).await {
                    tracing::error!(%client_id, error = %e, "could not store the will message");
                }
            }
        }
    }
}

struct Connection {
    shared: Arc<Shared>,
    client_id: String,
    username: Option<String>,
    keep_alive: u16,
    session: Session,
}

impl Connection {
    async fn run<S>(&mut self, transport: &mut Transport<S>, connected: Connected) -> Close
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut acks: Acks = FuturesOrdered::new();
        // What was in flight when the client went away goes out again first (MQTT-4.4.0-1).
        let resend = self.redeliveries();
        if let Err(e) = self.send_all(transport, resend).await {
            return Close::Abnormal(format!("write failed: {e}"));
        }
        connected.wake.notify_one();
        // MQTT-3.1.2-24: silence for 1.5 × keep-alive ends the connection; 0 turns it off.
        let idle_limit = (self.keep_alive > 0).then(|| Duration::from_millis(self.keep_alive as u64 * 1500));
        loop {
            let next_packet = async {
                match idle_limit {
                    Some(limit) => tokio::time::timeout(limit, transport.next()).await,
                    None => Ok(transport.next().await),
                }
            };
            tokio::select! {
                packet = next_packet => {
                    let packet = match packet {
                        Err(_) => return Close::Abnormal("keep-alive expired".into()),
                        Ok(None) => return Close::Abnormal("connection closed by client".into()),
                        Ok(Some(Err(e))) => {
                            self.shared.metrics.malformed.inc();
                            return Close::Abnormal(format!("malformed packet: {e}"));
                        }
                        Ok(Some(Ok((MqttPacket::V3(p), _)))) => p,
                        Ok(Some(Ok(_))) => return Close::Abnormal("unexpected packet version".into()),
                    };
                    match self.handle(packet, &mut acks) {
                        Ok(replies) => {
                            if let Err(e) = self.send_all(transport, replies).await {
                                return Close::Abnormal(format!("write failed: {e}"));
                            }
                        }
                        Err(close) => {
                            // Acks owed for publishes already being stored still go out.
                            while let Some(Ok(Some(ack))) = acks.next().await {
                                let _ = transport.feed(MqttPacket::V3(ack)).await;
                            }
                            let _ = transport.flush().await;
                            return close;
                        }
                    }
                }
                Some(result) = acks.next(), if !acks.is_empty() => {
                    match result {
                        Ok(Some(ack)) => {
                            if let Err(e) = transport.send(MqttPacket::V3(ack)).await {
                                return Close::Abnormal(format!("write failed: {e}"));
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            // Not durable, so not acknowledged: closing makes the client resend.
                            tracing::error!(client_id = %self.client_id, error = %e, "publish not stored; closing so the client retries");
                            return Close::Abnormal(format!("store failed: {e}"));
                        }
                    }
                }
                _ = connected.wake.notified() => {
                    let packets = self.next_deliveries();
                    if let Err(e) = self.send_all(transport, packets).await {
                        return Close::Abnormal(format!("write failed: {e}"));
                    }
                }
                _ = connected.kick.notified() => {
                    return Close::Abnormal("another connection took over the client id".into());
                }
            }
        }
    }

    async fn send_all<S>(&self, transport: &mut Transport<S>, packets: Vec<Packet>) -> std::io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if packets.is_empty() {
            return Ok(());
        }
        for p in packets {
            if matches!(p, Packet::Publish(_)) {
                self.shared.metrics.messages_out.inc();
            }
            transport.feed(MqttPacket::V3(p)).await.map_err(std::io::Error::other)?;
        }
        transport.flush().await.map_err(std::io::Error::other)
    }

    /// Handles one packet from the client: the replies to send now, or the end.
    fn handle(&mut self, packet: Packet, acks: &mut Acks) -> Result<Vec<Packet>, Close> {
        match packet {
            Packet::Publish(publish) => self.publish(*publish, acks).map(|r| r.into_iter().collect()),
            Packet::PublishRelease { packet_id } => {
                self.session.lock().unwrap().inbound_qos2.remove(&packet_id.get());
                Ok(vec![Packet::PublishComplete { packet_id }])
            }
            Packet::PublishAck { packet_id } => {
                let mut state = self.session.lock().unwrap();
                if state.inflight.get(&packet_id.get()).is_some_and(|i| i.delivery.qos == 1) {
                    state.inflight.remove(&packet_id.get());
                }
                drop(state);
                Ok(self.next_deliveries())
            }
            Packet::PublishReceived { packet_id } => {
                let mut state = self.session.lock().unwrap();
                if let Some(inflight) = state.inflight.get_mut(&packet_id.get()) {
                    inflight.released = true;
                }
                Ok(vec![Packet::PublishRelease { packet_id }])
            }
            Packet::PublishComplete { packet_id } => {
                self.session.lock().unwrap().inflight.remove(&packet_id.get());
                Ok(self.next_deliveries())
            }
            Packet::Subscribe { packet_id, topic_filters } => {
                let (status, persist) = self.subscribe(&topic_filters);
                let ack = Packet::SubscribeAck { packet_id, status };
                match persist {
                    None => Ok(vec![ack]),
                    Some(subscriptions) => {
                        self.persist_then(acks, subscriptions, ack);
                        Ok(Vec::new())
                    }
                }
            }
            Packet::Unsubscribe { packet_id, topic_filters } => {
                let mut state = self.session.lock().unwrap();
                state.subscriptions.retain(|(f, _)| !topic_filters.iter().any(|u| u == f.as_str()));
                let persist = state.persistent.then(|| state.subscriptions.clone());
                drop(state);
                let ack = Packet::UnsubscribeAck { packet_id };
                match persist {
                    None => Ok(vec![ack]),
                    Some(subscriptions) => {
                        self.persist_then(acks, subscriptions, ack);
                        Ok(Vec::new())
                    }
                }
            }
            Packet::PingRequest => Ok(vec![Packet::PingResponse]),
            Packet::Disconnect => Err(Close::Clean),
            Packet::Connect(_) => Err(Close::Abnormal("protocol error: second CONNECT".into())),
            other => {
                Err(Close::Abnormal(format!("protocol error: unexpected packet type {}", other.packet_type() >> 4)))
            }
        }
    }

    fn publish(&mut self, publish: Publish, acks: &mut Acks) -> Result<Option<Packet>, Close> {
        if let Err(reason) = topic::validate_topic_name(&publish.topic) {
            return Err(Close::Abnormal(format!("protocol error: {reason}")));
        }
        self.shared.metrics.messages_in.inc();
        self.shared.metrics.bytes_in.inc_by(publish.payload.len() as u64);
        let packet_id = publish.packet_id;
        let qos = publish.qos;
        if qos == QoS::ExactlyOnce {
            let id = packet_id.map_or(0, NonZeroU16::get);
            if !self.session.lock().unwrap().inbound_qos2.insert(id) {
                // Already stored: acknowledge again, do not store twice.
                return Ok(packet_id.map(|packet_id| Packet::PublishReceived { packet_id }));
            }
        }
        let publication = Publication {
            topic: publish.topic.to_string(),
            payload: publish.payload,
            qos: qos.value(),
            retain: publish.retain,
            client_id: self.client_id.clone(),
            username: self.username.clone(),
            received_at: now_ms(),
        };
        let shared = self.shared.clone();
        acks.push_back(Box::pin(async move {
            shared.accept(publication).await?;
            Ok(match (qos, packet_id) {
                (QoS::AtLeastOnce, Some(packet_id)) => Some(Packet::PublishAck { packet_id }),
                (QoS::ExactlyOnce, Some(packet_id)) => Some(Packet::PublishReceived { packet_id }),
                _ => None,
            })
        }));
        Ok(None)
    }

    /// Applies a SUBSCRIBE; returns the SUBACK codes and, for a persistent session, the
    /// subscriptions to store before the SUBACK goes out.
    fn subscribe(&mut self, filters: &[(ByteString, QoS)]) -> (Vec<SubscribeReturnCode>, Option<Vec<(String, u8)>>) {
        let mut state = self.session.lock().unwrap();
        let mut status = Vec::with_capacity(filters.len());
        for (filter, qos) in filters {
            let refused = match topic::validate_topic_filter(filter) {
                Err(reason) => Some(reason),
                Ok(()) if self.shared.config.deny_subscribe.iter().any(|d| topic::matches(d, filter)) => {
                    Some("denied by mqtt.deny_subscribe")
                }
                Ok(()) => None,
            };
            if let Some(reason) = refused {
                tracing::info!(client_id = %self.client_id, %filter, reason, "subscription refused");
                status.push(SubscribeReturnCode::Failure);
                continue;
            }
            let granted = qos.value();
            match state.subscriptions.iter_mut().find(|(f, _)| f == filter.as_ref() as &str) {
                Some(existing) => existing.1 = granted,
                None => state.subscriptions.push((filter.to_string(), granted)),
            }
            // Retained messages for the new subscription, flagged as retained (MQTT-3.3.1-8).
            for p in self.shared.router.retained_matching(filter) {
                let delivery = Delivery { qos: granted.min(p.qos), publication: p, retain: true };
                self.shared.router.enqueue(&self.client_id, &mut state, delivery);
            }
            tracing::debug!(client_id = %self.client_id, %filter, granted, "subscribed");
            status.push(SubscribeReturnCode::Success(*qos));
        }
        let persist = state.persistent.then(|| state.subscriptions.clone());
        (status, persist)
    }

    /// Sends `ack` once the session's subscriptions are stored.
    fn persist_then(&self, acks: &mut Acks, subscriptions: Vec<(String, u8)>, ack: Packet) {
        let (shared, client_id) = (self.shared.clone(), self.client_id.clone());
        acks.push_back(Box::pin(async move {
            shared.store.save_session(&client_id, Some(&subscriptions)).await?;
            Ok(Some(ack))
        }));
    }

    /// Messages from the session's queue, as many as the in-flight window allows.
    fn next_deliveries(&self) -> Vec<Packet> {
        let mut state = self.session.lock().unwrap();
        let mut out = Vec::new();
        while state.inflight.len() < self.shared.config.max_inflight {
            let Some(delivery) = state.queue.pop_front() else { break };
            let packet_id = (delivery.qos > 0).then(|| state.allocate_packet_id());
            out.push(publish_packet(&delivery, packet_id, false));
            if let Some(id) = packet_id {
                state.inflight.insert(id, Inflight { delivery, released: false });
            }
        }
        out
    }

    /// What a reconnecting client gets again: unacknowledged PUBLISHes with DUP set, and
    /// PUBRELs for QoS 2 messages it had received.
    fn redeliveries(&self) -> Vec<Packet> {
        let state = self.session.lock().unwrap();
        state
            .inflight
            .iter()
            .map(|(&id, inflight)| {
                let packet_id = NonZeroU16::new(id).expect("packet ids are never 0");
                if inflight.released {
                    Packet::PublishRelease { packet_id }
                } else {
                    publish_packet(&inflight.delivery, Some(id), true)
                }
            })
            .collect()
    }
}

fn publish_packet(delivery: &Delivery, packet_id: Option<u16>, dup: bool) -> Packet {
    let qos = match delivery.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    Packet::Publish(Box::new(Publish {
        dup,
        retain: delivery.retain,
        qos,
        topic: ByteString::from(delivery.publication.topic.as_str()),
        packet_id: packet_id.and_then(NonZeroU16::new),
        payload: delivery.publication.payload.clone(),
        properties: None,
    }))
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(now_ms());
    h.finish()
}
