//! One owner per MQTT session among nodes sharing a log (the Kafka backend).
//!
//! A session lives on the node its client last connected to. Every node follows `__sessions`
//! live, so all of them see the same records in the same order. A move:
//! 1. the connecting node writes a claim and reads it back: the record before it says which
//!    node had the session. A node that had only a connection (no lasting session) closes it.
//! 2. For a lasting session, the connecting node delivers what the relay carried so far (a
//!    fence), keeps the session from then on, and writes `ready`.
//! 3. The node that had it delivers what the relay carried up to then, closes its connection,
//!    stops keeping the session, and writes a hand-over mark to `__session_queue`, after all
//!    it queued for it.
//! 4. The connecting node takes the deliveries still owed and numbers them as its own.
//!
//! So every message acknowledged before the move reaches the session, and one routed to it on
//! both nodes while it moved is taken once (by its id). As on one node, what the old
//! connection had in flight unacknowledged is sent again. A node that is down cannot answer:
//! the claim waits [`HANDOVER_WAIT`] and takes what it stored, which is all it acknowledged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use pacer_core::Record;
use pacer_log::{Log, StreamReader};
use pacer_mqtt::{Broker, Delivery, SessionRecord};
use tokio::sync::oneshot;

use crate::broker_store::{
    apply_journal, apply_session, keyed, owed_deliveries, JournalEntry, Owed, StoredSession, HANDED_OVER, QUEUE, READY,
    SESSIONS, WRITER,
};
use crate::relay::Relay;

/// How long a claim waits for the node that had the session to let go of it.
pub const HANDOVER_WAIT: Duration = Duration::from_secs(10);
/// How long a claim may take to come back from the log before the connection is refused.
const CLAIM_WAIT: Duration = Duration::from_secs(30);

/// Deliveries owed, each under the node that numbered it and its number, in stored order.
pub(crate) type OwedList = Vec<((String, u64), Record)>;

/// What every node knows of the sessions on the shared log.
#[derive(Default)]
pub(crate) struct View {
    pub sessions: HashMap<String, StoredSession>,
    pub owed: Owed,
}

/// A claim of this node: told the session as it was before the claim, then (for a lasting
/// session another node had) what that node still owed once it let go.
struct Pending {
    client_id: String,
    before: Option<oneshot::Sender<Option<StoredSession>>>,
    handed: Option<oneshot::Sender<OwedList>>,
    handed_wait: Option<oneshot::Receiver<OwedList>>,
}

pub(crate) struct Owners {
    log: Arc<dyn Log>,
    relay: Arc<Relay>,
    state: Mutex<State>,
    next_claim: AtomicU64,
}

#[derive(Default)]
struct State {
    view: View,
    /// This node's claims by id.
    pending: HashMap<String, Pending>,
    /// Lasting sessions another node claimed from this one, by claim id: let go on `ready`.
    letting_go: HashMap<String, String>,
    /// Deliveries handed over and stored again as this node's, per client id, until the
    /// previous node's copies are marked done.
    adopting: HashMap<String, Vec<(String, u64)>>,
    /// Readers at the end of what the broker restored from, for `follow`.
    readers: Option<(Box<dyn StreamReader>, Box<dyn StreamReader>)>,
}

impl Owners {
    pub fn new(log: Arc<dyn Log>, relay: Arc<Relay>) -> Self {
        Owners { log, relay, state: Mutex::default(), next_claim: AtomicU64::new(1) }
    }

    pub fn node(&self) -> &str {
        self.relay.node()
    }

    /// What the broker restored from; `follow` goes on from there.
    pub fn start_from(&self, view: View, sessions: Box<dyn StreamReader>, queue: Box<dyn StreamReader>) {
        let mut state = self.state.lock().unwrap();
        state.view = view;
        state.readers = Some((sessions, queue));
    }

    /// Step 1 (and the fence of step 2): claims `client_id`'s session for this node. Returns
    /// the lasting session another node had; finish with [`Owners::handover`].
    pub async fn claim(&self, client_id: &str, resume: bool) -> anyhow::Result<Option<StoredSession>> {
        let id =
            format!("{}/{}/{}", self.node(), pacer_core::now_ms(), self.next_claim.fetch_add(1, Ordering::Relaxed));
        let (before_tx, before_rx) = oneshot::channel();
        let (handed_tx, handed_rx) = oneshot::channel();
        let pending = Pending {
            client_id: client_id.to_string(),
            before: Some(before_tx),
            handed: Some(handed_tx),
            handed_wait: Some(handed_rx),
        };
        self.state.lock().unwrap().pending.insert(id.clone(), pending);
        let from = self.claim_pending(client_id, resume, &id, before_rx).await;
        if !matches!(from, Ok(Some(_))) {
            self.state.lock().unwrap().pending.remove(&id);
        }
        from
    }

