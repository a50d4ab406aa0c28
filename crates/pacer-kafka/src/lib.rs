//! The Kafka backend: Pacer's [`Log`] on a Kafka-protocol cluster (Apache Kafka, Redpanda,
//! MSK, Confluent Cloud, tansu).
//!
//! A stream is the topic `{topic_prefix}{stream}`; a record's key, value, timestamp and headers
//! are the Kafka record's own, so any Kafka tool reads what Pacer writes and Pacer reads what
//! other tools wrote. Keys are partitioned with murmur2, as the embedded log and Java clients
//! do. `append` returns once the cluster acknowledged every record (`acks=all` by default):
//! that is the moment the durability contract allows an MQTT PUBACK.

mod group;
mod reader;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pacer_core::NewRecord;
use pacer_log::{
    validate_stream_name, Appended, GroupMember, Log, LogError, Positions, Result, StartAt, StreamInfo, StreamReader,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{Client, ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Deserialize;

/// How long a metadata, offset or admin request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// `[log.kafka]` in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: `host:port` pairs, comma separated.
    pub brokers: String,
    /// Put before every stream name to make its topic name, so several Pacer installations
    /// (or Pacer and other users) can share a cluster.
    pub topic_prefix: String,
    /// Replication factor of the topics Pacer creates.
    pub replication_factor: i32,
    /// Producer `acks`; `all` is what the durability contract needs.
    pub acks: String,
    /// Producer `compression.type`: none, gzip, snappy, lz4 or zstd.
    pub compression: String,
    /// `security.protocol`: plaintext, ssl, sasl_plaintext or sasl_ssl.
    pub security_protocol: Option<String>,
    /// `sasl.mechanism`: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    pub sasl_mechanism: Option<String>,
    pub sasl_username: Option<String>,
    pub sasl_password: Option<String>,
    /// CA bundle to verify the brokers' certificates (PEM file).
    pub ssl_ca_location: Option<String>,
    /// Client certificate and key for mutual TLS (PEM files).
    pub ssl_certificate_location: Option<String>,
    pub ssl_key_location: Option<String>,
    /// Whether the cluster takes DeleteRecords, which drops query checkpoints a whole-state
    /// one made obsolete (off for brokers without it, e.g. tansu; the topics then only grow).
    pub delete_records: bool,
    /// Any other librdkafka property, passed through as given (e.g. `"linger.ms" = "2"`).
    pub properties: BTreeMap<String, String>,
    /// This node's last run ended without leaving its consumer groups (killed, crashed), so
    /// its memberships linger until `session.timeout.ms` runs out: it joins groups only
    /// after that. A coordinator that sees a new member join while the old one (maybe the
    /// group's leader) times out mid-rebalance can leave the group with no leader and the new
    /// member steady with no partitions (tansu 0.6 does); Kafka would wait as long anyway.
    /// Set by the server, not the config file.
    #[serde(skip)]
    pub last_run_crashed: bool,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topic_prefix: String::new(),
            replication_factor: 1,
            acks: "all".into(),
            compression: "none".into(),
            security_protocol: None,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            ssl_ca_location: None,
            ssl_certificate_location: None,
            ssl_key_location: None,
            delete_records: true,
            properties: BTreeMap::new(),
            last_run_crashed: false,
        }
    }
}

impl KafkaConfig {
    /// Connection and security settings every client (producer, consumer, admin) shares.
    fn client(&self) -> ClientConfig {
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", &self.brokers);
        let optional = [
            ("security.protocol", &self.security_protocol),
            ("sasl.mechanism", &self.sasl_mechanism),
            ("sasl.username", &self.sasl_username),
            ("sasl.password", &self.sasl_password),
            ("ssl.ca.location", &self.ssl_ca_location),
            ("ssl.certificate.location", &self.ssl_certificate_location),
            ("ssl.key.location", &self.ssl_key_location),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                client.set(name, value);
            }
        }
        client
    }

    /// Passed-through properties go last so users can override anything Pacer sets; those
    /// that belong only to producers or consumers are skipped by librdkafka on the other kind
    /// with a warning, so they are filtered by the kind here.
    fn with_properties(&self, mut client: ClientConfig, kind: ClientKind) -> ClientConfig {
        for (name, value) in &self.properties {
            if kind.accepts(name) {
                client.set(name, value);
            }
        }
        client
    }
}

#[derive(Clone, Copy, PartialEq)]
enum ClientKind {
    Producer,
    Consumer,
}

