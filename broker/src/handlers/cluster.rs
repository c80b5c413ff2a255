//! ApiVersions, Metadata and DescribeCluster.

use kafka_protocol::messages::api_versions_request::ApiVersionsRequest;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    ApiVersionsResponse, BrokerId, DescribeClusterRequest, DescribeClusterResponse,
    MetadataRequest, MetadataResponse, ResponseKind,
};

use super::{operations, str_bytes, topic_name};
use crate::broker::Broker;
use crate::errors::code;
use crate::protocol::SUPPORTED_APIS;

/// DescribeCluster's endpoint type for brokers (v1+; 2 is controllers).
const ENDPOINT_TYPE_BROKER: i8 = 1;

impl Broker {
    pub(crate) fn api_versions(&self, _req: ApiVersionsRequest) -> ResponseKind {
        let mut resp = ApiVersionsResponse::default();
        resp.api_keys = crate::protocol::versions_list();
        debug_assert_eq!(resp.api_keys.len(), SUPPORTED_APIS.len());
        ResponseKind::ApiVersions(resp)
    }

    pub(crate) async fn metadata(&self, req: MetadataRequest, version: i16) -> ResponseKind {
        // v0: an empty list means all topics; v1+: null means all, empty means none. From
        // v10 an entry may name its topic by id alone (a null name).
        let mut unknown_ids = Vec::new();
        // Topics named by id are never auto-created (an id names a topic that exists).
        let mut by_id = Vec::new();
        let requested: Option<Vec<String>> = match req.topics {
            None => None,
            Some(t) if t.is_empty() && version == 0 => None,
            Some(t) => {
                let meta = self.node.cluster();
                let mut names = Vec::with_capacity(t.len());
                for t in t {
                    let name = match t.name {
                        Some(n) => Some(n.0.to_string()),
                        None => meta.topic_by_id(t.topic_id).map(|(n, _)| {
                            by_id.push((n.clone(), t.topic_id));
                            n.clone()
                        }),
                    };
                    match name {
                        // Kafka answers a topic asked for twice once.
                        Some(n) if !names.contains(&n) => names.push(n),
                        Some(_) => {}
                        None if !unknown_ids.contains(&t.topic_id) => unknown_ids.push(t.topic_id),
                        None => {}
                    }
                }
                Some(names)
            }
        };
        let auto_create =
            self.config.auto_create_topics && (version < 4 || req.allow_auto_topic_creation);
        let mut creating = Vec::new();
        if let Some(names) = &requested {
            let meta = self.node.cluster();
            for name in names {
                if !meta.topics.contains_key(name)
                    && auto_create
                    && !by_id.iter().any(|(n, _)| n == name)
                    && crate::topic_config::validate_topic_name(name).is_ok()
                    && self.auto_create_topic(name).await.is_ok()
                {
                    creating.push(name.clone());
                }
            }
        }
        for name in &creating {
            self.wait_auto_created(name).await;
        }
        let meta = self.node.cluster();
        let mut resp = MetadataResponse::default();
        if version >= 2 {
            resp.cluster_id = meta.cluster_id.clone().map(str_bytes);
        }
        if (8..=10).contains(&version) && req.include_cluster_authorized_operations {
            resp.cluster_authorized_operations = operations::CLUSTER;
        }
        resp.controller_id = self.controller_id();
        // Clients are told of live brokers only, as Kafka does.
        resp.brokers = meta
            .brokers
            .values()
            .filter(|b| !meta.fenced.contains(&b.node_id))
            .map(|b| {
                let mut mb = MetadataResponseBroker::default();
                mb.node_id = BrokerId(b.node_id as i32);
                mb.host = str_bytes(b.host.clone());
                mb.port = b.port as i32;
                mb
            })
            .collect();
        let names: Vec<String> = requested.unwrap_or_else(|| meta.topics.keys().cloned().collect());
        for name in names {
            let mut t = MetadataResponseTopic::default();
            t.name = Some(topic_name(&name));
            let asked_id = by_id.iter().find(|(n, _)| *n == name).map(|(_, id)| *id);
            // Asked for by id: the same topic, not one since recreated under that name.
            let topic = meta
                .topics
                .get(&name)
                .filter(|topic| asked_id.is_none_or(|id| topic.id == id));
            match (topic, asked_id) {
                (None, Some(id)) => {
                    t.name = None;
                    t.topic_id = id;
                    t.error_code = code::UNKNOWN_TOPIC_ID;
                }
                (None, None) => {
                    t.error_code = if crate::topic_config::validate_topic_name(&name).is_err() {
                        code::INVALID_TOPIC_EXCEPTION
                    } else {
                        code::UNKNOWN_TOPIC_OR_PARTITION
                    };
                }
                (Some(topic), _) => {
                    if version >= 10 {
                        t.topic_id = topic.id;
                    }
                    if version >= 8 && req.include_topic_authorized_operations {
                        t.topic_authorized_operations = operations::TOPIC;
                    }
                    for (i, p) in topic.partitions.iter().enumerate() {
                        let mut mp = MetadataResponsePartition::default();
                        mp.partition_index = i as i32;
                        mp.replica_nodes = p.replicas.iter().map(|r| BrokerId(*r as i32)).collect();
                        mp.isr_nodes = self
                            .partitions
                            .in_sync(&name, i as i32)
                            .into_iter()
                            .map(|r| BrokerId(r as i32))
                            .collect();
                        match self.partitions.leader_of(&name, i as i32) {
                            Some((leader, epoch)) => {
                                mp.leader_id = BrokerId(leader as i32);
                                if version >= 7 {
                                    mp.leader_epoch = epoch;
                                }
                            }
                            None => {
                                mp.error_code = code::LEADER_NOT_AVAILABLE;
                                mp.leader_id = BrokerId(-1);
                            }
                        }
                        t.partitions.push(mp);
                    }
                }
            }
            resp.topics.push(t);
        }
        for id in unknown_ids {
            let mut t = MetadataResponseTopic::default();
            t.name = None;
            t.topic_id = id;
            t.error_code = code::UNKNOWN_TOPIC_ID;
            resp.topics.push(t);
        }
        ResponseKind::Metadata(resp)
    }

