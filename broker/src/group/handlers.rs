//! The group APIs on the wire: decode what the coordinator needs, encode what it decided.
//! Fields a version lacks are left at their defaults (the codec refuses to encode a field
//! outside the versions that have it).

use futures::FutureExt;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator as WireCoordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse, OffsetFetchRequest,
    OffsetFetchResponse, ResponseKind, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::coordinator::{validate_group_id, OFFSET_METADATA_MAX_BYTES};
use super::state::JoinRequest;
use crate::broker::{ready, Broker, Outcome, Reply};
use crate::errors::code;
use crate::handlers::operations;

const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;
const TRANSACTIONS_UNSUPPORTED: &str =
    "Chronik does not support Kafka transactions: unset transactional.id (an idempotent \
     producer still writes each batch exactly once per partition)";

fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

fn opt(v: Option<String>) -> Option<StrBytes> {
    v.map(StrBytes::from_string)
}

impl Broker {
    pub(crate) fn find_coordinator(
        &self,
        req: FindCoordinatorRequest,
        version: i16,
    ) -> ResponseKind {
        let keys: Vec<StrBytes> = if version >= 4 {
            req.coordinator_keys
        } else {
            vec![req.key]
        };
        let coordinator = self.groups.coordinator_node().and_then(|n| {
            let meta = self.node.cluster();
            meta.brokers
                .get(&n)
                .map(|b| (n as i32, b.host.clone(), b.port as i32))
        });
        let answer = |key_type: i8| -> (i16, i32, String, i32) {
            match key_type {
                KEY_TYPE_GROUP if self.groups.is_coordinator() => (
                    code::NONE,
                    self.node.node_id as i32,
                    self.advertised.0.clone(),
                    self.advertised.1 as i32,
                ),
                KEY_TYPE_GROUP if coordinator.is_some() => {
                    let (node, host, port) = coordinator.clone().unwrap_or_default();
                    (code::NONE, node, host, port)
                }
                KEY_TYPE_GROUP => (code::COORDINATOR_NOT_AVAILABLE, -1, String::new(), -1),
                // There is no transaction coordinator. Clients retry COORDINATOR_NOT_AVAILABLE
                // until their timeout; this error is fatal to a transactional producer at
                // once, and the message says why (as InitProducerId does).
                KEY_TYPE_TRANSACTION => (
                    code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                    -1,
                    String::new(),
                    -1,
                ),
                _ => (code::INVALID_REQUEST, -1, String::new(), -1),
            }
        };
        let mut resp = FindCoordinatorResponse::default();
        if version >= 4 {
            for key in keys {
                let (error, node, host, port) = answer(req.key_type);
                let mut c = WireCoordinator::default();
                c.key = key;
                c.node_id = BrokerId(node);
                c.host = s(host);
                c.port = port;
                c.error_code = error;
                c.error_message = (error != code::NONE).then(|| s(error_message(error)));
                resp.coordinators.push(c);
            }
        } else {
            let (error, node, host, port) = answer(req.key_type);
            resp.error_code = error;
            resp.node_id = BrokerId(node);
            resp.host = s(host);
            resp.port = port;
            if version >= 1 {
                resp.error_message = (error != code::NONE).then(|| s(error_message(error)));
            }
        }
        ResponseKind::FindCoordinator(resp)
    }

