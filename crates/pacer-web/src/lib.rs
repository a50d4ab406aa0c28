//! Pacer's HTTP side: the embedded dashboard, the live feed, the API and `/metrics`.
//!
//! It reads the log for the dashboard, the live feed and queries. It takes input like MQTT
//! does: `POST /api/v1/streams/{name}/records`, and devices' own protocols (OwnTracks HTTP
//! mode at `/pub`; OsmAnd on its own port, `osmand::router`), published through the broker.
//! Every request passes `access::guard` first; each handler asks the `Authorizer` what its
//! caller may read, write or change.

pub mod access;
pub mod export;
mod live;
pub mod osmand;
mod owntracks;
pub mod recorder;
mod records;
pub mod serve;
pub mod tls;

use std::sync::Arc;

use access::{Caller, HttpAccess};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures::StreamExt;
use pacer_log::Log;
use pacer_sql::engine::{Caller as SqlCaller, Response as SqlResponse, SqlError, StatementOptions};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::{json, Value};

/// What the dashboard needs to know about this deployment.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DashboardConfig {
    /// Stream of status records the map and the league table follow.
    pub live_stream: String,
    /// Streams of events (`who`/`device`, `event`, `at`) the alerts feed shows.
    pub alert_streams: Vec<String>,
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
    /// Zones as a GeoJSON FeatureCollection (circles: a point with `radius_m`).
    pub zones: Value,
    /// The SQL engine behind `POST /api/v1/sql`.
    pub engine: Arc<pacer_sql::Engine>,
    /// Publishes what devices POST (OwnTracks HTTP mode); None: no device input here.
    pub broker: Option<pacer_mqtt::Broker>,
    /// Last locations for the OwnTracks Recorder API (`recorder::LastLocations::follow`).
    pub recorder: Arc<recorder::LastLocations>,
    /// Streams kept as Parquet segments, shown with the streams.
    pub history: Option<pacer_history::HistoryStore>,
    /// Who may reach this listener, and what each caller may do.
    pub access: HttpAccess,
    /// Streams open per client.
    pub streams: Arc<serve::StreamSlots>,
}

