//! Partition upkeep run by the leader after each tiering step: retention, compaction and
//! garbage collection. The decisions are the pure functions in `retention`, `compaction`
//! and `gc`; this module does their I/O and commits their outcome through Raft, so every
//! replica's manifest agrees.
//!
//! Crash safety: a merged segment is written before the `Compacted` entry that publishes
//! it (a crash leaves an unreferenced object, as a crashed upload does); GC deletes objects
//! before the `ObjectsDeleted` entry that forgets them (a crash repeats the delete).

use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;

use chronik_tiering::chunk::{ChunkReader, ChunkWriter};
use chronik_tiering::layout;

use super::compaction::plan_compaction;
use super::gc::gc_due;
use super::retention::{may_cut_inside, retention_cutoff, RetentionPolicy};
use super::Tier;
use crate::errors::code;
use crate::partition::batch::BatchHeader;
use crate::partition::log::{
    compacted_command, delete_records_command, objects_deleted_command, producers_expired_command,
    AppendResult, ChunkRef, PageRef,
};
use crate::partition::Partition;

/// Objects deleted per partition per step, so one step stays short.
const GC_BATCH: usize = 100;
/// Deletes in flight while GC removes the objects a manifest page names.
const PAGE_DELETES_AT_ONCE: usize = 16;

