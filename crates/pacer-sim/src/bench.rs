//! The load generator behind `pacer bench publish`: N MQTT clients publish M messages each
//! as fast as their in-flight window allows, against any broker, and report throughput and
//! the time from sending each PUBLISH to its PUBACK.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

#[derive(Debug, Clone)]
pub struct PublishBench {
    pub host: String,
    pub port: u16,
    pub clients: usize,
    pub messages_per_client: usize,
    pub payload_bytes: usize,
    pub qos: u8,
    /// Unacknowledged publishes a client keeps open.
    pub inflight: u16,
}

#[derive(Debug, Clone)]
pub struct BenchReport {
    pub messages: usize,
    pub elapsed: Duration,
    /// PUBLISH → PUBACK, sorted; empty for QoS 0.
    pub ack_latencies: Vec<Duration>,
}

impl BenchReport {
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }

    pub fn latency_quantile(&self, q: f64) -> Option<Duration> {
        let n = self.ack_latencies.len();
        (n > 0).then(|| self.ack_latencies[((n - 1) as f64 * q).round() as usize])
    }
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} messages in {:.2} s: {:.0} msg/s", self.messages, self.elapsed.as_secs_f64(), self.rate())?;
        if let (Some(p50), Some(p99)) = (self.latency_quantile(0.5), self.latency_quantile(0.99)) {
            write!(f, ", ack latency p50 {:.2} ms, p99 {:.2} ms", ms(p50), ms(p99))?;
        }
        Ok(())
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub async fn publish(b: PublishBench) -> anyhow::Result<BenchReport> {
    anyhow::ensure!(b.qos <= 1, "--qos {}: the benchmark measures QoS 0 and 1", b.qos);
    let total = (b.clients * b.messages_per_client) as u64;
    let progress = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} msgs {per_sec} eta {eta}").expect("valid template"),
    );
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..b.clients {
        let (b, progress) = (b.clone(), progress.clone());
        tasks.push(tokio::spawn(async move { run_client(i, b, progress).await }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = start.elapsed();
    progress.finish_and_clear();
    latencies.sort_unstable();
    Ok(BenchReport { messages: total as usize, elapsed, ack_latencies: latencies })
}

async fn run_client(i: usize, b: PublishBench, progress: ProgressBar) -> anyhow::Result<Vec<Duration>> {
    let mut options = MqttOptions::new(format!("pacer-bench-{i}"), b.host.clone(), b.port);
    options.set_inflight(b.inflight).set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(options, b.inflight as usize * 2);
    let qos = if b.qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce };
    let topic = format!("bench/{i}");
    let payload = vec![b'x'; b.payload_bytes];
    let n = b.messages_per_client;
    let publisher = tokio::spawn(async move {
        for _ in 0..n {
            client.publish(topic.as_str(), qos, false, payload.clone()).await?;
        }
        anyhow::Ok(client)
    });
    let mut sent_at: HashMap<u16, Instant> = HashMap::new();
    let mut latencies = Vec::with_capacity(n);
    let mut done = 0;
    while done < n {
        match events.poll().await? {
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if qos == QoS::AtMostOnce {
                    done += 1;
                    progress.inc(1);
                } else {
                    sent_at.insert(pkid, Instant::now());
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(t) = sent_at.remove(&ack.pkid) {
                    latencies.push(t.elapsed());
                }
                done += 1;
                progress.inc(1);
            }
            _ => {}
        }
    }
    let client = publisher.await??;
    client.disconnect().await?;
    // Let the DISCONNECT go out so the broker sees a clean close.
    let _ = tokio::time::timeout(Duration::from_secs(1), async { while events.poll().await.is_ok() {} }).await;
    Ok(latencies)
}

/// Publishers and subscribers through a broker: how many messages a second get through, and
/// how long each takes from the publisher's send to the subscriber's receipt.
#[derive(Debug, Clone)]
pub struct PubSubBench {
    pub host: String,
    pub port: u16,
    pub publishers: usize,
    pub subscribers: usize,
    pub messages_per_publisher: usize,
    pub payload_bytes: usize,
    pub qos: u8,
    /// Subscribers to the same messages that never read them: their socket buffers fill and
    /// the broker has to hold or drop what is theirs while it serves the others.
    pub stalled: usize,
}

#[derive(Debug, Clone)]
pub struct PubSubReport {
    pub expected: usize,
    pub received: usize,
    pub elapsed: Duration,
    /// Send → receive, sorted.
    pub latencies: Vec<Duration>,
}

impl PubSubReport {
    fn quantile(&self, q: f64) -> Duration {
        let n = self.latencies.len();
        if n == 0 {
            return Duration::ZERO;
        }
        self.latencies[((n - 1) as f64 * q).round() as usize]
    }
}

impl std::fmt::Display for PubSubReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} delivered in {:.2} s: {:.0} msg/s, latency p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms",
            self.received,
            self.expected,
            self.elapsed.as_secs_f64(),
            self.received as f64 / self.elapsed.as_secs_f64(),
            ms(self.quantile(0.5)),
            ms(self.quantile(0.99)),
            ms(self.quantile(0.999)),
        )
    }
}

