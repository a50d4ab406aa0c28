//! Wiring: the one place that knows every stage. Locks the data directory, opens the log,
//! starts the broker with the ingest rules as its sink, the SQL engine with its queries and
//! the HTTP server, every listener behind the same users and ACL.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use pacer_auth::Authorizer;
use pacer_history::{Compactor, HistoryStore};
use pacer_ingest::{DeviceStatus, Ingest, Relay, StreamPublisher};
use pacer_kafka::{KafkaLog, NewTopics};
use pacer_log::{EmbeddedLog, EmbeddedLogConfig, Log};
use pacer_mqtt::Broker;
use pacer_sql::{Course, Engine, Geometry};
use pacer_web::access::HttpAccess;
use pacer_web::serve::HttpLimits;
use pacer_web::{DashboardConfig, LatLon, WebState};
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::config::{is_loopback, Config, ConnectionBudget, LogBackend, BUILTIN_COURSE, BUILTIN_SQL};

/// The table the dashboard shows: the league table of the race queries.
const LEAGUE_TABLE: &str = "race_status";
/// Around the end of the built-in course.
const BUILTIN_ZONE: &str = "finish-area";
const BUILTIN_ZONE_RADIUS_M: f64 = 40.0;

/// A running Pacer: its bound addresses and the tasks that make it up.
pub struct Server {
    pub mqtt_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub tls_addr: Option<SocketAddr>,
    pub websocket_addr: Option<SocketAddr>,
    pub wss_addr: Option<SocketAddr>,
    pub osmand_addr: Option<SocketAddr>,
    /// The HTTP listener speaks HTTPS.
    pub https: bool,
    tasks: JoinSet<anyhow::Result<()>>,
    /// Held while this process runs: no other Pacer opens the same data directory.
    _lock: std::fs::File,
    /// Says, while it exists, that this node runs (see [`RunMarker`]).
    running: Option<RunMarker>,
    /// Taken from start: a SIGTERM right after the ready line must stop cleanly too.
    terminate: tokio::signal::unix::Signal,
}

impl Server {
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        config.check_exposure()?;
        let lock = lock_data_dir(&config.log.dir)?;
        let auth = Arc::new(Authorizer::open(&config.auth_config().map_err(anyhow::Error::msg)?)?);
        let mut registry = Registry::default();
        let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("listening for SIGTERM")?;
        let running = match config.log.backend {
            LogBackend::Kafka => Some(RunMarker::place(&config.log.dir)?),
            LogBackend::Embedded => None,
        };
        let last_run_crashed = running.as_ref().is_some_and(|r| r.last_run_crashed);
        let log = match open_log(&config, last_run_crashed, &mut registry) {
            Ok(log) => log,
            Err(e) => {
                // Nothing joined a group: the marker says what it said before.
                if let Some(marker) = running.filter(|r| !r.last_run_crashed) {
                    marker.remove();
                }
                return Err(e);
            }
        };

        let rules = if config.ingest.is_empty() { pacer_ingest::default_rules() } else { config.ingest.clone() };
        let devices =
            DeviceStatus::open(config.device_status.config(), log.clone()).await.context("restoring device status")?;
        let ingest = Arc::new(Ingest::new(&rules, log.clone())?.with_device_status(devices.clone()));
        let fd_limit = crate::config::raise_fd_limit();
        let budget = ConnectionBudget::from_fd_limit(fd_limit);
        let broker_config = config.mqtt.broker(&budget);
        let http_limits = HttpLimits {
            max_connections: config.http.max_connections.unwrap_or(budget.http).max(1),
            header_timeout: std::time::Duration::from_secs_f64(config.http.header_timeout_s.max(0.1)),
        };
        tracing::info!(
            fd_limit,
            mqtt = broker_config.max_connections,
            http = http_limits.max_connections,
            "connections taken at most"
        );
        let http_metrics = pacer_web::serve::HttpMetrics::default();
        http_metrics.register(&mut registry);
        registry.register(
            "pacer_sql_query_bytes_held",
            "Bytes of rows the pull and history queries running now hold; each is held to [sql] query_bytes",
            pacer_sql::engine::held_bytes(),
        );
        // On a shared log other nodes' clients publish too: relay between the nodes, and
        // keep each persistent session on one node.
        let node = config.mqtt.node_name();
        let relay = config.mqtt.relay.then(|| Arc::new(Relay::new(ingest.clone(), log.clone(), &node)));
        let store = Arc::new(match &relay {
            Some(relay) => pacer_ingest::LogBrokerStore::shared(log.clone(), relay.clone()),
            None => pacer_ingest::LogBrokerStore::new(log.clone()),
        });
        let sink: Arc<dyn pacer_mqtt::PublishSink> = match &relay {
            Some(relay) => relay.clone(),
            None => ingest,
        };
        let broker = Broker::start(broker_config, auth.clone(), sink, store.clone())
            .await
            .context("restoring the broker's state")?;
        let following_sessions = store.follow(broker.clone());
        let relaying = match relay {
            Some(relay) => Some(relay.delivery(broker.clone()).await.context("joining the MQTT relay")?),
            None => None,
        };
        broker.register_metrics(&mut registry);
        broker.observe_sessions(devices.clone());
        // Placed before the queries start, so nothing they write is missed.
        let mut publishing = Vec::new();
        for (i, rule) in config.publish.iter().enumerate() {
            let publisher =
                StreamPublisher::from_config(rule).map_err(|e| anyhow::anyhow!("[[publish]] #{}: {e}", i + 1))?;
            let task = publisher.start(log.clone(), broker.clone()).await;
            publishing
                .push((rule.stream.clone(), task.with_context(|| format!("publishing {} to MQTT", rule.stream))?));
        }

