//! The broker's retained messages and persistent sessions, kept in internal log streams so
//! they come back after a restart, like the rest of Pacer's state.
//!
//! `__retained` is keyed by topic and `__sessions` by client id; the latest record of a key
//! wins and an empty value deletes it (a tombstone, as in a compacted Kafka topic).
//! `__session_queue` is a journal per client id: a delivery owed to a lasting session (its
//! payload, topic and MQTT details in headers), then `done` when the subscriber acknowledged
//! it, or `clear` when the session ended; what is not done is owed again after a restart.
//!
//! Nodes sharing one log (the Kafka backend) also follow both streams live to keep one owner
//! per session: see [`crate::owners`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pacer_core::{header, NewRecord, Publication, Record};
use pacer_log::{Log, StartAt, StreamReader};
use pacer_mqtt::{Broker, BrokerStore, Delivery, QueuedDelivery, SessionRecord, StoredState};

use crate::owners::{Owners, View};
use crate::relay::Relay;

const RETAINED: &str = "__retained";
pub(crate) const SESSIONS: &str = "__sessions";
pub(crate) const QUEUE: &str = "__session_queue";
/// Journal headers of `__session_queue`.
const SEQ: &str = "queue.seq";
const DONE: &str = "queue.done";
const CLEAR: &str = "queue.clear";
/// The node that wrote a journal entry (nodes sharing a log number their deliveries apart).
pub(crate) const WRITER: &str = "queue.node";
/// A node let go of a session another node claimed: value the claim's id.
pub(crate) const HANDED_OVER: &str = "queue.handed_over";
/// In `__sessions`: the node that claimed a session keeps it now, the other may let go.
/// Value: the claim's id.
pub(crate) const READY: &str = "session.ready";
const DELIVERY_QOS: &str = "queue.qos";
const DELIVERY_RETAIN: &str = "queue.retain";
const SUBSCRIPTION_IDS: &str = "queue.subscription_ids";
const PROPERTIES: &str = "queue.properties";
/// Header with a retained message's MQTT 5 expiry, ms since the epoch.
const EXPIRES_AT: &str = "mqtt.expires_at";

pub struct LogBrokerStore {
    log: Arc<dyn Log>,
    /// Set when several nodes share the log.
    owners: Option<Arc<Owners>>,
}

/// A session as `__sessions` keeps it. Nodes sharing a log add which node has it; a node
/// taking a session over writes a claim (a `resume` claim carries the session on).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct StoredSession {
    #[serde(flatten)]
    pub record: SessionRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resume: bool,
}

impl StoredSession {
    pub fn lasting(&self) -> bool {
        self.record.expiry_secs > 0
    }
}

impl LogBrokerStore {
    /// The store of a node that has the log to itself.
    pub fn new(log: Arc<dyn Log>) -> Self {
        LogBrokerStore { log, owners: None }
    }

    /// The store of one of several nodes sharing `log`, which `relay` their clients'
    /// messages: a session is kept by the node its client last connected to. Run
    /// [`LogBrokerStore::follow`] once the broker started.
    pub fn shared(log: Arc<dyn Log>, relay: Arc<Relay>) -> Self {
        let owners = Some(Arc::new(Owners::new(log.clone(), relay)));
        LogBrokerStore { log, owners }
    }

    /// Nodes sharing a log: the task that follows the other nodes' claims, handing this
    /// node's sessions over to them (it runs until the log fails). None for one node.
    pub fn follow(
        &self,
        broker: Broker,
    ) -> Option<impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static> {
        let owners = self.owners.clone()?;
        Some(owners.follow(broker))
    }

    fn writer(&self) -> Option<&str> {
        self.owners.as_deref().map(Owners::node)
    }

    /// The latest record of every key still present (tombstones remove keys).
    async fn latest(&self, stream: &str) -> anyhow::Result<Vec<Record>> {
        let mut reader = self.log.reader(stream, StartAt::Beginning)?;
        let mut latest: HashMap<Bytes, Record> = HashMap::new();
        read_to_end(reader.as_mut(), |r| {
            let Some(key) = r.key.clone() else { return };
            if r.value.is_empty() {
                latest.remove(&key);
            } else {
                latest.insert(key, r);
            }
        })
        .await?;
        let mut records: Vec<Record> = latest.into_values().collect();
        records.sort_by_key(|r| (r.partition, r.offset));
        Ok(records)
    }

    /// An empty journal record for `client_id`, naming this node on a shared log.
    fn journal_mark(&self, client_id: &str) -> NewRecord {
        with_writer(keyed(client_id, Bytes::new()), self.writer())
    }
}

