//! The router: sessions by client id, retained messages, and delivery of publications.
//!
//! Routing never waits on a subscriber: a publication is put on each matching session's
//! queue and the session's connection is woken. A queue has a limit; a message that does not
//! fit is dropped for that subscriber, counted in /metrics and logged, never silently.
// Subscriptions are matched session by session; a topic trie replaces that when subscription
// counts grow (see the broker issue).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use pacer_core::{now_ms, Publication};
use tokio::sync::Notify;

use pacer_auth::{Access, Authorizer, Identity};

use crate::metrics::Metrics;
use crate::session::{Attached, Delivery, Owner, QueuedDelivery, SessionRecord, SessionState};
use crate::topic;

pub type Session = Arc<Mutex<SessionState>>;

/// A session subscribed in a share group, while a publication is routed.
struct ShareMember<'a> {
    client_id: &'a String,
    session: &'a Session,
    qos: u8,
    id: Option<u32>,
}

pub struct Router {
    sessions: RwLock<HashMap<String, Session>>,
    retained: RwLock<BTreeMap<String, Arc<Publication>>>,
    next_generation: AtomicU64,
    /// Picks the member of a share group that gets the next message.
    share_turn: AtomicUsize,
    max_queued: usize,
    max_queued_bytes: usize,
    /// Read permissions, checked for every message on its way to a subscriber.
    auth: Arc<Authorizer>,
    metrics: Metrics,
    /// Number of the next delivery stored for a lasting session.
    next_stored: AtomicU64,
}

/// The client id's session belongs to another user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken;

/// What a connection gets when it attaches to a session.
pub struct Connected {
    pub session: Session,
    pub session_present: bool,
    /// A stored session of this client id was ended by this clean start.
    pub discarded_stored: bool,
    pub generation: u64,
    pub wake: Arc<Notify>,
    pub kick: Arc<Notify>,
}

impl Router {
    pub fn new(max_queued: usize, max_queued_bytes: usize, auth: Arc<Authorizer>, metrics: Metrics) -> Self {
        Router {
            sessions: RwLock::default(),
            retained: RwLock::default(),
            next_generation: AtomicU64::new(1),
            share_turn: AtomicUsize::new(0),
            max_queued,
            max_queued_bytes,
            auth,
            metrics,
            next_stored: AtomicU64::new(1),
        }
    }

    /// Messages and bytes waiting in every session's queue, for /metrics: worked out when
    /// asked (every few seconds), so routing a message costs no shared counter.
    pub fn queued_totals(&self) -> (usize, usize) {
        let sessions = self.sessions.read().unwrap();
        sessions.values().fold((0, 0), |(messages, bytes), s| {
            let state = s.lock().unwrap();
            (messages + state.queue.len(), bytes + state.queue.bytes())
        })
    }

    /// Whether this session's client may receive messages on `topic_name`.
    pub fn may_read(&self, state: &SessionState, client_id: &str, topic_name: &str) -> bool {
        self.auth.may_use_topic(&state.identity, Some(client_id), topic_name, Access::Read)
    }

    /// A stored session, offline until its client connects: it reads as its owner.
    fn offline(&self, record: &SessionRecord) -> SessionState {
        let owner = record.owner.as_ref().and_then(|o| o.user.as_deref());
        let mut state = SessionState::new(record.expiry_secs, self.auth.acting_as(owner));
        state.subscriptions = record.subscriptions.clone();
        state.owner = record.owner.clone();
        state
    }

    /// Whether `client_id` has a session (connected or not) that another user made.
    pub fn owned_by_another(&self, client_id: &str, identity: &Identity) -> bool {
        self.session(client_id)
            .is_some_and(|s| s.lock().unwrap().owner.as_ref().is_some_and(|o| o.user.as_deref() != identity.user()))
    }

    /// Restores a stored session (after a restart), offline until its client connects.
    pub fn restore_session(&self, client_id: &str, record: SessionRecord) {
        let state = self.offline(&record);
        self.sessions.write().unwrap().insert(client_id.to_string(), Arc::new(Mutex::new(state)));
    }

