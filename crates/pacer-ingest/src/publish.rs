//! Publishing streams back to MQTT: the other direction of ingest. A `[[publish]]` rule sends
//! every record appended to a stream (a query's alerts, a periodic summary) to MQTT
//! subscribers on a topic made from the record (EMQX's republish, an MQTT sink connector).
//!
//! The record is already durable in its stream, so the message is delivered to subscribers
//! without being stored again. Where it got to is committed as the consumer group
//! `pacer-publish-<stream>`: after a restart publishing resumes after the last record it
//! delivered (at least once: a crash between delivering and committing repeats a batch).

use std::sync::Arc;

use bytes::Bytes;
use pacer_core::{MessageProperties, Publication, Record};
use pacer_log::{Log, StartAt};
use pacer_mqtt::Broker;
use serde::Deserialize;

use crate::rule::{KeyTemplate, TemplateOver};

/// The client id subscribers see on what Pacer publishes.
const CLIENT_ID: &str = "pacer";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    /// The stream whose records are published.
    pub stream: String,
    /// Topic template: `{key}`, `{stream}`, `{$.field}` of the record's JSON value.
    pub topic: String,
    /// QoS of the messages (0, 1 or 2); subscribers get at most what they asked for.
    #[serde(default)]
    pub qos: u8,
    /// Publish as retained: a new subscriber gets the last record of each topic. A record
    /// without a value (a table's deleted row) clears the topic's retained message.
    #[serde(default)]
    pub retain: bool,
}

/// One `[[publish]]` rule, checked.
#[derive(Debug, Clone)]
pub struct StreamPublisher {
    stream: String,
    topic: KeyTemplate,
    qos: u8,
    retain: bool,
}

impl StreamPublisher {
    pub fn from_config(c: &PublishConfig) -> Result<Self, String> {
        pacer_log::validate_stream_name(&c.stream).map_err(|e| format!("stream: {e}"))?;
        if c.qos > 2 {
            return Err(format!("qos: {} is not an MQTT QoS (0, 1 or 2)", c.qos));
        }
        if c.topic.is_empty() || c.topic.contains(['+', '#']) {
            return Err(format!("topic: {:?} must be a topic name (no wildcards)", c.topic));
        }
        let topic = KeyTemplate::parse_over(&c.topic, TemplateOver::Record).map_err(|e| format!("topic: {e}"))?;
        Ok(StreamPublisher { stream: c.stream.clone(), topic, qos: c.qos, retain: c.retain })
    }

    fn group(&self) -> String {
        format!("pacer-publish-{}", self.stream)
    }

    /// Places the reader (after what was published before a restart, else at the stream's
    /// end) and gives the task that publishes from there until the log fails. Await this
    /// before records may be appended that must be published.
    pub async fn start(
        self,
        log: Arc<dyn Log>,
        broker: Broker,
    ) -> anyhow::Result<impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static> {
        let start = log.committed_positions(&self.group(), &self.stream).map_or(StartAt::End, StartAt::Positions);
        let mut reader = log.reader(&self.stream, start)?;
        let mut batch = reader.try_batch().await?;
        tracing::info!(stream = %self.stream, "publishing to MQTT");
        Ok(async move {
            loop {
                if !batch.is_empty() {
                    let publications = batch.iter().filter_map(|r| self.publication(r)).collect();
                    broker.deliver(publications).await?;
                    log.commit_positions(&self.group(), &self.stream, &reader.positions()).await?;
                }
                batch = reader.next_batch().await?;
            }
        })
    }

    /// The message for a record; None (and a warning) when its topic cannot be made.
    fn publication(&self, record: &Record) -> Option<Publication> {
        if record.value.is_empty() && !self.retain {
            return None;
        }
        let json = serde_json::from_slice(&record.value).ok();
        match self.topic.render_record(&self.stream, record.key.as_deref(), json.as_ref()) {
            Ok(topic) => Some(Publication {
                topic,
                payload: Bytes::clone(&record.value),
                qos: self.qos,
                retain: self.retain,
                client_id: CLIENT_ID.into(),
                username: None,
                received_at: record.timestamp,
                id: None,
                properties: MessageProperties {
                    payload_is_utf8: json.is_some(),
                    content_type: json.is_some().then(|| "application/json".into()),
                    ..Default::default()
                },
            }),
            Err(e) => {
                tracing::warn!(stream = %self.stream, partition = record.partition, offset = record.offset, error = %e,
                    "record not published");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, value: &str) -> Record {
        Record {
            partition: 0,
            offset: 7,
            timestamp: 1_000,
            key: Some(Bytes::copy_from_slice(key.as_bytes())),
            value: Bytes::copy_from_slice(value.as_bytes()),
            headers: Vec::new(),
        }
    }

    fn publisher(topic: &str, retain: bool) -> StreamPublisher {
        StreamPublisher::from_config(&PublishConfig { stream: "alarms".into(), topic: topic.into(), qos: 1, retain })
            .unwrap()
    }

    #[test]
    fn topics_come_from_the_record() {
        let p = publisher("{stream}/{$.region}/{key}", false);
        let message = p.publication(&record("gen-7", r#"{"region":"US","fuel":420}"#)).unwrap();
        assert_eq!(message.topic, "alarms/US/gen-7");
        assert_eq!(message.payload.as_ref(), br#"{"region":"US","fuel":420}"#);
        assert_eq!((message.qos, message.retain), (1, false));
        // A record the template cannot serve is skipped, not published on a wrong topic.
        assert!(p.publication(&record("gen-8", r#"{"fuel":1}"#)).is_none());
    }

    #[test]
    fn deleted_rows_clear_retained_topics_only() {
        assert!(publisher("a/{key}", false).publication(&record("k", "")).is_none());
        let cleared = publisher("a/{key}", true).publication(&record("k", "")).unwrap();
        assert!(cleared.payload.is_empty() && cleared.retain);
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        let bad = |topic: &str, qos: u8| {
            StreamPublisher::from_config(&PublishConfig { stream: "s".into(), topic: topic.into(), qos, retain: false })
                .unwrap_err()
        };
        assert!(bad("a/#", 0).contains("no wildcards"), "{}", bad("a/#", 0));
        assert!(bad("a/{clientid}", 0).contains("expected key, stream or $.field"));
        assert!(bad("a", 3).contains("not an MQTT QoS"));
    }
}
