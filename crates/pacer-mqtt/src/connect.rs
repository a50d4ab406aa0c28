//! The CONNECT handshake for both protocol versions: what the client asked for, and the
//! CONNACK that answers it.

use std::num::NonZeroU16;

use bytestring::ByteString;
use pacer_core::{now_ms, MessageProperties, Publication};
use rmqtt_codec::types::QoS;
use rmqtt_codec::{v3, v5, MqttPacket};

use crate::session::NEVER_EXPIRES;
use crate::wire::Version;
use crate::BrokerConfig;

/// A will message and how long after the connection is lost it is published.
pub struct Will {
    pub publication: Publication,
    pub delay_secs: u32,
}

/// What a CONNECT asked for, whatever its version.
pub struct ConnectRequest {
    pub version: Version,
    /// Empty when the client left it to the server.
    pub client_id: String,
    pub clean_start: bool,
    pub keep_alive: u16,
    pub username: Option<String>,
    pub password: Option<bytes::Bytes>,
    pub will: Option<Will>,
    /// 0: the session ends with the connection; NEVER_EXPIRES for a 3.1.1 persistent one.
    pub session_expiry: u32,
    /// MQTT 5 limits the client sets for what the broker sends it.
    pub receive_maximum: u16,
    pub maximum_packet_size: Option<u32>,
    pub topic_alias_maximum: u16,
    pub auth_method: Option<String>,
}

impl ConnectRequest {
    pub fn from_packet(packet: MqttPacket) -> Option<ConnectRequest> {
        match packet {
            MqttPacket::V3(v3::Packet::Connect(c)) => Some(ConnectRequest {
                version: Version::V3,
                client_id: c.client_id.to_string(),
                clean_start: c.clean_session,
                keep_alive: c.keep_alive,
                username: c.username.map(|u| u.to_string()),
                password: c.password,
                will: c
                    .last_will
                    .map(|w| Will { publication: will_message(&w.topic, w.message, w.qos, w.retain), delay_secs: 0 }),
                session_expiry: if c.clean_session { 0 } else { NEVER_EXPIRES },
                receive_maximum: u16::MAX,
                maximum_packet_size: None,
                topic_alias_maximum: 0,
                auth_method: None,
            }),
            MqttPacket::V5(v5::Packet::Connect(c)) => Some(ConnectRequest {
                version: Version::V5,
                client_id: c.client_id.to_string(),
                clean_start: c.clean_start,
                keep_alive: c.keep_alive,
                username: c.username.map(|u| u.to_string()),
                password: c.password,
                will: c.last_will.map(|w| Will {
                    publication: Publication {
                        properties: MessageProperties {
                            payload_is_utf8: w.is_utf8_payload.unwrap_or(false),
                            content_type: w.content_type.map(|s| s.to_string()),
                            response_topic: w.response_topic.map(|s| s.to_string()),
                            correlation_data: w.correlation_data,
                            user_properties: w
                                .user_properties
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_string()))
                                .collect(),
                            // Counted from when the will is published; set then.
                            expires_at: w.message_expiry_interval.map(|s| s.get() as i64),
                        },
                        ..will_message(&w.topic, w.message, w.qos, w.retain)
                    },
                    delay_secs: w.will_delay_interval_sec.unwrap_or(0),
                }),
                session_expiry: c.session_expiry_interval_secs,
                receive_maximum: c.receive_max.map_or(u16::MAX, |r| r.get()),
                maximum_packet_size: c.max_packet_size.map(|m| m.get()),
                topic_alias_maximum: c.topic_alias_max,
                auth_method: c.auth_method.map(|m| m.to_string()),
            }),
            _ => None,
        }
    }
}

/// A will's message as either version carries it; sender and time are set when it is sent.
fn will_message(topic: &str, payload: bytes::Bytes, qos: QoS, retain: bool) -> Publication {
    Publication { topic: topic.to_string(), payload, qos: qos.value(), retain, ..Default::default() }
}

