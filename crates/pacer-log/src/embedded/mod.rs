//! The embedded log: one directory per stream, one per partition inside it, holding segment
//! files. See `partition` for the files, `writer` for group commit, `reader` for reading.

mod partition;
mod reader;
mod sync;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex, RwLock};

use async_trait::async_trait;
use bytes::Bytes;
use pacer_core::{now_ms, NewRecord};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::sync::{oneshot, watch};

use crate::{
    validate_stream_name, Appended, GroupMember, Log, LogError, Positions, Result, StartAt, StreamInfo, StreamReader,
};
use partition::{io_err, Partition};
use writer::{AppendRequest, Writer};

/// Internal stream holding committed consumer positions, like Kafka's `__consumer_offsets`.
const CONSUMER_POSITIONS: &str = "__consumer_positions";

/// When the writer calls `fsync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// Every append request is written on its own and synced before it is acknowledged
    /// (appends whose syncs would overlap share one).
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
    /// Partitions of a stream created by its first append.
    pub partitions: u32,
    /// A partition starts a new segment once its current one reaches this size…
    pub segment_bytes: u64,
    /// …or this age (ms).
    pub segment_ms: Option<u64>,
    /// Whole segments whose newest record is older than this (ms) are deleted.
    pub retention_ms: Option<u64>,
    /// Oldest segments are deleted while a partition is larger than this.
    pub retention_bytes: Option<u64>,
    /// Streams kept for their own time (ms) instead of `retention_ms`: history policies.
    pub stream_retention_ms: std::collections::HashMap<String, u64>,
}

impl EmbeddedLogConfig {
    /// What a stream keeps at time `now` (ms): whole segments whose newest record is before
    /// the first go, and the oldest while the partition is larger than the second.
    ///
    /// Internal streams (`__…`) are kept until Pacer drops what it no longer needs: their
    /// timestamps are event times (a replayed race's are years old) and their records are
    /// state (retained messages, sessions, checkpoints) that time must not take away.
    fn retention(&self, stream: &str, now: i64) -> (Option<i64>, Option<u64>) {
        if crate::is_internal(stream) {
            return (None, None);
        }
        let before = self.stream_retention_ms.get(stream).or(self.retention_ms.as_ref()).map(|r| now - *r as i64);
        (before, self.retention_bytes)
    }
}

impl EmbeddedLogConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        EmbeddedLogConfig {
            dir: dir.into(),
            fsync: FsyncPolicy::Batch,
            partitions: 1,
            segment_bytes: 128 << 20,
            segment_ms: Some(24 * 3600 * 1000),
            retention_ms: None,
            retention_bytes: None,
            stream_retention_ms: Default::default(),
        }
    }
}

pub struct EmbeddedLog {
    shared: Arc<Shared>,
    requests: mpsc::Sender<AppendRequest>,
}

struct Shared {
    config: EmbeddedLogConfig,
    streams: RwLock<BTreeMap<String, Arc<StreamState>>>,
    /// Bumped whenever a stream is created, so readers waiting for one wake up.
    created: watch::Sender<u64>,
    metrics: Metrics,
    committed: Mutex<HashMap<(String, String), Positions>>,
}

struct StreamState {
    partitions: Vec<Arc<Partition>>,
    /// Bumped after every commit that appended to this stream.
    appended: watch::Sender<u64>,
}

impl StreamState {
    fn new(partitions: Vec<Arc<Partition>>) -> Self {
        StreamState { partitions, appended: watch::Sender::new(0) }
    }
}

#[derive(Default)]
struct Metrics {
    records: Counter,
    bytes: Counter,
    fsyncs: Counter,
    segments_deleted: Counter,
}

