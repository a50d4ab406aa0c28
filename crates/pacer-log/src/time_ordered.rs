//! A reader over several partitions that hands records out in event-time order across
//! them, as Kafka Streams does for a task reading several partitions.
//!
//! Without it, a windowed query reading a stream's partitions one chunk after another sees
//! one partition's minutes before the other's, and takes the other's records for late. Each
//! partition keeps its own order; a record is held back while another partition that has
//! records held has not been read up to its time. Once the reader has caught up with the
//! log, everything held goes out, so live records wait for nothing.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pacer_core::Record;

use crate::{Log, Positions, Result, StartAt, StreamReader};

/// How many records may wait for the other partitions; past it they go out as they are.
const HOLD_MAX: usize = 100_000;
/// The most records one call hands out, so a reader catching up on a long backlog makes
/// progress its user can checkpoint as it goes.
const RELEASE_MAX: usize = 8192;
/// How long one call reads before handing out what it can (once every partition has
/// records held): reads of a remote log come in many small batches.
const FILL_TIME: Duration = Duration::from_millis(50);
/// A record's event time, as the reader's user sees it (the record's timestamp, or a
/// field of its value).
pub type EventTime = Box<dyn Fn(&Record) -> i64 + Send + Sync>;

pub struct TimeOrdered {
    inner: Box<dyn StreamReader>,
    event_time: EventTime,
    /// The stream's partitions (0 until it exists), and how to count them.
    partitions: usize,
    count: Box<dyn Fn() -> u32 + Send + Sync>,
    queues: BTreeMap<u32, VecDeque<(i64, Record)>>,
    held: usize,
}

impl TimeOrdered {
    /// `stream` of `log` from `start`, its partitions merged by `event_time`.
    pub fn open(log: Arc<dyn Log>, stream: &str, start: StartAt, event_time: EventTime) -> Result<TimeOrdered> {
        let inner = log.reader(stream, start)?;
        let stream = stream.to_string();
        Ok(TimeOrdered::over(inner, Box::new(move || log.partitions(&stream)), event_time))
    }

    /// Any reader, whose partitions `count` counts (0 while it cannot tell yet).
    pub fn over(
        inner: Box<dyn StreamReader>,
        count: Box<dyn Fn() -> u32 + Send + Sync>,
        event_time: EventTime,
    ) -> TimeOrdered {
        let partitions = count() as usize;
        TimeOrdered { inner, event_time, partitions, count, queues: BTreeMap::new(), held: 0 }
    }

    /// One partition has nothing to merge.
    fn merges(&self) -> bool {
        self.partitions != 1
    }

    /// A stream created after the reader opened: counted once it has records.
    fn count_partitions(&mut self) {
        if self.partitions == 0 {
            self.partitions = (self.count)() as usize;
        }
    }

    /// Reads what the log has now (waiting for something first if `wait` and nothing is
    /// held), for a while; true when it was read to its end.
    async fn fill(&mut self, wait: bool) -> Result<bool> {
        let mut first = wait && self.held == 0;
        let started = std::time::Instant::now();
        loop {
            let batch = if first { self.inner.next_batch().await? } else { self.inner.try_batch().await? };
            if batch.is_empty() {
                return Ok(true);
            }
            first = false;
            self.count_partitions();
            self.held += batch.len();
            for record in batch {
                let t = (self.event_time)(&record);
                self.queues.entry(record.partition).or_default().push_back((t, record));
            }
            // Until every partition has records held, handing any out could put another
            // partition's earlier records behind them.
            let every_partition = self.queues.len() >= self.partitions;
            if self.held >= HOLD_MAX || (every_partition && started.elapsed() >= FILL_TIME) {
                return Ok(false);
            }
        }
    }

