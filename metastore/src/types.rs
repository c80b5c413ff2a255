//! The openraft type configuration shared by every Raft group on a node.
//!
//! Every group (the metadata group 0 and one group per partition) uses the same types so
//! that one WAL and one transport can carry all of them. Commands and responses are opaque
//! bytes here: each state machine owns the encoding of its own commands, which keeps this
//! crate free of broker types.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Identifies a Raft group on a node. Group 0 is the metadata group.
pub type GroupId = u64;

/// The metadata group's id.
pub const METADATA_GROUP: GroupId = 0;

/// The committed consumer offsets group (Kafka's `__consumer_offsets`).
pub const OFFSETS_GROUP: GroupId = 1;

/// Ids below this are reserved for node-wide groups; partition groups start here.
pub const FIRST_PARTITION_GROUP: GroupId = 16;

/// A node id, as given by `--node-id`.
pub type NodeId = u64;

/// An opaque state-machine command, encoded by the state machine that applies it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command(pub Bytes);

/// An opaque state-machine response, encoded by the state machine that produced it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResponse(pub Bytes);

openraft::declare_raft_types!(
    /// Types for every Chronik Raft group.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = crate::snapshot_buf::SnapshotBuf,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type Raft = openraft::Raft<TypeConfig>;
