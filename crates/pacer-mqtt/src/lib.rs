//! Pacer's MQTT server.
//!
//! Our own session and routing layer over the `rmqtt-codec` packet codec. Its one rule that
//! off-the-shelf brokers do not keep: a QoS 1/2 PUBLISH is acknowledged only after the
//! [`PublishSink`] (in Pacer: the ingest rules appending to the log) has made it durable.
//! Only then is it routed to subscribers, so nobody sees a message that could be lost.

mod connect;
mod connection;
mod framing;
#[doc(hidden)]
pub mod fuzzing;
mod metrics;
mod router;
mod session;
mod transport;
mod wire;

pub use pacer_core::topic;

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use pacer_auth::{Access, Authorizer, Identity};
use pacer_core::Publication;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

pub use metrics::Metrics;
pub use pacer_auth as auth;
use router::Router;
pub use session::{Delivery, Owner, QueuedDelivery, SessionRecord, Subscription};
pub use transport::tls_acceptor;
pub use wire::SubOptions;

/// Where accepted publications go before they are acknowledged.
#[async_trait]
pub trait PublishSink: Send + Sync + 'static {
    /// Returns once the publications are durable (or have been put where they belong, e.g.
    /// the dead-letter stream). They come in the order their client sent them, a burst at a
    /// time. An error means none of them is acknowledged.
    async fn accept(&self, publications: &[Publication]) -> anyhow::Result<()>;
}

/// Told when clients come and go (device status follows it).
pub trait SessionObserver: Send + Sync + 'static {
    fn connected(&self, client_id: &str);
    /// `reason`: "disconnect" when the client said goodbye, else why the connection was lost.
    fn disconnected(&self, client_id: &str, reason: &str);
}

/// Where the broker keeps what must survive a restart: retained messages and the
/// subscriptions of persistent sessions. Each call returns once the change is durable.
#[async_trait]
pub trait BrokerStore: Send + Sync + 'static {
    /// Stores a topic's retained message; an empty payload clears it.
    async fn save_retained(&self, publication: &Publication) -> anyhow::Result<()>;
    /// Stores a persistent session (expiry and subscriptions); None: the session is gone.
    async fn save_session(&self, client_id: &str, session: Option<&SessionRecord>) -> anyhow::Result<()>;
    /// Everything saved: retained messages, and persistent sessions with their subscriptions.
    async fn load(&self) -> anyhow::Result<StoredState>;

    /// Keeps QoS 1/2 deliveries queued for lasting sessions; done before the publisher's ack.
    async fn save_queued(&self, _queued: &[QueuedDelivery]) -> anyhow::Result<()> {
        Ok(())
    }

    /// The subscriber acknowledged the stored delivery `seq`.
    async fn delivered(&self, _client_id: &str, _seq: u64) -> anyhow::Result<()> {
        Ok(())
    }

    /// Forgets every delivery stored for `client_id` (its session ended or started clean).
    async fn clear_queued(&self, _client_id: &str) -> anyhow::Result<()> {
        Ok(())
    }

    /// Nodes sharing one log: makes this node the owner of `client_id`'s session before a
    /// connection attaches, so the node that had it closes its connection and stops keeping
    /// it (one session per client id across the nodes, MQTT-3.1.4-2). Returns the lasting
    /// session another node had; the move then finishes with [`BrokerStore::handover`].
    async fn claim(&self, _client_id: &str, _resume: bool) -> anyhow::Result<Option<SessionRecord>> {
        Ok(None)
    }

    /// After a claim that returned a session (kept here from now on if `resume`d): the other
    /// node lets go of it, and what it still owed comes back, oldest first; a clean start
    /// forgets it. Then [`BrokerStore::adopted`] once they are stored as this node's.
    async fn handover(&self, _client_id: &str, _resume: bool) -> anyhow::Result<Vec<Delivery>> {
        Ok(Vec::new())
    }

    /// The deliveries of a hand-over are stored again as this node's: forget the old copies.
    async fn adopted(&self, _client_id: &str) -> anyhow::Result<()> {
        Ok(())
    }
}

