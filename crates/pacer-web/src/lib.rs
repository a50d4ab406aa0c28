//! Pacer's HTTP side: the embedded dashboard, the live feed, the API and `/metrics`.
//!
//! Everything here reads the log; nothing writes it. The live feed (`/api/v1/live`) is a
//! Server-Sent Events stream of a log stream's records, batched per read, whose event ids
//! are the reader's positions (`partition:next_offset,…`): a client that reconnects with
//! `Last-Event-ID` continues right after the last record it saw, with no gap and no duplicate.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::Stream;
use pacer_log::{Log, Positions, StartAt};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::{json, Value};

/// What the dashboard needs to know about this deployment.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DashboardConfig {
    /// Stream of status records the map and the league table follow.
    pub live_stream: String,
    /// Map tile URL template; None uses the offline basemap only.
    pub tile_url: Option<String>,
    pub tile_attribution: String,
    /// Finish point, drawn as a flag.
    pub finish: Option<LatLon>,
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct LatLon {
    pub lat: f64,
    pub lon: f64,
}

pub struct WebState {
    pub log: Arc<dyn Log>,
    pub registry: Registry,
    pub dashboard: DashboardConfig,
    /// Courses as a GeoJSON FeatureCollection.
    pub courses: Value,
    /// Streams that are table changelogs: pull queries answer with their latest row per key.
    pub tables: HashSet<String>,
}

pub fn router(state: Arc<WebState>) -> Router {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/app.css", get(|| async { asset("text/css; charset=utf-8", APP_CSS) }))
        .route("/api/v1/config", get(config))
        .route("/api/v1/courses", get(courses))
        .route("/api/v1/streams", get(streams))
        .route("/api/v1/live", get(live))
        .route("/api/v1/sql", post(sql))
        .route("/metrics", get(metrics))
        .with_state(state)
}

const INDEX_HTML: &str = include_str!(concat!(env!("OUT_DIR"), "/web/index.html"));
const APP_JS: &str = include_str!(concat!(env!("OUT_DIR"), "/web/app.js"));
const APP_CSS: &str = include_str!(concat!(env!("OUT_DIR"), "/web/app.css"));

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

async fn config(State(state): State<Arc<WebState>>) -> Json<DashboardConfig> {
    Json(state.dashboard.clone())
}

async fn courses(State(state): State<Arc<WebState>>) -> Json<Value> {
    Json(state.courses.clone())
}

async fn streams(State(state): State<Arc<WebState>>) -> Json<Value> {
    Json(json!({ "streams": state.log.streams() }))
}

async fn metrics(State(state): State<Arc<WebState>>) -> Response {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &state.registry) {
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics failed: {e}")).into_response();
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}

#[derive(Debug, Deserialize)]
struct SqlRequest {
    sql: String,
}

/// Runs a pull query: `{"sql": "SELECT …"}` → `{"columns": […], "rows": [[…], …]}`, or a 400
/// with `{"error": "…"}` that says where the statement went wrong.
async fn sql(State(state): State<Arc<WebState>>, Json(request): Json<SqlRequest>) -> Response {
    match pacer_sql::pull::pull_query(state.log.as_ref(), &state.tables, &request.sql).await {
        Ok(result) => Json(result).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, Json(json!({ "error": e.to_string() }))).into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct LiveQuery {
    stream: String,
    /// `beginning`, `end` (default), `time:<ms>` or positions `partition:offset,…`.
    from: Option<String>,
}

async fn live(
    State(state): State<Arc<WebState>>,
    Query(q): Query<LiveQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, (StatusCode, String)> {
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<Positions>().ok())
        .map(StartAt::Positions);
    let start = match (resume, q.from.as_deref()) {
        (Some(start), _) => start,
        (None, None | Some("end")) => StartAt::End,
        (None, Some("beginning")) => StartAt::Beginning,
        (None, Some(other)) => match (other.strip_prefix("time:"), other.parse::<Positions>()) {
            (Some(ms), _) => StartAt::Timestamp(ms.parse().map_err(|_| {
                (StatusCode::BAD_REQUEST, format!("from={other:?}: expected time:<milliseconds since the epoch>"))
            })?),
            (None, Ok(positions)) => StartAt::Positions(positions),
            (None, Err(e)) => {
                let expected = "expected 'beginning', 'end', 'time:<ms>' or positions like '0:15,1:7'";
                return Err((StatusCode::BAD_REQUEST, format!("from={other:?}: {e}; {expected}")));
            }
        },
    };
    let reader = state.log.reader(&q.stream, start).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    let stream_name = q.stream.clone();
    let events = futures::stream::unfold(Some(reader), move |reader| {
        let stream_name = stream_name.clone();
        async move {
            let mut reader = reader?;
            match reader.next_batch().await {
                Ok(batch) => {
                    let records: Vec<Value> = batch.iter().map(|r| r.to_json(&stream_name)).collect();
                    let id = reader.positions().to_string();
                    let event = Event::default().event("records").id(id).data(Value::from(records).to_string());
                    Some((Ok(event), Some(reader)))
                }
                Err(e) => {
                    tracing::warn!(stream = %stream_name, error = %e, "live feed ended");
                    let event = Event::default().event("error").data(e.to_string());
                    Some((Ok(event), None))
                }
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