/// Hands every record a reader has now to `apply`, in order.
pub(crate) async fn read_to_end(reader: &mut dyn StreamReader, mut apply: impl FnMut(Record)) -> anyhow::Result<()> {
    loop {
        let batch = reader.try_batch().await?;
        if batch.is_empty() {
            return Ok(());
        }
        batch.into_iter().for_each(&mut apply);
    }
}

/// A `__sessions` record applied to the latest session per client id. Returns the client
/// id with the session before and after, or None for a record that changes no session.
pub(crate) fn apply_session(
    sessions: &mut HashMap<String, StoredSession>,
    r: &Record,
) -> Option<(String, Option<StoredSession>, Option<StoredSession>)> {
    if r.header(READY).is_some() {
        return None;
    }
    let client_id = String::from_utf8_lossy(r.key.as_ref()?).into_owned();
    let before = sessions.get(&client_id).cloned();
    if r.value.is_empty() {
        sessions.remove(&client_id);
        return Some((client_id, before, None));
    }
    let mut session = match serde_json::from_slice::<StoredSession>(&r.value) {
        Ok(session) => session,
        Err(e) => {
            tracing::error!(%client_id, error = %e, "stored session unreadable; skipped");
            return Some((client_id, before.clone(), before));
        }
    };
    // A claim that resumes carries on the session as it was.
    if let Some(before) = before.as_ref().filter(|b| session.resume && b.lasting()) {
        session.record = before.record.clone();
    }
    sessions.insert(client_id.clone(), session.clone());
    Some((client_id, before, Some(session)))
}

/// What a `__session_queue` record did.
pub(crate) enum JournalEntry {
    Changed,
    /// A node let go of `client_id`'s session for the claim with this id.
    HandedOver {
        client_id: String,
        claim: String,
    },
}

/// Deliveries owed per client id, by the node that numbered them and their number.
pub(crate) type Owed = HashMap<String, BTreeMap<(String, u64), Record>>;

/// A `__session_queue` record applied to what is owed.
pub(crate) fn apply_journal(owed: &mut Owed, r: Record) -> JournalEntry {
    let text = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
    let Some(client_id) = r.key.as_ref().map(text) else { return JournalEntry::Changed };
    let writer = r.header(WRITER).map(text).unwrap_or_default();
    let number = |name| r.header(name).and_then(|v| text(v).parse::<u64>().ok());
    if r.header(CLEAR).is_some() {
        owed.remove(&client_id);
    } else if let Some(seq) = number(DONE) {
        owed.entry(client_id).or_default().remove(&(writer, seq));
    } else if let Some(seq) = number(SEQ) {
        owed.entry(client_id).or_default().insert((writer, seq), r);
    } else if let Some(claim) = r.header(HANDED_OVER).map(text) {
        return JournalEntry::HandedOver { client_id, claim };
    }
    JournalEntry::Changed
}

#[async_trait]
impl BrokerStore for LogBrokerStore {
    async fn save_retained(&self, p: &Publication) -> anyhow::Result<()> {
        let mut record = NewRecord::new(p.received_at, Some(Bytes::from(p.topic.clone())), p.payload.clone())
            .with_header(header::QOS, Bytes::from(p.qos.to_string()))
            .with_header(header::CLIENT_ID, Bytes::from(p.client_id.clone()));
        if let Some(at) = p.properties.expires_at {
            record = record.with_header(EXPIRES_AT, Bytes::from(at.to_string()));
        }
        self.log.append(RETAINED, vec![record]).await?;
        Ok(())
    }

    async fn save_session(&self, client_id: &str, session: Option<&SessionRecord>) -> anyhow::Result<()> {
        let value = match session {
            Some(record) => {
                let node = self.writer().map(str::to_string);
                serde_json::to_vec(&StoredSession { record: record.clone(), node, claim: None, resume: false })?
            }
            None => Vec::new(),
        };
        self.log.append(SESSIONS, vec![keyed(client_id, value)]).await?;
        if session.is_none() {
            self.clear_queued(client_id).await?;
        }
        Ok(())
    }

    async fn save_queued(&self, queued: &[QueuedDelivery]) -> anyhow::Result<()> {
        let records = queued
            .iter()
            .map(|q| Ok(with_writer(queued_record(q)?, self.writer())))
            .collect::<anyhow::Result<Vec<_>>>()?;
        self.log.append(QUEUE, records).await?;
        Ok(())
    }

    async fn delivered(&self, client_id: &str, seq: u64) -> anyhow::Result<()> {
        let mark = self.journal_mark(client_id).with_header(DONE, Bytes::from(seq.to_string()));
        self.log.append(QUEUE, vec![mark]).await?;
        Ok(())
    }

