//! The ways clients reach the broker besides plain TCP: TLS (rustls), WebSocket (subprotocol
//! `mqtt`, as MQTTX, browsers and paho's websocket transport use) and WebSocket over TLS.
//!
//! Each accepted connection ends up as a byte stream handed to the same session code.
//! WebSocket frames are bridged to a byte stream through an in-memory pipe, because MQTT
//! packets may span frames and a frame may carry several packets.

use std::path::Path;
use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::{connection, Shared};

/// Bytes a WebSocket bridge buffers each way.
const BRIDGE_BUFFER: usize = 64 * 1024;

/// A TLS acceptor from PEM files: the certificate chain and its private key.
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| anyhow::anyhow!("TLS certificate {}: {e}", cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "TLS certificate {}: no certificate in the file", cert.display());
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| anyhow::anyhow!("TLS key {}: {e}", key.display()))?;
    let config = ServerConfig::builder_with_provider(Arc::new(tokio_rustls::rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| anyhow::anyhow!("TLS configuration: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

pub async fn serve_tls(shared: Arc<Shared>, listener: TcpListener, acceptor: TlsAcceptor) -> anyhow::Result<()> {
    loop {
        let Some((socket, peer)) = crate::accept(&listener).await else { continue };
        let (shared, acceptor) = (shared.clone(), acceptor.clone());
        tokio::spawn(async move {
            match acceptor.accept(socket).await {
                Ok(stream) => connection::serve(stream, format!("tls:{peer}"), shared).await,
                Err(e) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
            }
        });
    }
}

/// Accepts WebSocket connections, inside TLS when `tls` is given (`wss://`).
pub async fn serve_websocket(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
) -> anyhow::Result<()> {
    loop {
        let Some((socket, peer)) = crate::accept(&listener).await else { continue };
        let (shared, tls) = (shared.clone(), tls.clone());
        tokio::spawn(async move {
            match tls {
                None => websocket_session(socket, format!("ws:{peer}"), shared).await,
                Some(acceptor) => match acceptor.accept(socket).await {
                    Ok(stream) => websocket_session(stream, format!("wss:{peer}"), shared).await,
                    Err(e) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
                },
            }
        });
    }
}

async fn websocket_session<S>(stream: S, peer: String, shared: Arc<Shared>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let ws = match tokio_tungstenite::accept_hdr_async(stream, negotiate_subprotocol).await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::info!(%peer, error = %e, "WebSocket handshake failed");
            return;
        }
    };
    let (session_side, bridge_side) = tokio::io::duplex(BRIDGE_BUFFER);
    tokio::spawn(bridge(ws, bridge_side));
    connection::serve(session_side, peer, shared).await;
}

/// Answers with the MQTT subprotocol when the client offers it (RFC 6455 §4.2.2).
#[allow(clippy::result_large_err)] // the callback's signature is tungstenite's
fn negotiate_subprotocol(request: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    let offers_mqtt = request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == "mqtt");
    if offers_mqtt {
        response.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
    }
    Ok(response)
}

/// Copies WebSocket binary frames into the pipe and pipe bytes out as binary frames, until
/// either side closes.
async fn bridge<S>(ws: tokio_tungstenite::WebSocketStream<S>, pipe: tokio::io::DuplexStream)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut ws_out, mut ws_in) = ws.split();
    let (mut pipe_in, mut pipe_out) = tokio::io::split(pipe);
    let inbound = async {
        while let Some(Ok(message)) = ws_in.next().await {
            let bytes = match message {
                Message::Binary(bytes) => bytes,
                Message::Close(_) => break,
                _ => continue, // text frames are not MQTT; pings are answered by tungstenite
            };
            if pipe_out.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = pipe_out.shutdown().await;
    };
    let outbound = async {
        let mut buf = vec![0u8; BRIDGE_BUFFER];
        loop {
            match pipe_in.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws_out.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = ws_out.close().await;
    };
    tokio::join!(inbound, outbound);
}
