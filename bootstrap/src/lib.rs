//! Node start-up: recover local state and start the node's Raft groups.
//!
//! Start-up order: open (and recover) the node WAL, start the Raft transport, start the
//! metadata group (group 0), make sure it has a leader and a cluster id, and hand the broker
//! a [`Node`] from which it starts one Raft group per partition this node replicates.
//!
//! Who initialises a group: the node-wide groups (metadata, committed offsets) are
//! initialised by the lowest node id of `--peers` with every peer as a voter; a partition
//! group by the first of the replicas it was created with. A group initialised elsewhere
//! reaches a node through the transport. A single node is the one-voter case of the same
//! code. A node that is no voter of the metadata group (added to a running cluster) asks a
//! peer to add it as a learner, so that it follows the metadata.
//!
//! Every group snapshots through [`snapshots::NodeSnapshots`] (a local file plus a copy in
//! the bucket) and starts from the newest snapshot it finds: the local one after a restart,
//! the bucket's when the data directory is gone. A group whose state machine holds its whole
//! state (metadata, committed offsets) gets a periodic snapshotter: it snapshots when the
//! group has applied new entries, and openraft then purges the WAL up to it. Partition
//! groups opt in once tiering keeps their data out of the log (their fetch path still reads
//! batches from the WAL today).

pub mod fencing;
pub mod liveness;
pub mod lock;
pub mod snapshots;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chronik_metastore::metadata::{
    decode_response, encode_command, ClusterMetadata, MetadataCommand, MetadataError,
    MetadataResponse, MetadataState,
};
use chronik_metastore::network::wire::ProposeError;
use chronik_metastore::network::{server, CallError, Transport};
use chronik_metastore::snapshot_store::SnapshotStore;
use chronik_metastore::state_machine::{ApplyState, StateMachine};
use chronik_metastore::types::Vote;
use chronik_metastore::types::{GroupId, NodeId, Raft, METADATA_GROUP};
use chronik_metastore::wal::{Wal, WalConfig, WalError};
use chronik_tiering::Bucket;
use openraft::error::{InitializeError, RaftError};
use openraft::storage::RaftLogStorage;
use openraft::{BasicNode, ServerState, SnapshotPolicy};
use snapshots::NodeSnapshots;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("open the WAL in {dir}: {source}")]
    Wal {
        dir: PathBuf,
        #[source]
        source: WalError,
    },
    #[error("start raft group {group}: {message}")]
    Raft { group: GroupId, message: String },
    #[error("the metadata group has no leader after {0:?}: in a cluster, a majority of --peers must be running and reachable at their raft addresses (the log names the peers that could not be reached)")]
    NoLeader(Duration),
    #[error("metadata proposal failed: {0}")]
    Propose(String),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("wal recovery task failed: {0}")]
    Join(String),
    #[error("{0}")]
    Fenced(String),
}

/// Raft timing for every group on the node.
#[derive(Clone, Debug)]
pub struct RaftTimings {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
}

impl Default for RaftTimings {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
        }
    }
}

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_id: NodeId,
    pub wal: WalConfig,
    pub raft: RaftTimings,
    /// Local copies of group snapshots.
    pub snapshot_dir: PathBuf,
    pub bucket: Bucket,
    /// How often a group with new entries is snapshotted (and its log purged).
    pub snapshot_interval_ms: u64,
    /// Snapshots kept per group in the bucket.
    pub snapshots_kept: usize,
    /// The cluster incarnation that owns the bucket (see [`fencing`]).
    pub incarnation: String,
    /// `--peers`: every node of the cluster (this one included), by id; empty for a
    /// single node.
    pub peers: BTreeMap<NodeId, String>,
    /// Where this node's Raft transport listens (`--raft-addr`).
    pub raft_addr: Option<String>,
}

