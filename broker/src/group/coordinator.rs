//! The group coordinator's runtime: one [`Group`] per consumer group behind its own mutex,
//! parked JoinGroup/SyncGroup answers, one timer task per group, and the offsets Raft group.
//!
//! Membership decisions are all in [`Group`]; this file only locks, parks requests on
//! oneshot channels, delivers the [`Action`]s a decision returns, and sleeps until the
//! group's next deadline (woken early through a `Notify` whenever a request changed it). A
//! group's lock is never held across an await, so a slow or misbehaving group only ever
//! delays its own requests.
//!
//! Committed offsets are replicated state in the offsets group ([`OFFSETS_GROUP`]): commits
//! and deletions are Raft proposals that answer after apply; reads come from the applied
//! state. This node coordinates every group while it leads the offsets group.
//!
//! Membership is stored there too, as Kafka stores group metadata: whenever a group's
//! durable form changes (a rebalance completed, the group emptied, a static member was
//! replaced) it is queued and proposed in the background (`coordinator_store.rs`). A node
//! that becomes coordinator loads the stored groups before it answers group requests
//! (COORDINATOR_LOAD_IN_PROGRESS until then), so members of a stable group keep their
//! assignments across a coordinator failover or restart instead of rejoining.
//!
//! Offsets retention, as Kafka's `offsets.retention.minutes`: a group that has had no
//! members for `offsets_retention` (by this coordinator's clock, counted from when it first
//! saw the group empty, so a restart or a new coordinator starts counting again) loses the
//! offsets committed before that, and an empty group without offsets is forgotten. So the
//! offsets snapshot and the coordinator's memory hold the groups in use, not every group id
//! that was ever used.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{oneshot, Notify};

use chronik_bootstrap::{wait_leader, BootstrapError, Node};
use chronik_metastore::offsets::{
    decode_response, encode_command, CommittedOffset, OffsetsCommand, OffsetsResponse,
    OffsetsState, PartitionCommit,
};
use chronik_metastore::state_machine::StateMachine;
use chronik_metastore::types::{NodeId, Raft, OFFSETS_GROUP};

use super::state::{
    Action, Group, GroupConfig, GroupStateKind, JoinRequest, JoinResult, LeaveResult, SyncResult,
};
use crate::errors::code;

/// Longest group id accepted.
pub const GROUP_ID_MAX_LEN: usize = 255;

/// Kafka's `offset.metadata.max.bytes`.
pub const OFFSET_METADATA_MAX_BYTES: usize = 4096;

pub fn validate_group_id(group_id: &str) -> Result<(), i16> {
    if group_id.is_empty() || group_id.len() > GROUP_ID_MAX_LEN {
        Err(code::INVALID_GROUP_ID)
    } else {
        Ok(())
    }
}

/// What every group's runtime shares: counters, and the queue of groups to store.
#[derive(Default)]
struct Shared {
    rebalances: AtomicU64,
    commits: AtomicU64,
    store: store::StoreQueue,
}

struct SlotInner {
    group: Group,
    /// When a member last made a request (the group's idle time counts from here).
    active_at: Instant,
    joins: HashMap<String, oneshot::Sender<JoinResult>>,
    syncs: HashMap<String, oneshot::Sender<SyncResult>>,
    rebalances_counted: u64,
    /// The [`Group::durable_key`] last queued for storing (or loaded).
    stored_key: Option<u64>,
}

impl SlotInner {
    fn new(group: Group) -> SlotInner {
        SlotInner {
            stored_key: group.durable_key(),
            group,
            active_at: Instant::now(),
            joins: HashMap::new(),
            syncs: HashMap::new(),
            rebalances_counted: 0,
        }
    }

    /// Answers parked requests, counts rebalances, and queues the group for storing if its
    /// durable form changed.
    fn deliver(&mut self, actions: Vec<Action>, shared: &Shared) {
        for action in actions {
            match action {
                Action::Join(member, result) => {
                    if let Some(tx) = self.joins.remove(&member) {
                        let _ = tx.send(result);
                    }
                }
                Action::Sync(member, result) => {
                    if let Some(tx) = self.syncs.remove(&member) {
                        let _ = tx.send(result);
                    }
                }
            }
        }
        let done = self.group.rebalances();
        shared
            .rebalances
            .fetch_add(done - self.rebalances_counted, Ordering::Relaxed);
        self.rebalances_counted = done;
        let key = self.group.durable_key();
        if key.is_some() && key != self.stored_key {
            self.stored_key = key;
            shared
                .store
                .queue(&self.group.group_id, self.group.durable());
        }
    }
}

