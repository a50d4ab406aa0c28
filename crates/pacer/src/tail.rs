//! `pacer tail`: prints a stream's records as JSON lines, read from a running Pacer's live
//! feed, so it sees exactly what the dashboard sees.

use anyhow::Context;
use futures::StreamExt;

use crate::client::{refusal, Remote};

pub struct TailOptions {
    pub remote: Remote,
    pub stream: String,
    pub from_beginning: bool,
    /// Start at this time (ms since the epoch or RFC 3339).
    pub from_time: Option<String>,
    pub key: Option<String>,
    pub limit: Option<u64>,
}

pub async fn tail(o: TailOptions) -> anyhow::Result<()> {
    let from = match (&o.from_time, o.from_beginning) {
        (Some(t), _) => format!("time:{}", pacer_core::parse_time(t).map_err(|e| anyhow::anyhow!("--from: {e}"))?),
        (None, true) => "beginning".to_string(),
        (None, false) => "end".to_string(),
    };
    let url = o.remote.url("/api/v1/live");
    let mut query = vec![("stream", o.stream.clone()), ("from", from)];
    if let Some(key) = &o.key {
        query.push(("key", key.clone()));
    }
    let response = o.remote.client()?.get(&url).query(&query).send().await.with_context(|| o.remote.unreachable())?;
    if !response.status().is_success() {
        anyhow::bail!("{url}: {}", refusal(response).await);
    }
    let mut printed = 0u64;
    if o.limit == Some(0) {
        return Ok(());
    }
    let mut body = response.bytes_stream();
    let mut buf = String::new();
    let mut event = Sse::default();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("live feed interrupted")?;
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(newline) = buf.find('\n') {
            let line: String = buf.drain(..=newline).collect();
            let line = line.trim_end_matches(['\n', '\r']);
            if !line.is_empty() {
                event.push_line(line);
                continue;
            }
            let done = std::mem::take(&mut event);
            match done.event.as_str() {
                "records" => {
                    let records: Vec<serde_json::Value> =
                        serde_json::from_str(&done.data).context("live feed sent malformed records")?;
                    for record in records {
                        println!("{record}");
                        printed += 1;
                        if o.limit.is_some_and(|l| printed >= l) {
                            return Ok(());
                        }
                    }
                }
                "error" => anyhow::bail!("stream {}: {}", o.stream, done.data),
                _ => {}
            }
        }
    }
    anyhow::bail!("Pacer closed the live feed")
}

/// One Server-Sent Event being assembled from its lines.
#[derive(Default)]
struct Sse {
    event: String,
    data: String,
}

impl Sse {
    fn push_line(&mut self, line: &str) {
        let (field, value) = line.split_once(':').map_or((line, ""), |(f, v)| (f, v.strip_prefix(' ').unwrap_or(v)));
        match field {
            "event" => self.event = value.to_string(),
            "data" => {
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(value);
            }
            _ => {}
        }
    }
}
