//! Consensus plumbing and cluster metadata for Chronik.
//!
//! - [`types`]: the openraft type configuration every Raft group shares.
//! - [`wal`]: the node's one segmented write-ahead log, which is the openraft log storage of
//!   every Raft group on the node.
//! - [`state_machine`]: the openraft state machine adapter every group uses.
//! - [`metadata`]: the cluster metadata state machine (group 0).
//! - [`offsets`]: committed consumer offsets (their own Raft group, [`types::OFFSETS_GROUP`]).
//! - [`network`]: the Raft transport between nodes.

pub mod metadata;
pub mod network;
pub mod offsets;
pub mod snapshot_buf;
pub mod snapshot_store;
pub mod state_machine;
pub mod types;
pub mod wal;