    async fn claim_pending(
        &self,
        client_id: &str,
        resume: bool,
        id: &str,
        before: oneshot::Receiver<Option<StoredSession>>,
    ) -> anyhow::Result<Option<StoredSession>> {
        let claim = StoredSession {
            record: SessionRecord { expiry_secs: 0, subscriptions: Vec::new(), owner: None },
            node: Some(self.node().to_string()),
            claim: Some(id.to_string()),
            resume,
        };
        self.log.append(SESSIONS, vec![keyed(client_id, serde_json::to_vec(&claim)?)]).await?;
        let before = tokio::time::timeout(CLAIM_WAIT, before)
            .await
            .map_err(|_| anyhow::anyhow!("the session claim did not come back from the log within {CLAIM_WAIT:?}"))?
            .map_err(|_| anyhow::anyhow!("stopped following the log's sessions"))?;
        let from = before.filter(|b| b.lasting() && b.node.as_deref().is_some_and(|n| n != self.node()));
        if from.is_some() {
            // What was relayed until now is routed here without the session, so not twice.
            self.relay.fence().await?;
        }
        Ok(from)
    }

    /// Steps 2 to 4, once the claimed session is kept here: what the other node still owed.
    pub async fn handover(&self, client_id: &str) -> anyhow::Result<OwedList> {
        let (id, handed) = {
            let mut state = self.state.lock().unwrap();
            let claim = state.pending.iter_mut().find(|(_, p)| p.client_id == client_id && p.handed_wait.is_some());
            let (id, pending) = claim.ok_or_else(|| anyhow::anyhow!("no claim of {client_id} to hand over"))?;
            (id.clone(), pending.handed_wait.take().unwrap())
        };
        let ready = keyed(client_id, id.clone().into_bytes()).with_header(READY, Bytes::from(id.clone()));
        let appended = self.log.append(SESSIONS, vec![ready]).await;
        let owed = match appended {
            Err(e) => Err(e.into()),
            Ok(_) => match tokio::time::timeout(HANDOVER_WAIT, handed).await {
                Ok(Ok(owed)) => Ok(owed),
                _ => {
                    tracing::warn!(node = %self.node(), %client_id, "the node that had the session did not let go of it in time (down?); taking what it stored");
                    Ok(self.owed_elsewhere(&self.state.lock().unwrap().view.owed, client_id))
                }
            },
        };
        self.state.lock().unwrap().pending.remove(&id);
        owed
    }

    /// What other nodes stored as still owed to `client_id`, in the order they stored it.
    fn owed_elsewhere(&self, owed: &Owed, client_id: &str) -> OwedList {
        let mut owed: OwedList = owed
            .get(client_id)
            .into_iter()
            .flatten()
            .filter(|((writer, _), _)| *writer != self.node())
            .map(|(id, r)| (id.clone(), r.clone()))
            .collect();
        owed.sort_by_key(|(_, r)| (r.partition, r.offset));
        owed
    }

    /// The deliveries of `owed`, to be stored as this node's; their old copies are marked
    /// done once they are (`take_adopting`).
    pub fn adopting(&self, client_id: &str, owed: &OwedList) -> Vec<Delivery> {
        let ids = owed.iter().map(|(id, _)| id.clone()).collect();
        self.state.lock().unwrap().adopting.insert(client_id.to_string(), ids);
        owed_deliveries(client_id, owed)
    }

    /// Sessions kept here with deliveries other nodes stored: after a restart, or a hand-over
    /// that came after the claim stopped waiting.
    async fn adopt_foreign(&self, broker: &Broker, client_ids: Vec<String>) {
        for client_id in client_ids {
            let owed = self.owed_elsewhere(&self.state.lock().unwrap().view.owed, &client_id);
            if !owed.is_empty() {
                tracing::info!(node = %self.node(), %client_id, owed = owed.len(), "taking on deliveries another node stored");
                broker.adopt(&client_id, self.adopting(&client_id, &owed)).await;
            }
        }
    }

    fn kept_here(&self, view: &View, client_id: &str) -> bool {
        view.sessions.get(client_id).is_some_and(|s| s.lasting() && s.node.as_deref() == Some(self.node()))
    }

    /// Kept here, or claimed here to be resumed: a hand-over mark read before the session's
    /// own record (the two streams are read apart) still counts.
    fn resumes_here(&self, view: &View, client_id: &str) -> bool {
        let claimed = view
            .sessions
            .get(client_id)
            .is_some_and(|s| s.claim.is_some() && s.resume && s.node.as_deref() == Some(self.node()));
        claimed || self.kept_here(view, client_id)
    }