impl EmbeddedLog {
    /// Opens (or creates) the log in `config.dir`, recovering every partition: a torn tail
    /// left by a crash is cut at the last whole entry.
    pub fn open(config: EmbeddedLogConfig) -> Result<Self> {
        fs::create_dir_all(&config.dir).map_err(io_err(&config.dir))?;
        let mut streams = BTreeMap::new();
        for entry in fs::read_dir(&config.dir).map_err(io_err(&config.dir))? {
            let entry = entry.map_err(io_err(&config.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !entry.path().is_dir() || validate_stream_name(&name).is_err() {
                continue;
            }
            let mut ids: Vec<u32> = fs::read_dir(entry.path())
                .map_err(io_err(&entry.path()))?
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect();
            ids.sort_unstable();
            if ids.is_empty() || ids.iter().enumerate().any(|(i, &id)| i as u32 != id) {
                tracing::warn!(stream = %name, partitions = ?ids, "stream directory has no partitions 0..n; skipped");
                continue;
            }
            let partitions = ids
                .iter()
                .map(|&id| Partition::recover(id, &entry.path().join(id.to_string())).map(Arc::new))
                .collect::<Result<Vec<_>>>()?;
            streams.insert(name, Arc::new(StreamState::new(partitions)));
        }
        let shared = Arc::new(Shared {
            config,
            streams: RwLock::new(streams),
            created: watch::Sender::new(0),
            metrics: Metrics::default(),
            committed: Mutex::new(HashMap::new()),
        });
        load_committed(&shared)?;
        let (sync_tx, sync_rx) = mpsc::sync_channel(writer::SYNC_QUEUE);
        let (failures_tx, failures_rx) = mpsc::channel();
        let writer = Writer::new(shared.clone(), sync_tx, failures_rx)?;
        let (tx, rx) = mpsc::channel();
        let sync_shared = shared.clone();
        std::thread::Builder::new()
            .name("pacer-log-sync".into())
            .spawn(move || sync::run(sync_shared, sync_rx, failures_tx))
            .map_err(io_err(&shared.config.dir))?;
        std::thread::Builder::new()
            .name("pacer-log-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(io_err(&shared.config.dir))?;
        Ok(EmbeddedLog { shared, requests: tx })
    }

    pub fn register_metrics(&self, registry: &mut Registry) {
        let m = &self.shared.metrics;
        registry.register("pacer_log_records_appended", "Records appended to the log", m.records.clone());
        registry.register("pacer_log_bytes_appended", "Bytes appended to the log", m.bytes.clone());
        registry.register("pacer_log_fsyncs", "fsync calls made by the log writer", m.fsyncs.clone());
        registry.register("pacer_log_segments_deleted", "Segments deleted by retention", m.segments_deleted.clone());
    }

    async fn append_internal(&self, stream: &str, records: Vec<NewRecord>) -> Result<Vec<Appended>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        self.request(stream, records, None).await
    }

    async fn request(&self, stream: &str, records: Vec<NewRecord>, partitions: Option<u32>) -> Result<Vec<Appended>> {
        let (done, answer) = oneshot::channel();
        let request = AppendRequest { stream: stream.to_string(), records, partitions, done };
        self.requests.send(request).map_err(|_| LogError::Closed)?;
        answer.await.map_err(|_| LogError::Closed)?
    }
}

/// Reads the committed consumer positions back at start-up.
fn load_committed(shared: &Arc<Shared>) -> Result<()> {
    let Some(state) = shared.streams.read().unwrap().get(CONSUMER_POSITIONS).cloned() else { return Ok(()) };
    let mut committed = shared.committed.lock().unwrap();
    for partition in &state.partitions {
        let mut next = partition.start();
        let mut hint = None;
        loop {
            let chunk = partition.read(next, hint, 1 << 20)?;
            if chunk.records.is_empty() {
                break;
            }
            for r in chunk.records {
                let key = r.key.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
                let Some((group, stream)) = key.split_once('\0') else { continue };
                if let Ok(positions) = std::str::from_utf8(&r.value).unwrap_or("").parse::<Positions>() {
                    committed.insert((group.to_string(), stream.to_string()), positions);
                }
            }
            next = chunk.next;
            hint = chunk.hint;
        }
    }
    Ok(())
}

#[async_trait]
impl Log for EmbeddedLog {
    async fn append(&self, stream: &str, records: Vec<NewRecord>) -> Result<Vec<Appended>> {
        validate_stream_name(stream)?;
        self.append_internal(stream, records).await
    }

    async fn create_stream(&self, stream: &str, partitions: u32) -> Result<()> {
        validate_stream_name(stream)?;
        if self.partitions(stream) == 0 {
            self.request(stream, Vec::new(), Some(partitions.max(1))).await?;
        }
        Ok(())
    }

    fn reader(&self, stream: &str, start: StartAt) -> Result<Box<dyn StreamReader>> {
        validate_stream_name(stream)?;
        Ok(Box::new(reader::EmbeddedReader::new(self.shared.clone(), stream, start, None)?))
    }

    fn partition_reader(&self, stream: &str, partitions: &[u32], start: StartAt) -> Result<Box<dyn StreamReader>> {
        validate_stream_name(stream)?;
        Ok(Box::new(reader::EmbeddedReader::new(self.shared.clone(), stream, start, Some(partitions.to_vec()))?))
    }

    fn join_group(&self, _group: &str, stream: &str) -> Result<Box<dyn GroupMember>> {
        validate_stream_name(stream)?;
        Ok(Box::new(reader::SoleMember::new(self.shared.clone(), stream)))
    }

    fn partitions(&self, stream: &str) -> u32 {
        self.shared.streams.read().unwrap().get(stream).map_or(0, |s| s.partitions.len() as u32)
    }

    fn streams(&self) -> Vec<StreamInfo> {
        let streams = self.shared.streams.read().unwrap();
        streams
            .iter()
            .filter(|(name, _)| !crate::is_internal(name))
            .map(|(name, state)| {
                let mut info = StreamInfo {
                    name: name.clone(),
                    partitions: state.partitions.len() as u32,
                    records: 0,
                    bytes: 0,
                    end_offsets: Vec::new(),
                    first_timestamp: None,
                    last_timestamp: None,
                };
                for p in &state.partitions {
                    let end = p.end();
                    info.records += end - p.start();
                    info.bytes += p.bytes();
                    info.end_offsets.push(end);
                    let segments = p.segments.read().unwrap();
                    let first = segments.iter().find_map(|s| s.first_timestamp);
                    let last = segments.iter().filter_map(|s| s.max_timestamp).max();
                    info.first_timestamp = min_opt(info.first_timestamp, first);
                    info.last_timestamp = info.last_timestamp.max(last);
                }
                info
            })
            .collect()
    }

    async fn delete_before(&self, stream: &str, positions: &Positions) -> Result<()> {
        let state = self.shared.streams.read().unwrap().get(stream).cloned();
        for (p, next) in positions.iter() {
            if let Some(partition) = state.as_ref().and_then(|s| s.partitions.get(p as usize)) {
                let removed = partition.drop_before(next);
                self.shared.metrics.segments_deleted.inc_by(removed as u64);
            }
        }
        Ok(())
    }

    async fn commit_positions(&self, group: &str, stream: &str, positions: &Positions) -> Result<()> {
        let key = Bytes::from(format!("{group}\0{stream}"));
        let record = NewRecord::new(now_ms(), Some(key), positions.to_string());
        // Visible in this process as soon as the record can be (a task cancelled right after
        // the append must not leave the old positions behind); undone if the append fails.
        let slot = (group.to_string(), stream.to_string());
        let previous = self.shared.committed.lock().unwrap().insert(slot.clone(), positions.clone());
        let result = self.append_internal(CONSUMER_POSITIONS, vec![record]).await;
        if result.is_err() {
            let mut committed = self.shared.committed.lock().unwrap();
            match previous {
                Some(p) => committed.insert(slot, p),
                None => committed.remove(&slot),
            };
        }
        result.map(|_| ())
    }

    fn committed_positions(&self, group: &str, stream: &str) -> Option<Positions> {
        self.shared.committed.lock().unwrap().get(&(group.to_string(), stream.to_string())).cloned()
    }
}

fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    fn rec(i: u64) -> NewRecord {
        NewRecord::new(i as i64 * 1000, Some(Bytes::from(format!("k{}", i % 3))), format!("{{\"i\":{i}}}"))
    }

    fn values(records: &[pacer_core::Record]) -> Vec<u64> {
        records
            .iter()
            .map(|r| serde_json::from_slice::<serde_json::Value>(&r.value).unwrap()["i"].as_u64().unwrap())
            .collect()
    }

    async fn read_all(log: &EmbeddedLog, stream: &str, start: StartAt) -> Vec<pacer_core::Record> {
        let mut reader = log.reader(stream, start).unwrap();
        let mut out = Vec::new();
        loop {
            let batch = reader.try_batch().await.unwrap();
            if batch.is_empty() {
                return out;
            }
            out.extend(batch);
        }
    }

    fn small_segments(dir: &std::path::Path) -> EmbeddedLogConfig {
        let mut config = EmbeddedLogConfig::new(dir);
        config.segment_bytes = 2048;
        config
    }

    /// A reader tailing while appends commit under it returns every record once, in order
    /// (a read that met records committed after it began used to step past them).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tailing_reader_sees_every_record_while_appends_commit() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(EmbeddedLog::open(EmbeddedLogConfig::new(dir.path())).unwrap());
        const WRITERS: u64 = 8;
        const EACH: u64 = 5_000;
        const TOTAL: u64 = WRITERS * EACH;
        // Many small appends from several writers: many commits for the reader to meet.
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let log = log.clone();
                tokio::spawn(async move {
                    for i in 0..EACH {
                        log.append("tail", vec![rec(w * EACH + i)]).await.unwrap();
                    }
                })
            })
            .collect();
        let mut reader = log.reader("tail", StartAt::Beginning).unwrap();
        let mut seen = Vec::new();
        while (seen.len() as u64) < TOTAL {
            let batch = tokio::time::timeout(std::time::Duration::from_secs(30), reader.next_batch())
                .await
                .expect("no new records for 30 s: some were skipped")
                .unwrap();
            seen.extend(batch.iter().map(|r| r.offset));
        }
        for w in writers {
            w.await.unwrap();
        }
        assert_eq!(seen, (0..TOTAL).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn records_are_read_back_in_order_across_segments_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let config = small_segments(dir.path());
        {
            let log = EmbeddedLog::open(config.clone()).unwrap();
            for chunk in 0..20u64 {
                let appended = log.append("s", (chunk * 10..chunk * 10 + 10).map(rec).collect()).await.unwrap();
                let offsets: Vec<u64> = appended.iter().map(|a| a.offset).collect();
                assert_eq!(offsets, (chunk * 10..chunk * 10 + 10).collect::<Vec<_>>());
            }
        }
        let files: Vec<String> = fs::read_dir(dir.path().join("s/0"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(files.iter().filter(|f| f.ends_with(".log")).count() > 1, "{files:?}");
        assert!(files.iter().any(|f| f.ends_with(".index")) && files.iter().any(|f| f.ends_with(".timeindex")));

        let log = EmbeddedLog::open(config).unwrap();
        let info = &log.streams()[0];
        assert_eq!((info.records, info.first_timestamp, info.last_timestamp), (200, Some(0), Some(199_000)));
        let mut reader = log.reader("s", StartAt::Positions("0:37".parse().unwrap())).unwrap();
        let mut seen = Vec::new();
        while seen.len() < 163 {
            seen.extend(values(&reader.next_batch().await.unwrap()));
        }
        assert_eq!(seen, (37..200).collect::<Vec<_>>());
        assert_eq!(reader.positions().to_string(), "0:200");
        assert_eq!(log.append("s", vec![rec(200)]).await.unwrap()[0].offset, 200);
    }

    #[tokio::test]
    async fn a_reader_can_start_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(small_segments(dir.path())).unwrap();
        log.append("s", (0..100).map(rec).collect()).await.unwrap();
        let from = read_all(&log, "s", StartAt::Timestamp(42_500)).await;
        assert_eq!(values(&from), (43..100).collect::<Vec<_>>());
        assert!(read_all(&log, "s", StartAt::Timestamp(500_000)).await.is_empty());
    }

    /// A stream created with its own partition count (kept across a restart) takes records
    /// to the partitions they name; a partition it lacks is refused, the rest untouched.
    #[tokio::test]
    async fn records_naming_a_partition_go_there() {
        let dir = tempfile::tempdir().unwrap();
        let config = EmbeddedLogConfig::new(dir.path());
        {
            let log = EmbeddedLog::open(config.clone()).unwrap();
            log.create_stream("__lanes", 4).await.unwrap();
            log.create_stream("__lanes", 9).await.unwrap();
            assert_eq!(log.partitions("__lanes"), 4);
            let placed =
                vec![rec(0).to_partition(3), rec(1).to_partition(3), NewRecord::new(2, None, "{}").to_partition(1)];
            let appended = log.append("__lanes", placed).await.unwrap();
            assert_eq!(
                appended,
                [
                    Appended { partition: 3, offset: 0 },
                    Appended { partition: 3, offset: 1 },
                    Appended { partition: 1, offset: 0 }
                ]
            );
            let refused = log.append("__lanes", vec![rec(3), rec(4).to_partition(4)]).await.unwrap_err();
            assert!(matches!(refused, LogError::NoSuchPartition { partition: 4, partitions: 4, .. }), "{refused}");
        }
        let log = EmbeddedLog::open(config).unwrap();
        assert_eq!(log.partitions("__lanes"), 4);
        let mut lane = log.partition_reader("__lanes", &[3], StartAt::Beginning).unwrap();
        assert_eq!(values(&lane.try_batch().await.unwrap()), [0, 1]);
    }

    #[tokio::test]
    async fn keys_go_to_the_partition_kafka_would_pick() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = EmbeddedLogConfig::new(dir.path());
        config.partitions = 3;
        let log = EmbeddedLog::open(config.clone()).unwrap();
        let appended = log.append("s", (0..30).map(rec).collect()).await.unwrap();
        for (i, a) in appended.iter().enumerate() {
            assert_eq!(a.partition, crate::partition_for_key(format!("k{}", i % 3).as_bytes(), 3));
        }
        let unkeyed = log.append("s", vec![NewRecord::new(0, None, "1"), NewRecord::new(0, None, "2")]).await.unwrap();
        assert_ne!(unkeyed[0].partition, unkeyed[1].partition, "records without a key are spread");
        drop(log);

        let log = EmbeddedLog::open(config).unwrap();
        assert_eq!(log.streams()[0].partitions, 3);
        let all = read_all(&log, "s", StartAt::Beginning).await;
        assert_eq!(all.len(), 32);
        for key in ["k0", "k1", "k2"] {
            let of_key: Vec<u64> =
                values(&all.iter().filter(|r| r.key.as_deref() == Some(key.as_bytes())).cloned().collect::<Vec<_>>());
            assert!(of_key.windows(2).all(|w| w[0] < w[1]), "per-key order kept: {of_key:?}");
        }
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
        let mut f = fs::OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[0x20, 0, 0, 0, 1, 2, 3]).unwrap();
        drop(f);

        let log = EmbeddedLog::open(config).unwrap();
        assert_eq!(log.append("s", vec![rec(5)]).await.unwrap()[0].offset, 5);
        assert_eq!(values(&read_all(&log, "s", StartAt::Beginning).await), vec![0, 1, 2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn a_corrupt_byte_is_reported_and_the_rest_stays_readable() {
        let dir = tempfile::tempdir().unwrap();
        let config = small_segments(dir.path());
        {
            let log = EmbeddedLog::open(config.clone()).unwrap();
            for i in 0..120 {
                log.append("s", vec![rec(i)]).await.unwrap();
            }
        }
        let mut segments: Vec<_> = fs::read_dir(dir.path().join("s/0"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        segments.sort();
        assert!(segments.len() >= 3, "{segments:?}");
        // Flip a byte in the second record of a sealed segment and of the active one.
        for seg in [&segments[0], segments.last().unwrap()] {
            let mut f = fs::OpenOptions::new().write(true).open(seg).unwrap();
            f.seek(SeekFrom::Start(60)).unwrap();
            f.write_all(&[0xff]).unwrap();
        }

        let log = EmbeddedLog::open(config).unwrap();
        let seen = values(&read_all(&log, "s", StartAt::Beginning).await);
        assert!(!seen.contains(&1), "the corrupt record is not returned");
        assert!(seen.contains(&0) && seen.contains(&119), "records around the damage stay: {seen:?}");
        assert!(seen.len() >= 100, "only damaged stretches are skipped: {} of 120", seen.len());
        // The active segment kept its tail, so appends continue after the last record.
        assert_eq!(log.append("s", vec![rec(120)]).await.unwrap()[0].offset, 120);
    }

    #[test]
    fn a_stream_may_keep_its_own_time() {
        let mut config = EmbeddedLogConfig::new("/nowhere");
        assert_eq!(config.retention("race", 10_000), (None, None), "kept for ever by default");
        config.retention_ms = Some(1_000);
        config.retention_bytes = Some(4096);
        config.stream_retention_ms.insert("race_1m".into(), 5_000);
        assert_eq!(config.retention("race", 10_000), (Some(9_000), Some(4096)));
        assert_eq!(config.retention("race_1m", 10_000), (Some(5_000), Some(4096)));
        assert_eq!(config.retention("__retained", 10_000), (None, None), "internal state stays");
    }

    #[tokio::test]
    async fn retention_drops_whole_old_segments_and_readers_move_on() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = small_segments(dir.path());
        config.retention_bytes = Some(4096);
        let log = EmbeddedLog::open(config).unwrap();
        for chunk in 0..10u64 {
            log.append("s", (chunk * 10..chunk * 10 + 10).map(rec).collect()).await.unwrap();
        }
        let partition = log.shared.streams.read().unwrap()["s"].partitions[0].clone();
        let removed = partition.apply_retention(None, Some(4096));
        assert!(removed > 0);
        let info = &log.streams()[0];
        assert!(info.bytes <= 4096 + 2048, "{info:?}");
        let kept = values(&read_all(&log, "s", StartAt::Beginning).await);
        assert_eq!(kept.last(), Some(&99));
        assert_eq!(kept.len() as u64, info.records);
        assert!(kept[0] > 0);
    }

    #[tokio::test]
    async fn a_partition_reader_reads_its_share_and_the_sole_member_owns_everything() {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(EmbeddedLogConfig { partitions: 3, ..EmbeddedLogConfig::new(dir.path()) }).unwrap();
        let mut member = log.join_group("query", "share").unwrap();
        let keys = ["a", "b", "c", "d", "e", "f", "g", "h"];
        let records = keys.iter().map(|k| NewRecord::new(1, Some(Bytes::from(*k)), "{}")).collect();
        let appended = log.append("share", records).await.unwrap();
        assert_eq!(member.assignment().await.unwrap(), vec![0, 1, 2]);

        let mut reader = log.partition_reader("share", &[1], StartAt::Beginning).unwrap();
        let read = reader.try_batch().await.unwrap();
        let expected = appended.iter().filter(|a| a.partition == 1).count();
        assert!(expected > 0 && expected < keys.len(), "the keys spread over partitions");
        assert_eq!(read.len(), expected);
        assert!(read.iter().all(|r| r.partition == 1));
        assert_eq!(reader.positions().iter().map(|(p, _)| p).collect::<Vec<_>>(), vec![1]);
    }

    #[tokio::test]
    async fn committed_positions_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let config = EmbeddedLogConfig::new(dir.path());
        {
            let log = EmbeddedLog::open(config.clone()).unwrap();
            log.commit_positions("tracker", "race", &"0:12".parse().unwrap()).await.unwrap();
            log.commit_positions("tracker", "race", &"0:15".parse().unwrap()).await.unwrap();
        }
        let log = EmbeddedLog::open(config).unwrap();
        assert_eq!(log.committed_positions("tracker", "race").unwrap().to_string(), "0:15");
        assert!(log.committed_positions("other", "race").is_none());
        assert!(log.streams().is_empty(), "internal streams are not listed");
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
