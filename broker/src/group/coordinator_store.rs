//! Stored membership on the coordinator (see the module docs of `coordinator`): the queue of
//! groups whose durable form changed, the task that proposes them, and loading the stored
//! groups when this node becomes coordinator.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use chronik_metastore::offsets::{OffsetsCommand, StoredGroup};
use openraft::ServerState;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::{Coordinator, Group};

/// Groups to store, latest form per group, for the term in which this node coordinates.
#[derive(Default)]
pub(super) struct StoreQueue {
    pending: Mutex<Pending>,
    wake: Notify,
    /// Held while a batch (or a group deletion) is being proposed, so that they commit in
    /// the order they were decided.
    serial: tokio::sync::Mutex<()>,
}

/// A batch to store: group id and its durable form (`None`: forget it).
type Batch = Vec<(String, Option<StoredGroup>)>;

#[derive(Default)]
struct Pending {
    /// 0 while this node does not coordinate: nothing is queued then.
    term: u64,
    groups: HashMap<String, Option<StoredGroup>>,
}

impl StoreQueue {
    /// Queues a group's durable form (`None`: forget the stored group).
    pub(super) fn queue(&self, group_id: &str, stored: Option<StoredGroup>) {
        let mut p = self.pending.lock();
        if p.term == 0 {
            return;
        }
        p.groups.insert(group_id.to_string(), stored);
        drop(p);
        self.wake.notify_one();
    }

    /// Starts queuing for a new coordinator term (0: stops), dropping what was queued.
    pub(super) fn reset(&self, term: u64) {
        let mut p = self.pending.lock();
        p.term = term;
        p.groups.clear();
    }

    /// Drops what is queued for `group_id` and waits for any batch being proposed; the
    /// caller proposes the group's deletion while holding the guard.
    pub(super) async fn forget_pending(&self, group_id: &str) -> tokio::sync::MutexGuard<'_, ()> {
        self.pending.lock().groups.remove(group_id);
        self.serial.lock().await
    }

    fn take(&self) -> Option<(u64, Batch)> {
        let mut p = self.pending.lock();
        if p.term == 0 || p.groups.is_empty() {
            return None;
        }
        let groups = p.groups.drain().collect();
        Some((p.term, groups))
    }
}

/// Proposes queued groups, one batch at a time, until the coordinator is dropped. A batch
/// that fails (this node lost leadership) is dropped: the next coordinator works from what
/// was stored before it, and its members' stale generations make them rejoin.
pub(super) async fn run_store(coordinator: std::sync::Weak<Coordinator>) {
    let Some(shared) = coordinator.upgrade().map(|c| c.shared.clone()) else {
        return;
    };
    loop {
        shared.store.wake.notified().await;
        let _serial = shared.store.serial.lock().await;
        let Some((term, groups)) = shared.store.take() else {
            continue;
        };
        let Some(c) = coordinator.upgrade() else {
            return;
        };
        let n = groups.len();
        if let Err(err) = c
            .propose(OffsetsCommand::StoreGroups { term, groups })
            .await
        {
            tracing::warn!(groups = n, err, "storing group membership failed");
        }
    }
}

/// Follows this node's leadership of the offsets group. When it stops leading (or leads
/// again in a later term) its groups are unloaded, as Kafka unloads them with the offsets
/// partition: a node that lost and regained leadership must not answer from stale members.
/// When it starts leading in a term, it loads the stored groups once that term's first
/// entry is applied (so every earlier store is in the state) and a quorum has confirmed
/// its leadership: a node restarted with a leader's saved vote believes it leads for a
/// moment, on old state, until a peer tells it of the later term.
pub(super) async fn follow_leadership(coordinator: std::sync::Weak<Coordinator>) {
    let Some(mut rx) = coordinator.upgrade().map(|c| c.raft.metrics()) else {
        return;
    };
    let mut was: Option<u64> = None;
    loop {
        let now = {
            let m = rx.borrow_and_update();
            (m.state == ServerState::Leader).then_some(m.current_term)
        };
        let Some(c) = coordinator.upgrade() else {
            return;
        };
        if now != was {
            if was.is_some() {
                tracing::info!("no longer the group coordinator: unloading its groups");
                c.unload_groups();
            }
            was = now;
            if let Some(term) = now {
                tokio::spawn(load_when_confirmed(coordinator.clone(), term));
            }
        }
        drop(c);
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Loads the stored groups for coordinator term `term` (see [`follow_leadership`]); gives
/// up once this node no longer leads in that term.
async fn load_when_confirmed(coordinator: std::sync::Weak<Coordinator>, term: u64) {
    let Some(raft) = coordinator.upgrade().map(|c| c.raft.clone()) else {
        return;
    };
    let mut rx = raft.metrics();
    loop {
        let (leading, applied_term) = {
            let m = rx.borrow_and_update();
            (
                m.state == ServerState::Leader && m.current_term == term,
                m.last_applied.map(|l| l.leader_id.term),
            )
        };
        if !leading {
            return;
        }
        if applied_term.is_some_and(|t| t >= term) {
            match raft.ensure_linearizable().await {
                Ok(_) => break,
                Err(err) => {
                    tracing::info!(%err, term, "group coordinator leadership not confirmed yet");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
    if let Some(c) = coordinator.upgrade() {
        c.load_groups(term);
    }
}

impl Coordinator {
    /// Holds every stored group in memory, as this node's coordinator term `term` begins.
    /// Checked and done under the groups lock, which unloading also takes: a term lost
    /// meanwhile is either seen here (nothing is loaded) or unloaded after.
    fn load_groups(&self, term: u64) {
        let now = Instant::now();
        let mut groups = self.groups.write();
        if chronik_bootstrap::leading_term(&self.raft) != Some(term) {
            return;
        }
        let stored: Vec<(String, StoredGroup)> = self
            .offsets
            .read()
            .stored_groups()
            .map(|(id, g)| (id.clone(), g.clone()))
            .collect();
        let n = stored.len();
        for (id, g) in stored {
            let group = Group::restore(id, self.config.clone(), &g, now);
            self.insert_slot(&mut groups, group);
        }
        self.shared.store.reset(term);
        self.loaded_term.store(term, Ordering::SeqCst);
        drop(groups);
        tracing::info!(groups = n, term, "group coordinator loaded its groups");
    }
}