pub fn router(state: Arc<WebState>) -> Router {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/app.css", get(|| async { asset("text/css; charset=utf-8", APP_CSS) }))
        .route("/api/v1/config", get(config))
        .route("/api/v1/courses", get(courses))
        .route("/api/v1/zones", get(zones))
        .route("/api/v1/streams", get(streams))
        .route("/api/v1/streams/{name}/records", get(records::read).post(records::append))
        .route("/api/v1/live", get(live::live))
        .route("/api/v1/sql", post(sql))
        .route("/pub", post(owntracks::publish))
        .route("/api/0/list", get(recorder::list).post(recorder::list))
        .route("/api/0/last", get(recorder::last).post(recorder::last))
        .route("/api/0/locations", get(recorder::locations).post(recorder::locations))
        .route("/ws/last", get(recorder::websocket))
        .route("/metrics", get(metrics))
        .route("/api/v1/auth/login", post(access::login))
        .route("/api/v1/auth/logout", post(access::logout))
        .route("/api/v1/auth/me", get(access::me))
        .layer(axum::middleware::from_fn_with_state(state.clone(), access::guard))
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

async fn zones(State(state): State<Arc<WebState>>) -> Json<Value> {
    Json(state.zones.clone())
}

/// The streams, and for those kept as Parquet segments what the segments hold.
async fn streams(State(state): State<Arc<WebState>>) -> Json<Value> {
    let mut streams = Vec::new();
    for info in state.log.streams() {
        let mut stream = json!(info);
        if let Some(history) = state.history.as_ref().and_then(|h| history_of(h, &info.name)) {
            stream["history"] = history;
        }
        streams.push(stream);
    }
    Json(json!({ "streams": streams }))
}

/// Segments, rows, bytes and time range of a stream's Parquet history; None without any.
fn history_of(store: &pacer_history::HistoryStore, stream: &str) -> Option<Value> {
    let segments = match store.segments(stream) {
        Ok(s) if !s.is_empty() => s,
        Ok(_) => return None,
        Err(e) => return Some(json!({ "error": e.to_string() })),
    };
    let bytes: u64 = segments.iter().filter_map(|s| std::fs::metadata(&s.path).ok()).map(|m| m.len()).sum();
    Some(json!({
        "segments": segments.len(),
        "rows": segments.iter().map(|s| s.rows).sum::<u64>(),
        "bytes": bytes,
        "first_timestamp": segments.iter().map(|s| s.min_time).min(),
        "last_timestamp": segments.iter().map(|s| s.max_time).max(),
        "dir": store.dir().join(stream),
    }))
}

async fn metrics(State(state): State<Arc<WebState>>, Extension(Caller(who)): Extension<Caller>) -> Response {
    if !state.access.auth.may_read_everything(&who) {
        return access::forbidden("/metrics is for admins and readers");
    }
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &state.registry) {
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics failed: {e}")).into_response();
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}

#[derive(Debug, Deserialize)]
struct SqlRequest {
    sql: String,
    /// ksqlDB clients send these as `streamsProperties`.
    #[serde(default, alias = "streamsProperties")]
    properties: StatementOptions,
    /// A pull query's rows as `json` (default), `csv`, `parquet`, `geojson` or `gpx`.
    #[serde(default)]
    format: Option<String>,
}

/// An API error as JSON: `{"error": "…"}`.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// Runs statements: `{"sql": "…"}`. A pull query, SHOW or DESCRIBE answers
/// `{"columns": […], "rows": [[…], …]}`, DDL `{"message": "…"}`, several statements
/// `{"results": [those]}`. A push query (`EMIT CHANGES`) streams NDJSON until the client
/// leaves: a `{"columns": […]}` line, then one JSON object per row. A bad statement gets a
/// 400 with `{"error": "…"}` naming the line and column or the name that is wrong.
async fn sql(
    State(state): State<Arc<WebState>>,
    Extension(Caller(who)): Extension<Caller>,
    client: Option<Extension<serve::ClientAddr>>,
    Json(request): Json<SqlRequest>,
) -> Response {
    let format = match request.format.as_deref().map(str::parse::<export::Format>).transpose() {
        Ok(f) => f.unwrap_or(export::Format::Json),
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let auth = &state.access.auth;
    let caller = SqlCaller { may_change_catalog: auth.may_change_catalog(&who), reads: auth.record_filter(&who) };
    let responses = match state.engine.execute_as(&request.sql, &request.properties, &caller).await {
        Ok(r) => r,
        Err(e @ SqlError::Forbidden(_)) => return access::forbidden(e.to_string()),
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    if format != export::Format::Json {
        // A file of one query's rows: what a pull (history) query answers.
        let [SqlResponse::Rows(result)] = responses.as_slice() else {
            return error(StatusCode::BAD_REQUEST, "format: csv, parquet, geojson and gpx take one pull query");
        };
        let rows: Vec<Vec<Value>> = result.rows.clone();
        return match format.write(&result.columns, &rows) {
            Ok(body) => ([(header::CONTENT_TYPE, format.content_type())], body).into_response(),
            Err(e) => error(StatusCode::BAD_REQUEST, e),
        };
    }
    let mut bodies = Vec::new();
    for response in responses {
        match response {
            SqlResponse::Message(message) => bodies.push(json!({ "message": message })),
            SqlResponse::Rows(result) => bodies.push(json!(result)),
            SqlResponse::Push { columns, rows } => {
                if !bodies.is_empty() {
                    return error(StatusCode::BAD_REQUEST, "a push query (EMIT CHANGES) must be the only statement");
                }
                return match state.streams.take(client.map(|c| c.0 .0)) {
                    Ok(slot) => push_stream(columns, rows, slot),
                    Err(refused) => refused.into_response(),
                };
            }
        }
    }
    match bodies.len() {
        1 => Json(bodies.pop().unwrap()).into_response(),
        _ => Json(json!({ "results": bodies })).into_response(),
    }
}

fn push_stream(
    columns: Vec<String>,
    rows: tokio::sync::mpsc::Receiver<serde_json::Map<String, Value>>,
    slot: Option<serve::StreamSlot>,
) -> Response {
    let header = futures::stream::once(async move { json!({ "columns": columns }) });
    // The slot goes with the rows: free again when the client leaves.
    let rows = futures::stream::unfold((rows, slot), |(mut rows, slot)| async move {
        rows.recv().await.map(|r| (Value::Object(r), (rows, slot)))
    });
    let lines = header.chain(rows).map(|v| Ok::<_, std::convert::Infallible>(format!("{v}\n")));
    ([(header::CONTENT_TYPE, "application/x-ndjson")], axum::body::Body::from_stream(lines)).into_response()
}
