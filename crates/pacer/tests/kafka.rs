//! Pacer on Kafka: the same program with `[log] backend = "kafka"`, against tansu, a real
//! Kafka-protocol broker, with plain Kafka clients (librdkafka) on the other side.
//!
//! Each test starts its own tansu on a free port (in-memory storage) and uses its own topic
//! prefix, so tests run in parallel without seeing each other.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Pacer;
use pacer_core::NewRecord;
use pacer_kafka::{KafkaConfig, KafkaLog, NewTopics};
use pacer_log::{Log, Positions, StartAt};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// A tansu broker on a free port, storing in a fresh sqlite file; killed when dropped.
/// (Its memory engine answers ListOffsets from its storage objects' times, wrong for
/// batches and for time lookups; the sqlite engine answers from the records.)
struct Tansu {
    child: Child,
    brokers: String,
    _dir: tempfile::TempDir,
}

/// tansu 0.6's sqlite schema has no index on its header table, so each record fetched scans
/// every header ever stored: once query output (rows with `pacer.query`/`pacer.cause`) is in,
/// reads slow to a crawl and requests time out. The index an Apache Kafka log has by
/// construction (as `scripts/bench-common.sh` adds it for the benchmarks).
fn add_header_index(db: &Path) {
    let sql = "create index if not exists header_record on header (topition, offset_id)";
    let script =
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], timeout=30); c.execute(sys.argv[2]); c.commit()";
    let status = Command::new("python3").args(["-c", script]).arg(db).arg(sql).status().expect("python3");
    assert!(status.success(), "indexing tansu's headers in {}", db.display());
}

impl Tansu {
    fn start() -> Tansu {
        Tansu::start_in(tempfile::tempdir().unwrap(), &[])
    }

    /// Starts tansu on the storage in `dir` (kept from an earlier run, e.g. with users).
    fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Tansu {
        Tansu::start_advertising(dir, None, extra)
    }

