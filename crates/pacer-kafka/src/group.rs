//! Membership in a Kafka consumer group, to share a stream's partitions among Pacer nodes.
//!
//! The member's consumer subscribes to the topic but pauses whatever it is assigned: the
//! records are read by partition readers that start where the owner's checkpoint says, so the
//! group only decides who owns what. After a crash a node joins only once its old membership
//! timed out (see `KafkaConfig::last_run_crashed`).

use std::time::{Duration, Instant};

use async_trait::async_trait;
use pacer_log::{GroupMember, LogError, Result};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::ClientContext;
use tokio::sync::watch;

use crate::KafkaConfig;

/// How often an idle member polls its consumer, so the group does not take it for stalled
/// (`max.poll.interval.ms`) while its paused partitions give it nothing to read.
const POLL_EVERY: Duration = Duration::from_secs(5);

struct GroupContext {
    assigned: watch::Sender<Option<Vec<u32>>>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                if let Err(error) = consumer.pause(list) {
                    tracing::warn!(%error, "pausing assigned partitions");
                }
                let mut partitions: Vec<u32> = list.elements().iter().map(|e| e.partition() as u32).collect();
                partitions.sort_unstable();
                self.assigned.send_replace(Some(partitions));
            }
            Rebalance::Revoke(_) => {
                self.assigned.send_replace(Some(Vec::new()));
            }
            Rebalance::Error(error) => tracing::warn!(%error, "consumer group rebalance"),
        }
    }
}

pub(crate) struct KafkaGroupMember {
    consumer: StreamConsumer<GroupContext>,
    topic: String,
    assigned: watch::Receiver<Option<Vec<u32>>>,
    /// When to join, if not joined yet.
    join_at: Option<Instant>,
}

impl KafkaGroupMember {
    /// A member of `group` that joins it at `join_at` (at once if that has passed).
    pub(crate) fn join(
        config: &KafkaConfig,
        group: &str,
        topic: &str,
        join_at: Instant,
    ) -> std::result::Result<Self, KafkaError> {
        let (sender, assigned) = watch::channel(None);
        let mut client = config.consumer_config(group);
        // A topic created after joining is noticed within seconds, not librdkafka's 5 minutes.
        client.set("topic.metadata.refresh.interval.ms", "2000");
        let consumer: StreamConsumer<GroupContext> = client.create_with_context(GroupContext { assigned: sender })?;
        let mut member = KafkaGroupMember { consumer, topic: topic.to_string(), assigned, join_at: Some(join_at) };
        if join_at <= Instant::now() {
            member.subscribe()?;
        } else {
            tracing::info!(group, wait = ?join_at - Instant::now(), "joining once this node's membership from its last run (which did not stop cleanly) timed out");
        }
        Ok(member)
    }

    fn subscribe(&mut self) -> std::result::Result<(), KafkaError> {
        self.consumer.subscribe(&[&self.topic])?;
        self.join_at = None;
        Ok(())
    }
}

#[async_trait]
impl GroupMember for KafkaGroupMember {
    async fn assignment(&mut self) -> Result<Vec<u32>> {
        if let Some(at) = self.join_at {
            tokio::time::sleep_until(at.into()).await;
            self.subscribe().map_err(|e| LogError::Cluster {
                stream: self.topic.clone(),
                error: format!("joining the consumer group of {}: {e}", self.topic),
            })?;
        }
        loop {
            tokio::select! {
                changed = self.assigned.changed() => {
                    changed.map_err(|_| LogError::Closed)?;
                    if let Some(partitions) = self.assigned.borrow_and_update().clone() {
                        return Ok(partitions);
                    }
                }
                // Paused partitions bring no records; polling serves the group's events.
                message = self.consumer.recv() => {
                    if let Err(error) = message {
                        tracing::debug!(%error, "consumer group member");
                    }
                }
                _ = tokio::time::sleep(POLL_EVERY) => {}
            }
        }
    }
}
