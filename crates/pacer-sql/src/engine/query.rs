//! A persistent query at run time: reads its input stream, runs the operator, appends what
//! it emits to its output stream, and checkpoints.
//!
//! The query's nodes form a consumer group on the input stream. A query whose rows depend
//! on one record at a time, or whose groups are the record key (so a group never spans
//! partitions), runs one task per owned partition, each with its own state and checkpoints
//! (`__query_<id>.p<N>`); when nodes come or go, a partition's task moves and its new owner
//! restores it from there. On a log shared by several nodes, an aggregation grouped by
//! something else runs in two steps per partition ([`super::repartition`]). Any other query
//! runs whole, on the node that owns partition 0.
//!
//! A checkpoint is the operator's changed state followed by a marker (input positions,
//! output ends, stream time), appended together to the query's own internal stream
//! `__query_<id>`. Entries count only once their marker follows them, so a crash in the
//! middle of a checkpoint leaves the previous one in force. Output is appended before the
//! checkpoint; rows written after the last marker are found again at restart (each carries
//! its query and cause in headers) and not written twice. So after `kill -9` the output
//! equals that of a run without the crash.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pacer_core::{NewRecord, Record};
use pacer_log::{Log, Positions, StartAt, StreamReader, TimeOrdered, Union};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::expr::Expr;
use super::operator::{Operator, Output};
use super::plan::{Plan, Shape, FIRST_FIELD, ROWKEY};
use super::repartition::{self, Forward, Regrouped};

/// Headers on every row a query writes.
pub const QUERY_HEADER: &str = "pacer.query";
pub const CAUSE_HEADER: &str = "pacer.cause";
/// The window start of a windowed row; a tombstone has no value to carry it.
pub const WINDOW_HEADER: &str = "pacer.window_start";
const CHECKPOINT_HEADER: &str = "pacer.checkpoint";
/// Key of the marker record that commits a checkpoint.
const MARKER_KEY: &str = "\u{1}checkpoint";
/// Where rejected records go, as ingest does.
pub const DEAD_LETTERS: &str = "_dead_letters";
/// How often an idle query lets wall-clock time close its windows.
const IDLE_TICK: Duration = Duration::from_secs(1);
/// How often a busy query checkpoints (an idle one checkpoints at its next tick).
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(200);
/// A checkpoint writes the whole state once this many entries (or four times the state's
/// size, if more) went since the last whole one; what its stream held before it is then
/// dropped, so a restart reads a bounded stream.
const SNAPSHOT_ENTRIES: usize = 10_000;

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct Marker {
    epoch: u64,
    seq: u64,
    input: String,
    output: String,
    stream_time: i64,
}

/// How long a failed task waits before it starts again from its checkpoint: the first
/// delay, doubling after each failure in a row up to the second (a cluster that went away
/// may take minutes to come back).
const RESTART_DELAY: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(60));

/// The delay before the next start after a failure, counting failures in a row; one after
/// a run longer than the longest delay starts a new count.
fn restart_delay(in_a_row: &mut u32, ran_for: Duration) -> Duration {
    if ran_for > RESTART_DELAY.1 {
        *in_a_row = 0;
    }
    let delay = RESTART_DELAY.0.saturating_mul(1 << (*in_a_row).min(16)).min(RESTART_DELAY.1);
    *in_a_row += 1;
    delay
}

#[derive(Clone)]
pub struct QueryRunner {
    pub id: String,
    pub log: Arc<dyn Log>,
    pub plan: Plan,
    pub sink: String,
    /// Whether an aggregation whose groups span partitions is spread over the nodes (a
    /// shared log) rather than run whole on one.
    pub spread_groups: bool,
    /// The input partitions this node runs, for SHOW QUERIES.
    pub owned: Arc<Mutex<Vec<u32>>>,
    /// The last failure while a task waits to start again, for SHOW QUERIES.
    pub failure: Arc<Mutex<Option<String>>>,
    /// State entries (windows of groups, joined rows held) a task may keep in memory.
    pub state_rows: usize,
}

/// A task the coordinator started, and which of the share's starts it is.
struct Started {
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
    generation: u64,
    at: Instant,
}

