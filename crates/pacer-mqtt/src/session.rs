//! What the broker keeps per client id, across its connections: subscriptions, messages
//! queued for it, messages in flight to it, and QoS 2 publishes it has not released yet.
//!
//! A session whose expiry is 0 (MQTT 3.1.1 clean session, MQTT 5 without Session Expiry)
//! lives as long as its connection. Others outlive it: messages keep queueing while the
//! client is away and go out when it is back, unacknowledged ones first again, with DUP set.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;

use pacer_auth::Identity;
use pacer_core::Publication;
use tokio::sync::Notify;

use crate::wire::SubOptions;

/// How often a session that keeps dropping messages is warned about, at most.
const DROP_LOG_INTERVAL_MS: i64 = 10_000;

/// Messages waiting for a session, with the bytes they hold (topic and payload): what a
/// subscriber that stops reading pins in memory.
#[derive(Debug, Default)]
pub struct Queue {
    items: VecDeque<Delivery>,
    bytes: usize,
}

fn weight(d: &Delivery) -> usize {
    d.publication.topic.len() + d.publication.payload.len()
}

impl Queue {
    pub fn push_back(&mut self, d: Delivery) {
        self.bytes += weight(&d);
        self.items.push_back(d);
    }

    pub fn push_front(&mut self, d: Delivery) {
        self.bytes += weight(&d);
        self.items.push_front(d);
    }

    pub fn pop_front(&mut self) -> Option<Delivery> {
        let d = self.items.pop_front()?;
        self.bytes -= weight(&d);
        Some(d)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn iter(&self) -> impl Iterator<Item = &Delivery> {
        self.items.iter()
    }
}

impl Extend<Delivery> for Queue {
    fn extend<T: IntoIterator<Item = Delivery>>(&mut self, deliveries: T) {
        deliveries.into_iter().for_each(|d| self.push_back(d));
    }
}

/// Session expiry meaning "never" (MQTT 5: 0xFFFFFFFF; a 3.1.1 persistent session).
pub const NEVER_EXPIRES: u32 = u32::MAX;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Subscription {
    pub filter: String,
    /// Share group of a `$share/{group}/{filter}` subscription.
    pub share: Option<String>,
    pub options: SubOptions,
    /// MQTT 5 subscription identifier.
    pub id: Option<u32>,
}

/// A session as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionRecord {
    pub expiry_secs: u32,
    pub subscriptions: Vec<Subscription>,
    /// Who made the session: only they may connect with its client id. None in records
    /// stored before sessions had owners; the next client to connect then takes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
}

/// The user a session belongs to (None: an anonymous client's).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Owner {
    pub user: Option<String>,
}

/// A message on its way to one subscriber.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub publication: Arc<Publication>,
    pub qos: u8,
    pub retain: bool,
    /// Identifiers of the subscriptions it matched (MQTT 5).
    pub subscription_ids: Vec<u32>,
    /// Its number in the broker store, when it was stored for a lasting session: the
    /// subscriber's acknowledgement is recorded against it.
    pub stored: Option<u64>,
}

/// A delivery kept in the broker store for a lasting session, so a restart does not lose it.
#[derive(Debug, Clone)]
pub struct QueuedDelivery {
    pub client_id: String,
    pub seq: u64,
    pub delivery: Delivery,
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
    /// Messages it may have unacknowledged at once (its send window): while that many are
    /// in flight, waking it would send nothing; its next acknowledgement sends more.
    pub window: usize,
    /// Told when another connection takes the client id over.
    pub kick: Arc<Notify>,
}

pub struct SessionState {
    pub expiry_secs: u32,
    pub subscriptions: Vec<Subscription>,
    pub queue: Queue,
    /// Messages dropped for this session since its last warning (logged once per interval).
    pub drops: pacer_core::Occasionally,
    pub inflight: BTreeMap<u16, Inflight>,
    pub inbound_qos2: HashSet<u16>,
    next_packet_id: u16,
    pub connection: Option<Attached>,
    /// Generation of the connection that last left, to tell whether it came back since.
    pub detached_generation: u64,
    /// Who the client authenticated as, for read permissions: the owner's identity.
    pub identity: Identity,
    pub owner: Option<Owner>,
    /// Another node took the session over: its last connection here leaves without a will.
    pub moved: bool,
}

impl SessionState {
    pub fn new(expiry_secs: u32, identity: Identity) -> Self {
        SessionState {
            expiry_secs,
            subscriptions: Vec::new(),
            queue: Queue::default(),
            drops: pacer_core::Occasionally::new(DROP_LOG_INTERVAL_MS),
            inflight: BTreeMap::new(),
            inbound_qos2: HashSet::new(),
            next_packet_id: 1,
            connection: None,
            detached_generation: 0,
            identity,
            owner: None,
            moved: false,
        }
    }

    pub fn persistent(&self) -> bool {
        self.expiry_secs > 0
    }

    pub fn record(&self) -> SessionRecord {
        SessionRecord {
            expiry_secs: self.expiry_secs,
            subscriptions: self.subscriptions.clone(),
            owner: self.owner.clone(),
        }
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

    /// Tells the connection there is something to send, unless its window is full (a
    /// subscriber that stopped acknowledging): then its next ack sends it, and routing to it
    /// costs no task switch per message.
    pub fn wake(&self) {
        if let Some(c) = self.connection.as_ref().filter(|c| self.inflight.len() < c.window) {
            c.wake.notify_one();
        }
    }
}

/// Splits `$share/{group}/{filter}` into its group and filter.
pub fn parse_shared(filter: &str) -> Result<(Option<String>, String), &'static str> {
    let Some(rest) = filter.strip_prefix("$share/") else { return Ok((None, filter.to_string())) };
    let (group, filter) = rest.split_once('/').ok_or("a shared subscription needs $share/{group}/{filter}")?;
    if group.is_empty() || group.contains(['+', '#']) {
        return Err("the share group name must be non-empty and without wildcards");
    }
    Ok((Some(group.to_string()), filter.to_string()))
}
