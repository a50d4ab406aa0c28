//! One client connection: the session state machine, for MQTT 3.1.1 and 5.0 alike.
//!
//! Inbound publishes are handed to the [`PublishSink`](crate::PublishSink) and acknowledged
//! only when it says the record is durable. Several publishes can be in that wait at once
//! (clients keep their in-flight window open), and their acks go out in the order the
//! publishes came, as MQTT-4.6.0 requires. Outbound messages come from the session's queue,
//! no more unacknowledged at a time than the client's Receive Maximum and `max_inflight`.

use std::collections::HashMap;
use std::num::{NonZeroU16, NonZeroU32};
use std::sync::Arc;
use std::time::Duration;

use bytestring::ByteString;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;

use futures::StreamExt;
use pacer_core::{now_ms, MessageProperties, Publication};
use rmqtt_codec::error::DecodeError;
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::v5::PublishProperties;
use rmqtt_codec::version::{ProtocolVersion, VersionCodec};
use rmqtt_codec::{v3, v5, MqttCodec, MqttPacket};
use tokio::io::{AsyncRead, AsyncWrite};

use pacer_auth::{Access, Identity, Refused};

use crate::connect::{self, ConnectRequest, Refusal};
use crate::framing::Transport;
use crate::router::Session;
use crate::session::{parse_shared, Delivery, Inflight, QueuedDelivery, Subscription, NEVER_EXPIRES};
use crate::topic;
use crate::wire::{self, In, Out, Version};
use crate::Shared;

/// How long a client has to send CONNECT after opening the socket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Acks (or NACKs) that go out once the work behind them is durable.
struct AckDone {
    outs: Vec<Out>,
    /// Inbound QoS 1 publishes they acknowledge (counted against Receive Maximum).
    inbound_qos1: usize,
}

/// A publish of the current burst: to be stored, or already decided (denied by the ACL).
enum Pending {
    Store { publication: Box<Publication>, qos: QoS, packet_id: Option<NonZeroU16> },
    Decided(Out),
}

/// Packets handled in one go when several are already buffered: their publishes are stored
/// with one durable write.
const MAX_BURST: usize = 256;

type Acks = FuturesOrdered<BoxFuture<'static, anyhow::Result<AckDone>>>;

/// Why a connection ended.
#[derive(Debug)]
enum Close {
    /// The client sent DISCONNECT.
    Client { with_will: bool, session_expiry: Option<u32> },
    /// Anything else; `reason` is sent to MQTT 5 clients in a DISCONNECT when given.
    Abnormal { why: String, reason: Option<u8> },
}

/// The MQTT 5 reason a packet that does not decode closes the connection with (§4.13):
/// most are Malformed Packet, but some are well formed and break a rule of the protocol,
/// and one above the broker's Maximum Packet Size has a code of its own (§3.2.2.3.6).
fn decode_error_reason(e: &DecodeError) -> u8 {
    match e {
        DecodeError::MaxSizeExceeded { .. } => 0x95,
        // A SUBSCRIBE or UNSUBSCRIBE without topic filters (MQTT 5 §3.8.3, §3.10.3), a
        // CONNECT naming another protocol, a 3.1.1 packet without its packet id.
        DecodeError::InvalidTopicFilter | DecodeError::InvalidProtocol | DecodeError::PacketIdRequired => 0x82,
        _ => 0x81,
    }
}

fn abnormal(why: impl Into<String>) -> Close {
    Close::Abnormal { why: why.into(), reason: None }
}

fn protocol_error(why: impl Into<String>, reason: u8) -> Close {
    Close::Abnormal { why: why.into(), reason: Some(reason) }
}

