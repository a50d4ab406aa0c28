//! Harnesses for the fuzz targets in `fuzz/` and for the test that replays their corpus:
//! bytes a malicious client could send, pushed through the real decoding path and the real
//! connection state machine. Not an API: hidden from the docs and free to change.
//!
//! Both harnesses panic when something is wrong, since a panic is what a fuzzer reports;
//! a malformed input is not wrong in itself, only a broker that mishandles it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pacer_core::Publication;
use rmqtt_codec::error::DecodeError;
use rmqtt_codec::version::{ProtocolVersion, VersionCodec};
use rmqtt_codec::{v3, v5, MqttPacket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Decoder;

use crate::connect::ConnectRequest;
use crate::{auth, connection, wire, Broker, BrokerConfig, MemoryOnly, PublishSink, Shared};

/// The broker's inbound packet limit in both harnesses: small, so inputs of a few KiB
/// can announce packets above it.
const MAX_PACKET: u32 = 16 * 1024;

/// A session whose client has closed its side must end by itself well within this; one
/// that does not is a hang, reported as a panic. (A task that spins without yielding is
/// beyond any tokio timeout: libFuzzer's -timeout and the replay test's watchdog catch it.)
const SESSION_LIMIT: Duration = Duration::from_secs(10);

/// Decodes `data` as a client's byte stream the way the broker would: the version sniff of
/// the first packet, then MQTT 3.1.1 and MQTT 5 packets until the first error, each turned
/// into what the session sees (`ConnectRequest`, `wire::In`). The stream is decoded both in
/// one piece and a byte at a time; packets arrive split at any point over TCP, so both must
/// give the same packets and the same error.
pub fn decode_bytes(data: &[u8]) {
    let _ = VersionCodec.decode(&mut BytesMut::from(data));

    let whole = decode_stream(v3::Codec::new(MAX_PACKET), data, data.len().max(1));
    let split = decode_stream(v3::Codec::new(MAX_PACKET), data, 1);
    assert_eq!(whole, split, "MQTT 3.1.1 decoding depends on how the bytes are split");
    for (packet, _) in whole.0 {
        look_at(MqttPacket::V3(packet));
    }

    let whole = decode_stream(v5::Codec::new(MAX_PACKET, 0), data, data.len().max(1));
    let split = decode_stream(v5::Codec::new(MAX_PACKET, 0), data, 1);
    assert_eq!(whole, split, "MQTT 5 decoding depends on how the bytes are split");
    for (packet, _) in whole.0 {
        look_at(MqttPacket::V5(packet));
    }
}

/// What the session makes of a packet; a second decode as CONNECT costs little and covers
/// the handshake's parsing too.
fn look_at(packet: MqttPacket) {
    let connect = match &packet {
        MqttPacket::V3(p @ v3::Packet::Connect(_)) => Some(MqttPacket::V3(p.clone())),
        MqttPacket::V5(p @ v5::Packet::Connect(_)) => Some(MqttPacket::V5(p.clone())),
        _ => None,
    };
    if let Some(connect) = connect {
        assert!(ConnectRequest::from_packet(connect).is_some(), "a decoded CONNECT was not taken as one");
    }
    let _ = wire::decode(packet);
}

/// Packets decoded from `data` fed `chunk` bytes at a time, and the error that stopped
/// decoding (as text: the codec's errors do not compare).
fn decode_stream<C, P>(mut codec: C, data: &[u8], chunk: usize) -> (Vec<(P, u32)>, Option<String>)
where
    C: Decoder<Item = (P, u32), Error = DecodeError>,
{
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(p)) => packets.push(p),
                Ok(None) => break,
                Err(e) => return (packets, Some(e.to_string())),
            }
        }
    }
    (packets, None)
}

/// What the broker sent back to a fuzzed client.
#[derive(Debug)]
pub struct SessionOutcome {
    /// The protocol version the first packet announced, if it was a CONNECT at all.
    pub version: Option<ProtocolVersion>,
    /// The broker's packets, decoded as a client of that version would.
    pub replies: Vec<MqttPacket>,
}

