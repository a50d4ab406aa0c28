//! `pacer produce`: JSON lines (or a JSON array) on stdin become records of a stream, like
//! Kafka's console producer. Records go in batches; each batch is durable before the next.

use std::io::BufRead;

use anyhow::Context;
use serde_json::{json, Value};

use crate::client::{refusal, Remote};

/// Lines sent in one request.
const BATCH: usize = 500;

/// Where a record's key comes from.
pub enum KeyFrom<'a> {
    None,
    /// The same key for every record.
    Fixed(&'a str),
    /// A top-level field of each value (`--key-field deviceId`).
    Field(&'a str),
}

/// Appends stdin to `stream`: JSON lines, or one JSON array of values (a file such as
/// devices.json).
pub async fn produce(remote: &Remote, stream: &str, key: KeyFrom<'_>) -> anyhow::Result<()> {
    let url = remote.url(&format!("/api/v1/streams/{stream}/records"));
    let client = remote.client()?;
    let mut sent = 0usize;
    let mut batch = Vec::with_capacity(BATCH);
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let array = input.fill_buf()?.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let mut values: Box<dyn Iterator<Item = anyhow::Result<Value>>> = if array {
        let all: Value = serde_json::from_reader(input).context("stdin: not a JSON array")?;
        let Value::Array(items) = all else { unreachable!("starts with [") };
        Box::new(items.into_iter().map(Ok))
    } else {
        Box::new(input.lines().enumerate().filter_map(|(i, line)| match line {
            Err(e) => Some(Err(anyhow::anyhow!("reading stdin: {e}"))),
            Ok(line) if line.trim().is_empty() => None,
            Ok(line) => Some(serde_json::from_str(&line).with_context(|| format!("stdin line {}: not JSON", i + 1))),
        }))
    };
    loop {
        let next = values.next().transpose().with_context(|| format!("{sent} records before it were stored"))?;
        if let Some(value) = next.as_ref() {
            let key = match key {
                KeyFrom::None => None,
                KeyFrom::Fixed(k) => Some(Value::from(k)),
                KeyFrom::Field(f) => match value.get(f) {
                    Some(Value::String(s)) => Some(Value::from(s.as_str())),
                    Some(Value::Null) | None => anyhow::bail!(
                        "record {}: no field {f:?} for the key ({sent} records before it were stored)",
                        sent + batch.len() + 1
                    ),
                    Some(other) => Some(Value::from(other.to_string())),
                },
            };
            batch.push(json!({ "key": key, "value": value }));
        }
        if batch.len() >= BATCH || (next.is_none() && !batch.is_empty()) {
            let response = client.post(&url).json(&batch).send().await.with_context(|| remote.unreachable())?;
            if !response.status().is_success() {
                anyhow::bail!("{} ({sent} records before this batch were stored)", refusal(response).await);
            }
            sent += batch.len();
            batch.clear();
        }
        if next.is_none() {
            break;
        }
    }
    eprintln!("{sent} records appended to {stream}");
    Ok(())
}