    /// Keeps a session another node had, offline until its client connects (it is being
    /// taken over); one already here takes the record's subscriptions.
    pub fn install(&self, client_id: &str, record: &SessionRecord) {
        let mut sessions = self.sessions.write().unwrap();
        match sessions.get(client_id) {
            Some(session) => session.lock().unwrap().subscriptions = record.subscriptions.clone(),
            None => {
                sessions.insert(client_id.to_string(), Arc::new(Mutex::new(self.offline(record))));
            }
        }
    }

    /// Forgets a session another node took over, closing its connection here. False when
    /// there was none.
    pub fn move_away(&self, client_id: &str) -> bool {
        let Some(session) = self.sessions.write().unwrap().remove(client_id) else { return false };
        let mut state = session.lock().unwrap();
        state.moved = true;
        if let Some(connection) = state.connection.take() {
            connection.kick.notify_one();
        }
        true
    }

    /// Puts what the node that had a session still owed it ahead of its queue, numbered
    /// as this node's; those to store again come back. A message the session has queued
    /// here already (routed here too while it moved) is not taken twice.
    pub fn adopt(&self, client_id: &str, owed: Vec<Delivery>) -> Vec<QueuedDelivery> {
        let Some(session) = self.session(client_id) else { return Vec::new() };
        let mut state = session.lock().unwrap();
        let queued: HashSet<u128> = state.queue.iter().filter_map(|d| d.publication.id).collect();
        let mut stored = Vec::new();
        for mut delivery in owed.into_iter().filter(|d| d.publication.id.is_none_or(|id| !queued.contains(&id))) {
            let seq = self.next_stored.fetch_add(1, Ordering::Relaxed);
            delivery.stored = Some(seq);
            stored.push(QueuedDelivery { client_id: client_id.to_string(), seq, delivery });
        }
        for q in stored.iter().rev() {
            state.queue.push_front(q.delivery.clone());
        }
        state.wake();
        stored
    }

    /// Attaches a new connection to `client_id`'s session, disconnecting an earlier one
    /// (MQTT-3.1.4-2). A clean start discards what the session had. A session, connected
    /// or not, belongs to the user that made it: another user gets [`Taken`], and the
    /// session and its connection stay as they were. One without an owner (stored by an
    /// older Pacer) starts clean.
    pub fn connect(
        &self,
        client_id: &str,
        identity: &Identity,
        clean_start: bool,
        expiry_secs: u32,
    ) -> Result<Connected, Taken> {
        let owner = Owner { user: identity.user().map(str::to_string) };
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let wake = Arc::new(Notify::new());
        let kick = Arc::new(Notify::new());
        let mut sessions = self.sessions.write().unwrap();
        let mut discarded_stored = false;
        let resumed = match sessions.get(client_id).cloned() {
            Some(session) => {
                let mut state = session.lock().unwrap();
                if state.owner.as_ref().is_some_and(|o| *o != owner) {
                    return Err(Taken);
                }
                if let Some(old) = state.connection.take() {
                    old.kick.notify_one();
                }
                // A session stored before sessions had owners is nobody's to resume: what it
                // queued was for whoever made it, so it starts clean.
                if clean_start || !state.persistent() || state.owner.is_none() {
                    discarded_stored = state.persistent();
                    None
                } else {
                    state.expiry_secs = expiry_secs;
                    drop(state);
                    Some(session)
                }
            }
            None => None,
        };
        let session_present = resumed.is_some();
        let session = resumed.unwrap_or_else(|| {
            let fresh = Arc::new(Mutex::new(SessionState::new(expiry_secs, identity.clone())));
            sessions.insert(client_id.to_string(), fresh.clone());
            fresh
        });
        {
            let mut state = session.lock().unwrap();
            state.connection =
                Some(Attached { generation, wake: wake.clone(), kick: kick.clone(), window: usize::MAX });
            state.identity = identity.clone();
            state.owner = Some(owner);
        }
        Ok(Connected { session, session_present, discarded_stored, generation, wake, kick })
    }

