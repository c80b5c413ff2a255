//! The partition groups running on this node, kept in step with the cluster metadata.
//!
//! A reconcile loop watches the metadata group (and ticks every second): partitions
//! assigned to this node get a Raft group started (recovering from the WAL when it has
//! state, else from the newest snapshot in the bucket), partitions of deleted topics get
//! their group shut down and a tombstone written to the WAL. A replica moved away keeps
//! running until the partition's leader has taken it out of the Raft membership.
//!
//! The same loop does the leader's share of cluster upkeep: a partition leader announces
//! itself in the metadata (for nodes that do not replicate the partition) and moves the
//! Raft membership to the replica list the metadata asks for (reassignment).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use openraft::{BasicNode, ServerState};
use parking_lot::RwLock;

use chronik_bootstrap::{BootstrapError, Node};
use chronik_metastore::metadata::{ClusterMetadata, MetadataCommand, PartitionMeta};
use chronik_metastore::state_machine::StateMachine;
use chronik_metastore::types::{GroupId, NodeId, Raft, FIRST_PARTITION_GROUP};

use super::batch::write_with_offset;
use super::isr::{InSync, LeaderView};
use super::log::{BatchLocation, ChunkRef, OpenPages, PageRef, PartitionLog, ReadPlan};
use crate::tiering::Tier;

/// One partition replica on this node.
pub struct Partition {
    pub topic: String,
    pub index: i32,
    pub group: GroupId,
    pub raft: Raft,
    pub log: Arc<RwLock<PartitionLog>>,
    pub topic_id: uuid::Uuid,
    tier: Arc<Tier>,
    /// A membership change or a leadership hand-off is under way (one at a time).
    moving: std::sync::atomic::AtomicBool,
    /// A leadership announcement to the metadata is in flight.
    announcing: std::sync::atomic::AtomicBool,
    /// Since when the preferred leader has been a caught-up follower of this leader.
    preferred_ready_since: parking_lot::Mutex<Option<std::time::Instant>>,
    /// The in-sync replicas, counted by the leader at each upkeep tick.
    in_sync: parking_lot::Mutex<InSync>,
    /// Whether this partition's chunks are worth compressing.
    pub compression: crate::tiering::CompressionHint,
}

impl Partition {
    pub fn leader(&self) -> Option<NodeId> {
        chronik_bootstrap::leader_of(&self.raft)
    }