struct Slot {
    inner: Mutex<SlotInner>,
    wake: Notify,
}

/// A snapshot of one group for ListGroups / DescribeGroups.
pub struct GroupSummary {
    pub group_id: String,
    pub state: GroupStateKind,
    pub protocol_type: String,
    pub protocol_name: String,
    /// (member id, instance id, client id, client host, metadata, assignment); metadata and
    /// assignment only while the group is Stable, as Kafka does.
    pub members: Vec<MemberSummary>,
}

pub struct MemberSummary {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

pub struct Coordinator {
    node_id: NodeId,
    config: GroupConfig,
    groups: RwLock<HashMap<String, Arc<Slot>>>,
    raft: Raft,
    offsets: Arc<RwLock<OffsetsState>>,
    shared: Arc<Shared>,
    /// The term of the offsets group in which this node loaded the stored groups; 0 while
    /// it does not coordinate (or is still loading).
    loaded_term: AtomicU64,
}

impl Coordinator {
    /// Starts (or recovers) the offsets group and waits until it has applied everything in
    /// the local log, so the first OffsetFetch after a restart sees every acknowledged commit.
    pub async fn start(
        node: &Node,
        config: GroupConfig,
    ) -> Result<Arc<Coordinator>, BootstrapError> {
        let sm = StateMachine::new(OffsetsState::default());
        let offsets = sm.state();
        let raft = node
            .start_group(OFFSETS_GROUP, sm, node.node_wide_voters())
            .await?;
        // Committed offsets are wholly in the snapshot: snapshot them and purge the WAL.
        node.spawn_snapshotter(&raft);
        let timeout = Duration::from_secs(30);
        if !node.is_metadata_voter() {
            // A node added to a running cluster does not replicate the offsets group; it
            // never coordinates groups, so there is nothing to recover.
            return Ok(Self::new(node, config, raft, offsets));
        }
        wait_leader(&raft, timeout)
            .await
            .ok_or(BootstrapError::NoLeader(timeout))?;
        let last_log = raft.metrics().borrow().last_log_index;
        raft.wait(Some(timeout))
            .applied_index_at_least(last_log, "recover committed offsets")
            .await
            .map_err(|e| BootstrapError::Raft {
                group: OFFSETS_GROUP,
                message: e.to_string(),
            })?;
        Ok(Self::new(node, config, raft, offsets))
    }

    fn new(
        node: &Node,
        config: GroupConfig,
        raft: Raft,
        offsets: Arc<RwLock<OffsetsState>>,
    ) -> Arc<Coordinator> {
        let coordinator = Arc::new(Coordinator {
            node_id: node.node_id,
            config,
            groups: RwLock::new(HashMap::new()),
            raft,
            offsets,
            shared: Arc::new(Shared::default()),
            loaded_term: AtomicU64::new(0),
        });
        tokio::spawn(retention::run_retention(Arc::downgrade(&coordinator)));
        tokio::spawn(store::follow_leadership(Arc::downgrade(&coordinator)));
        tokio::spawn(store::run_store(Arc::downgrade(&coordinator)));
        coordinator
    }

    /// Drops every group held in memory, answering requests parked on them with
    /// NOT_COORDINATOR so that clients look the coordinator up again.
    fn unload_groups(&self) {
        let groups: Vec<Arc<Slot>> = {
            let mut held = self.groups.write();
            self.loaded_term.store(0, Ordering::SeqCst);
            self.shared.store.reset(0);
            held.drain().map(|(_, s)| s).collect()
        };
        for slot in groups {
            let mut inner = slot.inner.lock();
            inner.group.unload();
            for (member, tx) in inner.joins.drain() {
                let _ = tx.send(JoinResult::error(code::NOT_COORDINATOR, &member));
            }
            for (_, tx) in inner.syncs.drain() {
                let _ = tx.send(SyncResult::error(code::NOT_COORDINATOR));
            }
            drop(inner);
            slot.wake.notify_one();
        }
    }

