//! The crate's one error type. Every variant that concerns an object names its key, so a
//! log line or an operator's error message says which object to look at.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum TieringError {
    #[error("bucket URL {url:?} is malformed: {reason}; use file:///ABS/DIR, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or az://CONTAINER/PREFIX")]
    BadUrl { url: String, reason: String },
    #[error("bucket scheme {scheme}:// is not available in this build; use file:///ABS/DIR, s3://, gs:// or az://")]
    UnsupportedScheme { scheme: String },
    #[error("bucket directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The bucket could not be opened or reached; `fix` tells the operator what to change.
    #[error("bucket {url} is not usable: {problem}; {fix}")]
    Open {
        url: String,
        problem: String,
        fix: String,
        #[source]
        source: Option<Box<object_store::Error>>,
    },
    #[error("object {key} not found")]
    NotFound { key: String },
    /// A remote call failed for good: a permanent error, or a transient one that outlasted
    /// the retry policy's budget.
    #[error("{op} {key} failed after {attempts} attempt(s) in {elapsed:?}: {source}")]
    Remote {
        op: &'static str,
        key: String,
        attempts: u32,
        elapsed: Duration,
        #[source]
        source: Box<object_store::Error>,
    },
    /// The object's bytes do not decode: truncated, bit-flipped, or written by a newer
    /// format version.
    #[error("object {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    /// A key that is not part of the bucket layout (see docs/BUCKET_LAYOUT.md).
    #[error("key {key:?} is not in the bucket layout: {reason}")]
    BadKey { key: String, reason: String },
    /// The caller broke an API contract (e.g. non-increasing offsets pushed to a chunk).
    #[error("invalid input for {what}: {reason}")]
    Invalid { what: String, reason: String },
}

impl TieringError {
    pub(crate) fn corrupt(key: &str, reason: impl Into<String>) -> Self {
        TieringError::Corrupt {
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    /// Whether this error is a missing object.
    pub fn is_not_found(&self) -> bool {
        matches!(self, TieringError::NotFound { .. })
    }
}