    pub fn is_leader(&self, node: NodeId) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.id == node
    }

    /// Voters and learners of the partition's Raft group now.
    pub fn membership(&self) -> (Vec<NodeId>, Vec<NodeId>) {
        let m = self.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        (
            membership.voter_ids().collect(),
            membership.learner_ids().collect(),
        )
    }

    /// The leader epoch clients see: the current Raft term.
    pub fn leader_epoch(&self) -> i32 {
        self.raft.metrics().borrow().current_term as i32
    }

    /// Untiered batches from memory, with their offset and epoch rewritten for the wire.
    pub fn read(&self, batches: &[BatchLocation]) -> Bytes {
        let total: usize = batches.iter().map(|b| b.bytes as usize).sum();
        let mut out = BytesMut::with_capacity(total);
        for b in batches {
            write_with_offset(&mut out, &b.data, b.base_offset, b.leader_epoch);
        }
        out.freeze()
    }

    /// Everything a read plan names: tail batches, or a whole chunk.
    pub async fn read_plan(&self, plan: ReadPlan) -> Result<Bytes, String> {
        match plan {
            ReadPlan::Empty => Ok(Bytes::new()),
            ReadPlan::Tail(batches) => Ok(self.read(&batches)),
            ReadPlan::Chunk(chunk) => {
                let batches = self.tier.read_chunk(&chunk).await?;
                Ok(concat(batches.iter().map(|b| &b.data)))
            }
            ReadPlan::Page(page) => Err(format!(
                "manifest page {} must be opened before it is read",
                page.key
            )),
        }
    }

    /// The first chunk or tail batch whose max timestamp is at or after `timestamp`
    /// (ListOffsets by time), opening sealed manifest pages as needed.
    pub async fn find_timestamp(&self, timestamp: i64) -> Result<Option<ReadPlan>, String> {
        self.look_in_pages(|log, open| log.find_timestamp(timestamp, open))
            .await
    }

    /// Where the largest timestamp lives and its value (ListOffsets MAX_TIMESTAMP),
    /// opening sealed manifest pages as needed.
    pub async fn max_timestamp(&self) -> Result<Option<(ReadPlan, i64)>, String> {
        self.look_in_pages(|log, open| log.max_timestamp_plan(open))
            .await
    }

    /// Runs a manifest lookup that may answer "look inside this page": with the page that
    /// straddles the log start open from the start (its summary counts expired entries),
    /// then with each page it names open, until it answers a chunk or the tail. Every page
    /// after the straddling one is wholly live, so its summary is exact and the second look
    /// finds the entry inside it.
    async fn look_in_pages<T: PlanOf>(
        &self,
        lookup: impl Fn(&PartitionLog, OpenPages<'_>) -> Option<T>,
    ) -> Result<Option<T>, String> {
        let mut open: Vec<(PageRef, Arc<Vec<ChunkRef>>)> = Vec::new();
        let straddling = self.log.read().straddling_page().cloned();
        if let Some(p) = straddling {
            open.push((p.clone(), self.tier.page(&p).await?));
        }
        // The straddling page, then the one the answer lies in. Retention may move the log
        // start meanwhile, making another page straddle: each pass opens one more page,
        // so this ends within one pass per page.
        let passes = self.log.read().pages().len() + 2;
        for _ in 0..passes {
            let found = {
                let log = self.log.read();
                let refs: Vec<(&PageRef, &[ChunkRef])> =
                    open.iter().map(|(p, e)| (p, e.as_slice())).collect();
                lookup(&log, &refs)
            };
            match found.as_ref().map(PlanOf::plan) {
                Some(ReadPlan::Page(p)) if !open.iter().any(|(o, _)| o.key == p.key) => {
                    let p = p.clone();
                    let entries = self.tier.page(&p).await?;
                    open.push((p, entries));
                }
                _ => return Ok(found),
            }
        }
        Err("manifest lookup did not settle: a manifest page does not match its summary".into())
    }

    /// Batches from the one holding `offset`, up to `max_bytes`; with `first`, at least one
    /// batch even over the limit (KIP-74), so a consumer always makes progress.
    pub async fn read_at(
        &self,
        offset: i64,
        max_bytes: usize,
        first: bool,
    ) -> Result<Bytes, String> {
        let plan = {
            let log = self.log.read();
            log.plan_read(offset, if first { max_bytes.max(1) } else { max_bytes })
        };
        let (chunk, prev, next) = match plan {
            ReadPlan::Empty => return Ok(Bytes::new()),
            ReadPlan::Tail(batches) => {
                if !first
                    && batches
                        .first()
                        .is_some_and(|b| b.bytes as usize > max_bytes)
                {
                    return Ok(Bytes::new());
                }
                return Ok(self.read(&batches));
            }
            ReadPlan::Chunk(chunk) => {
                let log = self.log.read();
                let prev = log.chunk_for(chunk.base_offset - 1).cloned();
                let next = log.chunk_for(chunk.last_offset + 1).cloned();
                (chunk, prev, next)
            }
            ReadPlan::Page(page) => {
                let (prev, chunk, next) = self.tier.entry_in_page(&page, offset).await?;
                // The last entry of a page is followed by the next page or the open part.
                let next =
                    next.or_else(|| self.log.read().chunk_for(chunk.last_offset + 1).cloned());
                (chunk, prev, next)
            }
        };
        let batches = self.tier.read_chunk(&chunk).await?;
        // Read-ahead: a consumer reading tiered data sequentially wants the next object
        // next; start loading it into the cache while this one is served. The object
        // before this one it has read past: that one goes first.
        if let Some(prev) = prev {
            self.tier.cache().demote(&prev.key);
        }
        if let Some(next) = next {
            self.tier.prefetch(next);
        }
        let mut picked = Vec::new();
        let mut total = 0usize;
        for b in batches.iter().filter(|b| b.last_offset >= offset) {
            let over = total + b.data.len() > max_bytes;
            if over && (!picked.is_empty() || !first) {
                break;
            }
            total += b.data.len();
            picked.push(&b.data);
        }
        Ok(concat(picked.into_iter()))
    }
}

