//! One ingest rule: matching, key templates, event time and decoders.

use bytes::Bytes;
use pacer_core::Publication;
use serde::Deserialize;
use serde_json::Value;

/// A rule as written in the config file (`[[ingest]]`). It matches topics by exactly one of
/// `mqtt`, `regex` or `topic_regex_list`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// MQTT topic filter, e.g. `owntracks/+/+`.
    #[serde(default)]
    pub mqtt: Option<String>,
    /// Regular expression the whole topic must match.
    #[serde(default)]
    pub regex: Option<String>,
    /// Confluent MQTT Proxy's `topic.regex.list`: `kafka_topic:regex, …`, pasted as is; each
    /// pair becomes a rule into that stream.
    #[serde(default)]
    pub topic_regex_list: Option<String>,
    /// Target stream (not with `topic_regex_list`, which names its own).
    #[serde(default)]
    pub stream: Option<String>,
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
    /// An OwnTracks message: checked by its `_type` and normalized (`owntracks`); its `tst`
    /// (seconds), when it has one, is its event time.
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
    /// An RFC 3339 / ISO 8601 string such as `2019-05-19T07:08:02Z`.
    Iso8601,
}

/// A template compiled into its parts: an ingest rule's key (over the MQTT message), or the
/// topic a stream's records are published on (over the record).
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
    /// A record's key and stream (publishing only).
    Key,
    Stream,
}

/// What a template is rendered over, which decides the placeholders it may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateOver {
    Message,
    Record,
}

impl KeyTemplate {
    /// A key template for ingest rules: `{clientid}`, `{username}`, `{topic}`, `{topic[N]}`, `{$.field}`.
    pub fn parse(template: &str) -> Result<Self, String> {
        Self::parse_over(template, TemplateOver::Message)
    }

    /// A template over MQTT messages, or over records (`{key}`, `{stream}`, `{$.field}`).
    pub fn parse_over(template: &str, over: TemplateOver) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let close = rest[open..].find('}').ok_or_else(|| format!("unclosed '{{' in template {template:?}"))?;
            let name = &rest[open + 1..open + close];
            parts.push(match (name, over) {
                (_, _) if name.starts_with("$.") => Part::Field(name[2..].split('.').map(str::to_string).collect()),
                ("clientid", TemplateOver::Message) => Part::ClientId,
                ("username", TemplateOver::Message) => Part::Username,
                ("topic", TemplateOver::Message) => Part::Topic,
                (_, TemplateOver::Message) if name.starts_with("topic[") && name.ends_with(']') => Part::TopicLevel(
                    name[6..name.len() - 1].parse().map_err(|_| format!("bad topic level in {{{name}}}"))?,
                ),
                ("key", TemplateOver::Record) => Part::Key,
                ("stream", TemplateOver::Record) => Part::Stream,
                (_, TemplateOver::Message) => {
                    return Err(format!(
                        "unknown placeholder {{{name}}}: expected clientid, username, topic, topic[N] or $.field"
                    ))
                }
                (_, TemplateOver::Record) => {
                    return Err(format!("unknown placeholder {{{name}}}: expected key, stream or $.field"))
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
        self.render_with(json, |part, out| {
            match part {
                Part::ClientId => out.push_str(&p.client_id),
                Part::Username => out.push_str(p.username.as_deref().unwrap_or("")),
                Part::Topic => out.push_str(&p.topic),
                Part::TopicLevel(n) => out.push_str(
                    p.topic.split('/').nth(*n).ok_or_else(|| format!("topic {:?} has no level {n}", p.topic))?,
                ),
                _ => unreachable!("parse_over(Message) admits no other placeholder"),
            }
            Ok(())
        })
    }

    /// Renders over a record of `stream` whose value is `json` (when it is JSON).
    pub fn render_record(&self, stream: &str, key: Option<&[u8]>, json: Option<&Value>) -> Result<String, String> {
        self.render_with(json, |part, out| {
            match part {
                Part::Key => out.push_str(&String::from_utf8_lossy(key.ok_or("the record has no key")?)),
                Part::Stream => out.push_str(stream),
                _ => unreachable!("parse_over(Record) admits no other placeholder"),
            }
            Ok(())
        })
    }

    fn render_with(
        &self,
        json: Option<&Value>,
        mut placeholder: impl FnMut(&Part, &mut String) -> Result<(), String>,
    ) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Field(path) => {
                    let v = json
                        .and_then(|j| lookup(j, path))
                        .ok_or_else(|| format!("field $.{} missing from payload", path.join(".")))?;
                    match v {
                        Value::String(s) => out.push_str(s),
                        other => out.push_str(&other.to_string()),
                    }
                }
                other => placeholder(other, &mut out)?,
            }
        }
        Ok(out)
    }
}

fn required_stream(c: &RuleConfig) -> Result<String, String> {
    c.stream.clone().ok_or_else(|| "stream: missing (which stream do matching messages go to?)".to_string())
}