        let geometry = Arc::new(load_geometry(&config)?);
        let history = HistoryStore::open(config.log.dir.join(".history")).context("opening the Parquet history")?;
        let mut compactors = Vec::new();
        for policy in &config.history {
            let what = || format!("[[history]] stream {:?}: parquet", policy.stream);
            if let Some(compaction) = policy.parquet().map_err(|e| anyhow::anyhow!("{}: {e}", what()))? {
                compactors.push(Compactor::new(history.clone(), log.clone(), compaction).with_context(what)?);
            }
        }
        let engine = Engine::start(log.clone(), Some(history.clone()), geometry.clone(), config.sql.limits())
            .await
            .context("loading the SQL catalog")?;
        match &config.sql.file {
            Some(file) => {
                let text =
                    std::fs::read_to_string(file).with_context(|| format!("[sql] file: reading {}", file.display()))?;
                engine.execute_file(&text).await.with_context(|| format!("[sql] file {}", file.display()))?;
            }
            None => engine.execute_file(BUILTIN_SQL).await.context("the built-in race queries")?,
        }
        for policy in &config.history {
            let what = || format!("[[history]] stream {:?}: downsampling", policy.stream);
            if let Some(sql) = policy.downsampling_sql().map_err(|e| anyhow::anyhow!("{}: {e}", what()))? {
                engine.execute_file(&sql).await.with_context(what)?;
            }
        }

        let features: Vec<_> = geometry
            .courses()
            .map(|c| {
                json!({"type": "Feature", "properties": {"name": c.name, "length_m": c.length_m()},
                       "geometry": {"type": "LineString", "coordinates": c.lon_lat()}})
            })
            .collect();
        let finish = geometry.courses().next().map(|c| {
            let (lon, lat) = c.end();
            LatLon { lat, lon }
        });
        let web = Arc::new(WebState {
            log: log.clone(),
            registry,
            dashboard: DashboardConfig {
                live_stream: LEAGUE_TABLE.into(),
                alert_streams: config.http.alert_streams.clone(),
                tile_url: Some(config.http.tile_url.clone()).filter(|u| !u.is_empty()),
                tile_attribution: config.http.tile_attribution.clone(),
                finish,
            },
            courses: json!({"type": "FeatureCollection", "features": features}),
            zones: json!({"type": "FeatureCollection", "features": geometry.zones().map(|z| z.to_geojson()).collect::<Vec<_>>()}),
            engine,
            broker: Some(broker.clone()),
            recorder: pacer_web::recorder::LastLocations::follow(log.clone()),
            history: Some(history),
            streams: pacer_web::serve::StreamSlots::new(
                config.http.max_streams_per_client.max(1),
                http_metrics.streams.clone(),
            ),
            access: HttpAccess {
                auth: auth.clone(),
                hosts: served_hosts(&config.http.hosts, &config.http.listen),
                tls: config.http.tls_cert.is_some(),
            },
        });