impl ClientKind {
    fn accepts(self, property: &str) -> bool {
        const PRODUCER_ONLY: &[&str] = &[
            "acks",
            "linger.ms",
            "batch.size",
            "batch.num.messages",
            "compression.type",
            "enable.idempotence",
            "partitioner",
            "queue.buffering.max.messages",
            "queue.buffering.max.kbytes",
            "message.timeout.ms",
            "delivery.timeout.ms",
            "retries",
        ];
        let producer_only = PRODUCER_ONLY.contains(&property);
        const CONSUMER_ONLY: &[&str] = &[
            "session.timeout.ms",
            "heartbeat.interval.ms",
            "max.poll.interval.ms",
            "auto.offset.reset",
            "enable.auto.commit",
            "auto.commit.interval.ms",
            "isolation.level",
            "partition.assignment.strategy",
        ];
        let consumer_only =
            CONSUMER_ONLY.contains(&property) || property.starts_with("fetch.") || property.starts_with("group.");
        match self {
            ClientKind::Producer => !consumer_only,
            ClientKind::Consumer => !producer_only,
        }
    }
}

/// How Pacer creates the topics of new streams; the `[log]` settings both backends share.
#[derive(Debug, Clone, Default)]
pub struct NewTopics {
    pub partitions: u32,
    /// Topic `retention.ms` and `retention.bytes`; unset leaves the cluster's defaults.
    pub retention_ms: Option<u64>,
    pub retention_bytes: Option<u64>,
    /// `retention.ms` of particular streams' topics: history policies.
    pub stream_retention_ms: std::collections::HashMap<String, u64>,
}

/// The log on a Kafka cluster.
pub struct KafkaLog {
    config: KafkaConfig,
    new_topics: NewTopics,
    producer: FutureProducer<LastError>,
    admin: AdminClient<DefaultClientContext>,
    /// Metadata and watermark requests.
    metadata: BaseConsumer,
    /// Topics known to exist, so `append` asks the cluster to create each one once.
    topics: Mutex<HashSet<String>>,
    /// Held while asking the cluster to create a topic: tasks starting together (a query's
    /// partitions) would otherwise each ask for the same topic at once.
    creating: tokio::sync::Mutex<()>,
    /// One consumer per group that commits positions.
    groups: Mutex<HashMap<String, Arc<BaseConsumer>>>,
    /// When query groups may be joined (see [`KafkaConfig::last_run_crashed`]).
    join_groups_at: std::time::Instant,
}

impl KafkaLog {
    /// Connects to the cluster and checks it answers, so a wrong address fails at start.
    pub fn connect(config: KafkaConfig, new_topics: NewTopics) -> Result<KafkaLog> {
        let fail = |error: KafkaError| client_error(&config.brokers, error);
        let last_error = LastError::default();
        let producer: FutureProducer<LastError> = config
            .with_properties(
                {
                    let mut c = config.client();
                    c.set("acks", &config.acks)
                        .set("compression.type", &config.compression)
                        // Java clients' partitioner, so a key lands where the embedded log
                        // and every Kafka Streams application put it.
                        .set("partitioner", "murmur2_random");
                    // Retries after a lost acknowledgement then neither duplicate nor reorder
                    // (librdkafka allows it only with acks=all).
                    if matches!(config.acks.as_str(), "all" | "-1") {
                        c.set("enable.idempotence", "true");
                    }
                    c
                },
                ClientKind::Producer,
            )
            .create_with_context(last_error.clone())
            .map_err(fail)?;
        let admin = config.with_properties(config.client(), ClientKind::Consumer).create().map_err(fail)?;
        let metadata: BaseConsumer = config.consumer_config("pacer-metadata").create().map_err(fail)?;
        if let Err(error) = producer.client().fetch_metadata(None, REQUEST_TIMEOUT) {
            // The client's last error says why (authentication, TLS, refused); the failed
            // request only that it timed out.
            let why = last_error.0.lock().unwrap().take();
            return Err(LogError::Cluster {
                stream: String::new(),
                error: format!(
                    "cannot reach Kafka at {}: {}",
                    config.brokers,
                    why.unwrap_or_else(|| error.to_string())
                ),
            });
        }
        Ok(KafkaLog {
            new_topics: NewTopics { partitions: new_topics.partitions.max(1), ..new_topics },
            producer,
            admin,
            metadata,
            topics: Mutex::new(HashSet::new()),
            creating: tokio::sync::Mutex::new(()),
            groups: Mutex::new(HashMap::new()),
            join_groups_at: std::time::Instant::now() + config.lingering_membership(),
            config,
        })
    }

