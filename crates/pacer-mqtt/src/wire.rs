//! Packets as the session logic sees them, whatever the protocol version.
//!
//! MQTT 3.1.1 and 5.0 differ on the wire (properties, reason codes) but not in what a
//! session does, so the connection works with [`In`] and [`Out`] and this module translates
//! to and from the codec's packets. Where 3.1.1 has no way to say something (a negative
//! PUBACK, a server DISCONNECT) the translation returns None and the caller closes instead.

use std::num::NonZeroU16;

use bytestring::ByteString;
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::v3::{self, SubscribeReturnCode};
use rmqtt_codec::v5;
use rmqtt_codec::MqttPacket;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V3,
    V5,
}

/// Subscription options (MQTT 5 §3.8.3.1); 3.1.1 subscriptions have only the QoS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct SubOptions {
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// 0: send retained messages at subscribe, 1: only for a new subscription, 2: never.
    pub retain_handling: u8,
}

/// What a client sent.
#[derive(Debug)]
pub enum In {
    Publish(Box<Publish>),
    PubAck(NonZeroU16),
    PubRec(NonZeroU16),
    PubRel(NonZeroU16),
    PubComp(NonZeroU16),
    Subscribe {
        packet_id: NonZeroU16,
        id: Option<u32>,
        filters: Vec<(String, SubOptions)>,
    },
    Unsubscribe {
        packet_id: NonZeroU16,
        filters: Vec<String>,
    },
    Ping,
    /// `with_will`: MQTT 5 reason 0x04, disconnect but publish the will.
    Disconnect {
        session_expiry: Option<u32>,
        with_will: bool,
    },
    /// A packet a client must not send here (a second CONNECT, AUTH, server packets).
    Unexpected(&'static str),
}

/// What the broker sends.
#[derive(Debug)]
pub enum Out {
    Publish(Box<Publish>),
    PubAck { packet_id: NonZeroU16, reason: u8, message: Option<String> },
    PubRec { packet_id: NonZeroU16, reason: u8, message: Option<String> },
    PubRel(NonZeroU16),
    PubComp(NonZeroU16),
    SubAck { packet_id: NonZeroU16, codes: Vec<u8> },
    UnsubAck { packet_id: NonZeroU16, codes: Vec<u8> },
    PingResp,
    Disconnect { reason: u8, message: String },
}

pub fn decode(packet: MqttPacket) -> Option<In> {
    Some(match packet {
        MqttPacket::V3(p) => match p {
            v3::Packet::Publish(p) => In::Publish(p),
            v3::Packet::PublishAck { packet_id } => In::PubAck(packet_id),
            v3::Packet::PublishReceived { packet_id } => In::PubRec(packet_id),
            v3::Packet::PublishRelease { packet_id } => In::PubRel(packet_id),
            v3::Packet::PublishComplete { packet_id } => In::PubComp(packet_id),
            v3::Packet::Subscribe { packet_id, topic_filters } => In::Subscribe {
                packet_id,
                id: None,
                filters: topic_filters
                    .into_iter()
                    .map(|(f, q)| (f.to_string(), SubOptions { qos: q.value(), ..Default::default() }))
                    .collect(),
            },
            v3::Packet::Unsubscribe { packet_id, topic_filters } => {
                In::Unsubscribe { packet_id, filters: topic_filters.into_iter().map(|f| f.to_string()).collect() }
            }
            v3::Packet::PingRequest => In::Ping,
            v3::Packet::Disconnect => In::Disconnect { session_expiry: None, with_will: false },
            v3::Packet::Connect(_) => In::Unexpected("a second CONNECT"),
            _ => In::Unexpected("a packet only a server sends"),
        },
        MqttPacket::V5(p) => match p {
            v5::Packet::Publish(p) => In::Publish(p),
            v5::Packet::PublishAck(a) => In::PubAck(a.packet_id),
            v5::Packet::PublishReceived(a) => In::PubRec(a.packet_id),
            v5::Packet::PublishRelease(a) => In::PubRel(a.packet_id),
            v5::Packet::PublishComplete(a) => In::PubComp(a.packet_id),
            v5::Packet::Subscribe(s) => In::Subscribe {
                packet_id: s.packet_id,
                id: s.id.map(|i| i.get()),
                filters: s
                    .topic_filters
                    .into_iter()
                    .map(|(f, o)| {
                        let opts = SubOptions {
                            qos: o.qos.value(),
                            no_local: o.no_local,
                            retain_as_published: o.retain_as_published,
                            retain_handling: o.retain_handling.into(),
                        };
                        (f.to_string(), opts)
                    })
                    .collect(),
            },
            v5::Packet::Unsubscribe(u) => In::Unsubscribe {
                packet_id: u.packet_id,
                filters: u.topic_filters.into_iter().map(|f| f.to_string()).collect(),
            },
            v5::Packet::PingRequest => In::Ping,
            v5::Packet::Disconnect(d) => In::Disconnect {
                session_expiry: d.session_expiry_interval_secs,
                with_will: u8::from(d.reason_code) == 0x04,
            },
            v5::Packet::Connect(_) => In::Unexpected("a second CONNECT"),
            v5::Packet::Auth(_) => In::Unexpected("AUTH (no authentication methods are offered)"),
            _ => In::Unexpected("a packet only a server sends"),
        },
        MqttPacket::Version(_) => return None,
    })
}

/// The codec packet for `out`; None where MQTT 3.1.1 cannot express it.
pub fn encode(version: Version, out: Out) -> Option<MqttPacket> {
    match version {
        Version::V3 => Some(MqttPacket::V3(match out {
            Out::Publish(mut p) => {
                p.properties = None;
                v3::Packet::Publish(p)
            }
            Out::PubAck { packet_id, reason: 0, .. } => v3::Packet::PublishAck { packet_id },
            Out::PubRec { packet_id, reason: 0, .. } => v3::Packet::PublishReceived { packet_id },
            Out::PubAck { .. } | Out::PubRec { .. } | Out::Disconnect { .. } => return None,
            Out::PubRel(packet_id) => v3::Packet::PublishRelease { packet_id },
            Out::PubComp(packet_id) => v3::Packet::PublishComplete { packet_id },
            Out::SubAck { packet_id, codes } => v3::Packet::SubscribeAck {
                packet_id,
                status: codes
                    .into_iter()
                    .map(|c| match c {
                        0 => SubscribeReturnCode::Success(QoS::AtMostOnce),
                        1 => SubscribeReturnCode::Success(QoS::AtLeastOnce),
                        2 => SubscribeReturnCode::Success(QoS::ExactlyOnce),
                        _ => SubscribeReturnCode::Failure,
                    })
                    .collect(),
            },
            Out::UnsubAck { packet_id, .. } => v3::Packet::UnsubscribeAck { packet_id },
            Out::PingResp => v3::Packet::PingResponse,
        })),
        Version::V5 => Some(MqttPacket::V5(match out {
            Out::Publish(p) => v5::Packet::Publish(p),
            Out::PubAck { packet_id, reason, message } => v5::Packet::PublishAck(v5::PublishAck {
                packet_id,
                reason_code: v5::PublishAckReason::try_from(reason).unwrap_or(v5::PublishAckReason::UnspecifiedError),
                properties: Vec::new(),
                reason_string: message.map(ByteString::from),
            }),
            Out::PubRec { packet_id, reason, message } => v5::Packet::PublishReceived(v5::PublishAck {
                packet_id,
                reason_code: v5::PublishAckReason::try_from(reason).unwrap_or(v5::PublishAckReason::UnspecifiedError),
                properties: Vec::new(),
                reason_string: message.map(ByteString::from),
            }),
            Out::PubRel(packet_id) => v5::Packet::PublishRelease(ack2(packet_id)),
            Out::PubComp(packet_id) => v5::Packet::PublishComplete(ack2(packet_id)),
            Out::SubAck { packet_id, codes } => v5::Packet::SubscribeAck(v5::SubscribeAck {
                packet_id,
                properties: Vec::new(),
                reason_string: None,
                status: codes
                    .into_iter()
                    .map(|c| v5::SubscribeAckReason::try_from(c).unwrap_or(v5::SubscribeAckReason::UnspecifiedError))
                    .collect(),
            }),
            Out::UnsubAck { packet_id, codes } => v5::Packet::UnsubscribeAck(v5::UnsubscribeAck {
                packet_id,
                properties: Vec::new(),
                reason_string: None,
                status: codes
                    .into_iter()
                    .map(|c| {
                        v5::UnsubscribeAckReason::try_from(c).unwrap_or(v5::UnsubscribeAckReason::UnspecifiedError)
                    })
                    .collect(),
            }),
            Out::PingResp => v5::Packet::PingResponse,
            Out::Disconnect { reason, message } => v5::Packet::Disconnect(v5::Disconnect {
                reason_code: v5::DisconnectReasonCode::try_from(reason)
                    .unwrap_or(v5::DisconnectReasonCode::UnspecifiedError),
                session_expiry_interval_secs: None,
                server_reference: None,
                reason_string: Some(ByteString::from(message)),
                user_properties: Vec::new(),
            }),
        })),
    }
}

fn ack2(packet_id: NonZeroU16) -> v5::PublishAck2 {
    v5::PublishAck2 {
        packet_id,
        reason_code: v5::PublishAck2Reason::Success,
        properties: Vec::new(),
        reason_string: None,
    }
}