impl QueryRunner {
    /// Runs this node's share of the query until `stop` turns true. A task that fails (the
    /// log went away, a write timed out) starts again from its checkpoint after a delay, as
    /// ksqlDB restarts a query after a hard failure; failing to follow the query's consumer
    /// group stops every task and returns the error.
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
        let input = self.plan.source.topic.clone();
        let split = splits_by_partition(&self.plan) && self.copartitioned();
        let by_group = !split && self.spread_groups && repartition::regroups(&self.plan);
        let mut member = self.log.join_group(&format!("pacer-query-{}", self.id.to_ascii_lowercase()), &input)?;
        // Tasks by share, and tasks told to stop that may still be writing their last checkpoint.
        let mut running: HashMap<Share, Started> = HashMap::new();
        let mut stopping: HashMap<Share, JoinHandle<()>> = HashMap::new();
        // Unbounded, so a failing task never waits for the coordinator to read it.
        let (failed, mut failures) = mpsc::unbounded_channel::<(Share, u64, anyhow::Error)>();
        let (retry, mut retries) = mpsc::unbounded_channel::<(Share, u64)>();
        // Failures in a row per share, for the delay before its next start.
        let mut failed_in_a_row: HashMap<Share, u32> = HashMap::new();
        let mut lanes = 0;
        let outcome = loop {
            tokio::select! {
                _ = stop.changed() => break Ok(()),
                Some((share, generation, error)) = failures.recv() => {
                    let Some(task) = running.get(&share).filter(|t| t.generation == generation) else {
                        tracing::warn!(query = %self.id, ?share, error = %format!("{error:#}"), "query task failed as it stopped");
                        continue;
                    };
                    let delay = restart_delay(failed_in_a_row.entry(share).or_default(), task.at.elapsed());
                    tracing::warn!(query = %self.id, ?share, error = %format!("{error:#}"), ?delay, "query task failed; it starts again from its checkpoint");
                    *self.failure.lock().unwrap() = Some(format!("{error:#}"));
                    let retry = retry.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = retry.send((share, generation));
                    });
                }
                Some((share, generation)) = retries.recv() => {
                    // Unless the share moved away or started anew meanwhile.
                    if running.get(&share).is_some_and(|t| t.generation == generation) {
                        let started = self.start(share, lanes, generation + 1, &failed);
                        running.insert(share, started);
                        *self.failure.lock().unwrap() = None;
                    }
                }
                owned = member.assignment() => {
                    let owned = match owned {
                        Ok(owned) => owned,
                        Err(e) => break Err(e.into()),
                    };
                    let wanted: Vec<Share> = if split {
                        owned.iter().map(|&p| Share::Partition(p)).collect()
                    } else if by_group {
                        owned.iter().flat_map(|&p| [Share::Forward(p), Share::Groups(p)]).collect()
                    } else if owned.contains(&0) {
                        vec![Share::Whole]
                    } else {
                        Vec::new()
                    };
                    tracing::info!(query = %self.id, partitions = ?owned, split, by_group, "query assignment");
                    lanes = self.log.partitions(&input);
                    if by_group && lanes == 0 {
                        // Every lane's place depends on it: better stopped than misrouted.
                        break Err(anyhow::anyhow!("the partitions of {input} could not be counted"));
                    }
                    for share in running.keys().filter(|t| !wanted.contains(t)).copied().collect::<Vec<_>>() {
                        let task = running.remove(&share).unwrap();
                        let _ = task.stop.send(true);
                        stopping.insert(share, task.handle);
                    }
                    for share in wanted {
                        if running.contains_key(&share) {
                            continue;
                        }
                        // A partition given back must not run twice: its old task finishes
                        // its checkpoint first, and the new one restores from it.
                        if let Some(old) = stopping.remove(&share) {
                            let _ = old.await;
                        }
                        running.insert(share, self.start(share, lanes, 0, &failed));
                    }
                    if running.values().all(|t| !t.handle.is_finished()) {
                        // Following the group again, and no task waits to start again.
                        *self.failure.lock().unwrap() = None;
                    }
                    *self.owned.lock().unwrap() = if split || by_group || owned.contains(&0) { owned } else { Vec::new() };
                }
            }
        };
        // Stopped or failed, no task outlives the coordinator: a restart must not find one
        // still writing its last checkpoint.
        for task in running.values() {
            let _ = task.stop.send(true);
        }
        for handle in running.into_values().map(|t| t.handle).chain(stopping.into_values()) {
            let _ = handle.await;
        }
        while let Ok((share, _, error)) = failures.try_recv() {
            tracing::warn!(query = %self.id, ?share, error = %format!("{error:#}"), "query task failed while stopping");
        }
        outcome
    }

    /// Runs the query until `stop` turns true; when it fails as a whole (the cluster away,
    /// so the query cannot follow its consumer group), it starts again after the same delays
    /// as a failed task.
    pub async fn keep_running(self, mut stop: watch::Receiver<bool>) {
        let mut in_a_row = 0;
        while !*stop.borrow() {
            let started = Instant::now();
            let Err(e) = self.clone().run(stop.clone()).await else { return };
            let delay = restart_delay(&mut in_a_row, started.elapsed());
            tracing::error!(query = %self.id, error = %format!("{e:#}"), ?delay, "query failed; it starts again");
            *self.failure.lock().unwrap() = Some(format!("{e:#}"));
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Whether a join's two inputs have as many partitions as each other, so partition `p`
    /// of both holds the same keys; a join of inputs that do not (or do not exist yet) runs
    /// whole. A join that ran before keeps the way it ran, as its state is checkpointed that
    /// way. Any other query reads one input.
    fn copartitioned(&self) -> bool {
        let Some(pair) = &self.plan.pair else { return true };
        let ran = |share| self.log.partitions(&state_stream(&self.id, share)) > 0;
        if ran(Share::Whole) {
            return false;
        }
        if ran(Share::Partition(0)) {
            return true;
        }
        let [left, right] = pair.topics().map(|t| self.log.partitions(t));
        if left == 0 || left != right {
            tracing::info!(query = %self.id, left, right, "the join's inputs are not partitioned alike: it runs whole on one node");
            return false;
        }
        true
    }

    /// Starts the task of `share`, from its checkpoint.
    fn start(
        &self,
        share: Share,
        lanes: u32,
        generation: u64,
        failed: &mpsc::UnboundedSender<(Share, u64, anyhow::Error)>,
    ) -> Started {
        let (stop, stopped) = watch::channel(false);
        let task = Task {
            id: self.id.clone(),
            log: self.log.clone(),
            operator: Operator::new(self.plan.clone()),
            sink: self.sink.clone(),
            share,
            forward: match share {
                Share::Forward(p) => Some(Forward::new(&self.id, p, lanes)),
                _ => None,
            },
            lanes,
            quiet: None,
            since_snapshot: 0,
            state_rows: self.state_rows,
        };
        let failed = failed.clone();
        let handle = tokio::spawn(async move {
            if let Err(error) = task.run(stopped).await {
                let _ = failed.send((share, generation, error));
            }
        });
        Started { stop, handle, generation, at: Instant::now() }
    }
}

/// Whether every group of the query lies within one input partition: stateless queries, and
/// aggregations grouped by the record key (records are partitioned by key) that do not
/// rank groups against each other.
fn splits_by_partition(plan: &Plan) -> bool {
    if plan.stage.is_some() {
        // What a window becomes depends on all of its groups.
        return false;
    }
    if let Some(pair) = &plan.pair {
        // A join of two streams placed by the keys it joins on (their partition counts are
        // compared as the query starts: `copartitioned`).
        return pair.joins_record_keys() && matches!(&plan.shape, Shape::Project { keyed, .. } if keyed.is_empty());
    }
    match &plan.shape {
        Shape::Project { .. } => true,
        Shape::Aggregate { over, .. } if !over.is_empty() => false,
        Shape::Aggregate { group_by, .. } => match group_by.as_slice() {
            [Expr::Column(slot)] => {
                *slot == ROWKEY || (*slot >= FIRST_FIELD && plan.fields.get(*slot - FIRST_FIELD).is_some_and(|f| f.key))
            }
            _ => false,
        },
    }
}

/// What a query reads: one partition of its input, or all of them merged by event time (so
/// windows over several partitions see their records in order); both inputs of a join.
pub fn input_reader(
    log: &Arc<dyn Log>,
    plan: &Plan,
    partition: Option<u32>,
    start: StartAt,
) -> pacer_log::Result<Box<dyn StreamReader>> {
    if let Some(pair) = plan.pair.clone() {
        let topics = pair.topics();
        let union = Union::open(log, &topics, partition, start)?;
        let (log, topics) = (log.clone(), topics.map(String::from));
        let count = Box::new(move || match Union::partitions(log.as_ref(), &[&topics[0], &topics[1]]) {
            // One partition of each input.
            n if n > 0 && partition.is_some() => 2,
            n => n,
        });
        return Ok(Box::new(TimeOrdered::over(Box::new(union), count, Box::new(move |r| pair.event_time(r)))));
    }
    let input = &plan.source.topic;
    Ok(match partition {
        Some(p) => log.partition_reader(input, &[p], start)?,
        None => Box::new(TimeOrdered::open(log.clone(), input, start, super::operator::event_time(plan))?),
    })
}

/// The part of a query one task runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Share {
    /// All of it, over every input partition merged by time.
    Whole,
    /// All of it for one input partition.
    Partition(u32),
    /// One input partition's records, forwarded to the partitions of their groups.
    Forward(u32),
    /// One partition of the groups: what the forwarding tasks sent it, aggregated.
    Groups(u32),
}

