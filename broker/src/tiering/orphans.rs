//! Orphaned objects: chunks, segments and manifest pages that no manifest names and never
//! will. An upload whose commit was lost leaves one: a crash, or a leader change, between
//! the PUT and the Raft commit (a retried upload of the same range writes the same key,
//! but a re-cut tail can have other boundaries).
//!
//! Such an object can only lie at or after the start of the manifest's open part: every
//! upload is of the untiered tail or a merge of open entries, and sealed pages only take
//! entries that are already committed. So the leader lists that range of the partition's
//! keys (`list_after`, not the whole history) every `gc_grace_ms` (at least every second,
//! at most every 10 minutes), and deletes what the manifest, its pages and the GC list do
//! not name and that is older than `gc_grace_ms`. A newer object may be an upload whose
//! commit is still under way on a previous leader. An old one whose commit never came
//! cannot be committed any more: the sweep first waits until this leader has applied
//! every entry of earlier terms (a linearizable read), and sweeping and uploading are one
//! task per partition on the leader.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chronik_tiering::layout::{self, ObjectKey};

use super::maintain::now_ms;
use super::Tier;
use crate::partition::Partition;

/// How long the sweep waits for the leader's linearizable read.
const SETTLE: Duration = Duration::from_secs(5);

impl Tier {
    pub(super) async fn sweep_orphans(&self, p: &Partition) -> Result<(), String> {
        let grace = self.config.gc_grace_ms;
        let every = Duration::from_millis(grace.clamp(1_000, 600_000));
        {
            let now = tokio::time::Instant::now();
            let mut swept = self.orphans_swept.lock();
            if swept
                .get(&p.group)
                .is_some_and(|t| now.duration_since(*t) < every)
            {
                return Ok(());
            }
            swept.insert(p.group, now);
        }
        // Leadership confirmed, and every entry of earlier terms applied: a chunk a previous
        // leader committed is in the manifest before anything is judged an orphan.
        let settled = tokio::time::timeout(SETTLE, p.raft.ensure_linearizable()).await;
        if !matches!(settled, Ok(Ok(_))) {
            return Ok(()); // not (or no longer) the leader; the next pass tries again
        }
        let from = {
            let log = p.log.read();
            log.chunks()
                .first()
                .map(|c| c.base_offset)
                .or_else(|| log.pages().last().map(|pg| pg.last_offset + 1))
                .unwrap_or(0)
        };
        let old_before = now_ms().saturating_sub(grace as i64);
        let mut orphans = Vec::new();
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
                let base = match layout::parse_key(&o.key) {
                    Ok(
                        ObjectKey::Chunk { base_offset, .. }
                        | ObjectKey::Segment { base_offset, .. }
                        | ObjectKey::ManifestPage { base_offset, .. },
                    ) => base_offset,
                    _ => continue, // not Chronik's: never touched
                };
                if base >= from && o.modified_ms < old_before {
                    orphans.push(o.key);
                }
            }
        }
        let mut deleted = 0u64;
        for key in orphans {
            let named = {
                let log = p.log.read();
                log.references(&key) || log.deleted().iter().any(|d| d.chunk.key == key)
            };
            if named {
                continue;
            }
            self.bucket
                .delete(&key)
                .await
                .map_err(|e| format!("delete orphan {key}: {e}"))?;
            tracing::info!(topic = %p.topic, partition = p.index, %key, "deleted an object no manifest names");
            deleted += 1;
        }
        self.stats
            .orphans_deleted
            .fetch_add(deleted, Ordering::Relaxed);
        Ok(())
    }
}
