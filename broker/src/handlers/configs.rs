//! DescribeConfigs, AlterConfigs and IncrementalAlterConfigs for topics (and a read-only view
//! of the broker's static configuration).

use std::collections::{BTreeMap, HashSet};

use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{
    alter_configs_response, incremental_alter_configs_response, AlterConfigsRequest,
    AlterConfigsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, ResponseKind,
};
use kafka_protocol::protocol::StrBytes;

use chronik_metastore::metadata::{MetadataCommand, MetadataResponse};

use super::{named_twice, repeated, str_bytes};
use crate::broker::Broker;
use crate::errors::{bootstrap_error_code, code, metadata_error_code};
use crate::topic_config;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const SOURCE_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;

type Failure = (i16, String);

impl Broker {
    /// The broker configs DescribeConfigs shows: name, value and Kafka's type code.
    fn broker_configs(&self) -> Vec<(&'static str, String, i8)> {
        const BOOLEAN: i8 = 1;
        const INT: i8 = 3;
        let c = &self.config;
        vec![
            (
                "auto.create.topics.enable",
                c.auto_create_topics.to_string(),
                BOOLEAN,
            ),
            ("message.max.bytes", c.message_max_bytes.to_string(), INT),
            ("num.partitions", c.num_partitions.to_string(), INT),
            (
                "socket.request.max.bytes",
                c.socket_request_max_bytes.to_string(),
                INT,
            ),
            ("broker.id", c.node_id.to_string(), INT),
        ]
    }

    pub(crate) fn describe_configs(
        &self,
        req: DescribeConfigsRequest,
        version: i16,
    ) -> ResponseKind {
        let mut resp = DescribeConfigsResponse::default();
        let res_synonyms = req.include_synonyms;
        for res in &req.resources {
            let mut r = DescribeConfigsResult::default();
            r.resource_type = res.resource_type;
            r.resource_name = res.resource_name.clone();
            let wanted = |k: &str| {
                res.configuration_keys
                    .as_ref()
                    .is_none_or(|keys| keys.iter().any(|w| w.as_str() == k))
            };
            let synonyms = version >= 1 && res_synonyms;
            let entry = |name: &str, value: String, source: i8, read_only: bool| {
                let mut c = DescribeConfigsResourceResult::default();
                c.name = str_bytes(name);
                c.value = Some(str_bytes(value.clone()));
                c.config_source = source;
                c.read_only = read_only;
                if synonyms {
                    c.synonyms.push(synonym(name, value, source));
                }
                c
            };
            match res.resource_type {
                RESOURCE_TOPIC => {
                    let meta = self.node.cluster();
                    match meta.topics.get(res.resource_name.as_str()) {
                        None => {
                            r.error_code = code::UNKNOWN_TOPIC_OR_PARTITION;
                            r.error_message = Some(str_bytes(format!(
                                "topic '{}' does not exist",
                                res.resource_name.as_str()
                            )));
                        }
                        Some(topic) => {
                            for e in topic_config::effective(
                                &topic.configs,
                                self.config.message_max_bytes,
                            ) {
                                if !wanted(e.name) {
                                    continue;
                                }
                                let source = if e.overridden {
                                    SOURCE_TOPIC
                                } else {
                                    SOURCE_DEFAULT
                                };
                                let mut c = entry(e.name, e.value, source, false);
                                // As Kafka: the synonyms in order of precedence, the
                                // topic's own value first, then the default under it.
                                if synonyms && e.overridden {
                                    c.synonyms.push(synonym(e.name, e.default, SOURCE_DEFAULT));
                                }
                                if version >= 3 {
                                    c.config_type = e.wire_type;
                                    if req.include_documentation {
                                        c.documentation = Some(str_bytes(e.doc));
                                    }
                                }
                                r.configs.push(c);
                            }
                        }
                    }
                }
                RESOURCE_BROKER => {
                    let ours = res.resource_name.is_empty()
                        || res.resource_name.as_str() == self.node.node_id.to_string();
                    if ours {
                        for (name, value, wire_type) in self.broker_configs() {
                            if wanted(name) {
                                let mut c = entry(name, value, SOURCE_STATIC_BROKER, true);
                                if version >= 3 {
                                    c.config_type = wire_type;
                                }
                                r.configs.push(c);
                            }
                        }
                    } else {
                        r.error_code = code::INVALID_REQUEST;
                        r.error_message = Some(str_bytes(format!(
                            "broker {} is not this broker",
                            res.resource_name.as_str()
                        )));
                    }
                }
                other => {
                    r.error_code = code::INVALID_REQUEST;
                    r.error_message =
                        Some(str_bytes(format!("resource type {other} is not supported")));
                }
            }
            resp.results.push(r);
        }
        ResponseKind::DescribeConfigs(resp)
    }

