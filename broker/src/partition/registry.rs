//! The partition groups running on this node, kept in step with the cluster metadata.
//!
//! A reconcile loop watches the metadata group: partitions assigned to this node get a Raft
//! group started (recovering from the WAL when it has state), partitions of deleted topics
//! get their group shut down and a tombstone written to the WAL.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use openraft::{EntryPayload, ServerState};
use parking_lot::RwLock;

use chronik_bootstrap::{BootstrapError, Node};
use chronik_metastore::metadata::ClusterMetadata;
use chronik_metastore::state_machine::StateMachine;
use chronik_metastore::types::{GroupId, NodeId, Raft, FIRST_PARTITION_GROUP};
use chronik_metastore::wal::WalLogStore;

use super::batch::write_with_offset;
use super::log::{BatchLocation, PartitionLog, APPEND_BATCH_POS};

/// One partition replica on this node.
pub struct Partition {
    pub topic: String,
    pub index: i32,
    pub group: GroupId,
    pub raft: Raft,
    pub log: Arc<RwLock<PartitionLog>>,
    store: WalLogStore,
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

    /// Reads stored batches and rewrites their offset and epoch for the wire.
    pub async fn read(&self, batches: &[BatchLocation]) -> Result<Bytes, String> {
        let total: usize = batches.iter().map(|b| b.bytes as usize).sum();
        let mut out = BytesMut::with_capacity(total);
        for b in batches {
            let entry = self
                .store
                .read_entry(b.log_index)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| {
                    format!("log entry {} of group {} is gone", b.log_index, self.group)
                })?;
            let EntryPayload::Normal(cmd) = entry.payload else {
                return Err(format!("log entry {} is not an append", b.log_index));
            };
            let end = APPEND_BATCH_POS + b.bytes as usize;
            if cmd.0.len() < end {
                return Err(format!(
                    "log entry {} is shorter than its batch",
                    b.log_index
                ));
            }
            let batch = cmd.0.slice(APPEND_BATCH_POS..end);
            write_with_offset(&mut out, &batch, b.base_offset, b.leader_epoch);
        }
        Ok(out.freeze())
    }
}

/// Running partitions by (topic, partition).
pub struct Registry {
    node: Node,
    partitions: RwLock<HashMap<(String, i32), Arc<Partition>>>,
}

impl Registry {
    pub fn new(node: Node) -> Arc<Registry> {
        Arc::new(Registry {
            node,
            partitions: RwLock::new(HashMap::new()),
        })
    }

    pub fn get(&self, topic: &str, index: i32) -> Option<Arc<Partition>> {
        self.partitions
            .read()
            .get(&(topic.to_string(), index))
            .cloned()
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
        for (name, topic) in &meta.topics {
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
            let partition = Arc::new(Partition {
                topic: topic.clone(),
                index,
                group,
                raft,
                log,
                store: self.node.wal.log_store(group),
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
