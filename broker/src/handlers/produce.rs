//! Produce: validate each partition's batch, propose it to the partition's Raft group in
//! request order, then wait for the applied results.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, ResponseKind};
use openraft::error::ClientWriteError;

use chronik_metastore::types::TypeConfig;

use super::str_bytes;
use crate::broker::{Broker, Outcome, Reply};
use crate::errors::{batch_error_code, code};
use crate::partition::batch::validate_produce;
use crate::partition::log::{append_command, AppendResult};
use crate::topic_config;

const ZSTD: i16 = 4;

type Receiver = tokio::sync::oneshot::Receiver<openraft::raft::ClientWriteResult<TypeConfig>>;

enum Pending {
    Done(i16, Option<String>),
    /// Proposed by this node as the group's leader in the given term.
    Proposed(Receiver, chronik_metastore::types::Raft, u64),
}

impl Broker {
    pub(crate) async fn produce(self: &Arc<Self>, req: ProduceRequest, version: i16) -> Reply {
        let acks = req.acks;
        let timeout = Duration::from_millis(req.timeout_ms.clamp(1, 300_000) as u64);
        let mut pending: Vec<(kafka_protocol::messages::TopicName, Vec<(i32, Pending)>)> =
            Vec::new();
        for topic in req.topic_data {
            let name = topic.name.0.to_string();
            let mut parts = Vec::new();
            let topic_meta = self.topic_for_produce(&name).await;
            for p in topic.partition_data {
                let result = match (&topic_meta, acks) {
                    (_, a) if !(a == -1 || a == 0 || a == 1) => {
                        Pending::Done(code::INVALID_REQUIRED_ACKS, None)
                    }
                    _ if req.transactional_id.is_some() => Pending::Done(
                        code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                        Some("transactions are not supported".into()),
                    ),
                    (Err(e), _) => Pending::Done(*e, None),
                    (Ok(max_bytes), _) => {
                        self.propose_batch(&name, p.index, p.records, *max_bytes, version, timeout)
                            .await
                    }
                };
                parts.push((p.index, result));
            }
            pending.push((topic.name, parts));
        }
        async move {
            let mut resp = ProduceResponse::default();
            for (name, parts) in pending {
                let mut t = TopicProduceResponse::default();
                t.name = name;
                for (index, p) in parts {
                    let mut r = PartitionProduceResponse::default();
                    r.index = index;
                    r.base_offset = -1;
                    r.log_append_time_ms = -1;
                    r.log_start_offset = -1;
                    let (error, message) = match p {
                        Pending::Done(e, m) => (e, m),
                        Pending::Proposed(rx, raft, term) => match tokio::select! {
                            biased;
                            r = tokio::time::timeout(timeout, rx) => r.map_err(|_| false),
                            _ = chronik_bootstrap::deposed(&raft, term) => Err(true),
                        } {
                            Err(false) => (code::REQUEST_TIMED_OUT, None),
                            // The write may still commit under the next leader; an
                            // idempotent producer's retry is then a duplicate it accepts.
                            Err(true) => (
                                code::NOT_LEADER_OR_FOLLOWER,
                                Some("this node stopped leading the partition".into()),
                            ),
                            Ok(Err(_)) => (
                                code::NOT_LEADER_OR_FOLLOWER,
                                Some("partition stopped".into()),
                            ),
                            Ok(Ok(Err(ClientWriteError::ForwardToLeader(_)))) => {
                                (code::NOT_LEADER_OR_FOLLOWER, None)
                            }
                            Ok(Ok(Err(e))) => (code::UNKNOWN_SERVER_ERROR, Some(e.to_string())),
                            Ok(Ok(Ok(written))) => {
                                let res = AppendResult::decode(&written.data);
                                r.base_offset = res.base_offset;
                                if version >= 5 {
                                    r.log_start_offset = res.log_start_offset;
                                }
                                (res.error, None)
                            }
                        },
                    };
                    r.error_code = error;
                    // error_message exists from v8 on.
                    if version >= 8 {
                        r.error_message = message.map(str_bytes);
                    }
                    t.partition_responses.push(r);
                }
                resp.responses.push(t);
            }
            if acks != 0 {
                return Outcome::Respond(ResponseKind::Produce(resp));
            }
            let failed = resp
                .responses
                .iter()
                .flat_map(|t| &t.partition_responses)
                .any(|p| p.error_code != code::NONE);
            if failed {
                Outcome::Close
            } else {
                Outcome::Nothing
            }
        }
        .boxed()
    }