    async fn clear_queued(&self, client_id: &str) -> anyhow::Result<()> {
        self.log.append(QUEUE, vec![self.journal_mark(client_id).with_header(CLEAR, Bytes::new())]).await?;
        Ok(())
    }

    async fn load(&self) -> anyhow::Result<StoredState> {
        let text = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
        let retained = self
            .latest(RETAINED)
            .await?
            .into_iter()
            .map(|r| Publication {
                topic: text(r.key.as_ref().unwrap()),
                qos: r.header(header::QOS).and_then(|q| text(q).parse().ok()).unwrap_or(0),
                client_id: r.header(header::CLIENT_ID).map(text).unwrap_or_default(),
                payload: r.value.clone(),
                retain: true,
                username: None,
                received_at: r.timestamp,
                id: None,
                properties: pacer_core::MessageProperties {
                    expires_at: r.header(EXPIRES_AT).and_then(|t| text(t).parse().ok()),
                    ..Default::default()
                },
            })
            .collect();
        let mut view = View::default();
        let mut sessions_reader = self.log.reader(SESSIONS, StartAt::Beginning)?;
        read_to_end(sessions_reader.as_mut(), |r| {
            apply_session(&mut view.sessions, &r);
        })
        .await?;
        let mut queue_reader = self.log.reader(QUEUE, StartAt::Beginning)?;
        read_to_end(queue_reader.as_mut(), |r| {
            apply_journal(&mut view.owed, r);
        })
        .await?;
        // Nodes sharing the log keep the sessions whose clients last connected to them.
        let mine = |s: &StoredSession| match &self.owners {
            Some(owners) => s.node.as_deref().is_none_or(|node| node == owners.node()),
            None => true,
        };
        let sessions: Vec<(String, SessionRecord)> = view
            .sessions
            .iter()
            .filter(|(_, s)| s.lasting() && mine(s))
            .map(|(client_id, s)| (client_id.clone(), s.record.clone()))
            .collect();
        let mut queued: Vec<QueuedDelivery> = Vec::new();
        for (client_id, _) in &sessions {
            let owed = view.owed.get(client_id).into_iter().flatten();
            // Another node's, on a shared log: taken on as this node's once it follows the log.
            let own = owed.filter(|((writer, _), _)| self.writer().is_none_or(|node| node == writer));
            for ((_, seq), r) in own {
                match queued_delivery(client_id, *seq, r) {
                    Some(q) => queued.push(q),
                    None => tracing::error!(%client_id, seq, "stored delivery unreadable; skipped"),
                }
            }
        }
        queued.sort_by_key(|q| q.seq);
        if let Some(owners) = &self.owners {
            owners.start_from(view, sessions_reader, queue_reader);
        }
        Ok(StoredState { retained, sessions, queued })
    }

    async fn claim(&self, client_id: &str, resume: bool) -> anyhow::Result<Option<SessionRecord>> {
        match &self.owners {
            Some(owners) => Ok(owners.claim(client_id, resume).await?.map(|from| from.record)),
            None => Ok(None),
        }
    }

    async fn handover(&self, client_id: &str, resume: bool) -> anyhow::Result<Vec<Delivery>> {
        let Some(owners) = &self.owners else { return Ok(Vec::new()) };
        let owed = owners.handover(client_id).await?;
        if !resume {
            self.clear_queued(client_id).await?;
            return Ok(Vec::new());
        }
        Ok(owners.adopting(client_id, &owed))
    }

    async fn adopted(&self, client_id: &str) -> anyhow::Result<()> {
        let Some(owners) = &self.owners else { return Ok(()) };
        let done: Vec<NewRecord> = owners
            .take_adopting(client_id)
            .into_iter()
            .map(|(writer, seq)| {
                with_writer(keyed(client_id, Bytes::new()), Some(&writer))
                    .with_header(DONE, Bytes::from(seq.to_string()))
            })
            .collect();
        if !done.is_empty() {
            self.log.append(QUEUE, done).await?;
        }
        Ok(())
    }
}

/// A record of `__sessions` or `__session_queue`: keyed by client id, stamped now.
pub(crate) fn keyed(client_id: &str, value: impl Into<Bytes>) -> NewRecord {
    NewRecord::new(pacer_core::now_ms(), Some(Bytes::from(client_id.to_string())), value)
}

