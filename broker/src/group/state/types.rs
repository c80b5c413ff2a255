//! What goes in and out of a [`Group`](super::Group): settings, members, requests,
//! results and actions.

use std::time::{Duration, Instant};

use bytes::Bytes;

/// Broker-wide group settings.
#[derive(Clone, Debug)]
pub struct GroupConfig {
    pub min_session_timeout: Duration,
    pub max_session_timeout: Duration,
    pub initial_rebalance_delay: Duration,
    /// A group without members for this long loses its committed offsets
    /// (`offsets.retention.minutes`).
    pub offsets_retention: Duration,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            min_session_timeout: Duration::from_millis(6_000),
            max_session_timeout: Duration::from_millis(1_800_000),
            initial_rebalance_delay: Duration::from_millis(300),
            offsets_retention: Duration::from_millis(604_800_000),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupStateKind {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupStateKind {
    /// The name Kafka uses in DescribeGroups and ListGroups.
    pub fn name(self) -> &'static str {
        match self {
            GroupStateKind::Empty => "Empty",
            GroupStateKind::PreparingRebalance => "PreparingRebalance",
            GroupStateKind::CompletingRebalance => "CompletingRebalance",
            GroupStateKind::Stable => "Stable",
            GroupStateKind::Dead => "Dead",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Member {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    /// (protocol name, metadata), in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    pub(super) awaiting_join: bool,
    pub(super) awaiting_sync: bool,
    pub(super) session_deadline: Instant,
}

impl Member {
    pub(super) fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    /// Whether a rejoining static member asks for the same protocols, by name, as Kafka
    /// compares them: the metadata may differ (cooperative-sticky's lists the partitions
    /// the member owns, and a restarted process owns none), which is no reason to rebalance.
    pub(super) fn same_protocols(&self, other: &[(String, Bytes)]) -> bool {
        self.protocols.len() == other.len()
            && self.protocols.iter().zip(other).all(|(a, b)| a.0 == b.0)
    }
}

/// A JoinGroup request, decoded and with its timeouts as durations.
#[derive(Clone, Debug)]
pub struct JoinRequest {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a dynamic member's first join gets MEMBER_ID_REQUIRED and a member id.
    pub require_known_member_id: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JoinResult {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Only for the leader: (member id, group instance id, metadata).
    pub members: Vec<(String, Option<String>, Bytes)>,
}

impl JoinResult {
    pub fn error(error: i16, member_id: &str) -> Self {
        Self {
            error,
            generation: -1,
            member_id: member_id.to_string(),
            ..Default::default()
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncResult {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncResult {
    pub fn error(error: i16) -> Self {
        Self {
            error,
            ..Default::default()
        }
    }
}

/// An answer to a parked request, keyed by the member that sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Join(String, JoinResult),
    Sync(String, SyncResult),
}

/// What a JoinGroup or SyncGroup call produced: the caller's own answer if it is ready, else
/// the member id under which to park it; plus answers to other parked requests.
#[derive(Debug)]
pub struct Outcome<T> {
    pub reply: Option<T>,
    pub parked_as: Option<String>,
    pub actions: Vec<Action>,
}

/// The per-member result of a LeaveGroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaveResult {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub error: i16,
}