/// Why a CONNECT is refused.
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    IdentifierRejected,
    BadCredentials,
    NotAuthorized,
    ServerUnavailable,
    BadAuthenticationMethod,
    /// Too many connections: MQTT 5's Quota exceeded (0x97); 3.1.1 says server unavailable.
    QuotaExceeded,
}

pub fn refusal(version: Version, why: Refusal) -> MqttPacket {
    match version {
        Version::V3 => {
            let return_code = match why {
                Refusal::IdentifierRejected => v3::ConnectAckReason::IdentifierRejected,
                Refusal::BadCredentials => v3::ConnectAckReason::BadUserNameOrPassword,
                Refusal::NotAuthorized | Refusal::BadAuthenticationMethod => v3::ConnectAckReason::NotAuthorized,
                Refusal::ServerUnavailable | Refusal::QuotaExceeded => v3::ConnectAckReason::ServiceUnavailable,
            };
            MqttPacket::V3(v3::Packet::ConnectAck(v3::ConnectAck { return_code, session_present: false }))
        }
        Version::V5 => {
            let reason_code = match why {
                Refusal::IdentifierRejected => v5::ConnectAckReason::ClientIdentifierNotValid,
                Refusal::BadCredentials => v5::ConnectAckReason::BadUserNameOrPassword,
                Refusal::NotAuthorized => v5::ConnectAckReason::NotAuthorized,
                Refusal::ServerUnavailable => v5::ConnectAckReason::ServerUnavailable,
                Refusal::BadAuthenticationMethod => v5::ConnectAckReason::BadAuthenticationMethod,
                Refusal::QuotaExceeded => v5::ConnectAckReason::QuotaExceeded,
            };
            MqttPacket::V5(v5::Packet::ConnectAck(Box::new(v5::ConnectAck { reason_code, ..Default::default() })))
        }
    }
}

/// The MQTT 5 CONNACK refusing a CONNECT that did not decode, with the reason a later
/// packet would get in a DISCONNECT (0x81, 0x82 or 0x95).
pub fn unreadable(reason: u8) -> MqttPacket {
    let reason_code = v5::ConnectAckReason::try_from(reason).unwrap_or(v5::ConnectAckReason::MalformedPacket);
    MqttPacket::V5(v5::Packet::ConnectAck(Box::new(v5::ConnectAck { reason_code, ..Default::default() })))
}

/// The CONNACK of an accepted connection, advertising the broker's limits to MQTT 5 clients.
pub fn accepted(
    version: Version,
    config: &BrokerConfig,
    session_present: bool,
    assigned_client_id: Option<&str>,
    server_keep_alive: Option<u16>,
) -> MqttPacket {
    match version {
        Version::V3 => MqttPacket::V3(v3::Packet::ConnectAck(v3::ConnectAck {
            return_code: v3::ConnectAckReason::ConnectionAccepted,
            session_present,
        })),
        Version::V5 => MqttPacket::V5(v5::Packet::ConnectAck(Box::new(v5::ConnectAck {
            session_present,
            reason_code: v5::ConnectAckReason::Success,
            receive_max: NonZeroU16::new(config.receive_maximum).unwrap_or(NonZeroU16::MAX),
            max_qos: QoS::ExactlyOnce,
            max_packet_size: Some(config.max_packet_size),
            assigned_client_id: assigned_client_id.map(ByteString::from),
            topic_alias_max: config.topic_alias_maximum,
            retain_available: true,
            wildcard_subscription_available: true,
            subscription_identifiers_available: true,
            shared_subscription_available: true,
            server_keepalive_sec: server_keep_alive,
            ..Default::default()
        }))),
    }
}

/// A will ready to publish: its sender and, for MQTT 5 expiry, its deadline from now.
pub fn will_publication(mut will: Publication, client_id: &str, username: Option<String>) -> Publication {
    let now = now_ms();
    will.client_id = client_id.to_string();
    will.username = username;
    will.received_at = now;
    will.properties.expires_at = will.properties.expires_at.map(|secs| now + secs * 1000);
    will
}
