//! Records, values and time: the types every Pacer stage shares.
//!
//! A [`Record`] is what the log stores and every stage reads: an offset in a stream
//! partition, an event time, an optional key, a value (JSON bytes for decoded streams, the
//! raw payload otherwise) and headers carrying where it came from (MQTT topic, client id…).
//! This crate does no I/O so that the broker, the log and the query engine can all depend on
//! it without depending on each other.

pub mod topic;

use bytes::Bytes;
use serde_json::{json, Map, Value};

/// Header names Pacer sets on ingested records.
pub mod header {
    pub const TOPIC: &str = "mqtt.topic";
    pub const CLIENT_ID: &str = "mqtt.client_id";
    pub const USERNAME: &str = "mqtt.username";
    pub const QOS: &str = "mqtt.qos";
    pub const RETAIN: &str = "mqtt.retain";
    /// The user who appended a record over HTTP.
    pub const USER: &str = "pacer.user";
    /// `partition:offset` of the input record a derived record was computed from; lets a
    /// query resume after a restart without reprocessing or skipping input.
    pub const INPUT_OFFSET: &str = "pacer.input_offset";
}

/// A message as a device sent it, before ingest rules turn it into records. The broker
/// produces these; HTTP inputs (OwnTracks HTTP mode, OsmAnd) will too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Publication {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub client_id: String,
    pub username: Option<String>,
    /// When Pacer received it, in milliseconds since the Unix epoch.
    pub received_at: i64,
    pub properties: MessageProperties,
    /// Unique among the messages of all nodes sharing a log, given when the broker accepts
    /// it: tells the same message apart when it reaches a session twice (a session moving
    /// between nodes). None for messages from elsewhere (stream records).
    pub id: Option<u128>,
}

/// What MQTT 5 lets a message carry besides its payload; passed on to subscribers as sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageProperties {
    pub payload_is_utf8: bool,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(String, String)>,
    /// When the message expires, ms since the Unix epoch (MQTT 5 message expiry interval).
    pub expires_at: Option<i64>,
}

/// A record before the log has given it a place: what producers hand to `append`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    /// Event time in milliseconds since the Unix epoch.
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Vec<(String, Bytes)>,
    /// The partition it goes to; `None` lets the log choose by key (round robin without one).
    pub partition: Option<u32>,
}

impl NewRecord {
    pub fn new(timestamp: i64, key: Option<Bytes>, value: impl Into<Bytes>) -> Self {
        NewRecord { timestamp, key, value: value.into(), headers: Vec::new(), partition: None }
    }

    /// The record sent to `partition` whatever its key.
    pub fn to_partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    pub fn with_header(mut self, name: &str, value: impl Into<Bytes>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }
}

/// A record as stored in the log: a [`NewRecord`] plus its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub partition: u32,
    pub offset: u64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Vec<(String, Bytes)>,
}

impl Record {
    pub fn header(&self, name: &str) -> Option<&Bytes> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// The record as one JSON object, the shape `pacer tail`, the SSE feed and the HTTP API
    /// show. The value is embedded as JSON when it parses as JSON, else as a string.
    pub fn to_json(&self, stream: &str) -> Value {
        let headers: Map<String, Value> =
            self.headers.iter().map(|(n, v)| (n.clone(), Value::String(text(v)))).collect();
        json!({
            "stream": stream,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp": self.timestamp,
            "key": self.key.as_ref().map(|k| text(k)),
            "value": bytes_to_json(&self.value),
            "headers": headers,
        })
    }
}

/// A JSON value for bytes: parsed when they are JSON, else a (lossy) string.
pub fn bytes_to_json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|_| Value::String(text(bytes)))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Parses a point in time as users write it: milliseconds since the Unix epoch, or RFC 3339 /
/// ISO 8601 with an offset (`2019-05-19T07:08:02Z`, `2019-05-19T17:08:02+10:00`).
pub fn parse_time(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("{text:?} is neither milliseconds since the epoch nor an RFC 3339 time ({e})"))
}

/// A time (ms since the Unix epoch) as RFC 3339 in UTC, to the second: what people read.
pub fn format_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map_or_else(|| format!("{ms} ms"), |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// Says when something that may happen very often (a message dropped, a connection refused)
/// is due to be logged again: at most once per interval, with how many happened meanwhile.
#[derive(Debug)]
pub struct Occasionally {
    interval_ms: i64,
    last_ms: std::sync::atomic::AtomicI64,
    since: std::sync::atomic::AtomicU64,
}

impl Occasionally {
    pub fn new(interval_ms: i64) -> Self {
        Occasionally {
            interval_ms,
            last_ms: std::sync::atomic::AtomicI64::new(i64::MIN / 2),
            since: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Counts one more; Some(how many since the last time it said so) when it is time to log.
    pub fn tick(&self) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let count = self.since.fetch_add(1, Relaxed) + 1;
        let now = now_ms();
        let last = self.last_ms.load(Relaxed);
        if now - last < self.interval_ms || self.last_ms.compare_exchange(last, now, Relaxed, Relaxed).is_err() {
            return None;
        }
        self.since.fetch_sub(count, Relaxed);
        Some(count)
    }
}

/// The latest event time taken: the end of the year 9999, the last RFC 3339 can write.
pub const MAX_EVENT_TIME_MS: i64 = 253_402_300_799_999;

/// An event time from outside (a payload, a request): milliseconds since the Unix epoch,
/// from 1970 to the end of 9999. Anything else is a mistake to say, not a time to keep.
pub fn check_event_time(ms: i64) -> Result<i64, String> {
    if (0..=MAX_EVENT_TIME_MS).contains(&ms) {
        Ok(ms)
    } else {
        Err(format!(
            "timestamp {ms} ms is not between 1970-01-01T00:00:00Z (0) and 9999-12-31T23:59:59.999Z ({MAX_EVENT_TIME_MS})"
        ))
    }
}

/// Wall-clock time in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn occasionally_says_when_to_log_and_how_many_were_not() {
        let every_hour = Occasionally::new(3_600_000);
        assert_eq!(every_hour.tick(), Some(1), "the first is logged");
        assert_eq!((every_hour.tick(), every_hour.tick()), (None, None));
        let always = Occasionally::new(0);
        assert_eq!((always.tick(), always.tick()), (Some(1), Some(1)));
    }

    #[test]
    fn times_parse_as_milliseconds_or_rfc3339() {
        assert_eq!(parse_time("1558212482000"), Ok(1_558_212_482_000));
        assert_eq!(parse_time("2019-05-18T20:48:02Z"), Ok(1_558_212_482_000));
        assert_eq!(parse_time("2019-05-19T06:48:02.5+10:00"), Ok(1_558_212_482_500));
        assert!(parse_time("yesterday").unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn json_value_is_embedded_and_raw_value_is_text() {
        let rec = Record {
            partition: 0,
            offset: 7,
            timestamp: 1000,
            key: Some(Bytes::from_static(b"alice")),
            value: Bytes::from_static(br#"{"lat":1.5}"#),
            headers: vec![(header::TOPIC.into(), Bytes::from_static(b"race/alice"))],
        };
        let j = rec.to_json("race");
        assert_eq!(j["value"]["lat"], 1.5);
        assert_eq!(j["key"], "alice");
        assert_eq!(j["headers"]["mqtt.topic"], "race/alice");

        let raw = Record { value: Bytes::from_static(b"not json"), ..rec };
        assert_eq!(raw.to_json("mqtt")["value"], "not json");
    }
}
