//! A GROUP BY whose groups are not the record key, spread over the nodes sharing a log.
//!
//! Records of one group come from every input partition, so no partition's task can
//! aggregate them alone. As ksqlDB does with a repartition topic, such a query runs in two
//! steps: the task of input partition `p` forwards each record to group partition `q` (by the
//! hash of its group), through partition `p × P + q` of the query's repartition stream (`P`
//! input partitions), a *lane*; the task of group partition `q` merges its lanes by event
//! time and aggregates. Both steps for `p == q` run where the consumer group places input
//! partition `p`, so the work moves with it.
//!
//! A lane per (p, q) keeps restarts exact with the log's own positions: the merging task
//! resumes each lane where it left it, and the forwarding task, restarted, recognises the
//! copies it already wrote. After its copies a forwarding task writes a watermark to each of
//! its lanes: the event time it has read up to, or, once it has read all its partition holds,
//! that it is idle (again every second while it is). The merging task hands a record on only
//! once every lane has been read past its time or is idle, so records meet the aggregation in
//! the order one node reading every partition gives them ([`pacer_log::TimeOrdered`]):
//! windows close, and EMIT FINAL rows come out, as they would on one node. A forwarding task
//! that stops says so (a watermark that is not idle), so the merging tasks wait for its
//! partition's next owner. As on one node, records arriving live on an idle partition may
//! be behind what the others brought: the window's grace period takes them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pacer_core::{NewRecord, Record};
use pacer_log::{EventTime, Log, Positions, StartAt, StreamReader};

use super::operator::Operator;
use super::plan::{Plan, Shape};

// A lane's records say what they are in their value, without headers (which some
// Kafka-protocol stores keep at a cost per header): a copy is `c<partition>:<offset>\n`
// and the input record's value (its key and timestamp as they were), a watermark is
// `w<event time>`, or `i<event time>` when its task is idle.
const COPY: u8 = b'c';
const WATERMARK: u8 = b'w';
const IDLE: u8 = b'i';
/// An idle forwarding task says so again this often, so a merging task that restarted past
/// the last time it said so does not wait for it.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How many records the merging task holds for a lane that says nothing (a forwarding task
/// whose node stopped answering) before it hands them on as they are.
const HOLD_MAX: usize = 100_000;
/// The most records one read hands out, so a backlog makes progress its task can checkpoint.
const RELEASE_MAX: usize = 8192;

/// Whether a query runs in two steps on a shared log: an aggregation whose groups span
/// partitions and whose rows depend on one group each (no ranking across groups, no
/// per-window stage, no table lookup taken at read time, one input).
pub fn regroups(plan: &Plan) -> bool {
    plan.stage.is_none()
        && plan.pair.is_none()
        && plan.lookup.is_none()
        && matches!(&plan.shape, Shape::Aggregate { over, .. } if over.is_empty())
}

/// The stream carrying a query's records to the partitions of their groups.
pub fn stream(query: &str) -> String {
    format!("__repartition_{}", query.to_ascii_lowercase())
}

/// The partition of the repartition stream carrying input partition `from`'s records whose
/// groups belong to group partition `to`, of `lanes` each.
pub fn lane(from: u32, to: u32, lanes: u32) -> u32 {
    from * lanes + to
}

/// The first step for one input partition: where each record goes, and the watermarks.
pub struct Forward {
    stream: String,
    from: u32,
    lanes: u32,
    /// The latest event time read.
    read_to: i64,
    /// Whether everything the input holds has been read (since the last records).
    caught_up: bool,
    /// Whether the last watermark said idle, and when it went.
    said: Option<(bool, Instant)>,
}

/// A batch's copies, each for the lane of its group, and the records that could not be
/// placed, with the reason.
pub struct Routed {
    pub copies: Vec<NewRecord>,
    pub rejected: Vec<(usize, String)>,
}

impl Forward {
    pub fn new(query: &str, from: u32, lanes: u32) -> Forward {
        let lanes = lanes.max(1);
        Forward { stream: stream(query), from, lanes, read_to: i64::MIN, caught_up: false, said: None }
    }

