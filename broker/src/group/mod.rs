//! The group coordinator: consumer groups under the classic protocol (assignors run in the
//! clients) and durable committed offsets.
//!
//! - [`state`]: one group's membership as a pure state machine (decisions, no I/O).
//! - [`coordinator`]: the runtime: per-group locks and timers, parked requests, and the
//!   offsets Raft group whose state machine is `chronik_metastore::offsets`.
//! - `handlers`: the Kafka APIs (FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
//!   LeaveGroup, OffsetCommit, OffsetFetch, ListGroups, DescribeGroups, DeleteGroups,
//!   OffsetDelete) translating wire messages to coordinator calls.

pub mod coordinator;
mod handlers;
pub mod state;

pub use coordinator::Coordinator;
pub use state::GroupConfig;

use bytes::{Buf, Bytes};
use kafka_protocol::messages::ConsumerProtocolSubscription;
use kafka_protocol::protocol::Decodable;

/// Topics a member's `consumer` protocol metadata subscribes to (empty if undecodable).
pub fn subscribed_topics(metadata: &Bytes) -> Vec<String> {
    let mut buf = metadata.clone();
    if buf.remaining() < 2 {
        return Vec::new();
    }
    // Newer clients may send a newer version; its prefix is what we read.
    let version = buf.get_i16().clamp(0, 3);
    ConsumerProtocolSubscription::decode(&mut buf, version)
        .map(|s| s.topics.into_iter().map(|t| t.to_string()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod state_tests;
