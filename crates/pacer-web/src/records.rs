//! `/api/v1/streams/{name}/records`: read a stream over a time range (the records the caller
//! may read), or append to it (where the caller may write; Pacer's own streams never).
//! Reads are streamed a batch at a time, so a large `limit` costs a batch of memory, not the
//! whole answer (100,000 records held ~500 MB).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use pacer_core::{now_ms, parse_time, NewRecord};
use pacer_log::StartAt;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::access::{forbidden, Caller};
use crate::{error, WebState};

/// Records one GET returns when it names no limit, and at most.
const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 100_000;

/// The records of a stream with event times in [from, to] (ms) and a given key, up to a
/// limit, in log order, a batch at a time.
pub(crate) struct RangeReader {
    reader: Box<dyn pacer_log::StreamReader>,
    from: Option<i64>,
    to: Option<i64>,
    key: Option<String>,
    left: usize,
}

impl RangeReader {
    pub(crate) fn open(
        log: &dyn pacer_log::Log,
        stream: &str,
        from: Option<i64>,
        to: Option<i64>,
        key: Option<&str>,
        limit: usize,
    ) -> Result<RangeReader, pacer_log::LogError> {
        let reader = log.reader(stream, from.map_or(StartAt::Beginning, StartAt::Timestamp))?;
        Ok(RangeReader { reader, from, to, key: key.map(str::to_string), left: limit })
    }

    /// The next records in range that `keep` keeps; None once the log or the limit is done.
    pub(crate) async fn next(
        &mut self,
        keep: impl Fn(&pacer_core::Record) -> bool,
    ) -> Result<Option<Vec<pacer_core::Record>>, pacer_log::LogError> {
        while self.left > 0 {
            let batch = self.reader.try_batch().await?;
            if batch.is_empty() {
                break;
            }
            // Event times are not ordered across a partition, so the range is a filter.
            let (from, to, key) = (self.from, self.to, self.key.as_deref());
            let wanted: Vec<_> = batch
                .into_iter()
                .filter(|r| from.is_none_or(|f| r.timestamp >= f) && to.is_none_or(|t| r.timestamp <= t))
                .filter(|r| key.is_none_or(|k| r.key.as_deref() == Some(k.as_bytes())))
                .filter(|r| keep(r))
                .take(self.left)
                .collect();
            if !wanted.is_empty() {
                self.left -= wanted.len();
                return Ok(Some(wanted));
            }
        }
        Ok(None)
    }
}

#[derive(Debug, Deserialize)]
pub struct RecordsQuery {
    /// Event time range, ms since the epoch or RFC 3339; both ends included.
    from: Option<String>,
    to: Option<String>,
    key: Option<String>,
    limit: Option<usize>,
}

pub async fn read(
    State(state): State<Arc<WebState>>,
    Extension(Caller(who)): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<RecordsQuery>,
) -> Response {
    if !state.log.streams().iter().any(|s| s.name == name) {
        return error(StatusCode::NOT_FOUND, format!("no stream named {name:?}"));
    }
    let time =
        |t: &Option<String>, what: &str| t.as_deref().map(parse_time).transpose().map_err(|e| format!("{what}: {e}"));
    let (from, to) = match (time(&q.from, "from"), time(&q.to, "to")) {
        (Ok(from), Ok(to)) => (from, to),
        (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, e),
    };
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
    let range = match RangeReader::open(state.log.as_ref(), &name, from, to, q.key.as_deref(), limit) {
        Ok(range) => range,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let filter = state.access.auth.record_filter(&who);
    // `{"records":[`, each batch's records, `]}`: the same JSON as collected, a batch at a time.
    let chunks = futures::stream::unfold(Some((range, true)), move |reading| {
        let (filter, name) = (filter.clone(), name.clone());
        async move {
            let (mut range, first) = reading?;
            let keep = |r: &pacer_core::Record| filter.as_ref().is_none_or(|keep| keep(&name, r));
            match range.next(keep).await {
                Ok(Some(batch)) => {
                    let mut chunk = String::from(if first { "{\"records\":[" } else { "," });
                    let records: Vec<String> = batch.iter().map(|r| r.to_json(&name).to_string()).collect();
                    chunk.push_str(&records.join(","));
                    Some((Ok::<_, std::convert::Infallible>(Bytes::from(chunk)), Some((range, false))))
                }
                Ok(None) => Some((Ok(Bytes::from_static(if first { b"{\"records\":[]}" } else { b"]}" })), None)),
                Err(e) => {
                    // The status is sent: the answer ends short, which no JSON reader takes.
                    tracing::warn!(stream = %name, error = %e, "reading records failed mid-answer");
                    None
                }
            }
        }
    });
    ([(axum::http::header::CONTENT_TYPE, "application/json")], axum::body::Body::from_stream(chunks)).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRecordJson {
    key: Option<String>,
    value: Value,
    /// ms since the epoch or RFC 3339; default: now.
    timestamp: Option<Value>,
}

/// Appends a JSON array of `{key, value, timestamp}`; answers once they are durable. Each
/// record carries the user who posted it (`pacer.user`). One the caller may not write
/// refuses them all.
pub async fn append(
    State(state): State<Arc<WebState>>,
    Extension(Caller(who)): Extension<Caller>,
    Path(name): Path<String>,
    body: Result<Json<Vec<NewRecordJson>>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(items) = match body {
        Ok(b) => b,
        Err(e) => {
            return error(StatusCode::BAD_REQUEST, format!("expected a JSON array of {{key, value, timestamp}}: {e}"))
        }
    };
    let mut records = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let timestamp = match &item.timestamp {
            None | Some(Value::Null) => now_ms(),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(ms) => match pacer_core::check_event_time(ms) {
                    Ok(ms) => ms,
                    Err(e) => return error(StatusCode::BAD_REQUEST, format!("record {i}: {e}")),
                },
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("record {i}: timestamp {n} is not whole milliseconds"),
                    )
                }
            },
            Some(Value::String(s)) => match parse_time(s).and_then(pacer_core::check_event_time) {
                Ok(ms) => ms,
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("record {i}: timestamp: {e}")),
            },
            Some(other) => {
                return error(StatusCode::BAD_REQUEST, format!("record {i}: timestamp {other} is not a time"))
            }
        };
        let key = item.key.map(Bytes::from);
        if !state.access.auth.may_write_stream(&who, &name, key.as_deref()) {
            let what =
                if pacer_log::is_internal(&name) { "is one of Pacer's own streams" } else { "is not yours to write" };
            let key = key.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            return forbidden(format!("record {i}: {name} (key {key:?}) {what}"));
        }
        let mut record = NewRecord::new(timestamp, key, item.value.to_string());
        if let Some(user) = who.user() {
            record = record.with_header(pacer_core::header::USER, user.to_string());
        }
        records.push(record);
    }
    match state.log.append(&name, records).await {
        Ok(appended) => {
            let positions: Vec<Value> =
                appended.iter().map(|a| json!({"partition": a.partition, "offset": a.offset})).collect();
            Json(json!({ "appended": positions })).into_response()
        }
        Err(pacer_log::LogError::InvalidStreamName { name, reason }) => {
            error(StatusCode::BAD_REQUEST, format!("invalid stream name {name:?}: {reason}"))
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("not stored: {e}")),
    }
}