pub async fn pubsub(b: PubSubBench) -> anyhow::Result<PubSubReport> {
    anyhow::ensure!(b.qos <= 1, "--qos {}: the benchmark measures QoS 0 and 1", b.qos);
    anyhow::ensure!(b.payload_bytes >= 8, "--payload-bytes must be at least 8 (the send time travels in it)");
    let qos = if b.qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce };
    let expected = b.publishers * b.messages_per_publisher * b.subscribers;
    let origin = Instant::now();
    let progress = ProgressBar::new(expected as u64)
        .with_style(ProgressStyle::with_template("{bar:40} {pos}/{len} delivered {per_sec}").expect("valid template"));

    // Subscribers first, each subscribed before anyone publishes.
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(b.subscribers.max(1));
    let mut subscribers = Vec::new();
    for i in 0..b.subscribers {
        let mut options = MqttOptions::new(format!("pacer-bench-sub-{i}"), b.host.clone(), b.port);
        options.set_keep_alive(Duration::from_secs(30)).set_inflight(1000);
        let (client, mut events) = AsyncClient::new(options, 1000);
        client.subscribe("bench/pubsub/#", qos).await?;
        let (ready, progress) = (ready_tx.clone(), progress.clone());
        let want = b.publishers * b.messages_per_publisher;
        subscribers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(want);
            let mut last = Duration::ZERO;
            loop {
                let event = if latencies.is_empty() {
                    events.poll().await?
                } else {
                    // After the flow stops for 5 s, what has not come is not coming.
                    match tokio::time::timeout(Duration::from_secs(5), events.poll()).await {
                        Ok(e) => e?,
                        Err(_) => break,
                    }
                };
                match event {
                    Event::Incoming(Packet::SubAck(_)) => {
                        let _ = ready.send(()).await;
                    }
                    Event::Incoming(Packet::Publish(p)) => {
                        let sent = u64::from_le_bytes(p.payload[..8].try_into().expect("8-byte send time"));
                        last = origin.elapsed();
                        latencies.push(last.saturating_sub(Duration::from_nanos(sent)));
                        progress.inc(1);
                        if latencies.len() == want {
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let _ = client.disconnect().await;
            anyhow::Ok((latencies, last))
        }));
    }
    for _ in 0..b.subscribers {
        ready_rx.recv().await.context("a subscriber failed before subscribing")?;
    }
    // Subscribed, then never polled again: nothing more is read from their sockets. A long
    // keep-alive, so the broker does not end them for their silence during the run.
    let mut stalled = Vec::new();
    for i in 0..b.stalled {
        let mut options = MqttOptions::new(format!("pacer-bench-stalled-{i}"), b.host.clone(), b.port);
        options.set_keep_alive(Duration::from_secs(3600));
        let (client, mut events) = AsyncClient::new(options, 10);
        client.subscribe("bench/pubsub/#", qos).await?;
        while !matches!(events.poll().await?, Event::Incoming(Packet::SubAck(_))) {}
        stalled.push((client, events));
    }

    let start = origin.elapsed();
    let mut publishers = Vec::new();
    for i in 0..b.publishers {
        let mut options = MqttOptions::new(format!("pacer-bench-pub-{i}"), b.host.clone(), b.port);
        options.set_keep_alive(Duration::from_secs(30)).set_inflight(100);
        let (client, mut events) = AsyncClient::new(options, 200);
        let n = b.messages_per_publisher;
        let payload_bytes = b.payload_bytes;
        publishers.push(tokio::spawn(async move {
            let topic = format!("bench/pubsub/{i}");
            let sender = tokio::spawn(async move {
                for _ in 0..n {
                    let mut payload = vec![b'x'; payload_bytes];
                    payload[..8].copy_from_slice(&(origin.elapsed().as_nanos() as u64).to_le_bytes());
                    client.publish(topic.as_str(), qos, false, payload).await?;
                }
                anyhow::Ok(client)
            });
            let mut done = 0;
            while done < n {
                match events.poll().await? {
                    Event::Outgoing(Outgoing::Publish(_)) if qos == QoS::AtMostOnce => done += 1,
                    Event::Incoming(Packet::PubAck(_)) => done += 1,
                    _ => {}
                }
            }
            let client = sender.await??;
            client.disconnect().await?;
            let _ = tokio::time::timeout(Duration::from_secs(1), async { while events.poll().await.is_ok() {} }).await;
            anyhow::Ok(())
        }));
    }
    for p in publishers {
        p.await??;
    }
    let mut latencies = Vec::new();
    let mut last = start;
    for s in subscribers {
        let (got, at) = s.await??;
        latencies.extend(got);
        last = last.max(at);
    }
    progress.finish_and_clear();
    drop(stalled);
    latencies.sort_unstable();
    // From the first publish to the last delivery (the subscribers' idle wait is not counted).
    Ok(PubSubReport { expected, received: latencies.len(), elapsed: last - start, latencies })
}