#[derive(Debug, Default)]
pub struct StoredState {
    pub retained: Vec<Publication>,
    pub sessions: Vec<(String, SessionRecord)>,
    /// Deliveries still owed to lasting sessions, oldest first.
    pub queued: Vec<QueuedDelivery>,
}

/// A store that keeps nothing: retained messages and sessions last until the process ends.
pub struct MemoryOnly;

#[async_trait]
impl BrokerStore for MemoryOnly {
    async fn save_retained(&self, _: &Publication) -> anyhow::Result<()> {
        Ok(())
    }
    async fn save_session(&self, _: &str, _: Option<&SessionRecord>) -> anyhow::Result<()> {
        Ok(())
    }
    async fn load(&self) -> anyhow::Result<StoredState> {
        Ok(StoredState::default())
    }
}

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Largest packet accepted; a bigger one closes the connection.
    pub max_packet_size: u32,
    /// Open connections at most, over all transports; more are closed at once and counted.
    pub max_connections: usize,
    /// Outbound QoS 1/2 messages a client may have unacknowledged at once.
    pub max_inflight: usize,
    /// Messages a session may have waiting; more are dropped for it, counted and logged.
    pub max_queued: usize,
    /// Bytes (topics and payloads) a session may have waiting, likewise: what a subscriber
    /// that stops reading can pin in memory.
    pub max_queued_bytes: usize,
    /// Topic filters nobody may subscribe to (SUBACK failure).
    pub deny_subscribe: Vec<String>,
    /// MQTT 5 Receive Maximum: unacknowledged QoS 1/2 publishes a client may send at once;
    /// one more ends the connection with DISCONNECT 0x93.
    pub receive_maximum: u16,
    /// MQTT 5 topic aliases a client may use towards the broker.
    pub topic_alias_maximum: u16,
    /// Longest keep-alive allowed; a client asking for more (or 0) is told this one
    /// (MQTT 5 Server Keep Alive; 3.1.1 clients are held to what they asked).
    pub max_keep_alive: u16,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            max_packet_size: 1 << 20,
            max_connections: 100_000,
            max_inflight: 20,
            max_queued: 100_000,
            max_queued_bytes: 16 << 20,
            deny_subscribe: Vec::new(),
            receive_maximum: u16::MAX,
            topic_alias_maximum: 10,
            max_keep_alive: u16::MAX,
        }
    }
}

/// Connections past `max_connections` told why at once (each holds a socket for up to a
/// second while its CONNECT comes); more are closed without a word.
const REFUSALS_ANSWERED: usize = 32;

/// Handles to one broker; clones share it.
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

struct Shared {
    config: BrokerConfig,
    /// One permit per connection allowed.
    connection_slots: Arc<tokio::sync::Semaphore>,
    /// Connections past the limit being told so (CONNACK 0x97); past these, closed at once.
    refusal_slots: Arc<tokio::sync::Semaphore>,
    /// When refusals are due to be logged again.
    refusals: pacer_core::Occasionally,
    /// Who may connect, and what they may publish and receive.
    auth: Arc<Authorizer>,
    router: Router,
    sink: Arc<dyn PublishSink>,
    store: Arc<dyn BrokerStore>,
    metrics: Metrics,
    observer: std::sync::OnceLock<Arc<dyn SessionObserver>>,
    /// Held to route (shared) and to move a session to another node (exclusive), so a
    /// session leaves only when every delivery routed to it here has been stored.
    routing: tokio::sync::RwLock<()>,
    message_ids: MessageIds,
}

/// Ids for accepted messages: a random number for this broker's run, and a count.
struct MessageIds {
    run: u64,
    next: std::sync::atomic::AtomicU64,
}

impl MessageIds {
    fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_i64(pacer_core::now_ms());
        h.write_u32(std::process::id());
        MessageIds { run: h.finish(), next: std::sync::atomic::AtomicU64::new(0) }
    }

    fn next(&self) -> u128 {
        ((self.run as u128) << 64) | self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) as u128
    }
}

/// Why a publication from outside MQTT was not taken.
#[derive(Debug, thiserror::Error)]
pub enum PublishRefused {
    #[error("the ACL does not allow publishing to {0}")]
    NotAuthorized(String),
    #[error("not stored: {0:#}")]
    NotStored(anyhow::Error),
}