/// Where the task of `share` of query `id` checkpoints.
fn state_stream(id: &str, share: Share) -> String {
    let id = id.to_ascii_lowercase();
    match share {
        Share::Whole => format!("__query_{id}"),
        Share::Partition(p) => format!("__query_{id}.p{p}"),
        Share::Forward(p) => format!("__query_{id}.f{p}"),
        Share::Groups(p) => format!("__query_{id}.g{p}"),
    }
}

/// One share of a query, with its own state.
struct Task {
    id: String,
    log: Arc<dyn Log>,
    operator: Operator,
    sink: String,
    share: Share,
    /// What a forwarding task needs besides the operator (which it asks for groups).
    forward: Option<Forward>,
    /// The input's partitions, for the two steps of a spread aggregation.
    lanes: u32,
    /// For a task merging forwarded records: whether its input is quiet (every forwarding
    /// task idle), as a task reading the input itself knows when its reads come back empty.
    quiet: Option<Arc<AtomicBool>>,
    /// Entries written to the state stream since the last whole-state checkpoint.
    since_snapshot: usize,
    /// State entries it may hold; past them it stops with an error naming the query.
    state_rows: usize,
}

impl Task {
    fn state_stream(&self) -> String {
        state_stream(&self.id, self.share)
    }

    /// What the task reads, from where its checkpoint left it.
    fn reader(&mut self, start: StartAt) -> pacer_log::Result<Box<dyn StreamReader>> {
        let plan = self.operator.plan();
        match self.share {
            Share::Whole => input_reader(&self.log, plan, None, start),
            Share::Partition(p) | Share::Forward(p) => input_reader(&self.log, plan, Some(p), start),
            Share::Groups(p) => {
                let time = super::operator::event_time(plan);
                let reader = Regrouped::open(&self.log, &self.id, p, self.lanes, start, time)?;
                self.quiet = Some(reader.quiet());
                Ok(Box::new(reader))
            }
        }
    }

    /// What the task wrote after `ends`: its sink's rows, or a forwarding task's lanes.
    fn written_after(&self, ends: Positions) -> pacer_log::Result<Box<dyn StreamReader>> {
        match &self.forward {
            Some(forward) => {
                self.log.partition_reader(forward.stream(), &forward.own_lanes(), StartAt::Positions(ends))
            }
            None => self.log.reader(&self.sink, StartAt::Positions(ends)),
        }
    }