    /// Starts tansu telling clients to reach it at `advertised` (a port in front of it).
    fn start_advertising(dir: tempfile::TempDir, advertised: Option<u16>, extra: &[&str]) -> Tansu {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised = format!("tcp://127.0.0.1:{}", advertised.unwrap_or(port));
        let mut child = Command::new(tansu_binary())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &advertised])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .args(extra)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu (scripts/install-test-deps.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(child.try_wait().unwrap().is_none(), "tansu exited at start");
            assert!(Instant::now() < deadline, "tansu did not listen on {port} within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        add_header_index(&dir.path().join("tansu.db"));
        Tansu { child, brokers: format!("127.0.0.1:{port}"), _dir: dir }
    }

    /// Stops the broker and hands back its storage.
    fn stop(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self._dir, dir)
    }

    fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        config
    }

    fn create_topic(&self, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = self.client().create().unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let results = runtime
            .block_on(admin.create_topics(
                [&NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            ))
            .unwrap();
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    }

    /// Reads `n` records of `topic` from the beginning, as any Kafka consumer would.
    fn consume(&self, topic: &str, n: usize) -> Vec<OwnedMessage> {
        let consumer: BaseConsumer = self.client().set("group.id", "test-reader").create().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut assignment = TopicPartitionList::new();
        while assignment.count() == 0 {
            assert!(Instant::now() < deadline, "topic {topic} did not appear within 30 s");
            let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
            for p in metadata.topics().iter().filter(|t| t.error().is_none()).flat_map(|t| t.partitions()) {
                assignment.add_partition_offset(topic, p.id(), Offset::Beginning).unwrap();
            }
            if assignment.count() == 0 {
                // Metadata has no change notification to await.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        consumer.assign(&assignment).unwrap();
        let mut messages = Vec::new();
        while messages.len() < n {
            assert!(Instant::now() < deadline, "only {} of {n} records on {topic} within 30 s", messages.len());
            if let Some(message) = consumer.poll(Duration::from_millis(200)) {
                messages.push(message.unwrap().detach());
            }
        }
        messages
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tansu_binary() -> PathBuf {
    let cargo_bin = std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin/tansu"));
    match cargo_bin {
        Some(path) if path.exists() => path,
        _ => PathBuf::from("tansu"),
    }
}

/// A config file for `pacer up` on `tansu` with topic prefix `prefix`.
fn kafka_config(dir: &Path, tansu: &Tansu, prefix: &str, extra: &str) -> PathBuf {
    let path = dir.join("pacer.toml");
    let text = format!(
        "[log]\nbackend = \"kafka\"\npartitions = 2\n\n[log.kafka]\nbrokers = \"{}\"\ntopic_prefix = \"{prefix}\"\n\
         # tansu's sqlite engine has no DeleteRecords\ndelete_records = false\n{extra}",
        tansu.brokers
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn start_pacer(dir: &Path, config: &Path) -> Pacer {
    Pacer::start_with(dir, &["--config", config.to_str().unwrap()])
}

fn header<'a>(message: &'a OwnedMessage, name: &str) -> Option<&'a str> {
    let headers = message.headers()?;
    headers.iter().find(|h| h.key == name).and_then(|h| std::str::from_utf8(h.value?).ok())
}

#[test]
fn an_mqtt_publish_is_a_kafka_record_with_its_key_timestamp_and_headers() {
    let tansu = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let pacer = start_pacer(dir.path(), &kafka_config(dir.path(), &tansu, "a.", ""));

    let fix = r#"{"who":"alice","timeepoc":1558212482,"lat":-33.86,"lon":151.21,"speed":11.5}"#;
    pacer.mosquitto_pub("race/alice", 1, fix);

    // mosquitto_pub got its PUBACK, so Kafka holds the record already.
    let records = tansu.consume("a.race", 1);
    let record = &records[0];
    assert_eq!(record.key(), Some(&b"alice"[..]));
    assert_eq!(record.timestamp().to_millis(), Some(1_558_212_482_000), "timestamp from timeepoc (s)");
    let value: serde_json::Value = serde_json::from_slice(record.payload().unwrap()).unwrap();
    assert_eq!(value["who"], "alice");
    assert_eq!(value["speed"], 11.5);
    assert_eq!(header(record, "mqtt.topic"), Some("race/alice"));
    assert_eq!(header(record, "mqtt.qos"), Some("1"));

    // Pacer's own view of the stream is the topic.
    let streams: serde_json::Value = serde_json::from_str(&pacer.get("/api/v1/streams")).unwrap();
    let race = streams["streams"].as_array().unwrap().iter().find(|s| s["name"] == "race").expect("race listed");
    assert_eq!(race["records"], 1);
    assert_eq!(race["partitions"], 2);
    let tailed = pacer.tail("race", 1);
    assert_eq!(tailed[0]["key"], "alice");
    assert_eq!(tailed[0]["timestamp"], 1_558_212_482_000i64);
}

/// SIGTERM (systemd, Docker, Kubernetes) stops a node cleanly: it leaves its groups and
/// removes the marker that would make its next start wait for them to time out, as after a
/// `kill -9`, which leaves the marker behind.
#[test]
fn a_node_stopped_with_sigterm_stops_cleanly() {
    let tansu = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let mut pacer = start_pacer(dir.path(), &kafka_config(dir.path(), &tansu, "t.", ""));
    let marker = dir.path().join("pacer.running");
    assert!(marker.exists(), "a running node has its marker");
    let pid = pacer.child.id();
    signal(pid, "-TERM");
    // A node that ignored it is killed after 30 s, and fails below.
    let (stopped, watchdog) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if watchdog.recv_timeout(Duration::from_secs(30)).is_err() {
            signal(pid, "-KILL");
        }
    });
    let exit = pacer.child.wait().unwrap();
    let _ = stopped.send(());
    assert!(exit.success(), "stopped with {exit}");
    assert!(!marker.exists(), "a clean stop removes the marker");

    let pacer = start_pacer(dir.path(), &kafka_config(dir.path(), &tansu, "t.", ""));
    drop(pacer); // SIGKILL, as kill -9
    assert!(marker.exists(), "kill -9 leaves it for the next start to find");
}

/// Sends `signal` (as `kill` takes it, e.g. `-STOP`) to process `pid`.
fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill").args([signal, &pid.to_string()]).status().unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

#[test]
fn records_a_kafka_client_produces_flow_through_a_pacer_query_to_a_topic_kafka_clients_read() {
    let tansu = Tansu::start();
    tansu.create_topic("q.readings", 3);
    let dir = tempfile::tempdir().unwrap();
    let pacer = start_pacer(dir.path(), &kafka_config(dir.path(), &tansu, "q.", ""));

    let (status, answer) = pacer.post_sql(
        "CREATE STREAM readings (device STRING, temp DOUBLE) WITH (kafka_topic='readings', value_format='JSON');
         CREATE STREAM hot WITH (kafka_topic='hot_readings') AS
           SELECT device, temp, temp * 1.8 + 32 AS fahrenheit FROM readings WHERE temp > 30 EMIT CHANGES;",
    );
    assert_eq!(status, 200, "{answer}");

    // A plain Kafka producer, as a device gateway or Kafka Connect would write.
    let producer: FutureProducer = tansu.client().create().unwrap();
    let mut expected = Vec::new();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        for i in 0..24 {
            let device = format!("d{}", i % 4);
            let temp = 20.0 + i as f64;
            let value = serde_json::json!({ "device": device, "temp": temp }).to_string();
            let record = FutureRecord::to("q.readings")
                .key(&device)
                .payload(&value)
                .timestamp(1_700_000_000_000 + i * 1000)
                .headers(OwnedHeaders::new().insert(Header { key: "source", value: Some("gateway") }));
            producer.send(record, Duration::from_secs(10)).await.unwrap();
            if temp > 30.0 {
                expected.push((device, temp));
            }
        }
    });

    let mut out: Vec<(String, f64)> = tansu
        .consume("q.hot_readings", expected.len())
        .iter()
        .map(|m| {
            let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            let temp = v["temp"].as_f64().unwrap();
            assert!((v["fahrenheit"].as_f64().unwrap() - (temp * 1.8 + 32.0)).abs() < 1e-9, "{v}");
            (v["device"].as_str().unwrap().to_string(), temp)
        })
        .collect();
    out.sort_by(|a, b| a.partial_cmp(b).unwrap());
    expected.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert_eq!(out, expected);

    // A pull query reads the whole output topic back through Pacer: no more, no fewer.
    let (status, rows) = pacer.post_sql("SELECT device, temp FROM hot;");
    assert_eq!(status, 200, "{rows}");
    assert_eq!(rows["rows"].as_array().unwrap().len(), expected.len(), "{rows}");
}