impl Shared {
    /// Makes publications durable (and the retained ones' retained copies), then routes them.
    async fn accept(&self, mut publications: Vec<Publication>) -> anyhow::Result<()> {
        for p in &mut publications {
            p.id = Some(self.message_ids.next());
        }
        self.sink.accept(&publications).await?;
        self.route(publications, true).await
    }

    /// Takes on what another node still owed a session kept here now (see `Router::adopt`).
    async fn adopt(&self, client_id: &str, owed: Vec<Delivery>) {
        let stored = self.router.adopt(client_id, owed);
        let adopted = match self.store.save_queued(&stored).await {
            Ok(()) => self.store.adopted(client_id).await,
            Err(e) => Err(e),
        };
        if let Err(e) = adopted {
            // Still owed in the store as the other node's: taken on again after a restart here.
            tracing::error!(%client_id, error = %e, "could not store the deliveries handed over");
        }
    }

    /// Delivers publications to this node's subscribers; `save_retained`: this node keeps
    /// their retained copies (another node's messages it already kept in the shared store).
    async fn route(&self, publications: Vec<Publication>, save_retained: bool) -> anyhow::Result<()> {
        let _routing = self.routing.read().await;
        let mut queued = Vec::new();
        for publication in publications {
            let publication = Arc::new(publication);
            if publication.retain {
                if save_retained {
                    self.store.save_retained(&publication).await?;
                }
                self.router.set_retained(&publication);
            }
            queued.extend(self.router.route(&publication));
        }
        if !queued.is_empty() {
            self.store.save_queued(&queued).await?;
        }
        Ok(())
    }
}

