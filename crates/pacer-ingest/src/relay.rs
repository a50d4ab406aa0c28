//! MQTT across Pacer nodes sharing one log (the Kafka backend): every node appends what its
//! clients publish to `__mqtt_relay` before acknowledging it, and delivers to its own
//! subscribers what the other nodes appended there. So a subscriber on any node gets what is
//! published on any node, and a message is stored once per node that relays it, not more.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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
/// Header of a node's fence record (see [`Relay::fence`]): its number.
const FENCE: &str = "pacer.fence";

/// A publish sink that also relays to the other nodes: wraps the ingest sink.
pub struct Relay {
    inner: Arc<dyn PublishSink>,
    log: Arc<dyn Log>,
    node: String,
    next_fence: AtomicU64,
    /// Fences appended and not read back yet.
    fences: Mutex<HashMap<u64, tokio::sync::oneshot::Sender<()>>>,
}

impl Relay {
    /// `node`: this node's name, unique among the nodes sharing `log`.
    pub fn new(inner: Arc<dyn PublishSink>, log: Arc<dyn Log>, node: &str) -> Self {
        Relay { inner, log, node: node.to_string(), next_fence: AtomicU64::new(1), fences: Mutex::default() }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Returns once this node has delivered everything relayed before the call: appends a
    /// fence record and waits for its own delivery to read it back.
    pub async fn fence(&self) -> anyhow::Result<()> {
        let number = self.next_fence.fetch_add(1, Ordering::Relaxed);
        let (passed, wait) = tokio::sync::oneshot::channel();
        self.fences.lock().unwrap().insert(number, passed);
        let fence = pacer_core::NewRecord::new(pacer_core::now_ms(), None, Bytes::new())
            .with_header(NODE, self.node.clone())
            .with_header(FENCE, number.to_string());
        if let Err(e) = self.log.append(RELAY, vec![fence]).await {
            self.fences.lock().unwrap().remove(&number);
            return Err(e.into());
        }
        wait.await.map_err(|_| anyhow::anyhow!("the relay stopped before the fence came back"))
    }

    /// Places a reader where this node left the relay (its end, the first time), then gives
    /// the task that delivers what other nodes relay from there to `broker`'s subscribers (it
    /// runs until the log fails). Await this before serving clients: a subscriber must not
    /// miss what comes after it subscribed. Resuming where it left means what was published
    /// while this node was down still reaches the persistent sessions it keeps.
    pub async fn delivery(
        self: Arc<Self>,
        broker: Broker,
    ) -> anyhow::Result<impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static> {
        let group = format!("__relay.{}", self.node);
        let start = match self.log.committed_positions(&group, RELAY) {
            Some(positions) => StartAt::Positions(positions),
            None => StartAt::End,
        };
        let mut reader = self.log.reader(RELAY, start)?;
        // Returns once the reader has its place (for a remote log, once it reached the cluster).
        let mut batch = reader.try_batch().await?;
        Ok(async move {
            loop {
                self.deliver(&broker, &batch).await?;
                if !batch.is_empty() {
                    // Delivered means queued durably for the sessions it matched. A commit
                    // that fails (the cluster away for a moment) only means a restart
                    // delivers these again, and the next commit covers them.
                    if let Err(error) = self.log.commit_positions(&group, RELAY, &reader.positions()).await {
                        tracing::warn!(node = %self.node, %error, "recording how far the relay was delivered");
                    }
                }
                batch = reader.next_batch().await?;
            }
        })
    }

    async fn deliver(&self, broker: &Broker, batch: &[pacer_core::Record]) -> anyhow::Result<()> {
        let mut passed = Vec::new();
        let publications: Vec<Publication> = batch
            .iter()
            .filter(|r| match r.header(FENCE) {
                Some(number) if r.header(NODE).is_some_and(|n| n.as_ref() == self.node.as_bytes()) => {
                    passed.extend(std::str::from_utf8(number).ok().and_then(|n| n.parse::<u64>().ok()));
                    false
                }
                Some(_) => false,
                None => r.header(NODE).is_some_and(|n| n.as_ref() != self.node.as_bytes()),
            })
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
        let mut fences = self.fences.lock().unwrap();
        for number in passed {
            if let Some(tell) = fences.remove(&number) {
                let _ = tell.send(());
            }
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