/// Idle connections: opens `count` MQTT connections (CONNECT, CONNACK) spread over several
/// 127.0.0.x source addresses, holds them for `hold`, then closes them.
#[derive(Debug, Clone)]
pub struct ConnectionsBench {
    pub host: String,
    pub port: u16,
    pub count: usize,
    pub hold: Duration,
}

pub async fn connections(b: ConnectionsBench) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let target: std::net::SocketAddr =
        format!("{}:{}", b.host, b.port).parse().context("--host must be an IP address")?;
    let progress = ProgressBar::new(b.count as u64)
        .with_style(ProgressStyle::with_template("{bar:40} {pos}/{len} connected {per_sec}").expect("valid template"));
    let started = Instant::now();
    let mut held = Vec::with_capacity(b.count);
    for i in 0..b.count {
        // Each source address has its own ~28k ephemeral ports.
        let source: std::net::IpAddr = format!("127.0.0.{}", 2 + i / 20_000).parse()?;
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind((source, 0).into())?;
        let mut stream = socket.connect(target).await.with_context(|| format!("connection {i}"))?;
        let id = format!("idle-{i:06}");
        // CONNECT, MQTT 3.1.1, clean session, keep-alive 0 (none), the client id.
        let mut connect = vec![0x10, (10 + 2 + id.len()) as u8, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0];
        connect.extend_from_slice(&(id.len() as u16).to_be_bytes());
        connect.extend_from_slice(id.as_bytes());
        stream.write_all(&connect).await?;
        let mut connack = [0u8; 4];
        stream.read_exact(&mut connack).await.with_context(|| format!("CONNACK for connection {i}"))?;
        anyhow::ensure!(connack == [0x20, 2, 0, 0], "connection {i} refused: {connack:?}");
        held.push(stream);
        progress.inc(1);
    }
    progress.finish_and_clear();
    println!(
        "{} connections open in {:.1} s; holding them for {} s",
        held.len(),
        started.elapsed().as_secs_f64(),
        b.hold.as_secs()
    );
    tokio::time::sleep(b.hold).await;
    Ok(())
}
