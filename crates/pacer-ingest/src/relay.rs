//! MQTT across Pacer nodes sharing one log (the Kafka backend): every node appends what its
//! clients publish to `__mqtt_relay` before acknowledging it, and delivers to its own
//! subscribers what the other nodes appended there. So a subscriber on any node gets what is
//! published on any node, and a message is stored once per node that relays it, not more.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pacer_core::Publication;
use pacer_log::{Log, StartAt};
use pacer_mqtt::{Broker, PublishSink};

use crate::broker_store::{publication_record, record_publication};

/// The internal stream nodes relay publications through.
pub const RELAY: &str = "__mqtt_relay";
/// Header naming the node that relayed a record, so it skips its own.
const NODE: &str = "pacer.node";

/// A publish sink that also relays to the other nodes: wraps the ingest sink.
pub struct Relay {
    inner: Arc<dyn PublishSink>,
    log: Arc<dyn Log>,
    node: String,
}

impl Relay {
    pub fn new(inner: Arc<dyn PublishSink>, log: Arc<dyn Log>) -> Self {
        // Unique enough among the nodes of a cluster: start time and process id.
        let node = format!("{:x}-{:x}", pacer_core::now_ms(), std::process::id());
        Relay { inner, log, node }
    }

    /// Places a reader at the relay's end now, then gives the task that delivers what other
    /// nodes relay from there to `broker`'s subscribers (it runs until the log fails). Await
    /// this before serving clients: a subscriber must not miss what comes after it subscribed.
    pub async fn delivery(
        self: Arc<Self>,
        broker: Broker,
    ) -> anyhow::Result<impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static> {
        let mut reader = self.log.reader(RELAY, StartAt::End)?;
        // Returns once the reader has its place (for a remote log, once it reached the cluster).
        let mut batch = reader.try_batch().await?;
        Ok(async move {
            loop {
                self.deliver(&broker, &batch).await?;
                batch = reader.next_batch().await?;
            }
        })
    }

    async fn deliver(&self, broker: &Broker, batch: &[pacer_core::Record]) -> anyhow::Result<()> {
        let publications: Vec<Publication> = batch
            .iter()
            .filter(|r| r.header(NODE).is_some_and(|n| n.as_ref() != self.node.as_bytes()))
            .filter_map(|r| {
                let publication = record_publication(r);
                if publication.is_none() {
                    tracing::warn!(partition = r.partition, offset = r.offset, "unreadable relayed message skipped");
                }
                publication
            })
            .collect();
        if !publications.is_empty() {
            broker.deliver_remote(publications).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl PublishSink for Relay {
    async fn accept(&self, publications: &[Publication]) -> anyhow::Result<()> {
        let records = publications
            .iter()
            .map(|p| Ok(publication_record(p, Bytes::from(p.topic.clone()))?.with_header(NODE, self.node.clone())))
            .collect::<anyhow::Result<Vec<_>>>()?;
        // Both before the acknowledgement: stored for queries, and on its way to other nodes.
        let (stored, relayed) = futures::join!(self.inner.accept(publications), self.log.append(RELAY, records));
        stored?;
        relayed?;
        Ok(())
    }
}