    pub(crate) fn join_group(
        &self,
        req: JoinGroupRequest,
        version: i16,
        client_id: String,
        client_host: String,
    ) -> Reply {
        let join = JoinRequest {
            member_id: req.member_id.to_string(),
            group_instance_id: if version >= 5 {
                req.group_instance_id.map(|s| s.to_string())
            } else {
                None
            },
            client_id,
            client_host,
            session_timeout_ms: req.session_timeout_ms,
            rebalance_timeout_ms: if version >= 1 {
                req.rebalance_timeout_ms
            } else {
                req.session_timeout_ms
            },
            protocol_type: req.protocol_type.to_string(),
            protocols: req
                .protocols
                .into_iter()
                .map(|p| (p.name.to_string(), p.metadata))
                .collect(),
            require_known_member_id: version >= 4,
        };
        let pending = self.groups.join(req.group_id.0.as_str(), join);
        async move {
            let r = pending.await;
            let mut resp = JoinGroupResponse::default();
            resp.error_code = r.error;
            resp.generation_id = r.generation;
            if version >= 7 {
                resp.protocol_type = opt(r.protocol_type);
            }
            resp.protocol_name = if version >= 7 {
                opt(r.protocol_name)
            } else {
                Some(s(r.protocol_name.unwrap_or_default()))
            };
            resp.leader = s(r.leader);
            resp.member_id = s(r.member_id);
            resp.members = r
                .members
                .into_iter()
                .map(|(id, instance, metadata)| {
                    let mut m = JoinGroupResponseMember::default();
                    m.member_id = s(id);
                    if version >= 5 {
                        m.group_instance_id = opt(instance);
                    }
                    m.metadata = metadata;
                    m
                })
                .collect();
            Outcome::Respond(ResponseKind::JoinGroup(resp))
        }
        .boxed()
    }

    pub(crate) fn sync_group(&self, req: SyncGroupRequest, version: i16) -> Reply {
        let instance = if version >= 3 {
            req.group_instance_id.map(|s| s.to_string())
        } else {
            None
        };
        let (ptype, pname) = if version >= 5 {
            (
                req.protocol_type.map(|s| s.to_string()),
                req.protocol_name.map(|s| s.to_string()),
            )
        } else {
            (None, None)
        };
        let pending = self.groups.sync(
            req.group_id.0.as_str(),
            req.member_id.as_str(),
            instance.as_deref(),
            req.generation_id,
            ptype.as_deref(),
            pname.as_deref(),
            req.assignments
                .into_iter()
                .map(|a| (a.member_id.to_string(), a.assignment))
                .collect(),
        );
        async move {
            let r = pending.await;
            let mut resp = SyncGroupResponse::default();
            resp.error_code = r.error;
            if version >= 5 {
                resp.protocol_type = opt(r.protocol_type);
                resp.protocol_name = opt(r.protocol_name);
            }
            resp.assignment = r.assignment;
            Outcome::Respond(ResponseKind::SyncGroup(resp))
        }
        .boxed()
    }

    pub(crate) fn heartbeat(&self, req: HeartbeatRequest, version: i16) -> ResponseKind {
        let instance = if version >= 3 {
            req.group_instance_id.map(|s| s.to_string())
        } else {
            None
        };
        let mut resp = HeartbeatResponse::default();
        resp.error_code = self.groups.heartbeat(
            req.group_id.0.as_str(),
            req.member_id.as_str(),
            instance.as_deref(),
            req.generation_id,
        );
        ResponseKind::Heartbeat(resp)
    }

    pub(crate) fn leave_group(&self, req: LeaveGroupRequest, version: i16) -> ResponseKind {
        let members: Vec<(String, Option<String>)> = if version >= 3 {
            req.members
                .into_iter()
                .map(|m| {
                    (
                        m.member_id.to_string(),
                        m.group_instance_id.map(|s| s.to_string()),
                    )
                })
                .collect()
        } else {
            vec![(req.member_id.to_string(), None)]
        };
        let mut resp = LeaveGroupResponse::default();
        match self.groups.leave(req.group_id.0.as_str(), members) {
            Err(e) => resp.error_code = e,
            Ok(results) if version >= 3 => {
                resp.members = results
                    .into_iter()
                    .map(|r| {
                        let mut m = MemberResponse::default();
                        m.member_id = s(r.member_id);
                        m.group_instance_id = opt(r.group_instance_id);
                        m.error_code = r.error;
                        m
                    })
                    .collect();
            }
            Ok(results) => {
                resp.error_code = results.first().map(|r| r.error).unwrap_or(code::NONE);
            }
        }
        ResponseKind::LeaveGroup(resp)
    }

