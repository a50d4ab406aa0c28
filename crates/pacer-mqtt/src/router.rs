//! The router: who is connected, what they subscribed to, and delivery of publications to
//! them.
//!
//! Each connected client has a bounded queue. Routing never waits on a subscriber: when a
//! queue is full the message is dropped for that subscriber, counted and logged, so one slow
//! subscriber cannot hold up publishers or anybody else.
// The subscription table is a flat list per client, matched one by one; a topic trie
// replaces it when the broker issue brings large subscription counts.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use pacer_core::Publication;
use tokio::sync::{mpsc, Notify};

use crate::metrics::Metrics;
use crate::topic;

/// Capacity of a client's delivery queue.
pub const QUEUE_CAPACITY: usize = 1024;

/// A message on its way to one subscriber, at the QoS it is delivered with.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub publication: Arc<Publication>,
    pub qos: u8,
}

struct Client {
    generation: u64,
    filters: Vec<(String, u8)>,
    queue: mpsc::Sender<Delivery>,
    /// Told when another connection takes over this client id.
    kick: Arc<Notify>,
}

pub struct Router {
    clients: RwLock<HashMap<String, Client>>,
    next_generation: std::sync::atomic::AtomicU64,
    metrics: Metrics,
}

/// What a connection gets when it registers.
pub struct Registration {
    pub generation: u64,
    pub queue: mpsc::Receiver<Delivery>,
    pub kick: Arc<Notify>,
}

impl Router {
    pub fn new(metrics: Metrics) -> Self {
        Router { clients: RwLock::default(), next_generation: Default::default(), metrics }
    }

    /// Registers a connection for `client_id`, disconnecting an earlier one with the same id
    /// (MQTT-3.1.4-2).
    pub fn register(&self, client_id: &str) -> Registration {
        let generation = self.next_generation.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let kick = Arc::new(Notify::new());
        let client = Client { generation, filters: Vec::new(), queue: tx, kick: kick.clone() };
        if let Some(old) = self.clients.write().unwrap().insert(client_id.to_string(), client) {
            old.kick.notify_one();
        }
        Registration { generation, queue: rx, kick }
    }

    pub fn unregister(&self, client_id: &str, generation: u64) {
        let mut clients = self.clients.write().unwrap();
        if clients.get(client_id).is_some_and(|c| c.generation == generation) {
            clients.remove(client_id);
        }
    }

    pub fn subscribe(&self, client_id: &str, filter: &str, qos: u8) {
        if let Some(c) = self.clients.write().unwrap().get_mut(client_id) {
            match c.filters.iter_mut().find(|(f, _)| f == filter) {
                Some(existing) => existing.1 = qos,
                None => c.filters.push((filter.to_string(), qos)),
            }
        }
    }

    pub fn unsubscribe(&self, client_id: &str, filter: &str) {
        if let Some(c) = self.clients.write().unwrap().get_mut(client_id) {
            c.filters.retain(|(f, _)| f != filter);
        }
    }

    /// Hands `publication` to every client with a matching subscription. A client gets it
    /// once, at the highest QoS among its matching filters, capped by the publication's.
    pub fn route(&self, publication: Arc<Publication>) {
        let clients = self.clients.read().unwrap();
        for (id, client) in clients.iter() {
            let granted =
                client.filters.iter().filter(|(f, _)| topic::matches(f, &publication.topic)).map(|&(_, q)| q).max();
            let Some(granted) = granted else { continue };
            let delivery = Delivery { publication: publication.clone(), qos: granted.min(publication.qos) };
            match client.queue.try_send(delivery) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(d)) => {
                    self.metrics.dropped.inc();
                    tracing::warn!(client_id = %id, topic = %d.publication.topic, qos = d.qos, "subscriber queue full; message dropped for this subscriber");
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }
}
