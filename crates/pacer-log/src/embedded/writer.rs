//! The writer thread: every append goes through it.
//!
//! It takes every request waiting in its queue, writes them, and makes them durable with one
//! fsync per touched partition before answering any of them: group commit, so many publishers
//! share the cost of a sync. Readers never see a record before it is durable, because a
//! partition's committed end only moves after the sync. Between requests it rolls segments
//! by age and applies retention.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use pacer_core::{now_ms, NewRecord};
use tokio::sync::oneshot;

use super::partition::{io_err, segment_path, Partition, SegmentInfo};
use super::{Shared, StreamState};
use crate::segment;
use crate::{partition_for_key, Appended, LogError, Result};

/// Requests one group commit takes at most, so a flood cannot delay the first ack forever.
const MAX_GROUP: usize = 4096;
/// How often segments are checked for age and retention when no appends arrive.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);

/// Where the writer sends an append's result once it is durable.
pub type Answer = oneshot::Sender<Result<Vec<Appended>>>;

pub struct AppendRequest {
    pub stream: String,
    pub records: Vec<NewRecord>,
    pub done: Answer,
}

/// The writer's own state of a partition: the open active segment.
struct PartitionWriter {
    shared: Arc<Partition>,
    file: File,
    len: u64,
    next_offset: u64,
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
}

/// One record in a partition's share of a group commit.
struct Entry {
    /// Index of its request in the group.
    request: usize,
    /// Byte position in the partition's buffer.
    at: u64,
    timestamp: i64,
}

/// One request being committed: where its records go and whether that worked.
struct InFlight {
    done: Answer,
    appended: Vec<Appended>,
    failed: Option<LogError>,
}

impl Writer {
    pub fn new(shared: Arc<Shared>) -> Result<Writer> {
        let mut streams = HashMap::new();
        for (name, state) in shared.streams.read().unwrap().iter() {
            let partitions = state.partitions.iter().map(|p| open_writer(p.clone())).collect::<Result<Vec<_>>>()?;
            streams.insert(name.clone(), StreamWriter { state: state.clone(), partitions, round_robin: 0 });
        }
        Ok(Writer { shared, streams, last_maintenance: Instant::now() })
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
        let mut in_flight: Vec<InFlight> = Vec::with_capacity(group.len());
        // (stream, partition) → the bytes to write and what each entry in them is.
        let mut pending: HashMap<(String, u32), (Vec<u8>, Vec<Entry>)> = HashMap::new();
        for req in group {
            let r = in_flight.len();
            let stream = match self.stream_writer(&req.stream) {
                Ok(s) => s,
                Err(e) => {
                    in_flight.push(InFlight { done: req.done, appended: Vec::new(), failed: Some(e) });
                    continue;
                }
            };
            let n = stream.partitions.len() as u32;
            let mut appended = Vec::with_capacity(req.records.len());
            for rec in &req.records {
                let partition = match &rec.key {
                    Some(key) => partition_for_key(key, n),
                    None => {
                        stream.round_robin = stream.round_robin.wrapping_add(1);
                        stream.round_robin % n
                    }
                };
                let writer = &stream.partitions[partition as usize];
                let (buf, entries) = pending.entry((req.stream.clone(), partition)).or_default();
                let offset = writer.next_offset + entries.len() as u64;
                entries.push(Entry { request: r, at: buf.len() as u64, timestamp: rec.timestamp });
                segment::encode(offset, rec, buf);
                appended.push(Appended { partition, offset });
            }
            in_flight.push(InFlight { done: req.done, appended, failed: None });
        }

        let fsync = self.shared.config.fsync;
        let mut touched_streams = Vec::new();
        for ((stream, partition), (buf, entries)) in pending {
            let sw = self.streams.get_mut(&stream).expect("writer exists for pending stream");
            let writer = &mut sw.partitions[partition as usize];
            match write_durably(writer, &buf, fsync) {
                Ok(()) => {
                    if fsync != super::FsyncPolicy::Off {
                        self.shared.metrics.fsyncs.inc();
                    }
                    let mut segments = writer.shared.segments.write().unwrap();
                    let active = segments.last_mut().expect("a partition has a segment");
                    for (k, entry) in entries.iter().enumerate() {
                        active.note_entry(writer.next_offset + k as u64, writer.len + entry.at, entry.timestamp);
                    }
                    writer.len += buf.len() as u64;
                    active.len = writer.len;
                    drop(segments);
                    writer.next_offset += entries.len() as u64;
                    writer.shared.end.store(writer.next_offset, Ordering::Release);
                    self.shared.metrics.records.inc_by(entries.len() as u64);
                    self.shared.metrics.bytes.inc_by(buf.len() as u64);
                    touched_streams.push(sw.state.clone());
                }
                Err(e) => {
                    tracing::error!(stream, partition, error = %e, "append failed; records not acknowledged");
                    // Cut what reached the file so the next append starts on an entry boundary.
                    let _ = writer.file.set_len(writer.len);
                    for &Entry { request: r, .. } in &entries {
                        if in_flight[r].failed.is_none() {
                            let path = writer.shared.dir.display().to_string();
                            let source = std::io::Error::new(e.kind(), e.to_string());
                            in_flight[r].failed = Some(LogError::Io { path, source });
                        }
                    }
                }
            }
        }
        for state in touched_streams {
            state.appended.send_modify(|n| *n += 1);
        }
        for f in in_flight {
            let _ = f.done.send(match f.failed {
                Some(e) => Err(e),
                None => Ok(f.appended),
            });
        }
    }