#[test]
fn sasl_scram_logs_in_and_a_wrong_password_is_named_at_start() {
    let tansu = Tansu::start();
    let status = Command::new(tansu_binary())
        .args(["user", "create", "--broker", &format!("tcp://{}", tansu.brokers), "--mechanism", "scram256"])
        .args(["pacer", "s3cret"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "tansu user create: {status}");
    let tansu = Tansu::start_in(tansu.stop(), &["--authentication"]);

    let dir = tempfile::tempdir().unwrap();
    let sasl = "security_protocol = \"sasl_plaintext\"\nsasl_mechanism = \"SCRAM-SHA-256\"\n\
                sasl_username = \"pacer\"\nsasl_password = \"s3cret\"\n";
    let pacer = start_pacer(dir.path(), &kafka_config(dir.path(), &tansu, "s.", sasl));
    pacer.mosquitto_pub("race/ben", 1, r#"{"who":"ben","timeepoc":1558212490,"lat":-33.86,"lon":151.21}"#);
    assert_eq!(pacer.tail("race", 1)[0]["key"], "ben");
    drop(pacer);

    let wrong = kafka_config(dir.path(), &tansu, "s.", &sasl.replace("s3cret", "guess"));
    let out = Pacer::up().arg("--data-dir").arg(dir.path()).arg("--config").arg(&wrong).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with a wrong password");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains("cannot reach Kafka at") && last.contains("SASL authentication"), "{stderr}");
}

#[test]
fn every_acknowledged_publish_survives_kill_9_on_kafka() {
    let tansu = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let config = kafka_config(dir.path(), &tansu, "k.", "");
    common::kill9::every_acknowledged_publish_survives_kill_9(|| start_pacer(dir.path(), &config));
}

/// The `Log` contract the rest of Pacer relies on, on Kafka: what the embedded log's own
/// tests check, through the same trait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_contract_holds_on_kafka() {
    let tansu = Tansu::start();
    let config = KafkaConfig { brokers: tansu.brokers.clone(), topic_prefix: "c.".into(), ..Default::default() };
    let log: Arc<dyn Log> = Arc::new(
        KafkaLog::connect(config, NewTopics { partitions: 3, retention_ms: Some(3_600_000), ..Default::default() })
            .unwrap(),
    );

    // A reader on a stream that does not exist yet waits for it.
    let mut early = log.reader("contract", StartAt::Beginning).unwrap();

    let keys = ["alice", "ben", "derek", "simon", "alice", "ben"];
    let records: Vec<NewRecord> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            NewRecord::new(1_000 * (i as i64 + 1), Some(Bytes::from(*k)), format!("{{\"i\":{i}}}"))
                .with_header("n", i.to_string())
        })
        .collect();
    let appended = log.append("contract", records).await.unwrap();
    assert_eq!(appended.len(), keys.len());
    for (a, key) in appended.iter().zip(keys) {
        assert_eq!(a.partition, pacer_log::partition_for_key(key.as_bytes(), 3), "murmur2 like a Java client");
    }

    let all = read_all(&mut *early, keys.len()).await;
    let mut by_n: BTreeMap<i64, &pacer_core::Record> = BTreeMap::new();
    for r in &all {
        let n: i64 = std::str::from_utf8(r.header("n").unwrap()).unwrap().parse().unwrap();
        assert_eq!(r.timestamp, 1_000 * (n + 1));
        assert_eq!(r.key.as_deref(), Some(keys[n as usize].as_bytes()));
        by_n.insert(n, r);
    }
    assert_eq!(by_n.len(), keys.len(), "each record exactly once");
    assert!(early.try_batch().await.unwrap().is_empty(), "caught up: nothing more");

    // From positions: only what comes after them.
    let mut after_first = Positions::new();
    let first = &appended[0];
    after_first.set(first.partition, first.offset + 1);
    for p in 0..3 {
        if p != first.partition {
            after_first.set(p, appended.iter().filter(|a| a.partition == p).map(|a| a.offset + 1).max().unwrap_or(0));
        }
    }
    let mut from_positions = log.reader("contract", StartAt::Positions(after_first)).unwrap();
    let rest = drain(&mut *from_positions).await;
    let expected: Vec<_> =
        appended.iter().filter(|a| a.partition == first.partition && a.offset > first.offset).collect();
    assert_eq!(rest.len(), expected.len(), "{rest:?}");

    // From a time: the first record at or after it in each partition.
    let mut from_time = log.reader("contract", StartAt::Timestamp(4_000)).unwrap();
    let mut late: Vec<i64> = drain(&mut *from_time).await.iter().map(|r| r.timestamp).collect();
    late.sort();
    assert_eq!(late, vec![4_000, 5_000, 6_000]);

    // From the end: only records appended later.
    let mut tail = log.reader("contract", StartAt::End).unwrap();
    assert!(tail.try_batch().await.unwrap().is_empty());
    log.append("contract", vec![NewRecord::new(7_000, Some(Bytes::from("zoe")), "{}")]).await.unwrap();
    let new = read_all(&mut *tail, 1).await;
    assert_eq!(new[0].key.as_deref(), Some(&b"zoe"[..]));

    // Committed positions are stored by the cluster, per group.
    assert_eq!(log.committed_positions("reporting", "contract"), None);
    let positions = early.positions();
    log.commit_positions("reporting", "contract", &positions).await.unwrap();
    assert_eq!(log.committed_positions("reporting", "contract"), Some(positions));

    // Streams: the user stream with its counts; internal ones hidden.
    log.append("__internal", vec![NewRecord::new(1, None, "x")]).await.unwrap();
    let streams = log.streams();
    let contract = streams.iter().find(|s| s.name == "contract").expect("listed");
    assert_eq!(contract.partitions, 3);
    assert_eq!(contract.records, keys.len() as u64 + 1);
    assert!(streams.iter().all(|s| !s.name.starts_with("__")), "{streams:?}");

    // A stream created with its own partition count takes records to the partitions they name.
    log.create_stream("__lanes", 4).await.unwrap();
    log.create_stream("__lanes", 9).await.unwrap(); // exists: left as it is
    assert_eq!(log.partitions("__lanes"), 4);
    let placed = vec![
        NewRecord::new(1, Some(Bytes::from("alice")), "a").to_partition(3),
        NewRecord::new(2, None, "b").to_partition(1),
    ];
    let appended = log.append("__lanes", placed).await.unwrap();
    assert_eq!(appended.iter().map(|a| a.partition).collect::<Vec<_>>(), [3, 1]);
    let mut lane = log.partition_reader("__lanes", &[3], StartAt::Beginning).unwrap();
    let got = read_all(&mut *lane, 1).await;
    assert_eq!((got[0].partition, got[0].key.as_deref()), (3, Some(&b"alice"[..])));

    // User streams take the configured retention; Pacer's own state is never cut by it.
    assert_eq!(topic_setting(&tansu, "c.contract", "retention.ms").await.as_deref(), Some("3600000"));
    for internal in ["c.__internal", "c.__lanes"] {
        assert_eq!(topic_setting(&tansu, internal, "retention.ms").await.as_deref(), Some("-1"), "{internal}");
        assert_eq!(topic_setting(&tansu, internal, "retention.bytes").await.as_deref(), Some("-1"), "{internal}");
    }
}

