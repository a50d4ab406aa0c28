//! Ingest rules: the stage between a device's message and the log.
//!
//! A rule matches an MQTT topic filter and says which stream the message goes to, its key
//! (a template over client id, username, topic levels or a payload field), its event time
//! (publish time, or a payload field) and how to decode it. Rules are tried in order and the
//! first match wins, so a catch-all `#` rule belongs last. A payload a rule cannot decode goes
//! to the `_dead_letters` stream with the reason; nothing is dropped silently.

mod broker_store;
mod device_status;
mod owners;
mod owntracks;
mod publish;
mod relay;
mod rule;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pacer_core::{header, NewRecord, Publication};
use pacer_log::Log;
use serde_json::json;

pub use broker_store::LogBrokerStore;
pub use device_status::{DeviceStatus, DeviceStatusConfig};
pub use publish::{PublishConfig, StreamPublisher};
pub use relay::Relay;
pub use rule::{Decoder, IngestRule, KeyTemplate, RuleConfig, TemplateOver, TimestampUnit};

/// Stream that receives what could not be decoded, with the reason.
pub const DEAD_LETTERS: &str = "_dead_letters";

/// The rules Pacer runs with when the config names none.
pub fn default_rules() -> Vec<RuleConfig> {
    vec![
        RuleConfig {
            mqtt: Some("owntracks/+/+".into()),
            stream: Some("locations".into()),
            format: Decoder::Owntracks,
            key: Some("{topic[1]}/{topic[2]}".into()),
            ..Default::default()
        },
        RuleConfig {
            mqtt: Some("owntracks/+/+/+".into()),
            stream: Some("owntracks".into()),
            format: Decoder::Owntracks,
            key: Some("{topic[1]}/{topic[2]}".into()),
            ..Default::default()
        },
        RuleConfig {
            mqtt: Some("osmand/+".into()),
            stream: Some("locations".into()),
            format: Decoder::Owntracks,
            key: Some("{topic}".into()),
            ..Default::default()
        },
        RuleConfig {
            mqtt: Some("race/+".into()),
            stream: Some("race".into()),
            format: Decoder::Json,
            key: Some("{topic[1]}".into()),
            timestamp_field: Some("timeepoc".into()),
            timestamp_unit: TimestampUnit::S,
            ..Default::default()
        },
        RuleConfig {
            mqtt: Some("#".into()),
            stream: Some("mqtt".into()),
            format: Decoder::Raw,
            key: Some("{topic}".into()),
            ..Default::default()
        },
    ]
}

pub struct Ingest {
    rules: Vec<IngestRule>,
    log: Arc<dyn Log>,
    devices: Option<Arc<DeviceStatus>>,
}

impl Ingest {
    pub fn new(configs: &[RuleConfig], log: Arc<dyn Log>) -> anyhow::Result<Self> {
        let mut rules = Vec::new();
        for (i, c) in configs.iter().enumerate() {
            rules.extend(IngestRule::from_config(c).map_err(|e| anyhow::anyhow!("[[ingest]] rule {}: {e}", i + 1))?);
        }
        Ok(Ingest { rules, log, devices: None })
    }

    /// Keeps `devices` informed of every record their streams get.
    pub fn with_device_status(mut self, devices: Arc<DeviceStatus>) -> Self {
        self.devices = Some(devices);
        self
    }

    /// Stores a publication by the first rule that matches its topic. Publications no rule
    /// matches are not stored (they are still routed to MQTT subscribers).
    pub async fn ingest(&self, p: &Publication) -> anyhow::Result<()> {
        self.ingest_all(std::slice::from_ref(p)).await
    }

    /// Stores publications in order, with one append per target stream: a burst from one
    /// connection costs one durable write per stream, not one per message.
    pub async fn ingest_all(&self, publications: &[Publication]) -> anyhow::Result<()> {
        let mut by_stream: Vec<(&str, Vec<NewRecord>)> = Vec::new();
        let mut seen = Vec::new();
        for p in publications {
            let Some((stream, record, offline)) = self.record_for(p) else { continue };
            if let (Some(devices), Some(key)) = (&self.devices, &record.key) {
                if devices.watches(stream) {
                    seen.push((key.clone(), &p.client_id, p.received_at, offline));
                }
            }
            match by_stream.iter_mut().find(|(s, _)| *s == stream) {
                Some((_, records)) => records.push(record),
                None => by_stream.push((stream, vec![record])),
            }
        }
        let appends = by_stream.into_iter().map(|(stream, records)| self.log.append(stream, records));
        futures::future::try_join_all(appends).await?;
        if let Some(devices) = &self.devices {
            for (key, client, at, offline) in seen {
                devices.seen(&String::from_utf8_lossy(&key), client, at, offline);
            }
        }
        Ok(())
    }

