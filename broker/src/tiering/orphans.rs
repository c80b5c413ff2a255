//! Orphaned objects: chunks, segments and manifest pages that no manifest names and never
//! will. An upload whose commit was lost leaves one: a crash, or a leader change, between
//! the PUT and the Raft commit (a retried upload of the same range writes the same key,
//! but a re-cut tail can have other boundaries).
//!
//! What may be deleted is decided from the manifest, not from clocks: an object is an
//! orphan only if no command could ever commit it (see [`never_committable`]). That stays
//! true when the sweeper's view is out of date (a leader that lost its quorum and has not
//! noticed yet), because the facts it rests on only ever move one way: the untiered tail's
//! start only moves forward, and boundaries between manifest entries below it only
//! disappear (compaction merges them, sealing moves them into pages, DeleteRecords drops
//! them). An object must also be older than `gc_grace_ms` (at least a minute).
//!
//! Orphans can only lie at or after the first open manifest entry (and after every page
//! still awaiting GC, whose objects GC deletes after the grace), so the leader lists only
//! that key range (`list_after`, not the whole history), every `gc_grace_ms` (at least
//! every second, at most every 10 minutes). Objects past the log end are never orphans by
//! this rule: after a restore from an older snapshot they may hold the only copy of the
//! records the restore lost, for a recovery tool to read.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chronik_tiering::layout::{self, ObjectKey};

use super::maintain::now_ms;
use super::Tier;
use crate::partition::log::PartitionLog;
use crate::partition::Partition;

/// How long the sweep waits for the leader's linearizable read.
const SETTLE: Duration = Duration::from_secs(5);
/// The least age of an object the sweep deletes, whatever `gc_grace_ms`.
const MIN_AGE_MS: i64 = 60_000;

/// Kinds of objects that manifest commands commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `ChunkTiered`: only if it starts exactly at the untiered tail.
    Chunk,
    /// `Compacted`: only if open entries start at its first offset and end at its last.
    Segment,
    /// `PageSealed`: only if the first open entry starts at its first offset and an open
    /// entry ends at its last.
    Page,
}

/// Whether no command could ever commit an object of `kind` holding `base..=last`, as
/// `log` stands (see the module docs for why an older view is still right).
fn never_committable(log: &PartitionLog, kind: Kind, base: i64, last: i64) -> bool {
    let tail_start = log
        .tail()
        .first()
        .map_or(log.high_watermark(), |b| b.base_offset);
    if last >= tail_start {
        return false; // the tail, or past it: a chunk may yet be cut there
    }
    let open = log.chunks();
    let starts = |o: i64| open.iter().any(|c| c.base_offset == o);
    let ends = |o: i64| open.iter().any(|c| c.last_offset == o);
    match kind {
        Kind::Chunk => true,
        Kind::Segment => !(starts(base) && ends(last)),
        Kind::Page => !(open.first().is_some_and(|c| c.base_offset == base) && ends(last)),
    }
}

