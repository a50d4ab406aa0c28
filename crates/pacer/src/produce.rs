//! `pacer produce`: JSON lines on stdin become records of a stream, like Kafka's console
//! producer. Lines go in batches; each batch is durable before the next is read.

use std::io::BufRead;

use anyhow::Context;
use serde_json::{json, Value};

/// Lines sent in one request.
const BATCH: usize = 500;

pub async fn produce(server: &str, stream: &str, key: Option<&str>) -> anyhow::Result<()> {
    let url = format!("{}/api/v1/streams/{stream}/records", server.trim_end_matches('/'));
    let client = reqwest::Client::new();
    let mut sent = 0usize;
    let mut batch = Vec::with_capacity(BATCH);
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines().enumerate();
    loop {
        let next = lines.next();
        if let Some((i, line)) = &next {
            let line = line.as_ref().map_err(|e| anyhow::anyhow!("reading stdin: {e}"))?;
            if !line.trim().is_empty() {
                let value: Value = serde_json::from_str(line).with_context(|| {
                    format!("stdin line {}: not JSON ({sent} records before it were stored)", i + 1)
                })?;
                batch.push(json!({ "key": key, "value": value }));
            }
        }
        if batch.len() >= BATCH || (next.is_none() && !batch.is_empty()) {
            let response = client
                .post(&url)
                .json(&batch)
                .send()
                .await
                .with_context(|| format!("cannot reach Pacer at {server} (is `pacer up` running?)"))?;
            if !response.status().is_success() {
                let body: Value = response.json().await.unwrap_or_default();
                anyhow::bail!(
                    "{} ({sent} records before this batch were stored)",
                    body["error"].as_str().unwrap_or("append failed")
                );
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
