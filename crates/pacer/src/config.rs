//! The configuration file (`pacer.toml`): every key has a default, so no file is needed.

use std::path::{Path, PathBuf};

use anyhow::Context;
use pacer_ingest::{PublishConfig, RuleConfig, StreamPublisher};
use pacer_log::FsyncPolicy;
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub auth: AuthSection,
    pub mqtt: MqttConfig,
    pub http: HttpConfig,
    pub osmand: OsmandConfig,
    pub log: LogConfig,
    /// Ingest rules, first match wins. Empty: the built-in defaults.
    pub ingest: Vec<RuleConfig>,
    /// Streams published to MQTT subscribers as records arrive.
    pub publish: Vec<PublishConfig>,
    /// How long streams are kept, and which are downsampled from others.
    pub history: Vec<HistoryConfig>,
    pub course: Vec<CourseConfig>,
    pub zone: Vec<ZoneConfig>,
    pub tracking: TrackingConfig,
    pub device_status: DeviceStatusSection,
    pub sql: SqlConfig,
}

/// Users and what they may do, on every interface (MQTT, HTTP, the live feeds, OsmAnd).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// mosquitto password file (`pacer passwd` edits it); relative to the config file.
    pub password_file: Option<PathBuf>,
    /// mosquitto ACL file; relative to the config file.
    pub acl_file: Option<PathBuf>,
    /// Bearer tokens (`pacer token create`): `tokens` in the data directory unless set.
    pub token_file: Option<PathBuf>,
    /// Users who may run DDL and TERMINATE, write any stream and read everything.
    pub admins: Vec<String>,
    /// Users who may read every stream and the dashboard, and change nothing.
    pub readers: Vec<String>,
    /// Clients without credentials get in (with the ACL's anonymous rules). Unset: yes
    /// without a password file (then every listener must be on loopback), no with one.
    pub allow_anonymous: Option<bool>,
}

/// A stream's history policy: how long it is kept, and, for a downsampled stream, what it
/// is made of (InfluxDB's retention policies and downsampling tasks).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    pub stream: String,
    /// How long its records are kept: "7d", "12h", "P30D"; unset: as `[log]` says.
    pub keep: Option<String>,
    /// Downsampled from this stream: a row per record key and `every`, with `aggregate`.
    pub from: Option<String>,
    pub every: Option<String>,
    /// Output column = aggregate of the column of the same name, e.g. `speed = "AVG"`.
    #[serde(default)]
    pub aggregate: std::collections::BTreeMap<String, String>,
    /// Also kept as Parquet segments (`<log dir>/.history/<stream>/`), which history
    /// queries read a column at a time and DuckDB, Spark or pandas open as they are.
    #[serde(default)]
    pub parquet: bool,
    /// How often the log's new records move into a segment: "10m" unless set.
    pub parquet_every: Option<String>,
    /// Rows per segment at most: 1,000,000 unless set.
    pub parquet_rows: Option<usize>,
}

impl HistoryConfig {
    pub fn keep_ms(&self) -> Result<Option<u64>, String> {
        self.keep.as_deref().map(|k| duration(k, "keep")).transpose()
    }

    /// The compaction into Parquet segments, if the policy asks for it.
    pub fn parquet(&self) -> Result<Option<pacer_history::CompactorConfig>, String> {
        if !self.parquet {
            return match (&self.parquet_every, self.parquet_rows) {
                (None, None) => Ok(None),
                _ => Err("parquet_every and parquet_rows need parquet = true".into()),
            };
        }
        let every = self.parquet_every.as_deref().map_or(Ok(600_000), |e| duration(e, "parquet_every"))?;
        let max_rows = match self.parquet_rows {
            Some(0) => return Err("parquet_rows = 0: give at least 1".into()),
            Some(rows) => rows,
            None => 1_000_000,
        };
        Ok(Some(pacer_history::CompactorConfig {
            stream: self.stream.clone(),
            every: std::time::Duration::from_millis(every),
            max_rows,
            keep_ms: self.keep_ms()?,
        }))
    }