    /// Detaches a connection. A session with expiry 0 ends with it; others stay and keep
    /// queueing. Returns the session's expiry if it stays, None if it ended or was taken over.
    pub fn disconnect(&self, client_id: &str, generation: u64) -> Option<u32> {
        let mut sessions = self.sessions.write().unwrap();
        let session = sessions.get(client_id).cloned()?;
        let mut state = session.lock().unwrap();
        if state.connection.as_ref().is_none_or(|c| c.generation != generation) {
            return None; // taken over: the session belongs to the newer connection now
        }
        state.connection = None;
        state.detached_generation = generation;
        if !state.persistent() {
            drop(state);
            sessions.remove(client_id);
            return None;
        }
        Some(state.expiry_secs)
    }

    pub fn session(&self, client_id: &str) -> Option<Session> {
        self.sessions.read().unwrap().get(client_id).cloned()
    }

    /// Whether a connection resumed the session `generation` left (a will is then not sent).
    pub fn resumed_since(&self, client_id: &str, generation: u64) -> bool {
        self.sessions.read().unwrap().get(client_id).is_some_and(|s| {
            let state = s.lock().unwrap();
            state.connection.is_some() || state.detached_generation != generation
        })
    }

    /// Ends a session whose expiry passed while its client stayed away.
    pub fn expire(&self, client_id: &str, generation: u64) -> bool {
        let mut sessions = self.sessions.write().unwrap();
        let away = sessions.get(client_id).is_some_and(|s| {
            let state = s.lock().unwrap();
            state.connection.is_none() && state.detached_generation == generation
        });
        if away {
            sessions.remove(client_id);
        }
        away
    }

    /// Puts `publication` on the queue of every session with a matching subscription: once
    /// per session, at the highest matching QoS capped by the publication's, carrying the ids
    /// of all the subscriptions it matched. Each share group gets one copy.
    /// Deliveries to lasting sessions come back, to be stored before the publisher's ack.
    pub fn route(&self, publication: &Arc<Publication>) -> Vec<QueuedDelivery> {
        let mut stored = Vec::new();
        let sessions = self.sessions.read().unwrap();
        let mut groups: BTreeMap<(String, String), Vec<ShareMember>> = BTreeMap::new();
        for (client_id, session) in sessions.iter() {
            let mut state = session.lock().unwrap();
            let mut best: Option<u8> = None;
            let mut retain_as_published = false;
            let mut ids = Vec::new();
            for sub in &state.subscriptions {
                if !topic::matches(&sub.filter, &publication.topic) {
                    continue;
                }
                if sub.options.no_local && publication.client_id == *client_id {
                    continue;
                }
                if let Some(group) = &sub.share {
                    groups.entry((group.clone(), sub.filter.clone())).or_default().push(ShareMember {
                        client_id,
                        session,
                        qos: sub.options.qos,
                        id: sub.id,
                    });
                    continue;
                }
                best = Some(best.map_or(sub.options.qos, |b| b.max(sub.options.qos)));
                retain_as_published |= sub.options.retain_as_published;
                ids.extend(sub.id);
            }
            let Some(granted) = best else { continue };
            if !self.may_read(&state, client_id, &publication.topic) {
                continue;
            }
            let qos = granted.min(publication.qos);
            // An offline session queues QoS 1 and 2 only, as mosquitto does.
            if state.connection.is_none() && qos == 0 {
                continue;
            }
            let delivery = Delivery {
                publication: publication.clone(),
                qos,
                retain: retain_as_published && publication.retain,
                subscription_ids: ids,
                stored: None,
            };
            self.enqueue_lasting(client_id, &mut state, delivery, &mut stored);
        }
        for members in groups.into_values() {
            // Prefer members that are connected; among them, take turns.
            let members: Vec<_> = members
                .into_iter()
                .filter(|m| self.may_read(&m.session.lock().unwrap(), m.client_id, &publication.topic))
                .collect();
            if members.is_empty() {
                continue;
            }
            let online: Vec<_> = members.iter().filter(|m| m.session.lock().unwrap().connection.is_some()).collect();
            let pool: Vec<_> = if online.is_empty() { members.iter().collect() } else { online };
            let chosen = pool[self.share_turn.fetch_add(1, Ordering::Relaxed) % pool.len()];
            let delivery = Delivery {
                publication: publication.clone(),
                qos: chosen.qos.min(publication.qos),
                retain: false,
                subscription_ids: chosen.id.into_iter().collect(),
                stored: None,
            };
            self.enqueue_lasting(chosen.client_id, &mut chosen.session.lock().unwrap(), delivery, &mut stored);
        }
        stored
    }

