//! Pacer's HTTP side: the embedded dashboard, the live feed, the API and `/metrics`.
//!
//! It reads the log for the dashboard, the live feed and queries; the one way it writes is
//! `POST /api/v1/streams/{name}/records`, an input like MQTT.

mod live;
mod records;

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pacer_log::Log;
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
        .route("/api/v1/streams/{name}/records", get(records::read).post(records::append))
        .route("/api/v1/live", get(live::live))
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

/// An API error as JSON: `{"error": "…"}`.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// Runs a pull query: `{"sql": "SELECT …"}` → `{"columns": […], "rows": [[…], …]}`, or a 400
/// with `{"error": "…"}` that says where the statement went wrong.
async fn sql(State(state): State<Arc<WebState>>, Json(request): Json<SqlRequest>) -> Response {
    match pacer_sql::pull::pull_query(state.log.as_ref(), &state.tables, &request.sql).await {
        Ok(result) => Json(result).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}
