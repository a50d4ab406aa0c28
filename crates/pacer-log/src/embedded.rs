//! The embedded log: one directory per stream partition, holding segment files.
//!
//! All appends go through one writer thread. It takes every request waiting in its queue,
//! writes them, and makes them durable with one `fsync` per touched partition before
//! answering any of them: group commit, so many publishers share the cost of a sync. Readers
//! never see a record before it is durable, because the committed end each partition
//! publishes only moves after the sync.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, RwLock};

use async_trait::async_trait;
use pacer_core::{NewRecord, Record};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::sync::{oneshot, watch};

use crate::segment::{self, Decoded};
use crate::{validate_stream_name, Log, LogError, Result, StartAt, StreamInfo, StreamReader};

/// One sparse index entry per this many bytes of segment.
const INDEX_INTERVAL: u64 = 4096;
/// Upper bound on one read from a segment file.
const READ_CHUNK: u64 = 1 << 20;
/// Requests one group commit takes at most, so a flood cannot delay the first ack forever.
const MAX_GROUP: usize = 4096;

/// When the writer calls `fsync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// After every append request, on its own.
    Always,
    /// Once per group of requests that were waiting together (group commit).
    #[default]
    Batch,
    /// Never: the OS writes back when it likes. A crash of the machine loses recent records.
    Off,
}

#[derive(Debug, Clone)]
pub struct EmbeddedLogConfig {
    pub dir: PathBuf,
    pub fsync: FsyncPolicy,
    /// A partition starts a new segment file once its current one reaches this size.
    pub segment_bytes: u64,
}

impl EmbeddedLogConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        EmbeddedLogConfig { dir: dir.into(), fsync: FsyncPolicy::Batch, segment_bytes: 128 << 20 }
    }
}

pub struct EmbeddedLog {
    shared: Arc<Shared>,
    requests: mpsc::Sender<AppendRequest>,
}

struct Shared {
    dir: PathBuf,
    streams: RwLock<HashMap<String, Arc<Partition>>>,
    /// Bumped whenever a stream is created, so readers waiting for one wake up.
    created: watch::Sender<u64>,
    metrics: Metrics,
}

#[derive(Default)]
struct Metrics {
    records: Counter,
    bytes: Counter,
    fsyncs: Counter,
}

/// The committed (durable) view of one partition, shared with readers.
struct Partition {
    segments: RwLock<Vec<SegmentInfo>>,
    /// Offset the next record will get: everything below it is durable.
    end: watch::Sender<u64>,
}

#[derive(Debug)]
struct SegmentInfo {
    base: u64,
    path: PathBuf,
    len: u64,
    /// (offset, byte position) of some entries, ascending.
    index: Vec<(u64, u64)>,
}

/// Where the writer sends an append's offsets once they are durable.
type Answer = oneshot::Sender<Result<Vec<u64>>>;

struct AppendRequest {
    stream: String,
    records: Vec<NewRecord>,
    done: Answer,
}

