//! Access control on the HTTP listener: the Host and Origin a request may come with, who is
//! asking (HTTP Basic, a bearer token from `pacer token create`, or the dashboard's session
//! cookie), and the dashboard's login, logout and who-am-I routes.
//!
//! Every request passes [`guard`] first. It refuses a Host not served (a DNS rebinding
//! page reaching a server on 127.0.0.1 names its own host) and an Origin other than the
//! host served (another site's page in the user's browser), then puts the [`Caller`] in the
//! request's extensions. Handlers ask the [`Authorizer`] what that caller may do.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use pacer_auth::{Authorizer, Identity, Refused};
use serde::Deserialize;
use serde_json::json;

use crate::{error, WebState};

/// The dashboard's session cookie.
const COOKIE: &str = "pacer_session";

/// Who may reach the HTTP listener, and how.
pub struct HttpAccess {
    pub auth: Arc<Authorizer>,
    /// Host names requests may be addressed to (lower case, no port); empty: any.
    pub hosts: Vec<String>,
    /// Served over TLS: the session cookie is `Secure`.
    pub tls: bool,
}

/// Who sent the request, as [`guard`] found out.
#[derive(Debug, Clone)]
pub struct Caller(pub Identity);

/// Routes anyone may reach: the dashboard's files, and logging in.
fn public(path: &str) -> bool {
    matches!(path, "/" | "/app.js" | "/app.css") || path.starts_with("/api/v1/auth/")
}

pub async fn guard(State(state): State<Arc<WebState>>, mut request: Request, next: Next) -> Response {
    let access = &state.access;
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| request.uri().authority().map(|a| a.to_string()));
    if let Some(host) = host.as_deref().filter(|h| !serves(&access.hosts, h)) {
        return error(StatusCode::FORBIDDEN, format!("this Pacer does not serve the host {host:?} ([http] hosts)"));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let same = match (origin.to_str().ok().and_then(|o| o.split_once("://")), &host) {
            (Some((_, authority)), Some(host)) => authority.eq_ignore_ascii_case(host),
            _ => false,
        };
        if !same {
            return error(
                StatusCode::FORBIDDEN,
                "requests from another site's pages are refused (Origin is not this host)",
            );
        }
    }
    match identify(&access.auth, headers) {
        Ok(identity) => {
            request.extensions_mut().insert(Caller(identity));
        }
        Err(_) if public(request.uri().path()) => {}
        Err(refused) => return unauthorized(refused, request.headers()),
    }
    next.run(request).await
}

/// Whether a request's Host (with or without its port) is one of `hosts` (empty: any).
pub(crate) fn serves(hosts: &[String], host: &str) -> bool {
    hosts.is_empty() || hosts.iter().any(|h| h.eq_ignore_ascii_case(host_name(host)))
}

/// `example.com` of `example.com:8080`, `::1` of `[::1]:8080`.
fn host_name(host: &str) -> &str {
    match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => host.split(':').next().unwrap_or(host),
    }
}

/// Credentials in this order: an Authorization header (Basic or Bearer), the session
/// cookie, none (anonymous, if allowed). A cookie that no longer counts (logged out,
/// password changed) leaves the caller anonymous where that is allowed.
fn identify(auth: &Authorizer, headers: &HeaderMap) -> Result<Identity, Refused> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| Refused::BadCredentials)?;
        let (scheme, credentials) = value.split_once(' ').ok_or(Refused::BadCredentials)?;
        return match scheme.to_ascii_lowercase().as_str() {
            "basic" => {
                let (user, password) = basic_credentials(credentials).ok_or(Refused::BadCredentials)?;
                auth.login(Some(&user), Some(password.as_bytes()))
            }
            "bearer" => auth.token(credentials.trim()),
            _ => Err(Refused::BadCredentials),
        };
    }
    match session_cookie(headers) {
        Some(cookie) => auth.session(&cookie).or_else(|refused| auth.anonymous().map_err(|_| refused)),
        None => auth.anonymous(),
    }
}

/// (user, password) of Basic credentials.
fn basic_credentials(encoded: &str) -> Option<(String, String)> {
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let (user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('=').map(str::to_string))
}