    /// The node that coordinates groups now (the offsets group's leader), if known.
    pub fn coordinator_node(&self) -> Option<NodeId> {
        chronik_bootstrap::leader_of(&self.raft)
    }

    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }

    /// Whether this node coordinates groups now (it leads the offsets group).
    pub fn is_coordinator(&self) -> bool {
        chronik_bootstrap::leading_term(&self.raft).is_some()
    }

    /// Whether this node answers group requests now: NOT_COORDINATOR if another node
    /// coordinates, COORDINATOR_LOAD_IN_PROGRESS while it loads the stored groups.
    pub fn ready(&self) -> Result<(), i16> {
        match chronik_bootstrap::leading_term(&self.raft) {
            None => Err(code::NOT_COORDINATOR),
            Some(term) if self.loaded_term.load(Ordering::SeqCst) != term => {
                Err(code::COORDINATOR_LOAD_IN_PROGRESS)
            }
            Some(_) => Ok(()),
        }
    }

    fn slot(&self, group_id: &str, create: bool) -> Option<Arc<Slot>> {
        if let Some(s) = self.groups.read().get(group_id) {
            return Some(s.clone());
        }
        if !create {
            return None;
        }
        let mut groups = self.groups.write();
        if let Some(s) = groups.get(group_id) {
            return Some(s.clone());
        }
        let group = Group::new(group_id, self.config.clone());
        Some(self.insert_slot(&mut groups, group))
    }

    /// Holds `group` in memory and starts its timer.
    fn insert_slot(&self, groups: &mut HashMap<String, Arc<Slot>>, group: Group) -> Arc<Slot> {
        let id = group.group_id.clone();
        let slot = Arc::new(Slot {
            inner: Mutex::new(SlotInner::new(group)),
            wake: Notify::new(),
        });
        groups.insert(id, slot.clone());
        tokio::spawn(run_timer(slot.clone(), self.shared.clone()));
        slot
    }

    // ---- membership ---------------------------------------------------------------------