/// A lookup's answer that carries a read plan.
trait PlanOf {
    fn plan(&self) -> &ReadPlan;
}

impl PlanOf for ReadPlan {
    fn plan(&self) -> &ReadPlan {
        self
    }
}

impl PlanOf for (ReadPlan, i64) {
    fn plan(&self) -> &ReadPlan {
        &self.0
    }
}

fn concat<'a>(parts: impl Iterator<Item = &'a Bytes> + Clone) -> Bytes {
    let total: usize = parts.clone().map(|b| b.len()).sum();
    let mut out = BytesMut::with_capacity(total);
    for p in parts {
        out.extend_from_slice(p);
    }
    out.freeze()
}

/// Running partitions by (topic, partition).
pub struct Registry {
    node: Node,
    tier: Arc<Tier>,
    /// Kafka's `replica.lag.time.max.ms` (see [`InSync`]).
    replica_lag: Duration,
    partitions: RwLock<HashMap<(String, i32), Arc<Partition>>>,
}

impl Registry {
    pub fn new(node: Node, tier: Arc<Tier>, replica_lag: Duration) -> Arc<Registry> {
        Arc::new(Registry {
            node,
            tier,
            replica_lag,
            partitions: RwLock::new(HashMap::new()),
        })
    }

    pub fn get(&self, topic: &str, index: i32) -> Option<Arc<Partition>> {
        self.partitions
            .read()
            .get(&(topic.to_string(), index))
            .cloned()
    }

    /// A topic's config overrides, as the cluster metadata has them now.
    pub fn topic_configs(&self, topic: &str) -> std::collections::BTreeMap<String, String> {
        self.node
            .cluster()
            .topics
            .get(topic)
            .map(|t| t.configs.clone())
            .unwrap_or_default()
    }

    pub fn count(&self) -> usize {
        self.partitions.read().len()
    }

    pub fn all(&self) -> Vec<Arc<Partition>> {
        self.partitions.read().values().cloned().collect()
    }