    fn topic(&self, stream: &str) -> String {
        format!("{}{}", self.config.topic_prefix, stream)
    }

    /// Creates the topic unless it exists. Clusters without auto-creation (and tansu) need
    /// this before the first produce.
    async fn ensure_topic(&self, stream: &str, topic: &str) -> Result<()> {
        self.ensure_topic_with(stream, topic, None).await
    }

    /// Creates the topic with `partitions` (`None`: as configured) unless it exists.
    async fn ensure_topic_with(&self, stream: &str, topic: &str, partitions: Option<u32>) -> Result<()> {
        if self.topics.lock().unwrap().contains(topic) {
            return Ok(());
        }
        let _creating = self.creating.lock().await;
        if self.topics.lock().unwrap().contains(topic) {
            return Ok(());
        }
        let settings = &self.new_topics;
        let (retention_ms, retention_bytes) = if pacer_log::is_internal(stream) {
            // Pacer's own state carries event times (a replayed race's are years old): the
            // cluster's default retention would delete checkpoints still needed. Pacer drops
            // what it no longer needs itself, as Kafka Streams does with its internal topics.
            (Some("-1".to_string()), Some("-1".to_string()))
        } else {
            let ms = settings.stream_retention_ms.get(stream).copied().or(settings.retention_ms);
            (ms.map(|v| v.to_string()), settings.retention_bytes.map(|v| v.to_string()))
        };
        let partitions = partitions.unwrap_or_else(|| pacer_log::partitions_for(stream, settings.partitions));
        let mut new = NewTopic::new(topic, partitions as i32, TopicReplication::Fixed(self.config.replication_factor));
        if let Some(ms) = &retention_ms {
            new = new.set("retention.ms", ms);
        }
        if let Some(bytes) = &retention_bytes {
            new = new.set("retention.bytes", bytes);
        }
        let options = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
        let results = self
            .admin
            .create_topics([&new], &options)
            .await
            .map_err(|e| cluster_error(stream, &self.config.brokers, e))?;
        for result in results {
            match result {
                Ok(_) => tracing::info!(topic, partitions, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    return Err(LogError::Cluster {
                        stream: stream.to_string(),
                        error: format!("creating topic {topic}: {code}"),
                    })
                }
            }
        }
        self.topics.lock().unwrap().insert(topic.to_string());
        Ok(())
    }

    fn group_consumer(&self, group: &str) -> Result<Arc<BaseConsumer>> {
        let mut groups = self.groups.lock().unwrap();
        if let Some(consumer) = groups.get(group) {
            return Ok(consumer.clone());
        }
        let consumer: BaseConsumer =
            self.config.consumer_config(group).create().map_err(|e| client_error(&self.config.brokers, e))?;
        let consumer = Arc::new(consumer);
        groups.insert(group.to_string(), consumer.clone());
        Ok(consumer)
    }

    fn open_reader(&self, stream: &str, only: Option<&[u32]>, start: StartAt) -> Result<Box<dyn StreamReader>> {
        validate_stream_name(stream)?;
        Ok(Box::new(reader::KafkaReader::new(
            stream,
            self.topic(stream),
            self.config.consumer_config("pacer-reader"),
            self.config.brokers.clone(),
            start,
            only,
        )))
    }

    /// Partition numbers of a topic, or none when it does not exist.
    fn partitions_of<C: ClientContext>(client: &Client<C>, topic: &str) -> KafkaResultPartitions {
        let metadata = client.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
        Ok(metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().iter().map(|p| p.id()).collect())
            .unwrap_or_default())
    }
}

type KafkaResultPartitions = std::result::Result<Vec<i32>, KafkaError>;

/// Where `partitions` of `topic` begin and end now (low and high watermarks, in the order
/// asked), in two ListOffsets requests however many partitions there are: `fetch_watermarks`
/// sends two per partition, and a broker that serves requests one at a time (tansu) falls
/// behind under them.
fn watermarks<X: rdkafka::consumer::ConsumerContext, C: Consumer<X>>(
    consumer: &C,
    topic: &str,
    partitions: &[i32],
) -> std::result::Result<Vec<(i64, i64)>, KafkaError> {
    // ListOffsets takes -2 for the earliest offset and -1 for the latest as timestamps.
    let ask = |at: Offset| -> std::result::Result<HashMap<i32, i64>, KafkaError> {
        let mut list = TopicPartitionList::new();
        for &partition in partitions {
            list.add_partition_offset(topic, partition, at)?;
        }
        let answer = consumer.offsets_for_times(list, REQUEST_TIMEOUT)?;
        Ok(answer
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(offset) if e.error().is_ok() => Some((e.partition(), offset)),
                _ => None,
            })
            .collect())
    };
    let (lows, highs) = (ask(Offset::Beginning)?, ask(Offset::End)?);
    partitions
        .iter()
        .map(|p| match (lows.get(p), highs.get(p)) {
            (Some(&low), Some(&high)) => Ok((low, high)),
            // A partition the batched request did not answer: ask for it alone.
            _ => consumer.fetch_watermarks(topic, *p, REQUEST_TIMEOUT),
        })
        .collect()
}

