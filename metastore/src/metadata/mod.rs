//! The cluster metadata state machine (Raft group 0).
//!
//! Owns brokers, topics, partitions (each with the Raft group that stores it), topic config
//! overrides and producer-id allocation. Commands are proposed by whichever node handles the
//! admin request; everything here is a pure, deterministic function of the committed log, so
//! every replica holds the same [`ClusterMetadata`]. Validation of Kafka semantics (config
//! keys, name rules) happens before proposing; apply only checks what depends on state
//! (exists / does not exist).

mod command;
mod state;

pub use command::{MetadataCommand, MetadataError, MetadataResponse};
pub use state::{BrokerInfo, ClusterMetadata, PartitionMeta, TopicMeta};

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;
use tokio::sync::watch;

use crate::snapshot_buf::SnapshotWriter;
use crate::state_machine::ApplyState;
use crate::types::{Command, CommandResponse, LogId};

/// The metadata group's application state plus a watch that publishes every change.
pub struct MetadataState {
    current: Arc<ClusterMetadata>,
    publish: watch::Sender<Arc<ClusterMetadata>>,
}

impl MetadataState {
    pub fn new() -> (Self, watch::Receiver<Arc<ClusterMetadata>>) {
        let current = Arc::new(ClusterMetadata::default());
        let (publish, rx) = watch::channel(current.clone());
        (Self { current, publish }, rx)
    }

    pub fn current(&self) -> Arc<ClusterMetadata> {
        self.current.clone()
    }
}

impl ApplyState for MetadataState {
    fn apply(&mut self, _log_id: &LogId, command: &Command) -> CommandResponse {
        let response = match serde_json::from_slice::<MetadataCommand>(&command.0) {
            Ok(cmd) => Arc::make_mut(&mut self.current).apply(cmd),
            Err(err) => MetadataResponse::Error(MetadataError::Malformed(err.to_string())),
        };
        // Serialising a plain enum of strings and integers cannot fail.
        CommandResponse(Bytes::from(
            serde_json::to_vec(&response).unwrap_or_default(),
        ))
    }

    fn write_snapshot(&self, out: &mut SnapshotWriter) -> Result<(), String> {
        serde_json::to_writer(out, self.current.as_ref()).map_err(|e| e.to_string())
    }

    fn from_snapshot(bytes: &[u8]) -> Result<Self, String> {
        let state: ClusterMetadata = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let current = Arc::new(state);
        let (publish, _) = watch::channel(current.clone());
        Ok(Self { current, publish })
    }

    fn adopt(&mut self, restored: Self) {
        // Keep the publishing channel: the node's readers are subscribed to it.
        self.current = restored.current;
    }

    fn applied(state: &Arc<RwLock<Self>>) {
        let guard = state.read();
        guard.publish.send_replace(guard.current.clone());
    }
}

/// Encodes a command for [`crate::types::Command`].
pub fn encode_command(cmd: &MetadataCommand) -> Command {
    Command(Bytes::from(serde_json::to_vec(cmd).unwrap_or_default()))
}

/// Decodes the response of an applied metadata command.
pub fn decode_response(resp: &CommandResponse) -> MetadataResponse {
    serde_json::from_slice(&resp.0).unwrap_or_else(|e| {
        MetadataResponse::Error(MetadataError::Malformed(format!("bad response: {e}")))
    })
}