impl SessionOutcome {
    /// The reason of the MQTT 5 DISCONNECT the broker closed with, if it sent one.
    pub fn disconnect_reason(&self) -> Option<u8> {
        self.replies.iter().find_map(|p| match p {
            MqttPacket::V5(v5::Packet::Disconnect(d)) => Some(u8::from(d.reason_code)),
            _ => None,
        })
    }
}

/// Runs `data` as one client's whole byte stream (then the client closes its side) through
/// `connection::serve` on a fresh broker, with a well-behaved client (the bystander)
/// connected throughout; then a new client (the probe) connects and publishes, and both
/// must get its message. Panics if the session hangs, if the broker sends anything a client
/// could not decode or closes for a reason that is not the client's fault, or if either
/// well-behaved client is not served.
pub async fn run_session_bytes(data: &[u8]) -> SessionOutcome {
    let shared = fuzz_broker().await;
    let mut bystander =
        tokio::time::timeout(SESSION_LIMIT, Client::connect(&shared, BYSTANDER)).await.expect("the bystander connects");
    let sent = tokio::time::timeout(SESSION_LIMIT, converse(&shared, data))
        .await
        .expect("the session did not end after its client closed the connection");
    let version = VersionCodec.decode(&mut BytesMut::from(data)).ok().flatten();
    let replies = match version {
        None => {
            assert!(sent.is_empty(), "the broker answered a client that never sent a CONNECT: {sent:?}");
            Vec::new()
        }
        Some(ProtocolVersion::MQTT3) => {
            client_decode(v3::Codec::new(0), &sent).into_iter().map(MqttPacket::V3).collect()
        }
        Some(ProtocolVersion::MQTT5) => {
            client_decode(v5::Codec::new(0, 0), &sent).into_iter().map(MqttPacket::V5).collect()
        }
    };
    check_replies(&replies);
    let after = async {
        let mut probe = Client::connect(&shared, "fuzz-probe").await;
        probe.publish_check().await;
        probe.expect_check().await;
        probe.close().await;
        bystander.expect_check().await;
        bystander.close().await;
    };
    tokio::time::timeout(SESSION_LIMIT, after)
        .await
        .expect("the other clients were not served after the fuzzed session");
    SessionOutcome { version, replies }
}

/// [`run_session_bytes`] on a runtime of its own, dropped afterwards so that nothing the
/// session spawned (will delays, session expiry timers) outlives the input.
pub fn run_session_blocking(data: &[u8]) -> SessionOutcome {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    runtime.block_on(run_session_bytes(data))
}

/// Connected while the fuzzed client runs; an id the fuzzer will not stumble on, since
/// taking a client id over is allowed and would close the bystander legitimately.
const BYSTANDER: &str = "bystander-5d2b8046e1a9";

/// Pattern rules apply to every client, named or anonymous; `secret/` exercises denials.
const FUZZ_ACL: &str = "pattern readwrite #\npattern deny secret/#\n";

/// A broker with limits small enough for short inputs to reach them.
async fn fuzz_broker() -> Arc<Shared> {
    let config = BrokerConfig {
        max_packet_size: MAX_PACKET,
        max_inflight: 4,
        receive_maximum: 8,
        topic_alias_maximum: 4,
        max_keep_alive: 60,
        deny_subscribe: vec!["denied/#".into()],
        ..BrokerConfig::default()
    };
    let acl = auth::Acl::parse(FUZZ_ACL).expect("the fuzzing ACL parses");
    let broker =
        Broker::start(config, Arc::new(auth::Authorizer::with_acl(acl)), Arc::new(FuzzSink), Arc::new(MemoryOnly))
            .await
            .expect("an in-memory broker starts");
    broker.shared
}

/// Accepts everything except topics under `fail/` (a store error) and `full/` (a full
/// disk), so refused publishes are fuzzed too.
struct FuzzSink;