    /// The repartition stream, created with a lane for every pair of partitions.
    pub async fn create(&self, log: &Arc<dyn Log>) -> pacer_log::Result<()> {
        log.create_stream(&self.stream, self.lanes * self.lanes).await
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The lanes this task writes.
    pub fn own_lanes(&self) -> Vec<u32> {
        (0..self.lanes).map(|to| lane(self.from, to, self.lanes)).collect()
    }

    /// Copies of `batch` for the lanes of their groups, followed by a watermark in every
    /// lane. Records whose cause `forwarded` names (copied before a restart) are not copied
    /// again; records the query's WHERE leaves out go nowhere.
    pub fn route(
        &mut self,
        operator: &mut Operator,
        batch: &[Record],
        forwarded: &mut std::collections::HashSet<String>,
    ) -> Routed {
        let mut copies = Vec::new();
        let mut rejected = Vec::new();
        for (i, record) in batch.iter().enumerate() {
            let cause = format!("{}:{}", record.partition, record.offset);
            match operator.group_of(record) {
                Err(reason) => rejected.push((i, reason)),
                Ok((time, group)) => {
                    self.read_to = self.read_to.max(time);
                    let Some(group) = group else { continue };
                    if forwarded.remove(&cause) {
                        continue;
                    }
                    let to = pacer_log::partition_for_key(group.as_bytes(), self.lanes);
                    copies.push(self.copy(record, cause).to_partition(lane(self.from, to, self.lanes)));
                }
            }
        }
        if !batch.is_empty() {
            self.caught_up = false;
            copies.extend(self.watermarks(false));
        }
        Routed { copies, rejected }
    }

    /// Watermarks saying this task stops: the merging tasks wait for whoever forwards its
    /// partition next to catch up.
    pub fn leaving(&mut self) -> Vec<NewRecord> {
        self.watermarks(false)
    }

    /// The input has been read to its end (for now).
    pub fn caught_up(&mut self) {
        self.caught_up = true;
    }

    /// Watermarks saying this task has read everything for now, when it has and has not
    /// said so lately; none otherwise.
    pub fn idle(&mut self) -> Vec<NewRecord> {
        if !self.caught_up || matches!(self.said, Some((true, at)) if at.elapsed() < HEARTBEAT) {
            return Vec::new();
        }
        self.watermarks(true)
    }

    fn watermarks(&mut self, idle: bool) -> Vec<NewRecord> {
        self.said = Some((idle, Instant::now()));
        let text = Bytes::from(format!("{}{}", (if idle { IDLE } else { WATERMARK }) as char, self.read_to));
        self.own_lanes()
            .into_iter()
            .map(|lane| NewRecord::new(self.read_to.max(0), None, text.clone()).to_partition(lane))
            .collect()
    }

    /// The record's key, value and timestamp, with where it came from (its cause).
    fn copy(&self, record: &Record, cause: String) -> NewRecord {
        let mut value = Vec::with_capacity(cause.len() + 2 + record.value.len());
        value.push(COPY);
        value.extend_from_slice(cause.as_bytes());
        value.push(b'\n');
        value.extend_from_slice(&record.value);
        NewRecord::new(record.timestamp, record.key.clone(), value)
    }
}

/// The cause (`<partition>:<offset>` in the input) a lane's copy names, and the input
/// record's value; `None` for a watermark.
pub fn copied(value: &[u8]) -> Option<(&str, &[u8])> {
    let rest = value.strip_prefix(&[COPY])?;
    let end = rest.iter().position(|b| *b == b'\n')?;
    Some((std::str::from_utf8(&rest[..end]).ok()?, &rest[end + 1..]))
}

/// The second step's input: the lanes of one group partition merged by event time, each
/// record as it was in the input (its partition, offset, key, value and timestamp).
pub struct Regrouped {
    inner: Box<dyn StreamReader>,
    event_time: EventTime,
    /// Lanes by input partition.
    lanes: Vec<Lane>,
    held: usize,
    /// Whether every forwarding task is idle and nothing is held: only then is the input
    /// quiet, and may the wall clock move its event time on.
    quiet: Arc<AtomicBool>,
}

#[derive(Default)]
struct Lane {
    /// Records held, with their event time and place in the lane.
    queue: VecDeque<(i64, u32, u64, Record)>,
    /// The latest event time the lane has been read up to (records or watermarks).
    read_to: Option<i64>,
    idle: bool,
}

impl Regrouped {
    /// Group partition `to` of `query`, whose input has `lanes` partitions.
    pub fn open(
        log: &Arc<dyn Log>,
        query: &str,
        to: u32,
        lanes: u32,
        start: StartAt,
        event_time: EventTime,
    ) -> pacer_log::Result<Regrouped> {
        let own: Vec<u32> = (0..lanes).map(|from| lane(from, to, lanes)).collect();
        let inner = log.partition_reader(&stream(query), &own, start)?;
        let lanes = (0..lanes).map(|_| Lane::default()).collect();
        Ok(Regrouped { inner, event_time, lanes, held: 0, quiet: Arc::default() })
    }

