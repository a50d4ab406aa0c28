//! The log: Pacer's spine. Every stage appends to it and reads from it.
//!
//! [`Log`] is the interface the rest of Pacer sees; [`EmbeddedLog`] implements it with
//! segment files on local disk. A Kafka backend implements the same trait, so callers never
//! know which one runs. The contract callers rely on: when `append` returns, the records are
//! durable (fsynced, or acknowledged by the cluster) and visible to readers in offset order.

mod embedded;
mod segment;

use async_trait::async_trait;
use pacer_core::{NewRecord, Record};

pub use embedded::{EmbeddedLog, EmbeddedLogConfig, FsyncPolicy};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("invalid stream name {name:?}: {reason}")]
    InvalidStreamName { name: String, reason: &'static str },
    #[error("log I/O error on {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("the log is closed")]
    Closed,
}

pub type Result<T, E = LogError> = std::result::Result<T, E>;

/// Where a reader starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Beginning,
    /// Only records appended after the reader was created.
    End,
    Offset(u64),
}

/// What `/api/v1/streams` and `pacer tail` show about a stream.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StreamInfo {
    pub name: String,
    pub partitions: u32,
    /// Offset the next record will get (partition 0 for now).
    pub end_offset: u64,
    pub bytes: u64,
}

#[async_trait]
pub trait Log: Send + Sync + 'static {
    /// Appends records to `stream`, creating it if needed, and returns their offsets once
    /// they are durable.
    async fn append(&self, stream: &str, records: Vec<NewRecord>) -> Result<Vec<u64>>;

    /// A reader over `stream`. A stream that does not exist yet is waited for.
    fn reader(&self, stream: &str, start: StartAt) -> Result<Box<dyn StreamReader>>;

    fn streams(&self) -> Vec<StreamInfo>;
}

#[async_trait]
pub trait StreamReader: Send {
    /// The next records in offset order; waits until at least one is there.
    async fn next_batch(&mut self) -> Result<Vec<Record>>;

    /// Records available now without waiting (possibly none).
    async fn try_batch(&mut self) -> Result<Vec<Record>>;

    /// The offset of the next record this reader returns.
    fn position(&self) -> u64;
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
    if name == "." || name == ".." {
        return bad("'.' and '..' are reserved");
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return bad("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}
