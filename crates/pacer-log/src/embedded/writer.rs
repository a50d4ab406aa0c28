//! The writer thread: every append goes through it.
//!
//! It takes every request waiting in its queue, encodes and writes them, and hands the written
//! group to the sync thread (`sync`), which makes it durable with one fsync per touched
//! partition before answering any of them: group commit, so many publishers share the cost of
//! a sync. While one group is being synced the writer already writes the next, so encoding
//! overlaps the disk's flush. Between requests it rolls segments by age and applies retention.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use pacer_core::{now_ms, NewRecord};
use tokio::sync::oneshot;

use super::partition::{io_err, segment_path, Partition, SegmentInfo};
use super::sync::{fail_entries, Entry, InFlight, SyncJob, Written, WrittenGroup};
use super::{Shared, StreamState};
use crate::segment;
use crate::{partition_for_key, Appended, LogError, Result};

/// Requests one group commit takes at most, so a flood cannot delay the first ack forever.
const MAX_GROUP: usize = 4096;
/// How often segments are checked for age and retention when no appends arrive.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);
/// Written groups waiting for the sync thread at most (its next sync covers all of them);
/// beyond it the writer waits, and the requests arriving meanwhile make the next group larger.
pub const SYNC_QUEUE: usize = 16;

/// Where the writer sends an append's result once it is durable.
pub type Answer = oneshot::Sender<Result<Vec<Appended>>>;

pub struct AppendRequest {
    pub stream: String,
    pub records: Vec<NewRecord>,
    /// How many partitions the stream gets if this request creates it; `None`: as configured.
    pub partitions: Option<u32>,
    pub done: Answer,
}

/// The writer's own state of a partition: the open active segment.
struct PartitionWriter {
    shared: Arc<Partition>,
    /// None while it cannot be opened for writing (a read-only data directory): appends to
    /// the partition are refused with the reason and opening is tried again at each one.
    file: Option<SegmentFile>,
    /// Bytes written, synced or not.
    len: u64,
    next_offset: u64,
}

struct SegmentFile {
    append: File,
    /// The same file for the sync thread.
    sync: Arc<File>,
}

impl PartitionWriter {
    fn open(&mut self) -> std::io::Result<&mut SegmentFile> {
        if self.file.is_none() {
            let path = self.shared.segments.read().unwrap().last().expect("a partition has a segment").path.clone();
            self.file = Some(open_segment(&path, self.len)?);
            tracing::info!(path = %path.display(), "segment open for appending");
        }
        Ok(self.file.as_mut().unwrap())
    }
}

struct StreamWriter {
    state: Arc<StreamState>,
    partitions: Vec<PartitionWriter>,
    round_robin: u32,
}

pub struct Writer {
    shared: Arc<Shared>,
    streams: HashMap<String, StreamWriter>,
    last_maintenance: Instant,
    sync: mpsc::SyncSender<SyncJob>,
    /// A message per failed sync: the partitions must be cut back before the next write.
    sync_failures: mpsc::Receiver<()>,
}

impl Writer {
    pub fn new(
        shared: Arc<Shared>,
        sync: mpsc::SyncSender<SyncJob>,
        sync_failures: mpsc::Receiver<()>,
    ) -> Result<Writer> {
        let mut streams = HashMap::new();
        for (name, state) in shared.streams.read().unwrap().iter() {
            let partitions = state.partitions.iter().map(|p| open_writer(p.clone())).collect();
            streams.insert(name.clone(), StreamWriter { state: state.clone(), partitions, round_robin: 0 });
        }
        Ok(Writer { shared, streams, last_maintenance: Instant::now(), sync, sync_failures })
    }