    /// The topic's max.message.bytes, creating the topic when allowed; else the error code.
    async fn topic_for_produce(&self, name: &str) -> Result<usize, i16> {
        let lookup =
            |b: &Broker| {
                b.node.cluster().topics.get(name).map(|t| {
                    topic_config::max_message_bytes(&t.configs, b.config.message_max_bytes)
                })
            };
        if let Some(max) = lookup(self) {
            return Ok(max);
        }
        if topic_config::validate_topic_name(name).is_err() {
            return Err(code::INVALID_TOPIC_EXCEPTION);
        }
        if !self.config.auto_create_topics {
            return Err(code::UNKNOWN_TOPIC_OR_PARTITION);
        }
        if self.auto_create_topic(name).await.is_ok() {
            self.wait_auto_created(name).await;
        }
        lookup(self).ok_or(code::UNKNOWN_TOPIC_OR_PARTITION)
    }

    async fn propose_batch(
        &self,
        topic: &str,
        index: i32,
        records: Option<bytes::Bytes>,
        max_message_bytes: usize,
        version: i16,
        timeout: Duration,
    ) -> Pending {
        let Some(partition) = self.partitions.get(topic, index) else {
            return Pending::Done(code::UNKNOWN_TOPIC_OR_PARTITION, None);
        };
        if !partition.is_leader(self.node.node_id) {
            return Pending::Done(code::NOT_LEADER_OR_FOLLOWER, None);
        }
        let Some(records) = records else {
            return Pending::Done(code::INVALID_RECORD, Some("no records".into()));
        };
        self.metrics.add_bytes_in(records.len() as u64);
        if !self.tier.wait_within_limit(timeout / 2).await {
            // The bucket is behind (slow or unreachable): refuse rather than let untiered
            // data grow without bound. Clients retry KAFKA_STORAGE_ERROR. Until then the
            // request waits (and its connection reads nothing more), so a producer that is
            // merely ahead of tiering is slowed down instead of resending its batches.
            return Pending::Done(
                code::KAFKA_STORAGE_ERROR,
                Some("untiered data is over max_untiered_bytes: the bucket is behind".into()),
            );
        }
        match validate_produce(&records, max_message_bytes) {
            Err(e) => return Pending::Done(batch_error_code(&e), Some(e.to_string())),
            // Clients learn that zstd is allowed from Produce v7 on (KIP-110).
            Ok(h) if h.compression() == ZSTD && version < 7 => {
                return Pending::Done(
                    code::UNSUPPORTED_COMPRESSION_TYPE,
                    Some("zstd needs produce v7 or later".into()),
                )
            }
            Ok(_) => {}
        }
        // Count the batch as untiered now, not at the tiering loop's next refresh: between
        // refreshes a fast producer could otherwise run far past max_untiered_bytes. (The
        // refresh replaces this with the exact sum, dropping what failed to append.)
        let untiered = partition.log.read().untiered_bytes();
        self.tier.note_appended(records.len() as u64, untiered);
        let Some(term) = chronik_bootstrap::leading_term(&partition.raft) else {
            return Pending::Done(code::NOT_LEADER_OR_FOLLOWER, None);
        };
        match partition
            .raft
            .client_write_ff(append_command(records))
            .await
        {
            Ok(rx) => Pending::Proposed(rx, partition.raft.clone(), term),
            Err(e) => Pending::Done(code::NOT_LEADER_OR_FOLLOWER, Some(e.to_string())),
        }
    }
}
