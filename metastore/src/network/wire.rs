//! What travels between nodes: one envelope per RPC, encoded with bincode and carried as
//! the raw body of a unary gRPC call (`/chronik.raft.Raft/Call`).
//!
//! Every envelope names the cluster incarnation and both node ids, so a node of another
//! cluster, or a peer list that points at the wrong node, is refused with a message that
//! says which, instead of corrupting a group.

use bytes::{Buf, BufMut, Bytes};
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

use super::quiet::Quiet;
use crate::types::{Command, CommandResponse, GroupId, NodeId, TypeConfig};

/// The gRPC path of the one method the transport serves.
pub const CALL_PATH: &str = "/chronik.raft.Raft/Call";

#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    pub incarnation: String,
    pub from: NodeId,
    pub to: NodeId,
    pub group: GroupId,
    pub request: RpcRequest,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum RpcRequest {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A client write forwarded to the group's leader (e.g. a metadata change made through
    /// any node).
    Propose(Command),
    /// A node asks to receive the metadata group's log (as a learner).
    Join {
        node: NodeId,
        raft_addr: String,
    },
    /// Leadership hand-off, sent by a group's leader: `campaign` asks the receiver to take
    /// over (it campaigns once the leader's lease has run out), otherwise the receiver
    /// holds back its own elections for `window_ms` so that the chosen node wins.
    Steer {
        campaign: bool,
        window_ms: u64,
    },
    /// The quiet groups the sender leads that the receiver is a member of
    /// ([`super::quiet`]): one message per node pair and heartbeat interval instead of a
    /// heartbeat per group.
    Beacon(Vec<Quiet>),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum RpcReply {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    Proposed(Result<CommandResponse, ProposeError>),
    Joined(Result<(), String>),
    Steered,
    /// The receiver will not handle this envelope (a group it does not run); the text
    /// says why.
    Refused(String),
    /// The sender is misconfigured: it is of another cluster, or its peer list sent this
    /// to the wrong node. Retrying cannot help.
    Misconfigured(String),
    /// The groups of a beacon whose member wants real heartbeats (it is behind, or sees
    /// another term or leader).
    Beacon(Vec<GroupId>),
}

/// Why a forwarded proposal was not applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ProposeError {
    #[error("node is not the leader of the group (leader: {0:?})")]
    NotLeader(Option<NodeId>),
    #[error("{0}")]
    Failed(String),
}

pub fn encode<T: Serialize>(value: &T) -> Result<Bytes, String> {
    bincode::serialize(value)
        .map(Bytes::from)
        .map_err(|e| e.to_string())
}

pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, String> {
    bincode::deserialize(bytes).map_err(|e| e.to_string())
}

/// A gRPC codec whose messages are opaque bytes (already encoded envelopes).
#[derive(Clone, Copy, Debug, Default)]
pub struct BytesCodec;

impl Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = BytesCodec;
    type Decoder = BytesCodec;

    fn encoder(&mut self) -> Self::Encoder {
        BytesCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        BytesCodec
    }
}

impl Encoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n)))
    }
}