    /// Runs until `stop` turns true or the log fails.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
        // Told to stop while still restoring (its partition moved on): nothing to checkpoint
        // yet, and the coordinator, which waits for stopping tasks, must not wait on a restore.
        let restored = tokio::select! {
            restored = self.restore() => restored?,
            _ = stop.changed() => return Ok(()),
        };
        let mut marker = restored.marker;
        let mut already = restored.already_written;
        marker.epoch += 1;
        marker.seq = 0;
        let mut output_ends: Positions = marker.output.parse().unwrap_or_default();
        let input = self.operator.plan().source.topic.clone();
        let start = match marker.input.parse::<Positions>() {
            Ok(p) if !p.is_empty() => StartAt::Positions(p),
            _ => StartAt::Beginning,
        };
        let mut reader = self.reader(start)?;
        tracing::info!(query = %self.id, input, share = ?self.share, output = %self.sink, resume = %marker.input, "query task started");
        // Reading runs on its own, so the idle tick below never cuts a read short (a remote
        // log's read may take longer than a tick); each batch comes with the positions after it.
        // A forwarding task also hears when it has read everything there is (an empty batch):
        // only then may it tell the merging tasks not to wait for it.
        let mut positions = reader.positions();
        let (batches_tx, mut batches) = mpsc::channel::<pacer_log::Result<(Vec<Record>, Positions)>>(2);
        let says_caught_up = self.forward.is_some();
        let _reading = AbortOnDrop(tokio::spawn(async move {
            let mut caught_up = false;
            loop {
                let read =
                    if says_caught_up && !caught_up { reader.try_batch().await } else { reader.next_batch().await };
                caught_up = read.as_ref().is_ok_and(Vec::is_empty);
                let read = read.map(|batch| (batch, reader.positions()));
                let failed = read.is_err();
                if batches_tx.send(read).await.is_err() || failed {
                    return;
                }
            }
        }));
        // Event time the idle clock counts from, and when (wall clock) it was last seen.
        let mut last_event = (self.operator.stream_time(), Instant::now());
        // Work since the last checkpoint, and when that was.
        let mut pending = false;
        let mut last_checkpoint = Instant::now();
        loop {
            let (batch, caught_up) = tokio::select! {
                _ = stop.changed() => {
                    if pending {
                        self.commit(&mut marker, positions, &output_ends).await?;
                    }
                    if let Some(forward) = &mut self.forward {
                        // Whoever forwards this partition next has yet to catch up.
                        let marks = forward.leaving();
                        self.log.append(forward.stream(), marks).await?;
                    }
                    return Ok(());
                }
                read = batches.recv() => {
                    let (batch, after) = read.ok_or(pacer_log::LogError::Closed)??;
                    positions = after;
                    let caught_up = batch.is_empty();
                    (batch, caught_up)
                }
                _ = tokio::time::sleep(IDLE_TICK) => (Vec::new(), false),
            };
            pending |= match self.forward.take() {
                Some(mut forward) => {
                    if caught_up {
                        forward.caught_up();
                    }
                    let worked = self.forward_batch(&mut forward, &batch, &mut already, &mut output_ends).await;
                    self.forward = Some(forward);
                    worked?
                }
                None => self.process_batch(&batch, &mut already, &mut output_ends, &mut last_event).await?,
            };
            // Checkpoints trail the rows by up to an interval, so a row waits for one sync,
            // not two; a restart replays the interval and recognises the rows it wrote.
            if pending && last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL {
                self.commit(&mut marker, positions.clone(), &output_ends).await?;
                pending = false;
                last_checkpoint = Instant::now();
            }
        }
    }

    /// Runs a batch (empty: the input is quiet) through the operator and appends the rows it
    /// causes; true when there is anything to checkpoint.
    async fn process_batch(
        &mut self,
        batch: &[Record],
        already: &mut HashSet<String>,
        output_ends: &mut Positions,
        last_event: &mut (i64, Instant),
    ) -> anyhow::Result<bool> {
        let input = self.operator.plan().source.topic.clone();
        let mut outputs = Vec::new();
        let mut rejected = Vec::new();
        for record in batch {
            if let Err(reason) = self.operator.process(record, &mut outputs) {
                rejected.push(dead_letter(&self.id, self.operator.plan(), record, &reason));
            }
        }
        let waiting = self.quiet.as_ref().is_some_and(|quiet| !quiet.load(Ordering::Relaxed));
        if self.operator.stream_time() > last_event.0 || waiting {
            // (Records held for a forwarding task that has not caught up are not quiet.)
            *last_event = (self.operator.stream_time().max(last_event.0), Instant::now());
        } else if batch.is_empty() && last_event.0 > i64::MIN {
            // A quiet input still closes its windows: event time moves with the wall clock.
            let idle = last_event.1.elapsed().as_millis() as i64;
            self.operator.advance(last_event.0.saturating_add(idle), &mut outputs);
        }
        if let Some(stage) = self.operator.plan().stage.clone() {
            outputs = match stage.run(&self.log, &outputs).await {
                Ok(rows) => rows,
                Err(reason) => {
                    // The windows' rows cannot be made now (a joined table went away):
                    // they go to the dead letters with the reason, and the query goes on.
                    tracing::warn!(query = %self.id, %reason, "a window's rows failed");
                    let windows: Vec<_> = outputs.iter().filter_map(|o| o.value.clone()).collect();
                    rejected.push(NewRecord::new(
                        self.operator.stream_time(),
                        None,
                        serde_json::json!({"reason": reason, "query": self.id, "stream": input, "windows": windows})
                            .to_string(),
                    ));
                    Vec::new()
                }
            };
        }
        let pending = !batch.is_empty() || !outputs.is_empty();
        let rows: Vec<NewRecord> =
            outputs.into_iter().filter(|o| !already.remove(&o.id)).map(|o| self.record(o)).collect();
        if !rows.is_empty() {
            for appended in self.log.append(&self.sink, rows).await? {
                output_ends.advance_past(appended.partition, appended.offset);
            }
        }
        if !rejected.is_empty() {
            self.log.append(DEAD_LETTERS, rejected).await?;
        }
        Ok(pending)
    }

    /// Forwards a batch to the lanes of its groups (empty: says it is idle if it has read
    /// everything); true when there is anything to checkpoint.
    async fn forward_batch(
        &mut self,
        forward: &mut Forward,
        batch: &[Record],
        already: &mut HashSet<String>,
        output_ends: &mut Positions,
    ) -> anyhow::Result<bool> {
        let routed = forward.route(&mut self.operator, batch, already);
        let copies = if batch.is_empty() { forward.idle() } else { routed.copies };
        if !copies.is_empty() {
            for appended in self.log.append(forward.stream(), copies).await? {
                output_ends.advance_past(appended.partition, appended.offset);
            }
        }
        let rejected: Vec<NewRecord> = routed
            .rejected
            .iter()
            .map(|(i, reason)| dead_letter(&self.id, self.operator.plan(), &batch[*i], reason))
            .collect();
        if !rejected.is_empty() {
            self.log.append(DEAD_LETTERS, rejected).await?;
        }
        Ok(!batch.is_empty())
    }

    /// Checkpoints the state changed since the last one, with where input and output are.
    async fn commit(&mut self, marker: &mut Marker, input: Positions, output_ends: &Positions) -> anyhow::Result<()> {
        marker.seq += 1;
        marker.input = input.to_string();
        marker.output = output_ends.to_string();
        marker.stream_time = self.operator.stream_time();
        let held = self.operator.state_len();
        if held > self.state_rows {
            // In memory only: refusing is what keeps the process (and the other queries) up.
            // The task starts again from its last checkpoint, and says why in SHOW QUERIES.
            anyhow::bail!(
                "query {}: its state holds {held} entries (windows of groups, joined rows), more than [sql] \
                 state_rows ({}): group by fewer keys, use shorter windows or WITHIN, or raise the limit",
                self.id,
                self.state_rows
            );
        }
        let whole = self.since_snapshot >= SNAPSHOT_ENTRIES.max(4 * held);
        let changes = if whole { self.operator.snapshot() } else { self.operator.take_changes() };
        self.since_snapshot += changes.len() + 1;
        let first = self.checkpoint(marker, changes).await?;
        if whole {
            self.since_snapshot = 0;
            // What comes from here on stands alone: a restart that reads a suffix of the
            // stream holding all of it restores the same state.
            let mut before = Positions::new();
            before.set(first.partition, first.offset);
            if let Err(e) = self.log.delete_before(&self.state_stream(), &before).await {
                tracing::warn!(query = %self.id, error = %e, "old checkpoints could not be dropped");
            }
            if let Share::Groups(_) = self.share {
                // The lanes' records this task has taken in are in its state now.
                if let Err(e) = self.log.delete_before(&repartition::stream(&self.id), &input).await {
                    tracing::warn!(query = %self.id, error = %e, "forwarded records could not be dropped");
                }
            }
        }
        Ok(())
    }

    fn record(&self, output: Output) -> NewRecord {
        let value = match output.value {
            Some(map) => Bytes::from(serde_json::Value::Object(map).to_string()),
            None => Bytes::new(),
        };
        let record = NewRecord::new(output.timestamp, output.key.map(Bytes::from), value)
            .with_header(QUERY_HEADER, self.id.clone())
            .with_header(CAUSE_HEADER, output.id);
        match output.window {
            Some(start) => record.with_header(WINDOW_HEADER, start.to_string()),
            None => record,
        }
    }

    /// Appends a checkpoint; returns where its first record went.
    async fn checkpoint(
        &self,
        marker: &Marker,
        changes: Vec<(String, Option<String>)>,
    ) -> anyhow::Result<pacer_log::Appended> {
        let tag = format!("{}:{}", marker.epoch, marker.seq);
        // A task that has seen no event time yet (a forwarding task never does) still writes
        // a timestamp Kafka takes.
        let at = marker.stream_time.max(0);
        let mut records: Vec<NewRecord> = changes
            .into_iter()
            .map(|(id, json)| {
                NewRecord::new(at, Some(Bytes::from(id)), json.map(Bytes::from).unwrap_or_default())
                    .with_header(CHECKPOINT_HEADER, tag.clone())
            })
            .collect();
        let marker_json = serde_json::to_string(marker)?;
        records.push(
            NewRecord::new(at, Some(Bytes::from_static(MARKER_KEY.as_bytes())), marker_json)
                .with_header(CHECKPOINT_HEADER, tag),
        );
        let appended = self.log.append(&self.state_stream(), records).await?;
        appended.into_iter().next().ok_or_else(|| anyhow::anyhow!("the log placed no record of the checkpoint"))
    }

    /// Reads the last committed checkpoint back into the operator, and the rows written
    /// after it.
    async fn restore(&mut self) -> anyhow::Result<Restored> {
        if let Some(forward) = &self.forward {
            forward.create(&self.log).await?;
        }
        let mut reader = self.log.reader(&self.state_stream(), StartAt::Beginning)?;
        let mut committed: HashMap<String, Option<String>> = HashMap::new();
        let mut pending: Vec<(String, Option<String>)> = Vec::new();
        let mut pending_tag: Option<Bytes> = None;
        let mut marker: Option<Marker> = None;
        loop {
            let batch = reader.try_batch().await?;
            if batch.is_empty() {
                break;
            }
            self.since_snapshot += batch.len();
            for record in batch {
                let tag = record.header(CHECKPOINT_HEADER).cloned();
                let key = record.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
                if tag != pending_tag {
                    // Entries whose marker never came belong to a checkpoint cut by a crash.
                    pending.clear();
                    pending_tag = tag;
                }
                if key == MARKER_KEY {
                    marker = Some(serde_json::from_slice(&record.value)?);
                    committed.extend(pending.drain(..));
                } else {
                    let json = (!record.value.is_empty()).then(|| String::from_utf8_lossy(&record.value).into_owned());
                    pending.push((key, json));
                }
            }
        }
        let Some(marker) = marker else {
            // A new query: its first marker records where the output ends now, so rows from
            // an earlier query of the same name are never taken for this one's.
            // (A forwarding task's lanes are its query's own: nothing else writes them.)
            let ends = match self.share {
                Share::Forward(_) => Vec::new(),
                _ => self
                    .log
                    .streams()
                    .into_iter()
                    .find(|s| s.name == self.sink)
                    .map(|s| s.end_offsets)
                    .unwrap_or_default(),
            };
            let mut output = Positions::new();
            for (p, end) in ends.into_iter().enumerate() {
                output.set(p as u32, end);
            }
            let marker = Marker { output: output.to_string(), ..Marker::default() };
            self.checkpoint(&marker, Vec::new()).await?;
            return Ok(Restored { marker, already_written: HashSet::new() });
        };
        let entries = committed.len();
        for (id, json) in committed {
            self.operator.restore(id, json.as_deref(), marker.stream_time).map_err(anyhow::Error::msg)?;
        }
        // Rows this query wrote after its last checkpoint: the replay will produce them again.
        let mut already_written = HashSet::new();
        let output: Positions = marker.output.parse().unwrap_or_default();
        let mut reader = self.written_after(output)?;
        loop {
            let batch = reader.try_batch().await?;
            if batch.is_empty() {
                break;
            }
            for record in batch {
                if self.forward.is_some() {
                    // The lanes are this query's own; their copies name their cause inside.
                    if let Some((cause, _)) = repartition::copied(&record.value) {
                        already_written.insert(cause.to_string());
                    }
                } else if record.header(QUERY_HEADER).is_some_and(|q| q.as_ref() == self.id.as_bytes()) {
                    if let Some(cause) = record.header(CAUSE_HEADER) {
                        already_written.insert(String::from_utf8_lossy(cause).into_owned());
                    }
                }
            }
        }
        tracing::info!(query = %self.id, state_entries = entries, rows_after_checkpoint = already_written.len(), "query state restored");
        Ok(Restored { marker, already_written })
    }
}