    pub fn run(mut self, requests: mpsc::Receiver<AppendRequest>) {
        loop {
            match requests.recv_timeout(MAINTENANCE_INTERVAL) {
                Ok(first) => {
                    let mut group = vec![first];
                    if self.shared.config.fsync != super::FsyncPolicy::Always {
                        while group.len() < MAX_GROUP {
                            match requests.try_recv() {
                                Ok(r) => group.push(r),
                                Err(_) => break,
                            }
                        }
                    }
                    self.commit(group);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            if self.last_maintenance.elapsed() >= MAINTENANCE_INTERVAL {
                self.maintain();
                self.last_maintenance = Instant::now();
            }
        }
    }

    fn commit(&mut self, group: Vec<AppendRequest>) {
        /// What a commit writes to one partition: the bytes, and what each entry in them is.
        type PartitionBytes = (Vec<u8>, Vec<Entry>);
        if self.sync_failures.try_iter().count() > 0 {
            self.rewind_to_durable();
        }
        let mut requests: Vec<InFlight> = Vec::with_capacity(group.len());
        // Stream → by partition. Keyed by stream first: a group of single-record appends
        // names its stream once, not per record.
        let mut pending: HashMap<String, Vec<Option<PartitionBytes>>> = HashMap::new();
        for req in group {
            let r = requests.len();
            let stream = match self.stream_writer(&req.stream, req.partitions) {
                Ok(s) => s,
                Err(e) => {
                    requests.push(InFlight { done: req.done, appended: Vec::new(), failed: Some(e) });
                    continue;
                }
            };
            let n = stream.partitions.len() as u32;
            let mut appended = Vec::with_capacity(req.records.len());
            let placed = req.records.iter().find_map(|rec| rec.partition.filter(|p| *p >= n));
            if let Some(partition) = placed {
                let failed = LogError::NoSuchPartition { stream: req.stream.clone(), partition, partitions: n };
                requests.push(InFlight { done: req.done, appended: Vec::new(), failed: Some(failed) });
                continue;
            }
            let stream_pending = match pending.get_mut(req.stream.as_str()) {
                Some(parts) => parts,
                None => pending.entry(req.stream.clone()).or_insert_with(|| (0..n).map(|_| None).collect()),
            };
            for rec in &req.records {
                let partition = match (rec.partition, &rec.key) {
                    (Some(partition), _) => partition,
                    (None, Some(key)) => partition_for_key(key, n),
                    (None, None) => {
                        stream.round_robin = stream.round_robin.wrapping_add(1);
                        stream.round_robin % n
                    }
                };
                let writer = &stream.partitions[partition as usize];
                let (buf, entries) = stream_pending[partition as usize].get_or_insert_default();
                let offset = writer.next_offset + entries.len() as u64;
                entries.push(Entry { request: r, at: buf.len() as u64, timestamp: rec.timestamp });
                segment::encode(offset, rec, buf);
                appended.push(Appended { partition, offset });
            }
            requests.push(InFlight { done: req.done, appended, failed: None });
        }

        let mut parts = Vec::with_capacity(pending.len());
        let pending = pending.into_iter().flat_map(|(stream, by_partition)| {
            by_partition.into_iter().enumerate().filter_map(move |(p, part)| Some((stream.clone(), p as u32, part?)))
        });
        for (stream, partition, (buf, entries)) in pending {
            let sw = self.streams.get_mut(&stream).expect("writer exists for pending stream");
            let writer = &mut sw.partitions[partition as usize];
            let written = writer.open().and_then(|f| f.append.write_all(&buf).map(|()| f.sync.clone()));
            match written {
                Ok(file) => {
                    parts.push(Written {
                        stream: sw.state.clone(),
                        partition: writer.shared.clone(),
                        file,
                        first_offset: writer.next_offset,
                        start: writer.len,
                        bytes: buf.len() as u64,
                        entries,
                    });
                    writer.len += buf.len() as u64;
                    writer.next_offset += parts.last().unwrap().entries.len() as u64;
                }
                Err(e) => {
                    tracing::error!(stream, partition, error = %e, "append failed; records not acknowledged");
                    // Cut what reached the file so the next append starts on an entry boundary.
                    if let Some(f) = &writer.file {
                        let _ = f.append.set_len(writer.len);
                    }
                    fail_entries(&mut requests, &entries, &writer.shared, &e);
                }
            }
        }
        // Blocks while the sync thread is behind, so the next group grows instead.
        if self.sync.send(SyncJob::Group(WrittenGroup { parts, requests })).is_err() {
            tracing::error!("the log's sync thread is gone; appends cannot be acknowledged");
        }
    }

    /// After a failed sync, cuts every partition back to what is durable: what was written
    /// after it may not be on disk, and none of it was acknowledged.
    fn rewind_to_durable(&mut self) {
        drain(&self.sync);
        while self.sync_failures.try_recv().is_ok() {}
        for sw in self.streams.values_mut() {
            for writer in &mut sw.partitions {
                let durable_len = writer.shared.segments.read().unwrap().last().map_or(0, |s| s.len);
                if writer.len != durable_len {
                    tracing::warn!(partition = %writer.shared.dir.display(), from = writer.len, to = durable_len, "cutting records whose sync failed");
                    if let Some(Err(e)) = writer.file.as_ref().map(|f| f.append.set_len(durable_len)) {
                        tracing::error!(error = %e, "could not cut records whose sync failed");
                    }
                    writer.len = durable_len;
                    writer.next_offset = writer.shared.end();
                }
            }
        }
    }

    /// The writer of `stream`, creating the stream first when needed, with every active
    /// segment that is full rolled.
    fn stream_writer(&mut self, stream: &str, partitions: Option<u32>) -> Result<&mut StreamWriter> {
        if !self.streams.contains_key(stream) {
            let partitions = partitions.unwrap_or_else(|| crate::partitions_for(stream, self.shared.config.partitions));
            let mut shared_parts = Vec::new();
            for id in 0..partitions {
                let dir = self.shared.config.dir.join(stream).join(id.to_string());
                fs::create_dir_all(&dir).map_err(io_err(&dir))?;
                shared_parts.push(Arc::new(Partition::recover(id, &dir)?));
            }
            let state = Arc::new(StreamState::new(shared_parts));
            let writers = state.partitions.iter().map(|p| open_writer(p.clone())).collect();
            self.shared.streams.write().unwrap().insert(stream.to_string(), state.clone());
            self.shared.created.send_modify(|n| *n += 1);
            tracing::info!(stream, partitions, "stream created");
            self.streams.insert(stream.to_string(), StreamWriter { state, partitions: writers, round_robin: 0 });
        }
        let segment_bytes = self.shared.config.segment_bytes;
        if self.streams[stream].partitions.iter().any(|w| w.len >= segment_bytes) {
            // The sealed segment's index must hold every entry before it is written.
            drain(&self.sync);
        }
        let sw = self.streams.get_mut(stream).unwrap();
        for writer in &mut sw.partitions {
            if writer.len >= segment_bytes {
                roll(writer)?;
            }
        }
        Ok(sw)
    }

    /// Rolls segments past their age and drops what retention no longer keeps.
    fn maintain(&mut self) {
        let config = &self.shared.config;
        let now = now_ms();
        for (stream, sw) in self.streams.iter_mut() {
            let (before, max_bytes) = config.retention(stream, now);
            for writer in &mut sw.partitions {
                let aged = config.segment_ms.is_some_and(|ms| {
                    let segments = writer.shared.segments.read().unwrap();
                    let active = segments.last().unwrap();
                    active.len > 0 && active.opened.elapsed() >= Duration::from_millis(ms)
                });
                if aged {
                    drain(&self.sync);
                    if let Err(e) = roll(writer) {
                        tracing::error!(error = %e, "could not roll an aged segment");
                    }
                }
                let removed = writer.shared.apply_retention(before, max_bytes);
                self.shared.metrics.segments_deleted.inc_by(removed as u64);
            }
        }
    }
}

/// Waits until every written group went through the sync thread.
fn drain(sync: &mpsc::SyncSender<SyncJob>) {
    let (done, wait) = mpsc::channel();
    if sync.send(SyncJob::Barrier(done)).is_ok() {
        let _ = wait.recv();
    }
}

fn open_writer(partition: Arc<Partition>) -> PartitionWriter {
    let (path, len) = {
        let segments = partition.segments.read().unwrap();
        let active = segments.last().expect("a partition has a segment");
        (active.path.clone(), active.len)
    };
    let file = match open_segment(&path, len) {
        Ok(file) => Some(file),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "segment cannot be opened for appending; its records stay readable, appends to it are refused until it can");
            None
        }
    };
    let next_offset = partition.end();
    PartitionWriter { shared: partition, file, len, next_offset }
}

/// Seals the active segment (its index files written) and starts a new one.
fn roll(writer: &mut PartitionWriter) -> Result<()> {
    writer.shared.segments.read().unwrap().last().unwrap().write_indexes()?;
    let path = segment_path(&writer.shared.dir, writer.next_offset);
    writer.file = Some(open_segment(&path, 0).map_err(io_err(&path))?);
    writer.len = 0;
    writer.shared.segments.write().unwrap().push(SegmentInfo::empty(writer.next_offset, path));
    Ok(())
}

/// Opens a segment for appending after its first `len` bytes: whatever follows them was
/// never acknowledged (a torn write recovery could not cut, or a failed sync).
fn open_segment(path: &Path, len: u64) -> std::io::Result<SegmentFile> {
    let append = OpenOptions::new().create(true).append(true).open(path)?;
    if append.metadata()?.len() > len {
        append.set_len(len)?;
    }
    // The new directory entry must survive a crash too.
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    let sync = Arc::new(append.try_clone()?);
    Ok(SegmentFile { append, sync })
}
