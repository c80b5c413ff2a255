//! The Raft transport between nodes.
//!
//! A single node is the one-voter case: its groups never send an RPC, because there is no
//! other voter. [`PeerNetwork`] is the factory every group is started with; until the gRPC
//! transport lands (multi-node clusters), a peer it has no address for is unreachable, which
//! openraft treats as a lost message and retries — the same path a network cut takes.

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;

use crate::types::{GroupId, NodeId, TypeConfig};

#[derive(Debug, thiserror::Error)]
#[error(
    "no transport to node {target} for group {group}: multi-node clusters need the raft transport"
)]
struct NoTransport {
    group: GroupId,
    target: NodeId,
}

/// Creates per-peer clients for one Raft group.
#[derive(Clone, Debug)]
pub struct PeerNetwork {
    group: GroupId,
}

impl PeerNetwork {
    pub fn new(group: GroupId) -> Self {
        Self { group }
    }
}

/// A client for one peer of one group.
pub struct PeerClient {
    group: GroupId,
    target: NodeId,
}

impl PeerClient {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<NodeId, BasicNode, E> {
        RPCError::Unreachable(Unreachable::new(&NoTransport {
            group: self.group,
            target: self.target,
        }))
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> PeerClient {
        PeerClient {
            group: self.group,
            target,
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(self.unreachable())
    }
}
