//! AlterPartitionReassignments and ListPartitionReassignments.
//!
//! A reassignment only changes the wanted replica list in the metadata; the partition's
//! leader then adds the new replicas as Raft learners (each restores the newest snapshot
//! from the bucket and receives only the tail), and swaps the voters once they caught up
//! (see `partition::registry`). It is in progress while the voters the leader announced
//! differ from the wanted replicas.

use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, BrokerId,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, ResponseKind,
};

use chronik_metastore::metadata::{MetadataCommand, PartitionMeta};
use chronik_metastore::types::NodeId;

use super::{str_bytes, topic_name};
use crate::broker::Broker;
use crate::errors::code;

fn ids(nodes: &[NodeId]) -> Vec<BrokerId> {
    nodes.iter().map(|n| BrokerId(*n as i32)).collect()
}

impl Broker {
    pub(crate) async fn alter_partition_reassignments(
        &self,
        req: AlterPartitionReassignmentsRequest,
        version: i16,
    ) -> ResponseKind {
        let mut resp = AlterPartitionReassignmentsResponse::default();
        if version >= 1 {
            resp.allow_replication_factor_change = req.allow_replication_factor_change;
        }
        let allow_rf_change = version < 1 || req.allow_replication_factor_change;
        for t in req.topics {
            let name = t.name.0.to_string();
            let mut tr = ReassignableTopicResponse::default();
            tr.name = t.name.clone();
            for p in t.partitions {
                let (error, message) = match self
                    .reassign_one(&name, p.partition_index, p.replicas, allow_rf_change)
                    .await
                {
                    Ok(()) => (code::NONE, None),
                    Err((c, m)) => (c, Some(str_bytes(m))),
                };
                let mut pr = ReassignablePartitionResponse::default();
                pr.partition_index = p.partition_index;
                pr.error_code = error;
                pr.error_message = message;
                tr.partitions.push(pr);
            }
            resp.responses.push(tr);
        }
        ResponseKind::AlterPartitionReassignments(resp)
    }

    async fn reassign_one(
        &self,
        topic: &str,
        partition: i32,
        replicas: Option<Vec<BrokerId>>,
        allow_rf_change: bool,
    ) -> Result<(), super::topics::Failure> {
        let meta = self.node.cluster();
        let current: PartitionMeta = meta
            .topics
            .get(topic)
            .and_then(|t| {
                usize::try_from(partition)
                    .ok()
                    .and_then(|i| t.partitions.get(i))
            })
            .cloned()
            .ok_or_else(|| {
                (
                    code::UNKNOWN_TOPIC_OR_PARTITION,
                    format!("topic {topic} has no partition {partition}"),
                )
            })?;
        let replicas: Vec<NodeId> = match replicas {
            Some(r) => r
                .iter()
                .map(|b| {
                    NodeId::try_from(b.0).map_err(|_| {
                        (
                            code::INVALID_REPLICA_ASSIGNMENT,
                            format!("{} is not a broker id", b.0),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
            // Cancel: keep the replicas the group has now.
            None => {
                if !current.reassigning() {
                    return Err((
                        code::NO_REASSIGNMENT_IN_PROGRESS,
                        format!("no reassignment of {topic}-{partition} is in progress"),
                    ));
                }
                current.voters.clone()
            }
        };
        if !allow_rf_change && replicas.len() != current.replicas.len() {
            return Err((
                code::INVALID_REPLICATION_FACTOR,
                format!(
                    "the reassignment changes the replication factor from {} to {}",
                    current.replicas.len(),
                    replicas.len()
                ),
            ));
        }
        self.propose(MetadataCommand::ReassignPartition {
            name: topic.to_string(),
            partition,
            replicas,
        })
        .await
        .map(|_| ())
    }

    pub(crate) fn list_partition_reassignments(
        &self,
        req: ListPartitionReassignmentsRequest,
    ) -> ResponseKind {
        let meta = self.node.cluster();
        let mut resp = ListPartitionReassignmentsResponse::default();
        let wanted: Option<Vec<(String, Vec<i32>)>> = req.topics.map(|ts| {
            ts.into_iter()
                .map(|t| (t.name.0.to_string(), t.partition_indexes))
                .collect()
        });
        for (name, topic) in &meta.topics {
            let filter = match &wanted {
                None => None,
                Some(w) => match w.iter().find(|(n, _)| n == name) {
                    Some((_, parts)) => Some(parts),
                    None => continue,
                },
            };
            let mut ot = OngoingTopicReassignment::default();
            ot.name = topic_name(name);
            for (i, p) in topic.partitions.iter().enumerate() {
                let index = i as i32;
                if filter.is_some_and(|f| !f.contains(&index)) || !p.reassigning() {
                    continue;
                }
                let adding: Vec<NodeId> = p
                    .replicas
                    .iter()
                    .filter(|r| !p.voters.contains(r))
                    .copied()
                    .collect();
                let removing: Vec<NodeId> = p
                    .voters
                    .iter()
                    .filter(|v| !p.replicas.contains(v))
                    .copied()
                    .collect();
                let mut all = p.replicas.clone();
                all.extend(removing.iter().copied());
                let mut op = OngoingPartitionReassignment::default();
                op.partition_index = index;
                op.replicas = ids(&all);
                op.adding_replicas = ids(&adding);
                op.removing_replicas = ids(&removing);
                ot.partitions.push(op);
            }
            if !ot.partitions.is_empty() {
                resp.topics.push(ot);
            }
        }
        ResponseKind::ListPartitionReassignments(resp)
    }
}
