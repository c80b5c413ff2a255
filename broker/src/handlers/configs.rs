//! DescribeConfigs, AlterConfigs and IncrementalAlterConfigs for topics (and a read-only view
//! of the broker's static configuration).

use std::collections::BTreeMap;

use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{
    alter_configs_response, incremental_alter_configs_response, AlterConfigsRequest,
    AlterConfigsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, ResponseKind,
};
use kafka_protocol::protocol::StrBytes;

use chronik_metastore::metadata::{MetadataCommand, MetadataResponse};

use super::str_bytes;
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
    fn broker_configs(&self) -> Vec<(&'static str, String)> {
        let c = &self.config;
        vec![
            (
                "auto.create.topics.enable",
                c.auto_create_topics.to_string(),
            ),
            ("message.max.bytes", c.message_max_bytes.to_string()),
            ("num.partitions", c.num_partitions.to_string()),
            (
                "socket.request.max.bytes",
                c.socket_request_max_bytes.to_string(),
            ),
            ("broker.id", c.node_id.to_string()),
        ]
    }

    pub(crate) fn describe_configs(&self, req: DescribeConfigsRequest) -> ResponseKind {
        let mut resp = DescribeConfigsResponse::default();
        for res in req.resources {
            let mut r = DescribeConfigsResult::default();
            r.resource_type = res.resource_type;
            r.resource_name = res.resource_name.clone();
            let wanted = |k: &str| {
                res.configuration_keys
                    .as_ref()
                    .is_none_or(|keys| keys.iter().any(|w| w.as_str() == k))
            };
            let entry = |name: &str, value: String, source: i8, read_only: bool| {
                let mut c = DescribeConfigsResourceResult::default();
                c.name = str_bytes(name);
                c.value = Some(str_bytes(value));
                c.config_source = source;
                c.read_only = read_only;
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
                            for (name, value, default) in topic_config::effective(
                                &topic.configs,
                                self.config.message_max_bytes,
                            ) {
                                if wanted(name) {
                                    let source = if default {
                                        SOURCE_DEFAULT
                                    } else {
                                        SOURCE_TOPIC
                                    };
                                    r.configs.push(entry(name, value, source, false));
                                }
                            }
                        }
                    }
                }
                RESOURCE_BROKER => {
                    let ours = res.resource_name.is_empty()
                        || res.resource_name.as_str() == self.node.node_id.to_string();
                    if ours {
                        for (name, value) in self.broker_configs() {
                            if wanted(name) {
                                r.configs
                                    .push(entry(name, value, SOURCE_STATIC_BROKER, true));
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
        for res in req.resources {
            let changes = Ok(res
                .configs
                .iter()
                .filter_map(|c| {
                    c.value
                        .as_ref()
                        .map(|v| (c.name.to_string(), Some(v.to_string())))
                })
                .collect());
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
            r.resource_name = res.resource_name;
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
        for res in req.resources {
            let changes: Result<BTreeMap<String, Option<String>>, Failure> = res
                .configs
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
                .collect();
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
            r.resource_name = res.resource_name;
            if let Err((error, message)) = outcome {
                r.error_code = error;
                r.error_message = Some(str_bytes(message));
            }
            resp.responses.push(r);
        }
        ResponseKind::IncrementalAlterConfigs(resp)
    }
}