/// A reader waiting for a stream outlasts a cluster that does not answer for longer than a
/// request may take (10 s): a paused or restarting broker, or what a Pacer node paused
/// itself sees when it resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_waiting_for_a_stream_outlasts_a_cluster_that_stops_answering() {
    let tansu = Tansu::start();
    let config = KafkaConfig { brokers: tansu.brokers.clone(), topic_prefix: "w.".into(), ..Default::default() };
    let log: Arc<dyn Log> = Arc::new(KafkaLog::connect(config, NewTopics::default()).unwrap());
    let mut reader = log.reader("later", StartAt::Beginning).unwrap();
    let waiting = tokio::spawn(async move { reader.next_batch().await });

    signal(tansu.child.id(), "-STOP");
    // The scenario's length, not a wait for an event: the reader's requests time out meanwhile.
    tokio::time::sleep(Duration::from_secs(12)).await;
    signal(tansu.child.id(), "-CONT");
    log.append("later", vec![NewRecord::new(1, Some(Bytes::from("k")), "back")]).await.unwrap();
    let batch = tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .expect("the reader got nothing within 60 s of the cluster answering again")
        .unwrap()
        .expect("the reader gave up while the cluster did not answer");
    assert_eq!(batch[0].value.as_ref(), b"back");
}

/// A topic's setting as the cluster describes it.
async fn topic_setting(tansu: &Tansu, topic: &str, name: &str) -> Option<String> {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &tansu.brokers).create().unwrap();
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    let described = admin.describe_configs([&ResourceSpecifier::Topic(topic)], &options).await.unwrap();
    let resource = described.into_iter().next().unwrap().unwrap_or_else(|e| panic!("{topic}: {e}"));
    resource.get(name).and_then(|entry| entry.value.clone())
}

async fn read_all(reader: &mut dyn pacer_log::StreamReader, n: usize) -> Vec<pacer_core::Record> {
    let mut records = Vec::new();
    while records.len() < n {
        let batch =
            tokio::time::timeout(Duration::from_secs(30), reader.next_batch()).await.expect("records within 30 s");
        records.extend(batch.unwrap());
    }
    records
}

async fn drain(reader: &mut dyn pacer_log::StreamReader) -> Vec<pacer_core::Record> {
    let mut records = Vec::new();
    loop {
        let batch = tokio::time::timeout(Duration::from_secs(30), reader.try_batch()).await.expect("an answer in 30 s");
        let batch = batch.unwrap();
        if batch.is_empty() {
            return records;
        }
        records.extend(batch);
    }
}

/// The input partitions each node's SHOW QUERIES says it runs for `query`.
fn owned_partitions(pacer: &Pacer, query: &str) -> Vec<u64> {
    let (status, answer) = pacer.post_sql("SHOW QUERIES;");
    assert_eq!(status, 200, "{answer}");
    let rows = answer["rows"].as_array().unwrap();
    let row = rows.iter().find(|r| r[0] == query).unwrap_or_else(|| panic!("{query} not running: {answer}"));
    row[5].as_array().unwrap().iter().map(|p| p.as_u64().unwrap()).collect()
}

#[test]
fn two_nodes_in_one_consumer_group_split_a_query_and_get_the_results_of_one() {
    two_nodes_split_a_query(false);
}

/// One of the two nodes killed with `kill -9` halfway: the other takes its partitions over
/// from their checkpoints, and the table still counts every record once.
#[test]
fn when_one_of_two_nodes_is_killed_the_other_finishes_its_share() {
    two_nodes_split_a_query(true);
}

fn two_nodes_split_a_query(kill_one: bool) {
    let tansu = Tansu::start();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // A killed node leaves the group after the session timeout (librdkafka's default: 45 s).
    let prefix = if kill_one { "k2." } else { "g." };
    let config = kafka_config(dir_a.path(), &tansu, prefix, "properties = { \"session.timeout.ms\" = \"6000\" }\n");
    std::fs::write(&config, std::fs::read_to_string(&config).unwrap().replace("partitions = 2", "partitions = 4"))
        .unwrap();
    let a = start_pacer(dir_a.path(), &config);
    // Grouped by the key, each partition's task counts its own devices; grouped by a value
    // field, each partition's task forwards its records to the partition of their site.
    let (status, answer) = a.post_sql(
        "CREATE STREAM readings (device STRING KEY, site STRING, temp DOUBLE) WITH (kafka_topic='readings', value_format='JSON', partitions=4);
         CREATE TABLE per_device WITH (kafka_topic='per_device') AS
           SELECT device, COUNT(*) AS n, SUM(temp) AS total FROM readings GROUP BY device EMIT CHANGES;
         CREATE TABLE per_site WITH (kafka_topic='per_site') AS
           SELECT site, COUNT(*) AS n, SUM(temp) AS total FROM readings GROUP BY site EMIT CHANGES;",
    );
    assert_eq!(status, 200, "{answer}");
    // The input topic exists before anyone writes, so the group can form first.
    let input = format!("{prefix}readings");
    tansu.create_topic(&input, 4);

    // The second node reads the catalog from the cluster and joins the query's group.
    let b = start_pacer(dir_b.path(), &config);
    let split = |a: &Pacer, b: Option<&Pacer>, query: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let pa = owned_partitions(a, query);
            let pb = b.map(|b| owned_partitions(b, query)).unwrap_or_default();
            let mut all: Vec<u64> = pa.iter().chain(&pb).copied().collect();
            all.sort();
            if !pa.is_empty() && (b.is_none() || !pb.is_empty()) && all == [0, 1, 2, 3] {
                return (pa, pb);
            }
            assert!(Instant::now() < deadline, "the group did not settle on 4 partitions: {pa:?} {pb:?}");
            // The group settles on its own schedule; there is no event to await from outside.
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    split(&a, Some(&b), "CTAS_PER_DEVICE");
    split(&a, Some(&b), "CTAS_PER_SITE");

    let producer: FutureProducer = tansu.client().set("partitioner", "murmur2_random").create().unwrap();
    let (mut per_device, mut per_site) = (Totals::default(), Totals::default());
    let produce = |from: u64, to: u64, per_device: &mut Totals, per_site: &mut Totals| {
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            for i in from..to {
                let (device, site) = (format!("device-{}", i % 20), format!("site-{}", i % 3));
                let temp = (i % 7) as f64 + 0.5;
                let value = serde_json::json!({ "site": site, "temp": temp }).to_string();
                let record = FutureRecord::to(&input).key(&device).payload(&value).timestamp(1_700_000_000_000);
                producer.send(record, Duration::from_secs(10)).await.unwrap();
                per_device.add(device, temp);
                per_site.add(site, temp);
            }
        })
    };
    let mut device_table = TableReader::new(&tansu, format!("{prefix}per_device"));
    let mut site_table = TableReader::new(&tansu, format!("{prefix}per_site"));
    let b = if kill_one {
        produce(0, 100, &mut per_device, &mut per_site);
        device_table.read_until(&per_device);
        site_table.read_until(&per_site);
        drop(b); // SIGKILL
        None
    } else {
        Some(b)
    };
    produce(if kill_one { 100 } else { 0 }, 200, &mut per_device, &mut per_site);
    // One change row per input record in each table: no record was counted by two nodes (or
    // two tasks), nor twice by the node that took over from the killed one, nor forwarded
    // twice to its site's partition.
    assert_eq!(device_table.read_until(&per_device), (200, 200));
    assert_eq!(site_table.read_until(&per_site), (200, 200));
    // Each node ran only its share all along; a survivor runs them all.
    for query in ["CTAS_PER_DEVICE", "CTAS_PER_SITE"] {
        let (pa, pb) = split(&a, b.as_ref(), query);
        assert!(pa.iter().all(|p| !pb.contains(p)), "{query}: {pa:?} {pb:?}");
    }
}