/// 401, with a Basic challenge for clients that are not a page's scripts (a page's fetch
/// would make the browser pop up its own login box over the dashboard's).
fn unauthorized(refused: Refused, headers: &HeaderMap) -> Response {
    let mut response = error(StatusCode::UNAUTHORIZED, refused.to_string());
    let from_script = headers.get("sec-fetch-mode").is_some_and(|m| m != "navigate");
    if !from_script {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"pacer\""));
    }
    response
}

/// 403, saying what was not allowed.
pub(crate) fn forbidden(message: impl Into<String>) -> Response {
    error(StatusCode::FORBIDDEN, message)
}

#[derive(Debug, Deserialize)]
pub struct Login {
    user: String,
    password: String,
}

/// `POST /api/v1/auth/login` `{"user", "password"}`: a session cookie (HttpOnly,
/// SameSite=Strict, signed) for the dashboard.
pub async fn login(State(state): State<Arc<WebState>>, Json(login): Json<Login>) -> Response {
    let auth = &state.access.auth;
    if !auth.checks_passwords() {
        return error(StatusCode::BAD_REQUEST, "this Pacer has no password file: there is nothing to log in to");
    }
    let identity = match auth.login(Some(&login.user), Some(login.password.as_bytes())) {
        Ok(identity) => identity,
        Err(refused) => return error(StatusCode::UNAUTHORIZED, refused.to_string()),
    };
    let Some(session) = auth.start_session(&identity) else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "could not start a session (see the server's log)");
    };
    let secure = if state.access.tls { "; Secure" } else { "" };
    let max_age = pacer_auth::SESSION_MS / 1000;
    let cookie = format!("{COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}");
    tracing::info!(user = %login.user, "logged in");
    ([(header::SET_COOKIE, cookie)], Json(who(auth, Some(&identity)))).into_response()
}

/// `POST /api/v1/auth/logout`: ends the session and clears its cookie.
pub async fn logout(State(state): State<Arc<WebState>>, headers: HeaderMap) -> Response {
    if let Some(cookie) = session_cookie(&headers) {
        state.access.auth.end_session(&cookie);
    }
    let cleared = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    ([(header::SET_COOKIE, cleared)], Json(json!({}))).into_response()
}

/// `GET /api/v1/auth/me`: who the caller is, and whether the dashboard must log in first.
pub async fn me(State(state): State<Arc<WebState>>, caller: Option<Extension<Caller>>) -> Json<serde_json::Value> {
    Json(who(&state.access.auth, caller.as_ref().map(|c| &c.0 .0)))
}

fn who(auth: &Authorizer, identity: Option<&Identity>) -> serde_json::Value {
    json!({
        "user": identity.and_then(Identity::user),
        "role": identity.map(Identity::role),
        "signed_in": identity.is_some_and(|i| i.user().is_some()),
        "login_required": identity.is_none(),
        "can_log_in": auth.checks_passwords(),
        "may_change_catalog": identity.is_some_and(|i| auth.may_change_catalog(i)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_lose_their_port() {
        assert_eq!(host_name("localhost:8080"), "localhost");
        assert_eq!(host_name("[::1]:8080"), "::1");
        assert_eq!(host_name("pacer.example.com"), "pacer.example.com");
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, "a=1; pacer_session=abc.1.n.t; b=2".parse().unwrap());
        assert_eq!(session_cookie(&headers).as_deref(), Some("abc.1.n.t"));
        assert_eq!(basic_credentials("YWxpY2U6czNjcjN0"), Some(("alice".into(), "s3cr3t".into())));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, failure_persistence: None, ..Default::default() })]

        /// Credentials and headers of any shape are parsed or refused, never a panic.
        #[test]
        fn any_header_is_read_or_refused(text in "\\PC{0,80}", raw in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            let _ = host_name(&text);
            let _ = basic_credentials(&text);
            let _ = basic_credentials(&String::from_utf8_lossy(&raw));
            let mut headers = HeaderMap::new();
            if let Ok(value) = axum::http::HeaderValue::from_bytes(&raw) {
                headers.insert(header::COOKIE, value.clone());
                headers.insert(header::AUTHORIZATION, value);
            }
            let _ = session_cookie(&headers);
            let auth = Authorizer::open_to_everyone();
            let _ = identify(&auth, &headers);
        }
    }
}
