//! The log: Pacer's spine. Every stage appends to it and reads from it.
//!
//! [`Log`] is the interface the rest of Pacer sees; [`EmbeddedLog`] implements it with
//! segment files on local disk. A Kafka backend implements the same trait, so callers never
//! know which one runs. The contract callers rely on: when `append` returns, the records are
//! durable (fsynced, or acknowledged by the cluster) and visible to readers in offset order
//! within their partition.
//!
//! Streams are partitioned by key with Kafka's partitioner (murmur2 of the key bytes), so a
//! key lands in the partition a Java client would pick; records without a key are spread
//! round-robin.

mod embedded;
mod filtered;
mod positions;
mod segment;
mod time_ordered;
mod union;

use async_trait::async_trait;
use pacer_core::{NewRecord, Record};

pub use embedded::{EmbeddedLog, EmbeddedLogConfig, FsyncPolicy};
pub use filtered::{FilteredLog, RecordFilter};
pub use positions::Positions;
pub use time_ordered::{EventTime, TimeOrdered};
pub use union::{Union, UNION_STRIDE};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("invalid stream name {name:?}: {reason}")]
    InvalidStreamName { name: String, reason: &'static str },
    /// The cause is part of the message (not a `source`), so error chains do not print it twice.
    #[error("log I/O error on {path}: {error}")]
    Io { path: String, error: std::io::Error },
    /// A remote log (the Kafka backend) refused or failed a request; `error` says which
    /// stream and cluster.
    #[error("{error}")]
    Cluster { stream: String, error: String },
    #[error("stream {stream:?} has {partitions} partitions: there is no partition {partition}")]
    NoSuchPartition { stream: String, partition: u32, partitions: u32 },
    #[error("the log is closed")]
    Closed,
    /// The caller may not do this (a write through a read-only view).
    #[error("{0}")]
    NotAllowed(String),
}

pub type Result<T, E = LogError> = std::result::Result<T, E>;

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub partition: u32,
    pub offset: u64,
}

/// Where a reader starts, in every partition of its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAt {
    Beginning,
    /// Only records appended after the reader was created.
    End,
    /// The first record whose timestamp is at or after this time (ms), per partition.
    Timestamp(i64),
    /// The next offset per partition; partitions not named start at the beginning.
    Positions(Positions),
}

/// What `/api/v1/streams` and `SHOW STREAMS` show about a stream.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StreamInfo {
    pub name: String,
    pub partitions: u32,
    /// Records currently kept (retention may have dropped older ones).
    pub records: u64,
    pub bytes: u64,
    /// Offset the next record of each partition will get.
    pub end_offsets: Vec<u64>,
    /// Event time of the oldest record kept and the latest event time seen, ms.
    pub first_timestamp: Option<i64>,
    pub last_timestamp: Option<i64>,
}

#[async_trait]
pub trait Log: Send + Sync + 'static {
    /// Appends records to `stream`, creating it if needed, and returns where each landed,
    /// in order, once they are durable.
    async fn append(&self, stream: &str, records: Vec<NewRecord>) -> Result<Vec<Appended>>;

    /// Creates `stream` with `partitions` partitions, unless it exists (it is then left as it
    /// is): for a stream whose records name their partitions.
    async fn create_stream(&self, stream: &str, partitions: u32) -> Result<()>;

    /// A reader over every partition of `stream`. A stream that does not exist yet is waited for.
    fn reader(&self, stream: &str, start: StartAt) -> Result<Box<dyn StreamReader>>;

    /// A reader over only `partitions` of `stream`: a group member's share.
    fn partition_reader(&self, stream: &str, partitions: &[u32], start: StartAt) -> Result<Box<dyn StreamReader>>;

    /// Joins consumer group `group` on `stream`: the members (Pacer nodes) share the
    /// stream's partitions, which move when members come or go (Kafka's group protocol).
    /// The embedded log has one member, which owns every partition.
    fn join_group(&self, group: &str, stream: &str) -> Result<Box<dyn GroupMember>>;

    /// User streams; internal ones (named `__…`) are left out.
    fn streams(&self) -> Vec<StreamInfo>;

    /// Whether other nodes may share this log (a Kafka cluster): work is then spread over them.
    fn shared(&self) -> bool {
        false
    }

    /// How many partitions `stream` has; 0 when there is no such stream.
    fn partitions(&self, stream: &str) -> u32 {
        self.streams().into_iter().find(|s| s.name == stream).map_or(0, |s| s.partitions)
    }

    /// Lets the log drop `stream`'s records before `positions` (whole segments on the
    /// embedded log, Kafka's DeleteRecords on a cluster). What stays is a suffix of each
    /// partition, possibly with some records before the positions still in it.
    async fn delete_before(&self, stream: &str, positions: &Positions) -> Result<()>;

    /// Stores a consumer's positions durably under `group`, as Kafka stores committed offsets.
    async fn commit_positions(&self, group: &str, stream: &str, positions: &Positions) -> Result<()>;

    /// The positions last committed by `group` for `stream`.
    fn committed_positions(&self, group: &str, stream: &str) -> Option<Positions>;
}

#[async_trait]
pub trait StreamReader: Send {
    /// The next records; waits until at least one is there. Records of one partition come
    /// in offset order; partitions interleave.
    async fn next_batch(&mut self) -> Result<Vec<Record>>;

    /// Records available now without waiting (possibly none).
    async fn try_batch(&mut self) -> Result<Vec<Record>>;

    /// The next offset this reader returns, per partition.
    fn positions(&self) -> Positions;
}

#[async_trait]
pub trait GroupMember: Send {
    /// The partitions this member owns, each time they change; the first answer comes once
    /// the stream exists and the group has settled.
    async fn assignment(&mut self) -> Result<Vec<u32>>;
}

/// Partitions of a new stream: as configured, except Pacer's own streams (the catalog
/// `__catalog`, query checkpoints `__query_…`), which keep one, as they are read back in
/// the order they were written.
pub fn partitions_for(stream: &str, configured: u32) -> u32 {
    if is_internal(stream) {
        1
    } else {
        configured.max(1)
    }
}

/// Whether a stream is Pacer's own state (`__…`): retained messages, sessions, query
/// checkpoints. Such streams are never cut by retention; Pacer drops what it no longer needs.
pub fn is_internal(stream: &str) -> bool {
    stream.starts_with("__")
}

/// The partition Kafka's default partitioner picks for `key` among `partitions`.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    (murmur2::murmur2(key, murmur2::KAFKA_SEED) & 0x7fff_ffff) % partitions
}

/// Checks a stream name against the rules Kafka applies to topic names, so every stream can
/// later live on a Kafka cluster unchanged.
pub fn validate_stream_name(name: &str) -> Result<()> {
    let bad = |reason| Err(LogError::InvalidStreamName { name: name.to_string(), reason });
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > 249 {
        return bad("longer than 249 characters");
    }
    if name.starts_with('.') {
        // The embedded log's directory holds Pacer's own files there (`.history`).
        return bad("names starting with '.' are reserved");
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return bad("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kafka's own test vectors (UtilsTest.testMurmur2), as signed 32-bit results.
    #[test]
    fn murmur2_matches_kafka() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
            (b"abc", 479470107),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2::murmur2(key, murmur2::KAFKA_SEED) as i32, expected, "{}", String::from_utf8_lossy(key));
        }
        assert_eq!(partition_for_key(b"foobar", 3), ((-790332482i32 as u32) & 0x7fff_ffff) % 3);
    }
}
