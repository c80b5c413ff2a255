//! The broker: shared state of a running node and the dispatch of decoded requests to
//! their handlers.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};

use chronik_bootstrap::Node;

use crate::config::Config;
use crate::group::Coordinator;
use crate::metrics::Metrics;
use crate::partition::Registry;
use crate::protocol::{encode_response, Request};

/// A running broker; cheap to share.
pub struct Broker {
    pub config: Config,
    pub node: Node,
    pub partitions: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    /// Consumer groups and committed offsets.
    pub groups: Arc<Coordinator>,
    /// Tiering to the bucket and reads of tiered data.
    pub tier: Arc<crate::tiering::Tier>,
    /// (host, port) told to clients.
    pub advertised: (String, u16),
    /// Keeps a second process off this node's data directory while it runs.
    pub _data_dir_lock: chronik_bootstrap::lock::DataDirLock,
    /// The bucket lease's renewal, given up on a clean stop.
    pub lease: parking_lot::Mutex<Option<chronik_bootstrap::fencing::LeaseTask>>,
}

/// A handler's answer, once its work is done.
pub type Reply = BoxFuture<'static, Outcome>;

/// What a handler answers. (As large as the `Option<ResponseKind>` it replaced; boxing
/// the response would cost an allocation per request.)
#[allow(clippy::large_enum_variant)]
pub enum Outcome {
    Respond(ResponseKind),
    /// No response: a produce with acks=0.
    Nothing,
    /// A produce with acks=0 failed: close the connection, as Kafka does, so the client
    /// (which expects no answer) sees the failure and refreshes its metadata.
    Close,
}

/// What the connection does with one request's outcome.
pub enum Answer {
    Send(Bytes),
    /// Produce with acks=0.
    Nothing,
    /// The response could not be encoded, or an acks=0 produce failed: close the
    /// connection rather than leave the client waiting or unaware.
    Close,
}

pub fn ready(resp: ResponseKind) -> Reply {
    futures::future::ready(Outcome::Respond(resp)).boxed()
}

impl Broker {
    /// Handles one request. Work whose order matters across requests of one connection
    /// (proposing produce batches) is done before this returns; the returned future only
    /// waits for results, so a connection can pipeline requests and still answer in order.
    /// `peer` is the client's address, shown as group members' host.
    pub async fn handle(
        self: &Arc<Self>,
        req: Request,
        peer: IpAddr,
    ) -> BoxFuture<'static, Answer> {
        let started = Instant::now();
        let api = req.api_key;
        let version = req.version;
        let correlation_id = req.header.correlation_id;
        let reply = match req.body {
            RequestKind::ApiVersions(r) => ready(self.api_versions(r)),
            RequestKind::Metadata(r) => ready(self.metadata(r, version).await),
            RequestKind::Produce(r) => self.produce(r, version).await,
            RequestKind::Fetch(r) => {
                let this = self.clone();
                async move { Outcome::Respond(this.fetch(r, version).await) }.boxed()
            }
            RequestKind::ListOffsets(r) => ready(self.list_offsets(r, version).await),
            RequestKind::OffsetForLeaderEpoch(r) => ready(self.offset_for_leader_epoch(r)),
            RequestKind::CreateTopics(r) => ready(self.create_topics(r, version).await),
            RequestKind::DeleteTopics(r) => ready(self.delete_topics(r, version).await),
            RequestKind::CreatePartitions(r) => ready(self.create_partitions(r).await),
            RequestKind::DeleteRecords(r) => ready(self.delete_records(r).await),
            RequestKind::DescribeConfigs(r) => ready(self.describe_configs(r, version)),
            RequestKind::AlterConfigs(r) => ready(self.alter_configs(r).await),
            RequestKind::IncrementalAlterConfigs(r) => {
                ready(self.incremental_alter_configs(r).await)
            }
            RequestKind::DescribeCluster(r) => ready(self.describe_cluster(r)),
            RequestKind::AlterPartitionReassignments(r) => {
                ready(self.alter_partition_reassignments(r, version).await)
            }
            RequestKind::ListPartitionReassignments(r) => {
                ready(self.list_partition_reassignments(r))
            }
            RequestKind::InitProducerId(r) => ready(self.init_producer_id(r).await),
            RequestKind::FindCoordinator(r) => ready(self.find_coordinator(r, version)),
            RequestKind::JoinGroup(r) => {
                let client_id = req
                    .header
                    .client_id
                    .as_deref()
                    .unwrap_or_default()
                    .to_string();
                // As Kafka shows it (a Java InetAddress without a host name).
                self.join_group(r, version, client_id, format!("/{peer}"))
            }
            RequestKind::SyncGroup(r) => self.sync_group(r, version),
            RequestKind::Heartbeat(r) => ready(self.heartbeat(r, version)),
            RequestKind::LeaveGroup(r) => ready(self.leave_group(r, version)),
            RequestKind::OffsetCommit(r) => self.offset_commit(r, version),
            RequestKind::OffsetFetch(r) => ready(self.offset_fetch(r, version)),
            RequestKind::ListGroups(r) => ready(self.list_groups(r, version)),
            RequestKind::DescribeGroups(r) => ready(self.describe_groups(r, version)),
            RequestKind::DeleteGroups(r) => self.delete_groups(r),
            RequestKind::OffsetDelete(r) => self.offset_delete(r),
            other => {
                // decode_request only lets advertised APIs through, so this is a bug.
                tracing::error!(?api, "no handler for decoded request {:?}", other);
                futures::future::ready(Outcome::Nothing).boxed()
            }
        };
        let metrics = self.metrics.clone();
        async move {
            let resp = reply.await;
            let encoded = match resp {
                Outcome::Respond(resp) => match encode_response(correlation_id, version, &resp) {
                    Ok(b) => Answer::Send(b),
                    Err(err) => {
                        tracing::error!(?api, version, %err, "encode response");
                        Answer::Close
                    }
                },
                Outcome::Nothing => Answer::Nothing,
                Outcome::Close => Answer::Close,
            };
            metrics.observe_request(api, started.elapsed());
            encoded
        }
        .boxed()
    }

    pub fn api_name(api: ApiKey) -> &'static str {
        crate::metrics::api_name(api)
    }
}
