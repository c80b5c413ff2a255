//! One openraft state machine adapter for every kind of group.
//!
//! openraft's `RaftStateMachine` mixes three concerns: tracking the last applied log id and
//! membership, keeping the current snapshot, and the application's own apply logic. The
//! first two are the same for the metadata group and every partition group, so they live
//! here once; an application supplies only an [`ApplyState`].
//!
//! Invariant: `last_applied` and the application state always move together under one write
//! lock, so a reader that sees the state sees exactly the effect of the entries up to
//! `last_applied`.
//!
//! Snapshots are made durable through a [`SnapshotStore`] before openraft is told they
//! exist, because openraft then purges the log they cover. Their encoding is defined here
//! (see [`encode_snapshot`]): a magic, a version byte, the Raft metadata as JSON, then the
//! application's own bytes.

use std::sync::Arc;

use bytes::Bytes;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, SnapshotMeta, StoredMembership,
};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::snapshot_buf::SnapshotBuf;
use crate::snapshot_store::{SnapshotStore, StoredSnapshot};
use crate::types::{
    Command, CommandResponse, Entry, GroupId, LogId, NodeId, StorageError, TypeConfig,
};

/// The application half of a state machine: a deterministic function of the committed log.
pub trait ApplyState: Send + Sync + Sized + 'static {
    /// Applies one committed command. Must be deterministic: every replica computes the same
    /// state and response from the same log.
    fn apply(&mut self, log_id: &LogId, command: &Command) -> CommandResponse;

    /// Sees blank and membership entries (a new leader's first entry is blank), so a state
    /// machine can track leader terms.
    fn observe_entry(&mut self, _log_id: &LogId) {}

    /// Serialises the whole state for a snapshot, appended to `out` (which already holds
    /// the snapshot's header: a partition's state is mostly its untiered tail, so it is
    /// copied once, into the snapshot itself).
    fn write_snapshot(&self, out: &mut Vec<u8>) -> Result<(), String>;

    /// The whole state serialised on its own (see [`ApplyState::write_snapshot`]).
    fn to_snapshot(&self) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        self.write_snapshot(&mut out)?;
        Ok(out)
    }

    /// Rebuilds the state from [`ApplyState::write_snapshot`] bytes.
    fn from_snapshot(bytes: &[u8]) -> Result<Self, String>;

    /// Takes over a state rebuilt from a snapshot. Override to keep what outlives the
    /// contents, such as the channels readers are subscribed to.
    fn adopt(&mut self, restored: Self) {
        *self = restored;
    }

    /// Called after a batch of entries was applied, outside the state lock (wake waiters).
    fn applied(_state: &Arc<RwLock<Self>>) {}
}

const SNAPSHOT_MAGIC: &[u8; 4] = b"CHSM";
const SNAPSHOT_VERSION: u8 = 1;

/// The Raft half of a snapshot; the application's bytes follow it.
#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
}

/// `magic | version | u32 BE header length | header JSON | application bytes`.
pub fn encode_snapshot(meta: &SnapshotMeta<NodeId, openraft::BasicNode>, state: &[u8]) -> Vec<u8> {
    let mut out = snapshot_head(meta);
    out.extend_from_slice(state);
    out
}

/// A snapshot's bytes up to the application's (see [`encode_snapshot`]).
fn snapshot_head(meta: &SnapshotMeta<NodeId, openraft::BasicNode>) -> Vec<u8> {
    // Serialising plain ids and maps cannot fail.
    let header = serde_json::to_vec(&SnapshotHeader { meta: meta.clone() }).unwrap_or_default();
    let mut out = Vec::with_capacity(9 + header.len());
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.push(SNAPSHOT_VERSION);
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(&header);
    out
}

/// Splits an [`encode_snapshot`] buffer into its metadata and application bytes.
pub fn decode_snapshot(
    data: &[u8],
) -> Result<(SnapshotMeta<NodeId, openraft::BasicNode>, &[u8]), String> {
    if data.len() < 9 || &data[..4] != SNAPSHOT_MAGIC {
        return Err("not a chronik state machine snapshot".into());
    }
    if data[4] != SNAPSHOT_VERSION {
        return Err(format!(
            "snapshot version {} is not supported (expected {SNAPSHOT_VERSION})",
            data[4]
        ));
    }
    let len = u32::from_be_bytes([data[5], data[6], data[7], data[8]]) as usize;
    let Some(header) = data.get(9..9 + len) else {
        return Err("snapshot header is truncated".into());
    };
    let header: SnapshotHeader =
        serde_json::from_slice(header).map_err(|e| format!("snapshot header: {e}"))?;
    Ok((header.meta, &data[9 + len..]))
}