    /// Validates and applies config changes to one topic.
    async fn alter_topic(
        &self,
        resource_type: i8,
        name: &StrBytes,
        changes: Result<BTreeMap<String, Option<String>>, Failure>,
        replace_all: bool,
        validate_only: bool,
    ) -> Result<(), Failure> {
        if resource_type == RESOURCE_BROKER {
            return Err((
                code::INVALID_REQUEST,
                "broker configs are static: set them in chronik.toml, CHRONIK_* or flags".into(),
            ));
        }
        if resource_type != RESOURCE_TOPIC {
            return Err((
                code::INVALID_REQUEST,
                format!("resource type {resource_type} is not supported"),
            ));
        }
        let changes = changes?;
        for (key, value) in &changes {
            if let Some(v) = value {
                topic_config::validate(key, v).map_err(|m| (code::INVALID_CONFIG, m))?;
            }
        }
        let name = name.to_string();
        if !self.node.cluster().topics.contains_key(&name) {
            return Err((
                code::UNKNOWN_TOPIC_OR_PARTITION,
                format!("topic '{name}' does not exist"),
            ));
        }
        if validate_only {
            return Ok(());
        }
        match self
            .node
            .propose_metadata(&MetadataCommand::AlterTopicConfigs {
                name,
                changes,
                replace_all,
            })
            .await
        {
            Ok(MetadataResponse::Error(e)) => Err((metadata_error_code(&e), e.to_string())),
            Ok(_) => Ok(()),
            Err(e) => Err((bootstrap_error_code(&e), e.to_string())),
        }
    }

    pub(crate) async fn alter_configs(&self, req: AlterConfigsRequest) -> ResponseKind {
        let mut resp = AlterConfigsResponse::default();
        let checks = check_repeats(req.resources.iter().map(|r| {
            (
                r.resource_type,
                &r.resource_name,
                r.configs.iter().map(|c| &c.name),
            )
        }));
        for (res, check) in req.resources.iter().zip(checks) {
            let Some(check) = check else { continue };
            let changes = check.map(|()| {
                res.configs
                    .iter()
                    .filter_map(|c| {
                        c.value
                            .as_ref()
                            .map(|v| (c.name.to_string(), Some(v.to_string())))
                    })
                    .collect()
            });
            let outcome = self
                .alter_topic(
                    res.resource_type,
                    &res.resource_name,
                    changes,
                    true,
                    req.validate_only,
                )
                .await;
            let mut r = alter_configs_response::AlterConfigsResourceResponse::default();
            r.resource_type = res.resource_type;
            r.resource_name = res.resource_name.clone();
            if let Err((error, message)) = outcome {
                r.error_code = error;
                r.error_message = Some(str_bytes(message));
            }
            resp.responses.push(r);
        }
        ResponseKind::AlterConfigs(resp)
    }

    pub(crate) async fn incremental_alter_configs(
        &self,
        req: IncrementalAlterConfigsRequest,
    ) -> ResponseKind {
        let mut resp = IncrementalAlterConfigsResponse::default();
        let checks = check_repeats(req.resources.iter().map(|r| {
            (
                r.resource_type,
                &r.resource_name,
                r.configs.iter().map(|c| &c.name),
            )
        }));
        for (res, check) in req.resources.iter().zip(checks) {
            let Some(check) = check else { continue };
            let changes: Result<BTreeMap<String, Option<String>>, Failure> = check.and_then(|()| {
                res.configs
                    .iter()
                    .map(|c| match c.config_operation {
                        OP_SET => match &c.value {
                            Some(v) => Ok((c.name.to_string(), Some(v.to_string()))),
                            None => Err((
                                code::INVALID_CONFIG,
                                format!("SET of {} needs a value", c.name.as_str()),
                            )),
                        },
                        OP_DELETE => Ok((c.name.to_string(), None)),
                        op => Err((
                            code::INVALID_REQUEST,
                            format!(
                                "config operation {op} (APPEND/SUBTRACT) is not supported for {}",
                                c.name.as_str()
                            ),
                        )),
                    })
                    .collect()
            });
            let outcome = self
                .alter_topic(
                    res.resource_type,
                    &res.resource_name,
                    changes,
                    false,
                    req.validate_only,
                )
                .await;
            let mut r = incremental_alter_configs_response::AlterConfigsResourceResponse::default();
            r.resource_type = res.resource_type;
            r.resource_name = res.resource_name.clone();
            if let Err((error, message)) = outcome {
                r.error_code = error;
                r.error_message = Some(str_bytes(message));
            }
            resp.responses.push(r);
        }
        ResponseKind::IncrementalAlterConfigs(resp)
    }
}

fn synonym(name: &str, value: String, source: i8) -> DescribeConfigsSynonym {
    let mut s = DescribeConfigsSynonym::default();
    s.name = str_bytes(name);
    s.value = Some(str_bytes(value));
    s.source = source;
    s
}

/// For each resource of an (Incremental)AlterConfigs request, given as (type, name, its
/// config names), in order: `None` to leave it out (a repeat of a resource already
/// answered), an error to answer it with (a resource named twice, or a config named twice
/// in it), or `Ok` to go on. As Kafka, which refuses such requests with INVALID_REQUEST
/// rather than letting the last entry win.
fn check_repeats<'a, N>(
    resources: impl Iterator<Item = (i8, &'a StrBytes, N)> + Clone,
) -> Vec<Option<Result<(), Failure>>>
where
    N: Iterator<Item = &'a StrBytes>,
{
    let twice = repeated(resources.clone().map(|(t, name, _)| (t, name)));
    let mut refused = HashSet::new();
    resources
        .map(|(t, name, configs)| {
            if twice.contains(&(t, name)) {
                return refused
                    .insert((t, name))
                    .then(|| Err(named_twice("resource")));
            }
            match repeated(configs).into_iter().next() {
                Some(config) => Some(Err((
                    code::INVALID_REQUEST,
                    format!(
                        "the request names config {} more than once for this resource",
                        config.as_str()
                    ),
                ))),
                None => Some(Ok(())),
            }
        })
        .collect()
}