    /// The persistent query that keeps a downsampled stream: a tumbling window per record
    /// key, emitted once it has passed.
    pub fn downsampling_sql(&self) -> Result<Option<String>, String> {
        let (from, every) = match (&self.from, &self.every) {
            (None, None) if self.aggregate.is_empty() => return Ok(None),
            (Some(from), Some(every)) if !self.aggregate.is_empty() => (from, duration(every, "every")?),
            _ => return Err("a downsampled stream names from, every and aggregate (e.g. { speed = \"AVG\" })".into()),
        };
        let quoted = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
        let columns: Vec<String> = self
            .aggregate
            .iter()
            .map(|(column, function)| {
                if function.is_empty() || !function.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!(
                        "aggregate.{column} = {function:?}: name an aggregate such as AVG, MAX or LATEST_BY_OFFSET"
                    ));
                }
                Ok(format!("{function}({}) AS {}", quoted(column), quoted(column)))
            })
            .collect::<Result<_, _>>()?;
        Ok(Some(format!(
            "CREATE TABLE {} WITH (kafka_topic='{}') AS SELECT ROWKEY AS \"key\", {} FROM {} \
             WINDOW TUMBLING (SIZE {every} MILLISECONDS, GRACE PERIOD 0 SECONDS) GROUP BY ROWKEY EMIT FINAL;",
            quoted(&self.stream),
            self.stream,
            columns.join(", "),
            quoted(from)
        )))
    }
}

fn duration(text: &str, key: &str) -> Result<u64, String> {
    match pacer_sql::engine::functions::duration_ms(text) {
        Ok(ms) if ms > 0 => Ok(ms as u64),
        Ok(_) => Err(format!("{key} = {text:?}: give a time above zero")),
        Err(e) => Err(format!("{key}: {e}")),
    }
}

/// Devices online and offline, as a stream of transitions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceStatusSection {
    /// Streams whose record keys are devices.
    pub streams: Vec<String>,
    /// Seconds of silence after which a device is offline.
    pub inactive_after_s: f64,
    /// Where the transitions go.
    pub stream: String,
}

impl Default for DeviceStatusSection {
    fn default() -> Self {
        DeviceStatusSection {
            streams: vec!["locations".into(), "race".into()],
            inactive_after_s: 300.0,
            stream: "device_status".into(),
        }
    }
}