    pub fn take_adopting(&self, client_id: &str) -> Vec<(String, u64)> {
        self.state.lock().unwrap().adopting.remove(client_id).unwrap_or_default()
    }

    /// Follows both streams from where the broker's restore ended, until the log fails.
    pub fn follow(self: Arc<Self>, broker: Broker) -> impl std::future::Future<Output = anyhow::Result<()>> + Send {
        let readers = self.state.lock().unwrap().readers.take();
        async move {
            let (sessions, queue) =
                readers.ok_or_else(|| anyhow::anyhow!("sessions followed before they were loaded"))?;
            let kept: Vec<String> = {
                let state = self.state.lock().unwrap();
                state.view.owed.keys().filter(|c| self.kept_here(&state.view, c)).cloned().collect()
            };
            self.adopt_foreign(&broker, kept).await;
            futures::try_join!(
                self.clone().follow_sessions(sessions, broker.clone()),
                self.follow_queue(queue, broker)
            )?;
            Ok(())
        }
    }

    async fn follow_sessions(self: Arc<Self>, mut reader: Box<dyn StreamReader>, broker: Broker) -> anyhow::Result<()> {
        loop {
            for r in reader.next_batch().await? {
                if let Some(claim) = r.header(READY) {
                    let claim = String::from_utf8_lossy(claim).into_owned();
                    let client_id = self.state.lock().unwrap().letting_go.remove(&claim);
                    if let Some(client_id) = client_id {
                        self.let_go(&broker, client_id, claim).await?;
                    }
                    continue;
                }
                let let_go = {
                    let mut state = self.state.lock().unwrap();
                    let Some((client_id, before, after)) = apply_session(&mut state.view.sessions, &r) else {
                        continue;
                    };
                    let claim = after.as_ref().and_then(|a| a.claim.clone());
                    if let Some(pending) = claim.as_ref().and_then(|id| state.pending.get_mut(id)) {
                        if let Some(tell) = pending.before.take() {
                            let _ = tell.send(before.clone());
                        }
                    }
                    let was_mine = before.as_ref().is_some_and(|b| b.node.as_deref() == Some(self.node()));
                    let taken = after.as_ref().is_some_and(|a| a.node.as_deref() != Some(self.node()));
                    if after.as_ref().is_some_and(|a| a.node.as_deref() == Some(self.node())) {
                        state.letting_go.retain(|_, c| *c != client_id); // it came back first
                    }
                    match (was_mine && taken, claim) {
                        (false, _) => None,
                        // Let go once the claimer keeps the session (step 3).
                        (true, Some(claim)) if before.is_some_and(|b| b.lasting()) => {
                            state.letting_go.retain(|_, c| *c != client_id);
                            state.letting_go.insert(claim, client_id);
                            None
                        }
                        (true, _) => Some(client_id),
                    }
                };
                if let Some(client_id) = let_go {
                    broker.session_moved(&client_id).await;
                }
            }
        }
    }

    /// Step 3: everything relayed until now reaches the session here before it goes, and the
    /// hand-over mark comes after all that was queued for it.
    async fn let_go(&self, broker: &Broker, client_id: String, claim: String) -> anyhow::Result<()> {
        tracing::info!(node = %self.node(), %client_id, %claim, "handing the session over");
        self.relay.fence().await?;
        broker.session_moved(&client_id).await;
        let mark = keyed(&client_id, Vec::new())
            .with_header(WRITER, Bytes::from(self.node().to_string()))
            .with_header(HANDED_OVER, Bytes::from(claim));
        self.log.append(QUEUE, vec![mark]).await?;
        Ok(())
    }

    async fn follow_queue(self: Arc<Self>, mut reader: Box<dyn StreamReader>, broker: Broker) -> anyhow::Result<()> {
        loop {
            let mut late = Vec::new();
            for r in reader.next_batch().await? {
                let mut state = self.state.lock().unwrap();
                let JournalEntry::HandedOver { client_id, claim } = apply_journal(&mut state.view.owed, r) else {
                    continue;
                };
                tracing::info!(node = %self.node(), %client_id, %claim, "session handed over");
                match state.pending.get_mut(&claim).map(|p| p.handed.take()) {
                    Some(Some(tell)) => {
                        // The claim may have stopped waiting just now: then this is late.
                        let owed = self.owed_elsewhere(&state.view.owed, &client_id);
                        if tell.send(owed).is_err() && self.resumes_here(&state.view, &client_id) {
                            late.push(client_id);
                        }
                    }
                    None if self.resumes_here(&state.view, &client_id) => late.push(client_id),
                    _ => {}
                }
            }
            self.adopt_foreign(&broker, late).await;
        }
    }
}
