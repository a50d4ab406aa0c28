//! One client connection: the MQTT 3.1.1 session state machine.
//!
//! Inbound publishes are handed to the [`PublishSink`] and acknowledged only when it says
//! the record is durable. Several publishes can be in that wait at once (clients keep up to
//! their in-flight window open), and their acks go out in the order the publishes came, as
//! MQTT-4.6.0 requires.

use std::collections::{HashMap, HashSet};
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

use crate::router::{Delivery, Registration};
use crate::topic;
use crate::Shared;

/// How long a client has to send CONNECT after opening the socket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type Transport<S> = Framed<S, MqttCodec>;

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

    let client_id = if connect.client_id.is_empty() {
        if !connect.clean_session {
            let ack = ConnectAck { return_code: ConnectAckReason::IdentifierRejected, session_present: false };
            let _ = transport.send(MqttPacket::V3(Packet::ConnectAck(ack))).await;
            return;
        }
        format!("pacer-{:016x}", rand_id())
    } else {
        connect.client_id.to_string()
    };
    if !shared.config.allow_anonymous && connect.username.is_none() {
        let ack = ConnectAck { return_code: ConnectAckReason::NotAuthorized, session_present: false };
        let _ = transport.send(MqttPacket::V3(Packet::ConnectAck(ack))).await;
        tracing::info!(%peer, %client_id, "refused anonymous client");
        return;
    }
    let registration = shared.router.register(&client_id);
    let ack = ConnectAck { return_code: ConnectAckReason::ConnectionAccepted, session_present: false };
    if transport.send(MqttPacket::V3(Packet::ConnectAck(ack))).await.is_err() {
        shared.router.unregister(&client_id, registration.generation);
        return;
    }
    shared.metrics.connections.inc();
    tracing::info!(%peer, %client_id, keep_alive = connect.keep_alive, "client connected");

    let will = connect.last_will.clone();
    let mut session = Session {
        shared: shared.clone(),
        client_id: client_id.clone(),
        username: connect.username.as_ref().map(|u| u.to_string()),
        keep_alive: connect.keep_alive,
        next_packet_id: 1,
        outbound_inflight: HashMap::new(),
        inbound_qos2: HashSet::new(),
    };
    let generation = registration.generation;
    let close = session.run(&mut transport, registration).await;
    shared.router.unregister(&client_id, generation);
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
                    username: session.username.clone(),
                    received_at: now_ms(),
                };
                if let Err(e) = shared.accept(publication).await {
                    tracing::error!(%client_id, error = %e, "could not store the will message");
                }
            }
        }
    }
}

struct Session {
    shared: Arc<Shared>,
    client_id: String,
    username: Option<String>,
    keep_alive: u16,
    next_packet_id: u16,
    /// QoS 1 deliveries sent and not yet acknowledged by the client.
    outbound_inflight: HashMap<u16, Delivery>,
    /// QoS 2 packet ids stored and PUBREC'd, waiting for PUBREL: a resent PUBLISH with one of
    /// these ids is a duplicate and is not stored again.
    inbound_qos2: HashSet<u16>,
}

impl Session {
    async fn run<S>(&mut self, transport: &mut Transport<S>, mut registration: Registration) -> Close
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut acks: FuturesOrdered<BoxFuture<'static, anyhow::Result<Option<Packet>>>> = FuturesOrdered::new();
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
                        Ok(Some(reply)) => {
                            if let Err(e) = transport.send(MqttPacket::V3(reply)).await {
                                return Close::Abnormal(format!("write failed: {e}"));
                            }
                        }
                        Ok(None) => {}
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
                Some(delivery) = registration.queue.recv() => {
                    let packet = self.outbound(delivery);
                    if let Err(e) = transport.send(MqttPacket::V3(packet)).await {
                        return Close::Abnormal(format!("write failed: {e}"));
                    }
                    self.shared.metrics.messages_out.inc();
                }
                _ = registration.kick.notified() => {
                    return Close::Abnormal("another connection took over the client id".into());
                }
            }
        }
    }

    /// Handles one packet from the client: a reply to send now, nothing, or the end.
    fn handle(
        &mut self,
        packet: Packet,
        acks: &mut FuturesOrdered<BoxFuture<'static, anyhow::Result<Option<Packet>>>>,
    ) -> Result<Option<Packet>, Close> {
        match packet {
            Packet::Publish(publish) => {
                if let Err(reason) = topic::validate_topic_name(&publish.topic) {
                    return Err(Close::Abnormal(format!("protocol error: {reason}")));
                }
                self.shared.metrics.messages_in.inc();
                self.shared.metrics.bytes_in.inc_by(publish.payload.len() as u64);
                let packet_id = publish.packet_id;
                let qos = publish.qos;
                if qos == QoS::ExactlyOnce {
                    let id = packet_id.map_or(0, NonZeroU16::get);
                    if !self.inbound_qos2.insert(id) {
                        // Already stored: acknowledge again, do not store twice.
                        return Ok(Some(Packet::PublishReceived { packet_id: packet_id.unwrap() }));
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
            Packet::PublishRelease { packet_id } => {
                self.inbound_qos2.remove(&packet_id.get());
                Ok(Some(Packet::PublishComplete { packet_id }))
            }
            Packet::PublishAck { packet_id } => {
                self.outbound_inflight.remove(&packet_id.get());
                Ok(None)
            }
            Packet::Subscribe { packet_id, topic_filters } => {
                let status = topic_filters
                    .iter()
                    .map(|(filter, qos)| match topic::validate_topic_filter(filter) {
                        Ok(()) => {
                            // Outbound QoS 2 arrives with the broker issue; granting 1 is allowed.
                            let granted = qos.value().min(1);
                            self.shared.router.subscribe(&self.client_id, filter, granted);
                            tracing::debug!(client_id = %self.client_id, %filter, granted, "subscribed");
                            SubscribeReturnCode::Success(if granted == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce })
                        }
                        Err(reason) => {
                            tracing::info!(client_id = %self.client_id, %filter, reason, "subscription refused");
                            SubscribeReturnCode::Failure
                        }
                    })
                    .collect();
                Ok(Some(Packet::SubscribeAck { packet_id, status }))
            }
            Packet::Unsubscribe { packet_id, topic_filters } => {
                for filter in &topic_filters {
                    self.shared.router.unsubscribe(&self.client_id, filter);
                }
                Ok(Some(Packet::UnsubscribeAck { packet_id }))
            }
            Packet::PingRequest => Ok(Some(Packet::PingResponse)),
            Packet::Disconnect => Err(Close::Clean),
            Packet::Connect(_) => Err(Close::Abnormal("protocol error: second CONNECT".into())),
            other => {
                Err(Close::Abnormal(format!("protocol error: unexpected packet type {}", other.packet_type() >> 4)))
            }
        }
    }

    fn outbound(&mut self, delivery: Delivery) -> Packet {
        let qos = if delivery.qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce };
        let packet_id = (delivery.qos > 0).then(|| self.allocate_packet_id());
        let publish = Publish {
            dup: false,
            retain: false,
            qos,
            topic: ByteString::from(delivery.publication.topic.as_str()),
            packet_id,
            payload: delivery.publication.payload.clone(),
            properties: None,
        };
        if let Some(id) = packet_id {
            self.outbound_inflight.insert(id.get(), delivery);
        }
        Packet::Publish(Box::new(publish))
    }

    fn allocate_packet_id(&mut self) -> NonZeroU16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if !self.outbound_inflight.contains_key(&id) {
                return NonZeroU16::new(id).expect("ids start at 1 and skip 0");
            }
        }
    }
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(now_ms());
    h.finish()
}
