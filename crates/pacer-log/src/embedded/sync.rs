//! The sync thread: makes written groups durable, then publishes and acknowledges them.
//!
//! Groups arrive in the order they were written. For each touched partition it calls
//! `fsync`, then moves the partition's committed end (readers never see a record before it is
//! durable), notes the entries in the segment's indexes and answers the group's requests.
//!
//! When a sync fails, nothing written to that partition after the last good sync may be on
//! disk (Linux can drop the dirty pages), so the group's records there are refused, and so
//! are those of every later group already written behind them, until the writer has cut the
//! partition back and says so with a barrier.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};

use super::partition::Partition;
use super::writer::Answer;
use super::{FsyncPolicy, Shared, StreamState};
use crate::{Appended, LogError};

pub enum SyncJob {
    Group(WrittenGroup),
    /// Answered once every earlier group is through; also ends the refusal after a failure.
    Barrier(mpsc::Sender<()>),
}

/// One group commit, written but not yet durable.
pub struct WrittenGroup {
    pub parts: Vec<Written>,
    pub requests: Vec<InFlight>,
}

/// What one group wrote to one partition.
pub struct Written {
    pub stream: Arc<StreamState>,
    pub partition: Arc<Partition>,
    pub file: Arc<File>,
    /// Offset of the first entry.
    pub first_offset: u64,
    /// Byte position of the first entry in the active segment.
    pub start: u64,
    pub bytes: u64,
    pub entries: Vec<Entry>,
}

/// One record in a partition's share of a group commit.
pub struct Entry {
    /// Index of its request in the group.
    pub request: usize,
    /// Byte position relative to the partition's share.
    pub at: u64,
    pub timestamp: i64,
}

/// One request being committed: where its records go and whether that worked.
pub struct InFlight {
    pub done: Answer,
    pub appended: Vec<Appended>,
    pub failed: Option<LogError>,
}

/// Marks the requests owning `entries` as failed with `error`.
pub fn fail_entries(requests: &mut [InFlight], entries: &[Entry], partition: &Partition, error: &std::io::Error) {
    for entry in entries {
        let request = &mut requests[entry.request];
        if request.failed.is_none() {
            let path = partition.dir.display().to_string();
            request.failed = Some(LogError::Io { path, error: std::io::Error::new(error.kind(), error.to_string()) });
        }
    }
}

pub fn run(shared: Arc<Shared>, jobs: mpsc::Receiver<SyncJob>, failures: mpsc::Sender<()>) {
    // Partitions whose sync failed, refused until the writer's next barrier.
    let mut failed: HashSet<*const Partition> = HashSet::new();
    let mut waiting = VecDeque::new();
    while let Ok(job) = jobs.recv() {
        waiting.push_back(job);
        waiting.extend(jobs.try_iter());
        // Every group written while the last sync ran shares the next one.
        let mut groups = Vec::new();
        while let Some(SyncJob::Group(_)) = waiting.front() {
            if let Some(SyncJob::Group(group)) = waiting.pop_front() {
                groups.push(group);
            }
        }
        if !groups.is_empty() {
            commit(&shared, groups, &mut failed, &failures);
        }
        if let Some(SyncJob::Barrier(done)) = waiting.pop_front() {
            failed.clear();
            let _ = done.send(());
        }
    }
}

/// Syncs each partition the groups touched once, then publishes and answers them in order.
fn commit(
    shared: &Shared,
    groups: Vec<WrittenGroup>,
    failed: &mut HashSet<*const Partition>,
    failures: &mpsc::Sender<()>,
) {
    let mut synced: HashMap<*const Partition, std::io::Result<()>> = HashMap::new();
    for part in groups.iter().flat_map(|g| &g.parts) {
        let key = Arc::as_ptr(&part.partition);
        if synced.contains_key(&key) {
            continue;
        }
        let result = if failed.contains(&key) {
            Err(std::io::Error::other("an earlier sync of this partition failed"))
        } else if shared.config.fsync == FsyncPolicy::Off {
            Ok(())
        } else {
            shared.metrics.fsyncs.inc();
            part.file.sync_data()
        };
        if let Err(e) = &result {
            if failed.insert(key) {
                tracing::error!(partition = %part.partition.dir.display(), error = %e, "sync failed; records not acknowledged");
                let _ = failures.send(());
            }
        }
        synced.insert(key, result);
    }
    for mut group in groups {
        let mut touched: Vec<Arc<StreamState>> = Vec::new();
        for part in group.parts {
            match &synced[&Arc::as_ptr(&part.partition)] {
                Ok(()) => {
                    publish(shared, &part);
                    if !touched.iter().any(|s| Arc::ptr_eq(s, &part.stream)) {
                        touched.push(part.stream.clone());
                    }
                }
                Err(e) => fail_entries(&mut group.requests, &part.entries, &part.partition, e),
            }
        }
        for stream in touched {
            stream.appended.send_modify(|n| *n += 1);
        }
        for request in group.requests {
            let _ = request.done.send(match request.failed {
                Some(e) => Err(e),
                None => Ok(request.appended),
            });
        }
    }
}

/// Makes a durable share visible to readers.
fn publish(shared: &Shared, part: &Written) {
    let mut segments = part.partition.segments.write().unwrap();
    let active = segments.last_mut().expect("a partition has a segment");
    for (k, entry) in part.entries.iter().enumerate() {
        active.note_entry(part.first_offset + k as u64, part.start + entry.at, entry.timestamp);
    }
    active.len = part.start + part.bytes;
    drop(segments);
    let end = part.first_offset + part.entries.len() as u64;
    part.partition.end.store(end, Ordering::Release);
    shared.metrics.records.inc_by(part.entries.len() as u64);
    shared.metrics.bytes.inc_by(part.bytes);
}