/// A running node: its WAL, its metadata group, and what it needs to start more groups.
#[derive(Clone)]
pub struct Node {
    pub node_id: NodeId,
    pub wal: Wal,
    pub metadata_raft: Raft,
    pub metadata: watch::Receiver<Arc<ClusterMetadata>>,
    pub snapshots: Arc<NodeSnapshots>,
    pub bucket: Bucket,
    pub transport: Arc<Transport>,
    /// Voters of the node-wide groups (metadata, offsets) when they are initialised.
    voters: BTreeMap<NodeId, BasicNode>,
    raft_config: Arc<openraft::Config>,
    snapshot_interval: Duration,
}

impl Node {
    /// Opens the WAL, starts the transport (serving on `raft_listener`) and the metadata
    /// group, and waits until the metadata group has a leader.
    pub async fn start(
        config: NodeConfig,
        raft_listener: Option<tokio::net::TcpListener>,
    ) -> Result<Node, BootstrapError> {
        let wal_config = config.wal.clone();
        let dir = wal_config.dir.clone();
        let wal = tokio::task::spawn_blocking(move || Wal::open(wal_config))
            .await
            .map_err(|e| BootstrapError::Join(e.to_string()))?
            .map_err(|source| BootstrapError::Wal { dir, source })?;
        let raft_config = Arc::new(
            openraft::Config {
                cluster_name: "chronik".into(),
                heartbeat_interval: config.raft.heartbeat_interval_ms,
                election_timeout_min: config.raft.election_timeout_min_ms,
                election_timeout_max: config.raft.election_timeout_max_ms,
                // Data lives in the log until tiering publishes it; snapshots are taken by
                // the tiering loop, never by a log-count policy.
                snapshot_policy: SnapshotPolicy::Never,
                // A snapshot holds the whole state (and a partition's untiered tail), so the
                // log it covers is not needed any more.
                max_in_snapshot_log_to_keep: 0,
                max_payload_entries: 256,
                ..Default::default()
            }
            .validate()
            .map_err(|e| BootstrapError::Raft {
                group: METADATA_GROUP,
                message: e.to_string(),
            })?,
        );
        let snapshots = Arc::new(NodeSnapshots::new(
            config.snapshot_dir.clone(),
            &config.bucket,
            config.snapshots_kept,
            config.incarnation.clone(),
        ));
        let snapshot_interval = Duration::from_millis(config.snapshot_interval_ms.max(10));
        let transport = Transport::new(
            config.node_id,
            config.incarnation.clone(),
            config.peers.clone(),
        );
        transport.spawn_election_gate(
            Duration::from_millis(raft_config.heartbeat_interval),
            Duration::from_millis(raft_config.election_timeout_min),
            Duration::from_millis(raft_config.election_timeout_max),
        );
        if let Some(listener) = raft_listener {
            let transport = transport.clone();
            tokio::spawn(async move {
                if let Err(err) = server::serve(listener, transport).await {
                    tracing::error!(%err, "raft transport stopped");
                }
            });
        }
        if config.peers.len() > 1 {
            let uploader = transport.clone();
            snapshots.set_upload_filter(Arc::new(move |group| uploader.is_leader(group)));
        }
        spawn_upload_retries(&snapshots, snapshot_interval);
        let voters: BTreeMap<NodeId, BasicNode> = if config.peers.len() > 1 {
            config
                .peers
                .iter()
                .map(|(id, addr)| (*id, BasicNode::new(addr)))
                .collect()
        } else {
            BTreeMap::from([(
                config.node_id,
                BasicNode::new(config.raft_addr.clone().unwrap_or_default()),
            )])
        };
        let (state, metadata) = MetadataState::new();
        let initial = (voters.keys().next() == Some(&config.node_id)).then(|| voters.clone());
        let metadata_raft = start_group(
            config.node_id,
            &wal,
            &raft_config,
            &snapshots,
            &transport,
            METADATA_GROUP,
            StateMachine::new(state),
            initial,
        )
        .await?;
        spawn_snapshotter(metadata_raft.clone(), snapshot_interval);
        let node = Node {
            node_id: config.node_id,
            wal,
            metadata_raft,
            metadata,
            snapshots,
            bucket: config.bucket.clone(),
            transport,
            voters,
            raft_config,
            snapshot_interval,
        };
        node.serve_joins();
        let timeout = Duration::from_secs(60);
        node.join_metadata(&config, timeout).await?;
        // Everything recovered from the WAL is applied before the node serves metadata.
        let last_log = node.metadata_raft.metrics().borrow().last_log_index;
        node.metadata_raft
            .wait(Some(timeout))
            .applied_index_at_least(last_log, "recover metadata")
            .await
            .map_err(|e| BootstrapError::Raft {
                group: METADATA_GROUP,
                message: e.to_string(),
            })?;
        Ok(node)
    }

