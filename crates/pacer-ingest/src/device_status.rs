//! Device status: whether each device is online, as a stream of transitions.
//!
//! A device is a record key of the configured streams (`alice`, `jane/phone`,
//! `osmand/truck7`). It comes online with its first record, and when the MQTT client that
//! last sent for it connects again; it goes offline when that client disconnects or its
//! connection is lost, when it sends an OwnTracks `lwt`, or when nothing came from it for
//! `inactive_after` (HTTP devices have no connection to lose). Each transition is one record
//! on the status stream, keyed by the device: `{"device", "status", "reason", "client_id",
//! "at"}`. At start the stream itself says where every device was.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use pacer_core::{now_ms, NewRecord};
use pacer_log::{Log, StartAt};
use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct DeviceStatusConfig {
    /// Streams whose record keys are devices.
    pub streams: Vec<String>,
    /// Silence after which a device is offline.
    pub inactive_after: Duration,
    /// Where transitions go.
    pub output: String,
}

#[derive(Debug, Clone)]
struct Device {
    online: bool,
    /// Wall-clock ms of its last record.
    last_seen: i64,
    client_id: Option<String>,
}

#[derive(Default)]
struct State {
    devices: HashMap<String, Device>,
    /// The devices each MQTT client sent for.
    clients: HashMap<String, BTreeSet<String>>,
}

pub struct DeviceStatus {
    config: DeviceStatusConfig,
    log: Arc<dyn Log>,
    state: Mutex<State>,
    /// Transitions as they are decided, written in that order by `run`.
    pending: tokio::sync::mpsc::UnboundedSender<NewRecord>,
    written: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<NewRecord>>>,
}

/// A record that a device went offline (an OwnTracks `lwt`) rather than reported.
pub(crate) fn says_offline(value: &Value) -> bool {
    value.get("_type").and_then(Value::as_str) == Some("lwt")
}

impl DeviceStatus {
    /// Picks up where the status stream left off.
    pub async fn open(config: DeviceStatusConfig, log: Arc<dyn Log>) -> anyhow::Result<Arc<Self>> {
        let mut state = State::default();
        let mut reader = log.reader(&config.output, StartAt::Beginning)?;
        loop {
            let batch = reader.try_batch().await?;
            if batch.is_empty() {
                break;
            }
            for record in batch {
                let Ok(v) = serde_json::from_slice::<Value>(&record.value) else { continue };
                let Some(device) = v["device"].as_str() else { continue };
                let client_id = v["client_id"].as_str().map(str::to_string);
                let online = v["status"] == "online";
                state
                    .devices
                    .insert(device.to_string(), Device { online, last_seen: v["at"].as_i64().unwrap_or(0), client_id });
            }
        }
        tracing::info!(
            devices = state.devices.len(),
            online = state.devices.values().filter(|d| d.online).count(),
            "device status restored"
        );
        let (pending, written) = tokio::sync::mpsc::unbounded_channel();
        Ok(Arc::new(DeviceStatus {
            config,
            log,
            state: Mutex::new(state),
            pending,
            written: Mutex::new(Some(written)),
        }))
    }

    pub fn watches(&self, stream: &str) -> bool {
        self.config.streams.iter().any(|s| s == stream)
    }

    /// A device's record was stored.
    pub(crate) fn seen(&self, device: &str, client_id: &str, at: i64, offline: bool) {
        let mut state = self.state.lock().unwrap();
        // Every publish to a watched stream passes here: allocate only for what is new.
        match state.clients.get_mut(client_id) {
            Some(devices) if devices.contains(device) => {}
            Some(devices) => {
                devices.insert(device.to_string());
            }
            None => {
                state.clients.insert(client_id.to_string(), BTreeSet::from([device.to_string()]));
            }
        }
        if !state.devices.contains_key(device) {
            state.devices.insert(device.to_string(), Device { online: false, last_seen: at, client_id: None });
        }
        let entry = state.devices.get_mut(device).expect("inserted above");
        entry.last_seen = at;
        if entry.client_id.as_deref() != Some(client_id) {
            entry.client_id = Some(client_id.to_string());
        }
        let (online, reason) = if offline { (false, "lwt") } else { (true, "data") };
        if entry.online != online {
            entry.online = online;
            let _ = self.pending.send(transition(device, online, reason, Some(client_id), at));
        }
    }

    /// Writes the transitions, in the order they were decided, and takes devices offline
    /// once they fall silent. Runs until the log closes.
    pub async fn run(self: Arc<Self>) -> anyhow::Result<()> {
        let mut written = self.written.lock().unwrap().take().expect("DeviceStatus::run runs once");
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            let mut records = Vec::new();
            tokio::select! {
                Some(record) = written.recv() => records.push(record),
                _ = tick.tick() => {}
            }
            while let Ok(record) = written.try_recv() {
                records.push(record);
            }
            records.extend(self.silent(now_ms()));
            if !records.is_empty() {
                self.log.append(&self.config.output, records).await?;
            }
        }
    }

    /// Online devices not heard from for `inactive_after`: now offline.
    fn silent(&self, now: i64) -> Vec<NewRecord> {
        let limit = self.config.inactive_after.as_millis() as i64;
        let mut state = self.state.lock().unwrap();
        let mut out = Vec::new();
        for (name, device) in state.devices.iter_mut().filter(|(_, d)| d.online && now - d.last_seen >= limit) {
            device.online = false;
            out.push(transition(name, false, "inactive", device.client_id.as_deref(), now));
        }
        out
    }

    /// The devices `client_id` last sent for, now `online` (or not) for `reason`.
    fn client_changed(&self, client_id: &str, online: bool, reason: &str) {
        let now = now_ms();
        let mut state = self.state.lock().unwrap();
        let Some(names) = state.clients.get(client_id).cloned() else { return };
        for name in names {
            let Some(device) = state.devices.get_mut(&name) else { continue };
            // Another client sends for it now: this one's comings and goings are old news.
            if device.online == online || device.client_id.as_deref() != Some(client_id) {
                continue;
            }
            device.online = online;
            if online {
                device.last_seen = now;
            }
            let _ = self.pending.send(transition(&name, online, reason, Some(client_id), now));
        }
    }
}

impl pacer_mqtt::SessionObserver for DeviceStatus {
    fn connected(&self, client_id: &str) {
        self.client_changed(client_id, true, "connect");
    }

    fn disconnected(&self, client_id: &str, reason: &str) {
        self.client_changed(client_id, false, reason);
    }
}

fn transition(device: &str, online: bool, reason: &str, client_id: Option<&str>, at: i64) -> NewRecord {
    let value = json!({
        "device": device,
        "status": if online { "online" } else { "offline" },
        "reason": reason,
        "client_id": client_id,
        "at": at,
    });
    NewRecord::new(at, Some(Bytes::from(device.to_string())), value.to_string())
}