    /// Whether the input is quiet now (every forwarding task idle, nothing held).
    pub fn quiet(&self) -> Arc<AtomicBool> {
        self.quiet.clone()
    }

    fn take(&mut self, batch: Vec<Record>) {
        let count = self.lanes.len() as u32;
        for mut record in batch {
            let Some(lane) = self.lanes.get_mut((record.partition / count) as usize) else { continue };
            let (partition, offset) = (record.partition, record.offset);
            let Some((cause, value)) = copied(&record.value) else {
                let (kind, time) = record.value.split_first().unwrap_or((&0, &[]));
                let time = std::str::from_utf8(time).ok().and_then(|t| t.parse::<i64>().ok());
                if let (WATERMARK | IDLE, Some(time)) = (*kind, time) {
                    lane.read_to = Some(lane.read_to.map_or(time, |t| t.max(time)));
                    lane.idle = *kind == IDLE;
                }
                continue;
            };
            // The input's partition and offset name the record (its cause) as on one node.
            let Some((input_partition, input_offset)) =
                cause.split_once(':').and_then(|(p, o)| Some((p.parse().ok()?, o.parse().ok()?)))
            else {
                continue;
            };
            record.value = record.value.slice_ref(value);
            (record.partition, record.offset) = (input_partition, input_offset);
            let time = (self.event_time)(&record);
            lane.read_to = Some(lane.read_to.map_or(time, |t| t.max(time)));
            lane.idle = false;
            lane.queue.push_back((time, partition, offset, record));
            self.held += 1;
        }
    }

    /// The held records every lane has been read past (or has said it is idle), merged by time.
    fn release(&mut self) -> Vec<Record> {
        let bound = if self.held >= HOLD_MAX {
            i64::MAX
        } else {
            let waiting = self.lanes.iter().filter(|l| !l.idle).map(|l| l.read_to.unwrap_or(i64::MIN));
            waiting.min().unwrap_or(i64::MAX)
        };
        let mut out = Vec::new();
        while out.len() < RELEASE_MAX {
            let head = self.lanes.iter().enumerate().filter_map(|(i, l)| l.queue.front().map(|q| (q.0, i))).min();
            match head {
                Some((t, i)) if t <= bound => out.extend(self.lanes[i].queue.pop_front().map(|q| q.3)),
                _ => break,
            }
        }
        self.held -= out.len();
        self.quiet.store(self.held == 0 && self.lanes.iter().all(|l| l.idle), Ordering::Relaxed);
        out
    }
}

#[async_trait]
impl StreamReader for Regrouped {
    async fn next_batch(&mut self) -> pacer_log::Result<Vec<Record>> {
        loop {
            let out = self.release();
            if !out.is_empty() {
                return Ok(out);
            }
            let batch = self.inner.next_batch().await?;
            self.take(batch);
        }
    }

    async fn try_batch(&mut self) -> pacer_log::Result<Vec<Record>> {
        let batch = self.inner.try_batch().await?;
        self.take(batch);
        Ok(self.release())
    }

    /// Where a restart resumes: held records are not yet handed out.
    fn positions(&self) -> Positions {
        let mut positions = self.inner.positions();
        for (_, partition, offset, _) in self.lanes.iter().filter_map(|l| l.queue.front()) {
            positions.set(*partition, *offset);
        }
        positions
    }
}