    /// Starts (or recovers) one Raft group with the given state machine. A group with no
    /// state yet is initialised with `initial` as its voters, when given; otherwise it
    /// waits to be contacted by the group's leader.
    pub async fn start_group<A: ApplyState>(
        &self,
        group: GroupId,
        state_machine: StateMachine<A>,
        initial: Option<BTreeMap<NodeId, BasicNode>>,
    ) -> Result<Raft, BootstrapError> {
        start_group(
            self.node_id,
            &self.wal,
            &self.raft_config,
            &self.snapshots,
            &self.transport,
            group,
            state_machine,
            initial,
        )
        .await
    }

    /// The voters a node-wide group (metadata, offsets) is initialised with, if this node
    /// is the one that initialises them (the lowest id of the peer list).
    pub fn node_wide_voters(&self) -> Option<BTreeMap<NodeId, BasicNode>> {
        (self.voters.keys().next() == Some(&self.node_id)).then(|| self.voters.clone())
    }

    /// Whether this node is a voter of the metadata group (and so of the offsets group):
    /// false for a node added to a running cluster, which follows as a learner.
    pub fn is_metadata_voter(&self) -> bool {
        let m = self.metadata_raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .voter_ids()
            .any(|v| v == self.node_id)
    }

    /// The membership of a partition group created with `replicas`, if this node is the
    /// one to initialise it (the first of them).
    pub fn partition_voters(&self, replicas: &[NodeId]) -> Option<BTreeMap<NodeId, BasicNode>> {
        if replicas.first() != Some(&self.node_id) {
            return None;
        }
        Some(
            replicas
                .iter()
                .map(|id| {
                    let addr = self.transport.address(*id, None).unwrap_or_default();
                    (*id, BasicNode::new(addr))
                })
                .collect(),
        )
    }

    /// Stops a group and stops routing RPCs to it.
    pub async fn stop_group(&self, group: GroupId, raft: &Raft) {
        self.transport.unregister(group);
        let _ = raft.shutdown().await;
    }

