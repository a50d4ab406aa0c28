//! A log as one caller may see it: readers pass on only the records a filter keeps, and
//! nothing can be written through it. What a user's query reads goes through one, so a
//! query answers over exactly the records its user may read.

use std::sync::Arc;

use async_trait::async_trait;
use pacer_core::{NewRecord, Record};

use crate::{Appended, GroupMember, Log, LogError, Positions, Result, StartAt, StreamInfo, StreamReader};

/// Whether a record of a stream may be read (by whoever the filter was made for).
pub type RecordFilter = Arc<dyn Fn(&str, &Record) -> bool + Send + Sync>;

pub struct FilteredLog {
    inner: Arc<dyn Log>,
    keep: RecordFilter,
}

impl FilteredLog {
    pub fn new(inner: Arc<dyn Log>, keep: RecordFilter) -> FilteredLog {
        FilteredLog { inner, keep }
    }
}

fn read_only<T>(stream: &str) -> Result<T> {
    Err(LogError::NotAllowed(format!("{stream}: nothing is written through a filtered view of the log")))
}

#[async_trait]
impl Log for FilteredLog {
    async fn append(&self, stream: &str, _records: Vec<NewRecord>) -> Result<Vec<Appended>> {
        read_only(stream)
    }

    async fn create_stream(&self, stream: &str, _partitions: u32) -> Result<()> {
        read_only(stream)
    }

    fn reader(&self, stream: &str, start: StartAt) -> Result<Box<dyn StreamReader>> {
        let inner = self.inner.reader(stream, start)?;
        Ok(Box::new(FilteredReader { inner, stream: stream.to_string(), keep: self.keep.clone() }))
    }

    fn partition_reader(&self, stream: &str, partitions: &[u32], start: StartAt) -> Result<Box<dyn StreamReader>> {
        let inner = self.inner.partition_reader(stream, partitions, start)?;
        Ok(Box::new(FilteredReader { inner, stream: stream.to_string(), keep: self.keep.clone() }))
    }

    fn join_group(&self, group: &str, stream: &str) -> Result<Box<dyn GroupMember>> {
        self.inner.join_group(group, stream)
    }

    fn streams(&self) -> Vec<StreamInfo> {
        self.inner.streams()
    }

    fn shared(&self) -> bool {
        self.inner.shared()
    }

    fn partitions(&self, stream: &str) -> u32 {
        self.inner.partitions(stream)
    }

    async fn delete_before(&self, stream: &str, _positions: &Positions) -> Result<()> {
        read_only(stream)
    }

    async fn commit_positions(&self, _group: &str, stream: &str, _positions: &Positions) -> Result<()> {
        read_only(stream)
    }

    fn committed_positions(&self, group: &str, stream: &str) -> Option<Positions> {
        self.inner.committed_positions(group, stream)
    }
}

struct FilteredReader {
    inner: Box<dyn StreamReader>,
    stream: String,
    keep: RecordFilter,
}

impl FilteredReader {
    fn kept(&self, mut batch: Vec<Record>) -> Vec<Record> {
        batch.retain(|r| (self.keep)(&self.stream, r));
        batch
    }
}

#[async_trait]
impl StreamReader for FilteredReader {
    async fn next_batch(&mut self) -> Result<Vec<Record>> {
        loop {
            let batch = self.inner.next_batch().await?;
            let kept = self.kept(batch);
            if !kept.is_empty() {
                return Ok(kept);
            }
        }
    }

    /// Empty only when the log has nothing more now: a batch wholly filtered out is
    /// skipped, so readers that stop at an empty batch read to the end.
    async fn try_batch(&mut self) -> Result<Vec<Record>> {
        loop {
            let batch = self.inner.try_batch().await?;
            if batch.is_empty() {
                return Ok(batch);
            }
            let kept = self.kept(batch);
            if !kept.is_empty() {
                return Ok(kept);
            }
        }
    }

    fn positions(&self) -> Positions {
        self.inner.positions()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EmbeddedLog, EmbeddedLogConfig};

    #[tokio::test]
    async fn readers_see_only_what_the_filter_keeps_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(EmbeddedLogConfig::new(dir.path())).unwrap());
        // Long runs of records the filter drops, so whole batches are skipped.
        let records: Vec<NewRecord> = (0..3000)
            .map(|i| NewRecord::new(i, Some(if i % 1000 == 999 { "alice" } else { "bob" }.into()), "{}"))
            .collect();
        log.append("s", records).await.unwrap();
        let keep: RecordFilter = Arc::new(|stream, r| stream == "s" && r.key.as_deref() == Some(b"alice".as_slice()));
        let filtered = FilteredLog::new(log.clone(), keep);
        let mut reader = filtered.reader("s", StartAt::Beginning).unwrap();
        let mut seen = Vec::new();
        loop {
            let batch = reader.try_batch().await.unwrap();
            if batch.is_empty() {
                break;
            }
            seen.extend(batch.iter().map(|r| r.timestamp));
        }
        assert_eq!(seen, [999, 1999, 2999]);
        assert!(matches!(
            filtered.append("s", vec![NewRecord::new(0, None, "{}")]).await,
            Err(LogError::NotAllowed(_))
        ));
    }
}