/// A regex that must match the whole topic, as Confluent's proxy and Kafka Connect match.
fn anchored(re: &str) -> Result<Matcher, String> {
    regex::Regex::new(&format!("^(?:{re})$")).map(Matcher::Regex).map_err(|e| format!("regex {re:?}: {e}"))
}

fn parse_topic_regex_list(list: &str) -> Result<Vec<(Matcher, String)>, String> {
    let pairs: Vec<&str> = list.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
    if pairs.is_empty() {
        return Err("topic_regex_list is empty".into());
    }
    pairs
        .into_iter()
        .map(|pair| {
            let (topic, re) = pair
                .split_once(':')
                .ok_or_else(|| format!("topic_regex_list entry {pair:?}: expected kafka_topic:regex"))?;
            Ok((anchored(re.trim())?, topic.trim().to_string()))
        })
        .collect()
}

fn lookup<'a>(json: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(json, |v, k| v.get(k))
}

#[derive(Debug)]
enum Matcher {
    Filter(String),
    Regex(regex::Regex),
}

/// Milliseconds from a timestamp field: a number (or numeric string) in the unit, or an
/// RFC 3339 string.
fn event_time(v: &Value, unit: TimestampUnit) -> Result<i64, String> {
    let number = v.as_f64().or_else(|| v.as_str()?.trim().parse::<f64>().ok()).filter(|n| n.is_finite());
    // Out-of-range floats saturate; the range check below refuses them.
    let ms = match (unit, number, v.as_str()) {
        (TimestampUnit::S, Some(n), _) => (n * 1000.0).round() as i64,
        (TimestampUnit::Ms, Some(n), _) => n.round() as i64,
        (TimestampUnit::Iso8601, _, Some(s)) => pacer_core::parse_time(s)?,
        (TimestampUnit::Iso8601, _, None) => return Err(format!("{v} is not an RFC 3339 string")),
        (_, None, _) => return Err(format!("{v} is not a number")),
    };
    pacer_core::check_event_time(ms)
}

/// A rule ready to run.
#[derive(Debug)]
pub struct IngestRule {
    matcher: Matcher,
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
    /// The message says its device went away (an OwnTracks `lwt`).
    pub offline: bool,
}

impl IngestRule {
    /// The rules a config entry stands for: one, or one per pair of a `topic_regex_list`.
    pub fn from_config(c: &RuleConfig) -> Result<Vec<Self>, String> {
        let matchers = match (&c.mqtt, &c.regex, &c.topic_regex_list) {
            (Some(filter), None, None) => {
                pacer_core::topic::validate_topic_filter(filter).map_err(|e| format!("mqtt = {filter:?}: {e}"))?;
                vec![(Matcher::Filter(filter.clone()), required_stream(c)?)]
            }
            (None, Some(re), None) => vec![(anchored(re)?, required_stream(c)?)],
            (None, None, Some(list)) => {
                if c.stream.is_some() {
                    return Err("stream: not allowed with topic_regex_list, whose pairs name their streams".into());
                }
                parse_topic_regex_list(list)?
            }
            _ => return Err("give exactly one of mqtt, regex or topic_regex_list".into()),
        };
        let (timestamp_field, unit) = match (&c.timestamp_field, c.format) {
            (Some(f), _) => {
                (Some(f.trim_start_matches("$.").split('.').map(str::to_string).collect()), c.timestamp_unit)
            }
            (None, _) => (None, c.timestamp_unit),
        };
        let key = c.key.as_deref().map(KeyTemplate::parse).transpose()?;
        matchers
            .into_iter()
            .map(|(matcher, stream)| {
                pacer_log::validate_stream_name(&stream).map_err(|e| e.to_string())?;
                if pacer_log::is_internal(&stream) {
                    return Err(format!("stream {stream:?}: names starting with __ are Pacer's own streams"));
                }
                Ok(IngestRule {
                    matcher,
                    stream,
                    decoder: c.format,
                    key: key.clone(),
                    timestamp_field: timestamp_field.clone(),
                    unit,
                })
            })
            .collect()
    }

