//! A tiny in-memory state machine, only so openraft's storage suite can run.

use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, EntryPayload, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StoredMembership,
};
use parking_lot::Mutex;

use crate::snapshot_buf::SnapshotBuf;
use crate::types::{CommandResponse, Entry, LogId, NodeId, StorageError, TypeConfig};

#[derive(Default)]
struct Inner {
    last_applied: Option<LogId>,
    membership: StoredMembership<NodeId, BasicNode>,
    snapshot: Option<(SnapshotMeta<NodeId, BasicNode>, Vec<u8>)>,
    snapshots_built: u64,
}

#[derive(Clone, Default)]
pub(crate) struct TestSm(Arc<Mutex<Inner>>);

impl RaftSnapshotBuilder<TypeConfig> for TestSm {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let mut s = self.0.lock();
        s.snapshots_built += 1;
        let meta = SnapshotMeta {
            last_log_id: s.last_applied,
            last_membership: s.membership.clone(),
            snapshot_id: format!("snap-{}", s.snapshots_built),
        };
        let data = b"test".to_vec();
        s.snapshot = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(SnapshotBuf::shared(vec![data.into()])),
        })
    }
}

impl RaftStateMachine<TypeConfig> for TestSm {
    type SnapshotBuilder = TestSm;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<NodeId, BasicNode>), StorageError> {
        let s = self.0.lock();
        Ok((s.last_applied, s.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut s = self.0.lock();
        let mut out = Vec::new();
        for e in entries {
            s.last_applied = Some(e.log_id);
            if let EntryPayload::Membership(m) = e.payload {
                s.membership = StoredMembership::new(Some(e.log_id), m);
            }
            out.push(CommandResponse::default());
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotBuf>, StorageError> {
        Ok(Box::default())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<SnapshotBuf>,
    ) -> Result<(), StorageError> {
        let mut s = self.0.lock();
        s.last_applied = meta.last_log_id;
        s.membership = meta.last_membership.clone();
        s.snapshot = Some((meta.clone(), snapshot.into_bytes().to_vec()));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let s = self.0.lock();
        Ok(s.snapshot.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(SnapshotBuf::shared(vec![data.clone().into()])),
        }))
    }
}