#[async_trait]
impl PublishSink for FuzzSink {
    async fn accept(&self, publications: &[Publication]) -> anyhow::Result<()> {
        for p in publications {
            if p.topic.starts_with("fail/") {
                anyhow::bail!("refused by the fuzzing sink");
            }
            if p.topic.starts_with("full/") {
                anyhow::bail!("No space left on device");
            }
        }
        Ok(())
    }
}

/// Writes `data` then closes the client's side, while reading all the broker sends until
/// it closes; returns what it sent.
async fn converse(shared: &Arc<Shared>, data: &[u8]) -> Vec<u8> {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let serve = connection::serve(server, "fuzz".into(), shared.clone());
    let (mut read, mut write) = tokio::io::split(client);
    let send = async {
        // The broker may close first; what it did not read does not matter then.
        let _ = write.write_all(data).await;
        let _ = write.shutdown().await;
    };
    let mut sent = Vec::new();
    let receive = read.read_to_end(&mut sent);
    let ((), (), received) = tokio::join!(serve, send, receive);
    received.expect("reading from an in-memory pipe");
    sent
}

/// The broker's bytes as a client decodes them; an undecodable packet is a bug, and so is
/// a partial one at the end, since the broker only ever writes whole packets.
fn client_decode<C, P>(mut codec: C, sent: &[u8]) -> Vec<P>
where
    C: Decoder<Item = (P, u32), Error = DecodeError>,
{
    let mut buf = BytesMut::from(sent);
    let mut packets = Vec::new();
    loop {
        match codec.decode(&mut buf) {
            Ok(Some((p, _))) => packets.push(p),
            Ok(None) => break,
            Err(e) => panic!("the broker sent a packet a client cannot decode ({e}): {sent:02x?}"),
        }
    }
    assert!(buf.is_empty(), "the broker's last packet was cut short: {sent:02x?}");
    packets
}

/// The reasons a broker may end a fuzzed MQTT 5 conversation with: the client's fault in
/// one of the ways the broker checks (malformed, protocol error, topic name, Receive
/// Maximum, topic alias, size). Anything else would be a wrong reason: the broker's own
/// faults (0x80, 0x83), keep-alive (0x8D: this client closes at once) or a takeover (0x8E:
/// nobody else uses its client id while it is connected).
const CLIENT_FAULTS: &[u8] = &[0x81, 0x82, 0x90, 0x93, 0x94, 0x95];

/// What holds for any conversation: CONNACK first, nothing after a DISCONNECT, and the
/// DISCONNECT's reason is one for something the client did.
fn check_replies(replies: &[MqttPacket]) {
    if let Some(first) = replies.first() {
        let connack =
            matches!(first, MqttPacket::V3(v3::Packet::ConnectAck(_)) | MqttPacket::V5(v5::Packet::ConnectAck(_)));
        assert!(connack, "the broker's first packet was not a CONNACK: {first:?}");
    }
    if let Some(i) = replies.iter().position(|p| matches!(p, MqttPacket::V5(v5::Packet::Disconnect(_)))) {
        assert_eq!(i, replies.len() - 1, "the broker sent packets after its DISCONNECT: {replies:?}");
        if let MqttPacket::V5(v5::Packet::Disconnect(d)) = &replies[i] {
            let reason = u8::from(d.reason_code);
            assert!(CLIENT_FAULTS.contains(&reason), "DISCONNECT with reason {reason:#04x}: {replies:?}");
        }
    }
}

/// A well-behaved MQTT 5 client, to check what the fuzzed one must not affect.
struct Client {
    read: tokio::io::ReadHalf<tokio::io::DuplexStream>,
    write: tokio::io::WriteHalf<tokio::io::DuplexStream>,
    codec: v5::Codec,
    buf: BytesMut,
    serve: tokio::task::JoinHandle<()>,
}

/// The topic both well-behaved clients subscribe to, and what the probe publishes there.
const CHECK_TOPIC: &str = "probe/check";
const CHECK_PAYLOAD: &[u8] = b"probe-payload";