    /// Starts and stops groups until the running set matches `meta`.
    pub async fn reconcile(&self, meta: &ClusterMetadata) -> Result<(), BootstrapError> {
        let node_id = self.node.node_id;
        for b in meta.brokers.values() {
            if let Some(addr) = &b.raft_addr {
                self.node.transport.learn_address(b.node_id, addr);
            }
        }
        let mut wanted: HashMap<(String, i32), PartitionMeta> = HashMap::new();
        // Per partition group: the Raft voters its leader last announced.
        let mut existing: HashMap<GroupId, &[NodeId]> = HashMap::new();
        let mut topic_ids: HashMap<String, uuid::Uuid> = HashMap::new();
        for (name, topic) in &meta.topics {
            topic_ids.insert(name.clone(), topic.id);
            for (i, p) in topic.partitions.iter().enumerate() {
                existing.insert(p.group, &p.voters);
                if p.replicas.contains(&node_id) {
                    wanted.insert((name.clone(), i as i32), p.clone());
                }
            }
        }
        let stale: Vec<Arc<Partition>> = {
            let map = self.partitions.read();
            map.iter()
                .filter(|(k, p)| wanted.get(*k).map(|w| w.group) != Some(p.group))
                // A replica moved away serves until the leader removed it from the group:
                // as this replica's log says, or, for one that was stopped or cut off
                // during the move (the leader does not replicate to a removed member, so
                // its log never says), as the leader announced. The leader announces its
                // voters without this node only once the joint configuration is
                // committed, so the others hold everything committed.
                .filter(|(_, p)| match existing.get(&p.group) {
                    None => true,
                    Some(announced) => {
                        let (voters, learners) = p.membership();
                        (!voters.contains(&node_id) && !learners.contains(&node_id))
                            || (!announced.is_empty() && !announced.contains(&node_id))
                    }
                })
                .map(|(_, p)| p.clone())
                .collect()
        };
        for p in stale {
            self.partitions.write().remove(&(p.topic.clone(), p.index));
            self.node.stop_group(p.group, &p.raft).await;
            if let Err(err) = self.node.wal.drop_group(p.group).await {
                tracing::warn!(group = p.group, %err, "drop deleted partition's wal state");
            }
            tracing::info!(topic = %p.topic, partition = p.index, group = p.group, "partition stopped");
        }
        for ((topic, index), pm) in wanted {
            if self.partitions.read().contains_key(&(topic.clone(), index)) {
                continue;
            }
            let sm = StateMachine::new(PartitionLog::default());
            let log = sm.state();
            let raft = self
                .node
                .start_group(pm.group, sm, self.node.partition_voters(pm.creators()))
                .await?;
            // No periodic snapshotter: a partition snapshots right after each tiering step
            // (tiering::Tier), when its untiered tail — which the snapshot carries — is
            // smallest. Until then its WAL entries hold the tail.
            let partition = Arc::new(Partition {
                topic_id: topic_ids.get(&topic).copied().unwrap_or_default(),
                topic: topic.clone(),
                index,
                group: pm.group,
                raft,
                log,
                tier: self.tier.clone(),
                moving: Default::default(),
                preferred_ready_since: Default::default(),
                in_sync: Default::default(),
                announcing: Default::default(),
                compression: Default::default(),
            });
            self.partitions.write().insert((topic, index), partition);
        }
        // Groups in the WAL that no topic owns any more (deleted while we were down).
        for group in self.node.wal.groups() {
            // Groups below FIRST_PARTITION_GROUP (metadata, offsets) are not partitions.
            if group >= FIRST_PARTITION_GROUP && !existing.contains_key(&group) {
                if let Err(err) = self.node.wal.drop_group(group).await {
                    tracing::warn!(group, %err, "drop orphaned wal group");
                }
            }
        }
        self.lead(meta);
        Ok(())
    }

    /// The leader's upkeep of each partition it leads: announce itself in the metadata,
    /// and move the Raft membership towards the replicas the metadata asks for.
    fn lead(&self, meta: &ClusterMetadata) {
        let node_id = self.node.node_id;
        for p in self.all().into_iter().filter(|p| p.is_leader(node_id)) {
            let Some(pm) = meta
                .topics
                .get(&p.topic)
                .and_then(|t| t.partitions.get(p.index as usize))
            else {
                continue;
            };
            let term = p.raft.metrics().borrow().current_term;
            let (voters, _) = p.membership();
            let isr = self.count_in_sync(&p, pm, meta);
            let stale = pm.leader != Some((node_id, term)) || pm.voters != voters || pm.isr != isr;
            // One announcement in flight per partition: while the metadata group is
            // unavailable, ticks must not pile up proposals.
            if stale && !p.announcing.swap(true, std::sync::atomic::Ordering::AcqRel) {
                let (node, p2) = (self.node.clone(), p.clone());
                let cmd = MetadataCommand::PartitionLeader {
                    group: p.group,
                    leader: node_id,
                    epoch: term,
                    voters: voters.clone(),
                    isr,
                };
                tokio::spawn(async move {
                    if let Err(err) = node.propose_metadata(&cmd).await {
                        tracing::debug!(%err, "announce partition leader");
                    }
                    p2.announcing
                        .store(false, std::sync::atomic::Ordering::Release);
                });
            }
            let mut want = pm.replicas.clone();
            want.sort_unstable();
            if voters == want {
                self.balance(&p, pm.replicas.first().copied());
                continue;
            }
            if p.moving.swap(true, std::sync::atomic::Ordering::AcqRel) {
                continue;
            }
            let addresses: Vec<(NodeId, String)> = want
                .iter()
                .map(|n| {
                    (
                        *n,
                        self.node.transport.address(*n, None).unwrap_or_default(),
                    )
                })
                .collect();
            tokio::spawn(async move {
                if let Err(err) = move_replicas(&p, &voters, addresses).await {
                    tracing::warn!(topic = %p.topic, partition = p.index, %err, "reassignment step failed; retrying");
                }
                p.moving.store(false, std::sync::atomic::Ordering::Release);
            });
        }
    }