impl EmbeddedLog {
    /// Opens (or creates) the log in `config.dir`, recovering every partition: a torn tail
    /// left by a crash is cut at the last whole entry.
    pub fn open(config: EmbeddedLogConfig) -> Result<Self> {
        fs::create_dir_all(&config.dir).map_err(io_err(&config.dir))?;
        let mut streams = HashMap::new();
        let mut writers = HashMap::new();
        for entry in fs::read_dir(&config.dir).map_err(io_err(&config.dir))? {
            let entry = entry.map_err(io_err(&config.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !entry.path().is_dir() || validate_stream_name(&name).is_err() {
                continue;
            }
            let (partition, writer) = recover_partition(&entry.path().join("0"), config.segment_bytes)?;
            streams.insert(name.clone(), partition.clone());
            writers.insert(name, writer);
        }
        let shared = Arc::new(Shared {
            dir: config.dir.clone(),
            streams: RwLock::new(streams),
            created: watch::Sender::new(0),
            metrics: Metrics::default(),
        });
        let (tx, rx) = mpsc::channel();
        let writer = Writer { shared: shared.clone(), config, partitions: writers };
        std::thread::Builder::new()
            .name("pacer-log-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(io_err(&shared.dir))?;
        Ok(EmbeddedLog { shared, requests: tx })
    }

    fn partition(&self, stream: &str) -> Option<Arc<Partition>> {
        self.shared.streams.read().unwrap().get(stream).cloned()
    }

    pub fn register_metrics(&self, registry: &mut Registry) {
        let m = &self.shared.metrics;
        registry.register("pacer_log_records_appended", "Records appended to the log", m.records.clone());
        registry.register("pacer_log_bytes_appended", "Bytes appended to the log", m.bytes.clone());
        registry.register("pacer_log_fsyncs", "fsync calls made by the log writer", m.fsyncs.clone());
    }
}

#[async_trait]
impl Log for EmbeddedLog {
    async fn append(&self, stream: &str, records: Vec<NewRecord>) -> Result<Vec<u64>> {
        validate_stream_name(stream)?;
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let (done, answer) = oneshot::channel();
        let request = AppendRequest { stream: stream.to_string(), records, done };
        self.requests.send(request).map_err(|_| LogError::Closed)?;
        answer.await.map_err(|_| LogError::Closed)?
    }

    fn reader(&self, stream: &str, start: StartAt) -> Result<Box<dyn StreamReader>> {
        validate_stream_name(stream)?;
        let partition = self.partition(stream);
        let next = match (&partition, start) {
            (_, StartAt::Offset(o)) => o,
            (Some(p), StartAt::End) => *p.end.borrow(),
            _ => 0,
        };
        Ok(Box::new(EmbeddedReader {
            shared: self.shared.clone(),
            created: self.shared.created.subscribe(),
            stream: stream.to_string(),
            partition,
            next,
            cursor: None,
        }))
    }

    fn streams(&self) -> Vec<StreamInfo> {
        let streams = self.shared.streams.read().unwrap();
        let mut out: Vec<StreamInfo> = streams
            .iter()
            .map(|(name, p)| StreamInfo {
                name: name.clone(),
                partitions: 1,
                end_offset: *p.end.borrow(),
                bytes: p.segments.read().unwrap().iter().map(|s| s.len).sum(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

// ---------------------------------------------------------------------------------------
// Writing

/// The writer thread's own state of a partition: the open active segment.
struct PartitionWriter {
    shared: Arc<Partition>,
    dir: PathBuf,
    file: File,
    len: u64,
    next_offset: u64,
    last_indexed: u64,
}

struct Writer {
    shared: Arc<Shared>,
    config: EmbeddedLogConfig,
    partitions: HashMap<String, PartitionWriter>,
}

/// One partition's share of a group commit.
struct Pending {
    buf: Vec<u8>,
    index: Vec<(u64, u64)>,
    answers: Vec<(Answer, Vec<u64>)>,
    records: u64,
}

impl Writer {
    fn run(mut self, requests: mpsc::Receiver<AppendRequest>) {
        while let Ok(first) = requests.recv() {
            let mut group = vec![first];
            if self.config.fsync != FsyncPolicy::Always {
                while group.len() < MAX_GROUP {
                    match requests.try_recv() {
                        Ok(r) => group.push(r),
                        Err(_) => break,
                    }
                }
            }
            self.commit(group);
        }
    }

    fn commit(&mut self, group: Vec<AppendRequest>) {
        let mut pending: HashMap<String, Pending> = HashMap::new();
        for req in group {
            let writer = match self.writer_for(&req.stream) {
                Ok(w) => w,
                Err(e) => {
                    let _ = req.done.send(Err(e));
                    continue;
                }
            };
            let p = pending.entry(req.stream).or_insert_with(|| Pending {
                buf: Vec::new(),
                index: Vec::new(),
                answers: Vec::new(),
                records: 0,
            });
            let mut offsets = Vec::with_capacity(req.records.len());
            for rec in &req.records {
                let pos = writer.len + p.buf.len() as u64;
                let offset = writer.next_offset + p.records;
                if pos == 0 || pos - writer.last_indexed >= INDEX_INTERVAL {
                    p.index.push((offset, pos));
                    writer.last_indexed = pos;
                }
                segment::encode(offset, rec, &mut p.buf);
                offsets.push(offset);
                p.records += 1;
            }
            p.answers.push((req.done, offsets));
        }

        for (stream, p) in pending {
            let writer = self.partitions.get_mut(&stream).expect("writer exists for pending stream");
            let result = write_durably(writer, &p.buf, self.config.fsync);
            if self.config.fsync != FsyncPolicy::Off {
                self.shared.metrics.fsyncs.inc();
            }
            match result {
                Ok(()) => {
                    writer.len += p.buf.len() as u64;
                    writer.next_offset += p.records;
                    {
                        let mut segments = writer.shared.segments.write().unwrap();
                        let active = segments.last_mut().expect("a partition has a segment");
                        active.len = writer.len;
                        active.index.extend(p.index);
                    }
                    writer.shared.end.send_replace(writer.next_offset);
                    self.shared.metrics.records.inc_by(p.records);
                    self.shared.metrics.bytes.inc_by(p.buf.len() as u64);
                    for (done, offsets) in p.answers {
                        let _ = done.send(Ok(offsets));
                    }
                }
                Err(e) => {
                    tracing::error!(stream, error = %e, "append failed; records not acknowledged");
                    // Cut whatever part of the batch reached the file so the next append
                    // starts on an entry boundary.
                    let _ = writer.file.set_len(writer.len);
                    writer.last_indexed = writer
                        .shared
                        .segments
                        .read()
                        .unwrap()
                        .last()
                        .map_or(0, |s| s.index.last().map_or(0, |&(_, pos)| pos));
                    for (done, _) in p.answers {
                        let path = writer.dir.display().to_string();
                        let source = std::io::Error::new(e.kind(), e.to_string());
                        let _ = done.send(Err(LogError::Io { path, source }));
                    }
                }
            }
        }
    }

    /// The writer of `stream`'s partition, creating the stream or rolling its segment first
    /// when needed.
    fn writer_for(&mut self, stream: &str) -> Result<&mut PartitionWriter> {
        if !self.partitions.contains_key(stream) {
            let dir = self.shared.dir.join(stream).join("0");
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            let path = segment_path(&dir, 0);
            let file = open_segment(&path)?;
            let partition = Arc::new(Partition {
                segments: RwLock::new(vec![SegmentInfo { base: 0, path, len: 0, index: Vec::new() }]),
                end: watch::Sender::new(0),
            });
            self.shared.streams.write().unwrap().insert(stream.to_string(), partition.clone());
            self.shared.created.send_modify(|n| *n += 1);
            tracing::info!(stream, "stream created");
            let writer = PartitionWriter { shared: partition, dir, file, len: 0, next_offset: 0, last_indexed: 0 };
            self.partitions.insert(stream.to_string(), writer);
        }
        let writer = self.partitions.get_mut(stream).unwrap();
        if writer.len >= self.config.segment_bytes {
            let path = segment_path(&writer.dir, writer.next_offset);
            writer.file = open_segment(&path)?;
            writer.len = 0;
            writer.last_indexed = 0;
            let info = SegmentInfo { base: writer.next_offset, path, len: 0, index: Vec::new() };
            writer.shared.segments.write().unwrap().push(info);
        }
        Ok(writer)
    }
}

fn write_durably(writer: &mut PartitionWriter, buf: &[u8], fsync: FsyncPolicy) -> std::io::Result<()> {
    writer.file.write_all(buf)?;
    if fsync != FsyncPolicy::Off {
        writer.file.sync_data()?;
    }
    Ok(())
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

fn open_segment(path: &Path) -> Result<File> {
    let file = OpenOptions::new().create(true).append(true).open(path).map_err(io_err(path))?;
    // The new directory entry must survive a crash too.
    if let Some(dir) = path.parent() {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
    }
    Ok(file)
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io { path: path.display().to_string(), source }
}

// ---------------------------------------------------------------------------------------
// Recovery

fn recover_partition(dir: &Path, segment_bytes: u64) -> Result<(Arc<Partition>, PartitionWriter)> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut bases: Vec<u64> = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
        .collect();
    bases.sort_unstable();
    if bases.is_empty() {
        bases.push(0);
    }
    let mut segments = Vec::new();
    let mut next_offset = bases[0];
    for base in bases {
        if base != next_offset {
            tracing::warn!(dir = %dir.display(), base, expected = next_offset, "segment does not continue its predecessor; later segments dropped from view");
            break;
        }
        let info = recover_segment(&segment_path(dir, base), base)?;
        next_offset = base + count_records(&info)?;
        segments.push(info);
    }
    let active = segments.last().unwrap();
    let file = open_segment(&active.path)?;
    let writer_len = active.len;
    let last_indexed = active.index.last().map_or(0, |&(_, pos)| pos);
    let _ = segment_bytes;
    let partition = Arc::new(Partition { segments: RwLock::new(segments), end: watch::Sender::new(next_offset) });
    let writer = PartitionWriter {
        shared: partition.clone(),
        dir: dir.to_path_buf(),
        file,
        len: writer_len,
        next_offset,
        last_indexed,
    };
    Ok((partition, writer))
}

/// Scans a segment, builds its sparse index, and cuts it after the last valid entry.
fn recover_segment(path: &Path, base: u64) -> Result<SegmentInfo> {
    let mut bytes = Vec::new();
    if path.exists() {
        File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(io_err(path))?;
    }
    let mut pos = 0usize;
    let mut expected = base;
    let mut index = Vec::new();
    let mut last_indexed = 0u64;
    while pos < bytes.len() {
        match segment::decode(&bytes[pos..], 0) {
            Decoded::Entry(rec, used) if rec.offset == expected => {
                if pos == 0 || pos as u64 - last_indexed >= INDEX_INTERVAL {
                    index.push((rec.offset, pos as u64));
                    last_indexed = pos as u64;
                }
                pos += used;
                expected += 1;
            }
            other => {
                let reason = match other {
                    Decoded::Incomplete => "torn entry at the tail",
                    Decoded::Corrupt(r) => r,
                    Decoded::Entry(..) => "offset out of sequence",
                };
                tracing::warn!(path = %path.display(), at = pos, dropped_bytes = bytes.len() - pos, reason, "truncating segment");
                OpenOptions::new()
                    .write(true)
                    .open(path)
                    .and_then(|f| f.set_len(pos as u64).and_then(|_| f.sync_all()))
                    .map_err(io_err(path))?;
                break;
            }
        }
    }
    Ok(SegmentInfo { base, path: path.to_path_buf(), len: pos as u64, index })
}

fn count_records(info: &SegmentInfo) -> Result<u64> {
    // The last index entry is near the end; count from there.
    let Some(&(offset, pos)) = info.index.last() else { return Ok(0) };
    let mut bytes = Vec::new();
    let mut f = File::open(&info.path).map_err(io_err(&info.path))?;
    f.seek(SeekFrom::Start(pos)).and_then(|_| f.read_to_end(&mut bytes)).map_err(io_err(&info.path))?;
    let mut n = 0;
    let mut at = 0;
    while let Decoded::Entry(_, used) = segment::decode(&bytes[at..], 0) {
        at += used;
        n += 1;
    }
    Ok(offset - info.base + n)
}

// ---------------------------------------------------------------------------------------
// Reading

struct EmbeddedReader {
    shared: Arc<Shared>,
    created: watch::Receiver<u64>,
    stream: String,
    partition: Option<Arc<Partition>>,
    next: u64,
    /// Where the previous read stopped: (segment base, byte position, offset there), so a
    /// sequential reader does not go back to the index.
    cursor: Option<(u64, u64, u64)>,
}

impl EmbeddedReader {
    fn read_available(&mut self) -> Result<Vec<Record>> {
        let Some(partition) = self.partition.clone() else { return Ok(Vec::new()) };
        let end = *partition.end.borrow();
        let mut out = Vec::new();
        while self.next < end && out.is_empty() {
            let (base, path, mut pos, seg_len) = {
                let segments = partition.segments.read().unwrap();
                let first = segments.first().map_or(0, |s| s.base);
                if self.next < first {
                    self.next = first;
                }
                let i = segments.partition_point(|s| s.base <= self.next).saturating_sub(1);
                let seg = &segments[i];
                let pos = match self.cursor {
                    Some((b, pos, at)) if b == seg.base && at == self.next => pos,
                    _ => {
                        let j = seg.index.partition_point(|&(o, _)| o <= self.next);
                        if j == 0 {
                            0
                        } else {
                            seg.index[j - 1].1
                        }
                    }
                };
                (seg.base, seg.path.clone(), pos, seg.len)
            };
            let want = (seg_len - pos).min(READ_CHUNK);
            if want == 0 {
                break; // only possible if the end moved ahead of the segment list: retry later
            }
            let mut buf = vec![0u8; want as usize];
            File::open(&path)
                .and_then(|mut f| f.seek(SeekFrom::Start(pos)).and_then(|_| f.read_exact(&mut buf)))
                .map_err(io_err(&path))?;
            let mut at = 0;
            loop {
                match segment::decode(&buf[at..], 0) {
                    Decoded::Entry(rec, used) => {
                        at += used;
                        if rec.offset >= self.next && rec.offset < end {
                            self.next = rec.offset + 1;
                            out.push(rec);
                        }
                    }
                    Decoded::Incomplete if at == 0 => {
                        // One entry larger than a chunk: read it whole.
                        let len = u32::from_le_bytes(buf[0..4].try_into().unwrap()) as usize + 8;
                        buf.resize(len, 0);
                        File::open(&path)
                            .and_then(|mut f| f.seek(SeekFrom::Start(pos)).and_then(|_| f.read_exact(&mut buf)))
                            .map_err(io_err(&path))?;
                        continue;
                    }
                    Decoded::Incomplete => break,
                    Decoded::Corrupt(reason) => {
                        tracing::error!(stream = %self.stream, path = %path.display(), pos = pos + at as u64, reason, "corrupt committed entry");
                        return Err(LogError::Io {
                            path: path.display().to_string(),
                            source: std::io::Error::new(std::io::ErrorKind::InvalidData, reason),
                        });
                    }
                }
            }
            pos += at as u64;
            self.cursor = Some((base, pos, self.next));
        }
        Ok(out)
    }

    fn attach(&mut self) {
        if self.partition.is_none() {
            self.partition = self.shared.streams.read().unwrap().get(&self.stream).cloned();
        }
    }
}

#[async_trait]
impl StreamReader for EmbeddedReader {
    async fn next_batch(&mut self) -> Result<Vec<Record>> {
        loop {
            self.attach();
            let Some(partition) = self.partition.clone() else {
                self.created.changed().await.map_err(|_| LogError::Closed)?;
                continue;
            };
            let mut end = partition.end.subscribe();
            let batch = self.read_available()?;
            if !batch.is_empty() {
                return Ok(batch);
            }
            end.wait_for(|&e| e > self.next).await.map_err(|_| LogError::Closed)?;
        }
    }

    async fn try_batch(&mut self) -> Result<Vec<Record>> {
        self.attach();
        self.read_available()
    }

    fn position(&self) -> u64 {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn rec(i: u64) -> NewRecord {
        NewRecord::new(i as i64, Some(Bytes::from(format!("k{}", i % 3))), format!("{{\"i\":{i}}}"))
    }

    #[tokio::test]
    async fn appended_records_are_read_back_in_order_across_segments_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = EmbeddedLogConfig::new(dir.path());
        config.segment_bytes = 2048;
        {
            let log = EmbeddedLog::open(config.clone()).unwrap();
            for chunk in 0..20u64 {
                let offsets = log.append("s", (chunk * 10..chunk * 10 + 10).map(rec).collect()).await.unwrap();
                assert_eq!(offsets, (chunk * 10..chunk * 10 + 10).collect::<Vec<_>>());
            }
        }
        let segments = fs::read_dir(dir.path().join("s/0")).unwrap().count();
        assert!(segments > 1, "expected several segments, got {segments}");

        let log = EmbeddedLog::open(config).unwrap();
        assert_eq!(log.streams()[0].end_offset, 200);
        let mut reader = log.reader("s", StartAt::Offset(37)).unwrap();
        let mut seen = Vec::new();
        while seen.len() < 163 {
            seen.extend(reader.next_batch().await.unwrap().into_iter().map(|r| r.offset));
        }
        assert_eq!(seen, (37..200).collect::<Vec<_>>());
        assert_eq!(log.append("s", vec![rec(200)]).await.unwrap(), vec![200]);
    }

    #[tokio::test]
    async fn torn_tail_is_cut_at_the_last_whole_record() {
        let dir = tempfile::tempdir().unwrap();
        let config = EmbeddedLogConfig::new(dir.path());
        {
            let log = EmbeddedLog::open(config.clone()).unwrap();
            log.append("s", (0..5).map(rec).collect()).await.unwrap();
        }
        let seg = dir.path().join("s/0").join(format!("{:020}.log", 0));
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[0x20, 0, 0, 0, 1, 2, 3]).unwrap();
        drop(f);

        let log = EmbeddedLog::open(config).unwrap();
        assert_eq!(log.append("s", vec![rec(5)]).await.unwrap(), vec![5]);
        let mut reader = log.reader("s", StartAt::Beginning).unwrap();
        let values: Vec<_> = reader.next_batch().await.unwrap().into_iter().map(|r| r.value).collect();
        assert_eq!(values.len(), 6);
        assert_eq!(values[5], Bytes::from("{\"i\":5}"));
    }

    #[tokio::test]
    async fn a_reader_waits_for_a_stream_that_does_not_exist_yet() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(EmbeddedLog::open(EmbeddedLogConfig::new(dir.path())).unwrap());
        let mut reader = log.reader("later", StartAt::End).unwrap();
        let writer = log.clone();
        let task = tokio::spawn(async move { writer.append("later", vec![rec(1)]).await.unwrap() });
        let batch = reader.next_batch().await.unwrap();
        assert_eq!(batch[0].offset, 0);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn bad_stream_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(EmbeddedLogConfig::new(dir.path())).unwrap();
        let err = log.append("a/b", vec![rec(1)]).await.unwrap_err();
        assert!(err.to_string().contains("only ASCII letters"), "{err}");
    }
}