        let mqtt_listener = TcpListener::bind(&config.mqtt.listen)
            .await
            .with_context(|| format!("MQTT listener: cannot bind {}", config.mqtt.listen))?;
        let http_listener = TcpListener::bind(&config.http.listen)
            .await
            .with_context(|| format!("HTTP listener: cannot bind {}", config.http.listen))?;
        let mqtt_addr = mqtt_listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;

        let mut tasks = JoinSet::new();
        let mut tls_addr = None;
        if !config.mqtt.tls_listen.is_empty() {
            let (Some(cert), Some(key)) = (&config.mqtt.tls_cert, &config.mqtt.tls_key) else {
                anyhow::bail!("[mqtt] tls_listen needs tls_cert and tls_key (PEM files)");
            };
            let listener = TcpListener::bind(&config.mqtt.tls_listen)
                .await
                .with_context(|| format!("MQTT TLS listener: cannot bind {}", config.mqtt.tls_listen))?;
            tls_addr = Some(listener.local_addr()?);
            let serving = broker.serve_tls(listener, cert, key)?;
            tasks.spawn(async move { serving.await.context("MQTT TLS server") });
        }
        // MQTT over WebSocket, plain and inside TLS: the same listener code.
        let mut websocket_addrs = [None, None];
        for (slot, (listen, secure)) in
            [(&config.mqtt.websocket_listen, false), (&config.mqtt.wss_listen, true)].into_iter().enumerate()
        {
            if listen.is_empty() {
                continue;
            }
            let tls = match (secure, &config.mqtt.tls_cert, &config.mqtt.tls_key) {
                (false, _, _) => None,
                (true, Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
                (true, _, _) => anyhow::bail!("[mqtt] wss_listen needs tls_cert and tls_key (PEM files)"),
            };
            let what = if secure { "MQTT secure WebSocket" } else { "MQTT WebSocket" };
            let listener =
                TcpListener::bind(listen).await.with_context(|| format!("{what} listener: cannot bind {listen}"))?;
            websocket_addrs[slot] = Some(listener.local_addr()?);
            let serving = broker.serve_websocket(listener, tls)?;
            tasks.spawn(async move { serving.await.with_context(|| format!("{what} server")) });
        }
        let [websocket_addr, wss_addr] = websocket_addrs;
        let mut osmand_addr = None;
        if !config.osmand.listen.is_empty() {
            let listen = &config.osmand.listen;
            let listener =
                TcpListener::bind(listen).await.with_context(|| format!("OsmAnd listener: cannot bind {listen}"))?;
            osmand_addr = Some(listener.local_addr()?);
            let devices = pacer_web::osmand::OsmandDevices {
                auth: auth.clone(),
                listed: config.osmand.devices.clone(),
                hosts: served_hosts(&config.http.hosts, listen),
            };
            let osmand = pacer_web::osmand::router(broker.clone(), devices);
            let (limits, metrics) = (http_limits.clone(), http_metrics.clone());
            tasks.spawn(async move {
                pacer_web::serve::serve(without_nagle(listener), osmand, limits, metrics).await;
                Ok(())
            });
        }
        for compactor in compactors {
            tasks.spawn(async move {
                compactor.run().await;
                Ok(())
            });
        }
        for (stream, task) in publishing {
            tasks.spawn(async move { task.await.with_context(|| format!("publishing {stream} to MQTT")) });
        }
        if let Some(following) = following_sessions {
            tasks.spawn(async move { following.await.context("following the sessions of the other nodes") });
        }
        if let Some(relaying) = relaying {
            tasks.spawn(async move { relaying.await.context("MQTT relay between nodes") });
        }
        tasks.spawn(async move { broker.serve(mqtt_listener).await.context("MQTT server") });
        tasks.spawn(async move { devices.run().await.context("device status") });
        let https = match (&config.http.tls_cert, &config.http.tls_key) {
            (Some(cert), Some(key)) => {
                let acceptor = pacer_mqtt::tls_acceptor(cert, key).context("[http] tls_cert, tls_key")?;
                let listener = pacer_web::tls::TlsListener::new(http_listener, acceptor)?;
                let http = pacer_web::serve::serve(listener, pacer_web::router(web), http_limits, http_metrics);
                tasks.spawn(async move {
                    http.await;
                    Ok(())
                });
                true
            }
            (None, None) => {
                let http = pacer_web::serve::serve(
                    without_nagle(http_listener),
                    pacer_web::router(web),
                    http_limits,
                    http_metrics,
                );
                tasks.spawn(async move {
                    http.await;
                    Ok(())
                });
                false
            }
            _ => anyhow::bail!("[http] HTTPS needs both tls_cert and tls_key (PEM files)"),
        };
        let log = match config.log.backend {
            LogBackend::Embedded => format!("embedded in {}", config.log.dir.display()),
            LogBackend::Kafka => format!("kafka at {}", config.log.kafka.brokers),
        };
        tracing::info!(%mqtt_addr, %http_addr, log, "pacer started");
        Ok(Server {
            mqtt_addr,
            http_addr,
            tls_addr,
            websocket_addr,
            wss_addr,
            osmand_addr,
            https,
            tasks,
            _lock: lock,
            running,
            terminate,
        })
    }

