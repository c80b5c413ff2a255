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

use super::{str_bytes, topic_name};
use crate::broker::Broker;
use crate::errors::code;
use crate::protocol::SUPPORTED_APIS;

impl Broker {
    pub(crate) fn api_versions(&self, _req: ApiVersionsRequest) -> ResponseKind {
        let mut resp = ApiVersionsResponse::default();
        resp.api_keys = crate::protocol::versions_list();
        debug_assert_eq!(resp.api_keys.len(), SUPPORTED_APIS.len());
        ResponseKind::ApiVersions(resp)
    }

    pub(crate) async fn metadata(&self, req: MetadataRequest, version: i16) -> ResponseKind {
        // v0: an empty list means all topics; v1+: null means all, empty means none.
        let requested: Option<Vec<String>> = match req.topics {
            None => None,
            Some(t) if t.is_empty() && version == 0 => None,
            Some(t) => Some(
                t.into_iter()
                    .filter_map(|t| t.name.map(|n| n.0.to_string()))
                    .collect(),
            ),
        };
        let auto_create =
            self.config.auto_create_topics && (version < 4 || req.allow_auto_topic_creation);
        let mut creating = Vec::new();
        if let Some(names) = &requested {
            let meta = self.node.cluster();
            for name in names {
                if !meta.topics.contains_key(name)
                    && auto_create
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
        resp.controller_id = BrokerId(self.node.node_id as i32);
        resp.brokers = meta
            .brokers
            .values()
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
            match meta.topics.get(&name) {
                None => {
                    t.error_code = if crate::topic_config::validate_topic_name(&name).is_err() {
                        code::INVALID_TOPIC_EXCEPTION
                    } else {
                        code::UNKNOWN_TOPIC_OR_PARTITION
                    };
                }
                Some(topic) => {
                    if version >= 10 {
                        t.topic_id = topic.id;
                    }
                    for (i, p) in topic.partitions.iter().enumerate() {
                        let mut mp = MetadataResponsePartition::default();
                        mp.partition_index = i as i32;
                        mp.replica_nodes = p.replicas.iter().map(|r| BrokerId(*r as i32)).collect();
                        match self.partitions.get(&name, i as i32) {
                            Some(part) => match part.leader() {
                                Some(leader) => {
                                    mp.leader_id = BrokerId(leader as i32);
                                    if version >= 7 {
                                        mp.leader_epoch = part.leader_epoch();
                                    }
                                    mp.isr_nodes = mp.replica_nodes.clone();
                                }
                                None => {
                                    mp.error_code = code::LEADER_NOT_AVAILABLE;
                                    mp.leader_id = BrokerId(-1);
                                }
                            },
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
        ResponseKind::Metadata(resp)
    }

    pub(crate) fn describe_cluster(&self, _req: DescribeClusterRequest) -> ResponseKind {
        let meta = self.node.cluster();
        let mut resp = DescribeClusterResponse::default();
        resp.cluster_id = str_bytes(meta.cluster_id.clone().unwrap_or_default());
        resp.controller_id = BrokerId(self.node.node_id as i32);
        resp.endpoint_type = 1;
        resp.cluster_authorized_operations = i32::MIN;
        resp.brokers = meta
            .brokers
            .values()
            .map(|b| {
                let mut d = DescribeClusterBroker::default();
                d.broker_id = BrokerId(b.node_id as i32);
                d.host = str_bytes(b.host.clone());
                d.port = b.port as i32;
                d
            })
            .collect();
        ResponseKind::DescribeCluster(resp)
    }
}