    /// The held records every partition has been read past (all of them at the end of the
    /// log), merged by time.
    fn release(&mut self, caught_up: bool) -> Vec<Record> {
        let bound = if caught_up {
            i64::MAX
        } else {
            self.queues.values().filter_map(|q| q.back().map(|(t, _)| *t)).min().unwrap_or(i64::MAX)
        };
        let mut out = Vec::new();
        while let Some((t, p)) = self.queues.iter().filter_map(|(p, q)| q.front().map(|(t, _)| (*t, *p))).min() {
            if t > bound || out.len() >= RELEASE_MAX {
                break;
            }
            out.extend(self.queues.get_mut(&p).and_then(VecDeque::pop_front).map(|(_, r)| r));
        }
        if out.is_empty() && self.held > 0 {
            // Partitions out of order in themselves leave no common time: go in arrival order.
            return self.release(true);
        }
        self.held -= out.len();
        self.queues.retain(|_, q| !q.is_empty());
        out
    }
}

#[async_trait]
impl StreamReader for TimeOrdered {
    async fn next_batch(&mut self) -> Result<Vec<Record>> {
        if !self.merges() && self.held == 0 {
            return self.inner.next_batch().await;
        }
        loop {
            let caught_up = self.fill(true).await?;
            let out = self.release(caught_up);
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }

    async fn try_batch(&mut self) -> Result<Vec<Record>> {
        if !self.merges() && self.held == 0 {
            return self.inner.try_batch().await;
        }
        let caught_up = self.fill(false).await?;
        Ok(self.release(caught_up))
    }

    /// Where a restart resumes: held records are not yet handed out.
    fn positions(&self) -> Positions {
        let mut positions = self.inner.positions();
        for (p, queue) in &self.queues {
            if let Some((_, first)) = queue.front() {
                positions.set(*p, first.offset);
            }
        }
        positions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EmbeddedLog, EmbeddedLogConfig, FsyncPolicy};
    use bytes::Bytes;
    use pacer_core::NewRecord;

    #[tokio::test]
    async fn partitions_interleave_by_time_and_positions_exclude_held_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = EmbeddedLogConfig::new(dir.path());
        config.fsync = FsyncPolicy::Off;
        config.partitions = 2;
        let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(config).unwrap());
        // Keys "a" and "b" land in different partitions; each partition in time order.
        let (a, b) = ["a", "b", "c", "d"].iter().map(|k| (*k, crate::partition_for_key(k.as_bytes(), 2))).fold(
            (None, None),
            |(a, b), (k, p)| match (p, a, b) {
                (0, None, b) => (Some(k), b),
                (1, a, None) => (a, Some(k)),
                _ => (a, b),
            },
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        let records = |key: &str, times: &[i64]| {
            times.iter().map(|t| NewRecord::new(*t, Some(Bytes::from(key.to_string())), t.to_string())).collect()
        };
        log.append("s", records(a, &[1, 4, 5, 9])).await.unwrap();
        log.append("s", records(b, &[2, 3, 6, 7, 8])).await.unwrap();
        let mut reader = TimeOrdered::open(log.clone(), "s", StartAt::Beginning, Box::new(|r| r.timestamp)).unwrap();
        let mut times = Vec::new();
        loop {
            let batch = reader.try_batch().await.unwrap();
            if batch.is_empty() {
                break;
            }
            times.extend(batch.iter().map(|r| r.timestamp));
        }
        assert_eq!(times, [1, 2, 3, 4, 5, 6, 7, 8, 9]);

        // A restart resumes before what is held, and after what went out.
        let mut reader = TimeOrdered::open(log.clone(), "s", StartAt::Beginning, Box::new(|r| r.timestamp)).unwrap();
        assert!(reader.fill(false).await.unwrap(), "read to the end");
        let next = |r: &TimeOrdered| r.positions().iter().map(|(_, o)| o).sum::<u64>();
        assert_eq!(next(&reader), 0, "nine records held, none handed out");
        assert_eq!(reader.release(true).len(), 9);
        assert_eq!(next(&reader), 9);
    }
}