pub async fn serve<S>(stream: S, peer: String, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Ok(_slot) = shared.connection_slots.clone().try_acquire_owned() else {
        shared.metrics.refused.inc();
        if let Some(refused) = shared.refusals.tick() {
            tracing::warn!(%peer, refused, max = shared.config.max_connections, "connections refused: mqtt.max_connections reached");
        }
        if let Ok(_answering) = shared.refusal_slots.clone().try_acquire_owned() {
            refuse_at_capacity(stream).await;
        }
        return;
    };
    let mut transport = Transport::new(stream, MqttCodec::Version(VersionCodec));
    // For the whole CONNECT, not just the bytes that tell its version: a client that stops
    // half-way through would otherwise hold its connection slot for ever.
    let connect_deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    let version = match tokio::time::timeout_at(connect_deadline, transport.next()).await {
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
    *transport.codec_mut() = match version {
        ProtocolVersion::MQTT3 => MqttCodec::V3(v3::Codec::new(max)),
        ProtocolVersion::MQTT5 => MqttCodec::V5(v5::Codec::new(max, 0)),
    };
    let request = match tokio::time::timeout_at(connect_deadline, transport.next()).await {
        Ok(Some(Ok((packet, _)))) => match ConnectRequest::from_packet(packet) {
            Some(r) => r,
            None => return,
        },
        Ok(Some(Err(e))) => {
            shared.metrics.malformed.inc();
            tracing::warn!(%peer, error = %e, "malformed CONNECT; closing connection");
            // MQTT 5 lets the server say why before closing (§4.13.1); 3.1.1 has no code.
            if version == ProtocolVersion::MQTT5 {
                let _ = transport.send(connect::unreadable(decode_error_reason(&e))).await;
            }
            return;
        }
        Ok(None) => return,
        Err(_) => {
            tracing::debug!(%peer, "CONNECT incomplete after {CONNECT_TIMEOUT:?}; closing connection");
            return;
        }
    };
    let version = request.version;
    if let MqttCodec::V5(codec) = transport.codec_mut() {
        *codec = v5::Codec::new(max, request.maximum_packet_size.unwrap_or(0));
    }

    let refuse = |why| connect::refusal(version, why);
    if request.auth_method.is_some() {
        let _ = transport.send(refuse(Refusal::BadAuthenticationMethod)).await;
        return;
    }
    let mut assigned = None;
    let client_id = if request.client_id.is_empty() {
        if version == Version::V3 && !request.clean_start {
            let _ = transport.send(refuse(Refusal::IdentifierRejected)).await;
            return;
        }
        let id = format!("pacer-{:016x}", rand_id());
        assigned = (version == Version::V5).then(|| id.clone());
        id
    } else {
        request.client_id.clone()
    };
    let identity = match shared.auth.login(request.username.as_deref(), request.password.as_deref()) {
        Ok(identity) => identity,
        Err(Refused::Anonymous) => {
            let _ = transport.send(refuse(Refusal::NotAuthorized)).await;
            tracing::info!(%peer, %client_id, "refused anonymous client");
            return;
        }
        Err(Refused::BadCredentials | Refused::Expired) => {
            let _ = transport.send(refuse(Refusal::BadCredentials)).await;
            tracing::info!(%peer, %client_id, user = ?request.username, "refused: bad user name or password");
            return;
        }
    };
    if let Some(will) = &request.will {
        if !shared.auth.may_use_topic(&identity, Some(&client_id), &will.publication.topic, Access::Write) {
            let _ = transport.send(refuse(Refusal::NotAuthorized)).await;
            tracing::info!(%peer, %client_id, topic = %will.publication.topic, "refused: the ACL does not allow the will topic");
            return;
        }
    }
    // Checked here too, before another node is asked for the session; `Router::connect`
    // checks again under its lock.
    if shared.router.owned_by_another(&client_id, &identity) {
        let _ = transport.send(refuse(Refusal::NotAuthorized)).await;
        shared.metrics.denied.inc();
        tracing::warn!(%peer, %client_id, user = ?identity.user(), "refused: the client id's session belongs to another user");
        return;
    }

    let owed_elsewhere = match take_over(&shared, &client_id, !request.clean_start).await {
        Ok(owed) => owed,
        Err(e) => {
            tracing::error!(%client_id, error = %e, "could not take the session over from another node; refusing the connection");
            let _ = transport.send(refuse(Refusal::ServerUnavailable)).await;
            return;
        }
    };
    let connected = match shared.router.connect(&client_id, &identity, request.clean_start, request.session_expiry) {
        Ok(connected) => connected,
        Err(_taken) => {
            // What another node handed over stays here, for the session's owner.
            if !owed_elsewhere.is_empty() {
                shared.adopt(&client_id, owed_elsewhere).await;
            }
            let _ = transport.send(refuse(Refusal::NotAuthorized)).await;
            shared.metrics.denied.inc();
            tracing::warn!(%peer, %client_id, user = ?identity.user(), "refused: the client id's session belongs to another user");
            return;
        }
    };
    if !owed_elsewhere.is_empty() {
        shared.adopt(&client_id, owed_elsewhere).await;
    }
    // A lasting session is recorded before CONNACK; a clean start ends a stored one.
    let stored = if request.session_expiry > 0 {
        let record = connected.session.lock().unwrap().record();
        // A clean start that keeps a lasting session still drops what the old one had queued.
        let cleared = if connected.discarded_stored { shared.store.clear_queued(&client_id).await } else { Ok(()) };
        match cleared {
            Ok(()) => shared.store.save_session(&client_id, Some(&record)).await,
            Err(e) => Err(e),
        }
    } else if connected.discarded_stored {
        shared.store.save_session(&client_id, None).await
    } else {
        Ok(())
    };
    if let Err(e) = stored {
        tracing::error!(%client_id, error = %e, "could not store the session; refusing the connection");
        shared.router.disconnect(&client_id, connected.generation);
        let _ = transport.send(refuse(Refusal::ServerUnavailable)).await;
        return;
    }
    let max_keep_alive = shared.config.max_keep_alive;
    let (keep_alive, server_keep_alive) = match version {
        Version::V5 if request.keep_alive == 0 || request.keep_alive > max_keep_alive => {
            (max_keep_alive, (max_keep_alive != u16::MAX).then_some(max_keep_alive))
        }
        _ => (request.keep_alive, None),
    };
    let connack =
        connect::accepted(version, &shared.config, connected.session_present, assigned.as_deref(), server_keep_alive);
    if transport.send(connack).await.is_err() {
        shared.router.disconnect(&client_id, connected.generation);
        return;
    }
    shared.metrics.connections.inc();
    if let Some(observer) = shared.observer.get() {
        observer.connected(&client_id);
    }
    tracing::info!(%peer, %client_id, ?version, keep_alive, clean_start = request.clean_start, session_expiry = request.session_expiry, session_present = connected.session_present, "client connected");

    let generation = connected.generation;
    let mut conn = Connection {
        shared: shared.clone(),
        version,
        client_id: client_id.clone(),
        identity: identity.clone(),
        keep_alive,
        session: connected.session.clone(),
        send_window: match version {
            Version::V3 => shared.config.max_inflight,
            Version::V5 => shared.config.max_inflight.min(request.receive_maximum as usize),
        },
        max_packet_to_client: request.maximum_packet_size,
        alias_max_to_client: request.topic_alias_maximum,
        aliases_in: HashMap::new(),
        aliases_out: HashMap::new(),
        inbound_qos1: 0,
        recording: Vec::new(),
    };
    if let Some(attached) = connected.session.lock().unwrap().connection.as_mut().filter(|c| c.generation == generation)
    {
        attached.window = conn.send_window;
    }
    let close = conn.run(&mut transport, &connected.wake, &connected.kick).await;
    for recording in std::mem::take(&mut conn.recording) {
        let _ = recording.await;
    }
    if let Close::Abnormal { reason: Some(reason), why } = &close {
        if let Some(packet) = wire::encode(version, Out::Disconnect { reason: *reason, message: why.clone() }) {
            let _ = transport.send(packet).await;
            // Read what the client still sends until it closes, so closing does not reset
            // the connection (a TCP RST) before it has read the DISCONNECT.
            let _ = transport.shutdown().await;
            let _ = tokio::time::timeout(Duration::from_secs(2), transport.discard_until_closed()).await;
        }
    }
    shared.metrics.connections.dec();

    // MQTT 5 lets DISCONNECT change the session expiry.
    let mut expiry = request.session_expiry;
    if let Close::Client { session_expiry: Some(e), .. } = close {
        connected.session.lock().unwrap().expiry_secs = e;
        expiry = e;
    }
    match shared.router.disconnect(&client_id, generation) {
        Some(stays) => {
            if expiry != request.session_expiry {
                let record = connected.session.lock().unwrap().record();
                if let Err(e) = shared.store.save_session(&client_id, Some(&record)).await {
                    tracing::error!(%client_id, error = %e, "could not store the session's new expiry");
                }
            }
            if stays != NEVER_EXPIRES {
                schedule_expiry(&shared, &client_id, generation);
            }
        }
        None if request.session_expiry > 0 && expiry == 0 => {
            if let Err(e) = shared.store.save_session(&client_id, None).await {
                tracing::error!(%client_id, error = %e, "could not delete the ended session");
            }
        }
        None => {}
    }

    let (publish_will, reason) = match &close {
        Close::Client { with_will, .. } => {
            tracing::info!(%peer, %client_id, "client disconnected");
            (*with_will, "disconnect")
        }
        Close::Abnormal { why, .. } => {
            tracing::info!(%peer, %client_id, reason = %why, "connection lost");
            (true, why.as_str())
        }
    };
    // A client taken over by a new connection with its id, here or on another node, has not gone away.
    let moved = connected.session.lock().unwrap().moved;
    let resumed = moved || shared.router.resumed_since(&client_id, generation);
    if let Some(observer) = shared.observer.get().filter(|_| !resumed) {
        observer.disconnected(&client_id, reason);
    }
    if let (true, false, Some(will)) = (publish_will, moved, request.will) {
        let delay = will.delay_secs.min(expiry);
        let user = identity.user().map(str::to_string);
        if delay == 0 {
            publish_will_now(&shared, connect::will_publication(will.publication, &client_id, user)).await;
        } else {
            // Published unless the client is back within the delay (MQTT 5 §3.1.3.2.2).
            let shared = shared.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(delay as u64)).await;
                if !shared.router.resumed_since(&client_id, generation) {
                    publish_will_now(&shared, connect::will_publication(will.publication, &client_id, user)).await;
                }
            });
        }
    }
}