/// Stops a task when its owner goes.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Restored {
    marker: Marker,
    already_written: HashSet<String>,
}

fn dead_letter(query: &str, plan: &Plan, record: &Record, reason: &str) -> NewRecord {
    // A join's records name their own stream and partition.
    let (stream, partition) = match &plan.pair {
        Some(pair) => {
            let (input, partition) = Union::input_of(record.partition);
            (pair.topics()[input.min(1)], partition)
        }
        None => (plan.source.topic.as_str(), record.partition),
    };
    let value = serde_json::json!({
        "reason": reason,
        "query": query,
        "stream": stream,
        "partition": partition,
        "offset": record.offset,
        "value": String::from_utf8_lossy(&record.value),
    });
    NewRecord::new(record.timestamp, record.key.clone(), value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ast::SourceKind;
    use crate::engine::plan::test_support::{plan_sql, select, source, stream};
    use crate::engine::value::DataType;
    use pacer_log::{Appended, EmbeddedLog, EmbeddedLogConfig, FsyncPolicy};

    fn counts_by_key() -> Plan {
        let source = stream("s", &[("k", DataType::String)]);
        plan_sql("SELECT k, COUNT(*) AS n FROM s GROUP BY k EMIT CHANGES", &source, &crate::Geometry::default())
    }

    fn start(log: &Arc<dyn Log>) -> (watch::Sender<bool>, JoinHandle<anyhow::Result<()>>) {
        let task = Task {
            id: "Q".into(),
            log: log.clone(),
            operator: Operator::new(counts_by_key()),
            sink: "out".into(),
            share: Share::Whole,
            forward: None,
            lanes: 0,
            quiet: None,
            since_snapshot: 0,
            state_rows: usize::MAX,
        };
        let (stop, stopped) = watch::channel(false);
        (stop, tokio::spawn(task.run(stopped)))
    }

    async fn append(log: &Arc<dyn Log>, keys: impl Iterator<Item = String>) {
        let records = keys.map(|k| NewRecord::new(1, None, serde_json::json!({ "k": k }).to_string())).collect();
        log.append("s", records).await.unwrap();
    }

    /// Reads `reader` until `done` says so, for 30 s at most.
    async fn read_until(reader: &mut dyn StreamReader, mut done: impl FnMut(&Record) -> bool) {
        let reading = async {
            loop {
                if reader.next_batch().await.unwrap().iter().any(&mut done) {
                    return;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), reading).await.expect("within 30 s");
    }

    /// Groups seen once long ago keep their counts through whole-state checkpoints, the
    /// older checkpoints dropped, and a restart from what is left.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn whole_state_checkpoints_drop_older_ones_and_restore_the_same_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = EmbeddedLogConfig::new(dir.path());
        config.fsync = FsyncPolicy::Off;
        config.segment_bytes = 4096;
        let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(config).unwrap());
        let (stop, running) = start(&log);
        let mut output = log.reader("out", StartAt::Beginning).unwrap();
        let mut state = log.reader("__query_q", StartAt::Beginning).unwrap();
        let marker = |r: &Record| r.key.as_deref() == Some(MARKER_KEY.as_bytes());
        let rows = |n: usize| {
            let mut seen = 0;
            move |_: &Record| {
                seen += 1;
                seen == n
            }
        };
        append(&log, (0..1000).map(|i| format!("once-{i}"))).await;
        read_until(output.as_mut(), rows(1000)).await;
        // Rounds of busy keys, each checkpointed, until the state has been written whole.
        for _ in 0..8 {
            append(&log, (0..3000).map(|i| format!("busy-{i}"))).await;
            read_until(output.as_mut(), rows(3000)).await;
            read_until(state.as_mut(), marker).await;
        }
        stop.send(true).unwrap();
        running.await.unwrap().unwrap();
        let mut kept = log.reader("__query_q", StartAt::Beginning).unwrap();
        let first = kept.try_batch().await.unwrap()[0].offset;
        assert!(first > 0, "checkpoints before the last whole one were dropped");

        // Restarted from what is left, a group last seen before the drop counts on.
        let (stop, running) = start(&log);
        append(&log, std::iter::once("once-7".to_string())).await;
        let mut count = None;
        read_until(output.as_mut(), |r| {
            let row: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
            count = (row["k"] == "once-7").then(|| row["n"].clone());
            count.is_some()
        })
        .await;
        assert_eq!(count, Some(serde_json::Value::from(2)));
        stop.send(true).unwrap();
        running.await.unwrap().unwrap();
    }

    const DEVICES: i64 = 12;
    const SECONDS: i64 = 120;

    /// A log of four partitions, as a cluster's topics would have.
    fn four_partitions(dir: &std::path::Path) -> EmbeddedLog {
        let mut config = EmbeddedLogConfig::new(dir);
        config.fsync = FsyncPolicy::Off;
        config.partitions = 4;
        EmbeddedLog::open(config).unwrap()
    }

    /// Counts of site fixes per 10 s window, grouped by a value field: run in two steps (as on
    /// a shared log).
    fn run_count_by_site(log: &Arc<dyn Log>) -> (watch::Sender<bool>, JoinHandle<()>) {
        let source = stream("s", &[("site", DataType::String)]);
        let sql = "SELECT site, COUNT(*) AS n FROM s WINDOW TUMBLING (SIZE 10 SECONDS, GRACE PERIOD 0 SECONDS) \
                   GROUP BY site EMIT FINAL";
        let plan = plan_sql(sql, &source, &crate::Geometry::default());
        assert!(!splits_by_partition(&plan) && repartition::regroups(&plan));
        keep_running(runner(log, "Q", plan, true))
    }

    /// Query `id` running `plan` into stream `out`.
    fn runner(log: &Arc<dyn Log>, id: &str, plan: Plan, spread_groups: bool) -> QueryRunner {
        QueryRunner {
            id: id.into(),
            log: log.clone(),
            plan,
            sink: "out".into(),
            spread_groups,
            owned: Arc::default(),
            failure: Arc::default(),
            state_rows: usize::MAX,
        }
    }

    /// Runs `runner` (restarting it on failures) until the sender says stop.
    fn keep_running(runner: QueryRunner) -> (watch::Sender<bool>, JoinHandle<()>) {
        let (stop, stopped) = watch::channel(false);
        (stop, tokio::spawn(runner.keep_running(stopped)))
    }

    /// Each device's fixes for `seconds`, to its key's partition in time order; each site's
    /// devices span partitions.
    async fn append_fixes(log: &Arc<dyn Log>, seconds: std::ops::Range<i64>) {
        for t in seconds {
            let records = (0..DEVICES)
                .map(|d| {
                    let value = serde_json::json!({ "site": format!("site-{}", d % 3) }).to_string();
                    NewRecord::new(t * 1000, Some(Bytes::from(format!("dev-{d}"))), value)
                })
                .collect();
            log.append("s", records).await.unwrap();
        }
    }

    /// The query's rows: counts by site and window start, as they came.
    #[derive(Default)]
    struct Windows(HashMap<(String, i64), Vec<i64>>);

    impl Windows {
        /// Takes a row; true once every site's window starting at `until` is in.
        fn take(&mut self, r: &Record, until: i64) -> bool {
            let row: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
            let key = (row["site"].as_str().unwrap().to_string(), row["WINDOWSTART"].as_i64().unwrap());
            self.0.entry(key).or_default().push(row["n"].as_i64().unwrap());
            (0..3).all(|s| self.0.contains_key(&(format!("site-{s}"), until)))
        }

        async fn take_rest(&mut self, output: &mut dyn StreamReader) {
            loop {
                let batch = output.try_batch().await.unwrap();
                if batch.is_empty() {
                    return;
                }
                for r in &batch {
                    self.take(r, 0);
                }
            }
        }

        /// Four devices per site, ten fixes each per window: every window up to the one
        /// starting at `through` once with 40.
        fn assert_each_counted_once(mut self, through: i64) {
            for start in (0..=through).step_by(10_000) {
                for site in 0..3 {
                    let counts = self.0.remove(&(format!("site-{site}"), start));
                    assert_eq!(counts, Some(vec![40]), "site-{site} window {start}");
                }
            }
            // The last window closes only by the idle clock, once if at all.
            assert!(self.0.values().all(|c| c.len() == 1 && c[0] <= 40), "{:?}", self.0);
        }
    }

    /// A windowed count grouped by a value field, run in two steps over four partitions
    /// (as on a shared log), stopped and restarted halfway: every window closes once with the
    /// count of all its records, though the partitions' tasks forward at their own pace.
    /// (Each half is in the log before the query runs: records arriving live may come late
    /// across partitions, as on one node reading a remote log, and a grace period takes them.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_aggregation_spread_by_group_counts_every_record_once_in_event_time_order() {
        let dir = tempfile::tempdir().unwrap();
        let log: Arc<dyn Log> = Arc::new(four_partitions(dir.path()));
        let mut output = log.reader("out", StartAt::Beginning).unwrap();
        let mut windows = Windows::default();

        append_fixes(&log, 0..SECONDS / 2).await;
        let (stop, running) = run_count_by_site(&log);
        read_until(output.as_mut(), |r| windows.take(r, 40_000)).await;
        stop.send(true).unwrap();
        running.await.unwrap();
        append_fixes(&log, SECONDS / 2..SECONDS).await;
        let (stop, running) = run_count_by_site(&log);
        read_until(output.as_mut(), |r| windows.take(r, 100_000)).await;
        stop.send(true).unwrap();
        running.await.unwrap();
        windows.take_rest(output.as_mut()).await;

        windows.assert_each_counted_once(100_000);
        // The records went through the lanes.
        let lane = [repartition::lane(0, 1, 4)];
        let mut lane = log.partition_reader(&repartition::stream("Q"), &lane, StartAt::Beginning).unwrap();
        assert!(!lane.try_batch().await.unwrap().is_empty());
    }

    /// A failure the log reports for one append to a stream: before writing anything, or
    /// after writing it all (the acknowledgement lost).
    #[derive(Debug, Clone, Copy)]
    enum Fault {
        Before,
        After,
    }

    /// The embedded log, failing chosen appends once each, as a cluster going away does.
    struct Failing {
        log: EmbeddedLog,
        /// Stream, which of its appends fails (counted from 1), how, and whether it did.
        faults: Mutex<Vec<(String, usize, Fault, bool)>>,
        appends: Mutex<HashMap<String, usize>>,
        /// How many more times counting the input's partitions fails (a metadata timeout).
        uncounted: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Log for Failing {
        async fn append(&self, stream: &str, records: Vec<NewRecord>) -> pacer_log::Result<Vec<Appended>> {
            let nth = {
                let mut appends = self.appends.lock().unwrap();
                let n = appends.entry(stream.to_string()).or_default();
                *n += 1;
                *n
            };
            let fault = self.faults.lock().unwrap().iter_mut().find(|f| f.0 == stream && f.1 == nth).map(|f| {
                f.3 = true;
                f.2
            });
            let failure = || pacer_log::LogError::Cluster { stream: stream.to_string(), error: "broker gone".into() };
            match fault {
                Some(Fault::Before) => Err(failure()),
                Some(Fault::After) => self.log.append(stream, records).await.and_then(|_| Err(failure())),
                None => self.log.append(stream, records).await,
            }
        }
        async fn create_stream(&self, stream: &str, partitions: u32) -> pacer_log::Result<()> {
            self.log.create_stream(stream, partitions).await
        }
        fn reader(&self, stream: &str, start: StartAt) -> pacer_log::Result<Box<dyn StreamReader>> {
            self.log.reader(stream, start)
        }
        fn partition_reader(
            &self,
            stream: &str,
            partitions: &[u32],
            start: StartAt,
        ) -> pacer_log::Result<Box<dyn StreamReader>> {
            self.log.partition_reader(stream, partitions, start)
        }
        fn join_group(&self, group: &str, stream: &str) -> pacer_log::Result<Box<dyn pacer_log::GroupMember>> {
            self.log.join_group(group, stream)
        }
        fn streams(&self) -> Vec<pacer_log::StreamInfo> {
            self.log.streams()
        }
        fn partitions(&self, stream: &str) -> u32 {
            let fails = |n: usize| n.checked_sub(1);
            if stream == "s" && self.uncounted.fetch_update(Ordering::SeqCst, Ordering::SeqCst, fails).is_ok() {
                return 0;
            }
            self.log.partitions(stream)
        }
        async fn delete_before(&self, stream: &str, positions: &Positions) -> pacer_log::Result<()> {
            self.log.delete_before(stream, positions).await
        }
        async fn commit_positions(&self, group: &str, stream: &str, positions: &Positions) -> pacer_log::Result<()> {
            self.log.commit_positions(group, stream, positions).await
        }
        fn committed_positions(&self, group: &str, stream: &str) -> Option<Positions> {
            self.log.committed_positions(group, stream)
        }
    }

    /// A query that cannot count its input's partitions at first starts again; appends that
    /// fail (forwarded copies, a checkpoint, rows, rows whose acknowledgement was lost) stop
    /// only the task that made them: it starts again from its checkpoint. Every window still
    /// closes once with the count of all its records.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_task_whose_append_failed_starts_again_from_its_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let faults = vec![
            (repartition::stream("Q"), 1, Fault::Before, false),
            ("__query_q.g1".to_string(), 1, Fault::Before, false),
            ("out".to_string(), 1, Fault::Before, false),
            ("out".to_string(), 2, Fault::After, false),
        ];
        let failing = Arc::new(Failing {
            log: four_partitions(dir.path()),
            faults: Mutex::new(faults),
            appends: Mutex::default(),
            uncounted: 1.into(),
        });
        let log: Arc<dyn Log> = failing.clone();
        let mut output = log.reader("out", StartAt::Beginning).unwrap();
        let mut windows = Windows::default();

        append_fixes(&log, 0..SECONDS).await;
        let (stop, running) = run_count_by_site(&log);
        // The last window closes by the idle clock, in tasks that started again: rows they
        // wrote before failing and write again after it would be in by then.
        read_until(output.as_mut(), |r| windows.take(r, 110_000)).await;
        stop.send(true).unwrap();
        running.await.unwrap();
        windows.take_rest(output.as_mut()).await;

        let faults = failing.faults.lock().unwrap().clone();
        assert!(faults.iter().all(|f| f.3), "every fault happened: {faults:?}");
        assert_eq!(failing.uncounted.load(Ordering::SeqCst), 0, "counting failed once");
        windows.assert_each_counted_once(110_000);
    }

    /// A join of two streams keyed by the column joined on runs one task per partition; but
    /// one that first ran whole (its inputs did not exist yet) keeps running whole after a
    /// restart, as its held rows are checkpointed that way: a row held before the restart
    /// still pairs after it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_join_keeps_the_shares_it_ran_in() {
        let keyed = |name: &str, field: &str| {
            source(name, SourceKind::Stream, &[("k", DataType::String, true), (field, DataType::Double, false)])
        };
        let (a, b) = (keyed("a", "x"), keyed("b", "y"));
        let sql = "SELECT a.k, a.x, b.y FROM a JOIN b WITHIN 1 MINUTE GRACE PERIOD 0 SECONDS ON a.k = b.k EMIT CHANGES";
        let plan = super::super::pair_join::PairJoin::plan(&select(sql), &a, &b, &crate::Geometry::default()).unwrap();
        assert!(splits_by_partition(&plan), "keyed on the column joined on");
        let dir = tempfile::tempdir().unwrap();
        let log: Arc<dyn Log> = Arc::new(four_partitions(dir.path()));
        let run = || keep_running(runner(&log, "J", plan.clone(), false));
        // Each `b` row comes a second after its `a` row, so none is late for the join.
        let rows = |field: &str, at: i64, keys: std::ops::Range<i64>| -> Vec<NewRecord> {
            keys.map(|k| {
                let value = serde_json::json!({ field: k as f64 }).to_string();
                NewRecord::new(at + k, Some(Bytes::from(format!("key-{k}"))), value)
            })
            .collect()
        };
        let mut output = log.reader("out", StartAt::Beginning).unwrap();
        let mut pairs: HashMap<String, usize> = HashMap::new();
        let mut take = |r: &Record, want: usize| {
            let row: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
            let key = row.as_object().unwrap().values().find_map(|v| v.as_str()).unwrap().to_string();
            *pairs.entry(key).or_default() += 1;
            pairs.values().sum::<usize>() >= want
        };

        // Started before its inputs exist: it runs whole.
        let (stop, running) = run();
        log.append("a", rows("x", 1_000, 0..20)).await.unwrap();
        log.append("b", rows("y", 2_000, 0..10)).await.unwrap();
        read_until(output.as_mut(), |r| take(r, 10)).await;
        stop.send(true).unwrap();
        running.await.unwrap();
        assert!(log.partitions(&state_stream("J", Share::Whole)) > 0, "ran whole");

        // Restarted with both inputs there (four partitions each): still whole, and the rows
        // of `a` held before the restart pair with the `b` rows that come after it.
        let (stop, running) = run();
        log.append("b", rows("y", 2_000, 10..20)).await.unwrap();
        read_until(output.as_mut(), |r| take(r, 20)).await;
        stop.send(true).unwrap();
        running.await.unwrap();
        assert_eq!(log.partitions(&state_stream("J", Share::Partition(0))), 0, "never split");
        assert_eq!(pairs.len(), 20, "{pairs:?}");
        assert!(pairs.values().all(|&n| n == 1), "each pair once: {pairs:?}");

        // A new join over the inputs as they are now splits by partition.
        assert!(runner(&log, "J2", plan.clone(), false).copartitioned());
        assert!(!runner(&log, "J", plan, false).copartitioned(), "the first keeps running whole");
    }
}