/// The wall clock, Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Tier {
    /// Retention, then compaction, then GC, for one partition this node leads.
    pub(super) async fn maintain_partition(
        &self,
        p: &Partition,
        retention: &RetentionPolicy,
        archive: bool,
    ) -> Result<(), String> {
        if let Err(err) = self.archive(p, archive).await {
            tracing::warn!(topic = %p.topic, partition = p.index, %err, "parquet archive failed; retrying next interval");
        }
        self.apply_retention(p, retention, archive).await?;
        self.compact(p).await?;
        self.seal_page(p).await?;
        self.expire_producers(p).await?;
        self.collect_garbage(p).await?;
        self.sweep_orphans(p).await
    }

    /// Forgets idempotent producers idle for `producer_id_expiration_ms`, checked every
    /// quarter of that (at most every 10 minutes, as Kafka's default check interval).
    async fn expire_producers(&self, p: &Partition) -> Result<(), String> {
        let expiration = self.config.producer_id_expiration_ms as i64;
        let every = std::time::Duration::from_millis((expiration / 4).clamp(100, 600_000) as u64);
        if !self.producers_checked.due(p.group, every) {
            return Ok(());
        }
        let now = now_ms();
        if !p
            .log
            .read()
            .producers_to_expire(now.saturating_sub(expiration))
        {
            return Ok(());
        }
        let res = self
            .propose(p, producers_expired_command(now, expiration))
            .await
            .map_err(|e| format!("commit producer expiry: {e}"))?;
        if res.error == code::NONE && res.base_offset > 0 {
            tracing::info!(topic = %p.topic, partition = p.index, producers = res.base_offset, "idle idempotent producers expired");
        }
        Ok(())
    }

    /// Moves the log start past what retention lets go; with the Parquet archive on, not
    /// past what is not archived yet (the archive is then asked to hurry).
    async fn apply_retention(
        &self,
        p: &Partition,
        policy: &RetentionPolicy,
        archive: bool,
    ) -> Result<(), String> {
        if policy.retention_ms < 0 && policy.retention_bytes < 0 {
            return Ok(());
        }
        let now = now_ms();
        // The first live page counts entry by entry when the cut may fall inside it (or
        // it straddles the log start, so its summary counts expired entries): the log
        // start then moves through it chunk by chunk, as it would without pages.
        let first = {
            let log = p.log.read();
            log.first_live_page()
                .filter(|pg| {
                    log.straddling_page().is_some() || may_cut_inside(&log, pg, policy, now)
                })
                .cloned()
        };
        let open = match &first {
            Some(page) => match self.page(page).await {
                Ok(entries) => Some((page, entries)),
                Err(err) => {
                    // Retention waits for the page; compaction and GC go on.
                    tracing::warn!(topic = %p.topic, partition = p.index, %err, "retention skipped");
                    return Ok(());
                }
            },
            None => None,
        };
        let open: Vec<(&PageRef, &[ChunkRef])> = open
            .iter()
            .map(|(page, entries)| (*page, entries.as_slice()))
            .collect();
        let Some(mut cutoff) = retention_cutoff(&p.log.read(), policy, now, &open) else {
            return Ok(());
        };
        if archive {
            let (archived, start) = {
                let log = p.log.read();
                (log.archived_to(), log.log_start_offset())
            };
            if cutoff > archived {
                self.archive_now(p.group);
                cutoff = archived;
                if cutoff <= start {
                    return Ok(());
                }
            }
        }
        let res = self
            .propose(p, delete_records_command(cutoff, now))
            .await
            .map_err(|e| format!("commit retention: {e}"))?;
        if res.error == code::NONE {
            tracing::info!(topic = %p.topic, partition = p.index, log_start_offset = res.base_offset, "retention moved the log start");
            self.stats.retention_deletes.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Merges the planned run of chunks into one segment object and swaps it into the
    /// manifest. A refused swap (the manifest changed meanwhile) deletes the new object,
    /// which nothing references.
    async fn compact(&self, p: &Partition) -> Result<(), String> {
        let run: Vec<ChunkRef> = {
            let log = p.log.read();
            match plan_compaction(log.chunks(), &self.config.compaction) {
                Some(r) => log.chunks()[r].to_vec(),
                None => return Ok(()),
            }
        };
        let (Some(first), Some(last)) = (run.first(), run.last()) else {
            return Ok(());
        };
        let mut objects: Vec<(String, Bytes)> = Vec::with_capacity(run.len());
        for c in &run {
            self.stats.gets.fetch_add(1, Ordering::Relaxed);
            let bytes = self
                .bucket
                .get(&c.key)
                .await
                .map_err(|e| format!("read {} for compaction: {e}", c.key))?;
            objects.push((c.key.clone(), bytes));
        }
        // Decompressing and recompressing up to segment_bytes: off the async workers.
        let object = tokio::task::spawn_blocking(move || merge(objects))
            .await
            .map_err(|e| format!("merge chunks: {e}"))??;
        let key = layout::segment_key(p.topic_id, p.index, first.base_offset, last.last_offset);
        let with = ChunkRef {
            key: key.clone(),
            base_offset: first.base_offset,
            last_offset: last.last_offset,
            max_timestamp: run.iter().map(|c| c.max_timestamp).max().unwrap_or(-1),
            size: object.len() as u64,
        };
        self.bucket
            .put(&key, object)
            .await
            .map_err(|e| format!("upload {key}: {e}"))?;
        let replaces = run.iter().map(|c| c.key.clone()).collect();
        let res = self
            .propose(p, compacted_command(replaces, with, now_ms()))
            .await
            .map_err(|e| format!("commit segment {key}: {e}"))?;
        if res.error != code::NONE {
            let referenced = p.log.read().references(&key);
            if !referenced {
                let _ = self.bucket.delete(&key).await;
            }
            tracing::info!(topic = %p.topic, partition = p.index, %key, "compaction refused: the manifest changed");
            return Ok(());
        }
        self.stats.segments_written.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(topic = %p.topic, partition = p.index, %key, chunks = run.len(), "chunks merged");
        Ok(())
    }

    /// Deletes objects whose grace period has passed, then forgets them in the manifest.
    async fn collect_garbage(&self, p: &Partition) -> Result<(), String> {
        let grace = self.config.gc_grace_ms as i64;
        let due = gc_due(&p.log.read(), now_ms(), grace, GC_BATCH);
        if due.is_empty() {
            return Ok(());
        }
        let mut keys = Vec::with_capacity(due.len());
        for d in due {
            if d.page {
                self.delete_page_objects(p, &d.chunk).await?;
            }
            let key = d.chunk.key;
            self.bucket
                .delete(&key)
                .await
                .map_err(|e| format!("delete {key}: {e}"))?;
            keys.push(key);
        }
        let n = keys.len() as u64;
        self.propose(p, objects_deleted_command(keys))
            .await
            .map_err(|e| format!("commit gc: {e}"))?;
        self.stats.objects_deleted.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    /// Deletes the objects a sealed page names (the page itself goes after them, so a
    /// crash in between repeats this; a page already gone had its objects deleted).
    async fn delete_page_objects(&self, p: &Partition, page: &ChunkRef) -> Result<(), String> {
        let page_key = &page.key;
        let bytes = match self.bucket.get(page_key).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(format!("read manifest page {page_key} for gc: {e}")),
        };
        let entries = crate::partition::page::decode_entries(page_key, &bytes)?;
        // Delete only what this page may name: this partition's chunks and segments in
        // the page's offset range. Anything else means the object is not the page that
        // was sealed; GC stops there rather than delete the wrong objects.
        for c in &entries {
            let inside = match layout::parse_key(&c.key) {
                Ok(
                    layout::ObjectKey::Chunk {
                        topic_id,
                        partition,
                        base_offset,
                        last_offset,
                    }
                    | layout::ObjectKey::Segment {
                        topic_id,
                        partition,
                        base_offset,
                        last_offset,
                    },
                ) => {
                    topic_id == p.topic_id
                        && partition == p.index
                        && base_offset >= page.base_offset
                        && last_offset <= page.last_offset
                }
                _ => false,
            };
            if !inside {
                return Err(format!(
                    "manifest page {page_key} names {}, outside the page; not deleting it",
                    c.key
                ));
            }
        }
        let keys: Vec<String> = {
            let log = p.log.read();
            entries
                .into_iter()
                .map(|c| c.key)
                .filter(|k| !log.references(k))
                .collect()
        };
        // A page names hundreds of objects: delete several at a time, so a bucket with
        // tens of milliseconds per request does not hold up this partition's upkeep.
        let mut deletes = futures::stream::iter(keys.into_iter().map(|key| async move {
            self.bucket
                .delete(&key)
                .await
                .map_err(|e| format!("delete {key}: {e}"))
        }))
        .buffer_unordered(PAGE_DELETES_AT_ONCE);
        while let Some(done) = deletes.next().await {
            done?;
        }
        Ok(())
    }

    pub(super) async fn propose(
        &self,
        p: &Partition,
        cmd: chronik_metastore::types::Command,
    ) -> Result<AppendResult, String> {
        let resp = super::commit(p, cmd).await?;
        Ok(AppendResult::decode(&resp.data))
    }
}

/// One object in chunk format holding every batch of `objects`, in order.
fn merge(objects: Vec<(String, Bytes)>) -> Result<Bytes, String> {
    let mut writer = ChunkWriter::new();
    for (key, bytes) in objects {
        let reader = ChunkReader::parse_named(&key, bytes).map_err(|e| e.to_string())?;
        for data in reader.batches() {
            let header = BatchHeader::parse(&data).map_err(|e| format!("chunk {key}: {e}"))?;
            let base = data
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(i64::from_be_bytes)
                .ok_or_else(|| format!("chunk {key}: short batch"))?;
            writer
                .push_batch(
                    base,
                    base + header.last_offset_delta as i64,
                    header.max_timestamp,
                    &data,
                )
                .map_err(|e| format!("merge {key}: {e}"))?;
        }
    }
    Ok(writer.finish())
}