    /// Answers other nodes' requests to follow the metadata group: the leader adds them as
    /// learners, anyone else forwards the request to the leader.
    fn serve_joins(&self) {
        let raft = self.metadata_raft.clone();
        let transport = Arc::downgrade(&self.transport);
        self.transport.set_join_handler(Arc::new(move |node, addr| {
            let raft = raft.clone();
            let transport = transport.clone();
            Box::pin(async move {
                let (state, leader, known) = {
                    let m = raft.metrics();
                    let m = m.borrow();
                    (
                        m.state,
                        m.current_leader,
                        m.membership_config.membership().get_node(&node).is_some(),
                    )
                };
                if known {
                    return Ok(());
                }
                if state == ServerState::Leader {
                    tracing::info!(node, %addr, "adding node as a learner of the metadata group");
                    return raft
                        .add_learner(node, BasicNode::new(addr), false)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string());
                }
                let (Some(leader), Some(transport)) = (leader, transport.upgrade()) else {
                    return Err("the metadata group has no leader yet".to_string());
                };
                transport
                    .join(leader, node, &addr)
                    .await
                    .map_err(|e| e.to_string())
            })
        }));
    }

    /// Waits until the metadata group has a leader. A node the group does not know (new to
    /// a running cluster) asks its peers to add it as a learner meanwhile.
    async fn join_metadata(
        &self,
        config: &NodeConfig,
        timeout: Duration,
    ) -> Result<(), BootstrapError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut asked = false;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                return Err(BootstrapError::NoLeader(timeout));
            }
            let step = remaining.min(Duration::from_secs(2));
            if wait_leader(&self.metadata_raft, step).await.is_some() {
                let m = self.metadata_raft.metrics().borrow().clone();
                if m.membership_config
                    .membership()
                    .get_node(&self.node_id)
                    .is_some()
                {
                    return Ok(());
                }
            }
            // The address the others reach this node at: its --peers entry.
            let Some(addr) = config
                .peers
                .get(&self.node_id)
                .or(config.raft_addr.as_ref())
                .map(String::as_str)
            else {
                continue;
            };
            for peer in config.peers.keys().filter(|p| **p != self.node_id) {
                match self.transport.join(*peer, self.node_id, addr).await {
                    Ok(()) => {
                        if !asked {
                            tracing::info!(via = peer, "asked the cluster to add this node");
                        }
                        asked = true;
                        break;
                    }
                    // Another cluster's node, or a peer list pointing at the wrong node:
                    // waiting cannot fix that.
                    Err(err @ CallError::Misconfigured { .. }) => {
                        return Err(BootstrapError::Fenced(err.to_string()))
                    }
                    Err(err) => {
                        tracing::info!(peer, %err, "waiting for the cluster's metadata leader")
                    }
                }
            }
        }
    }

    /// Snapshots `raft` every snapshot interval in which it applied new entries, letting
    /// openraft purge its log. Only for groups whose snapshot holds their whole state.
    pub fn spawn_snapshotter(&self, raft: &Raft) {
        spawn_snapshotter(raft.clone(), self.snapshot_interval);
    }

    /// Proposes a metadata command through the metadata leader (forwarded when this node
    /// is not it) and returns its applied result.
    pub async fn propose_metadata(
        &self,
        command: &MetadataCommand,
    ) -> Result<MetadataResponse, BootstrapError> {
        match self
            .transport
            .propose(&self.metadata_raft, METADATA_GROUP, encode_command(command))
            .await
        {
            Ok(resp) => Ok(decode_response(&resp)),
            Err(ProposeError::NotLeader(leader)) => Err(BootstrapError::Propose(format!(
                "the metadata group has no reachable leader (last known: {leader:?})"
            ))),
            Err(e) => Err(BootstrapError::Propose(e.to_string())),
        }
    }

    /// The metadata group's leader (the controller Kafka clients are told of), if known.
    pub fn metadata_leader(&self) -> Option<NodeId> {
        leader_of(&self.metadata_raft)
    }

    /// The current cluster metadata.
    pub fn cluster(&self) -> Arc<ClusterMetadata> {
        self.metadata.borrow().clone()
    }

    /// Shuts down the metadata group (partition groups are shut down by their owner).
    pub async fn shutdown(&self) {
        self.stop_group(METADATA_GROUP, &self.metadata_raft).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn start_group<A: ApplyState>(
    node_id: NodeId,
    wal: &Wal,
    raft_config: &Arc<openraft::Config>,
    snapshots: &Arc<NodeSnapshots>,
    transport: &Arc<Transport>,
    group: GroupId,
    state_machine: StateMachine<A>,
    initial: Option<BTreeMap<NodeId, BasicNode>>,
) -> Result<Raft, BootstrapError> {
    let raft_err = |message: String| BootstrapError::Raft { group, message };
    let store: Arc<dyn SnapshotStore> = snapshots.clone();
    let state_machine = state_machine.with_store(group, store.clone());
    let mut log_store = wal.log_store(group);
    // A group with state in the local WAL (a vote, log entries) restarts from its local
    // snapshot only: a newer snapshot from the bucket, written by another replica in a
    // later term, would contradict the vote and log this node already has. Only a group
    // with no local state at all (a wiped or new data directory) restores from the bucket.
    let local_state = log_store
        .read_vote()
        .await
        .map_err(|e| raft_err(e.to_string()))?
        .is_some()
        || log_store
            .get_log_state()
            .await
            .map_err(|e| raft_err(e.to_string()))?
            .last_log_id
            .is_some();
    let snapshot = if local_state {
        snapshots.load_local(group).await.map_err(raft_err)?
    } else {
        let snapshot = store.load(group).await.map_err(raft_err)?;
        if let Some(snapshot) = &snapshot {
            // Entries appended from here on follow this snapshot: keep it locally before
            // there are any, or a restart would find a log that starts after nothing.
            snapshots
                .keep_local(group, snapshot)
                .await
                .map_err(raft_err)?;
        }
        snapshot
    };
    if let Some(snapshot) = snapshot {
        let covered = state_machine
            .restore(&snapshot.to_bytes())
            .map_err(raft_err)?;
        // A group restored onto an empty log (a wiped or new data directory) must not
        // start an election in a term older than the entries its snapshot covers.
        let vote = log_store
            .read_vote()
            .await
            .map_err(|e| raft_err(e.to_string()))?;
        if let (None, Some(covered)) = (vote, covered) {
            log_store
                .save_vote(&restored_vote(node_id, covered.leader_id))
                .await
                .map_err(|e| raft_err(e.to_string()))?;
        }
    }
    let raft = Raft::new(
        node_id,
        raft_config.clone(),
        transport.network(group),
        log_store,
        state_machine,
    )
    .await
    .map_err(|e| raft_err(e.to_string()))?;
    transport.register(group, raft.clone());
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| raft_err(e.to_string()))?;
    if let (false, Some(members)) = (initialized, initial) {
        match raft.initialize(members).await {
            Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
            Err(e) => return Err(raft_err(e.to_string())),
        }
    }
    Ok(raft)
}