    pub fn join(&self, group_id: &str, req: JoinRequest) -> BoxFuture<'static, JoinResult> {
        if let Err(e) = self.check_group(group_id) {
            return futures::future::ready(JoinResult::error(e, &req.member_id)).boxed();
        }
        let Some(slot) = self.slot(group_id, true) else {
            return futures::future::ready(JoinResult::error(
                code::COORDINATOR_NOT_AVAILABLE,
                &req.member_id,
            ))
            .boxed();
        };
        let fresh = uuid::Uuid::new_v4().to_string();
        let mut inner = slot.inner.lock();
        let now = Instant::now();
        inner.active_at = now;
        let outcome = inner.group.join(req, now, &fresh);
        let parked = outcome.parked_as.map(|member| {
            let (tx, rx) = oneshot::channel();
            inner.joins.insert(member.clone(), tx);
            (member, rx)
        });
        inner.deliver(outcome.actions, &self.shared);
        drop(inner);
        slot.wake.notify_one();
        match (outcome.reply, parked) {
            (Some(r), _) => futures::future::ready(r).boxed(),
            (None, Some((member, rx))) => async move {
                rx.await
                    .unwrap_or_else(|_| JoinResult::error(code::REBALANCE_IN_PROGRESS, &member))
            }
            .boxed(),
            (None, None) => {
                futures::future::ready(JoinResult::error(code::UNKNOWN_SERVER_ERROR, "")).boxed()
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn sync(
        &self,
        group_id: &str,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation: i32,
        protocol_type: Option<&str>,
        protocol_name: Option<&str>,
        assignments: Vec<(String, Bytes)>,
    ) -> BoxFuture<'static, SyncResult> {
        let slot = match self.check_group(group_id) {
            Err(e) => return futures::future::ready(SyncResult::error(e)).boxed(),
            Ok(()) => self.slot(group_id, false),
        };
        let Some(slot) = slot else {
            return futures::future::ready(SyncResult::error(code::UNKNOWN_MEMBER_ID)).boxed();
        };
        let mut inner = slot.inner.lock();
        let now = Instant::now();
        inner.active_at = now;
        let outcome = inner.group.sync(
            member_id,
            group_instance_id,
            generation,
            protocol_type,
            protocol_name,
            assignments,
            now,
        );
        let parked = outcome.parked_as.map(|member| {
            let (tx, rx) = oneshot::channel();
            inner.syncs.insert(member, tx);
            rx
        });
        inner.deliver(outcome.actions, &self.shared);
        drop(inner);
        slot.wake.notify_one();
        match (outcome.reply, parked) {
            (Some(r), _) => futures::future::ready(r).boxed(),
            (None, Some(rx)) => async move {
                rx.await
                    .unwrap_or_else(|_| SyncResult::error(code::REBALANCE_IN_PROGRESS))
            }
            .boxed(),
            (None, None) => {
                futures::future::ready(SyncResult::error(code::UNKNOWN_SERVER_ERROR)).boxed()
            }
        }
    }

    pub fn heartbeat(
        &self,
        group_id: &str,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation: i32,
    ) -> i16 {
        match self.check_group(group_id) {
            // As Kafka: a heartbeat that arrives while the groups load is answered blindly;
            // the next one finds the member in its loaded group.
            Err(code::COORDINATOR_LOAD_IN_PROGRESS) => return code::NONE,
            Err(e) => return e,
            Ok(()) => {}
        }
        let Some(slot) = self.slot(group_id, false) else {
            return code::UNKNOWN_MEMBER_ID;
        };
        let mut inner = slot.inner.lock();
        let now = Instant::now();
        inner.active_at = now;
        let err = inner
            .group
            .heartbeat(member_id, group_instance_id, generation, now);
        drop(inner);
        slot.wake.notify_one();
        err
    }

    /// LeaveGroup: `Err` is a group-level error, else one result per leaving member.
    pub fn leave(
        &self,
        group_id: &str,
        members: Vec<(String, Option<String>)>,
    ) -> Result<Vec<LeaveResult>, i16> {
        self.check_group(group_id)?;
        let Some(slot) = self.slot(group_id, false) else {
            return Err(code::UNKNOWN_MEMBER_ID);
        };
        let mut inner = slot.inner.lock();
        let now = Instant::now();
        inner.active_at = now;
        let mut results = Vec::with_capacity(members.len());
        for (member_id, instance) in members {
            let (r, actions) = inner.group.leave(&member_id, instance.as_deref(), now);
            inner.deliver(actions, &self.shared);
            results.push(r);
        }
        drop(inner);
        slot.wake.notify_one();
        Ok(results)
    }

    fn check_group(&self, group_id: &str) -> Result<(), i16> {
        validate_group_id(group_id)?;
        self.ready()
    }

    // ---- offsets ------------------------------------------------------------------------

    /// OffsetCommit's group-level check (membership and generation).
    pub fn check_commit(
        &self,
        group_id: &str,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), i16> {
        self.check_group(group_id)?;
        match self.slot(group_id, false) {
            Some(slot) => slot.inner.lock().group.check_commit(
                member_id,
                group_instance_id,
                generation,
                Instant::now(),
            ),
            // Offsets-only groups; a member of a group we do not know is from an old
            // generation (e.g. before our restart): it must rejoin.
            None if generation < 0 => Ok(()),
            None => Err(code::ILLEGAL_GENERATION),
        }
    }

    /// Replicates a commit; answers once it is applied.
    pub fn commit(
        &self,
        group_id: &str,
        offsets: Vec<(String, i32, i64, i32, String)>,
    ) -> BoxFuture<'static, Result<(), i16>> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let cmd = OffsetsCommand::Commit {
            group: group_id.to_string(),
            offsets: offsets
                .into_iter()
                .map(
                    |(topic, partition, offset, leader_epoch, metadata)| PartitionCommit {
                        topic,
                        partition,
                        committed: CommittedOffset {
                            offset,
                            leader_epoch,
                            metadata,
                            commit_timestamp_ms: now_ms,
                        },
                    },
                )
                .collect(),
        };
        let shared = self.shared.clone();
        let propose = self.propose(cmd);
        async move {
            propose.await?;
            shared.commits.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        .boxed()
    }

