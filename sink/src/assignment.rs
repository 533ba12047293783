//! Keeps the flow's group assignment whole. After each assignment this
//! consumer receives, once the group is stable, it checks that every
//! partition of the flow's topics is assigned to some member; when some
//! are not, it rejoins the group (subscribing again), and a rejoin of the
//! leader makes the broker rebalance. Needed for a static member that
//! restarts: see `connections::group` for how a topic created meanwhile
//! otherwise stays unconsumed for good. Each distinct gap is rejoined for
//! once: a follower's rejoin changes nothing at the broker, and repeating
//! it would only revoke its own partitions again and again.

use std::sync::Arc;
use std::time::Duration;

use connections::group::Coverage;
use connections::kafka::GroupConsumer;
use rdkafka::consumer::Consumer;
use tokio_util::sync::CancellationToken;

/// How often a new assignment is looked for (an assignment is checked
/// once, when the group is stable: a few requests per rebalance).
pub const CHECK_EVERY: Duration = Duration::from_millis(500);

const KAFKA_TIMEOUT: Duration = Duration::from_secs(5);

pub struct AssignmentCheck {
    pub flow: String,
    pub group: String,
    pub topics: Vec<String>,
    /// The assignment count checked last (`Ownership::assignments`).
    checked: u64,
    /// The gap rejoined for last.
    rejoined_for: Vec<(String, i32)>,
}

impl AssignmentCheck {
    pub fn new(flow: &str, group: &str, topics: Vec<String>) -> Self {
        Self {
            flow: flow.to_owned(),
            group: group.to_owned(),
            topics,
            checked: 0,
            rejoined_for: Vec::new(),
        }
    }

    /// Checks every [`CHECK_EVERY`] until `shutdown`. A task of its own:
    /// the requests may wait on an unreachable broker, the sink loop must
    /// not.
    pub async fn run(mut self, consumer: Arc<GroupConsumer>, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(CHECK_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = every.tick() => self.tick(&consumer).await,
            }
        }
    }

    /// Checks the group's assignment if this consumer got a new one since
    /// the last check; rejoins for a new gap.
    async fn tick(&mut self, consumer: &Arc<GroupConsumer>) {
        let received = consumer.context().assignments();
        if received == self.checked {
            return;
        }
        let (c, group, topics) = (
            Arc::clone(consumer),
            self.group.clone(),
            self.topics.clone(),
        );
        let coverage = tokio::task::spawn_blocking(move || {
            connections::group::coverage(c.as_ref(), &group, &topics, KAFKA_TIMEOUT)
        })
        .await;
        let (flow, group) = (&self.flow, &self.group);
        match coverage {
            Ok(Ok(Coverage::Covered)) => self.checked = received,
            Ok(Ok(Coverage::Unsettled)) => {}
            Ok(Ok(Coverage::Uncovered(gap))) => {
                self.checked = received;
                if gap == self.rejoined_for {
                    return;
                }
                tracing::info!(flow, group, partitions = ?gap, "partitions of the flow's topics are assigned to no member of the group (its assignment predates them); rejoining so that they are assigned");
                let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
                if let Err(error) = consumer.subscribe(&topics) {
                    tracing::warn!(flow, %error, "could not rejoin the group; checking again at the next assignment");
                }
                self.rejoined_for = gap;
            }
            Ok(Err(error)) => {
                tracing::debug!(flow, %error, "group assignment not checked; trying again")
            }
            Err(error) => tracing::warn!(flow, %error, "group assignment check failed"),
        }
    }
}
