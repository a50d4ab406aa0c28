//! Several streams read as one, for a query with two inputs (a join of two streams or of two
//! tables).
//!
//! Input `i`'s partition `p` shows as partition `i * UNION_STRIDE + p`, so one [`Positions`]
//! says where every input is and a checkpoint resumes them together; [`Union::input_of`]
//! tells a record's input back. Wrapped in a [`crate::TimeOrdered`], the inputs interleave
//! by event time as the partitions of one stream do.

use std::sync::Arc;

use async_trait::async_trait;
use futures::future::select_all;
use futures::FutureExt;
use pacer_core::Record;

use crate::{Log, Positions, Result, StartAt, StreamReader};

/// How far apart the partition numbers of two inputs are (no stream has this many).
pub const UNION_STRIDE: u32 = 1 << 16;

pub struct Union {
    readers: Vec<Box<dyn StreamReader>>,
}

impl Union {
    /// `streams` of `log` from `start`, or only their partition `partition` (streams
    /// partitioned alike by the same key); positions name the union's partitions.
    pub fn open(log: &Arc<dyn Log>, streams: &[&str], partition: Option<u32>, start: StartAt) -> Result<Union> {
        let readers = streams
            .iter()
            .enumerate()
            .map(|(i, stream)| {
                let start = match &start {
                    StartAt::Positions(all) => {
                        let mut own = Positions::new();
                        for (p, next) in all.iter().filter(|(p, _)| Union::input_of(*p).0 == i) {
                            own.set(Union::input_of(p).1, next);
                        }
                        StartAt::Positions(own)
                    }
                    other => other.clone(),
                };
                match partition {
                    Some(p) => log.partition_reader(stream, &[p], start),
                    None => log.reader(stream, start),
                }
            })
            .collect::<Result<_>>()?;
        Ok(Union { readers })
    }

    /// The input a union partition belongs to, and the partition in that input.
    pub fn input_of(partition: u32) -> (usize, u32) {
        ((partition / UNION_STRIDE) as usize, partition % UNION_STRIDE)
    }

    /// How many partitions the union has: 0 while an input does not exist yet, so a
    /// [`crate::TimeOrdered`] counts again once it does.
    pub fn partitions(log: &dyn Log, streams: &[&str]) -> u32 {
        let counts: Vec<u32> = streams.iter().map(|s| log.partitions(s)).collect();
        if counts.contains(&0) {
            0
        } else {
            counts.iter().sum()
        }
    }

    fn renumber(input: usize, mut batch: Vec<Record>) -> Vec<Record> {
        for record in &mut batch {
            record.partition += input as u32 * UNION_STRIDE;
        }
        batch
    }
}

#[async_trait]
impl StreamReader for Union {
    async fn next_batch(&mut self) -> Result<Vec<Record>> {
        // Each input's read waits only for its log to signal, so the ones that lose the race
        // are dropped with nothing taken.
        let reads = self.readers.iter_mut().map(|r| r.next_batch().boxed());
        let (batch, input, _) = select_all(reads).await;
        Ok(Union::renumber(input, batch?))
    }

    async fn try_batch(&mut self) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        for (input, reader) in self.readers.iter_mut().enumerate() {
            out.extend(Union::renumber(input, reader.try_batch().await?));
        }
        Ok(out)
    }

    fn positions(&self) -> Positions {
        let mut positions = Positions::new();
        for (input, reader) in self.readers.iter().enumerate() {
            for (p, next) in reader.positions().iter() {
                positions.set(input as u32 * UNION_STRIDE + p, next);
            }
        }
        positions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EmbeddedLog, EmbeddedLogConfig, FsyncPolicy};
    use pacer_core::NewRecord;

    #[tokio::test]
    async fn inputs_read_as_one_and_resume_from_their_positions() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = EmbeddedLogConfig::new(dir.path());
        config.fsync = FsyncPolicy::Off;
        let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(config).unwrap());
        let records = |n: i64| (0..n).map(|t| NewRecord::new(t, None, t.to_string())).collect();
        log.append("a", records(3)).await.unwrap();
        log.append("b", records(2)).await.unwrap();
        let mut union = Union::open(&log, &["a", "b"], None, StartAt::Beginning).unwrap();
        let mut seen: Vec<(usize, u64)> = Vec::new();
        loop {
            let batch = union.try_batch().await.unwrap();
            if batch.is_empty() {
                break;
            }
            seen.extend(batch.iter().map(|r| (Union::input_of(r.partition).0, r.offset)));
        }
        seen.sort();
        assert_eq!(seen, [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]);
        assert_eq!(union.positions().to_string(), format!("0:3,{UNION_STRIDE}:2"));
        assert_eq!(Union::partitions(log.as_ref(), &["a", "b"]), 2);
        assert_eq!(Union::partitions(log.as_ref(), &["a", "nothing yet"]), 0);

        // Reopened where it was, it reads only what came since, from either input.
        log.append("b", records(1)).await.unwrap();
        let mut again = Union::open(&log, &["a", "b"], None, StartAt::Positions(union.positions())).unwrap();
        let next = again.next_batch().await.unwrap();
        assert_eq!(next.len(), 1);
        assert_eq!((next[0].partition, next[0].offset), (UNION_STRIDE, 2));
    }
}