    /// Proposes `cmd` and answers once it is applied, or NOT_COORDINATOR as soon as this
    /// node stops leading the offsets group in the term it proposed in (a deposed leader's
    /// uncommitted entry may never answer).
    fn propose(&self, cmd: OffsetsCommand) -> BoxFuture<'static, Result<(), i16>> {
        let raft = self.raft.clone();
        async move {
            match chronik_bootstrap::write_as_leader(&raft, encode_command(&cmd)).await {
                Ok(resp) => match decode_response(&resp.data) {
                    OffsetsResponse::Ok => Ok(()),
                    OffsetsResponse::Malformed(why) => {
                        tracing::error!(%why, "offsets command refused");
                        Err(code::UNKNOWN_SERVER_ERROR)
                    }
                },
                Err(chronik_bootstrap::LeaderWriteError::NotLeader) => Err(code::NOT_COORDINATOR),
                Err(chronik_bootstrap::LeaderWriteError::Deposed) => {
                    tracing::warn!("offsets proposal abandoned: no longer the coordinator");
                    Err(code::NOT_COORDINATOR)
                }
                Err(err) => {
                    tracing::warn!(%err, "offsets proposal failed");
                    Err(code::NOT_COORDINATOR)
                }
            }
        }
        .boxed()
    }

    /// The committed offset of one partition: (offset, leader epoch, metadata).
    pub fn committed(
        &self,
        group_id: &str,
        topic: &str,
        partition: i32,
    ) -> Option<CommittedOffset> {
        self.offsets.read().get(group_id, topic, partition).cloned()
    }

    /// Every committed offset of a group, as (topic, partition, offset).
    pub fn committed_all(&self, group_id: &str) -> Vec<(String, i32, CommittedOffset)> {
        let state = self.offsets.read();
        let Some(g) = state.group(group_id) else {
            return Vec::new();
        };
        g.iter()
            .flat_map(|(t, parts)| parts.iter().map(move |(p, c)| (t.clone(), *p, c.clone())))
            .collect()
    }

    // ---- administration -----------------------------------------------------------------

    /// Every group this coordinator knows: with members, or with committed offsets.
    pub fn list(&self) -> Vec<GroupSummary> {
        let mut out: Vec<GroupSummary> = Vec::new();
        let slots: Vec<Arc<Slot>> = self.groups.read().values().cloned().collect();
        for slot in slots {
            let s = summarize(&slot.inner.lock().group);
            if s.state != GroupStateKind::Dead
                && (s.state != GroupStateKind::Empty
                    || self.offsets.read().has_group(&s.group_id)
                    || !s.protocol_type.is_empty())
            {
                out.push(s);
            }
        }
        let state = self.offsets.read();
        for (group_id, _) in state.groups() {
            if !out.iter().any(|s| &s.group_id == group_id) {
                out.push(offsets_only(group_id));
            }
        }
        out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        out
    }

    /// One group, if it exists (has members or committed offsets).
    pub fn describe(&self, group_id: &str) -> Option<GroupSummary> {
        if let Some(slot) = self.slot(group_id, false) {
            let s = summarize(&slot.inner.lock().group);
            // An empty group is described as Empty, as ListGroups lists it, whether or not
            // it has committed offsets (Kafka drops it at a later cleanup).
            if s.state != GroupStateKind::Dead {
                return Some(s);
            }
            if self.offsets.read().has_group(group_id) {
                return Some(s);
            }
            return None;
        }
        self.offsets
            .read()
            .has_group(group_id)
            .then(|| offsets_only(group_id))
    }

    /// DeleteGroups for one group.
    pub fn delete_group(&self, group_id: &str) -> BoxFuture<'static, Result<(), i16>> {
        if let Err(e) = self.check_group(group_id) {
            return futures::future::ready(Err(e)).boxed();
        }
        let (has_offsets, stored) = {
            let state = self.offsets.read();
            (state.has_group(group_id), state.has_stored_group(group_id))
        };
        let slot = self.slot(group_id, false);
        let outcome = match &slot {
            Some(slot) => {
                let mut inner = slot.inner.lock();
                match inner.group.delete() {
                    Ok(()) => Ok(()),
                    Err(code::GROUP_ID_NOT_FOUND) if has_offsets => Ok(()),
                    Err(e) => Err(e),
                }
            }
            None if has_offsets => Ok(()),
            None => Err(code::GROUP_ID_NOT_FOUND),
        };
        if let Err(e) = outcome {
            return futures::future::ready(Err(e)).boxed();
        }
        if let Some(slot) = slot {
            self.groups.write().remove(group_id);
            slot.wake.notify_one();
        }
        if !has_offsets && !stored {
            return futures::future::ready(Ok(())).boxed();
        }
        // After any stored form of the group already queued or being proposed, so that
        // none lands after the deletion.
        let shared = self.shared.clone();
        let propose = self.propose(OffsetsCommand::DeleteGroup {
            group: group_id.to_string(),
        });
        let group_id = group_id.to_string();
        async move {
            let _serial = shared.store.forget_pending(&group_id).await;
            propose.await
        }
        .boxed()
    }

    /// OffsetDelete's group-level check: `Ok(subscribed topics)` of an active group (whose
    /// offsets may not be deleted), or a group-level error.
    pub fn check_offset_delete(&self, group_id: &str) -> Result<Vec<String>, i16> {
        self.check_group(group_id)?;
        let has_offsets = self.offsets.read().has_group(group_id);
        let Some(slot) = self.slot(group_id, false) else {
            return if has_offsets {
                Ok(Vec::new())
            } else {
                Err(code::GROUP_ID_NOT_FOUND)
            };
        };
        let inner = slot.inner.lock();
        let g = &inner.group;
        if g.member_count() == 0 {
            return if has_offsets {
                Ok(Vec::new())
            } else {
                Err(code::GROUP_ID_NOT_FOUND)
            };
        }
        if g.protocol_type() != Some("consumer") {
            return Err(code::NON_EMPTY_GROUP);
        }
        let mut topics: Vec<String> = g
            .members()
            .flat_map(|m| super::subscribed_topics(&g.member_metadata(m)))
            .collect();
        topics.sort();
        topics.dedup();
        Ok(topics)
    }

    pub fn delete_offsets(
        &self,
        group_id: &str,
        partitions: Vec<(String, i32)>,
    ) -> BoxFuture<'static, Result<(), i16>> {
        if partitions.is_empty() {
            return futures::future::ready(Ok(())).boxed();
        }
        self.propose(OffsetsCommand::DeleteOffsets {
            group: group_id.to_string(),
            partitions,
        })
    }
}