    pub(crate) fn offset_commit(&self, req: OffsetCommitRequest, version: i16) -> Reply {
        let group_id = req.group_id.0.to_string();
        let instance = if version >= 7 {
            req.group_instance_id.map(|s| s.to_string())
        } else {
            None
        };
        let group_error = self
            .groups
            .check_commit(
                &group_id,
                req.member_id.as_str(),
                instance.as_deref(),
                req.generation_id_or_member_epoch,
            )
            .err();
        let meta = self.node.cluster();
        // (topic index, partition index, error) for every partition, and what to commit.
        let mut results: Vec<(TopicName, Vec<(i32, i16)>)> = Vec::new();
        let mut commits = Vec::new();
        for topic in req.topics {
            let name = topic.name.0.to_string();
            let known = meta.topics.get(&name).map(|t| t.partitions.len() as i32);
            let mut parts = Vec::new();
            for p in topic.partitions {
                let metadata = p
                    .committed_metadata
                    .map(|m| m.to_string())
                    .unwrap_or_default();
                let error = if let Some(e) = group_error {
                    e
                } else if known.is_none_or(|n| p.partition_index < 0 || p.partition_index >= n) {
                    code::UNKNOWN_TOPIC_OR_PARTITION
                } else if metadata.len() > OFFSET_METADATA_MAX_BYTES {
                    code::OFFSET_METADATA_TOO_LARGE
                } else {
                    let epoch = if version >= 6 {
                        p.committed_leader_epoch
                    } else {
                        -1
                    };
                    commits.push((
                        name.clone(),
                        p.partition_index,
                        p.committed_offset,
                        epoch,
                        metadata,
                    ));
                    code::NONE
                };
                parts.push((p.partition_index, error));
            }
            results.push((topic.name, parts));
        }
        let write = (!commits.is_empty()).then(|| self.groups.commit(&group_id, commits));
        async move {
            let write_error = match write {
                Some(w) => w.await.err(),
                None => None,
            };
            let mut resp = OffsetCommitResponse::default();
            for (name, parts) in results {
                let mut t = OffsetCommitResponseTopic::default();
                t.name = name;
                for (index, error) in parts {
                    let mut p = OffsetCommitResponsePartition::default();
                    p.partition_index = index;
                    p.error_code = partition_error(error, write_error);
                    t.partitions.push(p);
                }
                resp.topics.push(t);
            }
            Outcome::Respond(ResponseKind::OffsetCommit(resp))
        }
        .boxed()
    }

    pub(crate) fn offset_fetch(&self, req: OffsetFetchRequest, version: i16) -> ResponseKind {
        let mut resp = OffsetFetchResponse::default();
        if version >= 8 {
            for g in req.groups {
                let topics = g.topics.map(|ts| {
                    ts.into_iter()
                        .map(|t| (t.name, t.partition_indexes))
                        .collect::<Vec<_>>()
                });
                let (error, found) = self.fetch_group_offsets(g.group_id.0.as_str(), topics);
                let mut out = OffsetFetchResponseGroup::default();
                out.group_id = g.group_id;
                out.error_code = error;
                for (name, parts) in found {
                    let mut t = OffsetFetchResponseTopics::default();
                    t.name = name;
                    for (index, offset, epoch, metadata) in parts {
                        let mut p = OffsetFetchResponsePartitions::default();
                        p.partition_index = index;
                        p.committed_offset = offset;
                        p.committed_leader_epoch = epoch;
                        p.metadata = Some(s(metadata));
                        t.partitions.push(p);
                    }
                    out.topics.push(t);
                }
                resp.groups.push(out);
            }
        } else {
            let topics = req.topics.map(|ts| {
                ts.into_iter()
                    .map(|t| (t.name, t.partition_indexes))
                    .collect::<Vec<_>>()
            });
            let (error, found) = self.fetch_group_offsets(req.group_id.0.as_str(), topics);
            for (name, parts) in found {
                let mut t = OffsetFetchResponseTopic::default();
                t.name = name;
                for (index, offset, epoch, metadata) in parts {
                    let mut p = OffsetFetchResponsePartition::default();
                    p.partition_index = index;
                    p.committed_offset = offset;
                    p.committed_leader_epoch = if version >= 5 { epoch } else { -1 };
                    p.metadata = Some(s(metadata));
                    // Before v2 there is no top-level error: every partition carries it.
                    if version < 2 {
                        p.error_code = error;
                    }
                    t.partitions.push(p);
                }
                resp.topics.push(t);
            }
            if version >= 2 {
                resp.error_code = error;
            }
        }
        ResponseKind::OffsetFetch(resp)
    }

