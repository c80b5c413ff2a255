//! openraft's own storage suite against the WAL, with default and tiny segments.

use openraft::testing::{StoreBuilder, Suite};
use openraft::{AnyError, StorageIOError};
use tempfile::TempDir;

use super::test_sm::TestSm;
use crate::types::{StorageError, TypeConfig};
use crate::wal::{FsyncPolicy, Wal, WalConfig, WalLogStore};

struct Builder {
    segment_bytes: u64,
    fsync: FsyncPolicy,
    direct_io: bool,
}

impl StoreBuilder<TypeConfig, WalLogStore, TestSm, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, WalLogStore, TestSm), StorageError> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        let wal = Wal::open(WalConfig {
            segment_bytes: self.segment_bytes,
            fsync: self.fsync,
            direct_io: self.direct_io,
            ..WalConfig::new(dir.path().join("wal"))
        })
        .map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        // Another group's state shares the WAL, as on a real node.
        let mut other = wal.log_store(1);
        openraft::storage::RaftLogStorage::save_vote(&mut other, &openraft::Vote::new(9, 9))
            .await?;
        Ok((dir, wal.log_store(7), TestSm::default()))
    }
}

#[test]
fn openraft_suite_default_segments() {
    Suite::test_all(Builder {
        segment_bytes: crate::wal::DEFAULT_SEGMENT_BYTES,
        fsync: FsyncPolicy::Always,
        direct_io: true,
    })
    .expect("openraft storage suite");
}

#[test]
fn openraft_suite_tiny_segments_interval_fsync() {
    Suite::test_all(Builder {
        segment_bytes: 200,
        fsync: FsyncPolicy::IntervalMs(5),
        direct_io: false,
    })
    .expect("openraft storage suite");
}