fn summarize(g: &Group) -> GroupSummary {
    let stable = g.state() == GroupStateKind::Stable;
    GroupSummary {
        group_id: g.group_id.clone(),
        state: g.state(),
        protocol_type: g.protocol_type().unwrap_or_default().to_string(),
        protocol_name: if stable {
            g.protocol_name().unwrap_or_default().to_string()
        } else {
            String::new()
        },
        members: g
            .members()
            .map(|m| MemberSummary {
                member_id: m.member_id.clone(),
                group_instance_id: m.group_instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                metadata: if stable {
                    g.member_metadata(m)
                } else {
                    Bytes::new()
                },
                assignment: if stable {
                    m.assignment.clone()
                } else {
                    Bytes::new()
                },
            })
            .collect(),
    }
}

fn offsets_only(group_id: &str) -> GroupSummary {
    GroupSummary {
        group_id: group_id.to_string(),
        state: GroupStateKind::Empty,
        protocol_type: String::new(),
        protocol_name: String::new(),
        members: Vec::new(),
    }
}

/// Sleeps until the group's next deadline (or until a request changed it), then ticks.
async fn run_timer(slot: Arc<Slot>, shared: Arc<Shared>) {
    loop {
        let deadline = {
            let inner = slot.inner.lock();
            if inner.group.state() == GroupStateKind::Dead {
                return;
            }
            inner.group.next_deadline()
        };
        match deadline {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {
                        let mut inner = slot.inner.lock();
                        let actions = inner.group.tick(Instant::now());
                        inner.deliver(actions, &shared);
                    }
                    _ = slot.wake.notified() => {}
                }
            }
            None => slot.wake.notified().await,
        }
    }
}

#[path = "coordinator_metrics.rs"]
mod metrics;
#[path = "coordinator_retention.rs"]
mod retention;
#[path = "coordinator_store.rs"]
mod store;