impl Tier {
    pub(super) async fn sweep_orphans(&self, p: &Partition) -> Result<(), String> {
        let grace = self.config.gc_grace_ms;
        let every = Duration::from_millis(grace.clamp(1_000, 600_000));
        if !self.orphans_swept.due(p.group, every) {
            return Ok(());
        }
        // Leadership confirmed, and every entry of earlier terms applied: a chunk a previous
        // leader committed is in the manifest before anything is judged.
        let settled = tokio::time::timeout(SETTLE, p.raft.ensure_linearizable()).await;
        if !matches!(settled, Ok(Ok(_))) {
            return Ok(()); // not (or no longer) the leader; the next pass tries again
        }
        let from = {
            let log = p.log.read();
            let open = log.chunks().first().map(|c| c.base_offset);
            let after_pages = log.pages().last().map(|pg| pg.last_offset + 1);
            let after_deleted_pages = log
                .deleted()
                .iter()
                .filter(|d| d.page)
                .map(|d| d.chunk.last_offset + 1)
                .max();
            open.unwrap_or_else(|| after_pages.unwrap_or(0).max(log.log_start_offset()))
                .max(after_deleted_pages.unwrap_or(0))
        };
        let old_before = now_ms().saturating_sub((grace as i64).max(MIN_AGE_MS));
        let mut candidates = Vec::new();
        for prefix in [
            layout::chunks_prefix(p.topic_id, p.index),
            layout::segments_prefix(p.topic_id, p.index),
            layout::manifest_prefix(p.topic_id, p.index),
        ] {
            // `{prefix}{from:020}` sorts just before every key whose range starts at `from`.
            let listed = self
                .bucket
                .list_after(&prefix, &format!("{prefix}{from:020}"))
                .await
                .map_err(|e| format!("list {prefix} for orphans: {e}"))?;
            for o in listed {
                let (kind, base, last) = match layout::parse_key(&o.key) {
                    Ok(ObjectKey::Chunk {
                        base_offset,
                        last_offset,
                        ..
                    }) => (Kind::Chunk, base_offset, last_offset),
                    Ok(ObjectKey::Segment {
                        base_offset,
                        last_offset,
                        ..
                    }) => (Kind::Segment, base_offset, last_offset),
                    Ok(ObjectKey::ManifestPage {
                        base_offset,
                        last_offset,
                        ..
                    }) => (Kind::Page, base_offset, last_offset),
                    _ => continue, // not Chronik's: never touched
                };
                if base >= from && o.modified_ms < old_before {
                    candidates.push((o.key, kind, base, last));
                }
            }
        }
        let mut deleted = 0u64;
        for (key, kind, base, last) in candidates {
            let orphan = {
                let log = p.log.read();
                !log.references(&key)
                    && !log.deleted().iter().any(|d| d.chunk.key == key)
                    && never_committable(&log, kind, base, last)
            };
            if !orphan {
                continue;
            }
            self.bucket
                .delete(&key)
                .await
                .map_err(|e| format!("delete orphan {key}: {e}"))?;
            tracing::info!(topic = %p.topic, partition = p.index, %key, "deleted an object no manifest names or can name");
            deleted += 1;
        }
        self.stats
            .orphans_deleted
            .fetch_add(deleted, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::log::{append_command, chunk_tiered_command, ChunkRef};
    use chronik_metastore::state_machine::ApplyState;
    use openraft::{CommittedLeaderId, LogId};

    /// Offsets 0..12 in six batches of two; chunks 0..=3 and 4..=7 tiered, 8..=11 the tail.
    fn log() -> PartitionLog {
        let mut log = PartitionLog::default();
        let mut index = 0;
        let mut run = |log: &mut PartitionLog, cmd| {
            index += 1;
            let id = LogId::new(CommittedLeaderId::new(1, 1), index);
            log.observe_entry(&id);
            log.apply(&id, &cmd);
        };
        for _ in 0..6 {
            let b = crate::partition::batch::tests::batch(-1, -1, -1, 2, 0);
            run(&mut log, append_command(b.into()));
        }
        for (base, last) in [(0, 3), (4, 7)] {
            let c = ChunkRef {
                key: format!("c{base}"),
                base_offset: base,
                last_offset: last,
                max_timestamp: 0,
                size: 1,
            };
            run(&mut log, chunk_tiered_command(&c));
        }
        assert_eq!(log.tail().first().map(|b| b.base_offset), Some(8));
        log
    }

    #[test]
    fn only_what_no_command_could_commit_is_an_orphan() {
        let log = log();
        // Chunks: any below the tail start (a ChunkTiered must start at the tail).
        assert!(never_committable(&log, Kind::Chunk, 0, 1));
        assert!(never_committable(&log, Kind::Chunk, 4, 7));
        // At or past the tail start: a chunk may yet be cut there, or (past the log end)
        // it may hold the only copy of records a restore lost.
        assert!(!never_committable(&log, Kind::Chunk, 8, 9));
        assert!(!never_committable(&log, Kind::Chunk, 20, 29));
        // Segments: committable while open entries start and end at its bounds.
        assert!(!never_committable(&log, Kind::Segment, 0, 7));
        assert!(never_committable(&log, Kind::Segment, 0, 5));
        assert!(never_committable(&log, Kind::Segment, 2, 7));
        assert!(!never_committable(&log, Kind::Segment, 0, 9));
        // Pages: only from the first open entry to an entry's end.
        assert!(!never_committable(&log, Kind::Page, 0, 3));
        assert!(never_committable(&log, Kind::Page, 4, 7));
        assert!(never_committable(&log, Kind::Page, 0, 5));
    }
}