    /// Offsets of the requested partitions (all committed ones when `topics` is null):
    /// (group error, [(topic, [(partition, offset, leader epoch, metadata)])]).
    #[allow(clippy::type_complexity)]
    fn fetch_group_offsets(
        &self,
        group_id: &str,
        topics: Option<Vec<(TopicName, Vec<i32>)>>,
    ) -> (i16, Vec<(TopicName, Vec<(i32, i64, i32, String)>)>) {
        if let Err(e) = validate_group_id(group_id) {
            return (e, Vec::new());
        }
        if let Err(e) = self.groups.ready() {
            return (e, Vec::new());
        }
        match topics {
            Some(topics) => {
                let found = topics
                    .into_iter()
                    .map(|(name, parts)| {
                        let parts = parts
                            .into_iter()
                            .map(
                                |p| match self.groups.committed(group_id, name.0.as_str(), p) {
                                    Some(c) => (p, c.offset, c.leader_epoch, c.metadata),
                                    None => (p, -1, -1, String::new()),
                                },
                            )
                            .collect();
                        (name, parts)
                    })
                    .collect();
                (code::NONE, found)
            }
            None => {
                let mut found: Vec<(TopicName, Vec<(i32, i64, i32, String)>)> = Vec::new();
                for (topic, p, c) in self.groups.committed_all(group_id) {
                    let entry = (p, c.offset, c.leader_epoch, c.metadata);
                    match found.last_mut() {
                        Some((name, parts)) if name.0.as_str() == topic => parts.push(entry),
                        _ => found.push((TopicName(s(topic)), vec![entry])),
                    }
                }
                (code::NONE, found)
            }
        }
    }

    pub(crate) fn list_groups(&self, req: ListGroupsRequest, version: i16) -> ResponseKind {
        let states: Vec<String> = if version >= 4 {
            req.states_filter.iter().map(|s| s.to_lowercase()).collect()
        } else {
            Vec::new()
        };
        let types: Vec<String> = if version >= 5 {
            req.types_filter.iter().map(|s| s.to_lowercase()).collect()
        } else {
            Vec::new()
        };
        let mut resp = ListGroupsResponse::default();
        // Each broker lists the groups it coordinates; admin clients ask every broker and
        // merge. Only while no node coordinates (an election) is there no answer.
        match self.groups.ready() {
            Ok(()) => {}
            Err(code::NOT_COORDINATOR) => {
                if self.groups.coordinator_node().is_none() {
                    resp.error_code = code::COORDINATOR_NOT_AVAILABLE;
                }
                return ResponseKind::ListGroups(resp);
            }
            Err(e) => {
                resp.error_code = e;
                return ResponseKind::ListGroups(resp);
            }
        }
        for g in self.groups.list() {
            if !states.is_empty() && !states.contains(&g.state.name().to_lowercase()) {
                continue;
            }
            if !types.is_empty() && !types.iter().any(|t| t == "classic") {
                continue;
            }
            let mut l = ListedGroup::default();
            l.group_id = GroupId(s(g.group_id));
            l.protocol_type = s(g.protocol_type);
            if version >= 4 {
                l.group_state = s(g.state.name());
            }
            if version >= 5 {
                l.group_type = s("classic");
            }
            resp.groups.push(l);
        }
        ResponseKind::ListGroups(resp)
    }