    /// The controller clients are told of: the metadata group's leader.
    fn controller_id(&self) -> BrokerId {
        BrokerId(self.node.metadata_leader().map(|l| l as i32).unwrap_or(-1))
    }

    pub(crate) fn describe_cluster(&self, req: DescribeClusterRequest) -> ResponseKind {
        let meta = self.node.cluster();
        let mut resp = DescribeClusterResponse::default();
        // Every node is a broker and the controller is reached through them (KIP-919).
        if req.endpoint_type != ENDPOINT_TYPE_BROKER {
            resp.error_code = code::MISMATCHED_ENDPOINT_TYPE;
            resp.error_message = Some(str_bytes(
                "Chronik nodes only have broker endpoints: ask with endpoint type 1 (brokers)",
            ));
            resp.endpoint_type = ENDPOINT_TYPE_BROKER;
            return ResponseKind::DescribeCluster(resp);
        }
        resp.cluster_id = str_bytes(meta.cluster_id.clone().unwrap_or_default());
        resp.controller_id = self.controller_id();
        resp.endpoint_type = ENDPOINT_TYPE_BROKER;
        resp.cluster_authorized_operations = if req.include_cluster_authorized_operations {
            operations::CLUSTER
        } else {
            i32::MIN
        };
        // Fenced brokers only when asked for (v2, KIP-1073).
        resp.brokers = meta
            .brokers
            .values()
            .filter(|b| req.include_fenced_brokers || !meta.fenced.contains(&b.node_id))
            .map(|b| {
                let mut d = DescribeClusterBroker::default();
                d.broker_id = BrokerId(b.node_id as i32);
                d.host = str_bytes(b.host.clone());
                d.port = b.port as i32;
                d.is_fenced = meta.fenced.contains(&b.node_id);
                d
            })
            .collect();
        ResponseKind::DescribeCluster(resp)
    }
}
