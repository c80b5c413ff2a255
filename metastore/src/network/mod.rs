//! The Raft transport between nodes.
//!
//! One [`Transport`] per node carries the RPCs of every Raft group on it: each envelope
//! names its group, and a peer pair shares one gRPC (HTTP/2) connection whatever the
//! number of groups. [`PeerNetwork`] is the openraft network factory of one group; the
//! server side ([`server::serve`]) hands each envelope to the group it names.
//!
//! A single node is the one-voter case: its groups never send an RPC.
//!
//! Besides openraft's three RPCs the transport forwards client writes to a group's leader
//! ([`Transport::propose`]), so a metadata change can be made through any node, and lets a
//! node that is not a voter ask to follow the metadata group ([`Transport::join`]).

mod gate;
pub mod quiet;
pub mod server;
pub mod wire;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use http::uri::PathAndQuery;
use openraft::error::{
    ClientWriteError, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use parking_lot::{Mutex, RwLock};
use tonic::transport::{Channel, Endpoint};

use crate::types::{Command, CommandResponse, GroupId, NodeId, Raft, TypeConfig};
use wire::{BytesCodec, Envelope, ProposeError, RpcReply, RpcRequest, CALL_PATH};

/// Why an RPC got no answer from its peer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("no address known for node {0}: list it in --peers")]
    NoAddress(NodeId),
    #[error("node {node} at {addr}: {message}")]
    Unreachable {
        node: NodeId,
        addr: String,
        message: String,
    },
    #[error("node {node} refused: {message}")]
    Refused { node: NodeId, message: String },
    #[error("node {node} refused: {message}")]
    Misconfigured { node: NodeId, message: String },
    #[error("node {node} answered with something unexpected: {message}")]
    Protocol { node: NodeId, message: String },
}

/// Adds a node that asked to join as a learner of the metadata group (run on the node
/// that receives the request; it forwards to the leader itself if it must).
pub type JoinHandler =
    Arc<dyn Fn(NodeId, String) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The node's end of the Raft transport.
pub struct Transport {
    node_id: NodeId,
    incarnation: String,
    /// Addresses from `--peers`: they win over what a group's membership remembers, so a
    /// cluster restored from the bucket onto new addresses reaches its peers.
    configured: BTreeMap<NodeId, String>,
    /// Addresses learned from the cluster metadata (nodes added later).
    learned: RwLock<HashMap<NodeId, String>>,
    channels: Mutex<HashMap<String, Channel>>,
    groups: RwLock<HashMap<GroupId, Raft>>,
    join: OnceLock<JoinHandler>,
    sent: AtomicU64,
    received: AtomicU64,
    /// When each peer last answered a call or sent one of its own (of this cluster).
    heard: RwLock<HashMap<NodeId, Instant>>,
    gate: Mutex<gate::GateState>,
    quiet: Mutex<quiet::QuietState>,
    timeout: Duration,
}

impl Transport {
    pub fn new(
        node_id: NodeId,
        incarnation: String,
        configured: BTreeMap<NodeId, String>,
    ) -> Arc<Self> {
        Arc::new(Self {
            node_id,
            incarnation,
            configured,
            learned: RwLock::new(HashMap::new()),
            channels: Mutex::new(HashMap::new()),
            groups: RwLock::new(HashMap::new()),
            join: OnceLock::new(),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            heard: RwLock::new(HashMap::new()),
            gate: Mutex::new(gate::GateState::default()),
            quiet: Mutex::new(quiet::QuietState::default()),
            timeout: Duration::from_secs(5),
        })
    }

    /// Remembers where `node` listens (from the cluster metadata).
    pub fn learn_address(&self, node: NodeId, addr: &str) {
        if !addr.is_empty() && !self.configured.contains_key(&node) {
            self.learned.write().insert(node, addr.to_string());
        }
    }

    /// Where `node` listens: configuration first, then what was learned, then `hint` (a
    /// group membership's record).
    pub fn address(&self, node: NodeId, hint: Option<&str>) -> Option<String> {
        self.configured
            .get(&node)
            .cloned()
            .or_else(|| self.learned.read().get(&node).cloned())
            .or_else(|| hint.filter(|h| !h.is_empty()).map(str::to_string))
    }

