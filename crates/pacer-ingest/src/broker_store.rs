//! The broker's retained messages and persistent sessions, kept in internal log streams so
//! they come back after a restart, like the rest of Pacer's state.
//!
//! `__retained` is keyed by topic and `__sessions` by client id; the latest record of a key
//! wins and an empty value deletes it (a tombstone, as in a compacted Kafka topic).
//! `__session_queue` is a journal per client id: a delivery owed to a lasting session (its
//! payload, topic and MQTT details in headers), then `done` when the subscriber acknowledged
//! it, or `clear` when the session ended; what is not done is owed again after a restart.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pacer_core::{header, NewRecord, Publication, Record};
use pacer_log::{Log, StartAt};
use pacer_mqtt::{BrokerStore, Delivery, QueuedDelivery, SessionRecord, StoredState};

const RETAINED: &str = "__retained";
const SESSIONS: &str = "__sessions";
const QUEUE: &str = "__session_queue";
/// Journal headers of `__session_queue`.
const SEQ: &str = "queue.seq";
const DONE: &str = "queue.done";
const CLEAR: &str = "queue.clear";
const DELIVERY_QOS: &str = "queue.qos";
const DELIVERY_RETAIN: &str = "queue.retain";
const SUBSCRIPTION_IDS: &str = "queue.subscription_ids";
const PROPERTIES: &str = "queue.properties";
/// Header with a retained message's MQTT 5 expiry, ms since the epoch.
const EXPIRES_AT: &str = "mqtt.expires_at";

pub struct LogBrokerStore {
    log: Arc<dyn Log>,
}

impl LogBrokerStore {
    pub fn new(log: Arc<dyn Log>) -> Self {
        LogBrokerStore { log }
    }

    /// The latest record of every key still present (tombstones remove keys).
    async fn latest(&self, stream: &str) -> anyhow::Result<Vec<Record>> {
        let mut reader = self.log.reader(stream, StartAt::Beginning)?;
        let mut latest: HashMap<Bytes, Record> = HashMap::new();
        loop {
            let batch = reader.try_batch().await?;
            if batch.is_empty() {
                break;
            }
            for r in batch {
                let Some(key) = r.key.clone() else { continue };
                if r.value.is_empty() {
                    latest.remove(&key);
                } else {
                    latest.insert(key, r);
                }
            }
        }
        let mut records: Vec<Record> = latest.into_values().collect();
        records.sort_by_key(|r| (r.partition, r.offset));
        Ok(records)
    }
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
            Some(record) => serde_json::to_vec(record)?,
            None => Vec::new(),
        };
        let record = NewRecord::new(pacer_core::now_ms(), Some(Bytes::from(client_id.to_string())), value);
        self.log.append(SESSIONS, vec![record]).await?;
        if session.is_none() {
            self.clear_queued(client_id).await?;
        }
        Ok(())
    }

    async fn save_queued(&self, queued: &[QueuedDelivery]) -> anyhow::Result<()> {
        let records = queued.iter().map(queued_record).collect::<anyhow::Result<Vec<_>>>()?;
        self.log.append(QUEUE, records).await?;
        Ok(())
    }

    async fn delivered(&self, client_id: &str, seq: u64) -> anyhow::Result<()> {
        let mark = journal_mark(client_id).with_header(DONE, Bytes::from(seq.to_string()));
        self.log.append(QUEUE, vec![mark]).await?;
        Ok(())
    }

    async fn clear_queued(&self, client_id: &str) -> anyhow::Result<()> {
        self.log.append(QUEUE, vec![journal_mark(client_id).with_header(CLEAR, Bytes::new())]).await?;
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
                properties: pacer_core::MessageProperties {
                    expires_at: r.header(EXPIRES_AT).and_then(|t| text(t).parse().ok()),
                    ..Default::default()
                },
            })
            .collect();
        let mut sessions = Vec::new();
        for r in self.latest(SESSIONS).await? {
            let client_id = text(r.key.as_ref().unwrap());
            match serde_json::from_slice::<SessionRecord>(&r.value) {
                Ok(record) => sessions.push((client_id, record)),
                Err(e) => tracing::error!(%client_id, error = %e, "stored session unreadable; skipped"),
            }
        }
        let queued = self.owed().await?;
        Ok(StoredState { retained, sessions, queued })
    }
}

impl LogBrokerStore {
    /// Replays the queue journal: deliveries neither done nor cleared, oldest first.
    async fn owed(&self) -> anyhow::Result<Vec<QueuedDelivery>> {
        let text = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
        let mut owed: HashMap<String, std::collections::BTreeMap<u64, Record>> = HashMap::new();
        let mut reader = self.log.reader(QUEUE, StartAt::Beginning)?;
        loop {
            let batch = reader.try_batch().await?;
            if batch.is_empty() {
                break;
            }
            for r in batch {
                let Some(client_id) = r.key.as_ref().map(text) else { continue };
                let number = |name| r.header(name).and_then(|v| text(v).parse::<u64>().ok());
                if r.header(CLEAR).is_some() {
                    owed.remove(&client_id);
                } else if let Some(seq) = number(DONE) {
                    owed.entry(client_id).or_default().remove(&seq);
                } else if let Some(seq) = number(SEQ) {
                    owed.entry(client_id).or_default().insert(seq, r);
                }
            }
        }
        let mut queued: Vec<QueuedDelivery> = Vec::new();
        for (client_id, records) in owed {
            for (seq, r) in records {
                match queued_delivery(&client_id, seq, &r) {
                    Some(q) => queued.push(q),
                    None => tracing::error!(%client_id, seq, "stored delivery unreadable; skipped"),
                }
            }
        }
        queued.sort_by_key(|q| q.seq);
        Ok(queued)
    }
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
}

fn journal_mark(client_id: &str) -> NewRecord {
    NewRecord::new(pacer_core::now_ms(), Some(Bytes::from(client_id.to_string())), Bytes::new())
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
