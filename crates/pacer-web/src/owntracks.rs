//! OwnTracks HTTP mode: the apps POST the JSON they would publish over MQTT to `/pub`,
//! with HTTP Basic auth and the user and device in `X-Limit-U`/`X-Limit-D` (or `?u=&d=`).
//! Each POST is published as if it came over MQTT, on the topic the app would use, as the
//! user who sent it, so the same ingest rules, ACL and subscribers see it; the answer is a
//! JSON array (`[]`: no cards or commands pending).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use pacer_core::{now_ms, Publication};
use pacer_mqtt::PublishRefused;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::access::{forbidden, Caller};
use crate::{error, WebState};

#[derive(Debug, Deserialize)]
pub struct UserDevice {
    u: Option<String>,
    d: Option<String>,
}

/// The topic level after `owntracks/user/device` the apps publish each `_type` under.
fn subtopic(ty: Option<&str>) -> &'static str {
    match ty {
        Some("transition") => "/event",
        Some("waypoint") => "/waypoint",
        Some("waypoints") => "/waypoints",
        Some("card") => "/info",
        Some("status") => "/status",
        Some("steps") => "/step",
        Some("beacon") => "/beacon",
        Some("cmd") => "/cmd",
        _ => "",
    }
}

pub async fn publish(
    State(state): State<Arc<WebState>>,
    Extension(Caller(who)): Extension<Caller>,
    Query(q): Query<UserDevice>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(broker) = &state.broker else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "this Pacer takes no device input");
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let user = header("x-limit-u").or(q.u).or_else(|| who.user().map(str::to_string));
    let device = header("x-limit-d").or(q.d);
    let (Some(user), Some(device)) = (user, device) else {
        return error(StatusCode::BAD_REQUEST, "name the user and device: X-Limit-U and X-Limit-D, or ?u=&d=");
    };
    if [&user, &device].iter().any(|level| level.is_empty() || level.contains(['/', '+', '#'])) {
        return error(StatusCode::BAD_REQUEST, "user and device must be one topic level each (no /, + or #)");
    }
    // The apps POST nothing when a friend is deleted; there is nothing to keep.
    if body.is_empty() {
        return Json(json!([])).into_response();
    }
    let ty = serde_json::from_slice::<Value>(&body).ok().and_then(|v| v.get("_type")?.as_str().map(str::to_string));
    let publication = Publication {
        topic: format!("owntracks/{user}/{device}{}", subtopic(ty.as_deref())),
        payload: body,
        qos: 1,
        retain: false,
        client_id: format!("owntracks-http-{user}-{device}"),
        received_at: now_ms(),
        ..Default::default()
    };
    match broker.publish_as(&who, publication).await {
        Ok(()) => Json(json!([])).into_response(),
        Err(e @ PublishRefused::NotAuthorized(_)) => forbidden(e.to_string()),
        Err(e @ PublishRefused::NotStored(_)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}
