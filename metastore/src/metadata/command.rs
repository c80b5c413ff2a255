//! Metadata commands and their results. Encoded as JSON: metadata changes are rare and
//! small, and a self-describing encoding keeps old logs readable as commands grow fields.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::state::BrokerInfo;
use crate::types::{GroupId, NodeId};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataCommand {
    /// Sets the cluster id once; later proposals are ignored.
    InitCluster {
        cluster_id: String,
    },
    RegisterBroker(BrokerInfo),
    CreateTopic {
        name: String,
        id: Uuid,
        /// One replica list per partition.
        assignments: Vec<Vec<NodeId>>,
        configs: BTreeMap<String, String>,
    },
    DeleteTopic {
        name: String,
    },
    /// Grows a topic to `assignments.len()` more partitions.
    CreatePartitions {
        name: String,
        new_assignments: Vec<Vec<NodeId>>,
    },
    /// Sets (Some) or removes (None) config overrides; with `replace_all`, every override
    /// not named is removed first (the AlterConfigs semantics).
    AlterTopicConfigs {
        name: String,
        changes: BTreeMap<String, Option<String>>,
        replace_all: bool,
    },
    /// Allocates `count` consecutive producer ids.
    AllocateProducerIds {
        count: i64,
    },
    /// A partition's Raft leader announces itself, so that nodes which do not replicate
    /// the partition can route clients to it. Ignored when older than what is recorded.
    PartitionLeader {
        group: GroupId,
        leader: NodeId,
        epoch: u64,
        /// The group's Raft voters as the leader sees them.
        #[serde(default)]
        voters: Vec<NodeId>,
        /// The replicas the leader counts in sync.
        #[serde(default)]
        isr: Vec<NodeId>,
    },
    /// The brokers the metadata leader has not heard from for a session timeout (all of
    /// them: the set replaces the one before).
    FenceBrokers {
        fenced: Vec<NodeId>,
    },
    /// Moves a partition to `replicas`; its leader changes the Raft membership to match.
    ReassignPartition {
        name: String,
        partition: i32,
        replicas: Vec<NodeId>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataResponse {
    Ok,
    ProducerIds { first: i64 },
    Error(MetadataError),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MetadataError {
    #[error("topic {0} already exists")]
    TopicExists(String),
    #[error("topic {0} does not exist")]
    UnknownTopic(String),
    #[error("topic {0} has no partition {1}")]
    UnknownPartition(String, i32),
    #[error("{0}")]
    InvalidReplicas(String),
    #[error("malformed metadata command: {0}")]
    Malformed(String),
}
