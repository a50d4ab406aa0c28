//! What the broker keeps per client id, across its connections: subscriptions, messages
//! queued for it, messages in flight to it, and QoS 2 publishes it has not released yet.
//!
//! A clean session lives as long as its connection. A persistent one (clean session = 0)
//! outlives it: messages keep queueing while the client is away and go out when it is back,
//! unacknowledged ones first again, with DUP set.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;

use pacer_core::Publication;
use tokio::sync::Notify;

/// A message on its way to one subscriber, at the QoS it is delivered with.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub publication: Arc<Publication>,
    pub qos: u8,
    /// Sent because of a new subscription to a retained message.
    pub retain: bool,
}

/// An outbound QoS 1/2 message the client has not finished acknowledging.
#[derive(Debug, Clone)]
pub struct Inflight {
    pub delivery: Delivery,
    /// QoS 2: PUBREC came and PUBREL went out; PUBCOMP is awaited.
    pub released: bool,
}

/// The connection a session is attached to.
pub struct Attached {
    pub generation: u64,
    /// Told when the session has something new to send.
    pub wake: Arc<Notify>,
    /// Told when another connection takes the client id over.
    pub kick: Arc<Notify>,
}

pub struct SessionState {
    pub persistent: bool,
    pub subscriptions: Vec<(String, u8)>,
    pub queue: VecDeque<Delivery>,
    pub inflight: BTreeMap<u16, Inflight>,
    pub inbound_qos2: HashSet<u16>,
    next_packet_id: u16,
    pub connection: Option<Attached>,
}

impl SessionState {
    pub fn new(persistent: bool) -> Self {
        SessionState {
            persistent,
            subscriptions: Vec::new(),
            queue: VecDeque::new(),
            inflight: BTreeMap::new(),
            inbound_qos2: HashSet::new(),
            next_packet_id: 1,
            connection: None,
        }
    }

    /// The highest QoS among this session's subscriptions matching `topic`.
    pub fn granted_qos(&self, topic: &str) -> Option<u8> {
        self.subscriptions.iter().filter(|(f, _)| crate::topic::matches(f, topic)).map(|&(_, q)| q).max()
    }

    pub fn allocate_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if !self.inflight.contains_key(&id) {
                return id;
            }
        }
    }

    pub fn wake(&self) {
        if let Some(c) = &self.connection {
            c.wake.notify_one();
        }
    }
}