    /// Routes incoming RPCs for `group` to `raft`.
    pub fn register(&self, group: GroupId, raft: Raft) {
        self.forget_gate(group);
        self.groups.write().insert(group, raft);
    }

    /// Whether this node leads `group` now.
    pub fn is_leader(&self, group: GroupId) -> bool {
        self.groups.read().get(&group).is_some_and(|raft| {
            let m = raft.metrics();
            let m = m.borrow();
            m.state == openraft::ServerState::Leader
        })
    }

    pub fn unregister(&self, group: GroupId) {
        self.groups.write().remove(&group);
        self.forget_gate(group);
    }

    pub fn set_join_handler(&self, handler: JoinHandler) {
        let _ = self.join.set(handler);
    }

    /// RPCs sent and received since start (for the idle-traffic metric).
    pub fn message_counts(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed),
        )
    }

    /// How long ago `node` was last heard from: an answer to a call, or a call of its own.
    /// None if never since this node started.
    pub fn heard_since(&self, node: NodeId) -> Option<Duration> {
        self.heard.read().get(&node).map(Instant::elapsed)
    }

    fn heard_from(&self, node: NodeId) {
        self.heard.write().insert(node, Instant::now());
    }

    pub fn network(self: &Arc<Self>, group: GroupId) -> PeerNetwork {
        PeerNetwork {
            group,
            transport: self.clone(),
        }
    }

    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock();
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad raft address {addr}: {e}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10));
        let channel = endpoint.connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    /// Sends one request to `target` and waits (at most `ttl`) for its reply.
    pub async fn call(
        &self,
        target: NodeId,
        hint: Option<&str>,
        group: GroupId,
        request: RpcRequest,
        ttl: Duration,
    ) -> Result<RpcReply, CallError> {
        let addr = self
            .address(target, hint)
            .ok_or(CallError::NoAddress(target))?;
        let unreachable = |message: String| CallError::Unreachable {
            node: target,
            addr: addr.clone(),
            message,
        };
        let envelope = Envelope {
            incarnation: self.incarnation.clone(),
            from: self.node_id,
            to: target,
            group,
            request,
        };
        let body = wire::encode(&envelope).map_err(|e| CallError::Protocol {
            node: target,
            message: e,
        })?;
        let channel = self.channel(&addr).map_err(unreachable)?;
        self.sent.fetch_add(1, Ordering::Relaxed);
        let call = async {
            let mut grpc = tonic::client::Grpc::new(channel)
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX);
            grpc.ready()
                .await
                .map_err(|e| unreachable(format!("connect: {e}")))?;
            grpc.unary(
                tonic::Request::new(body),
                PathAndQuery::from_static(CALL_PATH),
                BytesCodec,
            )
            .await
            .map_err(|s| unreachable(format!("{}: {}", s.code(), s.message())))
        };
        let reply = tokio::time::timeout(ttl, call)
            .await
            .map_err(|_| unreachable(format!("no answer within {ttl:?}")))??;
        let reply: RpcReply =
            wire::decode(&reply.into_inner()).map_err(|message| CallError::Protocol {
                node: target,
                message,
            })?;
        if !matches!(reply, RpcReply::Misconfigured(_)) {
            self.heard_from(target);
        }
        match reply {
            RpcReply::Refused(message) => Err(CallError::Refused {
                node: target,
                message,
            }),
            RpcReply::Misconfigured(message) => Err(CallError::Misconfigured {
                node: target,
                message,
            }),
            reply => Ok(reply),
        }
    }

    /// Applies `command` on `group` through its leader: locally when this node leads,
    /// otherwise forwarded to the leader (following redirects a few times).
    pub async fn propose(
        &self,
        raft: &Raft,
        group: GroupId,
        command: Command,
    ) -> Result<CommandResponse, ProposeError> {
        let mut leader = match raft.client_write(command.clone()).await {
            Ok(resp) => return Ok(resp.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => f.leader_id,
            Err(e) => return Err(ProposeError::Failed(e.to_string())),
        };
        for _ in 0..5 {
            let Some(target) = leader.filter(|l| *l != self.node_id) else {
                // No leader known yet (an election is running): wait for one.
                tokio::time::sleep(Duration::from_millis(200)).await;
                leader = raft.current_leader().await;
                if leader == Some(self.node_id) {
                    return match raft.client_write(command.clone()).await {
                        Ok(resp) => Ok(resp.data),
                        Err(e) => Err(ProposeError::Failed(e.to_string())),
                    };
                }
                continue;
            };
            // A node that joined with a partial --peers list knows the leader's address
            // only from the group's membership.
            let hint = raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .get_node(&target)
                .map(|n| n.addr.clone());
            match self
                .call(
                    target,
                    hint.as_deref(),
                    group,
                    RpcRequest::Propose(command.clone()),
                    self.timeout,
                )
                .await
            {
                Ok(RpcReply::Proposed(Ok(resp))) => return Ok(resp),
                Ok(RpcReply::Proposed(Err(ProposeError::NotLeader(next)))) => leader = next,
                Ok(RpcReply::Proposed(Err(e))) => return Err(e),
                Ok(other) => {
                    return Err(ProposeError::Failed(format!(
                        "unexpected reply to a proposal: {other:?}"
                    )))
                }
                Err(e) => {
                    tracing::debug!(group, %e, "forward proposal");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    leader = raft.current_leader().await;
                }
            }
        }
        Err(ProposeError::NotLeader(leader))
    }

    /// Asks `target` to add `node` (listening on `raft_addr`) as a learner of the
    /// metadata group.
    pub async fn join(
        &self,
        target: NodeId,
        node: NodeId,
        raft_addr: &str,
    ) -> Result<(), CallError> {
        let request = RpcRequest::Join {
            node,
            raft_addr: raft_addr.to_string(),
        };
        match self
            .call(
                target,
                None,
                crate::types::METADATA_GROUP,
                request,
                self.timeout,
            )
            .await?
        {
            RpcReply::Joined(Ok(())) => Ok(()),
            RpcReply::Joined(Err(message)) => Err(CallError::Refused {
                node: target,
                message,
            }),
            other => Err(CallError::Protocol {
                node: target,
                message: format!("unexpected reply to join: {other:?}"),
            }),
        }
    }

    /// Serves one incoming envelope.
    pub async fn handle(&self, envelope: Envelope) -> RpcReply {
        self.received.fetch_add(1, Ordering::Relaxed);
        if envelope.incarnation != self.incarnation {
            return RpcReply::Misconfigured(format!(
                "node {} belongs to cluster incarnation {}, but node {} is of incarnation {}: a node of another cluster must not join this one (check --peers and --bucket)",
                self.node_id, self.incarnation, envelope.from, envelope.incarnation
            ));
        }
        if envelope.to != self.node_id {
            return RpcReply::Misconfigured(format!(
                "node {} was sent a message meant for node {}: the peer list of node {} names the wrong address for node {}",
                self.node_id, envelope.to, envelope.from, envelope.to
            ));
        }
        self.heard_from(envelope.from);
        if let RpcRequest::Join { node, raft_addr } = envelope.request {
            let Some(join) = self.join.get().cloned() else {
                return RpcReply::Joined(Err(format!("node {} is still starting", self.node_id)));
            };
            return RpcReply::Joined(join(node, raft_addr).await);
        }
        if let RpcRequest::Beacon(list) = envelope.request {
            return RpcReply::Beacon(self.receive_beacon(envelope.from, list));
        }
        let Some(raft) = self.groups.read().get(&envelope.group).cloned() else {
            return RpcReply::Refused(format!(
                "node {} does not run raft group {} (yet)",
                self.node_id, envelope.group
            ));
        };
        match envelope.request {
            RpcRequest::Append(rpc) => {
                self.heard_leader(envelope.group, &raft, false);
                RpcReply::Append(raft.append_entries(rpc).await)
            }
            RpcRequest::Vote(rpc) => RpcReply::Vote(raft.vote(rpc).await),
            RpcRequest::InstallSnapshot(rpc) => {
                RpcReply::InstallSnapshot(raft.install_snapshot(rpc).await)
            }
            RpcRequest::Propose(command) => {
                RpcReply::Proposed(match raft.client_write(command).await {
                    Ok(resp) => Ok(resp.data),
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                        Err(ProposeError::NotLeader(f.leader_id))
                    }
                    Err(e) => Err(ProposeError::Failed(e.to_string())),
                })
            }
            RpcRequest::Steer {
                campaign,
                window_ms,
            } => {
                steer(
                    self,
                    raft,
                    envelope.group,
                    campaign,
                    Duration::from_millis(window_ms),
                );
                RpcReply::Steered
            }
            RpcRequest::Join { .. } | RpcRequest::Beacon(_) => {
                RpcReply::Refused("handled above".into())
            }
        }
    }
}

