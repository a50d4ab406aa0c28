//! Reading a stream from Kafka: one consumer with every partition of the topic assigned,
//! starting where the caller asked, never committing by itself.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt;
use pacer_core::Record;
use pacer_log::{LogError, Positions, Result, StartAt, StreamReader};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::task::JoinHandle;

use crate::{cluster_error, watermarks, KafkaLog, REQUEST_TIMEOUT};

/// Records handed out per batch at most, so one busy stream cannot starve a caller's loop.
const MAX_BATCH: usize = 8192;

/// How often a waiting reader looks again for a stream that does not exist yet.
const TOPIC_POLL: Duration = Duration::from_millis(250);
/// How long a waiting reader waits before trying again after the cluster did not answer.
const REOPEN_WAIT: Duration = Duration::from_secs(1);

pub(crate) struct KafkaReader {
    stream: String,
    topic: String,
    brokers: String,
    config: Arc<ClientConfig>,
    start: StartAt,
    /// The partitions to read; all when `None`.
    only: Option<Arc<[i32]>>,
    state: State,
    positions: Positions,
}

enum State {
    /// The consumer being created and assigned; kept here so a cancelled call loses nothing.
    Opening(JoinHandle<std::result::Result<Option<Opened>, KafkaError>>),
    /// The topic did not exist at the last look.
    Missing,
    Open(Arc<StreamConsumer>),
}

struct Opened {
    consumer: StreamConsumer,
    positions: Positions,
}

impl KafkaReader {
    pub(crate) fn new(
        stream: &str,
        topic: String,
        config: ClientConfig,
        brokers: String,
        start: StartAt,
        only: Option<&[u32]>,
    ) -> Self {
        let mut reader = KafkaReader {
            stream: stream.to_string(),
            topic,
            brokers,
            config: Arc::new(config),
            start,
            only: only.map(|o| o.iter().map(|&p| p as i32).collect()),
            state: State::Missing,
            positions: Positions::new(),
        };
        // Started now, not at the first read, so `StartAt::End` means the end at creation.
        reader.state = reader.open();
        reader
    }

    fn open(&self) -> State {
        let (topic, config, start, only) =
            (self.topic.clone(), self.config.clone(), self.start.clone(), self.only.clone());
        State::Opening(tokio::task::spawn_blocking(move || open(&topic, &config, start, only.as_deref())))
    }

    fn error(&self, error: KafkaError) -> LogError {
        cluster_error(&self.stream, &self.brokers, error)
    }

    /// The consumer, once the topic exists; with `wait`, waits for the topic like the
    /// embedded log waits for a stream, else answers `None` while there is none.
    async fn consumer(&mut self, wait: bool) -> Result<Option<Arc<StreamConsumer>>> {
        loop {
            match &mut self.state {
                State::Open(consumer) => return Ok(Some(consumer.clone())),
                State::Opening(opening) => {
                    let opened = match opening.await.map_err(|_| LogError::Closed)? {
                        // A waiting reader outlasts the cluster being away (a node paused,
                        // a broker restarting), as librdkafka's own consumers do.
                        Err(error) if wait && transient(&error) => {
                            tracing::warn!(stream = %self.stream, %error, "opening a Kafka reader; trying again");
                            self.state = State::Missing;
                            tokio::time::sleep(REOPEN_WAIT).await;
                            continue;
                        }
                        opened => opened.map_err(|e| self.error(e))?,
                    };
                    match opened {
                        Some(opened) => {
                            self.positions = opened.positions;
                            self.state = State::Open(Arc::new(opened.consumer));
                        }
                        None => {
                            // Whatever the topic gets from now on comes after the reader began.
                            if self.start == StartAt::End {
                                self.start = StartAt::Beginning;
                            }
                            self.state = State::Missing;
                            if !wait {
                                return Ok(None);
                            }
                            tokio::time::sleep(TOPIC_POLL).await;
                        }
                    }
                }
                State::Missing => self.state = self.open(),
            }
        }
    }

    /// Adds what the consumer holds already, without waiting.
    fn drain(&mut self, consumer: &StreamConsumer, batch: &mut Vec<Record>) -> Result<()> {
        while batch.len() < MAX_BATCH {
            match consumer.recv().now_or_never() {
                None => break,
                Some(message) => {
                    if let Some(record) = self.take(message)? {
                        batch.push(record);
                    }
                }
            }
        }
        Ok(())
    }

    /// A record from what the consumer returned; transient errors (a broker restarting, a
    /// connection lost) are logged, as librdkafka retries them itself.
    fn take(&mut self, message: std::result::Result<BorrowedMessage<'_>, KafkaError>) -> Result<Option<Record>> {
        match message {
            Ok(message) => {
                let record = to_record(&message);
                self.positions.advance_past(record.partition, record.offset);
                Ok(Some(record))
            }
            Err(error @ KafkaError::MessageConsumptionFatal(_)) => Err(self.error(error)),
            Err(error) => {
                tracing::warn!(stream = %self.stream, %error, "reading from Kafka");
                Ok(None)
            }
        }
    }

