//! A real `pacer up` process for end-to-end tests, and the clients tests drive it with.
#![allow(dead_code)] // each test binary uses its own part of the helpers

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::StreamExt;

pub mod joins;
pub mod kill9;
pub mod mqtt311;

/// A throw-away CA and a server certificate for localhost and 127.0.0.1 signed by it:
/// `ca.pem`, `server.pem` and `server.key` in `dir`.
pub fn write_certificates(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.distinguished_name.push(DnType::CommonName, "Pacer test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &ca).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
}

/// Kills `pacer` with SIGKILL `kills` times at random moments (`pause_ms` plus up to
/// `spread_ms` after each start; the seed is printed), restarting it each time.
pub fn kill_at_random(
    mut pacer: Pacer,
    kills: usize,
    pause_ms: u64,
    spread_ms: u64,
    start: impl Fn() -> Pacer,
) -> Pacer {
    let mut rng = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    println!("kills={kills} seed={rng}");
    for _ in 0..kills {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // A random moment of the query's work: this is when the kill lands, not a wait for anything.
        std::thread::sleep(Duration::from_millis(pause_ms + rng % spread_ms));
        drop(pacer);
        pacer = start();
    }
    pacer
}
pub mod windows;

pub const PACER: &str = env!("CARGO_BIN_EXE_pacer");

/// A `pacer up` process on free ports; killed (SIGKILL) when dropped.
pub struct Pacer {
    pub child: Child,
    pub mqtt_port: u16,
    pub http: String,
    /// Other listeners from the ready line, e.g. "mqtts" and "ws", by name.
    pub listeners: std::collections::HashMap<String, String>,
}

impl Pacer {
    pub fn start(data_dir: &Path) -> Pacer {
        Pacer::start_with(data_dir, &[])
    }

    /// `pacer up` on free local ports.
    pub fn up() -> Command {
        let mut command = Command::new(PACER);
        command.args(["up", "--mqtt-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]);
        command.args(["--osmand-listen", "127.0.0.1:0"]);
        command
    }

    /// Starts `pacer up` with extra arguments, e.g. `--config FILE`.
    pub fn start_with(data_dir: &Path, args: &[&str]) -> Pacer {
        let mut child = Pacer::up()
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env("PACER_LOG", std::env::var("PACER_LOG").unwrap_or("warn".into()))
            .stdout(Stdio::piped())
            .spawn()
            .expect("start pacer");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = lines.next().expect("pacer printed nothing").expect("read stdout");
        let rest = ready.strip_prefix("pacer ready: ").unwrap_or_else(|| panic!("unexpected first line {ready:?}"));
        let mut listeners: std::collections::HashMap<String, String> =
            rest.split_whitespace().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect();
        let mqtt_port = listeners.remove("mqtt").unwrap().rsplit(':').next().unwrap().parse().unwrap();
        let http = listeners.remove("http").unwrap();
        Pacer { child, mqtt_port, http, listeners }
    }

    pub fn mosquitto_pub(&self, topic: &str, qos: u8, message: &str) {
        let status = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &self.mqtt_port.to_string(), "-V", "mqttv311"])
            .args(["-q", &qos.to_string(), "-t", topic, "-m", message, "-i", "skeleton-test"])
            .status()
            .expect("mosquitto_pub must be installed (Debian mosquitto-clients)");
        assert!(status.success(), "mosquitto_pub failed: {status}");
    }

    /// Publishes each line as one message with a single `mosquitto_pub -l`, in order.
    pub fn mosquitto_pub_lines(&self, topic: &str, qos: u8, lines: &[String]) {
        let mut child = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &self.mqtt_port.to_string(), "-V", "mqttv311"])
            .args(["-q", &qos.to_string(), "-t", topic, "-l", "-i", "lines-test"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("mosquitto_pub must be installed (Debian mosquitto-clients)");
        let mut stdin = child.stdin.take().unwrap();
        std::io::Write::write_all(&mut stdin, (lines.join("\n") + "\n").as_bytes()).unwrap();
        drop(stdin);
        let status = child.wait().unwrap();
        assert!(status.success(), "mosquitto_pub -l failed: {status}");
    }

    pub fn tail(&self, stream: &str, n: usize) -> Vec<serde_json::Value> {
        let out = Command::new(PACER)
            .args(["tail", stream, "--from-beginning", "-n", &n.to_string(), "--server", &self.http])
            .output()
            .expect("run pacer tail");
        assert!(out.status.success(), "pacer tail failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// Reads the live feed of `stream` from the beginning until a record satisfies `done`;
    /// fails the test after 120 s (a Kafka group rebalancing after `kill -9`, on two cores
    /// busy with the other Kafka tests and their brokers, took over 60 s once in CI).
    pub fn wait_for_record(&self, stream: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let url = format!("{}/api/v1/live?stream={stream}&from=beginning", self.http);
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let search = async {
                let mut body = reqwest::get(&url).await.unwrap().bytes_stream();
                let mut text = String::new();
                while let Some(chunk) = body.next().await {
                    text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
                    while let Some(end) = text.find("\n\n") {
                        let event: String = text.drain(..end + 2).collect();
                        let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else { continue };
                        let records: Vec<serde_json::Value> = serde_json::from_str(data).unwrap();
                        if let Some(found) = records.into_iter().find(|r| done(r)) {
                            return found;
                        }
                    }
                }
                panic!("the live feed of {stream} ended");
            };
            tokio::time::timeout(Duration::from_secs(120), search)
                .await
                .unwrap_or_else(|_| panic!("no matching record on {stream} within 120 s"))
        })
    }

    /// Sends JSON lines to `stream` with `pacer produce`, keyed by a field if given.
    pub fn produce(&self, stream: &str, key_field: Option<&str>, lines: &str) {
        use std::io::Write;
        let mut produce = Command::new(PACER);
        produce.args(["produce", stream, "--server", &self.http]);
        if let Some(field) = key_field {
            produce.args(["--key-field", field]);
        }
        let mut produce = produce.stdin(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        produce.stdin.take().unwrap().write_all(lines.as_bytes()).unwrap();
        assert!(produce.wait().unwrap().success());
    }

    pub fn sql(&self, statement: &str) -> std::process::Output {
        Command::new(PACER).args(["sql", "--server", &self.http, statement]).output().unwrap()
    }

    /// `POST /api/v1/sql`: the HTTP status and the JSON answer.
    pub fn post_sql(&self, statement: &str) -> (u16, serde_json::Value) {
        self.post("/api/v1/sql", &serde_json::json!({ "sql": statement }))
    }

    /// POSTs JSON: the HTTP status and the JSON answer.
    pub fn post(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let url = format!("{}{path}", self.http);
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let response = reqwest::Client::new().post(&url).json(body).send().await.unwrap();
            (response.status().as_u16(), response.json().await.unwrap())
        })
    }

    pub fn get(&self, path: &str) -> String {
        let url = format!("{}{path}", self.http);
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(async { reqwest::get(&url).await.unwrap().text().await.unwrap() })
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