impl Broker {
    /// A broker with what `store` kept from earlier runs.
    pub async fn start(
        config: BrokerConfig,
        auth: Arc<Authorizer>,
        sink: Arc<dyn PublishSink>,
        store: Arc<dyn BrokerStore>,
    ) -> anyhow::Result<Self> {
        let metrics = Metrics::default();
        metrics.connections_max.set(config.max_connections as i64);
        let router = Router::new(config.max_queued, config.max_queued_bytes, auth.clone(), metrics.clone());
        let stored = store.load().await?;
        for p in stored.retained {
            router.set_retained(&Arc::new(p));
        }
        let restored: Vec<String> = stored.sessions.iter().map(|(id, _)| id.clone()).collect();
        for (client_id, record) in stored.sessions {
            router.restore_session(&client_id, record);
        }
        let owed = stored.queued.len();
        router.restore_queued(stored.queued);
        tracing::info!(
            retained = router.retained_count(),
            sessions = restored.len(),
            queued = owed,
            "broker state restored"
        );
        let connection_slots = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
        let refusal_slots = Arc::new(tokio::sync::Semaphore::new(REFUSALS_ANSWERED));
        let refusals = pacer_core::Occasionally::new(10_000);
        let observer = std::sync::OnceLock::new();
        let (routing, message_ids) = (tokio::sync::RwLock::new(()), MessageIds::new());
        let shared = Arc::new(Shared {
            config,
            connection_slots,
            refusal_slots,
            refusals,
            auth,
            router,
            sink,
            store,
            metrics,
            observer,
            routing,
            message_ids,
        });
        // What the queues hold, in /metrics, refreshed every few seconds.
        let sampled = Arc::downgrade(&shared);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                every.tick().await;
                let Some(shared) = sampled.upgrade() else { return };
                let (messages, bytes) = shared.router.queued_totals();
                shared.metrics.queued.set(messages as i64);
                shared.metrics.queued_bytes.set(bytes as i64);
            }
        });
        // Restored sessions are away from now on: their expiry clock starts now.
        for client_id in restored {
            connection::schedule_expiry(&shared, &client_id, 0);
        }
        Ok(Broker { shared })
    }

    /// Tells `observer` about every client that connects or goes; one observer per broker.
    pub fn observe_sessions(&self, observer: Arc<dyn SessionObserver>) {
        if self.shared.observer.set(observer).is_err() {
            tracing::warn!("a session observer was already set; the new one is ignored");
        }
    }

    pub fn register_metrics(&self, registry: &mut Registry) {
        self.shared.metrics.register(registry);
    }

    /// Publishes as an MQTT client would, for devices that speak another protocol (OwnTracks
    /// HTTP mode, OsmAnd): `who` (authenticated by the caller) must be allowed to publish on
    /// the topic, as for an MQTT PUBLISH; then it is stored and delivered. Returns once durable.
    pub async fn publish_as(&self, who: &Identity, mut publication: Publication) -> Result<(), PublishRefused> {
        // No MQTT client id here (the one on the publication is made up from the request):
        // ACL patterns naming %c grant nothing.
        if !self.shared.auth.may_use_topic(who, None, &publication.topic, Access::Write) {
            self.shared.metrics.denied.inc();
            return Err(PublishRefused::NotAuthorized(publication.topic));
        }
        publication.username = who.user().map(str::to_string);
        self.publish(publication).await
    }

    /// Publishes what Pacer itself sends, unchecked: stored, then delivered. Returns once
    /// durable.
    pub async fn publish(&self, publication: Publication) -> Result<(), PublishRefused> {
        self.shared.accept(vec![publication]).await.map_err(PublishRefused::NotStored)
    }

    /// Delivers messages whose content is already stored (a stream's records) to this node's
    /// subscribers, as if published here; retained ones are kept as retained.
    pub async fn deliver(&self, publications: Vec<Publication>) -> anyhow::Result<()> {
        self.shared.route(publications, true).await
    }

    /// Delivers messages another Pacer node accepted (and stored) to this node's
    /// subscribers, as if published here, without storing them again.
    pub async fn deliver_remote(&self, publications: Vec<Publication>) -> anyhow::Result<()> {
        self.shared.route(publications, false).await
    }

    /// Another node took `client_id`'s session over (nodes sharing one log): its connection
    /// here, if any, is closed with 0x8E and the session is no longer kept here. Returns once
    /// every delivery routed to it here has been stored, so the other node finds them all.
    pub async fn session_moved(&self, client_id: &str) {
        let _routing = self.shared.routing.write().await;
        if self.shared.router.move_away(client_id) {
            tracing::info!(%client_id, "session taken over by another node");
        }
    }

    /// Takes on deliveries another node stored for a session kept here now, after the move
    /// (that node answered late, or this one restarted before taking them on).
    pub async fn adopt(&self, client_id: &str, owed: Vec<Delivery>) {
        if self.shared.router.session(client_id).is_some() {
            self.shared.adopt(client_id, owed).await;
        }
    }

    /// Accepts MQTT over TCP until the task is dropped; each connection runs on its own task.
    pub async fn serve(&self, listener: TcpListener) -> anyhow::Result<()> {
        loop {
            let Some((socket, peer)) = accept(&listener).await else { continue };
            tokio::spawn(connection::serve(socket, peer.to_string(), self.shared.clone()));
        }
    }

    /// Accepts MQTT over TLS, with the certificate and key in these PEM files.
    pub fn serve_tls(
        &self,
        listener: TcpListener,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> anyhow::Result<impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static> {
        let acceptor = transport::tls_acceptor(cert, key)?;
        Ok(transport::serve_tls(self.shared.clone(), listener, acceptor))
    }

    /// Accepts MQTT over WebSocket (subprotocol `mqtt`); inside TLS (`wss://`) when given
    /// the certificate and key PEM files.
    pub fn serve_websocket(
        &self,
        listener: TcpListener,
        tls: Option<(&std::path::Path, &std::path::Path)>,
    ) -> anyhow::Result<impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static> {
        let acceptor = tls.map(|(cert, key)| transport::tls_acceptor(cert, key)).transpose()?;
        Ok(transport::serve_websocket(self.shared.clone(), listener, acceptor))
    }
}

/// The next connection; None after a failed accept (out of file descriptors and the like),
/// having backed off so the loop does not spin.
async fn accept(listener: &TcpListener) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    match listener.accept().await {
        Ok((socket, peer)) => {
            let _ = socket.set_nodelay(true);
            Some((socket, peer))
        }
        Err(e) => {
            tracing::warn!(error = %e, "accept failed");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            None
        }
    }
}