    /// Enqueues; a QoS 1/2 delivery to a lasting session is numbered and listed in `stored`.
    pub fn enqueue_lasting(
        &self,
        client_id: &str,
        state: &mut SessionState,
        mut delivery: Delivery,
        stored: &mut Vec<QueuedDelivery>,
    ) {
        let lasting = state.persistent() && delivery.qos > 0;
        if lasting {
            delivery.stored = Some(self.next_stored.fetch_add(1, Ordering::Relaxed));
        }
        let seq = delivery.stored;
        let copy = lasting.then(|| delivery.clone());
        if self.enqueue(client_id, state, delivery) {
            if let (Some(seq), Some(delivery)) = (seq, copy) {
                stored.push(QueuedDelivery { client_id: client_id.to_string(), seq, delivery });
            }
        }
    }

    /// Puts deliveries stored before a restart back on their sessions' queues.
    pub fn restore_queued(&self, queued: Vec<QueuedDelivery>) {
        let sessions = self.sessions.read().unwrap();
        for q in queued {
            self.next_stored.fetch_max(q.seq + 1, Ordering::Relaxed);
            match sessions.get(&q.client_id) {
                Some(session) => session.lock().unwrap().queue.push_back(q.delivery),
                None => tracing::debug!(client_id = %q.client_id, "stored delivery for a session that ended; dropped"),
            }
        }
    }