    pub(crate) fn describe_groups(&self, req: DescribeGroupsRequest, version: i16) -> ResponseKind {
        let mut resp = DescribeGroupsResponse::default();
        for group_id in req.groups.iter().cloned() {
            let mut d = DescribedGroup::default();
            d.group_id = group_id.clone();
            let id = group_id.0.as_str();
            if let Err(e) = validate_group_id(id) {
                d.error_code = e;
                d.group_state = s("Dead");
            } else if let Err(e) = self.groups.ready() {
                d.error_code = e;
            } else {
                match self.groups.describe(id) {
                    None => {
                        d.group_state = s("Dead");
                        if version >= 6 {
                            d.error_code = code::GROUP_ID_NOT_FOUND;
                            d.error_message = Some(s(format!("group {id} not found")));
                        }
                    }
                    Some(g) => {
                        if version >= 3 && req.include_authorized_operations {
                            d.authorized_operations = operations::GROUP;
                        }
                        d.group_state = s(g.state.name());
                        d.protocol_type = s(g.protocol_type);
                        d.protocol_data = s(g.protocol_name);
                        d.members = g
                            .members
                            .into_iter()
                            .map(|m| {
                                let mut dm = DescribedGroupMember::default();
                                dm.member_id = s(m.member_id);
                                if version >= 4 {
                                    dm.group_instance_id = opt(m.group_instance_id);
                                }
                                dm.client_id = s(m.client_id);
                                dm.client_host = s(m.client_host);
                                dm.member_metadata = m.metadata;
                                dm.member_assignment = m.assignment;
                                dm
                            })
                            .collect();
                    }
                }
            }
            resp.groups.push(d);
        }
        ResponseKind::DescribeGroups(resp)
    }

    pub(crate) fn delete_groups(&self, req: DeleteGroupsRequest) -> Reply {
        let pending: Vec<_> = req
            .groups_names
            .into_iter()
            .map(|g| {
                let f = self.groups.delete_group(g.0.as_str());
                (g, f)
            })
            .collect();
        async move {
            let mut resp = DeleteGroupsResponse::default();
            for (group_id, f) in pending {
                let mut r = DeletableGroupResult::default();
                r.group_id = group_id;
                r.error_code = f.await.err().unwrap_or(code::NONE);
                resp.results.push(r);
            }
            Outcome::Respond(ResponseKind::DeleteGroups(resp))
        }
        .boxed()
    }

    pub(crate) fn offset_delete(&self, req: OffsetDeleteRequest) -> Reply {
        let group_id = req.group_id.0.to_string();
        let subscribed = match self.groups.check_offset_delete(&group_id) {
            Ok(topics) => topics,
            Err(e) => {
                let mut resp = OffsetDeleteResponse::default();
                resp.error_code = e;
                return ready(ResponseKind::OffsetDelete(resp));
            }
        };
        let meta = self.node.cluster();
        let mut results = Vec::new();
        let mut delete = Vec::new();
        for topic in req.topics {
            let name = topic.name.0.to_string();
            let known = meta.topics.get(&name).map(|t| t.partitions.len() as i32);
            let mut parts = Vec::new();
            for p in topic.partitions {
                let i = p.partition_index;
                let error = if known.is_none_or(|n| i < 0 || i >= n) {
                    code::UNKNOWN_TOPIC_OR_PARTITION
                } else if subscribed.contains(&name) {
                    code::GROUP_SUBSCRIBED_TO_TOPIC
                } else {
                    delete.push((name.clone(), i));
                    code::NONE
                };
                parts.push((i, error));
            }
            results.push((topic.name, parts));
        }
        let write = self.groups.delete_offsets(&group_id, delete);
        async move {
            let write_error = write.await.err();
            let mut resp = OffsetDeleteResponse::default();
            for (name, parts) in results {
                let mut t = OffsetDeleteResponseTopic::default();
                t.name = name;
                for (index, error) in parts {
                    let mut p = OffsetDeleteResponsePartition::default();
                    p.partition_index = index;
                    p.error_code = partition_error(error, write_error);
                    t.partitions.push(p);
                }
                resp.topics.push(t);
            }
            Outcome::Respond(ResponseKind::OffsetDelete(resp))
        }
        .boxed()
    }
}

fn error_message(error: i16) -> &'static str {
    match error {
        code::COORDINATOR_NOT_AVAILABLE => "the coordinator is not available",
        code::INVALID_REQUEST => "unsupported coordinator key type",
        code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED => TRANSACTIONS_UNSUPPORTED,
        _ => "error",
    }
}

/// A partition's answer in an offsets write: its own error if it had one, else the error of
/// the Raft write that carried the batch (if that failed).
fn partition_error(own: i16, write_error: Option<i16>) -> i16 {
    match (own, write_error) {
        (code::NONE, Some(e)) => e,
        (e, _) => e,
    }
}
