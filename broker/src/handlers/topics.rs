//! CreateTopics, DeleteTopics, CreatePartitions, and topic auto-creation.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, ResponseKind,
};
use uuid::Uuid;

use chronik_metastore::metadata::{MetadataCommand, MetadataResponse};
use chronik_metastore::types::NodeId;

use super::{named_twice, repeated, str_bytes, topic_name};
use crate::broker::Broker;
use crate::errors::{bootstrap_error_code, code, metadata_error_code};
use crate::topic_config;

/// Kafka caps partitions per request to keep one request from overwhelming a cluster.
const MAX_PARTITIONS_PER_TOPIC: i32 = 10_000;

/// (error code, message) of a failed topic operation.
pub(crate) type Failure = (i16, String);

/// Replica lists per partition and config overrides of a topic about to be created.
type TopicPlan = (Vec<Vec<NodeId>>, BTreeMap<String, String>);

impl Broker {
    /// One replica list per partition. With one node every replica list is that node.
    fn assign(
        &self,
        partitions: i32,
        replication_factor: i16,
    ) -> Result<Vec<Vec<NodeId>>, Failure> {
        let brokers: Vec<NodeId> = self.node.cluster().brokers.keys().copied().collect();
        let rf = if replication_factor == -1 {
            1
        } else {
            replication_factor
        };
        if rf < 1 || rf as usize > brokers.len().max(1) {
            return Err((
                code::INVALID_REPLICATION_FACTOR,
                format!(
                    "replication factor {rf} is larger than the {} available broker(s)",
                    brokers.len()
                ),
            ));
        }
        let brokers = if brokers.is_empty() {
            vec![self.node.node_id]
        } else {
            brokers
        };
        Ok((0..partitions as usize)
            .map(|p| {
                (0..rf as usize)
                    .map(|r| brokers[(p + r) % brokers.len()])
                    .collect()
            })
            .collect())
    }

    pub(crate) async fn propose(&self, cmd: MetadataCommand) -> Result<MetadataResponse, Failure> {
        match self.node.propose_metadata(&cmd).await {
            Ok(MetadataResponse::Error(e)) => Err((metadata_error_code(&e), e.to_string())),
            Ok(other) => Ok(other),
            Err(e) => Err((bootstrap_error_code(&e), e.to_string())),
        }
    }

    /// Waits (bounded) until an auto-created topic's partitions have leaders, so the first
    /// Metadata or Produce that created it can already use it.
    pub(crate) async fn wait_auto_created(&self, name: &str) {
        self.partitions
            .wait_ready(
                name,
                self.config.num_partitions as usize,
                Duration::from_secs(5),
            )
            .await;
    }

    pub(crate) async fn auto_create_topic(&self, name: &str) -> Result<(), Failure> {
        let assignments = self.assign(self.config.num_partitions as i32, -1)?;
        self.propose(MetadataCommand::CreateTopic {
            name: name.to_string(),
            id: Uuid::new_v4(),
            assignments,
            configs: BTreeMap::new(),
        })
        .await
        .map(|_| ())
    }

    /// Checks a create request for one topic; returns (partitions, assignments, configs).
    fn plan_topic(
        &self,
        t: &kafka_protocol::messages::create_topics_request::CreatableTopic,
    ) -> Result<TopicPlan, Failure> {
        let name = t.name.0.as_str();
        topic_config::validate_topic_name(name).map_err(|m| (code::INVALID_TOPIC_EXCEPTION, m))?;
        if !t.assignments.is_empty() {
            return Err((
                code::INVALID_REQUEST,
                "manual replica assignments are not supported; give num_partitions".into(),
            ));
        }
        let partitions = if t.num_partitions == -1 {
            self.config.num_partitions as i32
        } else {
            t.num_partitions
        };
        if !(1..=MAX_PARTITIONS_PER_TOPIC).contains(&partitions) {
            return Err((code::INVALID_PARTITIONS, format!("number of partitions must be between 1 and {MAX_PARTITIONS_PER_TOPIC}, not {partitions}")));
        }
        let assignments = self.assign(partitions, t.replication_factor)?;
        let mut configs = BTreeMap::new();
        for c in &t.configs {
            let key = c.name.to_string();
            let Some(value) = c.value.as_ref().map(|v| v.to_string()) else {
                continue;
            };
            topic_config::validate(&key, &value).map_err(|m| (code::INVALID_CONFIG, m))?;
            configs.insert(key, value);
        }
        if self.node.cluster().topics.contains_key(name) {
            return Err((
                code::TOPIC_ALREADY_EXISTS,
                format!("topic '{name}' already exists"),
            ));
        }
        Ok((assignments, configs))
    }