/// Tells a client past the connection limit so, in its CONNACK (MQTT 5: 0x97 Quota exceeded;
/// 3.1.1: server unavailable), if its CONNECT comes within a second.
async fn refuse_at_capacity<S>(stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut transport = Transport::new(stream, MqttCodec::Version(VersionCodec));
    let answered = tokio::time::timeout(Duration::from_secs(1), async {
        let Some(Ok((MqttPacket::Version(version), _))) = transport.next().await else { return };
        // Only the CONNECT's first bytes are needed; a small limit keeps this cheap.
        *transport.codec_mut() = match version {
            ProtocolVersion::MQTT3 => MqttCodec::V3(v3::Codec::new(4096)),
            ProtocolVersion::MQTT5 => MqttCodec::V5(v5::Codec::new(4096, 0)),
        };
        if let Some(Ok((packet, _))) = transport.next().await {
            if let Some(request) = ConnectRequest::from_packet(packet) {
                let _ = transport.send(connect::refusal(request.version, Refusal::QuotaExceeded)).await;
            }
        }
    });
    let _ = answered.await;
}

/// Nodes sharing one log: makes this node the owner of the client's session; returns what
/// the node that had it still owed. A resumed session is kept here before the other node lets
/// go, so what is published meanwhile is not missed (and not taken twice: see `Router::adopt`).
async fn take_over(shared: &Arc<Shared>, client_id: &str, resume: bool) -> anyhow::Result<Vec<Delivery>> {
    let Some(record) = shared.store.claim(client_id, resume).await? else { return Ok(Vec::new()) };
    if resume {
        shared.router.install(client_id, &record);
    }
    let owed = shared.store.handover(client_id, resume).await;
    if owed.is_err() && resume {
        shared.router.move_away(client_id);
    }
    owed
}

