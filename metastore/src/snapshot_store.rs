//! Where a group's snapshots are kept durably.
//!
//! openraft purges a group's log up to its latest snapshot, so a snapshot must be durable
//! before `build_snapshot` returns: the state machine hands every snapshot it builds to a
//! [`SnapshotStore`], and a node starting up asks the store for the newest one before the
//! group's Raft starts. The implementation (a local file plus a copy in the bucket) lives in
//! the bootstrap crate, which is allowed to know about both this crate and tiering.

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::types::GroupId;

/// A snapshot as stored: opaque bytes produced by the state machine adapter, plus the Raft
/// log index it covers (stores key and order snapshots by it). The bytes are the
/// concatenation of `parts` (see `snapshot_buf`: a partition's batches are shared, not
/// copied, into the snapshot); a loaded snapshot has one part.
#[derive(Clone, Debug)]
pub struct StoredSnapshot {
    pub last_log_index: u64,
    pub parts: Vec<Bytes>,
}

impl StoredSnapshot {
    /// The bytes in one buffer (copied only if there are several parts).
    pub fn to_bytes(&self) -> Bytes {
        crate::snapshot_buf::join_parts(&self.parts)
    }
}

pub trait SnapshotStore: Send + Sync + 'static {
    /// Makes `snapshot` durable. Returning `Ok` allows the group's log to be purged up to it.
    fn save(&self, group: GroupId, snapshot: StoredSnapshot) -> BoxFuture<'_, Result<(), String>>;

    /// The newest intact snapshot of `group`, if any.
    fn load(&self, group: GroupId) -> BoxFuture<'_, Result<Option<StoredSnapshot>, String>>;
}
