//! Pacer's MQTT server.
//!
//! Our own session and routing layer over the `rmqtt-codec` packet codec. Its one rule that
//! off-the-shelf brokers do not keep: a QoS 1/2 PUBLISH is acknowledged only after the
//! [`PublishSink`] (in Pacer: the ingest rules appending to the log) has made it durable.
//! Only then is it routed to subscribers, so nobody sees a message that could be lost.

mod connection;
mod metrics;
mod router;
pub mod topic;

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use pacer_core::Publication;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

pub use metrics::Metrics;
use router::Router;

/// Where accepted publications go before they are acknowledged.
#[async_trait]
pub trait PublishSink: Send + Sync + 'static {
    /// Returns once the publication is durable (or has been put where it belongs, e.g. the
    /// dead-letter stream). An error means nothing is acknowledged.
    async fn accept(&self, publication: &Publication) -> anyhow::Result<()>;
}

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub allow_anonymous: bool,
    /// Largest packet accepted; a bigger one closes the connection.
    pub max_packet_size: u32,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig { allow_anonymous: true, max_packet_size: 1 << 20 }
    }
}

pub struct Broker {
    shared: Arc<Shared>,
}

struct Shared {
    config: BrokerConfig,
    router: Router,
    sink: Arc<dyn PublishSink>,
    metrics: Metrics,
}

impl Shared {
    /// Makes a publication durable, then routes it to subscribers.
    async fn accept(&self, publication: Publication) -> anyhow::Result<()> {
        self.sink.accept(&publication).await?;
        self.router.route(Arc::new(publication));
        Ok(())
    }
}

impl Broker {
    pub fn new(config: BrokerConfig, sink: Arc<dyn PublishSink>) -> Self {
        let metrics = Metrics::default();
        let router = Router::new(metrics.clone());
        Broker { shared: Arc::new(Shared { config, router, sink, metrics }) }
    }

    pub fn register_metrics(&self, registry: &mut Registry) {
        self.shared.metrics.register(registry);
    }

    /// Accepts connections until the task is dropped; each runs on its own task.
    pub async fn serve(&self, listener: TcpListener) -> anyhow::Result<()> {
        loop {
            let (socket, peer) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = socket.set_nodelay(true);
            tokio::spawn(connection::serve(socket, peer_name(peer), self.shared.clone()));
        }
    }
}

fn peer_name(peer: SocketAddr) -> String {
    peer.to_string()
}