    /// Whether the reader has every record the cluster holds right now.
    async fn caught_up(&self, consumer: &Arc<StreamConsumer>) -> Result<bool> {
        let (consumer, topic, positions) = (consumer.clone(), self.topic.clone(), self.positions.clone());
        tokio::task::spawn_blocking(move || {
            // The partitions assigned at open (a local answer, no request to the cluster).
            let partitions: Vec<i32> = consumer.assignment()?.elements().iter().map(|e| e.partition()).collect();
            let marks = watermarks(consumer.as_ref(), &topic, &partitions)?;
            Ok(partitions.iter().zip(marks).all(|(&partition, (low, high))| {
                positions.get(partition as u32).map_or(low, |p| p as i64).max(low) >= high
            }))
        })
        .await
        .map_err(|_| LogError::Closed)?
        .map_err(|e| self.error(e))
    }
}

#[async_trait]
impl StreamReader for KafkaReader {
    async fn next_batch(&mut self) -> Result<Vec<Record>> {
        let consumer = self.consumer(true).await?.ok_or(LogError::Closed)?;
        let mut batch = Vec::new();
        while batch.is_empty() {
            let message = consumer.recv().await;
            if let Some(record) = self.take(message)? {
                batch.push(record);
            }
        }
        self.drain(&consumer, &mut batch)?;
        Ok(batch)
    }

    async fn try_batch(&mut self) -> Result<Vec<Record>> {
        let Some(consumer) = self.consumer(false).await? else { return Ok(Vec::new()) };
        let mut batch = Vec::new();
        self.drain(&consumer, &mut batch)?;
        // Nothing fetched yet is not the end: the end is what the cluster holds now.
        while batch.is_empty() && !self.caught_up(&consumer).await? {
            let message = consumer.recv().await;
            if let Some(record) = self.take(message)? {
                batch.push(record);
            }
            self.drain(&consumer, &mut batch)?;
        }
        Ok(batch)
    }

    fn positions(&self) -> Positions {
        self.positions.clone()
    }
}

/// Creates the consumer and assigns it every partition at the asked start; `None` when the
/// topic does not exist.
fn open(
    topic: &str,
    config: &ClientConfig,
    start: StartAt,
    only: Option<&[i32]>,
) -> std::result::Result<Option<Opened>, KafkaError> {
    let consumer: StreamConsumer = config.create()?;
    let mut partitions = KafkaLog::partitions_of(consumer.client(), topic)?;
    if let Some(only) = only {
        partitions.retain(|p| only.contains(p));
    }
    if partitions.is_empty() {
        return Ok(None);
    }
    let mut list = TopicPartitionList::new();
    let mut positions = Positions::new();
    let ends = match start {
        StartAt::End => watermarks(&consumer, topic, &partitions)?.into_iter().map(|(_, high)| high).collect(),
        _ => Vec::new(),
    };
    for (i, &partition) in partitions.iter().enumerate() {
        let offset = match &start {
            StartAt::Beginning => Offset::Beginning,
            StartAt::Positions(p) => p.get(partition as u32).map_or(Offset::Beginning, |o| Offset::Offset(o as i64)),
            StartAt::End => Offset::Offset(ends[i]),
            StartAt::Timestamp(ms) => Offset::Offset(*ms),
        };
        list.add_partition_offset(topic, partition, offset)?;
    }
    if let StartAt::Timestamp(_) = start {
        list = consumer.offsets_for_times(list, REQUEST_TIMEOUT)?;
        // No record at or after the time: start at the end.
        for element in list.clone().elements() {
            if !matches!(element.offset(), Offset::Offset(_)) {
                let (_, high) = consumer.fetch_watermarks(topic, element.partition(), REQUEST_TIMEOUT)?;
                list.set_partition_offset(topic, element.partition(), Offset::Offset(high))?;
            }
        }
    }
    for element in list.elements() {
        if let Offset::Offset(next) = element.offset() {
            positions.set(element.partition() as u32, next as u64);
        }
    }
    consumer.assign(&list)?;
    Ok(Some(Opened { consumer, positions }))
}

/// Errors of a cluster that is away for now (unreachable, slow, electing a leader), not of
/// the request: asking again later can succeed.
fn transient(error: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode::*;
    matches!(
        error.rdkafka_error_code(),
        Some(
            OperationTimedOut
                | RequestTimedOut
                | BrokerTransportFailure
                | AllBrokersDown
                | NetworkException
                | LeaderNotAvailable
                | NotLeaderForPartition
                | CoordinatorNotAvailable
                | NotCoordinator
                | Resolve
        )
    )
}

fn to_record(message: &BorrowedMessage<'_>) -> Record {
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| (h.key.to_string(), h.value.map(Bytes::copy_from_slice).unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    Record {
        partition: message.partition() as u32,
        offset: message.offset() as u64,
        timestamp: message.timestamp().to_millis().unwrap_or(0),
        key: message.key().map(Bytes::copy_from_slice),
        value: message.payload().map(Bytes::copy_from_slice).unwrap_or_default(),
        headers,
    }
}