struct Progress {
    last_applied: Option<LogId>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    /// The latest snapshot, shared (not copied) with the snapshot store that persists it:
    /// a partition's snapshot holds its untiered tail, which can be large.
    snapshot: Option<(SnapshotMeta<NodeId, openraft::BasicNode>, Bytes)>,
    snapshot_seq: u64,
}

/// A `RaftStateMachine` over an [`ApplyState`]; cheap to clone, all clones share state.
pub struct StateMachine<A: ApplyState> {
    state: Arc<RwLock<A>>,
    progress: Arc<RwLock<Progress>>,
    store: Option<(GroupId, Arc<dyn SnapshotStore>)>,
}

impl<A: ApplyState> Clone for StateMachine<A> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
            progress: self.progress.clone(),
            store: self.store.clone(),
        }
    }
}

impl<A: ApplyState> StateMachine<A> {
    pub fn new(app: A) -> Self {
        Self {
            state: Arc::new(RwLock::new(app)),
            progress: Arc::new(RwLock::new(Progress {
                last_applied: None,
                membership: StoredMembership::default(),
                snapshot: None,
                snapshot_seq: 0,
            })),
            store: None,
        }
    }

    /// Makes every snapshot durable in `store` (as group `group`) before openraft may purge
    /// the log it covers.
    pub fn with_store(mut self, group: GroupId, store: Arc<dyn SnapshotStore>) -> Self {
        self.store = Some((group, store));
        self
    }

    /// Makes a snapshot durable in the store, if there is one.
    async fn persist(
        &self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        data: Bytes,
    ) -> Result<(), String> {
        let Some((group, store)) = &self.store else {
            return Ok(());
        };
        let stored = StoredSnapshot {
            last_log_index: meta.last_log_id.map(|l| l.index).unwrap_or(0),
            data,
        };
        store.save(*group, stored).await
    }

    /// Loads a stored snapshot as the current state, before the group's Raft starts.
    /// Returns the log id it covers.
    pub fn restore(&self, data: &[u8]) -> Result<Option<LogId>, String> {
        let (meta, app_bytes) = decode_snapshot(data)?;
        let app = A::from_snapshot(app_bytes)?;
        {
            let mut state = self.state.write();
            let mut progress = self.progress.write();
            state.adopt(app);
            progress.last_applied = meta.last_log_id;
            progress.membership = meta.last_membership.clone();
            progress.snapshot = Some((meta.clone(), Bytes::copy_from_slice(data)));
        }
        A::applied(&self.state);
        Ok(meta.last_log_id)
    }

    /// The application state, shared with readers (never hold the lock across an await).
    pub fn state(&self) -> Arc<RwLock<A>> {
        self.state.clone()
    }

    pub fn last_applied(&self) -> Option<LogId> {
        self.progress.read().last_applied
    }
}

fn sm_error(verb: ErrorVerb, err: &dyn std::fmt::Display) -> StorageError {
    StorageError::from_io_error(
        ErrorSubject::StateMachine,
        verb,
        std::io::Error::new(std::io::ErrorKind::InvalidData, err.to_string()),
    )
}

impl<A: ApplyState> RaftSnapshotBuilder<TypeConfig> for StateMachine<A> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (meta, data) = {
            // Hold the state read lock while reading progress so the two are consistent.
            let state = self.state.read();
            let mut progress = self.progress.write();
            progress.snapshot_seq += 1;
            let snapshot_id = match progress.last_applied {
                Some(id) => format!(
                    "{}-{}-{}",
                    id.leader_id.term, id.index, progress.snapshot_seq
                ),
                None => format!("none-{}", progress.snapshot_seq),
            };
            let meta = SnapshotMeta {
                last_log_id: progress.last_applied,
                last_membership: progress.membership.clone(),
                snapshot_id,
            };
            let mut out = snapshot_head(&meta);
            state
                .write_snapshot(&mut out)
                .map_err(|e| sm_error(ErrorVerb::Read, &e))?;
            (meta, Bytes::from(out))
        };
        self.persist(&meta, data.clone())
            .await
            .map_err(|e| sm_error(ErrorVerb::Write, &e))?;
        self.progress.write().snapshot = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(SnapshotBuf::shared(data)),
        })
    }
}