/// Hands leadership of `group` (led by this node) to `to`, its preferred leader: the
/// other voters hold back their elections, this leader stops heartbeats, and `to`
/// campaigns once the leader lease has run out. openraft 0.9 has no leadership transfer;
/// this builds one from its runtime switches. If the hand-off does not happen within the
/// window (writes keep the lease alive, `to` fails) everything switches back and this
/// node simply stays leader.
pub async fn hand_off(transport: &Transport, raft: &Raft, group: GroupId, to: NodeId) -> bool {
    let (voters, hint) = {
        let m = raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        (
            membership.voter_ids().collect::<Vec<_>>(),
            membership.get_node(&to).map(|n| n.addr.clone()),
        )
    };
    let config = raft.config();
    let window = Duration::from_millis(config.election_timeout_max * 4 + config.heartbeat_interval);
    let window_ms = window.as_millis() as u64;
    for other in voters
        .iter()
        .filter(|v| **v != to && **v != transport.node_id)
    {
        let request = RpcRequest::Steer {
            campaign: false,
            window_ms,
        };
        if transport
            .call(*other, None, group, request, transport.timeout)
            .await
            .is_err()
        {
            return false;
        }
    }
    let request = RpcRequest::Steer {
        campaign: true,
        window_ms,
    };
    if transport
        .call(to, hint.as_deref(), group, request, transport.timeout)
        .await
        .is_err()
    {
        return false;
    }
    steer(transport, raft.clone(), group, false, window);
    transport.hold_heartbeats(group, raft, Some(Instant::now() + window));
    let mut metrics = raft.metrics();
    let moved = tokio::time::timeout(window, async {
        loop {
            if metrics.borrow_and_update().current_leader == Some(to) {
                return;
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    })
    .await
    .is_ok();
    transport.hold_heartbeats(group, raft, None);
    moved
}

/// Applies a [`RpcRequest::Steer`] locally.
fn steer(transport: &Transport, raft: Raft, group: GroupId, campaign: bool, window: Duration) {
    if !campaign {
        transport.hold_elections(group, window);
        return;
    }
    tokio::spawn(async move {
        let config = raft.config().clone();
        // The old leader's lease (election_timeout_max) must run out before anyone
        // grants a vote; try a few times within the window.
        let wait = Duration::from_millis(config.election_timeout_max + config.heartbeat_interval);
        let deadline = tokio::time::Instant::now() + window;
        while tokio::time::Instant::now() + wait < deadline {
            tokio::time::sleep(wait).await;
            if raft.metrics().borrow().state == openraft::ServerState::Leader {
                return;
            }
            let _ = raft.trigger().elect().await;
        }
    });
}

/// Creates per-peer clients for one Raft group.
#[derive(Clone)]
pub struct PeerNetwork {
    group: GroupId,
    transport: Arc<Transport>,
}

/// A client for one peer of one group.
pub struct PeerClient {
    group: GroupId,
    target: NodeId,
    hint: String,
    transport: Arc<Transport>,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            group: self.group,
            target,
            hint: node.addr.clone(),
            transport: self.transport.clone(),
        }
    }
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, E>>;

impl PeerClient {
    async fn send(&self, request: RpcRequest, option: &RPCOption) -> Result<RpcReply, CallError> {
        self.transport
            .call(
                self.target,
                Some(&self.hint),
                self.group,
                request,
                option.hard_ttl(),
            )
            .await
    }

    fn failed<E: std::error::Error>(&self, err: CallError) -> RPCError<NodeId, BasicNode, E> {
        match err {
            CallError::Protocol { .. } => RPCError::Network(NetworkError::new(&err)),
            CallError::Misconfigured { .. } => {
                tracing::warn!(group = self.group, target = self.target, %err, "raft peer refused");
                RPCError::Unreachable(Unreachable::new(&err))
            }
            _ => RPCError::Unreachable(Unreachable::new(&err)),
        }
    }

    fn unexpected<E: std::error::Error>(&self, reply: RpcReply) -> RPCError<NodeId, BasicNode, E> {
        self.failed(CallError::Protocol {
            node: self.target,
            message: format!("unexpected reply {reply:?}"),
        })
    }

    fn remote<E: std::error::Error>(
        &self,
        err: RaftError<NodeId, E>,
    ) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
        RPCError::RemoteError(RemoteError::new(self.target, err))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        match self.send(RpcRequest::Append(rpc), &option).await {
            Ok(RpcReply::Append(Ok(resp))) => Ok(resp),
            Ok(RpcReply::Append(Err(e))) => Err(self.remote(e)),
            Ok(other) => Err(self.unexpected(other)),
            Err(e) => Err(self.failed(e)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        match self.send(RpcRequest::InstallSnapshot(rpc), &option).await {
            Ok(RpcReply::InstallSnapshot(Ok(resp))) => Ok(resp),
            Ok(RpcReply::InstallSnapshot(Err(e))) => Err(self.remote(e)),
            Ok(other) => Err(self.unexpected(other)),
            Err(e) => Err(self.failed(e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, RaftError<NodeId>> {
        match self.send(RpcRequest::Vote(rpc), &option).await {
            Ok(RpcReply::Vote(Ok(resp))) => Ok(resp),
            Ok(RpcReply::Vote(Err(e))) => Err(self.remote(e)),
            Ok(other) => Err(self.unexpected(other)),
            Err(e) => Err(self.failed(e)),
        }
    }
}

/// Parses `ID@HOST:PORT,…` (the `--peers` syntax).
pub fn parse_peers(spec: &str) -> Result<BTreeMap<NodeId, String>, String> {
    let mut peers = BTreeMap::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) = item
            .split_once('@')
            .ok_or_else(|| format!("peer '{item}' is not ID@HOST:PORT"))?;
        let id: NodeId = id
            .trim()
            .parse()
            .map_err(|_| format!("peer '{item}': '{id}' is not a node id (a number)"))?;
        let addr = addr.trim();
        if addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            return Err(format!("peer '{item}': '{addr}' is not HOST:PORT"));
        }
        if let Some(prev) = peers.insert(id, addr.to_string()) {
            return Err(format!(
                "node id {id} appears twice in the peer list ({prev} and {addr}); every node needs its own id"
            ));
        }
    }
    let mut seen: HashMap<&str, NodeId> = HashMap::new();
    for (id, addr) in &peers {
        if let Some(other) = seen.insert(addr.as_str(), *id) {
            return Err(format!(
                "nodes {other} and {id} have the same raft address {addr} in the peer list"
            ));
        }
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_reject_mistakes() {
        let p = parse_peers("1@127.0.0.1:9192, 2@127.0.0.1:9193,3@h:9194").expect("ok");
        assert_eq!(p.len(), 3);
        assert_eq!(p[&2], "127.0.0.1:9193");
        assert!(parse_peers("1@a:1,1@b:2")
            .expect_err("refused")
            .contains("twice"));
        assert!(parse_peers("1@a:1,2@a:1")
            .expect_err("refused")
            .contains("same raft address"));
        assert!(parse_peers("x@a:1")
            .expect_err("refused")
            .contains("node id"));
        assert!(parse_peers("1@a")
            .expect_err("refused")
            .contains("HOST:PORT"));
        assert!(parse_peers("1-a:1")
            .expect_err("refused")
            .contains("ID@HOST:PORT"));
    }
}