/// The vote a group restored from the bucket onto an empty log starts with, given the
/// leader of the last entry its snapshot covers.
///
/// - Another node: its vote in that term, as seen (committed), so that this node does not
///   campaign in a term older than its snapshot, nor compete with a live leader of it.
/// - This node itself (it led the group before its disk was lost): a vote for itself
///   that is *not* committed. A committed vote for itself makes openraft start it as
///   that term's leader, with only the snapshot's entries: the followers' later entries
///   of the same term, acknowledged to producers, would be overwritten by new ones
///   under the same log ids. Uncommitted, it starts as a follower, and the next leader
///   (one with the whole log) brings it up to date.
pub fn restored_vote(node_id: NodeId, leader: openraft::LeaderId<NodeId>) -> Vote {
    if leader.node_id == node_id {
        Vote::new(leader.term, node_id)
    } else {
        Vote::new_committed(leader.term, leader.node_id)
    }
}

/// The group's leader as this node knows it: itself when it leads, else the leader it
/// last heard from.
pub fn leader_of(raft: &Raft) -> Option<NodeId> {
    let m = raft.metrics();
    let m = m.borrow();
    if m.state == ServerState::Leader {
        Some(m.id)
    } else {
        m.current_leader
    }
}

/// The term in which this node leads the group, if it leads it now.
pub fn leading_term(raft: &Raft) -> Option<u64> {
    let m = raft.metrics();
    let m = m.borrow();
    (m.state == ServerState::Leader).then_some(m.current_term)
}

