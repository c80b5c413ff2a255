//! Broker liveness: the metadata leader fences the brokers it stops hearing from.
//!
//! This is KRaft's broker session, with the Raft heartbeats the metadata leader already
//! sends every node (voters and learners alike) as the heartbeat: a broker that has
//! neither answered one nor sent a call of its own for `session` is recorded as fenced in
//! the metadata, and unfenced as soon as it is heard from again. Every node then answers
//! clients the same way: a fenced broker leads nothing (its partitions report no leader
//! until a live replica takes over) and is in no in-sync set.
//!
//! A new metadata leader has heard from nobody yet, so for its first `session` it only
//! unfences; fencing waits until every live broker has had a whole session to answer.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chronik_metastore::metadata::{ClusterMetadata, MetadataCommand};
use chronik_metastore::types::{NodeId, METADATA_GROUP};
use openraft::ServerState;

use crate::Node;

/// The brokers to record as fenced, given when each was last heard from and for how long
/// this node has led the metadata group.
pub fn fenced_brokers(
    meta: &ClusterMetadata,
    me: NodeId,
    leading_for: Duration,
    session: Duration,
    heard_since: impl Fn(NodeId) -> Option<Duration>,
) -> BTreeSet<NodeId> {
    meta.brokers
        .keys()
        .copied()
        .filter(|&node| node != me)
        .filter(|&node| match heard_since(node) {
            Some(ago) if ago < session => false,
            _ if leading_for >= session => true,
            // Too soon to tell: keep what the previous leader recorded.
            _ => meta.fenced.contains(&node),
        })
        .collect()
}

impl Node {
    /// Runs the fencing loop for the life of the metadata group; it acts only while this
    /// node leads the group.
    pub fn spawn_liveness(&self, session: Duration) {
        let node = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval((session / 10).max(Duration::from_millis(50)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut leading_since: Option<Instant> = None;
            loop {
                tick.tick().await;
                let state = node.metadata_raft.metrics().borrow().state;
                if state == ServerState::Shutdown {
                    return;
                }
                if !node.transport.is_leader(METADATA_GROUP) {
                    leading_since = None;
                    continue;
                }
                let since = *leading_since.get_or_insert_with(Instant::now);
                let meta = node.cluster();
                let fenced =
                    fenced_brokers(&meta, node.node_id, since.elapsed(), session, |peer| {
                        node.transport.heard_since(peer)
                    });
                if fenced == meta.fenced {
                    continue;
                }
                for peer in fenced.difference(&meta.fenced) {
                    tracing::warn!(
                        node = peer,
                        "fencing broker: not heard from for {session:?}; its partitions have no leader until a live replica takes over"
                    );
                }
                for peer in meta.fenced.difference(&fenced) {
                    tracing::info!(node = peer, "broker heard from again: unfenced");
                }
                let command = MetadataCommand::FenceBrokers {
                    fenced: fenced.into_iter().collect(),
                };
                if let Err(err) = node.propose_metadata(&command).await {
                    tracing::debug!(%err, "record fenced brokers");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chronik_metastore::metadata::BrokerInfo;

    fn cluster(nodes: &[NodeId], fenced: &[NodeId]) -> ClusterMetadata {
        let mut meta = ClusterMetadata::default();
        for &node_id in nodes {
            let info = BrokerInfo {
                node_id,
                host: "127.0.0.1".into(),
                port: 9092,
                raft_addr: None,
            };
            meta.brokers.insert(node_id, info);
        }
        meta.fenced = fenced.iter().copied().collect();
        meta
    }

    const SESSION: Duration = Duration::from_secs(9);

    #[test]
    fn silent_brokers_are_fenced_once_the_leader_has_waited_a_session() {
        let meta = cluster(&[1, 2, 3], &[]);
        let heard = |n| match n {
            2 => Some(Duration::from_secs(1)),
            3 => Some(Duration::from_secs(10)),
            _ => None,
        };
        let long = Duration::from_secs(20);
        assert_eq!(
            fenced_brokers(&meta, 1, long, SESSION, heard),
            BTreeSet::from([3])
        );
        // The leader itself is never fenced, even though it never hears from itself.
        assert!(!fenced_brokers(&meta, 1, long, SESSION, |_| None).contains(&1));
    }

    #[test]
    fn a_new_leader_only_unfences_until_it_has_waited_a_session() {
        let meta = cluster(&[1, 2, 3, 4], &[3, 4]);
        let heard = |n| (n == 4).then_some(Duration::from_millis(100));
        let new = Duration::from_secs(1);
        // 2 was never heard of but was live before: not fenced yet. 3 stays fenced, 4
        // answered and is unfenced.
        assert_eq!(
            fenced_brokers(&meta, 1, new, SESSION, heard),
            BTreeSet::from([3])
        );
        assert_eq!(
            fenced_brokers(&meta, 1, SESSION, SESSION, heard),
            BTreeSet::from([2, 3])
        );
    }
}