    /// Waits until a part stops (which is an error: they run forever), Ctrl-C or SIGTERM
    /// (how systemd, Docker and Kubernetes stop a service).
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        let terminate = &mut self.terminate;
        let signal = tokio::select! {
            Some(result) = self.tasks.join_next() => {
                result.context("a Pacer task panicked")??;
                anyhow::bail!("a Pacer task stopped unexpectedly")
            }
            _ = tokio::signal::ctrl_c() => "Ctrl-C",
            _ = terminate.recv() => "SIGTERM",
        };
        tracing::info!(signal, "stopping");
        if let Some(running) = self.running.take() {
            running.remove();
        }
        Ok(())
    }

    /// The line tests and scripts wait for: the server is ready to take connections.
    pub fn ready_line(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        let mut line = format!("pacer ready: mqtt={} http={scheme}://{}", self.mqtt_addr, self.http_addr);
        if let Some(addr) = self.tls_addr {
            line.push_str(&format!(" mqtts={addr}"));
        }
        if let Some(addr) = self.websocket_addr {
            line.push_str(&format!(" ws={addr}"));
        }
        if let Some(addr) = self.wss_addr {
            line.push_str(&format!(" wss={addr}"));
        }
        if let Some(addr) = self.osmand_addr {
            line.push_str(&format!(" osmand=http://{addr}"));
        }
        line
    }
}

/// Takes the data directory for this process (an flock on `pacer.lock`, released when the
/// process ends however it ends): two Pacers appending to one log would corrupt it.
fn lock_data_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating the data directory {}", dir.display()))?;
    let path = dir.join("pacer.lock");
    let writable = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path);
    // On a data directory mounted read-only the lock still holds: flock needs no write access.
    let (mut file, writable) = match writable {
        Ok(file) => (file, true),
        Err(e) => match std::fs::File::open(&path) {
            Ok(file) => (file, false),
            Err(_) => return Err(e).with_context(|| format!("opening {}", path.display())),
        },
    };
    if let Err(e) = file.try_lock() {
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        let holder = holder.trim();
        return Err(match e {
            std::fs::TryLockError::WouldBlock => anyhow::anyhow!(
                "another Pacer{} is running on the data directory {}: stop it, or give this one another --data-dir",
                if holder.is_empty() { String::new() } else { format!(" (process {holder})") },
                dir.display()
            ),
            std::fs::TryLockError::Error(e) => anyhow::anyhow!("locking {}: {e}", path.display()),
        });
    }
    if writable {
        use std::io::{Seek, Write};
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())?;
    }
    Ok(file)
}

/// The Host names an HTTP listener on `listen` answers to: as configured, else the loopback
/// names when it listens on loopback (a DNS rebinding page names its own host), else any.
fn served_hosts(configured: &[String], listen: &str) -> Vec<String> {
    if !configured.is_empty() {
        return configured.iter().map(|h| h.to_ascii_lowercase()).collect();
    }
    if is_loopback(listen) {
        return ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
    }
    Vec::new()
}

