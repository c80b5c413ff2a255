//! Garbage collection planning: which objects that left a partition's manifest may be
//! deleted from the bucket now.
//!
//! An object stays for `grace_ms` after it left the manifest, so a reader that planned a
//! read on the old manifest (or a restore from a slightly older snapshot) still finds it.
//! The GC list is replicated state; the leader deletes the objects, then commits their
//! keys so every replica forgets them. Deleting a missing object succeeds, so a crash
//! between the two only repeats a delete. A key that is (again) in the manifest is never
//! deleted.

use crate::partition::log::{DeletedChunk, PartitionLog};

/// The objects whose grace period has passed, oldest first, at most `limit`. A sealed
/// manifest page that is due takes the objects it names with it.
pub fn gc_due(log: &PartitionLog, now_ms: i64, grace_ms: i64, limit: usize) -> Vec<DeletedChunk> {
    log.deleted()
        .iter()
        .filter(|d| d.since_ms.saturating_add(grace_ms) <= now_ms)
        .filter(|d| !log.references(&d.chunk.key))
        .take(limit)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::log::{
        append_command, chunk_tiered_command, delete_records_command, AppendResult, ChunkRef,
    };
    use chronik_metastore::state_machine::ApplyState;
    use chronik_metastore::types::Command;
    use openraft::{CommittedLeaderId, LogId};

    fn run(log: &mut PartitionLog, index: u64, cmd: Command) -> AppendResult {
        let id = LogId::new(CommittedLeaderId::new(1, 1), index);
        log.observe_entry(&id);
        AppendResult::decode(&log.apply(&id, &cmd))
    }

    #[test]
    fn objects_are_due_after_the_grace_period() {
        let mut log = PartitionLog::default();
        for i in 0..3u64 {
            let b = crate::partition::batch::tests::batch(-1, -1, -1, 1, 0);
            run(&mut log, i + 1, append_command(b.into()));
            let c = ChunkRef {
                key: format!("k{i}"),
                base_offset: i as i64,
                last_offset: i as i64,
                max_timestamp: 0,
                size: 1,
            };
            run(&mut log, 10 + i, chunk_tiered_command(&c));
        }
        run(&mut log, 20, delete_records_command(1, 1_000));
        run(&mut log, 21, delete_records_command(2, 2_000));
        let keys = |v: Vec<DeletedChunk>| v.into_iter().map(|d| d.chunk.key).collect::<Vec<_>>();
        assert!(gc_due(&log, 1_499, 500, 10).is_empty());
        assert_eq!(keys(gc_due(&log, 1_500, 500, 10)), vec!["k0"]);
        assert_eq!(keys(gc_due(&log, 9_000, 500, 10)), vec!["k0", "k1"]);
        assert_eq!(keys(gc_due(&log, 9_000, 500, 1)), vec!["k0"]);
    }
}
