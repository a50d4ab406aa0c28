//! `/api/v1/live`: a Server-Sent Events stream of a log stream's records, batched per read.
//!
//! Event ids are the reader's positions (`partition:next_offset,…`): a client that reconnects
//! with `Last-Event-ID` continues right after the last record it saw, with no gap and no
//! duplicate. Each caller gets only the records it may read.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures::Stream;
use pacer_log::{Positions, RecordFilter, StartAt, StreamReader};
use serde::Deserialize;
use serde_json::Value;

use crate::access::{forbidden, Caller};
use crate::{error, WebState};

#[derive(Debug, Deserialize)]
pub struct LiveQuery {
    stream: String,
    /// `beginning`, `end` (default), `time:<ms or RFC 3339>` or positions `partition:offset,…`.
    from: Option<String>,
    /// Only records with this key.
    key: Option<String>,
    /// Each record as `{key, timestamp, value}` only: a page following a busy stream parses
    /// half the bytes.
    #[serde(default)]
    compact: bool,
}

pub async fn live(
    State(state): State<Arc<WebState>>,
    Extension(Caller(who)): Extension<Caller>,
    client: Option<Extension<crate::serve::ClientAddr>>,
    Query(q): Query<LiveQuery>,
    headers: HeaderMap,
) -> Response {
    if pacer_log::is_internal(&q.stream) && !who.is_admin() {
        return forbidden(format!("{} is one of Pacer's own streams: admins only", q.stream));
    }
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<Positions>().ok());
    let start = match resume {
        Some(positions) => StartAt::Positions(positions),
        None => match parse_start(q.from.as_deref()) {
            Ok(start) => start,
            Err(message) => return error(StatusCode::BAD_REQUEST, message),
        },
    };
    let slot = match state.streams.take(client.map(|c| c.0 .0)) {
        Ok(slot) => slot,
        Err(refused) => return refused.into_response(),
    };
    match state.log.reader(&q.stream, start) {
        Ok(reader) => {
            let keep = state.access.auth.record_filter(&who);
            events(reader, q.stream, q.key, q.compact, keep, slot).into_response()
        }
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

/// Where a reader starts, as the `from` parameter says.
pub fn parse_start(from: Option<&str>) -> Result<StartAt, String> {
    Ok(match from {
        None | Some("end") => StartAt::End,
        Some("beginning") => StartAt::Beginning,
        Some(other) => match other.strip_prefix("time:") {
            Some(t) => StartAt::Timestamp(pacer_core::parse_time(t).map_err(|e| format!("from={other:?}: {e}"))?),
            None => StartAt::Positions(other.parse().map_err(|e| {
                format!("from={other:?}: {e}; expected 'beginning', 'end', 'time:<time>' or positions like '0:15,1:7'")
            })?),
        },
    })
}

fn events(
    reader: Box<dyn StreamReader>,
    stream: String,
    key: Option<String>,
    compact: bool,
    keep: Option<RecordFilter>,
    slot: Option<crate::serve::StreamSlot>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let events = futures::stream::unfold(Some(reader), move |reader| {
        // The stream holds the client's slot until it ends.
        let _slot = &slot;
        let (stream, key, keep) = (stream.clone(), key.clone(), keep.clone());
        async move {
            let mut reader = reader?;
            loop {
                match reader.next_batch().await {
                    Ok(batch) => {
                        let records: Vec<Value> = batch
                            .iter()
                            .filter(|r| key.as_ref().is_none_or(|k| r.key.as_deref() == Some(k.as_bytes())))
                            .filter(|r| keep.as_ref().is_none_or(|keep| keep(&stream, r)))
                            .map(|r| if compact { compact_json(r) } else { r.to_json(&stream) })
                            .collect();
                        if records.is_empty() {
                            continue;
                        }
                        let id = reader.positions().to_string();
                        let event = Event::default().event("records").id(id).data(Value::from(records).to_string());
                        return Some((Ok(event), Some(reader)));
                    }
                    Err(e) => {
                        tracing::warn!(%stream, error = %e, "live feed ended");
                        return Some((Ok(Event::default().event("error").data(e.to_string())), None));
                    }
                }
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

fn compact_json(record: &pacer_core::Record) -> Value {
    serde_json::json!({
        "key": record.key.as_deref().map(String::from_utf8_lossy),
        "timestamp": record.timestamp,
        "value": pacer_core::bytes_to_json(&record.value),
    })
}
