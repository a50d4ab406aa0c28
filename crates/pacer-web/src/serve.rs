//! Serving HTTP with the limits a server open to a network needs, which `axum::serve` does
//! not set: at most `max_connections` at once (one more gets a 503 and is closed; those
//! already open go on), a deadline for each request's headers (a client that connects and
//! sends nothing, or leaves a keep-alive connection idle, is let go), and the client's
//! address on each request, for limits per client.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tower::ServiceExt;

/// How much one HTTP listener takes.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub max_connections: usize,
    /// For a request's headers to arrive, from the connection's start or its last response.
    pub header_timeout: Duration,
}

/// The address a request came from (in its extensions).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// Streams (SSE feeds, WebSockets, push queries) open per client address, at most `max`:
/// one client cannot hold every reader and connection by itself.
pub struct StreamSlots {
    max: usize,
    open: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    /// All clients' streams together.
    total: prometheus_client::metrics::gauge::Gauge,
}

/// A client has as many streams open as it may: answered 429.
#[derive(Debug)]
pub struct TooManyStreams(String);

impl axum::response::IntoResponse for TooManyStreams {
    fn into_response(self) -> axum::response::Response {
        crate::error(axum::http::StatusCode::TOO_MANY_REQUESTS, self.0)
    }
}

/// One open stream of a client; the slot is free again when it is dropped.
pub struct StreamSlot {
    slots: Arc<StreamSlots>,
    ip: std::net::IpAddr,
}

impl StreamSlots {
    pub fn new(max: usize, total: prometheus_client::metrics::gauge::Gauge) -> Arc<StreamSlots> {
        Arc::new(StreamSlots { max, open: Default::default(), total })
    }

    /// A slot for a stream of the client at `addr`, or the refusal to answer with.
    pub fn take(self: &Arc<Self>, addr: Option<SocketAddr>) -> Result<Option<StreamSlot>, TooManyStreams> {
        let Some(addr) = addr else { return Ok(None) };
        let mut open = self.open.lock().expect("not poisoned");
        let count = open.entry(addr.ip()).or_insert(0);
        if *count >= self.max {
            return Err(TooManyStreams(format!(
                "{} streams open from {} ([http] max_streams_per_client)",
                self.max,
                addr.ip()
            )));
        }
        *count += 1;
        self.total.inc();
        Ok(Some(StreamSlot { slots: self.clone(), ip: addr.ip() }))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().expect("not poisoned");
        if let Some(count) = open.get_mut(&self.ip) {
            self.slots.total.dec();
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// What a connection past the limit is told.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n\
content-length: 61\r\nretry-after: 1\r\n\r\n{\"error\":\"too many connections: [http] max_connections open\"}";

/// What the HTTP listeners report in /metrics: connections open against the limit, refused,
/// and streams open.
#[derive(Debug, Clone, Default)]
pub struct HttpMetrics {
    pub connections: prometheus_client::metrics::gauge::Gauge,
    pub connections_max: prometheus_client::metrics::gauge::Gauge,
    pub refused: prometheus_client::metrics::counter::Counter,
    pub streams: prometheus_client::metrics::gauge::Gauge,
}

impl HttpMetrics {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register("pacer_http_connections", "Open HTTP connections", self.connections.clone());
        registry.register("pacer_http_connections_max", "[http] max_connections", self.connections_max.clone());
        registry.register(
            "pacer_http_connections_refused",
            "HTTP connections answered 503 because [http] max_connections were open",
            self.refused.clone(),
        );
        registry.register("pacer_http_streams", "Open live feeds, WebSockets and push queries", self.streams.clone());
    }
}

/// Serves `router` on `listener` until the task is dropped. Refused connections are counted
/// and logged at most every ten seconds.
pub async fn serve<L>(mut listener: L, router: Router, limits: HttpLimits, metrics: HttpMetrics)
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    metrics.connections_max.set(limits.max_connections as i64);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let refusals = pacer_core::Occasionally::new(10_000);
    // HTTP/1.1 only: hyper's HTTP/1-or-2 detection reads the first bytes with no deadline,
    // so a client that sends nothing would hold its connection for ever. (Browsers speak
    // HTTP/2 only over TLS with ALPN, which Pacer's TLS does not offer.)
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    loop {
        let (io, addr) = listener.accept().await;
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.refused.inc();
            if let Some(count) = refusals.tick() {
                tracing::warn!(
                    refused = count,
                    max = limits.max_connections,
                    "HTTP connections refused: [http] max_connections open"
                );
            }
            tokio::spawn(async move {
                let mut io = io;
                let _ = tokio::time::timeout(Duration::from_secs(1), io.write_all(BUSY)).await;
                let _ = io.shutdown().await;
            });
            continue;
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ClientAddr(addr));
            let router = router.clone();
            async move {
                Ok::<_, Infallible>(
                    router.oneshot(request.map(axum::body::Body::new)).await.unwrap_or_else(|e| match e {}),
                )
            }
        });
        let (builder, open) = (builder.clone(), metrics.connections.clone());
        open.inc();
        tokio::spawn(async move {
            if let Err(error) = builder.serve_connection(TokioIo::new(io), service).with_upgrades().await {
                tracing::debug!(%addr, %error, "HTTP connection ended");
            }
            open.dec();
            drop(slot);
        });
    }
}