    pub(crate) async fn create_topics(
        &self,
        req: CreateTopicsRequest,
        version: i16,
    ) -> ResponseKind {
        let mut resp = CreateTopicsResponse::default();
        let mut created = Vec::new();
        let twice = repeated(req.topics.iter().map(|t| &t.name));
        let mut refused = HashSet::new();
        for t in &req.topics {
            let mut r = CreatableTopicResult::default();
            r.name = t.name.clone();
            let outcome = if twice.contains(&t.name) {
                // One answer per name, as Kafka's response is keyed by name.
                if !refused.insert(&t.name) {
                    continue;
                }
                Err(named_twice("topic"))
            } else {
                self.plan_topic(t)
            };
            let outcome = match outcome {
                Err(f) => Err(f),
                Ok((assignments, configs)) => {
                    r.num_partitions = assignments.len() as i32;
                    r.replication_factor = assignments.first().map(|a| a.len() as i16).unwrap_or(1);
                    let id = Uuid::new_v4();
                    let effective =
                        topic_config::effective(&configs, self.config.message_max_bytes);
                    r.configs = Some(
                        effective
                            .into_iter()
                            .map(|e| {
                                let mut c = CreatableTopicConfigs::default();
                                c.name = str_bytes(e.name);
                                c.value = Some(str_bytes(e.value));
                                c.config_source = if e.overridden { 1 } else { 5 };
                                c
                            })
                            .collect(),
                    );
                    if req.validate_only {
                        Ok(())
                    } else {
                        r.topic_id = id;
                        let n = assignments.len();
                        let res = self
                            .propose(MetadataCommand::CreateTopic {
                                name: t.name.0.to_string(),
                                id,
                                assignments,
                                configs,
                            })
                            .await;
                        if res.is_ok() {
                            created.push((t.name.0.to_string(), n));
                        }
                        res.map(|_| ())
                    }
                }
            };
            if let Err((error, message)) = outcome {
                r.error_code = error;
                r.error_message = Some(str_bytes(message));
            }
            if r.error_code != code::NONE || version < 5 {
                // These fields exist from v5 on.
                r.num_partitions = -1;
                r.replication_factor = -1;
                r.configs = None;
            }
            if version < 7 {
                r.topic_id = Uuid::nil();
            }
            resp.topics.push(r);
        }
        let timeout = Duration::from_millis(req.timeout_ms.clamp(0, 30_000) as u64);
        for (name, n) in created {
            self.partitions.wait_ready(&name, n, timeout).await;
        }
        ResponseKind::CreateTopics(resp)
    }

