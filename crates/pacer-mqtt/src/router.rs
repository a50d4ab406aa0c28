//! The router: sessions by client id, retained messages, and delivery of publications.
//!
//! Routing never waits on a subscriber: a publication is put on each matching session's
//! queue and the session's connection is woken. A queue has a limit; a message that does not
//! fit is dropped for that subscriber, counted in /metrics and logged, never silently.
// Subscriptions are matched session by session; a topic trie replaces that when subscription
// counts grow (see the broker issue).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use pacer_core::Publication;
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::session::{Attached, Delivery, SessionState};
use crate::topic;

pub type Session = Arc<Mutex<SessionState>>;

pub struct Router {
    sessions: RwLock<HashMap<String, Session>>,
    retained: RwLock<BTreeMap<String, Arc<Publication>>>,
    next_generation: AtomicU64,
    max_queued: usize,
    metrics: Metrics,
}

/// What a connection gets when it attaches to a session.
pub struct Connected {
    pub session: Session,
    pub session_present: bool,
    /// A persistent session of this client id was ended by this clean start.
    pub discarded_persistent: bool,
    pub generation: u64,
    pub wake: Arc<Notify>,
    pub kick: Arc<Notify>,
}

impl Router {
    pub fn new(max_queued: usize, metrics: Metrics) -> Self {
        Router {
            sessions: RwLock::default(),
            retained: RwLock::default(),
            next_generation: AtomicU64::new(1),
            max_queued,
            metrics,
        }
    }

    /// Restores a persistent session (after a restart), offline until its client connects.
    pub fn restore_session(&self, client_id: &str, subscriptions: Vec<(String, u8)>) {
        let mut state = SessionState::new(true);
        state.subscriptions = subscriptions;
        self.sessions.write().unwrap().insert(client_id.to_string(), Arc::new(Mutex::new(state)));
    }

    /// Attaches a new connection to `client_id`'s session, disconnecting an earlier one
    /// (MQTT-3.1.4-2). A clean start discards what the session had.
    pub fn connect(&self, client_id: &str, clean: bool) -> Connected {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let wake = Arc::new(Notify::new());
        let kick = Arc::new(Notify::new());
        let attached = Attached { generation, wake: wake.clone(), kick: kick.clone() };
        let mut sessions = self.sessions.write().unwrap();
        let existing = sessions.get(client_id).cloned();
        let mut discarded_persistent = false;
        let (session, session_present) = match existing {
            Some(session) => {
                let mut state = session.lock().unwrap();
                if let Some(old) = state.connection.take() {
                    old.kick.notify_one();
                }
                if clean || !state.persistent {
                    discarded_persistent = state.persistent;
                    drop(state);
                    let fresh = Arc::new(Mutex::new(SessionState::new(!clean)));
                    sessions.insert(client_id.to_string(), fresh.clone());
                    (fresh, false)
                } else {
                    drop(state);
                    (session, true)
                }
            }
            None => {
                let fresh = Arc::new(Mutex::new(SessionState::new(!clean)));
                sessions.insert(client_id.to_string(), fresh.clone());
                (fresh, false)
            }
        };
        session.lock().unwrap().connection = Some(attached);
        Connected { session, session_present, discarded_persistent, generation, wake, kick }
    }

    /// Detaches a connection. A clean session ends with it; a persistent one stays and keeps
    /// queueing. Returns whether the session ended.
    pub fn disconnect(&self, client_id: &str, generation: u64) -> bool {
        let mut sessions = self.sessions.write().unwrap();
        let Some(session) = sessions.get(client_id).cloned() else { return false };
        let mut state = session.lock().unwrap();
        if state.connection.as_ref().is_none_or(|c| c.generation != generation) {
            return false; // taken over: the session belongs to the newer connection now
        }
        state.connection = None;
        if !state.persistent {
            drop(state);
            sessions.remove(client_id);
            return true;
        }
        false
    }

    /// Puts `publication` on the queue of every session with a matching subscription: once
    /// per session, at the highest matching QoS, capped by the publication's.
    pub fn route(&self, publication: &Arc<Publication>) {
        let sessions = self.sessions.read().unwrap();
        for (client_id, session) in sessions.iter() {
            let mut state = session.lock().unwrap();
            let Some(granted) = state.granted_qos(&publication.topic) else { continue };
            let qos = granted.min(publication.qos);
            // An offline persistent session queues QoS 1 and 2 only, as mosquitto does.
            if state.connection.is_none() && qos == 0 {
                continue;
            }
            self.enqueue(client_id, &mut state, Delivery { publication: publication.clone(), qos, retain: false });
        }
    }

    pub fn enqueue(&self, client_id: &str, state: &mut SessionState, delivery: Delivery) {
        if state.queue.len() >= self.max_queued {
            self.metrics.dropped.inc();
            tracing::warn!(%client_id, topic = %delivery.publication.topic, qos = delivery.qos, queued = state.queue.len(), "session queue full (mqtt.max_queued); message dropped for this subscriber");
            return;
        }
        state.queue.push_back(delivery);
        state.wake();
    }

    /// Stores or (empty payload) clears the retained message of a topic.
    pub fn set_retained(&self, publication: &Arc<Publication>) {
        let mut retained = self.retained.write().unwrap();
        if publication.payload.is_empty() {
            retained.remove(&publication.topic);
        } else {
            retained.insert(publication.topic.clone(), publication.clone());
        }
    }

    pub fn retained_matching(&self, filter: &str) -> Vec<Arc<Publication>> {
        self.retained.read().unwrap().values().filter(|p| topic::matches(filter, &p.topic)).cloned().collect()
    }

    pub fn retained_count(&self) -> usize {
        self.retained.read().unwrap().len()
    }
}
