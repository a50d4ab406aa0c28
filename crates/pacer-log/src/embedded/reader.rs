//! Reading a stream: every partition from its own position, waiting for new records.

use std::sync::Arc;

use async_trait::async_trait;
use pacer_core::Record;
use tokio::sync::watch;

use super::partition::Partition;
use super::{Shared, StreamState};
use crate::{GroupMember, LogError, Positions, Result, StartAt, StreamReader};

/// Bytes one read takes from all partitions together, at most (roughly).
const BATCH_BUDGET: u64 = 1 << 20;

struct Cursor {
    partition: Arc<Partition>,
    next: u64,
    hint: Option<(u64, u64)>,
}

pub struct EmbeddedReader {
    shared: Arc<Shared>,
    stream: String,
    /// How to place the cursors once the stream exists.
    start: StartAt,
    /// The partitions to read; all when `None`.
    only: Option<Vec<u32>>,
    state: Option<Arc<StreamState>>,
    cursors: Vec<Cursor>,
    created: watch::Receiver<u64>,
    /// Partition the next read starts with, so none is starved.
    turn: usize,
}

impl EmbeddedReader {
    pub(super) fn new(shared: Arc<Shared>, stream: &str, start: StartAt, only: Option<Vec<u32>>) -> Result<Self> {
        let created = shared.created.subscribe();
        let mut reader = EmbeddedReader {
            shared,
            stream: stream.to_string(),
            start,
            only,
            state: None,
            cursors: Vec::new(),
            created,
            turn: 0,
        };
        if !reader.attach()? {
            // The stream does not exist yet, so "from the end" means everything it will get.
            if reader.start == StartAt::End {
                reader.start = StartAt::Beginning;
            }
        }
        Ok(reader)
    }

    /// Places the cursors once the stream exists; false while it does not.
    fn attach(&mut self) -> Result<bool> {
        if self.state.is_some() {
            return Ok(true);
        }
        let Some(state) = self.shared.streams.read().unwrap().get(&self.stream).cloned() else {
            return Ok(false);
        };
        for p in state.partitions.iter().filter(|p| self.only.as_ref().is_none_or(|only| only.contains(&p.id))) {
            let next = match &self.start {
                StartAt::Beginning => p.start(),
                StartAt::End => p.end(),
                StartAt::Timestamp(t) => p.offset_for_timestamp(*t)?,
                StartAt::Positions(positions) => positions.get(p.id).unwrap_or_else(|| p.start()),
            };
            self.cursors.push(Cursor { partition: p.clone(), next, hint: None });
        }
        self.state = Some(state);
        Ok(true)
    }

    fn read_available(&mut self) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        let n = self.cursors.len();
        let mut budget = BATCH_BUDGET;
        for k in 0..n {
            let c = &mut self.cursors[(self.turn + k) % n];
            if c.next >= c.partition.end() {
                continue;
            }
            let chunk = c.partition.read(c.next, c.hint, budget)?;
            c.next = chunk.next;
            c.hint = chunk.hint;
            budget = budget.saturating_sub(chunk.records.iter().map(|r| r.value.len() as u64 + 64).sum());
            if out.is_empty() {
                out = chunk.records;
            } else {
                out.extend(chunk.records);
            }
            if budget == 0 {
                break;
            }
        }
        self.turn = (self.turn + 1) % n.max(1);
        Ok(out)
    }
}

#[async_trait]
impl StreamReader for EmbeddedReader {
    async fn next_batch(&mut self) -> Result<Vec<Record>> {
        loop {
            if !self.attach()? {
                self.created.changed().await.map_err(|_| LogError::Closed)?;
                continue;
            }
            let mut appended = self.state.as_ref().unwrap().appended.subscribe();
            appended.borrow_and_update();
            let batch = self.read_available()?;
            if !batch.is_empty() {
                return Ok(batch);
            }
            appended.changed().await.map_err(|_| LogError::Closed)?;
        }
    }

    async fn try_batch(&mut self) -> Result<Vec<Record>> {
        if !self.attach()? {
            return Ok(Vec::new());
        }
        self.read_available()
    }

    fn positions(&self) -> Positions {
        let mut positions = Positions::new();
        for c in &self.cursors {
            positions.set(c.partition.id, c.next);
        }
        positions
    }
}

/// The embedded log's consumer group: one member, owning every partition.
pub struct SoleMember {
    shared: Arc<Shared>,
    stream: String,
    created: watch::Receiver<u64>,
    answered: bool,
}

impl SoleMember {
    pub(super) fn new(shared: Arc<Shared>, stream: &str) -> Self {
        let created = shared.created.subscribe();
        SoleMember { shared, stream: stream.to_string(), created, answered: false }
    }
}

#[async_trait]
impl GroupMember for SoleMember {
    async fn assignment(&mut self) -> Result<Vec<u32>> {
        if self.answered {
            // Nobody else ever joins.
            return std::future::pending().await;
        }
        loop {
            self.created.borrow_and_update();
            let partitions = self.shared.streams.read().unwrap().get(&self.stream).map(|s| s.partitions.len() as u32);
            if let Some(n) = partitions {
                self.answered = true;
                return Ok((0..n).collect());
            }
            self.created.changed().await.map_err(|_| LogError::Closed)?;
        }
    }
}