/// The configured courses and zones (the built-in race course and its finish area unless
/// configured ones take their names), and the tracking settings.
fn load_geometry(config: &Config) -> anyhow::Result<Geometry> {
    let mut geometry = Geometry::default();
    geometry.max_speed_kmh = config.tracking.max_speed_kmh;
    if !config.course.iter().any(|c| c.name.eq_ignore_ascii_case(BUILTIN_COURSE)) {
        geometry.add_course(Course::from_geojson(BUILTIN_COURSE, pacer_sim::SYDNEY_HALF_COURSE)?);
    }
    for c in &config.course {
        let course =
            Course::from_file(&c.name, &c.file, &c.only).with_context(|| format!("[[course]] {:?}", c.name))?;
        geometry.add_course(course);
    }
    if !config.zone.iter().any(|z| z.name.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(BUILTIN_ZONE))) {
        let (lon, lat) = geometry.course(BUILTIN_COURSE).map_err(anyhow::Error::msg)?.end();
        geometry.add_zone(pacer_sql::Zone::circle(BUILTIN_ZONE, lat, lon, BUILTIN_ZONE_RADIUS_M));
    }
    for (i, z) in config.zone.iter().enumerate() {
        let what = z.name.clone().unwrap_or_else(|| format!("#{}", i + 1));
        for zone in z.zones().with_context(|| format!("[[zone]] {what}"))? {
            geometry.add_zone(zone);
        }
    }
    Ok(geometry)
}

/// How long the `[[history]]` policies keep their streams (ms).
fn stream_retention(config: &Config) -> anyhow::Result<std::collections::HashMap<String, u64>> {
    let mut kept = std::collections::HashMap::new();
    for policy in &config.history {
        if let Some(ms) =
            policy.keep_ms().map_err(|e| anyhow::anyhow!("[[history]] stream {:?}: {e}", policy.stream))?
        {
            kept.insert(policy.stream.clone(), ms);
        }
    }
    Ok(kept)
}

/// The log `[log] backend` names; nothing past this point knows which one runs.
fn open_log(config: &Config, last_run_crashed: bool, registry: &mut Registry) -> anyhow::Result<Arc<dyn Log>> {
    let log = &config.log;
    Ok(match log.backend {
        LogBackend::Embedded => {
            let mut embedded = EmbeddedLogConfig::new(&log.dir);
            embedded.fsync = log.fsync;
            embedded.partitions = log.partitions;
            embedded.segment_bytes = log.segment_bytes;
            embedded.segment_ms = Some(log.segment_ms);
            embedded.retention_ms = log.retention_ms;
            embedded.retention_bytes = log.retention_bytes;
            embedded.stream_retention_ms = stream_retention(config)?;
            let embedded =
                EmbeddedLog::open(embedded).with_context(|| format!("opening the log in {}", log.dir.display()))?;
            embedded.register_metrics(registry);
            Arc::new(embedded)
        }
        LogBackend::Kafka => Arc::new(
            KafkaLog::connect(
                pacer_kafka::KafkaConfig { last_run_crashed, ..log.kafka.clone() },
                NewTopics {
                    partitions: log.partitions,
                    retention_ms: log.retention_ms,
                    retention_bytes: log.retention_bytes,
                    stream_retention_ms: stream_retention(config)?,
                },
            )
            .context("[log] backend = \"kafka\"")?,
        ),
    })
}

/// A file in the data directory that exists while the node runs: found at start, it says the
/// last run ended without stopping cleanly (killed, crashed), so its consumer group
/// memberships are still on the cluster until they time out.
struct RunMarker {
    path: PathBuf,
    last_run_crashed: bool,
}

impl RunMarker {
    fn place(dir: &Path) -> anyhow::Result<RunMarker> {
        let path = dir.join("pacer.running");
        let last_run_crashed = path.exists();
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(&path, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing {}", path.display()))?;
        if last_run_crashed {
            tracing::info!(marker = %path.display(), "the last run did not stop cleanly");
        }
        Ok(RunMarker { path, last_run_crashed })
    }

    fn remove(self) {
        if let Err(error) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), %error, "removing the run marker");
        }
    }
}

/// Rows of a push query, live-feed events and WebSocket frames are small writes that must go
/// out at once: with Nagle's algorithm on, each one after another waits for the client's
/// delayed acknowledgement of the last (up to 40 ms). MQTT connections have it off too.
fn without_nagle(listener: TcpListener) -> impl axum::serve::Listener<Addr = std::net::SocketAddr> {
    use axum::serve::ListenerExt;
    listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY could not be set");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::RunMarker;

    #[test]
    fn a_run_that_did_not_remove_its_marker_is_known_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunMarker::place(dir.path()).unwrap();
        assert!(!first.last_run_crashed, "a first start");
        // Killed: the marker stays.
        assert!(RunMarker::place(dir.path()).unwrap().last_run_crashed, "after a kill");
        RunMarker::place(dir.path()).unwrap().remove();
        assert!(!RunMarker::place(dir.path()).unwrap().last_run_crashed, "after a clean stop");
    }
}
