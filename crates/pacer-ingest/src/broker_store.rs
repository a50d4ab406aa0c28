//! The broker's retained messages and persistent sessions, kept in internal log streams so
//! they come back after a restart, like the rest of Pacer's state.
//!
//! `__retained` is keyed by topic and `__sessions` by client id; the latest record of a key
//! wins and an empty value deletes it (a tombstone, as in a compacted Kafka topic).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pacer_core::{header, NewRecord, Publication, Record};
use pacer_log::{Log, StartAt};
use pacer_mqtt::{BrokerStore, SessionRecord, StoredState};

const RETAINED: &str = "__retained";
const SESSIONS: &str = "__sessions";
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
        Ok(StoredState { retained, sessions })
    }
}