    /// The leader's count of a partition's in-sync replicas now (fenced brokers excluded).
    fn count_in_sync(
        &self,
        p: &Partition,
        pm: &PartitionMeta,
        meta: &ClusterMetadata,
    ) -> Vec<NodeId> {
        let (voters, term, commit, matched) = {
            let m = p.raft.metrics();
            let m = m.borrow();
            let matched: HashMap<NodeId, Option<u64>> = m
                .replication
                .iter()
                .flatten()
                .map(|(n, l)| (*n, l.map(|l| l.index)))
                .collect();
            let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
            (
                voters,
                m.current_term,
                m.last_applied.map(|l| l.index),
                matched,
            )
        };
        let view = LeaderView {
            me: self.node.node_id,
            term,
            commit,
            voters: &voters,
            announced: &pm.isr,
        };
        let transport = &self.node.transport;
        let mut isr = p.in_sync.lock().update(
            std::time::Instant::now(),
            self.replica_lag,
            &view,
            |f| matched.get(&f).copied().flatten(),
            |f| transport.heard_since(f),
        );
        isr.retain(|n| !meta.fenced.contains(n) || *n == self.node.node_id);
        isr
    }

    /// The in-sync replicas of a partition as this node reports them: its own count when
    /// it leads, else what the leader last announced (all replicas before any announced),
    /// less the fenced brokers.
    pub fn in_sync(&self, topic: &str, index: i32) -> Vec<NodeId> {
        let meta = self.node.cluster();
        let Some(pm) = meta
            .topics
            .get(topic)
            .and_then(|t| t.partitions.get(index as usize))
        else {
            return Vec::new();
        };
        let counted = self
            .get(topic, index)
            .filter(|p| p.is_leader(self.node.node_id))
            .map(|p| p.in_sync.lock().current().to_vec())
            .filter(|isr| !isr.is_empty());
        let mut isr = counted.unwrap_or_else(|| {
            if pm.isr.is_empty() {
                pm.replicas.clone()
            } else {
                pm.isr.clone()
            }
        });
        isr.retain(|n| !meta.fenced.contains(n));
        isr
    }

