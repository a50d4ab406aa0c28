//! One ingest rule: matching, key templates, event time and decoders.

use bytes::Bytes;
use pacer_core::Publication;
use serde::Deserialize;
use serde_json::Value;

/// A rule as written in the config file (`[[ingest]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// MQTT topic filter the rule applies to.
    pub mqtt: String,
    pub stream: String,
    #[serde(default)]
    pub format: Decoder,
    /// Key template, e.g. `{clientid}`, `{topic[1]}/{topic[2]}`, `{$.who}`. None: no key.
    #[serde(default)]
    pub key: Option<String>,
    /// Payload field holding the event time; publish time when absent.
    #[serde(default)]
    pub timestamp_field: Option<String>,
    #[serde(default)]
    pub timestamp_unit: TimestampUnit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decoder {
    /// Any JSON document, stored as sent.
    #[default]
    Json,
    /// An OwnTracks message: a JSON object with `_type`; `tst` (seconds) is its event time.
    Owntracks,
    /// The payload bytes as they are.
    Raw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimestampUnit {
    S,
    #[default]
    Ms,
}

/// A key template compiled into its parts.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyTemplate(Vec<Part>);

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Literal(String),
    ClientId,
    Username,
    Topic,
    TopicLevel(usize),
    Field(Vec<String>),
}

impl KeyTemplate {
    pub fn parse(template: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let close = rest[open..].find('}').ok_or_else(|| format!("unclosed '{{' in key template {template:?}"))?;
            let name = &rest[open + 1..open + close];
            parts.push(match name {
                "clientid" => Part::ClientId,
                "username" => Part::Username,
                "topic" => Part::Topic,
                _ if name.starts_with("topic[") && name.ends_with(']') => Part::TopicLevel(
                    name[6..name.len() - 1].parse().map_err(|_| format!("bad topic level in {{{name}}}"))?,
                ),
                _ if name.starts_with("$.") => Part::Field(name[2..].split('.').map(str::to_string).collect()),
                _ => {
                    return Err(format!(
                        "unknown placeholder {{{name}}}: expected clientid, username, topic, topic[N] or $.field"
                    ))
                }
            });
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(KeyTemplate(parts))
    }

    fn render(&self, p: &Publication, json: Option<&Value>) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::ClientId => out.push_str(&p.client_id),
                Part::Username => out.push_str(p.username.as_deref().unwrap_or("")),
                Part::Topic => out.push_str(&p.topic),
                Part::TopicLevel(n) => out.push_str(
                    p.topic.split('/').nth(*n).ok_or_else(|| format!("topic {:?} has no level {n}", p.topic))?,
                ),
                Part::Field(path) => {
                    let v = json
                        .and_then(|j| lookup(j, path))
                        .ok_or_else(|| format!("key field $.{} missing from payload", path.join(".")))?;
                    match v {
                        Value::String(s) => out.push_str(s),
                        other => out.push_str(&other.to_string()),
                    }
                }
            }
        }
        Ok(out)
    }
}

fn lookup<'a>(json: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(json, |v, k| v.get(k))
}

/// A rule ready to run.
pub struct IngestRule {
    filter: String,
    stream: String,
    decoder: Decoder,
    key: Option<KeyTemplate>,
    timestamp_field: Option<Vec<String>>,
    unit: TimestampUnit,
}

/// What a rule makes of a publication.
#[derive(Debug)]
pub struct Decoded {
    pub key: Option<Bytes>,
    pub timestamp: i64,
    pub value: Bytes,
}

impl IngestRule {
    pub fn new(c: &RuleConfig) -> Result<Self, String> {
        pacer_mqtt::topic::validate_topic_filter(&c.mqtt).map_err(|e| format!("mqtt filter: {e}"))?;
        pacer_log::validate_stream_name(&c.stream).map_err(|e| e.to_string())?;
        let (timestamp_field, unit) = match (&c.timestamp_field, c.format) {
            (Some(f), _) => {
                (Some(f.trim_start_matches("$.").split('.').map(str::to_string).collect()), c.timestamp_unit)
            }
            (None, Decoder::Owntracks) => (Some(vec!["tst".to_string()]), TimestampUnit::S),
            (None, _) => (None, c.timestamp_unit),
        };
        Ok(IngestRule {
            filter: c.mqtt.clone(),
            stream: c.stream.clone(),
            decoder: c.format,
            key: c.key.as_deref().map(KeyTemplate::parse).transpose()?,
            timestamp_field,
            unit,
        })
    }

    pub fn matches(&self, topic: &str) -> bool {
        pacer_mqtt::topic::matches(&self.filter, topic)
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Decodes a publication, or says why it cannot be.
    pub fn decode(&self, p: &Publication) -> Result<Decoded, String> {
        let json = match self.decoder {
            Decoder::Raw => None,
            Decoder::Json | Decoder::Owntracks => {
                Some(serde_json::from_slice::<Value>(&p.payload).map_err(|e| format!("payload is not JSON: {e}"))?)
            }
        };
        if self.decoder == Decoder::Owntracks {
            let ty = json.as_ref().and_then(|j| j.get("_type")).and_then(Value::as_str);
            if ty.is_none() {
                return Err("OwnTracks payload has no \"_type\" string".into());
            }
        }
        let timestamp = match (&self.timestamp_field, &json) {
            (Some(path), Some(j)) => {
                let v = lookup(j, path)
                    .and_then(Value::as_f64)
                    .ok_or_else(|| format!("timestamp field $.{} missing or not a number", path.join(".")))?;
                match self.unit {
                    TimestampUnit::S => (v * 1000.0).round() as i64,
                    TimestampUnit::Ms => v.round() as i64,
                }
            }
            _ => p.received_at,
        };
        let key = match &self.key {
            Some(t) => Some(Bytes::from(t.render(p, json.as_ref())?)),
            None => None,
        };
        Ok(Decoded { key, timestamp, value: p.payload.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_templates_render_topic_levels_ids_and_fields() {
        let p = Publication {
            topic: "owntracks/alice/phone".into(),
            payload: Bytes::from_static(br#"{"_type":"location","tst":10,"tid":"al"}"#),
            qos: 1,
            retain: false,
            client_id: "c1".into(),
            username: Some("alice".into()),
            received_at: 0,
        };
        let json: Value = serde_json::from_slice(&p.payload).unwrap();
        let t = KeyTemplate::parse("{topic[1]}/{topic[2]}:{clientid}:{username}:{$.tid}").unwrap();
        assert_eq!(t.render(&p, Some(&json)).unwrap(), "alice/phone:c1:alice:al");
        assert!(KeyTemplate::parse("{nope}").unwrap_err().contains("unknown placeholder"));
        assert!(KeyTemplate::parse("{topic[9]}").unwrap().render(&p, None).unwrap_err().contains("no level 9"));
    }

    #[test]
    fn owntracks_time_is_tst_seconds() {
        let rule = IngestRule::new(&crate::default_rules()[0]).unwrap();
        let p = Publication {
            topic: "owntracks/alice/phone".into(),
            payload: Bytes::from_static(br#"{"_type":"location","tst":10,"lat":1,"lon":2}"#),
            qos: 1,
            retain: false,
            client_id: "c1".into(),
            username: None,
            received_at: 0,
        };
        let d = rule.decode(&p).unwrap();
        assert_eq!(d.timestamp, 10_000);
        assert_eq!(d.key.as_deref(), Some(&b"alice/phone"[..]));
        let bad = Publication { payload: Bytes::from_static(br#"{"lat":1}"#), ..p };
        assert!(rule.decode(&bad).unwrap_err().contains("_type"));
    }
}
