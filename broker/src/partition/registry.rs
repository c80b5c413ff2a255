//! The partition groups running on this node, kept in step with the cluster metadata.
//!
//! A reconcile loop watches the metadata group: partitions assigned to this node get a Raft
//! group started (recovering from the WAL when it has state), partitions of deleted topics
//! get their group shut down and a tombstone written to the WAL.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use openraft::ServerState;
use parking_lot::RwLock;

use chronik_bootstrap::{BootstrapError, Node};
use chronik_metastore::metadata::ClusterMetadata;
use chronik_metastore::state_machine::StateMachine;
use chronik_metastore::types::{GroupId, NodeId, Raft, FIRST_PARTITION_GROUP};

use super::batch::write_with_offset;
use super::log::{BatchLocation, PartitionLog, ReadPlan};
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
}

impl Partition {
    pub fn leader(&self) -> Option<NodeId> {
        let m = self.raft.metrics();
        let m = m.borrow();
        if m.state == ServerState::Leader {
            Some(m.id)
        } else {
            m.current_leader
        }
    }

    pub fn is_leader(&self, node: NodeId) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.id == node
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
        }
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
        match plan {
            ReadPlan::Empty => Ok(Bytes::new()),
            ReadPlan::Tail(batches) => {
                if !first
                    && batches
                        .first()
                        .is_some_and(|b| b.bytes as usize > max_bytes)
                {
                    return Ok(Bytes::new());
                }
                Ok(self.read(&batches))
            }
            ReadPlan::Chunk(chunk) => {
                let batches = self.tier.read_chunk(&chunk).await?;
                // Read-ahead: a consumer reading tiered data sequentially wants the next
                // object next; start loading it into the cache while this one is served.
                let next = self.log.read().chunk_for(chunk.last_offset + 1).cloned();
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
    partitions: RwLock<HashMap<(String, i32), Arc<Partition>>>,
}

impl Registry {
    pub fn new(node: Node, tier: Arc<Tier>) -> Arc<Registry> {
        Arc::new(Registry {
            node,
            tier,
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
        let mut wanted: HashMap<(String, i32), GroupId> = HashMap::new();
        let mut topic_ids: HashMap<String, uuid::Uuid> = HashMap::new();
        for (name, topic) in &meta.topics {
            topic_ids.insert(name.clone(), topic.id);
            for (i, p) in topic.partitions.iter().enumerate() {
                if p.replicas.contains(&node_id) {
                    wanted.insert((name.clone(), i as i32), p.group);
                }
            }
        }
        let stale: Vec<Arc<Partition>> = {
            let map = self.partitions.read();
            map.iter()
                .filter(|(k, p)| wanted.get(*k) != Some(&p.group))
                .map(|(_, p)| p.clone())
                .collect()
        };
        for p in stale {
            self.partitions.write().remove(&(p.topic.clone(), p.index));
            let _ = p.raft.shutdown().await;
            if let Err(err) = self.node.wal.drop_group(p.group).await {
                tracing::warn!(group = p.group, %err, "drop deleted partition's wal state");
            }
            tracing::info!(topic = %p.topic, partition = p.index, group = p.group, "partition stopped");
        }
        for ((topic, index), group) in wanted {
            if self.partitions.read().contains_key(&(topic.clone(), index)) {
                continue;
            }
            let sm = StateMachine::new(PartitionLog::default());
            let log = sm.state();
            let raft = self.node.start_group(group, sm).await?;
            // No periodic snapshotter: a partition snapshots right after each tiering step
            // (tiering::Tier), when its untiered tail — which the snapshot carries — is
            // smallest. Until then its WAL entries hold the tail.
            let partition = Arc::new(Partition {
                topic_id: topic_ids.get(&topic).copied().unwrap_or_default(),
                topic: topic.clone(),
                index,
                group,
                raft,
                log,
                tier: self.tier.clone(),
            });
            self.partitions.write().insert((topic, index), partition);
        }
        // Groups in the WAL that no topic owns any more (deleted while we were down).
        let known: Vec<GroupId> = meta
            .topics
            .values()
            .flat_map(|t| t.partitions.iter().map(|p| p.group))
            .collect();
        for group in self.node.wal.groups() {
            // Groups below FIRST_PARTITION_GROUP (metadata, offsets) are not partitions.
            if group >= FIRST_PARTITION_GROUP && !known.contains(&group) {
                if let Err(err) = self.node.wal.drop_group(group).await {
                    tracing::warn!(group, %err, "drop orphaned wal group");
                }
            }
        }
        Ok(())
    }

    /// Follows metadata changes for the life of the node.
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
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// Waits until `topic` has all `partitions` running with a leader, or the timeout.
    pub async fn wait_ready(&self, topic: &str, partitions: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ready = (0..partitions as i32)
                .all(|i| self.get(topic, i).is_some_and(|p| p.leader().is_some()));
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
            let _ = p.raft.shutdown().await;
        }
    }
}