async fn publish_will_now(shared: &Arc<Shared>, publication: Publication) {
    let client_id = publication.client_id.clone();
    if let Err(e) = shared.accept(vec![publication]).await {
        tracing::error!(%client_id, error = %e, "could not store the will message");
    }
}

/// Ends the session of `client_id` once its expiry passes with its client away.
pub(crate) fn schedule_expiry(shared: &Arc<Shared>, client_id: &str, generation: u64) {
    let expiry = {
        let Some(session) = shared.router.session(client_id) else { return };
        let state = session.lock().unwrap();
        state.expiry_secs
    };
    if expiry == NEVER_EXPIRES || expiry == 0 {
        return;
    }
    let (shared, client_id) = (shared.clone(), client_id.to_string());
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(expiry as u64)).await;
        if shared.router.expire(&client_id, generation) {
            tracing::info!(%client_id, expiry, "session expired");
            if let Err(e) = shared.store.save_session(&client_id, None).await {
                tracing::error!(%client_id, error = %e, "could not delete the expired session");
            }
        }
    });
}

struct Connection {
    shared: Arc<Shared>,
    version: Version,
    client_id: String,
    identity: Identity,
    keep_alive: u16,
    session: Session,
    /// Outbound QoS 1/2 messages unacknowledged at once, at most.
    send_window: usize,
    max_packet_to_client: Option<u32>,
    alias_max_to_client: u16,
    aliases_in: HashMap<u16, String>,
    aliases_out: HashMap<String, u16>,
    /// Inbound QoS 1 publishes not acknowledged yet.
    inbound_qos1: usize,
    /// Acknowledgements of stored deliveries being recorded; awaited before the connection
    /// closes, so a client that acknowledged and left is not sent them again after a crash.
    recording: Vec<tokio::task::JoinHandle<()>>,
}

