//! The task that moves a stream's records from the log into Parquet segments: every
//! `every`, what arrived since the last pass, in segments of at most `max_rows`; then the
//! segments older than `keep` go.

use std::sync::Arc;
use std::time::Duration;

use pacer_core::Record;
use pacer_log::{Log, StartAt};

use crate::{HistoryError, HistoryStore, Result};

#[derive(Debug, Clone)]
pub struct CompactorConfig {
    pub stream: String,
    pub every: Duration,
    pub max_rows: usize,
    /// Segments whose newest record is older than this (ms) are deleted.
    pub keep_ms: Option<u64>,
}

pub struct Compactor {
    store: HistoryStore,
    log: Arc<dyn Log>,
    config: CompactorConfig,
}

impl Compactor {
    pub fn new(store: HistoryStore, log: Arc<dyn Log>, config: CompactorConfig) -> Result<Compactor> {
        store.clean(&config.stream)?;
        Ok(Compactor { store, log, config })
    }

    /// A pass every `every`, for as long as the future is polled; a failed pass is logged
    /// and retried at the next.
    pub async fn run(self) {
        let mut ticks = tokio::time::interval(self.config.every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match self.compact().await {
                Ok(0) => {}
                Ok(rows) => tracing::info!(stream = %self.config.stream, rows, "history compacted to Parquet"),
                Err(e) => tracing::warn!(stream = %self.config.stream, error = %e, "history compaction failed"),
            }
        }
    }

    /// One pass: the log's records past the history, up to now, into segments; then
    /// retention. Returns how many records it wrote.
    pub async fn compact(&self) -> Result<u64> {
        let stream = self.config.stream.clone();
        if self.log.partitions(&stream) == 0 {
            return Ok(0);
        }
        let store = self.store.clone();
        let covered = blocking({
            let (store, stream) = (store.clone(), stream.clone());
            move || {
                let segments = store.segments(&stream)?;
                store.covered(&stream, &segments)
            }
        })
        .await?;
        let mut reader = self.log.reader(&stream, StartAt::Positions(covered))?;
        let mut written = 0u64;
        let mut pending: Vec<Record> = Vec::new();
        loop {
            let batch = reader.try_batch().await?;
            let done = batch.is_empty();
            pending.extend(batch);
            while pending.len() >= self.config.max_rows || (done && !pending.is_empty()) {
                let rest = pending.split_off(pending.len().min(self.config.max_rows));
                let records = std::mem::replace(&mut pending, rest);
                written += records.len() as u64;
                let (store, stream) = (store.clone(), stream.clone());
                blocking(move || store.write(&stream, &records)).await?;
            }
            if done {
                break;
            }
        }
        if let Some(keep) = self.config.keep_ms {
            let cutoff = pacer_core::now_ms().saturating_sub(keep as i64);
            let dropped = blocking(move || store.drop_older_than(&stream, cutoff)).await?;
            if dropped > 0 {
                tracing::info!(stream = %self.config.stream, dropped, "history segments past their keep time deleted");
            }
        }
        Ok(written)
    }
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| HistoryError::Segment { path: Default::default(), message: format!("history task failed: {e}") })?
}