    /// Queues a delivery for a session; false when the queue was full (in messages or bytes)
    /// and it was dropped: counted, and said once per interval per session.
    pub fn enqueue(&self, client_id: &str, state: &mut SessionState, delivery: Delivery) -> bool {
        let bytes = delivery.publication.topic.len() + delivery.publication.payload.len();
        if state.queue.len() >= self.max_queued || state.queue.bytes() + bytes > self.max_queued_bytes {
            self.metrics.dropped.inc();
            if let Some(dropped) = state.drops.tick() {
                tracing::warn!(%client_id, dropped, queued = state.queue.len(), queued_bytes = state.queue.bytes(), "session queue full (mqtt.max_queued, max_queued_bytes): messages dropped for this subscriber");
            }
            return false;
        }
        state.queue.push_back(delivery);
        state.wake();
        true
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

    /// Retained messages matching `filter` that have not expired.
    pub fn retained_matching(&self, filter: &str) -> Vec<Arc<Publication>> {
        let now = now_ms();
        self.retained
            .read()
            .unwrap()
            .values()
            .filter(|p| topic::matches(filter, &p.topic) && p.properties.expires_at.is_none_or(|t| t > now))
            .cloned()
            .collect()
    }

    pub fn retained_count(&self) -> usize {
        self.retained.read().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(id: u128) -> Delivery {
        let publication = Publication { topic: format!("x/{id}"), qos: 1, id: Some(id), ..Default::default() };
        Delivery {
            publication: Arc::new(publication),
            qos: 1,
            retain: false,
            subscription_ids: Vec::new(),
            stored: None,
        }
    }

    /// A session of a user, and one stored before sessions had owners: another user cannot
    /// have the first; the second starts clean for whoever connects, without its messages.
    #[test]
    fn sessions_change_hands_only_empty() {
        use pacer_auth::{AuthConfig, Authorizer};
        let auth = Arc::new(Authorizer::open(&AuthConfig { allow_anonymous: true, ..Default::default() }).unwrap());
        let router = Router::new(100, 1 << 20, auth.clone(), Metrics::default());
        let (alice, bob) = (auth.acting_as(Some("alice")), auth.acting_as(Some("bob")));
        let owned = SessionRecord {
            expiry_secs: 60,
            subscriptions: Vec::new(),
            owner: Some(Owner { user: Some("alice".into()) }),
        };
        router.restore_session("phone", owned);
        router.session("phone").unwrap().lock().unwrap().queue.push_back(delivery(1));
        assert!(router.owned_by_another("phone", &bob));
        assert!(router.connect("phone", &bob, false, 60).is_err());
        let resumed = router.connect("phone", &alice, false, 60).unwrap();
        assert!(resumed.session_present && resumed.session.lock().unwrap().queue.len() == 1);

        router.restore_session("legacy", SessionRecord { expiry_secs: 60, subscriptions: Vec::new(), owner: None });
        router.session("legacy").unwrap().lock().unwrap().queue.push_back(delivery(2));
        let taken = router.connect("legacy", &bob, false, 60).unwrap();
        assert!(!taken.session_present && taken.session.lock().unwrap().queue.len() == 0);
        assert!(router.owned_by_another("legacy", &alice), "bob's from now on");
    }

    /// A subscriber that stops reading holds at most max_queued_bytes: past it messages are
    /// dropped for it, counted, and warned about once per interval, not once each.
    #[test]
    fn a_full_queue_drops_by_bytes_and_counts() {
        let metrics = Metrics::default();
        let router = Router::new(1_000_000, 10_000, Arc::new(Authorizer::open_to_everyone()), metrics.clone());
        router.restore_session("stalled", SessionRecord { expiry_secs: 60, subscriptions: Vec::new(), owner: None });
        let session = router.session("stalled").unwrap();
        let mut state = session.lock().unwrap();
        let big = |id| {
            let payload = bytes::Bytes::from(vec![b'x'; 1000]);
            let publication = Publication { topic: "t/1".into(), payload, qos: 1, id: Some(id), ..Default::default() };
            Delivery {
                publication: Arc::new(publication),
                qos: 1,
                retain: false,
                subscription_ids: Vec::new(),
                stored: None,
            }
        };
        let taken = (0..50).filter(|i| router.enqueue("stalled", &mut state, big(*i))).count();
        assert_eq!(taken, 9, "9 x 1003 bytes fit in 10,000");
        assert!(state.queue.bytes() <= 10_000);
        assert_eq!(metrics.dropped.get(), 41);
        drop(state);
        assert_eq!(router.queued_totals(), (9, 9 * 1003), "what /metrics shows");
        let mut state = session.lock().unwrap();
        state.queue.pop_front();
        assert!(router.enqueue("stalled", &mut state, big(99)), "room again once one went out");
    }

    /// A session taken over from another node: what that node still owed goes first, without
    /// the messages routed here too while the session moved, each numbered anew.
    #[test]
    fn adopted_deliveries_go_first_and_not_twice() {
        let router = Router::new(100, 1 << 20, Arc::new(Authorizer::open_to_everyone()), Metrics::default());
        router.install("keeper", &SessionRecord { expiry_secs: u32::MAX, subscriptions: Vec::new(), owner: None });
        let session = router.session("keeper").unwrap();
        session.lock().unwrap().queue.extend([delivery(3), delivery(4)]);

        let stored = router.adopt("keeper", vec![delivery(1), delivery(2), delivery(3)]);

        let ids = |ds: Vec<&Delivery>| ds.iter().map(|d| d.publication.id.unwrap()).collect::<Vec<_>>();
        assert_eq!(ids(stored.iter().map(|q| &q.delivery).collect()), [1, 2], "stored again: the ones not here yet");
        assert!(stored.iter().all(|q| q.delivery.stored == Some(q.seq)));
        assert_ne!(stored[0].seq, stored[1].seq);
        let state = session.lock().unwrap();
        assert_eq!(ids(state.queue.iter().collect()), [1, 2, 3, 4]);
    }
}