impl<A: ApplyState> RaftStateMachine<TypeConfig> for StateMachine<A> {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<NodeId, openraft::BasicNode>), StorageError> {
        let progress = self.progress.read();
        Ok((progress.last_applied, progress.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut responses = Vec::new();
        {
            let mut state = self.state.write();
            let mut progress = self.progress.write();
            for entry in entries {
                progress.last_applied = Some(entry.log_id);
                match &entry.payload {
                    EntryPayload::Blank => {
                        state.observe_entry(&entry.log_id);
                        responses.push(CommandResponse::default());
                    }
                    EntryPayload::Normal(command) => {
                        state.observe_entry(&entry.log_id);
                        responses.push(state.apply(&entry.log_id, command));
                    }
                    EntryPayload::Membership(membership) => {
                        state.observe_entry(&entry.log_id);
                        progress.membership =
                            StoredMembership::new(Some(entry.log_id), membership.clone());
                        responses.push(CommandResponse::default());
                    }
                }
            }
        }
        A::applied(&self.state);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotBuf>, StorageError> {
        Ok(Box::default())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<SnapshotBuf>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_bytes();
        let (_, app_bytes) = decode_snapshot(&data).map_err(|e| sm_error(ErrorVerb::Read, &e))?;
        let app = A::from_snapshot(app_bytes).map_err(|e| sm_error(ErrorVerb::Read, &e))?;
        self.persist(meta, data.clone())
            .await
            .map_err(|e| sm_error(ErrorVerb::Write, &e))?;
        {
            let mut state = self.state.write();
            let mut progress = self.progress.write();
            state.adopt(app);
            progress.last_applied = meta.last_log_id;
            progress.membership = meta.last_membership.clone();
            progress.snapshot = Some((meta.clone(), data));
        }
        A::applied(&self.state);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let progress = self.progress.read();
        Ok(progress.snapshot.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(SnapshotBuf::shared(data.clone())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, Membership};
    use std::collections::{BTreeMap, BTreeSet};

    #[derive(Default)]
    struct Counter(u64);

    impl ApplyState for Counter {
        fn apply(&mut self, _log_id: &LogId, _command: &Command) -> CommandResponse {
            self.0 += 1;
            CommandResponse::default()
        }
        fn write_snapshot(&self, out: &mut Vec<u8>) -> Result<(), String> {
            out.extend_from_slice(&self.0.to_be_bytes());
            Ok(())
        }
        fn from_snapshot(bytes: &[u8]) -> Result<Self, String> {
            let b: [u8; 8] = bytes.try_into().map_err(|_| "bad counter".to_string())?;
            Ok(Counter(u64::from_be_bytes(b)))
        }
    }

    fn meta(index: u64) -> SnapshotMeta<NodeId, openraft::BasicNode> {
        let log_id = LogId::new(CommittedLeaderId::new(3, 1), index);
        let membership = Membership::new(
            vec![BTreeSet::from([1])],
            BTreeMap::from([(1, openraft::BasicNode::default())]),
        );
        SnapshotMeta {
            last_log_id: Some(log_id),
            last_membership: StoredMembership::new(Some(log_id), membership),
            snapshot_id: "x".into(),
        }
    }

    #[test]
    fn snapshot_encoding_round_trips_and_pins_its_prefix() {
        let data = encode_snapshot(&meta(9), b"app");
        assert_eq!(&data[..5], b"CHSM\x01");
        assert!(data.ends_with(b"app"));
        let (m, app) = decode_snapshot(&data).expect("decode");
        assert_eq!(m.last_log_id.map(|l| l.index), Some(9));
        assert_eq!(app, b"app");
        assert!(decode_snapshot(&data[..7]).is_err());
        let mut wrong = data.clone();
        wrong[4] = 9;
        assert!(matches!(decode_snapshot(&wrong), Err(e) if e.contains("version 9")));
    }

    #[test]
    fn restore_sets_state_and_progress() {
        let data = encode_snapshot(&meta(42), &7u64.to_be_bytes());
        let sm = StateMachine::new(Counter::default());
        let restored = sm.restore(&data).expect("restore");
        assert_eq!(restored.map(|l| l.index), Some(42));
        assert_eq!(sm.state().read().0, 7);
        assert_eq!(sm.last_applied().map(|l| l.index), Some(42));
    }
}