    /// Follows metadata changes (and leadership, every second) for the life of the node.
    pub fn spawn_reconciler(self: &Arc<Self>) {
        let registry = self.clone();
        let mut rx = self.node.metadata.clone();
        tokio::spawn(async move {
            loop {
                let meta = rx.borrow_and_update().clone();
                if let Err(err) = registry.reconcile(&meta).await {
                    tracing::error!(%err, "reconcile partitions");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { return },
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
    }

    /// The leader of a partition and its epoch: from the local replica's Raft group when
    /// this node replicates it, else as the leader last announced it in the metadata.
    pub fn leader_of(&self, topic: &str, index: i32) -> Option<(NodeId, i32)> {
        let meta = self.node.cluster();
        // A fenced broker leads nothing, as far as clients are told, until a live replica
        // takes over (or it is heard from again).
        let live = |l: &NodeId| *l == self.node.node_id || !meta.fenced.contains(l);
        if let Some(p) = self.get(topic, index) {
            let (voters, _) = p.membership();
            if voters.contains(&self.node.node_id) {
                return p.leader().filter(live).map(|l| (l, p.leader_epoch()));
            }
        }
        let pm = meta.topics.get(topic)?.partitions.get(index as usize)?;
        // The announced leader, if still a replica: of the wanted ones, or of the voters it
        // announced (during a move, the old replicas lead until the new ones catch up).
        pm.leader
            .filter(|(l, _)| live(l))
            .filter(|(l, _)| {
                pm.replicas.contains(l) || pm.voters.contains(l) || self.get(topic, index).is_some()
            })
            .map(|(l, e)| (l, e as i32))
    }

    /// Waits until `topic` has all `partitions` running with a leader, or the timeout.
    pub async fn wait_ready(&self, topic: &str, partitions: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ready = (0..partitions as i32).all(|i| self.leader_of(topic, i).is_some());
            if ready {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn shutdown(&self) {
        for p in self.all() {
            self.node.stop_group(p.group, &p.raft).await;
        }
    }
}

impl Registry {
    /// Preferred-leader balancing: the first replica of a partition is its preferred
    /// leader (replica lists are spread over the nodes at creation, so leadership is
    /// too). When it has been a caught-up voter for a while — e.g. it came back after a
    /// crash — the current leader hands leadership back to it.
    fn balance(&self, p: &Arc<Partition>, preferred: Option<NodeId>) {
        const SETTLE: Duration = Duration::from_secs(5);
        let me = self.node.node_id;
        let ready = preferred.filter(|n| *n != me).filter(|n| {
            let m = p.raft.metrics();
            let m = m.borrow();
            let last = m.last_log_index;
            m.replication.as_ref().is_some_and(|r| {
                r.get(n)
                    .is_some_and(|matched| matched.map(|l| l.index) == last)
            })
        });
        let mut since = p.preferred_ready_since.lock();
        let Some(to) = ready else {
            *since = None;
            return;
        };
        let started = *since.get_or_insert_with(std::time::Instant::now);
        if started.elapsed() < SETTLE || p.moving.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        *since = None;
        let (p, transport) = (p.clone(), self.node.transport.clone());
        tokio::spawn(async move {
            let moved =
                chronik_metastore::network::hand_off(&transport, &p.raft, p.group, to).await;
            tracing::info!(topic = %p.topic, partition = p.index, to, moved, "handed leadership to the preferred replica");
            p.moving.store(false, std::sync::atomic::Ordering::Release);
        });
    }
}

/// How long one reassignment step waits for a new replica to catch up.
const LEARNER_CATCH_UP: Duration = Duration::from_secs(10);
/// A new replica this close to the leader's last log entry counts as caught up.
const LEARNER_LAG_ENTRIES: u64 = 1000;

/// One step of a reassignment, run by the partition's leader: new replicas join as
/// learners (each restores the newest snapshot from the bucket and receives only the tail
/// over Raft) and, once caught up, the voters are replaced in one joint-consensus change.
async fn move_replicas(
    p: &Partition,
    voters: &[NodeId],
    want: Vec<(NodeId, String)>,
) -> Result<(), String> {
    for (node, addr) in want.iter().filter(|(n, _)| !voters.contains(n)) {
        tracing::info!(topic = %p.topic, partition = p.index, node, "adding replica");
        p.raft
            .add_learner(*node, BasicNode::new(addr), false)
            .await
            .map_err(|e| format!("add node {node} as learner: {e}"))?;
        // openraft's own wait ("blocking") gives up after half a second and reports
        // success anyway, which let a dead node replace a healthy voter. The voters change
        // only once the new replica has really caught up; until then the old ones serve,
        // and the reconciler retries this step.
        let caught_up = p
            .raft
            .wait(Some(LEARNER_CATCH_UP))
            .metrics(
                |m| {
                    m.replication.as_ref().is_some_and(|r| {
                        // None until the node has answered at least once.
                        r.get(node)
                            .and_then(|matched| matched.as_ref())
                            .is_some_and(|l| {
                                l.index + LEARNER_LAG_ENTRIES >= m.last_log_index.unwrap_or(0)
                            })
                    })
                },
                "new replica caught up",
            )
            .await;
        if caught_up.is_err() {
            return Err(format!(
                "node {node} has not caught up within {}s (is it running?); the replicas stay as they are until it does",
                LEARNER_CATCH_UP.as_secs()
            ));
        }
    }
    let members: std::collections::BTreeSet<NodeId> = want.iter().map(|(n, _)| *n).collect();
    p.raft
        .change_membership(members.clone(), false)
        .await
        .map_err(|e| format!("change voters to {members:?}: {e}"))?;
    tracing::info!(topic = %p.topic, partition = p.index, voters = ?members, "replicas moved");
    Ok(())
}