/// What MQTT 5 lets a message carry, as stored with a queued delivery.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredProperties {
    payload_is_utf8: bool,
    content_type: Option<String>,
    response_topic: Option<String>,
    correlation_data: Option<Vec<u8>>,
    user_properties: Vec<(String, String)>,
    expires_at: Option<i64>,
    username: Option<String>,
    /// `Publication::id`, as a string: JSON numbers do not hold 128 bits everywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
}

fn with_writer(record: NewRecord, writer: Option<&str>) -> NewRecord {
    match writer {
        Some(node) => record.with_header(WRITER, Bytes::from(node.to_string())),
        None => record,
    }
}

fn queued_record(q: &QueuedDelivery) -> anyhow::Result<NewRecord> {
    let d = &q.delivery;
    let ids: Vec<String> = d.subscription_ids.iter().map(u32::to_string).collect();
    Ok(publication_record(&d.publication, Bytes::from(q.client_id.clone()))?
        .with_header(SEQ, Bytes::from(q.seq.to_string()))
        .with_header(DELIVERY_QOS, Bytes::from(d.qos.to_string()))
        .with_header(DELIVERY_RETAIN, Bytes::from(d.retain.to_string()))
        .with_header(SUBSCRIPTION_IDS, Bytes::from(ids.join(","))))
}

/// Deliveries from journal entries, in order; unreadable ones are logged and left out.
pub(crate) fn owed_deliveries(client_id: &str, owed: &[((String, u64), Record)]) -> Vec<Delivery> {
    let mut deliveries = Vec::new();
    for ((_, seq), r) in owed {
        match queued_delivery(client_id, *seq, r) {
            Some(q) => deliveries.push(q.delivery),
            None => tracing::error!(%client_id, seq, "stored delivery unreadable; skipped"),
        }
    }
    deliveries
}

fn queued_delivery(client_id: &str, seq: u64, r: &Record) -> Option<QueuedDelivery> {
    let text = |name| r.header(name).map(|v| String::from_utf8_lossy(v).into_owned());
    let subscription_ids = text(SUBSCRIPTION_IDS)?.split(',').filter_map(|id| id.parse().ok()).collect();
    let delivery = Delivery {
        publication: Arc::new(record_publication(r)?),
        qos: text(DELIVERY_QOS)?.parse().ok()?,
        retain: text(DELIVERY_RETAIN)? == "true",
        subscription_ids,
        stored: Some(seq),
    };
    Some(QueuedDelivery { client_id: client_id.to_string(), seq, delivery })
}

/// A message as a record under `key`: the payload as value, topic, QoS, retain flag, client
/// id and the MQTT 5 properties in headers, so `record_publication` gives it back whole.
pub(crate) fn publication_record(p: &Publication, key: Bytes) -> anyhow::Result<NewRecord> {
    let properties = StoredProperties {
        payload_is_utf8: p.properties.payload_is_utf8,
        content_type: p.properties.content_type.clone(),
        response_topic: p.properties.response_topic.clone(),
        correlation_data: p.properties.correlation_data.as_ref().map(|c| c.to_vec()),
        user_properties: p.properties.user_properties.clone(),
        expires_at: p.properties.expires_at,
        username: p.username.clone(),
        id: p.id.map(|id| id.to_string()),
    };
    Ok(NewRecord::new(p.received_at, Some(key), p.payload.clone())
        .with_header(header::TOPIC, Bytes::from(p.topic.clone()))
        .with_header(header::QOS, Bytes::from(p.qos.to_string()))
        .with_header(header::RETAIN, Bytes::from(p.retain.to_string()))
        .with_header(header::CLIENT_ID, Bytes::from(p.client_id.clone()))
        .with_header(PROPERTIES, Bytes::from(serde_json::to_vec(&properties)?)))
}

pub(crate) fn record_publication(r: &Record) -> Option<Publication> {
    let text = |name| r.header(name).map(|v| String::from_utf8_lossy(v).into_owned());
    let properties: StoredProperties = serde_json::from_slice(r.header(PROPERTIES)?).ok()?;
    Some(Publication {
        topic: text(header::TOPIC)?,
        payload: r.value.clone(),
        qos: text(header::QOS)?.parse().ok()?,
        retain: text(header::RETAIN)? == "true",
        client_id: text(header::CLIENT_ID).unwrap_or_default(),
        username: properties.username,
        received_at: r.timestamp,
        id: properties.id.and_then(|id| id.parse().ok()),
        properties: pacer_core::MessageProperties {
            payload_is_utf8: properties.payload_is_utf8,
            content_type: properties.content_type,
            response_topic: properties.response_topic,
            correlation_data: properties.correlation_data.map(Bytes::from),
            user_properties: properties.user_properties,
            expires_at: properties.expires_at,
        },
    })
}