impl Client {
    /// Connects (clean start, keep-alive off) and subscribes to [`CHECK_TOPIC`] at QoS 1,
    /// without retained messages so nothing the fuzzed client retained gets in the way.
    async fn connect(shared: &Arc<Shared>, client_id: &str) -> Client {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let serve = tokio::spawn(connection::serve(server, client_id.into(), shared.clone()));
        let (read, write) = tokio::io::split(client);
        let mut client = Client { read, write, codec: v5::Codec::new(0, 0), buf: BytesMut::new(), serve };
        let mut connect = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x00, 0x00];
        connect.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
        connect.extend_from_slice(client_id.as_bytes());
        client.send(0x10, &connect).await;
        let mut subscribe = vec![0x00, 0x01, 0x00];
        subscribe.extend_from_slice(&(CHECK_TOPIC.len() as u16).to_be_bytes());
        subscribe.extend_from_slice(CHECK_TOPIC.as_bytes());
        subscribe.push(0x21); // QoS 1, Retain Handling 2: no retained messages
        client.send(0x82, &subscribe).await;
        match client.next().await {
            v5::Packet::ConnectAck(c) => {
                assert_eq!(c.reason_code, v5::ConnectAckReason::Success, "{client_id} refused")
            }
            other => panic!("{client_id} got {other:?} instead of a CONNACK"),
        }
        match client.next().await {
            v5::Packet::SubscribeAck(s) => {
                assert_eq!(s.status, vec![v5::SubscribeAckReason::GrantedQos1], "{client_id}'s subscription")
            }
            other => panic!("{client_id} got {other:?} instead of a SUBACK"),
        }
        client
    }

    async fn send(&mut self, first_byte: u8, body: &[u8]) {
        assert!(body.len() < 128, "one-byte remaining length");
        let mut packet = vec![first_byte, body.len() as u8];
        packet.extend_from_slice(body);
        self.write.write_all(&packet).await.expect("the broker reads a well-behaved client");
    }

    /// The next packet from the broker; PUBLISHes it sends are acknowledged on the way.
    async fn next(&mut self) -> v5::Packet {
        loop {
            if let Some((packet, _)) = self.codec.decode(&mut self.buf).expect("the broker's packets decode") {
                if let v5::Packet::Publish(p) = &packet {
                    if let Some(id) = p.packet_id {
                        self.send(0x40, &id.get().to_be_bytes()).await;
                    }
                }
                return packet;
            }
            let n = self.read.read_buf(&mut self.buf).await.expect("reading from an in-memory pipe");
            assert!(n > 0, "the broker closed a well-behaved client's connection");
        }
    }

    /// Publishes [`CHECK_PAYLOAD`] at QoS 1 and waits for its PUBACK.
    async fn publish_check(&mut self) {
        let mut publish = Vec::new();
        publish.extend_from_slice(&(CHECK_TOPIC.len() as u16).to_be_bytes());
        publish.extend_from_slice(CHECK_TOPIC.as_bytes());
        publish.extend_from_slice(&[0x00, 0x02, 0x00]); // packet id 2, no properties
        publish.extend_from_slice(CHECK_PAYLOAD);
        self.send(0x32, &publish).await;
        loop {
            match self.next().await {
                v5::Packet::PublishAck(a) => {
                    assert_eq!(a.reason_code, v5::PublishAckReason::Success, "the probe's publish");
                    return;
                }
                v5::Packet::Publish(_) => {}
                other => panic!("unexpected packet for a well-behaved client: {other:?}"),
            }
        }
    }

    /// Waits for the probe's message, skipping whatever the fuzzed client published.
    async fn expect_check(&mut self) {
        loop {
            match self.next().await {
                v5::Packet::Publish(p) if &p.payload[..] == CHECK_PAYLOAD && !p.retain => return,
                v5::Packet::Publish(_) => {}
                other => panic!("unexpected packet for a well-behaved client: {other:?}"),
            }
        }
    }

    /// DISCONNECT; the broker must end the session without a panic.
    async fn close(mut self) {
        self.send(0xe0, &[]).await;
        self.write.shutdown().await.expect("closing a client's side");
        self.serve.await.expect("a well-behaved client's session ends without a panic");
    }
}