impl Connection {
    async fn run<S>(
        &mut self,
        transport: &mut Transport<S>,
        wake: &tokio::sync::Notify,
        kick: &tokio::sync::Notify,
    ) -> Close
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut acks: Acks = FuturesOrdered::new();
        // What was in flight when the client went away goes out again first (MQTT-4.4.0-1).
        let resend = self.redeliveries();
        if let Err(e) = self.send(transport, resend).await {
            return abnormal(format!("write failed: {e}"));
        }
        wake.notify_one();
        // Silence for 1.5 × keep-alive ends the connection (MQTT-3.1.2-24); 0 turns it off.
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
                    let mut burst = vec![packet];
                    // Whatever else is already buffered joins this round, so a burst of
                    // publishes is stored with one durable write.
                    while burst.len() < MAX_BURST {
                        match transport.next_buffered() {
                            Some(p) => burst.push(Ok(Some(p))),
                            None => break,
                        }
                    }
                    let mut batch = Vec::new();
                    let mut replies = Vec::new();
                    let mut closing = None;
                    for packet in burst {
                        let packet = match packet {
                            Err(_) => Err(protocol_error("keep-alive expired", 0x8D)),
                            Ok(None) => Err(abnormal("connection closed by client")),
                            Ok(Some(Err(e))) => {
                                self.shared.metrics.malformed.inc();
                                Err(protocol_error(format!("malformed packet: {e}"), decode_error_reason(&e)))
                            }
                            Ok(Some(Ok((packet, _)))) => {
                                wire::decode(packet).ok_or_else(|| protocol_error("unexpected packet", 0x82))
                            }
                        };
                        match packet.and_then(|p| self.handle(p, &mut batch, &mut acks)) {
                            Ok(r) => replies.extend(r),
                            Err(close) => {
                                closing = Some(close);
                                break;
                            }
                        }
                    }
                    if !batch.is_empty() {
                        acks.push_back(self.store(batch));
                    }
                    if let Err(e) = self.send(transport, replies).await {
                        return abnormal(format!("write failed: {e}"));
                    }
                    if let Some(close) = closing {
                        // Acks owed for publishes already being stored still go out.
                        while let Some(Ok(done)) = acks.next().await {
                            let _ = self.send(transport, done.outs).await;
                        }
                        return close;
                    }
                }
                Some(result) = acks.next(), if !acks.is_empty() => {
                    match result {
                        Ok(done) => {
                            self.inbound_qos1 -= done.inbound_qos1;
                            if let Err(e) = self.send(transport, done.outs).await {
                                return abnormal(format!("write failed: {e}"));
                            }
                        }
                        Err(e) => {
                            // Not durable, so not acknowledged: closing makes the client resend.
                            tracing::error!(client_id = %self.client_id, error = %e, "not stored; closing so the client retries");
                            return abnormal(format!("store failed: {e}"));
                        }
                    }
                }
                _ = wake.notified() => {
                    let packets = self.next_deliveries();
                    if let Err(e) = self.send(transport, packets).await {
                        return abnormal(format!("write failed: {e}"));
                    }
                }
                _ = kick.notified() => {
                    return protocol_error("another connection took over the client id", 0x8E);
                }
            }
        }
    }

    async fn send<S>(&self, transport: &mut Transport<S>, packets: Vec<Out>) -> std::io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if packets.is_empty() {
            return Ok(());
        }
        for p in packets {
            if matches!(p, Out::Publish(_)) {
                self.shared.metrics.messages_out.inc();
            }
            if let Some(packet) = wire::encode(self.version, p) {
                transport.feed(packet).map_err(std::io::Error::other)?;
            }
        }
        transport.flush().await
    }

    /// Handles one packet from the client: the replies to send now, or the end.
    fn handle(&mut self, packet: In, batch: &mut Vec<Pending>, acks: &mut Acks) -> Result<Vec<Out>, Close> {
        match packet {
            In::Publish(publish) => self.publish(*publish, batch).map(|r| r.into_iter().collect()),
            In::PubRel(packet_id) => {
                self.session.lock().unwrap().inbound_qos2.remove(&packet_id.get());
                Ok(vec![Out::PubComp(packet_id)])
            }
            In::PubAck(packet_id) => {
                let mut state = self.session.lock().unwrap();
                let done = if state.inflight.get(&packet_id.get()).is_some_and(|i| i.delivery.qos == 1) {
                    state.inflight.remove(&packet_id.get())
                } else {
                    None
                };
                drop(state);
                self.forget_stored(done);
                Ok(self.next_deliveries())
            }
            In::PubRec(packet_id) => {
                let mut state = self.session.lock().unwrap();
                if let Some(inflight) = state.inflight.get_mut(&packet_id.get()) {
                    inflight.released = true;
                }
                Ok(vec![Out::PubRel(packet_id)])
            }
            In::PubComp(packet_id) => {
                let done = self.session.lock().unwrap().inflight.remove(&packet_id.get());
                self.forget_stored(done);
                Ok(self.next_deliveries())
            }
            In::Subscribe { packet_id, id, filters } => {
                self.flush(batch, acks);
                let (codes, persist, stored) = self.subscribe(id, &filters);
                Ok(self.ack_after_persist(acks, persist, stored, Out::SubAck { packet_id, codes }))
            }
            In::Unsubscribe { packet_id, filters } => {
                self.flush(batch, acks);
                let mut state = self.session.lock().unwrap();
                let mut codes = Vec::with_capacity(filters.len());
                for f in &filters {
                    let (share, filter) = parse_shared(f).unwrap_or((None, f.clone()));
                    let before = state.subscriptions.len();
                    state.subscriptions.retain(|s| !(s.filter == filter && s.share == share));
                    codes.push(if state.subscriptions.len() < before { 0x00 } else { 0x11 });
                }
                let persist = state.persistent().then(|| state.record());
                drop(state);
                Ok(self.ack_after_persist(acks, persist, Vec::new(), Out::UnsubAck { packet_id, codes }))
            }
            In::Ping => Ok(vec![Out::PingResp]),
            In::Disconnect { session_expiry, with_will } => Err(Close::Client { with_will, session_expiry }),
            In::Unexpected(what) => Err(protocol_error(format!("protocol error: {what}"), 0x82)),
        }
    }

    fn publish(&mut self, mut publish: Publish, batch: &mut Vec<Pending>) -> Result<Option<Out>, Close> {
        let props = publish.properties.take().unwrap_or_default();
        if let Some(alias) = props.topic_alias {
            if alias.get() > self.shared.config.topic_alias_maximum {
                return Err(protocol_error(format!("topic alias {alias} above the maximum"), 0x94));
            }
            if publish.topic.is_empty() {
                match self.aliases_in.get(&alias.get()) {
                    Some(topic) => publish.topic = ByteString::from(topic.as_str()),
                    None => return Err(protocol_error(format!("topic alias {alias} was never set"), 0x82)),
                }
            } else {
                self.aliases_in.insert(alias.get(), publish.topic.to_string());
            }
        }
        if let Err(reason) = topic::validate_topic_name(&publish.topic) {
            return Err(protocol_error(format!("protocol error: {reason}"), 0x90));
        }
        self.shared.metrics.messages_in.inc();
        self.shared.metrics.bytes_in.inc_by(publish.payload.len() as u64);
        let packet_id = publish.packet_id;
        let qos = publish.qos;
        {
            if !self.shared.auth.may_use_topic(&self.identity, Some(&self.client_id), &publish.topic, Access::Write) {
                // Neither stored nor routed. MQTT 5 says why; 3.1.1 is acknowledged as
                // mosquitto does, since it has no way to refuse.
                self.shared.metrics.denied.inc();
                tracing::info!(client_id = %self.client_id, topic = %publish.topic, "publish denied by the ACL");
                let reason = if self.version == Version::V5 { 0x87 } else { 0 };
                let message = (reason != 0).then(|| "not authorized to publish to this topic".to_string());
                let out = match (qos, packet_id) {
                    (QoS::AtLeastOnce, Some(packet_id)) => Some(Out::PubAck { packet_id, reason, message }),
                    (QoS::ExactlyOnce, Some(packet_id)) => Some(Out::PubRec { packet_id, reason, message }),
                    _ => None,
                };
                // In the batch, so acks stay in publish order.
                batch.extend(out.map(Pending::Decided));
                return Ok(None);
            }
        }
        {
            let mut state = self.session.lock().unwrap();
            if qos != QoS::AtMostOnce
                && self.inbound_qos1 + state.inbound_qos2.len() >= self.shared.config.receive_maximum as usize
            {
                return Err(protocol_error("more unacknowledged publishes than Receive Maximum", 0x93));
            }
            if qos == QoS::ExactlyOnce {
                let id = packet_id.map_or(0, NonZeroU16::get);
                if !state.inbound_qos2.insert(id) {
                    // Already stored: acknowledge again, do not store twice.
                    return Ok(packet_id.map(|packet_id| Out::PubRec { packet_id, reason: 0, message: None }));
                }
            }
        }
        let now = now_ms();
        let publication = Publication {
            topic: publish.topic.to_string(),
            payload: publish.payload,
            qos: qos.value(),
            retain: publish.retain,
            client_id: self.client_id.clone(),
            username: self.identity.user().map(str::to_string),
            received_at: now,
            id: None, // given when accepted
            properties: MessageProperties {
                payload_is_utf8: props.is_utf8_payload,
                content_type: props.content_type.map(|s| s.to_string()),
                response_topic: props.response_topic.map(|s| s.to_string()),
                correlation_data: props.correlation_data,
                user_properties: props.user_properties.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                expires_at: props.message_expiry_interval.map(|s| now + s.get() as i64 * 1000),
            },
        };
        if qos == QoS::AtLeastOnce {
            self.inbound_qos1 += 1;
        }
        batch.push(Pending::Store { publication: Box::new(publication), qos, packet_id });
        Ok(None)
    }

    /// Queues the current burst's publishes for storing, so what follows is acked after them.
    fn flush(&self, batch: &mut Vec<Pending>, acks: &mut Acks) {
        if !batch.is_empty() {
            acks.push_back(self.store(std::mem::take(batch)));
        }
    }

    /// Stores a burst of publishes with one durable write and yields their acks in order.
    fn store(&self, batch: Vec<Pending>) -> BoxFuture<'static, anyhow::Result<AckDone>> {
        let (shared, session, version) = (self.shared.clone(), self.session.clone(), self.version);
        let client_id = self.client_id.clone();
        Box::pin(async move {
            let mut publications = Vec::new();
            let mut plan = Vec::with_capacity(batch.len());
            for pending in batch {
                match pending {
                    Pending::Store { publication, qos, packet_id } => {
                        publications.push(*publication);
                        plan.push(Err((qos, packet_id)));
                    }
                    Pending::Decided(out) => plan.push(Ok(out)),
                }
            }
            let (reason, message) = match shared.accept(publications).await {
                Ok(()) => (0, None),
                // MQTT 5 can refuse a publish in its ack; 3.1.1 can only close the connection.
                Err(e) if version == Version::V5 => {
                    tracing::error!(%client_id, error = %e, "publishes refused: not stored");
                    let full = e.to_string().contains("No space left");
                    (if full { 0x97 } else { 0x80 }, Some(format!("not stored: {e}")))
                }
                Err(e) => return Err(e),
            };
            let mut outs = Vec::with_capacity(plan.len());
            let mut inbound_qos1 = 0;
            for step in plan {
                match step {
                    Ok(decided) => outs.push(decided),
                    Err((QoS::AtLeastOnce, Some(packet_id))) => {
                        inbound_qos1 += 1;
                        outs.push(Out::PubAck { packet_id, reason, message: message.clone() });
                    }
                    Err((QoS::ExactlyOnce, Some(packet_id))) => {
                        if reason != 0 {
                            session.lock().unwrap().inbound_qos2.remove(&packet_id.get());
                        }
                        outs.push(Out::PubRec { packet_id, reason, message: message.clone() });
                    }
                    Err(_) => {}
                }
            }
            Ok(AckDone { outs, inbound_qos1 })
        })
    }

    /// Records that the subscriber has a stored delivery, so a restart does not send it again.
    /// Losing this record only means one more delivery, so nothing waits for it.
    fn forget_stored(&mut self, done: Option<Inflight>) {
        let Some(seq) = done.and_then(|i| i.delivery.stored) else { return };
        let (store, client_id) = (self.shared.store.clone(), self.client_id.clone());
        self.recording.retain(|r| !r.is_finished());
        self.recording.push(tokio::spawn(async move {
            if let Err(e) = store.delivered(&client_id, seq).await {
                tracing::warn!(%client_id, seq, error = %e, "could not record a delivery; it may be sent again after a restart");
            }
        }));
    }

    /// Applies a SUBSCRIBE; returns the SUBACK codes and, for a lasting session, what to
    /// store before the SUBACK goes out.
    fn subscribe(
        &mut self,
        id: Option<u32>,
        filters: &[(String, wire::SubOptions)],
    ) -> (Vec<u8>, Option<crate::SessionRecord>, Vec<QueuedDelivery>) {
        let mut state = self.session.lock().unwrap();
        let mut codes = Vec::with_capacity(filters.len());
        let mut stored = Vec::new();
        for (requested, options) in filters {
            let parsed = parse_shared(requested).and_then(|(share, filter)| {
                topic::validate_topic_filter(&filter)?;
                Ok((share, filter))
            });
            let (share, filter) = match parsed {
                Ok(p) => p,
                Err(reason) => {
                    tracing::info!(client_id = %self.client_id, filter = %requested, reason, "subscription refused");
                    codes.push(if self.version == Version::V5 { 0x8F } else { 0x80 });
                    continue;
                }
            };
            if self.shared.config.deny_subscribe.iter().any(|d| topic::matches(d, &filter) || d == &filter) {
                tracing::info!(client_id = %self.client_id, %filter, "subscription refused by mqtt.deny_subscribe");
                codes.push(0x80);
                continue;
            }
            if !self.shared.auth.may_subscribe(&self.identity, Some(&self.client_id), &filter) {
                tracing::info!(client_id = %self.client_id, %filter, "subscription denied by the ACL");
                self.shared.metrics.denied.inc();
                codes.push(if self.version == Version::V5 { 0x87 } else { 0x80 });
                continue;
            }
            let subscription = Subscription { filter: filter.clone(), share: share.clone(), options: *options, id };
            let existed = match state.subscriptions.iter_mut().find(|s| s.filter == filter && s.share == share) {
                Some(existing) => {
                    *existing = subscription;
                    true
                }
                None => {
                    state.subscriptions.push(subscription);
                    false
                }
            };
            // Retained messages for the subscription, flagged as retained (MQTT-3.3.1-8);
            // never for shared subscriptions, and as Retain Handling says.
            let send_retained = share.is_none()
                && match options.retain_handling {
                    0 => true,
                    1 => !existed,
                    _ => false,
                };
            if send_retained {
                for p in self.shared.router.retained_matching(&filter) {
                    if !self.shared.router.may_read(&state, &self.client_id, &p.topic) {
                        continue;
                    }
                    let delivery = Delivery {
                        qos: options.qos.min(p.qos),
                        publication: p,
                        retain: true,
                        subscription_ids: id.into_iter().collect(),
                        stored: None,
                    };
                    self.shared.router.enqueue_lasting(&self.client_id, &mut state, delivery, &mut stored);
                }
            }
            tracing::debug!(client_id = %self.client_id, %filter, qos = options.qos, "subscribed");
            codes.push(options.qos);
        }
        let persist = state.persistent().then(|| state.record());
        (codes, persist, stored)
    }

    /// `ack` now, or once the session (and the retained messages it queued) are stored.
    fn ack_after_persist(
        &self,
        acks: &mut Acks,
        persist: Option<crate::SessionRecord>,
        queued: Vec<QueuedDelivery>,
        ack: Out,
    ) -> Vec<Out> {
        let Some(record) = persist else { return vec![ack] };
        let (shared, client_id) = (self.shared.clone(), self.client_id.clone());
        acks.push_back(Box::pin(async move {
            shared.store.save_session(&client_id, Some(&record)).await?;
            if !queued.is_empty() {
                shared.store.save_queued(&queued).await?;
            }
            Ok(AckDone { outs: vec![ack], inbound_qos1: 0 })
        }));
        Vec::new()
    }

    /// Messages from the session's queue, as many as the send window allows. Expired ones
    /// and ones larger than the client accepts are dropped.
    fn next_deliveries(&mut self) -> Vec<Out> {
        let session = self.session.clone();
        let mut state = session.lock().unwrap();
        let mut out = Vec::new();
        while state.inflight.len() < self.send_window {
            let Some(delivery) = state.queue.pop_front() else { break };
            let packet_id = (delivery.qos > 0).then(|| state.allocate_packet_id());
            let Some(packet) = self.publish_packet(&delivery, packet_id, false) else { continue };
            out.push(packet);
            if let Some(id) = packet_id {
                state.inflight.insert(id, Inflight { delivery, released: false });
            }
        }
        out
    }

    /// What a reconnecting client gets again: unacknowledged PUBLISHes with DUP set, and
    /// PUBRELs for QoS 2 messages it had received.
    fn redeliveries(&mut self) -> Vec<Out> {
        let session = self.session.clone();
        let state = session.lock().unwrap();
        let mut out = Vec::new();
        for (&id, inflight) in &state.inflight {
            let packet_id = NonZeroU16::new(id).expect("packet ids are never 0");
            if inflight.released {
                out.push(Out::PubRel(packet_id));
            } else if let Some(p) = self.publish_packet(&inflight.delivery, Some(id), true) {
                out.push(p);
            }
        }
        out
    }

    /// The PUBLISH for a delivery, with MQTT 5 properties and a topic alias when the client
    /// accepts them; None when it expired or is larger than the client's Maximum Packet Size.
    fn publish_packet(&mut self, delivery: &Delivery, packet_id: Option<u16>, dup: bool) -> Option<Out> {
        let p = &delivery.publication;
        let expiry_secs = match p.properties.expires_at {
            None => None,
            Some(at) => {
                let left = at - now_ms();
                if left <= 0 {
                    tracing::debug!(client_id = %self.client_id, topic = %p.topic, "message expired before delivery");
                    return None;
                }
                Some((left as u64).div_ceil(1000) as u32)
            }
        };
        let mut topic = ByteString::from(p.topic.as_str());
        let mut properties = None;
        if self.version == Version::V5 {
            let mut alias = None;
            if self.alias_max_to_client > 0 {
                match self.aliases_out.get(&p.topic) {
                    Some(&a) => {
                        alias = Some(a);
                        topic = ByteString::new();
                    }
                    None if self.aliases_out.len() < self.alias_max_to_client as usize => {
                        let a = self.aliases_out.len() as u16 + 1;
                        self.aliases_out.insert(p.topic.clone(), a);
                        alias = Some(a);
                    }
                    None => {}
                }
            }
            let props = &p.properties;
            properties = Some(PublishProperties {
                topic_alias: alias.and_then(NonZeroU16::new),
                correlation_data: props.correlation_data.clone(),
                message_expiry_interval: expiry_secs.and_then(NonZeroU32::new),
                content_type: props.content_type.as_deref().map(ByteString::from),
                user_properties: props
                    .user_properties
                    .iter()
                    .map(|(k, v)| (ByteString::from(k.as_str()), ByteString::from(v.as_str())))
                    .collect(),
                is_utf8_payload: props.payload_is_utf8,
                response_topic: props.response_topic.as_deref().map(ByteString::from),
                subscription_ids: delivery.subscription_ids.iter().filter_map(|&i| NonZeroU32::new(i)).collect(),
            });
        }
        if let Some(max) = self.max_packet_to_client {
            if estimated_size(p, properties.as_ref()) > max as usize {
                tracing::debug!(client_id = %self.client_id, topic = %p.topic, max, "message larger than the client's Maximum Packet Size; not sent");
                return None;
            }
        }
        let qos = match delivery.qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        };
        Some(Out::Publish(Box::new(Publish {
            dup,
            retain: delivery.retain,
            qos,
            topic,
            packet_id: packet_id.and_then(NonZeroU16::new),
            payload: p.payload.clone(),
            properties,
        })))
    }
}