    pub(crate) async fn delete_topics(
        &self,
        req: DeleteTopicsRequest,
        version: i16,
    ) -> ResponseKind {
        let mut resp = DeleteTopicsResponse::default();
        // v0-5 name topics in topic_names; v6 in topics, by name or id.
        let mut targets: Vec<(Option<String>, Uuid)> = req
            .topic_names
            .iter()
            .map(|n| (Some(n.0.to_string()), Uuid::nil()))
            .collect();
        targets.extend(
            req.topics
                .iter()
                .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id)),
        );
        let twice = repeated(targets.iter().cloned());
        let mut refused = HashSet::new();
        for (name, id) in targets {
            let mut r = DeletableTopicResult::default();
            r.topic_id = id;
            if twice.contains(&(name.clone(), id)) {
                if !refused.insert((name.clone(), id)) {
                    continue;
                }
                r.name = name.as_deref().map(topic_name);
                (r.error_code, r.error_message) = (code::INVALID_REQUEST, None);
                if version >= 5 {
                    r.error_message = Some(str_bytes(named_twice("topic").1));
                }
                if version < 6 {
                    r.topic_id = Uuid::nil();
                }
                resp.responses.push(r);
                continue;
            }
            let meta = self.node.cluster();
            let resolved = match &name {
                Some(n) => meta.topics.get(n).map(|t| (n.clone(), t.id)),
                None => meta.topic_by_id(id).map(|(n, t)| (n.clone(), t.id)),
            };
            r.name = name.as_deref().map(topic_name);
            match resolved {
                None => {
                    r.error_code = if name.is_some() {
                        code::UNKNOWN_TOPIC_OR_PARTITION
                    } else {
                        code::UNKNOWN_TOPIC_ID
                    };
                }
                Some((n, tid)) => {
                    r.name = Some(topic_name(&n));
                    r.topic_id = tid;
                    if let Err((error, message)) =
                        self.propose(MetadataCommand::DeleteTopic { name: n }).await
                    {
                        r.error_code = error;
                        r.error_message = Some(str_bytes(message));
                    }
                }
            }
            if version < 6 {
                r.topic_id = Uuid::nil();
            }
            if version < 5 {
                r.error_message = None;
            }
            resp.responses.push(r);
        }
        ResponseKind::DeleteTopics(resp)
    }

    pub(crate) async fn create_partitions(&self, req: CreatePartitionsRequest) -> ResponseKind {
        let mut resp = CreatePartitionsResponse::default();
        let twice = repeated(req.topics.iter().map(|t| &t.name));
        let mut refused = HashSet::new();
        for t in &req.topics {
            let mut r = CreatePartitionsTopicResult::default();
            r.name = t.name.clone();
            if twice.contains(&t.name) {
                if refused.insert(&t.name) {
                    let (error, message) = named_twice("topic");
                    r.error_code = error;
                    r.error_message = Some(str_bytes(message));
                    resp.results.push(r);
                }
                continue;
            }
            let name = t.name.0.to_string();
            let current = self
                .node
                .cluster()
                .topics
                .get(&name)
                .map(|t| t.partitions.len() as i32);
            let outcome: Result<(), Failure> = async {
                let current = current.ok_or((
                    code::UNKNOWN_TOPIC_OR_PARTITION,
                    format!("topic '{name}' does not exist"),
                ))?;
                if t.count <= current {
                    return Err((
                        code::INVALID_PARTITIONS,
                        format!(
                            "topic has {current} partitions; the new count {} must be larger",
                            t.count
                        ),
                    ));
                }
                if t.count > MAX_PARTITIONS_PER_TOPIC {
                    return Err((
                        code::INVALID_PARTITIONS,
                        format!("at most {MAX_PARTITIONS_PER_TOPIC} partitions per topic"),
                    ));
                }
                if t.assignments.is_some() {
                    return Err((
                        code::INVALID_REQUEST,
                        "manual replica assignments are not supported".into(),
                    ));
                }
                let rf = self
                    .node
                    .cluster()
                    .topics
                    .get(&name)
                    .and_then(|t| t.partitions.first())
                    .map(|p| p.replicas.len() as i16)
                    .unwrap_or(1);
                let new_assignments = self.assign(t.count - current, rf)?;
                if req.validate_only {
                    return Ok(());
                }
                let n = t.count as usize;
                self.propose(MetadataCommand::CreatePartitions {
                    name: name.clone(),
                    new_assignments,
                })
                .await?;
                self.partitions
                    .wait_ready(&name, n, Duration::from_secs(10))
                    .await;
                Ok(())
            }
            .await;
            if let Err((error, message)) = outcome {
                r.error_code = error;
                r.error_message = Some(str_bytes(message));
            }
            resp.results.push(r);
        }
        ResponseKind::CreatePartitions(resp)
    }
}
