//! The replicated cluster metadata and its deterministic apply function.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::command::{MetadataCommand, MetadataError, MetadataResponse};
use crate::types::{GroupId, NodeId, FIRST_PARTITION_GROUP};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerInfo {
    pub node_id: NodeId,
    pub host: String,
    pub port: u16,
    /// Where the node's Raft transport listens (none for a single node).
    #[serde(default)]
    pub raft_addr: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMeta {
    /// The Raft group that stores this partition.
    pub group: GroupId,
    /// The replicas it should have (its leader moves the Raft membership to match).
    pub replicas: Vec<NodeId>,
    /// The replicas it was created with: the first of them initialises the group.
    #[serde(default)]
    pub initial: Vec<NodeId>,
    /// The last leader that announced itself, and its term (the leader epoch).
    #[serde(default)]
    pub leader: Option<(NodeId, u64)>,
    /// The Raft voters that leader announced; a reassignment is in progress while they
    /// differ from `replicas`.
    #[serde(default)]
    pub voters: Vec<NodeId>,
    /// The replicas that leader last counted in sync (empty: not announced yet).
    #[serde(default)]
    pub isr: Vec<NodeId>,
}

impl PartitionMeta {
    /// Whether the Raft voters (as last announced) differ from the wanted replicas.
    pub fn reassigning(&self) -> bool {
        let mut want = self.replicas.clone();
        want.sort_unstable();
        let mut have = self.voters.clone();
        have.sort_unstable();
        !have.is_empty() && want != have
    }

    /// Who initialises the group: the first replica it was created with.
    pub fn creators(&self) -> &[NodeId] {
        if self.initial.is_empty() {
            &self.replicas
        } else {
            &self.initial
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    pub id: Uuid,
    pub partitions: Vec<PartitionMeta>,
    /// Overrides only; defaults are the broker's.
    pub configs: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMetadata {
    pub cluster_id: Option<String>,
    pub brokers: BTreeMap<NodeId, BrokerInfo>,
    pub topics: BTreeMap<String, TopicMeta>,
    pub next_group: GroupId,
    pub next_producer_id: i64,
    /// Brokers the metadata leader has not heard from for a session timeout: they lead
    /// nothing and are in no partition's in-sync set until heard from again.
    #[serde(default)]
    pub fenced: BTreeSet<NodeId>,
}

impl Default for ClusterMetadata {
    fn default() -> Self {
        Self {
            cluster_id: None,
            brokers: BTreeMap::new(),
            topics: BTreeMap::new(),
            next_group: FIRST_PARTITION_GROUP,
            next_producer_id: 1000,
            fenced: BTreeSet::new(),
        }
    }
}

impl ClusterMetadata {
    pub fn topic_by_id(&self, id: Uuid) -> Option<(&String, &TopicMeta)> {
        self.topics.iter().find(|(_, t)| t.id == id)
    }

    fn new_partitions(&mut self, assignments: Vec<Vec<NodeId>>) -> Vec<PartitionMeta> {
        assignments
            .into_iter()
            .map(|replicas| {
                let group = self.next_group;
                self.next_group += 1;
                PartitionMeta {
                    group,
                    initial: replicas.clone(),
                    replicas,
                    leader: None,
                    voters: Vec::new(),
                    isr: Vec::new(),
                }
            })
            .collect()
    }

    pub fn apply(&mut self, cmd: MetadataCommand) -> MetadataResponse {
        match cmd {
            MetadataCommand::InitCluster { cluster_id } => {
                if self.cluster_id.is_none() {
                    self.cluster_id = Some(cluster_id);
                }
            }
            MetadataCommand::RegisterBroker(info) => {
                self.brokers.insert(info.node_id, info);
            }
            MetadataCommand::CreateTopic {
                name,
                id,
                assignments,
                configs,
            } => {
                if self.topics.contains_key(&name) {
                    return MetadataResponse::Error(MetadataError::TopicExists(name));
                }
                let partitions = self.new_partitions(assignments);
                self.topics.insert(
                    name,
                    TopicMeta {
                        id,
                        partitions,
                        configs,
                    },
                );
            }
            MetadataCommand::DeleteTopic { name } => {
                if self.topics.remove(&name).is_none() {
                    return MetadataResponse::Error(MetadataError::UnknownTopic(name));
                }
            }
            MetadataCommand::CreatePartitions {
                name,
                new_assignments,
            } => {
                if !self.topics.contains_key(&name) {
                    return MetadataResponse::Error(MetadataError::UnknownTopic(name));
                }
                let added = self.new_partitions(new_assignments);
                if let Some(topic) = self.topics.get_mut(&name) {
                    topic.partitions.extend(added);
                }
            }
            MetadataCommand::AlterTopicConfigs {
                name,
                changes,
                replace_all,
            } => {
                let Some(topic) = self.topics.get_mut(&name) else {
                    return MetadataResponse::Error(MetadataError::UnknownTopic(name));
                };
                if replace_all {
                    topic.configs.clear();
                }
                for (key, value) in changes {
                    match value {
                        Some(v) => topic.configs.insert(key, v),
                        None => topic.configs.remove(&key),
                    };
                }
            }
            MetadataCommand::PartitionLeader {
                group,
                leader,
                epoch,
                voters,
                isr,
            } => {
                let partition = self
                    .topics
                    .values_mut()
                    .flat_map(|t| t.partitions.iter_mut())
                    .find(|p| p.group == group);
                if let Some(p) = partition {
                    if p.leader.is_none_or(|(_, e)| e <= epoch) {
                        p.leader = Some((leader, epoch));
                        p.voters = voters;
                        p.isr = isr;
                    }
                }
            }
            MetadataCommand::ReassignPartition {
                name,
                partition,
                replicas,
            } => {
                let brokers = &self.brokers;
                let Some(topic) = self.topics.get_mut(&name) else {
                    return MetadataResponse::Error(MetadataError::UnknownTopic(name));
                };
                let Some(p) = usize::try_from(partition)
                    .ok()
                    .and_then(|i| topic.partitions.get_mut(i))
                else {
                    return MetadataResponse::Error(MetadataError::UnknownPartition(
                        name, partition,
                    ));
                };
                if let Some(unknown) = replicas.iter().find(|r| !brokers.contains_key(r)) {
                    return MetadataResponse::Error(MetadataError::InvalidReplicas(format!(
                        "node {unknown} is not a broker of this cluster"
                    )));
                }
                let mut unique = replicas.clone();
                unique.sort_unstable();
                unique.dedup();
                if replicas.is_empty() || unique.len() != replicas.len() {
                    return MetadataResponse::Error(MetadataError::InvalidReplicas(
                        "a replica list must name distinct nodes, at least one".into(),
                    ));
                }
                if p.initial.is_empty() {
                    p.initial = p.replicas.clone();
                }
                p.replicas = replicas;
            }
            MetadataCommand::FenceBrokers { fenced } => {
                self.fenced = fenced
                    .into_iter()
                    .filter(|n| self.brokers.contains_key(n))
                    .collect();
            }
            MetadataCommand::AllocateProducerIds { count } => {
                let first = self.next_producer_id;
                self.next_producer_id = first.saturating_add(count.max(1));
                return MetadataResponse::ProducerIds { first };
            }
        }
        MetadataResponse::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(name: &str, partitions: usize) -> MetadataCommand {
        MetadataCommand::CreateTopic {
            name: name.into(),
            id: Uuid::nil(),
            assignments: vec![vec![1]; partitions],
            configs: BTreeMap::new(),
        }
    }

    #[test]
    fn topics_get_distinct_groups_and_duplicates_are_refused() {
        let mut m = ClusterMetadata::default();
        assert_eq!(m.apply(create("a", 2)), MetadataResponse::Ok);
        assert_eq!(m.apply(create("b", 1)), MetadataResponse::Ok);
        let groups: Vec<_> = m
            .topics
            .values()
            .flat_map(|t| t.partitions.iter().map(|p| p.group))
            .collect();
        assert_eq!(groups, vec![16, 17, 18]);
        assert_eq!(
            m.apply(create("a", 1)),
            MetadataResponse::Error(MetadataError::TopicExists("a".into()))
        );
    }

    #[test]
    fn groups_are_never_reused_after_delete() {
        let mut m = ClusterMetadata::default();
        m.apply(create("a", 1));
        m.apply(MetadataCommand::DeleteTopic { name: "a".into() });
        m.apply(create("a", 1));
        assert_eq!(m.topics["a"].partitions[0].group, 17);
    }

    #[test]
    fn alter_configs_replace_and_incremental() {
        let mut m = ClusterMetadata::default();
        m.apply(create("a", 1));
        let set = |k: &str, v: Option<&str>, replace_all| MetadataCommand::AlterTopicConfigs {
            name: "a".into(),
            changes: [(k.to_string(), v.map(str::to_string))].into(),
            replace_all,
        };
        m.apply(set("retention.ms", Some("10"), false));
        m.apply(set("cleanup.policy", Some("delete"), false));
        assert_eq!(m.topics["a"].configs.len(), 2);
        m.apply(set("retention.ms", None, false));
        assert_eq!(m.topics["a"].configs.len(), 1);
        m.apply(set("max.message.bytes", Some("5"), true));
        assert_eq!(
            m.topics["a"].configs.keys().collect::<Vec<_>>(),
            vec!["max.message.bytes"]
        );
    }

    #[test]
    fn producer_ids_are_allocated_in_blocks() {
        let mut m = ClusterMetadata::default();
        let a = m.apply(MetadataCommand::AllocateProducerIds { count: 10 });
        let b = m.apply(MetadataCommand::AllocateProducerIds { count: 10 });
        assert_eq!(a, MetadataResponse::ProducerIds { first: 1000 });
        assert_eq!(b, MetadataResponse::ProducerIds { first: 1010 });
    }
}