/// Returns once this node no longer leads the group in `term` (it stepped down, or leads
/// a later term). A write proposed in `term` that has not answered by then may never
/// answer: a deposed leader's uncommitted entries wait until the next leader's log
/// overwrites them, so callers answer "not leader" instead of waiting for their timeout,
/// as Kafka completes a deposed leader's delayed produces.
pub async fn deposed(raft: &Raft, term: u64) {
    let mut rx = raft.metrics();
    loop {
        {
            let m = rx.borrow_and_update();
            if m.state != ServerState::Leader || m.current_term != term {
                return;
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Why [`write_as_leader`] has no answer.
#[derive(Debug, thiserror::Error)]
pub enum LeaderWriteError {
    #[error("this node does not lead the group")]
    NotLeader,
    #[error("this node stopped leading the group before the entry committed")]
    Deposed,
    #[error(transparent)]
    Raft(Box<RaftError<NodeId, openraft::error::ClientWriteError<NodeId, BasicNode>>>),
}

/// Proposes `cmd` as the group's leader and waits until it is applied, or until this node
/// stops leading in the term it proposed in (see [`deposed`]).
pub async fn write_as_leader(
    raft: &Raft,
    cmd: chronik_metastore::types::Command,
) -> Result<
    openraft::raft::ClientWriteResponse<chronik_metastore::types::TypeConfig>,
    LeaderWriteError,
> {
    let term = leading_term(raft).ok_or(LeaderWriteError::NotLeader)?;
    tokio::select! {
        biased;
        w = raft.client_write(cmd) => w.map_err(|e| LeaderWriteError::Raft(Box::new(e))),
        _ = deposed(raft, term) => Err(LeaderWriteError::Deposed),
    }
}

/// Waits until the group has a leader (any node) and returns its id; `None` on timeout.
pub async fn wait_leader(raft: &Raft, timeout: Duration) -> Option<NodeId> {
    let mut rx = raft.metrics();
    let wait = async {
        loop {
            let leader = {
                let m = rx.borrow_and_update();
                if m.state == ServerState::Leader {
                    Some(m.id)
                } else {
                    m.current_leader
                }
            };
            if leader.is_some() {
                return leader;
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    };
    tokio::time::timeout(timeout, wait).await.ok().flatten()
}

/// Retries failed snapshot uploads every `interval` for as long as the node's snapshot
/// store is alive.
fn spawn_upload_retries(snapshots: &Arc<NodeSnapshots>, interval: Duration) {
    let weak = Arc::downgrade(snapshots);
    tokio::spawn(async move {
        loop {
            let Some(snapshots) = weak.upgrade() else {
                return;
            };
            snapshots.wait_for_uploads(interval).await;
            drop(snapshots);
            let Some(snapshots) = weak.upgrade() else {
                return;
            };
            snapshots.retry_pending_uploads().await;
        }
    });
}

/// Snapshots `raft` every `interval` in which it applied new entries; openraft then purges
/// the log up to the snapshot. Ends when the group shuts down.
fn spawn_snapshotter(raft: Raft, interval: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (applied, snapshot, running) = {
                let m = raft.metrics();
                let m = m.borrow();
                (
                    m.last_applied.map(|l| l.index),
                    m.snapshot.map(|l| l.index),
                    m.running_state.is_ok(),
                )
            };
            if !running {
                return;
            }
            if applied > snapshot && raft.trigger().snapshot().await.is_err() {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_restored_from_the_bucket_never_resumes_its_own_leadership() {
        // It led term 4 before its disk was lost: it must come back as a follower.
        let own = restored_vote(1, openraft::LeaderId::new(4, 1));
        assert!(!own.is_committed());
        assert_eq!(own.leader_id(), &openraft::LeaderId::new(4, 1));
        // Another node led: that leadership is recorded as seen.
        let other = restored_vote(1, openraft::LeaderId::new(4, 2));
        assert!(other.is_committed());
        assert_eq!(other.leader_id(), &openraft::LeaderId::new(4, 2));
    }
}
