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

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, SnapshotMeta, StoredMembership,
};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::types::{Command, CommandResponse, Entry, LogId, NodeId, StorageError, TypeConfig};

/// The application half of a state machine: a deterministic function of the committed log.
pub trait ApplyState: Send + Sync + Sized + 'static {
    /// Applies one committed command. Must be deterministic: every replica computes the same
    /// state and response from the same log.
    fn apply(&mut self, log_id: &LogId, command: &Command) -> CommandResponse;

    /// Sees blank and membership entries (a new leader's first entry is blank), so a state
    /// machine can track leader terms.
    fn observe_entry(&mut self, _log_id: &LogId) {}

    /// Serialises the whole state for a snapshot.
    fn to_snapshot(&self) -> Result<Vec<u8>, String>;

    /// Rebuilds the state from [`ApplyState::to_snapshot`] bytes.
    fn from_snapshot(bytes: &[u8]) -> Result<Self, String>;

    /// Called after a batch of entries was applied, outside the state lock (wake waiters).
    fn applied(_state: &Arc<RwLock<Self>>) {}
}

#[derive(Serialize, Deserialize)]
struct SnapshotEnvelope {
    last_applied: Option<LogId>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    state: Vec<u8>,
}

struct Progress {
    last_applied: Option<LogId>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    snapshot: Option<(SnapshotMeta<NodeId, openraft::BasicNode>, Vec<u8>)>,
    snapshot_seq: u64,
}

/// A `RaftStateMachine` over an [`ApplyState`]; cheap to clone, all clones share state.
pub struct StateMachine<A: ApplyState> {
    state: Arc<RwLock<A>>,
    progress: Arc<RwLock<Progress>>,
}

impl<A: ApplyState> Clone for StateMachine<A> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
            progress: self.progress.clone(),
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
        }
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
        // Hold the state read lock while reading progress so the two are consistent.
        let state = self.state.read();
        let mut progress = self.progress.write();
        let bytes = state
            .to_snapshot()
            .map_err(|e| sm_error(ErrorVerb::Read, &e))?;
        let envelope = SnapshotEnvelope {
            last_applied: progress.last_applied,
            membership: progress.membership.clone(),
            state: bytes,
        };
        let data = serde_json::to_vec(&envelope).map_err(|e| sm_error(ErrorVerb::Write, &e))?;
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
        progress.snapshot = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
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

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let envelope: SnapshotEnvelope =
            serde_json::from_slice(&data).map_err(|e| sm_error(ErrorVerb::Read, &e))?;
        let app = A::from_snapshot(&envelope.state).map_err(|e| sm_error(ErrorVerb::Read, &e))?;
        {
            let mut state = self.state.write();
            let mut progress = self.progress.write();
            *state = app;
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
            snapshot: Box::new(Cursor::new(data.clone())),
        }))
    }
}