/// Count and sum of the readings per device or site.
#[derive(Debug, Default, PartialEq)]
struct Totals(BTreeMap<String, (u64, f64)>);

impl Totals {
    fn add(&mut self, key: String, temp: f64) {
        let e = self.0.entry(key).or_default();
        e.0 += 1;
        e.1 += temp;
    }
}

/// A table's rows as a Kafka consumer sees them: the latest per key is its total.
struct TableReader {
    consumer: BaseConsumer,
    topic: String,
    latest: Totals,
    rows: usize,
    assigned: bool,
}

impl TableReader {
    fn new(tansu: &Tansu, topic: String) -> TableReader {
        let consumer = tansu.client().set("group.id", "check").create().unwrap();
        TableReader { consumer, topic, latest: Totals::default(), rows: 0, assigned: false }
    }

    /// Reads until the latest rows are `expected`, for 60 s at most; the change rows read so
    /// far, and the rows the topic holds.
    fn read_until(&mut self, expected: &Totals) -> (usize, i64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.latest != *expected {
            assert!(
                Instant::now() < deadline,
                "{} never reached the totals:\n{:?}\n{expected:?}",
                self.topic,
                self.latest
            );
            if !self.assigned {
                let metadata = self.consumer.fetch_metadata(Some(&self.topic), Duration::from_secs(10)).unwrap();
                let mut list = TopicPartitionList::new();
                for p in metadata.topics().iter().filter(|t| t.error().is_none()).flat_map(|t| t.partitions()) {
                    list.add_partition_offset(&self.topic, p.id(), Offset::Beginning).unwrap();
                }
                self.assigned = list.count() > 0;
                if self.assigned {
                    self.consumer.assign(&list).unwrap();
                } else {
                    // The topic appears with the query's first row; nothing to await from here.
                    std::thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
            if let Some(message) = self.consumer.poll(Duration::from_millis(200)) {
                let message = message.unwrap();
                let v: serde_json::Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
                let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
                self.latest.0.insert(key, (v["n"].as_u64().unwrap(), v["total"].as_f64().unwrap()));
                self.rows += 1;
            }
        }
        let written = (0..4)
            .map(|p| {
                let marks = self.consumer.fetch_watermarks(&self.topic, p, Duration::from_secs(10));
                marks.map_or(0, |(low, high)| high - low)
            })
            .sum();
        (self.rows, written)
    }
}

/// `mosquitto_sub -d` on a node: subscribed once it has printed the SUBACK, then its
/// payload lines come through `next`.
struct Subscriber {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Subscriber {
    fn start(pacer: &Pacer, id: &str, filter: &str) -> Subscriber {
        // Line-buffered: mosquitto_sub does not flush its debug lines into a pipe.
        let mut child = Command::new("stdbuf")
            .args([
                "-oL",
                "mosquitto_sub",
                "-d",
                "-h",
                "127.0.0.1",
                "-p",
                &pacer.mqtt_port.to_string(),
                "-q",
                "1",
                "-i",
                id,
                "-t",
                filter,
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub must be installed (Debian mosquitto-clients)");
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(stdout).map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let subscriber = Subscriber { child, lines };
        while !subscriber.line().contains("SUBACK") {}
        subscriber
    }

    fn line(&self) -> String {
        self.lines.recv_timeout(Duration::from_secs(30)).expect("mosquitto_sub printed nothing for 30 s")
    }

    /// The next payload, skipping mosquitto_sub's debug lines.
    fn next(&self) -> String {
        loop {
            let line = self.line();
            if !line.starts_with("Client ") && !line.starts_with("Subscribed (mid") {
                return line;
            }
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_subscriber_on_one_node_gets_what_is_published_on_another_once() {
    let tansu = Tansu::start();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = kafka_config(dir_a.path(), &tansu, "m.", "");
    std::fs::write(&config, format!("[mqtt]\nrelay = true\n{}", std::fs::read_to_string(&config).unwrap())).unwrap();
    let (a, b) = (start_pacer(dir_a.path(), &config), start_pacer(dir_b.path(), &config));
    let on_a = Subscriber::start(&a, "sub-a", "chat/#");
    let on_b = Subscriber::start(&b, "sub-b", "chat/#");

    a.mosquitto_pub("chat/a", 1, "from a");
    assert_eq!(on_b.next(), "from a", "relayed from a to b");
    assert_eq!(on_a.next(), "from a", "delivered on a itself");
    b.mosquitto_pub("chat/b", 1, "from b");
    // By now a's own message has been through the relay too; a must not deliver it again.
    assert_eq!(on_a.next(), "from b", "relayed from b to a, and a's own message only once");
    assert_eq!(on_b.next(), "from b", "delivered on b itself");
}

/// EMIT FINAL across `kill -9` on Kafka: windows and the per-window stage of a WITH + join
/// query restore from their changelog topics, none lost, none twice (common::windows).
#[test]
fn emit_final_and_per_window_stages_survive_kill_9_on_kafka() {
    let tansu = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    // A killed node's group membership ends after the session timeout (librdkafka's default,
    // 45 s, would keep the restarted node waiting for its own ghost that long).
    let config = kafka_config(dir.path(), &tansu, "w.", "properties = { \"session.timeout.ms\" = \"6000\" }\n");
    let kills: usize = std::env::var("PACER_KAFKA_KILLS").ok().and_then(|k| k.parse().ok()).unwrap_or(3);
    common::windows::emit_final_survives_kill_9(kills, || start_pacer(dir.path(), &config));
}

/// A stream–stream join across `kill -9` on Kafka: both topics keyed by the trip they join
/// on, so partition `p` of each is read by one task, the two merged by event time, the rows
/// each side holds restored from the task's changelog topic; every pair once, no departure
/// lost (common::joins).
#[test]
fn stream_stream_join_survives_kill_9_on_kafka() {
    let tansu = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    // The restarted node joins the group once its killed self's membership timed out
    // (session.timeout.ms); tansu ends a rebalance only after the members'
    // max.poll.interval.ms (librdkafka: 300 s).
    let properties = "\"session.timeout.ms\" = \"6000\", \"max.poll.interval.ms\" = \"10000\"";
    let config = kafka_config(dir.path(), &tansu, "j.", &format!("properties = {{ {properties} }}\n"));
    let kills: usize = std::env::var("PACER_KAFKA_KILLS").ok().and_then(|k| k.parse().ok()).unwrap_or(3);
    // Fewer trips: tansu's sqlite engine takes each checkpointed row of the join's state as
    // a write of its own.
    common::joins::stream_join_survives_kill_9(2_000, kills, true, || start_pacer(dir.path(), &config));
    // Both streams are placed by the trip they join on, two partitions each: the join ran
    // as one task per partition, each with its own checkpoints.
    let consumer: BaseConsumer = tansu.client().create().unwrap();
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    let topics: Vec<&str> = metadata.topics().iter().map(|t| t.name()).collect();
    for state in ["j.__query_csas_trips.p0", "j.__query_csas_trips.p1"] {
        assert!(topics.contains(&state), "{state} in {topics:?}");
    }
    assert!(!topics.contains(&"j.__query_csas_trips"), "not run whole: {topics:?}");
}

/// TLS in front of a broker, as a TLS load balancer stands in front of Kafka (tansu 0.6 takes
/// `--cert` but serves plain TCP): clients make a real TLS handshake, checked against the CA,
/// and the bytes inside go to the broker as they are.
struct TlsFront {
    port: u16,
    _runtime: tokio::runtime::Runtime,
}

impl TlsFront {
    fn start(listener: std::net::TcpListener, dir: &Path, broker: String) -> TlsFront {
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        use tokio_rustls::rustls::{crypto::ring, ServerConfig};
        let certs = vec![CertificateDer::from_pem_file(dir.join("server.pem")).unwrap()];
        let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
        let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((client, _)) = listener.accept().await {
                let (acceptor, broker) = (acceptor.clone(), broker.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(client).await else { return };
                    let Ok(mut plain) = tokio::net::TcpStream::connect(&broker).await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsFront { port, _runtime: runtime }
    }
}

/// `security_protocol = "ssl"`: Pacer reaches the cluster over TLS, trusting only the CA it
/// is given; an MQTT publish lands as a record a TLS Kafka client reads, and without the CA
/// Pacer refuses to start with a reason.
#[test]
fn pacer_talks_to_kafka_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    common::write_certificates(dir.path());
    let front = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tansu = Tansu::start_advertising(tempfile::tempdir().unwrap(), Some(front.local_addr().unwrap().port()), &[]);
    let front = TlsFront::start(front, dir.path(), tansu.brokers.clone());
    let brokers = format!("127.0.0.1:{}", front.port);
    let ca = dir.path().join("ca.pem");
    let config = dir.path().join("pacer.toml");
    let write_config = |ca: &Path| {
        let text = format!(
            "[log]\nbackend = \"kafka\"\n\n[log.kafka]\nbrokers = \"{brokers}\"\ntopic_prefix = \"tls.\"\n\
             delete_records = false\nsecurity_protocol = \"ssl\"\nssl_ca_location = \"{}\"\n",
            ca.display()
        );
        std::fs::write(&config, text).unwrap();
    };

    // A CA that did not sign the broker's certificate: the handshake fails, and Pacer says so.
    let stranger = tempfile::tempdir().unwrap();
    common::write_certificates(stranger.path());
    write_config(&stranger.path().join("ca.pem"));
    let refused = Pacer::up()
        .arg("--data-dir")
        .arg(dir.path().join("refused"))
        .args(["--config", config.to_str().unwrap()])
        .env("PACER_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!refused.status.success(), "started against a broker it cannot verify");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains(&format!("cannot reach Kafka at {brokers}")), "{stderr}");

    write_config(&ca);
    let pacer = start_pacer(&dir.path().join("data"), &config);
    let fix = r#"{"who":"alice","timeepoc":1558212482,"lat":-33.86,"lon":151.21}"#;
    pacer.mosquitto_pub("race/alice", 1, fix);
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &brokers)
        .set("security.protocol", "ssl")
        .set("ssl.ca.location", ca.to_str().unwrap())
        .set("group.id", "tls-reader")
        .set("auto.offset.reset", "earliest");
    let consumer: BaseConsumer = client.create().unwrap();
    consumer.subscribe(&["tls.race"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let message = loop {
        assert!(Instant::now() < deadline, "no record on tls.race over TLS within 30 s");
        if let Some(message) = consumer.poll(Duration::from_millis(500)) {
            break message.unwrap().detach();
        }
    };
    assert_eq!(message.payload(), Some(fix.as_bytes()));
    assert_eq!(message.key(), Some(&b"alice"[..]));
}

/// The config of node `name` of several relaying MQTT between them on `tansu`.
fn relay_node(tansu: &Tansu, dir: &Path, name: &str) -> PathBuf {
    kafka_config(dir, tansu, "s.", &format!("\n[mqtt]\nrelay = true\nnode = \"{name}\"\n"))
}

/// One session per client id across the nodes: a persistent session follows its client to
/// whichever node it connects to, with what it was owed there, each message once; the same
/// client id on another node ends the connection on the first (MQTT-3.1.4-2, cluster-wide);
/// after `kill -9` of both nodes the session is still on the node it was last on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_moves_with_its_client_between_nodes() {
    use common::mqtt311::{connected, disconnect, options, received, subscribed};
    use rumqttc::{AsyncClient, EventLoop, QoS};

    let tansu = Tansu::start();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (config_a, config_b) = (relay_node(&tansu, dir_a.path(), "a"), relay_node(&tansu, dir_b.path(), "b"));
    let start = |dir: &Path, config: &Path| tokio::task::block_in_place(|| start_pacer(dir, config));
    let publish = |pacer: &Pacer, n: u32| {
        tokio::task::block_in_place(|| pacer.mosquitto_pub(&format!("x/{n}"), 1, &n.to_string()))
    };
    let connect = |pacer: &Pacer| AsyncClient::new(options(pacer, "keeper", false), 10);
    // Sorted: messages from different nodes' publishers have no order among them.
    async fn payloads(events: &mut EventLoop, n: usize) -> Vec<String> {
        let mut payloads: Vec<String> =
            received(events, n).await.iter().map(|p| String::from_utf8_lossy(&p.payload).into_owned()).collect();
        payloads.sort();
        payloads
    }

    let (mut a, mut b) = (start(dir_a.path(), &config_a), start(dir_b.path(), &config_b));
    let (client, mut events) = connect(&a);
    connected(&mut events).await;
    client.subscribe("x/#", QoS::AtLeastOnce).await.unwrap();
    subscribed(&mut events).await;
    disconnect(client, events).await;
    publish(&a, 1);
    publish(&b, 2);

    // Back on b: the session came along, with both messages owed on a. What b has was owed
    // on a alone: a message published after connecting comes right after them.
    let (client_b, mut events_b) = connect(&b);
    assert!(connected(&mut events_b).await.session_present, "b took the session over from a");
    publish(&a, 3);
    assert_eq!(payloads(&mut events_b, 3).await, ["1", "2", "3"]);

    // The same client id on a while connected to b: b closes its connection.
    let (client_a, mut events_a) = connect(&a);
    assert!(connected(&mut events_a).await.session_present, "a took the session back");
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if events_b.poll().await.is_err() {
                return;
            }
        }
    });
    closed.await.expect("b kept the connection a took over");
    drop(client_b);
    publish(&b, 4);
    assert_eq!(payloads(&mut events_a, 1).await, ["4"], "nothing b had delivered comes again from a");
    disconnect(client_a, events_a).await;

    // Owed on a when both nodes are killed, one published on b while a was down; the
    // session is a's after the restart.
    publish(&a, 5);
    drop(a);
    publish(&b, 6);
    drop(b);
    (a, b) = (start(dir_a.path(), &config_a), start(dir_b.path(), &config_b));
    publish(&b, 7);
    let (client, mut events) = connect(&b);
    assert!(connected(&mut events).await.session_present, "b took the session over from the restarted a");
    publish(&a, 8);
    assert_eq!(payloads(&mut events, 4).await, ["5", "6", "7", "8"]);
    disconnect(client, events).await;

    // Nothing of it stayed owed on a either.
    let (client, mut events) = connect(&a);
    assert!(connected(&mut events).await.session_present);
    publish(&b, 9);
    assert_eq!(payloads(&mut events, 1).await, ["9"]);
    disconnect(client, events).await;
}

/// Moves under load: a publisher on each node sends numbered QoS 1 messages without pause
/// while a subscriber's persistent session moves between the nodes six times (each move a
/// connection to the other node, which ends the one before). Every acknowledged message
/// reaches the subscriber. Duplicates are only counted: the test reads the old connection
/// only after the move, so what it had in flight is sent again (QoS 1), as on one node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_moving_under_load_misses_no_acknowledged_message() {
    use common::mqtt311::{connected, options, subscribed};
    use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Publishes `{name}-{i}` until `stop`, then returns how many, all acknowledged.
    async fn publish_until(port: u16, name: &'static str, stop: Arc<AtomicBool>) -> u32 {
        let mut o = rumqttc::MqttOptions::new(format!("pub-{name}"), "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30));
        let (client, mut events) = AsyncClient::new(o, 10);
        let mut sender = tokio::spawn(async move {
            let mut sent = 0;
            // A steady load that tansu and two nodes keep up with on a shared 2-core machine.
            let mut pace = tokio::time::interval(Duration::from_millis(100));
            while !stop.load(Ordering::Relaxed) {
                pace.tick().await;
                client
                    .publish(format!("load/{name}"), QoS::AtLeastOnce, false, format!("{name}-{sent}"))
                    .await
                    .unwrap();
                sent += 1;
            }
            sent
        });
        let (mut sent, mut acked) = (None, 0);
        while sent.is_none_or(|n| acked < n) {
            tokio::select! {
                event = events.poll() => if let Event::Incoming(Packet::PubAck(_)) = event.expect("publisher connection") {
                    acked += 1;
                },
                n = &mut sender, if sent.is_none() => sent = Some(n.unwrap()),
            }
        }
        acked
    }
    /// Polls `events` for `n` messages (or until the connection ends, with `n` None).
    async fn take(events: &mut EventLoop, n: Option<usize>, got: &mut HashMap<String, u32>) {
        let mut taken = 0;
        tokio::time::timeout(Duration::from_secs(60), async {
            while n.is_none_or(|n| taken < n) {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        *got.entry(String::from_utf8_lossy(&p.payload).into_owned()).or_default() += 1;
                        taken += 1;
                    }
                    Ok(_) => {}
                    Err(e) if n.is_none() => return e,
                    Err(e) => panic!("subscriber connection lost: {e}"),
                }
            }
            rumqttc::ConnectionError::RequestsDone
        })
        .await
        .unwrap_or_else(|_| panic!("{taken} of {n:?} messages in 60 s"));
    }

    let tansu = Tansu::start();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (config_a, config_b) = (relay_node(&tansu, dir_a.path(), "a"), relay_node(&tansu, dir_b.path(), "b"));
    let (a, b) =
        tokio::task::block_in_place(|| (start_pacer(dir_a.path(), &config_a), start_pacer(dir_b.path(), &config_b)));
    let nodes = [&a, &b];
    let (client, mut events) = AsyncClient::new(options(&a, "keeper", false), 10);
    connected(&mut events).await;
    client.subscribe("load/#", QoS::AtLeastOnce).await.unwrap();
    subscribed(&mut events).await;

    let stop = Arc::new(AtomicBool::new(false));
    let publisher_a = tokio::spawn(publish_until(a.mqtt_port, "a", stop.clone()));
    let publisher_b = tokio::spawn(publish_until(b.mqtt_port, "b", stop.clone()));
    let mut got: HashMap<String, u32> = HashMap::new();
    let mut current = (client, events);
    for step in 1..=6 {
        take(&mut current.1, Some(20), &mut got).await;
        let (client, mut events) = AsyncClient::new(options(nodes[step % 2], "keeper", false), 10);
        // A move waits on round trips through tansu, slow under load (seconds).
        let mut network = events.network_options();
        network.set_connection_timeout(60);
        events.set_network_options(network);
        let started = Instant::now();
        assert!(connected(&mut events).await.session_present, "move {step}: the session came along");
        println!("move {step}: {:?}", started.elapsed());
        // The node left closes the connection; what it still sent counts (rumqttc acked it).
        take(&mut current.1, None, &mut got).await;
        current = (client, events);
    }
    stop.store(true, Ordering::Relaxed);
    let (sent_a, sent_b) = (publisher_a.await.unwrap(), publisher_b.await.unwrap());
    let expected: Vec<String> =
        (0..sent_a).map(|i| format!("a-{i}")).chain((0..sent_b).map(|i| format!("b-{i}"))).collect();
    let missing = |got: &HashMap<String, u32>| expected.iter().filter(|m| !got.contains_key(*m)).count();
    tokio::time::timeout(Duration::from_secs(60), async {
        while missing(&got) > 0 {
            take(&mut current.1, Some(1), &mut got).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!("{} of {} acknowledged messages never reached the subscriber", missing(&got), expected.len())
    });
    let twice: u32 = got.values().map(|n| n - 1).sum();
    println!("{} messages ({sent_a} from a, {sent_b} from b), 6 moves, {twice} delivered twice", expected.len());
}

/// A move from a node that cannot answer (paused with SIGSTOP): the claim stops waiting
/// after 10 s and the client is served from the other node; what the paused node queued
/// for the session once it resumed (here: a message published before the move) reaches the
/// client on its new node when the paused node lets go, late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_moving_away_from_a_paused_node_gets_what_that_node_queued_late() {
    use common::mqtt311::{connected, options, received, subscribed};
    use rumqttc::{AsyncClient, QoS};

    let tansu = Tansu::start();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (config_a, config_b) = (relay_node(&tansu, dir_a.path(), "a"), relay_node(&tansu, dir_b.path(), "b"));
    let (a, b) =
        tokio::task::block_in_place(|| (start_pacer(dir_a.path(), &config_a), start_pacer(dir_b.path(), &config_b)));
    let (client, mut events) = AsyncClient::new(options(&a, "keeper", false), 10);
    connected(&mut events).await;
    client.subscribe("x/#", QoS::AtLeastOnce).await.unwrap();
    subscribed(&mut events).await;
    common::mqtt311::disconnect(client, events).await;

    signal(a.child.id(), "-STOP");
    tokio::task::block_in_place(|| b.mosquitto_pub("x/1", 1, "1"));
    let (_client, mut events) = AsyncClient::new(options(&b, "keeper", false), 10);
    let mut network = events.network_options();
    network.set_connection_timeout(60);
    events.set_network_options(network);
    assert!(connected(&mut events).await.session_present, "b took the session without a's answer");
    signal(a.child.id(), "-CONT");
    // A resumed node's Kafka clients reconnect first: slow when tansu is busy with other tests.
    let late = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = events.poll().await.expect("subscriber") {
                return p;
            }
        }
    });
    let got = late.await.expect("what a queued after it resumed never came over");
    assert_eq!(String::from_utf8_lossy(&got.payload), "1", "queued on a after it resumed, handed over late");
    tokio::task::block_in_place(|| b.mosquitto_pub("x/2", 1, "2"));
    let got = received(&mut events, 1).await;
    assert_eq!(String::from_utf8_lossy(&got[0].payload), "2", "and nothing twice");
}