    pub fn matches(&self, topic: &str) -> bool {
        match &self.matcher {
            Matcher::Filter(f) => pacer_core::topic::matches(f, topic),
            Matcher::Regex(re) => re.is_match(topic),
        }
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
        let mut value = p.payload.clone();
        let mut tst = None;
        let offline = json.as_ref().is_some_and(crate::device_status::says_offline);
        let json = match (self.decoder, json) {
            (Decoder::Owntracks, Some(message)) => {
                let (normalized, seconds) = crate::owntracks::normalize(message)?;
                value = Bytes::from(normalized.to_string());
                tst = seconds;
                Some(normalized)
            }
            (_, json) => json,
        };
        let timestamp = match (&self.timestamp_field, &json, tst) {
            (Some(path), Some(j), _) => {
                let field = format!("$.{}", path.join("."));
                let v = lookup(j, path).ok_or_else(|| format!("timestamp field {field} missing"))?;
                event_time(v, self.unit).map_err(|e| format!("timestamp field {field}: {e}"))?
            }
            (None, _, Some(seconds)) => {
                pacer_core::check_event_time(seconds.saturating_mul(1000)).map_err(|e| format!("tst {seconds}: {e}"))?
            }
            _ => p.received_at,
        };
        let key = match &self.key {
            Some(t) => Some(Bytes::from(t.render(p, json.as_ref())?)),
            None => None,
        };
        Ok(Decoded { key, timestamp, value, offline })
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
            ..Default::default()
        };
        let json: Value = serde_json::from_slice(&p.payload).unwrap();
        let t = KeyTemplate::parse("{topic[1]}/{topic[2]}:{clientid}:{username}:{$.tid}").unwrap();
        assert_eq!(t.render(&p, Some(&json)).unwrap(), "alice/phone:c1:alice:al");
        assert!(KeyTemplate::parse("{nope}").unwrap_err().contains("unknown placeholder"));
        assert!(KeyTemplate::parse("{topic[9]}").unwrap().render(&p, None).unwrap_err().contains("no level 9"));
    }

    #[test]
    fn owntracks_time_is_tst_seconds() {
        let rule = IngestRule::from_config(&crate::default_rules()[0]).unwrap().remove(0);
        let p = Publication {
            topic: "owntracks/alice/phone".into(),
            payload: Bytes::from_static(br#"{"_type":"location","tst":10,"lat":1,"lon":2}"#),
            qos: 1,
            retain: false,
            client_id: "c1".into(),
            username: None,
            received_at: 0,
            ..Default::default()
        };
        let d = rule.decode(&p).unwrap();
        assert_eq!(d.timestamp, 10_000);
        assert_eq!(d.key.as_deref(), Some(&b"alice/phone"[..]));
        let bad = Publication { payload: Bytes::from_static(br#"{"lat":1}"#), ..p };
        assert!(rule.decode(&bad).unwrap_err().contains("_type"));
    }

    fn publication(topic: &str, payload: &'static str) -> Publication {
        Publication {
            topic: topic.into(),
            payload: Bytes::from_static(payload.as_bytes()),
            qos: 1,
            retain: false,
            client_id: "c1".into(),
            username: None,
            received_at: 0,
            ..Default::default()
        }
    }

    #[test]
    fn confluent_topic_regex_lists_paste_as_is() {
        let c = RuleConfig {
            topic_regex_list: Some("emergency_generators:emergency_generators/.*, temps:.*temperature".into()),
            ..Default::default()
        };
        let rules = IngestRule::from_config(&c).unwrap();
        assert_eq!(rules.iter().map(|r| r.stream()).collect::<Vec<_>>(), ["emergency_generators", "temps"]);
        assert!(rules[0].matches("emergency_generators/gen-7"));
        assert!(!rules[0].matches("x/emergency_generators/gen-7"), "the regex matches the whole topic");
        assert!(rules[1].matches("site/1/temperature"));
        let bad = RuleConfig { topic_regex_list: Some("no-colon-here".into()), ..Default::default() };
        assert!(IngestRule::from_config(&bad).unwrap_err().contains("expected kafka_topic:regex"));
        let both = RuleConfig { mqtt: Some("#".into()), regex: Some(".*".into()), ..Default::default() };
        assert!(IngestRule::from_config(&both).unwrap_err().contains("exactly one"));
        let internal = RuleConfig { topic_regex_list: Some("__retained:.*".into()), ..Default::default() };
        assert!(IngestRule::from_config(&internal).unwrap_err().contains("Pacer's own streams"));
    }

    #[test]
    fn event_time_from_seconds_milliseconds_or_iso8601() {
        let rule = |unit| {
            let c = RuleConfig {
                mqtt: Some("#".into()),
                stream: Some("s".into()),
                timestamp_field: Some("$.t".into()),
                timestamp_unit: unit,
                ..Default::default()
            };
            IngestRule::from_config(&c).unwrap().remove(0)
        };
        let at = |unit, payload| rule(unit).decode(&publication("a", payload)).map(|d| d.timestamp);
        assert_eq!(at(TimestampUnit::S, r#"{"t":1558212482}"#), Ok(1_558_212_482_000));
        assert_eq!(at(TimestampUnit::S, r#"{"t":"1558212482"}"#), Ok(1_558_212_482_000));
        assert_eq!(at(TimestampUnit::Ms, r#"{"t":1558212482123}"#), Ok(1_558_212_482_123));
        assert_eq!(at(TimestampUnit::Iso8601, r#"{"t":"2019-05-18T20:48:02Z"}"#), Ok(1_558_212_482_000));
        assert!(at(TimestampUnit::Iso8601, r#"{"t":12}"#).unwrap_err().contains("not an RFC 3339 string"));
        assert!(at(TimestampUnit::S, r#"{"x":1}"#).unwrap_err().contains("$.t missing"));
        assert!(at(TimestampUnit::S, r#"{"t":-1}"#).unwrap_err().contains("not between 1970"));
        assert!(at(TimestampUnit::Ms, r#"{"t":1e300}"#).unwrap_err().contains("not between 1970"));
        assert!(at(TimestampUnit::Iso8601, r#"{"t":"1969-12-31T23:59:59Z"}"#).unwrap_err().contains("not between"));
    }
}