impl DeviceStatusSection {
    pub fn config(&self) -> pacer_ingest::DeviceStatusConfig {
        pacer_ingest::DeviceStatusConfig {
            streams: self.streams.clone(),
            inactive_after: std::time::Duration::from_secs_f64(self.inactive_after_s.max(0.0)),
            output: self.stream.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqlConfig {
    /// ksqlDB statements run at start (relative to the config file). Sources and queries
    /// already in the catalog are left running as they are. Unset: the race example's
    /// league table (`examples/race/race.sql`).
    pub file: Option<PathBuf>,
    /// Rows one pull or history query may hold (read from a source, made by a join, groups).
    pub query_rows: usize,
    /// Bytes of rows one pull or history query may hold.
    pub query_bytes: usize,
    /// State entries (windows of groups, rows a join holds) one persistent query keeps in
    /// memory; past them it stops, named in SHOW QUERIES, and the others go on.
    pub state_rows: usize,
}

impl Default for SqlConfig {
    fn default() -> Self {
        let limits = pacer_sql::engine::QueryLimits::default();
        SqlConfig { file: None, query_rows: limits.rows, query_bytes: limits.bytes, state_rows: limits.state_rows }
    }
}

impl SqlConfig {
    pub fn limits(&self) -> pacer_sql::engine::QueryLimits {
        pacer_sql::engine::QueryLimits {
            rows: self.query_rows.max(1),
            bytes: self.query_bytes.max(1),
            state_rows: self.state_rows.max(1),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    pub listen: String,
    /// MQTT over TLS ("" = off), with `tls_cert` and `tls_key` (PEM; relative to the config file).
    pub tls_listen: String,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// MQTT over WebSocket, subprotocol `mqtt` ("" = off).
    pub websocket_listen: String,
    /// MQTT over WebSocket inside TLS, `wss://` ("" = off); uses `tls_cert` and `tls_key`.
    pub wss_listen: String,
    /// Alias of `[auth] allow_anonymous`.
    pub allow_anonymous: Option<bool>,
    pub max_packet_size: u32,
    /// Open connections at most, over all transports; unset: three quarters of what the
    /// process's file descriptor limit leaves (see [`ConnectionBudget`]).
    pub max_connections: Option<usize>,
    /// Outbound QoS 1/2 messages a client may have unacknowledged at once.
    pub max_inflight: usize,
    /// Messages a session may have waiting before more are dropped (counted and logged).
    pub max_queued: usize,
    /// Bytes (topics and payloads) a session may have waiting, likewise.
    pub max_queued_bytes: usize,
    /// Topic filters nobody may subscribe to.
    pub deny_subscribe: Vec<String>,
    /// MQTT 5 Receive Maximum offered to clients.
    pub receive_maximum: u16,
    /// MQTT 5 topic aliases clients may use.
    pub topic_alias_maximum: u16,
    /// Longest keep-alive allowed (MQTT 5 Server Keep Alive).
    pub max_keep_alive: u16,
    /// Alias of `[auth] password_file`.
    pub password_file: Option<PathBuf>,
    /// Alias of `[auth] acl_file`.
    pub acl_file: Option<PathBuf>,
    /// Several nodes on one Kafka cluster: relay publications between them (`__mqtt_relay`)
    /// so a subscriber on any node gets what is published on any node. Off for one node:
    /// it costs a second append per publish and a reader. A persistent session then lives
    /// on the node its client last connected to and moves with it.
    pub relay: bool,
    /// This node's name among nodes sharing a log, unique and the same across restarts
    /// (the sessions it keeps are recorded under it). Default: host name and MQTT port
    /// (with port 0: and the process id, so a restarted node is a new one).
    pub node: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: String,
    /// HTTPS: certificate chain and private key (PEM; relative to the config file).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Host names the server answers to (against DNS rebinding). Empty: localhost and the
    /// loopback addresses when listening on loopback, any host otherwise.
    pub hosts: Vec<String>,
    /// Open connections at most (the OsmAnd listener has as many again); unset: a quarter of
    /// what the file descriptor limit leaves. One more gets a 503.
    pub max_connections: Option<usize>,
    /// Seconds a client has to send a request's headers, from connecting or from the last
    /// answer on a kept-alive connection.
    pub header_timeout_s: f64,
    /// Streams (live feeds, WebSockets, push queries) one client address may have open; one
    /// more gets a 429.
    pub max_streams_per_client: usize,
    /// Map tiles; empty string: offline basemap only.
    pub tile_url: String,
    pub tile_attribution: String,
    /// Streams whose records the dashboard's alerts feed shows (a query's alerts), besides
    /// devices going offline and runners finishing.
    pub alert_streams: Vec<String>,
}

/// The OsmAnd protocol (Traccar's client apps) on its own port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OsmandConfig {
    /// "" turns it off.
    pub listen: String,
    /// Device ids taken whatever the ACL says. With a password file, other ids are taken
    /// only if the ACL lets a user of that name publish on `osmand/{id}`.
    pub devices: Vec<String>,
}

impl Default for OsmandConfig {
    fn default() -> Self {
        OsmandConfig { listen: "127.0.0.1:5055".into(), devices: Vec::new() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `embedded` (segment files in `dir`) or `kafka` (topics on the cluster in `[log.kafka]`).
    pub backend: LogBackend,
    pub dir: PathBuf,
    pub fsync: FsyncPolicy,
    /// Partitions of each new stream.
    pub partitions: u32,
    pub segment_bytes: u64,
    pub segment_ms: u64,
    /// Kafka's `retention.ms` and `retention.bytes` (per partition); unset keeps everything.
    pub retention_ms: Option<u64>,
    pub retention_bytes: Option<u64>,
    pub kafka: pacer_kafka::KafkaConfig,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogBackend {
    #[default]
    Embedded,
    Kafka,
}

/// A course the tracking functions name (`COURSE_DISTANCE('name', lat, lon)`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CourseConfig {
    pub name: String,
    /// GPX (tracks or routes), GeoJSON (a LineString) or JSON lines of fixes (a recorded
    /// track); relative to the config file.
    pub file: PathBuf,
    /// JSON lines: only the fixes whose fields have these values (`{ who = "alice" }`).
    #[serde(default, rename = "match")]
    pub only: std::collections::BTreeMap<String, serde_json::Value>,
}

/// Zones (geofences) `ZONE_EVENT('name', lat, lon)` and `IN_ZONE` name: a circle, or the
/// polygons (and, with `width_m`, corridors along lines) of a GeoJSON file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    /// Required for a circle; for a file, names its only zone (else each feature's `name`).
    pub name: Option<String>,
    pub circle: Option<Circle>,
    /// GeoJSON, relative to the config file.
    pub file: Option<PathBuf>,
    /// Corridor width for LineStrings in `file`, metres.
    pub width_m: Option<f64>,
    /// Consecutive fixes on the other side before an enter or exit counts…
    #[serde(default = "one")]
    pub debounce_fixes: u32,
    /// …and the seconds they must span.
    #[serde(default)]
    pub dwell_s: f64,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Circle {
    pub lat: f64,
    pub lon: f64,
    pub radius_m: f64,
}

impl ZoneConfig {
    /// The zones this entry defines.
    pub fn zones(&self) -> anyhow::Result<Vec<pacer_sql::Zone>> {
        use pacer_sql::Zone;
        let mut zones = match (&self.circle, &self.file, &self.name) {
            (Some(c), None, Some(name)) => {
                anyhow::ensure!(c.radius_m > 0.0, "circle radius_m must be above 0");
                vec![Zone::circle(name, c.lat, c.lon, c.radius_m)]
            }
            (Some(_), None, None) => anyhow::bail!("a circle zone needs a name"),
            (None, Some(file), name) => {
                let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
                Zone::from_geojson(&text, name.as_deref(), self.width_m).with_context(|| file.display().to_string())?
            }
            _ => anyhow::bail!("give a zone either circle = {{ lat, lon, radius_m }} or file = \"zones.geojson\""),
        };
        for zone in &mut zones {
            zone.debounce_fixes = self.debounce_fixes.max(1);
            zone.dwell_ms = (self.dwell_s * 1000.0) as i64;
        }
        Ok(zones)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackingConfig {
    /// A fix implying more than this from the device's last one is a GPS jump: the
    /// tracking functions ignore it.
    pub max_speed_kmh: f64,
}

impl Default for TrackingConfig {
    fn default() -> Self {
        TrackingConfig { max_speed_kmh: pacer_sql::geometry::DEFAULT_MAX_SPEED_KMH }
    }
}

/// `[mqtt] name` or `[auth] name`, whichever is set; both, only if the same.
fn alias<T: PartialEq + Clone + std::fmt::Debug>(
    name: &str,
    auth: &Option<T>,
    mqtt: &Option<T>,
) -> Result<Option<T>, String> {
    match (auth, mqtt) {
        (Some(a), Some(m)) if a != m => {
            Err(format!("[auth] {name} = {a:?} and [mqtt] {name} = {m:?} disagree: set it in [auth] only"))
        }
        (Some(v), _) | (None, Some(v)) => Ok(Some(v.clone())),
        (None, None) => Ok(None),
    }
}

impl Config {
    /// Who may do what: `[auth]`, with `[mqtt] password_file`, `acl_file` and
    /// `allow_anonymous` as aliases.
    pub fn auth_config(&self) -> Result<pacer_auth::AuthConfig, String> {
        let password_file = alias("password_file", &self.auth.password_file, &self.mqtt.password_file)?;
        let allow_anonymous = alias("allow_anonymous", &self.auth.allow_anonymous, &self.mqtt.allow_anonymous)?;
        Ok(pacer_auth::AuthConfig {
            allow_anonymous: allow_anonymous.unwrap_or(password_file.is_none()),
            password_file,
            acl_file: alias("acl_file", &self.auth.acl_file, &self.mqtt.acl_file)?,
            token_file: Some(self.token_file()),
            session_key_file: Some(self.log.dir.join("session.key")),
            admins: self.auth.admins.clone(),
            readers: self.auth.readers.clone(),
        })
    }

    pub fn token_file(&self) -> PathBuf {
        self.auth.token_file.clone().unwrap_or_else(|| self.log.dir.join("tokens"))
    }

    /// The listeners' addresses, by what they serve.
    pub fn listeners(&self) -> Vec<(&'static str, &str)> {
        [
            ("[mqtt] listen", self.mqtt.listen.as_str()),
            ("[mqtt] tls_listen", &self.mqtt.tls_listen),
            ("[mqtt] websocket_listen", &self.mqtt.websocket_listen),
            ("[mqtt] wss_listen", &self.mqtt.wss_listen),
            ("[http] listen", &self.http.listen),
            ("[osmand] listen", &self.osmand.listen),
        ]
        .into_iter()
        .filter(|(_, address)| !address.is_empty())
        .collect()
    }

    /// Refuses to open Pacer to the network with no one's credentials checked, unless the
    /// config says so: with no password file, every listener must be on loopback unless
    /// `allow_anonymous = true` is stated (as mosquitto 2 listens on localhost only).
    pub fn check_exposure(&self) -> anyhow::Result<()> {
        let auth = self.auth_config().map_err(anyhow::Error::msg)?;
        let exposed: Vec<String> = self
            .listeners()
            .into_iter()
            .filter(|(_, address)| !is_loopback(address))
            .map(|(key, address)| format!("{key} = {address:?}"))
            .collect();
        let stated = self.auth.allow_anonymous.or(self.mqtt.allow_anonymous) == Some(true);
        match (exposed.is_empty(), auth.password_file.is_some(), stated) {
            (true, _, _) => {
                tracing::info!("listening on loopback only: to open Pacer to the network, set the listeners (e.g. [http] listen = \"0.0.0.0:8080\") and [auth] password_file (pacer passwd), or state [auth] allow_anonymous = true");
            }
            (false, true, false) => {}
            (false, false, false) => anyhow::bail!(
                "{} would open Pacer to the network with no password checked: set [auth] password_file \
                 (users made with `pacer passwd`), or state [auth] allow_anonymous = true to let anyone in",
                exposed.join(", ")
            ),
            (false, _, true) => tracing::warn!(
                listeners = %exposed.join(", "),
                "ANONYMOUS ACCESS FROM THE NETWORK: allow_anonymous = true lets anyone who reaches these listeners in"
            ),
        }
        Ok(())
    }
}

/// How many connections the listeners take when the config does not say: what the file
/// descriptor limit leaves after a reserve for the log's files, three quarters to MQTT and a
/// quarter to HTTP. A connection past the limit is refused at once (MQTT CONNACK 0x97, HTTP
/// 503) instead of failing at accept, where it would wait, unanswered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionBudget {
    pub mqtt: usize,
    pub http: usize,
}

/// Descriptors kept for everything but connections: segment and index files, listeners.
const FD_RESERVE: u64 = 1024;

impl ConnectionBudget {
    pub fn from_fd_limit(limit: u64) -> ConnectionBudget {
        let left = limit.saturating_sub(FD_RESERVE) as usize;
        ConnectionBudget { mqtt: (left * 3 / 4).clamp(16, 1_000_000), http: (left / 4).clamp(16, 100_000) }
    }
}

/// Raises the process's soft limit on open files to its hard limit (as most servers do) and
/// returns it.
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
    }
    limit.rlim_cur
}

/// Whether a listen address is reachable only from this machine.
pub fn is_loopback(address: &str) -> bool {
    let host = match address.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => address,
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl MqttConfig {
    /// This node's name among nodes sharing a log: `node`, else `{host name}:{MQTT port}`.
    pub fn node_name(&self) -> String {
        self.node.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            let host = Some(host.trim()).filter(|h| !h.is_empty()).unwrap_or("pacer");
            match self.listen.rsplit(':').next().unwrap_or_default() {
                // A port picked at start is not the same after a restart either.
                "0" => format!("{host}:0-{}", std::process::id()),
                port => format!("{host}:{port}"),
            }
        })
    }

    /// The broker's own settings; listeners and files are wired by the server.
    pub fn broker(&self, budget: &ConnectionBudget) -> pacer_mqtt::BrokerConfig {
        pacer_mqtt::BrokerConfig {
            max_packet_size: self.max_packet_size,
            max_connections: self.max_connections.unwrap_or(budget.mqtt).max(1),
            max_inflight: self.max_inflight.max(1),
            max_queued: self.max_queued,
            max_queued_bytes: self.max_queued_bytes,
            deny_subscribe: self.deny_subscribe.clone(),
            receive_maximum: self.receive_maximum.max(1),
            topic_alias_maximum: self.topic_alias_maximum,
            max_keep_alive: self.max_keep_alive.max(1),
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        let broker = pacer_mqtt::BrokerConfig::default();
        MqttConfig {
            listen: "127.0.0.1:1883".into(),
            tls_listen: String::new(),
            tls_cert: None,
            tls_key: None,
            websocket_listen: String::new(),
            wss_listen: String::new(),
            allow_anonymous: None,
            max_packet_size: broker.max_packet_size,
            max_connections: None,
            max_inflight: broker.max_inflight,
            max_queued: broker.max_queued,
            max_queued_bytes: broker.max_queued_bytes,
            deny_subscribe: broker.deny_subscribe,
            receive_maximum: broker.receive_maximum,
            topic_alias_maximum: broker.topic_alias_maximum,
            max_keep_alive: broker.max_keep_alive,
            password_file: None,
            acl_file: None,
            relay: false,
            node: None,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".into(),
            tls_cert: None,
            tls_key: None,
            hosts: Vec::new(),
            max_connections: None,
            header_timeout_s: 10.0,
            max_streams_per_client: 64,
            tile_url: "https://tile.openstreetmap.org/{z}/{x}/{y}.png".into(),
            tile_attribution: "© OpenStreetMap contributors".into(),
            alert_streams: vec!["race_zone_events".into()],
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            dir: "pacer-data".into(),
            fsync: FsyncPolicy::Batch,
            partitions: 1,
            segment_bytes: 128 << 20,
            segment_ms: 24 * 3600 * 1000,
            retention_ms: None,
            retention_bytes: None,
            backend: LogBackend::Embedded,
            kafka: Default::default(),
        }
    }
}

/// Always there unless a `[[course]]` takes its name: the demo's race.
pub const BUILTIN_COURSE: &str = "sydney-half";
/// The statements run when no `[sql] file` is configured.
pub const BUILTIN_SQL: &str = include_str!("../../../examples/race/race.sql");

impl Config {
    /// Reads a config file. Errors name the file, and TOML errors the line, column and key.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
        let mut config: Config =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim_end()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for course in &mut config.course {
            resolve(&mut course.file);
        }
        for zone in &mut config.zone {
            zone.file.as_mut().map(resolve);
        }
        for file in [
            &mut config.auth.password_file,
            &mut config.auth.acl_file,
            &mut config.auth.token_file,
            &mut config.mqtt.password_file,
            &mut config.mqtt.acl_file,
            &mut config.mqtt.tls_cert,
            &mut config.mqtt.tls_key,
            &mut config.http.tls_cert,
            &mut config.http.tls_key,
        ] {
            file.as_mut().map(resolve);
        }
        config.auth_config().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        config.sql.file.as_mut().map(resolve);
        if config.tracking.max_speed_kmh.is_nan() || config.tracking.max_speed_kmh <= 0.0 {
            anyhow::bail!(
                "{}: [tracking] max_speed_kmh = {}: give a speed above 0",
                path.display(),
                config.tracking.max_speed_kmh
            );
        }
        for (i, policy) in config.history.iter().enumerate() {
            if let Err(e) = policy.keep_ms().and_then(|_| policy.downsampling_sql()).and_then(|_| policy.parquet()) {
                anyhow::bail!("{}: [[history]] #{} (stream {:?}): {e}", path.display(), i + 1, policy.stream);
            }
        }
        for (i, rule) in config.publish.iter().enumerate() {
            if let Err(e) = StreamPublisher::from_config(rule) {
                anyhow::bail!("{}: [[publish]] #{} (stream {:?}): {e}", path.display(), i + 1, rule.stream);
            }
        }
        // MQTT's remaining length tops out at 268,435,455 bytes; 0 would let one packet header
        // make the broker reserve that much.
        if !(1..=268_435_455).contains(&config.mqtt.max_packet_size) {
            anyhow::bail!(
                "{}: [mqtt] max_packet_size = {}: give a limit from 1 to 268435455 bytes",
                path.display(),
                config.mqtt.max_packet_size
            );
        }
        // The name keys this node's sessions in the shared log: blank would match none.
        if let Some(node) = config.mqtt.node.as_ref().filter(|n| n.trim().is_empty() || n.contains(char::is_whitespace))
        {
            anyhow::bail!(
                "{}: [mqtt] node = {node:?}: give a name without spaces, unique among the nodes",
                path.display()
            );
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_key_names_the_file_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pacer.toml");
        std::fs::write(&path, "[mqtt]\nlisten = \"127.0.0.1:1884\"\nlisten_port = 3\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("pacer.toml"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("listen_port"), "{err}");
    }

    #[test]
    fn a_blank_node_name_is_refused_with_the_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pacer.toml");
        std::fs::write(&path, "[mqtt]\nrelay = true\nnode = \" \"\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("pacer.toml") && err.contains("[mqtt] node"), "{err}");
        std::fs::write(&path, "[mqtt]\nrelay = true\nnode = \"pacer-1\"\n").unwrap();
        assert_eq!(Config::load(&path).unwrap().mqtt.node_name(), "pacer-1");
    }

    #[test]
    fn a_bad_publish_rule_names_the_file_the_rule_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pacer.toml");
        std::fs::write(&path, "[[publish]]\nstream = \"alarms\"\ntopic = \"x\"\n\n[[publish]]\nstream = \"alarms\"\ntopic = \"alarms/#\"\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("pacer.toml: [[publish]] #2 (stream \"alarms\"): topic:"), "{err}");
        assert!(err.contains("no wildcards"), "{err}");
    }

    #[test]
    fn a_packet_limit_of_zero_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pacer.toml");
        std::fs::write(&path, "[mqtt]\nmax_packet_size = 0\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("pacer.toml") && err.contains("max_packet_size = 0"), "{err}");
    }

    #[test]
    fn an_unknown_log_backend_names_the_file_line_and_choices() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pacer.toml");
        std::fs::write(&path, "[log]\nbackend = \"kafak\"\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("pacer.toml") && err.contains("line 2"), "{err}");
        assert!(err.contains("kafak") && err.contains("embedded") && err.contains("kafka"), "{err}");
    }

    #[test]
    fn unset_keys_take_their_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pacer.toml");
        std::fs::write(&path, "[[ingest]]\nmqtt = \"cars/+\"\nstream = \"cars\"\n").unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.mqtt.listen, "127.0.0.1:1883");
        assert_eq!(config.ingest[0].stream.as_deref(), Some("cars"));
    }

    #[test]
    fn auth_keys_in_mqtt_are_aliases_and_must_agree() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pacer.toml");
        std::fs::write(&path, "[mqtt]\npassword_file = \"passwd\"\n[auth]\nadmins = [\"root\"]\n").unwrap();
        let auth = Config::load(&path).unwrap().auth_config().unwrap();
        assert_eq!(auth.password_file, Some(dir.path().join("passwd")), "relative to the config file");
        assert!(!auth.allow_anonymous, "a password file closes the door to anonymous clients");
        std::fs::write(&path, "[mqtt]\npassword_file = \"a\"\n[auth]\npassword_file = \"b\"\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("pacer.toml") && err.contains("password_file") && err.contains("disagree"), "{err}");
    }

    #[test]
    fn opening_to_the_network_needs_a_password_file_or_a_stated_choice() {
        let mut config = Config::default();
        config.check_exposure().unwrap();
        config.http.listen = "0.0.0.0:8080".into();
        let err = config.check_exposure().unwrap_err().to_string();
        assert!(err.contains("[http] listen") && err.contains("password_file"), "{err}");
        config.auth.allow_anonymous = Some(true);
        config.check_exposure().unwrap();
        config.auth.allow_anonymous = None;
        config.auth.password_file = Some("passwd".into());
        config.check_exposure().unwrap();
        assert!(is_loopback("127.0.0.1:0") && is_loopback("[::1]:8080") && is_loopback("localhost:1883"));
        assert!(!is_loopback("0.0.0.0:1883") && !is_loopback("[::]:1883") && !is_loopback("192.168.1.5:80"));
    }
}