    /// The writer of `stream`, creating the stream first when needed, with every active
    /// segment that is full rolled.
    fn stream_writer(&mut self, stream: &str) -> Result<&mut StreamWriter> {
        if !self.streams.contains_key(stream) {
            let partitions = self.shared.config.partitions.max(1);
            let mut shared_parts = Vec::new();
            for id in 0..partitions {
                let dir = self.shared.config.dir.join(stream).join(id.to_string());
                fs::create_dir_all(&dir).map_err(io_err(&dir))?;
                shared_parts.push(Arc::new(Partition::recover(id, &dir)?));
            }
            let state = Arc::new(StreamState::new(shared_parts));
            let writers = state.partitions.iter().map(|p| open_writer(p.clone())).collect::<Result<Vec<_>>>()?;
            self.shared.streams.write().unwrap().insert(stream.to_string(), state.clone());
            self.shared.created.send_modify(|n| *n += 1);
            tracing::info!(stream, partitions, "stream created");
            self.streams.insert(stream.to_string(), StreamWriter { state, partitions: writers, round_robin: 0 });
        }
        let segment_bytes = self.shared.config.segment_bytes;
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
        let before = config.retention_ms.map(|r| now_ms() - r as i64);
        for sw in self.streams.values_mut() {
            for writer in &mut sw.partitions {
                let aged = config.segment_ms.is_some_and(|ms| {
                    let segments = writer.shared.segments.read().unwrap();
                    let active = segments.last().unwrap();
                    active.len > 0 && active.opened.elapsed() >= Duration::from_millis(ms)
                });
                if aged {
                    if let Err(e) = roll(writer) {
                        tracing::error!(error = %e, "could not roll an aged segment");
                    }
                }
                let removed = writer.shared.apply_retention(before, config.retention_bytes);
                self.shared.metrics.segments_deleted.inc_by(removed as u64);
            }
        }
    }
}

fn open_writer(partition: Arc<Partition>) -> Result<PartitionWriter> {
    let (path, len) = {
        let segments = partition.segments.read().unwrap();
        let active = segments.last().expect("a partition has a segment");
        (active.path.clone(), active.len)
    };
    let file = open_segment(&path)?;
    let next_offset = partition.end();
    Ok(PartitionWriter { shared: partition, file, len, next_offset })
}

/// Seals the active segment (its index files written) and starts a new one.
fn roll(writer: &mut PartitionWriter) -> Result<()> {
    writer.shared.segments.read().unwrap().last().unwrap().write_indexes()?;
    let path = segment_path(&writer.shared.dir, writer.next_offset);
    writer.file = open_segment(&path)?;
    writer.len = 0;
    writer.shared.segments.write().unwrap().push(SegmentInfo::empty(writer.next_offset, path));
    Ok(())
}

fn write_durably(writer: &mut PartitionWriter, buf: &[u8], fsync: super::FsyncPolicy) -> std::io::Result<()> {
    writer.file.write_all(buf)?;
    if fsync != super::FsyncPolicy::Off {
        writer.file.sync_data()?;
    }
    Ok(())
}

fn open_segment(path: &Path) -> Result<File> {
    let file = OpenOptions::new().create(true).append(true).open(path).map_err(io_err(path))?;
    // The new directory entry must survive a crash too.
    if let Some(dir) = path.parent() {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
    }
    Ok(file)
}
