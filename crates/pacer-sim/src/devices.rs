//! The loop every simulated device runs: its own MQTT client, a report every period
//! (devices spread over it, as real ones are not in step), QoS 1, until stopped or done.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, NetworkOptions, Packet, QoS};
use tokio::sync::watch;

/// A simulated device.
pub trait Device: Send + 'static {
    /// Its MQTT client id.
    fn client_id(&self) -> String;
    /// Moves on by `seconds`; what it publishes at `now_ms` (topic, payload), or None once
    /// it is done (a runner past the finish).
    fn report(&mut self, seconds: f64, now_ms: i64) -> Option<(String, String)>;
}

/// Where devices connect.
#[derive(Debug, Clone)]
pub struct Connection {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    /// MQTT over TLS, trusting the certificates (PEM) of these CAs.
    pub tls_ca: Option<Vec<u8>>,
}

/// Counters the progress display reads.
#[derive(Debug, Default)]
pub struct Progress {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub errors: AtomicU64,
}

/// How often devices report, and how fast their time runs.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Reports per simulated second, per device.
    pub rate_hz: f64,
    /// Simulated seconds per real second: reports carry simulated time.
    pub speed: f64,
}

/// Runs every device until `stop` turns true or each is done; returns once all have
/// disconnected.
pub async fn run(
    devices: Vec<Box<dyn Device>>,
    connection: Connection,
    clock: Clock,
    progress: Arc<Progress>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let Clock { rate_hz, speed } = clock;
    anyhow::ensure!(rate_hz > 0.0, "--rate must be above 0, got {rate_hz}");
    anyhow::ensure!(speed > 0.0, "--speed must be above 0, got {speed}");
    let period = Duration::from_secs_f64(1.0 / rate_hz / speed);
    let started =
        (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64, Instant::now());
    let count = devices.len().max(1) as f64;
    let mut tasks = Vec::new();
    for (i, device) in devices.into_iter().enumerate() {
        let (connection, progress, stop) = (connection.clone(), progress.clone(), stop.clone());
        let offset = period.mul_f64(i as f64 / count);
        let timing = Timing { period, offset, started, speed };
        tasks.push(tokio::spawn(run_one(device, connection, timing, progress, stop)));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// One device's reporting times.
struct Timing {
    /// Between reports, in real time.
    period: Duration,
    offset: Duration,
    /// When the fleet started: the clock (ms since the epoch) and the instant.
    started: (i64, Instant),
    speed: f64,
}

async fn run_one(
    mut device: Box<dyn Device>,
    c: Connection,
    timing: Timing,
    progress: Arc<Progress>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let Timing { period, offset, started, speed } = timing;
    let mut mqtt = MqttOptions::new(device.client_id(), c.host.clone(), c.port);
    mqtt.set_keep_alive(Duration::from_secs(30));
    if let Some(user) = &c.username {
        mqtt.set_credentials(user.clone(), c.password.clone().unwrap_or_default());
    }
    if let Some(ca) = &c.tls_ca {
        mqtt.set_transport(rumqttc::Transport::tls(ca.clone(), None, None));
    }
    let (client, mut events) = AsyncClient::new(mqtt, 64);
    // A thousand devices connecting at once to a broker on a busy machine can wait longer
    // than rumqttc's 5 s for CONNACK or a flush; a device that gives up reconnects with a
    // clean session and drops what it had in flight.
    let mut network = NetworkOptions::new();
    network.set_connection_timeout(30);
    events.set_network_options(network);
    let counters = progress.clone();
    let driver = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    counters.acked.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                Ok(_) => {}
                Err(e) => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "simulated device: MQTT connection failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let now = started.0 + (started.1.elapsed().as_secs_f64() * speed * 1000.0) as i64;
        let Some((topic, payload)) = device.report(period.as_secs_f64() * speed, now) else { break };
        if client.publish(topic, QoS::AtLeastOnce, false, payload).await.is_err() {
            progress.errors.fetch_add(1, Ordering::Relaxed);
            break;
        }
        progress.sent.fetch_add(1, Ordering::Relaxed);
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
    Ok(())
}
