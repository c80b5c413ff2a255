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

use crate::snapshot_buf::{SnapshotBuf, SnapshotWriter};
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

    /// Serialises the whole state for a snapshot into `out`, which already holds the
    /// snapshot's header. Big buffers the state holds anyway (a partition's untiered
    /// batches) go in by reference ([`SnapshotWriter::push_shared`]), not copied.
    fn write_snapshot(&self, out: &mut SnapshotWriter) -> Result<(), String>;

    /// The whole state serialised on its own (see [`ApplyState::write_snapshot`]).
    fn to_snapshot(&self) -> Result<Vec<u8>, String> {
        let mut out = SnapshotWriter::default();
        self.write_snapshot(&mut out)?;
        Ok(out.finish().concat())
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

/// The latest snapshot, and its parts unless it is big and the snapshot store has it (see
/// [`KEEP_IN_MEMORY_BYTES`]).
type CurrentSnapshot = (
    SnapshotMeta<NodeId, openraft::BasicNode>,
    Option<Vec<Bytes>>,
);

struct Progress {
    last_applied: Option<LogId>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    snapshot: Option<CurrentSnapshot>,
    snapshot_seq: u64,
}

/// A built snapshot bigger than this is not kept in memory once the snapshot store has
/// it; a follower that needs it gets it from the store. A partition's snapshot holds its
/// untiered tail by reference, so keeping it would keep every batch it covers in memory
/// until the next snapshot, after tiering has let them go.
const KEEP_IN_MEMORY_BYTES: usize = 4 << 20;

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
        parts: Vec<Bytes>,
    ) -> Result<(), String> {
        let Some((group, store)) = &self.store else {
            return Ok(());
        };
        let stored = StoredSnapshot {
            last_log_index: meta.last_log_id.map(|l| l.index).unwrap_or(0),
            parts,
        };
        store.save(*group, stored).await
    }

    /// The current snapshot (`meta`) read back from the snapshot store, or a newer one that
    /// replaced it there meanwhile (with that one's own meta).
    async fn load_stored(
        &self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
    ) -> Result<Snapshot<TypeConfig>, StorageError> {
        let missing = |why: String| {
            sm_error(
                ErrorVerb::Read,
                &format!("snapshot {}: {why}", meta.snapshot_id),
            )
        };
        let Some((group, store)) = &self.store else {
            return Err(missing("no snapshot store".into()));
        };
        let stored = store
            .load(*group)
            .await
            .map_err(missing)?
            .ok_or_else(|| missing("not in the snapshot store".into()))?;
        let data = stored.to_bytes();
        let (stored_meta, _) = decode_snapshot(&data).map_err(missing)?;
        let index = |m: &SnapshotMeta<NodeId, openraft::BasicNode>| m.last_log_id.map(|l| l.index);
        if index(&stored_meta) < index(meta) {
            return Err(missing(format!(
                "the store holds an older one ({})",
                stored_meta.snapshot_id
            )));
        }
        Ok(Snapshot {
            meta: stored_meta,
            snapshot: Box::new(SnapshotBuf::shared(vec![data])),
        })
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
            progress.snapshot = Some((meta.clone(), Some(vec![Bytes::copy_from_slice(data)])));
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
            let mut out = SnapshotWriter::with_head(snapshot_head(&meta));
            state
                .write_snapshot(&mut out)
                .map_err(|e| sm_error(ErrorVerb::Read, &e))?;
            (meta, out.finish())
        };
        self.persist(&meta, data.clone())
            .await
            .map_err(|e| sm_error(ErrorVerb::Write, &e))?;
        let size: usize = data.iter().map(Bytes::len).sum();
        let kept = (self.store.is_none() || size <= KEEP_IN_MEMORY_BYTES).then(|| data.clone());
        self.progress.write().snapshot = Some((meta.clone(), kept));
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
        self.persist(meta, vec![data.clone()])
            .await
            .map_err(|e| sm_error(ErrorVerb::Write, &e))?;
        {
            let mut state = self.state.write();
            let mut progress = self.progress.write();
            state.adopt(app);
            progress.last_applied = meta.last_log_id;
            progress.membership = meta.last_membership.clone();
            progress.snapshot = Some((meta.clone(), Some(vec![data])));
        }
        A::applied(&self.state);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let current = self.progress.read().snapshot.clone();
        match current {
            None => Ok(None),
            Some((meta, Some(parts))) => Ok(Some(Snapshot {
                meta,
                snapshot: Box::new(SnapshotBuf::shared(parts)),
            })),
            Some((meta, None)) => self.load_stored(&meta).await.map(Some),
        }
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
        fn write_snapshot(&self, out: &mut SnapshotWriter) -> Result<(), String> {
            use std::io::Write;
            out.write_all(&self.0.to_be_bytes())
                .map_err(|e| e.to_string())
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

    /// A state that holds one big shared buffer, like a partition's untiered tail.
    struct Blob(Bytes);

    impl ApplyState for Blob {
        fn apply(&mut self, _log_id: &LogId, _command: &Command) -> CommandResponse {
            CommandResponse::default()
        }
        fn write_snapshot(&self, out: &mut SnapshotWriter) -> Result<(), String> {
            out.push_shared(self.0.clone());
            Ok(())
        }
        fn from_snapshot(bytes: &[u8]) -> Result<Self, String> {
            Ok(Blob(Bytes::copy_from_slice(bytes)))
        }
    }

    #[derive(Default)]
    struct MemStore(parking_lot::Mutex<Option<StoredSnapshot>>);

    impl SnapshotStore for MemStore {
        fn save(
            &self,
            _group: GroupId,
            snapshot: StoredSnapshot,
        ) -> futures::future::BoxFuture<'_, Result<(), String>> {
            // Stored joined, as a file would hold it.
            let parts = vec![snapshot.to_bytes()];
            *self.0.lock() = Some(StoredSnapshot { parts, ..snapshot });
            Box::pin(async { Ok(()) })
        }
        fn load(
            &self,
            _group: GroupId,
        ) -> futures::future::BoxFuture<'_, Result<Option<StoredSnapshot>, String>> {
            let stored = self.0.lock().clone();
            Box::pin(async move { Ok(stored) })
        }
    }

    /// A big snapshot is built without copying the state's buffer, is not kept in memory
    /// once stored, and is read back from the store for a follower.
    #[tokio::test]
    async fn a_big_snapshot_is_served_from_the_store() {
        use tokio::io::AsyncReadExt;
        let blob = Bytes::from(vec![5u8; KEEP_IN_MEMORY_BYTES + 1]);
        let store = Arc::new(MemStore::default());
        let mut sm = StateMachine::new(Blob(blob.clone())).with_store(7, store.clone());
        let built = sm.build_snapshot().await.expect("build");
        assert!(
            matches!(&sm.progress.read().snapshot, Some((_, None))),
            "not kept in memory"
        );
        let stored = store.0.lock().clone().expect("stored");
        let stored_bytes = stored.to_bytes();
        let (_, app) = decode_snapshot(&stored_bytes).expect("decode");
        assert_eq!(app, &blob[..]);
        let mut current = sm
            .get_current_snapshot()
            .await
            .expect("current")
            .expect("a snapshot");
        assert_eq!(current.meta, built.meta);
        let mut read = Vec::new();
        current.snapshot.read_to_end(&mut read).await.expect("read");
        assert_eq!(read, stored_bytes);
        // Without a store, the snapshot stays in memory.
        let mut alone = StateMachine::new(Blob(blob));
        alone.build_snapshot().await.expect("build");
        assert!(matches!(
            &alone.progress.read().snapshot,
            Some((_, Some(_)))
        ));
    }
}