/// An upper bound of a PUBLISH packet's encoded size.
fn estimated_size(p: &Publication, properties: Option<&PublishProperties>) -> usize {
    let props = properties.map_or(0, |pr| {
        16 + pr.user_properties.iter().map(|(k, v)| k.len() + v.len() + 5).sum::<usize>()
            + pr.content_type.as_ref().map_or(0, |s| s.len() + 3)
            + pr.response_topic.as_ref().map_or(0, |s| s.len() + 3)
            + pr.correlation_data.as_ref().map_or(0, |s| s.len() + 3)
            + pr.subscription_ids.len() * 5
    });
    1 + 4 + 2 + p.topic.len() + 2 + props + p.payload.len()
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(now_ms());
    h.finish()
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::{Broker, BrokerConfig, MemoryOnly, PublishSink};

    struct AcceptAll;

    #[async_trait::async_trait]
    impl PublishSink for AcceptAll {
        async fn accept(&self, _: &[Publication]) -> anyhow::Result<()> {
            Ok(())
        }
    }

    // Paused time: the runtime jumps to the next timer when every task waits, so the
    // CONNECT deadline passes at once.
    #[tokio::test(start_paused = true)]
    async fn a_connect_that_stops_half_way_is_dropped_at_the_deadline() {
        let config = BrokerConfig { max_connections: 1, ..BrokerConfig::default() };
        let broker = Broker::start(
            config,
            Arc::new(pacer_auth::Authorizer::open_to_everyone()),
            Arc::new(AcceptAll),
            Arc::new(MemoryOnly),
        )
        .await
        .unwrap();
        let (mut client, server) = tokio::io::duplex(1024);
        let started = tokio::time::Instant::now();
        let serving = tokio::spawn(serve(server, "stalled".into(), broker.shared.clone()));
        // Enough to tell the version; the rest of the announced 32 bytes never comes.
        client.write_all(b"\x10\x20\x00\x04MQTT\x05\x02").await.unwrap();
        tokio::time::timeout(CONNECT_TIMEOUT * 6, serving)
            .await
            .expect("the half-sent CONNECT still holds its connection")
            .unwrap();
        // Timers round up to the millisecond.
        let waited = started.elapsed();
        assert!(waited >= CONNECT_TIMEOUT && waited < CONNECT_TIMEOUT + Duration::from_secs(1), "{waited:?}");
        assert_eq!(broker.shared.connection_slots.available_permits(), 1, "the connection slot is free again");
        drop(client);
    }
}
