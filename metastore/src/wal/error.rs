//! The WAL's error type.
//!
//! Every error that concerns bytes on disk names the segment file and the byte offset, so an
//! operator can find the damage without re-reading the code.

use std::io;
use std::path::PathBuf;

use crate::types::GroupId;

/// Errors of the node WAL.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A file-system call failed.
    #[error("wal io: {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Bytes on disk that are not a torn tail and do not decode: acknowledged data may be lost,
    /// so the WAL refuses to open instead of dropping them.
    #[error("wal corrupt: segment {segment} offset {offset}: {reason}")]
    Corrupt {
        segment: String,
        offset: u64,
        reason: String,
    },
    /// A record could not be encoded (a membership that does not serialize).
    #[error("wal encode: group {group}: {reason}")]
    Encode { group: GroupId, reason: String },
    /// An earlier write or fsync failed; the WAL accepts no more writes until reopened.
    #[error("wal writer failed: {0}")]
    WriterFailed(String),
    /// The writer thread is gone (the WAL is shutting down).
    #[error("wal closed")]
    Closed,
    /// A blocking read task panicked or was cancelled.
    #[error("wal read task: {0}")]
    ReadTask(String),
}

impl WalError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        WalError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(segment: &str, offset: u64, reason: impl Into<String>) -> Self {
        WalError::Corrupt {
            segment: segment.to_string(),
            offset,
            reason: reason.into(),
        }
    }
}