    /// The stream and record a publication becomes: by its rule, or a dead letter; and
    /// whether it says its device went offline.
    fn record_for<'a>(&'a self, p: &Publication) -> Option<(&'a str, NewRecord, bool)> {
        let rule = self.rules.iter().find(|r| r.matches(&p.topic))?;
        let mut headers = vec![
            (header::TOPIC.to_string(), Bytes::from(p.topic.clone())),
            (header::CLIENT_ID.to_string(), Bytes::from(p.client_id.clone())),
            (header::QOS.to_string(), Bytes::from(p.qos.to_string())),
            (header::RETAIN.to_string(), Bytes::from(p.retain.to_string())),
        ];
        if let Some(user) = &p.username {
            headers.push((header::USERNAME.to_string(), Bytes::from(user.clone())));
        }
        Some(match rule.decode(p) {
            Ok(decoded) => (
                rule.stream(),
                NewRecord {
                    timestamp: decoded.timestamp,
                    key: decoded.key,
                    value: decoded.value,
                    headers,
                    partition: None,
                },
                decoded.offline,
            ),
            Err(reason) => {
                tracing::debug!(topic = %p.topic, client_id = %p.client_id, %reason, "payload sent to dead letters");
                let value = json!({
                    "reason": reason,
                    "stream": rule.stream(),
                    "topic": p.topic,
                    "client_id": p.client_id,
                    "payload_base64": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &p.payload),
                });
                let record = NewRecord {
                    timestamp: p.received_at,
                    key: Some(Bytes::from(p.topic.clone())),
                    value: Bytes::from(value.to_string()),
                    headers,
                    partition: None,
                };
                (DEAD_LETTERS, record, false)
            }
        })
    }
}

#[async_trait]
impl pacer_mqtt::PublishSink for Ingest {
    async fn accept(&self, publications: &[Publication]) -> anyhow::Result<()> {
        self.ingest_all(publications).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pacer_log::{EmbeddedLog, EmbeddedLogConfig, StartAt};

    fn publication(topic: &str, payload: &str) -> Publication {
        Publication {
            topic: topic.into(),
            payload: Bytes::from(payload.to_string()),
            qos: 1,
            retain: false,
            client_id: "sim".into(),
            username: None,
            received_at: 5,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn default_rules_route_decode_and_dead_letter() {
        let dir = tempfile::tempdir().unwrap();
        let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(EmbeddedLogConfig::new(dir.path())).unwrap());
        let ingest = Ingest::new(&default_rules(), log.clone()).unwrap();

        ingest
            .ingest(&publication("race/alice", r#"{"who":"alice","timeepoc":1558212482,"lat":-33.8}"#))
            .await
            .unwrap();
        ingest.ingest(&publication("race/bob", "not json")).await.unwrap();
        ingest.ingest(&publication("sensors/1", "21.5")).await.unwrap();

        let race = log.reader("race", StartAt::Beginning).unwrap().try_batch().await.unwrap();
        assert_eq!(race.len(), 1);
        assert_eq!(race[0].timestamp, 1_558_212_482_000);
        assert_eq!(race[0].key.as_deref(), Some(&b"alice"[..]));
        assert_eq!(race[0].header(header::TOPIC).map(|v| &v[..]), Some(&b"race/alice"[..]));

        let dead = log.reader(DEAD_LETTERS, StartAt::Beginning).unwrap().try_batch().await.unwrap();
        assert_eq!(dead.len(), 1);
        let v: serde_json::Value = serde_json::from_slice(&dead[0].value).unwrap();
        assert_eq!(v["topic"], "race/bob");
        assert!(v["reason"].as_str().unwrap().contains("not JSON"), "{v}");

        let raw = log.reader("mqtt", StartAt::Beginning).unwrap().try_batch().await.unwrap();
        assert_eq!(raw[0].value, Bytes::from("21.5"));
        assert_eq!(raw[0].timestamp, 5);
    }
}