impl KafkaConfig {
    /// How long the memberships of a crashed last run stay in their groups.
    fn lingering_membership(&self) -> Duration {
        if !self.last_run_crashed {
            return Duration::ZERO;
        }
        // librdkafka's default session timeout.
        let ms = self.properties.get("session.timeout.ms").and_then(|ms| ms.parse().ok()).unwrap_or(45_000);
        Duration::from_millis(ms)
    }

    /// A consumer that never commits by itself: Pacer decides what counts as processed.
    fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut client = self.client();
        client
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest");
        self.with_properties(client, ClientKind::Consumer)
    }
}

fn cluster_error(stream: &str, brokers: &str, error: KafkaError) -> LogError {
    LogError::Cluster { stream: stream.to_string(), error: format!("stream {stream:?} on Kafka at {brokers}: {error}") }
}

/// A client that could not be set up: a bad property, usually.
fn client_error(brokers: &str, error: KafkaError) -> LogError {
    LogError::Cluster { stream: String::new(), error: format!("Kafka client for {brokers}: {error}") }
}

#[async_trait]
impl Log for KafkaLog {
    fn shared(&self) -> bool {
        true
    }

    async fn append(&self, stream: &str, records: Vec<NewRecord>) -> Result<Vec<Appended>> {
        validate_stream_name(stream)?;
        let topic = self.topic(stream);
        self.ensure_topic(stream, &topic).await?;
        let mut deliveries = Vec::with_capacity(records.len());
        for record in &records {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for (name, value) in &record.headers {
                headers = headers.insert(Header { key: name, value: Some(value.as_ref()) });
            }
            let mut message =
                FutureRecord::to(&topic).payload(record.value.as_ref()).timestamp(record.timestamp).headers(headers);
            if let Some(key) = &record.key {
                message = message.key(key.as_ref());
            }
            if let Some(partition) = record.partition {
                message = message.partition(partition as i32);
            }
            loop {
                match self.producer.send_result(message) {
                    Ok(delivery) => break deliveries.push(delivery),
                    // The producer's queue is full: give its I/O threads a moment to send.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        message = back;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((error, _)) => return Err(cluster_error(stream, &self.config.brokers, error)),
                }
            }
        }
        let mut appended = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(d)) => appended.push(Appended { partition: d.partition as u32, offset: d.offset as u64 }),
                Ok(Err((error, _))) => return Err(cluster_error(stream, &self.config.brokers, error)),
                Err(_) => return Err(LogError::Closed),
            }
        }
        Ok(appended)
    }

    async fn create_stream(&self, stream: &str, partitions: u32) -> Result<()> {
        validate_stream_name(stream)?;
        self.ensure_topic_with(stream, &self.topic(stream), Some(partitions.max(1))).await
    }

    fn reader(&self, stream: &str, start: StartAt) -> Result<Box<dyn StreamReader>> {
        self.open_reader(stream, None, start)
    }

    fn partition_reader(&self, stream: &str, partitions: &[u32], start: StartAt) -> Result<Box<dyn StreamReader>> {
        self.open_reader(stream, Some(partitions), start)
    }

    fn join_group(&self, group: &str, stream: &str) -> Result<Box<dyn GroupMember>> {
        validate_stream_name(stream)?;
        let member = group::KafkaGroupMember::join(&self.config, group, &self.topic(stream), self.join_groups_at)
            .map_err(|e| cluster_error(stream, &self.config.brokers, e))?;
        Ok(Box::new(member))
    }

    fn partitions(&self, stream: &str) -> u32 {
        // One topic's metadata, not every topic's watermarks as `streams` needs.
        KafkaLog::partitions_of(self.metadata.client(), &self.topic(stream)).map_or(0, |p| p.len() as u32)
    }

    fn streams(&self) -> Vec<StreamInfo> {
        let metadata = match self.metadata.fetch_metadata(None, REQUEST_TIMEOUT) {
            Ok(m) => m,
            Err(error) => {
                tracing::warn!(%error, "listing topics failed");
                return Vec::new();
            }
        };
        let mut streams = Vec::new();
        for topic in metadata.topics() {
            let Some(name) = topic.name().strip_prefix(&self.config.topic_prefix) else { continue };
            if pacer_log::is_internal(name) || topic.error().is_some() || validate_stream_name(name).is_err() {
                continue;
            }
            let mut info = StreamInfo {
                name: name.to_string(),
                partitions: topic.partitions().len() as u32,
                records: 0,
                // Kafka tells sizes only through DescribeLogDirs, which managed services deny.
                bytes: 0,
                end_offsets: Vec::new(),
                first_timestamp: None,
                last_timestamp: None,
            };
            let mut ids: Vec<i32> = topic.partitions().iter().map(|p| p.id()).collect();
            ids.sort_unstable();
            let marks = watermarks(&self.metadata, topic.name(), &ids).unwrap_or_else(|error| {
                tracing::warn!(topic = topic.name(), %error, "reading a topic's offsets failed");
                vec![(0, 0); ids.len()]
            });
            for (low, high) in marks {
                info.records += (high - low).max(0) as u64;
                info.end_offsets.push(high.max(0) as u64);
            }
            streams.push(info);
        }
        streams.sort_by(|a, b| a.name.cmp(&b.name));
        streams
    }

    async fn delete_before(&self, stream: &str, positions: &Positions) -> Result<()> {
        if !self.config.delete_records {
            return Ok(());
        }
        let topic = self.topic(stream);
        let mut list = TopicPartitionList::new();
        for (p, next) in positions.iter() {
            list.add_partition_offset(&topic, p as i32, Offset::Offset(next as i64))
                .map_err(|e| cluster_error(stream, &self.config.brokers, e))?;
        }
        let options = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
        let deleted = self
            .admin
            .delete_records(&list, &options)
            .await
            .map_err(|e| cluster_error(stream, &self.config.brokers, e))?;
        for element in deleted.elements() {
            element.error().map_err(|e| cluster_error(stream, &self.config.brokers, e))?;
        }
        Ok(())
    }

    async fn commit_positions(&self, group: &str, stream: &str, positions: &Positions) -> Result<()> {
        let consumer = self.group_consumer(group)?;
        let topic = self.topic(stream);
        let mut list = TopicPartitionList::new();
        for (partition, next) in positions.iter() {
            list.add_partition_offset(&topic, partition as i32, Offset::Offset(next as i64))
                .map_err(|e| cluster_error(stream, &self.config.brokers, e))?;
        }
        let brokers = self.config.brokers.clone();
        let stream = stream.to_string();
        tokio::task::spawn_blocking(move || {
            consumer.commit(&list, CommitMode::Sync).map_err(|e| cluster_error(&stream, &brokers, e))
        })
        .await
        .map_err(|_| LogError::Closed)?
    }

    fn committed_positions(&self, group: &str, stream: &str) -> Option<Positions> {
        let topic = self.topic(stream);
        let committed = self.group_consumer(group).and_then(|consumer| {
            let fail = |e| cluster_error(stream, &self.config.brokers, e);
            let mut list = TopicPartitionList::new();
            for p in KafkaLog::partitions_of(consumer.client(), &topic).map_err(fail)? {
                list.add_partition(&topic, p);
            }
            consumer.committed_offsets(list, REQUEST_TIMEOUT).map_err(fail)
        });
        let committed = match committed {
            Ok(list) => list,
            Err(error) => {
                // The trait has no error to give; a caller then starts from the beginning,
                // which repeats work but loses nothing. Say so.
                tracing::warn!(group, stream, %error, "reading committed positions failed; starting from the beginning");
                return None;
            }
        };
        let mut positions = Positions::new();
        for element in committed.elements() {
            if let Offset::Offset(next) = element.offset() {
                positions.set(element.partition() as u32, next as u64);
            }
        }
        (!positions.is_empty()).then_some(positions)
    }
}

/// A client context that keeps librdkafka's last error, which says why a cluster cannot be
/// reached. The producer's own thread serves these events.
#[derive(Clone, Default)]
struct LastError(Arc<Mutex<Option<String>>>);

impl ClientContext for LastError {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "Kafka client");
        // "All brokers are down" follows the error that says why.
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::AllBrokersDown) {
            *self.0.lock().unwrap() = Some(reason.to_string());
        }
    }
}
