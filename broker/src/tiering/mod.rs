//! Tiering on the broker side: the loop that ships each led partition's untiered tail to
//! the bucket as chunk objects and records them in the partition manifest, and the read
//! path that serves tiered offsets from the bucket through a bounded cache.
//!
//! Order of a tiering step (per partition, leader only): build the chunk from the tail's
//! oldest batches (offsets final, as fetched), PUT it under a key derived from its offset
//! range (so a retried or re-led upload writes the same object), commit a `ChunkTiered`
//! entry through Raft, then snapshot the group so the WAL can be purged. A crash between
//! the PUT and the commit leaves an unreferenced object, which is harmless: only the
//! manifest says what is part of the partition.
//!
//! After tiering, the leader runs the partition's upkeep (`maintain`): retention,
//! compaction of small chunks into segments, sealing old manifest entries into pages,
//! producer expiry, GC of objects that left the manifest, and a sweep for objects that
//! never made it into one (`orphans`).

mod archive;
mod cache;
pub mod compaction;
pub mod gc;
mod maintain;
mod metrics;
mod orphans;
mod pages;
pub mod retention;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use chronik_tiering::chunk::{ChunkReader, ChunkWriter};
use chronik_tiering::{layout, Bucket};

use crate::errors::code;
use crate::partition::log::{chunk_tiered_command, AppendResult, BatchLocation, ChunkRef};
use crate::partition::{Partition, Registry};
pub use cache::ChunkCache;
pub use maintain::now_ms;
pub use metrics::render_group_progress;
pub use pages::MAX_PAGE_ENTRIES;

#[derive(Clone, Debug)]
pub struct TierConfig {
    pub interval: Duration,
    /// A chunk is cut at this many bytes of batches (at least one batch).
    pub chunk_bytes: usize,
    /// Above this many untiered bytes on the node, produce answers a retriable error.
    pub max_untiered_bytes: u64,
    /// Bytes of decoded chunks kept for reads.
    pub cache_bytes: usize,
    /// Partitions tiered concurrently.
    pub concurrency: usize,
    /// How long an object that left a manifest stays in the bucket before GC deletes it.
    pub gc_grace_ms: u64,
    pub compaction: compaction::CompactionPolicy,
    /// Entries per sealed manifest page (see `pages`).
    pub page_entries: usize,
    /// Idempotent producers idle this long are forgotten (`producer.id.expiration.ms`).
    pub producer_id_expiration_ms: u64,
    /// An archive file is written once this many bytes wait (see `archive`) ...
    pub archive_file_bytes: usize,
    /// ... or once data has waited this long.
    pub archive_interval: Duration,
}

/// Whether a partition's chunks are worth a zstd trial. [`ChunkWriter`] decides per chunk
/// by compressing its first frame; once a partition's data has shown itself incompressible
/// (random payloads, or batches the producer compressed), the next [`PROBE_EVERY`] chunks
/// are stored raw without that trial.
#[derive(Default)]
pub struct CompressionHint {
    raw_left: AtomicU64,
}

/// Chunks stored raw without a trial after a trial found the data incompressible.
const PROBE_EVERY: u64 = 16;

impl CompressionHint {
    fn writer(&self) -> (ChunkWriter, bool) {
        let left = self.raw_left.load(Ordering::Relaxed);
        if left > 0 {
            self.raw_left.store(left - 1, Ordering::Relaxed);
            (ChunkWriter::new().uncompressed(), false)
        } else {
            (ChunkWriter::new(), true)
        }
    }

    fn record(&self, probed: bool, compressed: bool) {
        if probed && !compressed {
            self.raw_left.store(PROBE_EVERY, Ordering::Relaxed);
        }
    }
}

/// A tiered batch as stored in a chunk: offsets final.
#[derive(Clone, Debug)]
pub struct StoredBatch {
    pub base_offset: i64,
    pub last_offset: i64,
    pub data: Bytes,
}

#[derive(Default)]
pub struct TierStats {
    pub chunks_uploaded: AtomicU64,
    pub bytes_uploaded: AtomicU64,
    pub upload_failures: AtomicU64,
    pub untiered_bytes: AtomicU64,
    /// Consecutive ticks in which data waited and an upload failed.
    pub lag_ticks: AtomicU64,
    /// Chunk GETs from the bucket (cache misses that reached it, and compaction reads).
    pub gets: AtomicU64,
    /// DeleteRecords commands proposed by retention.
    pub retention_deletes: AtomicU64,
    /// Segments that compaction swapped into a manifest.
    pub segments_written: AtomicU64,
    /// Objects GC deleted from the bucket.
    pub objects_deleted: AtomicU64,
    /// Objects no manifest named that the orphan sweep deleted.
    pub orphans_deleted: AtomicU64,
    /// Parquet archive files written, their records and bytes.
    pub archive_files: AtomicU64,
    pub archive_records: AtomicU64,
    pub archive_bytes: AtomicU64,
    /// Batches the archive could not decode and left out.
    pub archive_skipped_batches: AtomicU64,
}

pub struct Tier {
    bucket: Bucket,
    config: TierConfig,
    cache: ChunkCache,
    pub stats: TierStats,
    /// Wakes the tiering loop before its interval when a chunk's worth of data is waiting.
    wake: tokio::sync::Notify,
    /// Chunks being built and uploaded on the node at once: bounds the memory that
    /// tiering holds (each is up to `chunk_bytes`, plus its compressed form).
    uploads: tokio::sync::Semaphore,
    /// When each partition group last snapshotted (at most one snapshot per interval).
    snapshotted: parking_lot::Mutex<std::collections::HashMap<u64, tokio::time::Instant>>,
    /// Sealed manifest pages read or written last.
    pages: parking_lot::Mutex<pages::PageCache>,
    /// When each partition group's producers were last checked for expiry.
    producers_checked: Cadence,
    /// When each partition group's bucket range was last swept for orphans.
    orphans_swept: Cadence,
    /// Since when each partition group has had records waiting for the archive.
    archive_waiting: parking_lot::Mutex<std::collections::HashMap<u64, tokio::time::Instant>>,
    /// Held while an archive file is built (see `archive`).
    archive_slot: tokio::sync::Mutex<()>,
    /// Set by [`Tier::shutdown`]: the loop takes no further step.
    stopping: std::sync::atomic::AtomicBool,
    stop: tokio::sync::Notify,
    /// Held by the loop for the length of each step, so that shutdown can wait for the
    /// step under way: after it, this node writes nothing more to the bucket.
    stepping: tokio::sync::Mutex<()>,
}

/// How long a tiering step waits for one of its Raft entries to commit.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Proposes `cmd` on the partition's group and waits for it to commit, at most
/// [`COMMIT_TIMEOUT`], and only while this node leads the group. A leader that cannot
/// reach a quorum keeps its proposals pending; without a bound, one such proposal held the
/// node's whole tiering loop (every partition,
/// and with it produce, once the untiered limit was reached). An entry that commits after
/// the timeout is harmless: every command tiering proposes is checked against the state it
/// applies to, and a repeat is refused.
pub(super) async fn commit(
    p: &Partition,
    cmd: chronik_metastore::types::Command,
) -> Result<openraft::raft::ClientWriteResponse<chronik_metastore::types::TypeConfig>, String> {
    use chronik_bootstrap::LeaderWriteError;
    let write = chronik_bootstrap::write_as_leader(&p.raft, cmd);
    match tokio::time::timeout(COMMIT_TIMEOUT, write).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(LeaderWriteError::NotLeader)) => Err("not the partition's leader".into()),
        Ok(Err(LeaderWriteError::Deposed)) => {
            Err("this node stopped leading the partition before the entry committed".into())
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "not committed within {COMMIT_TIMEOUT:?} (no quorum for the partition's Raft group?)"
        )),
    }
}

/// Per partition group, when a periodic upkeep task last ran.
#[derive(Default)]
struct Cadence(parking_lot::Mutex<std::collections::HashMap<u64, tokio::time::Instant>>);

impl Cadence {
    /// Whether `group`'s turn has come (at least `every` since its last); if so, the turn
    /// is taken now.
    fn due(&self, group: u64, every: Duration) -> bool {
        let now = tokio::time::Instant::now();
        let mut last = self.0.lock();
        if last
            .get(&group)
            .is_some_and(|t| now.duration_since(*t) < every)
        {
            return false;
        }
        last.insert(group, now);
        true
    }
}

impl Tier {
    pub fn new(bucket: Bucket, config: TierConfig) -> Arc<Tier> {
        Arc::new(Tier {
            cache: ChunkCache::new(config.cache_bytes),
            bucket,
            config,
            stats: TierStats::default(),
            wake: tokio::sync::Notify::new(),
            uploads: tokio::sync::Semaphore::new(UPLOADS_PER_NODE),
            snapshotted: Default::default(),
            pages: Default::default(),
            producers_checked: Default::default(),
            orphans_swept: Default::default(),
            archive_waiting: Default::default(),
            archive_slot: tokio::sync::Mutex::new(()),
            stopping: Default::default(),
            stop: tokio::sync::Notify::new(),
            stepping: tokio::sync::Mutex::new(()),
        })
    }

    /// Stops the tiering loop and waits for the step under way to end; from then on the
    /// loop writes nothing to the bucket (chunks, compaction, GC).
    pub async fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stop.notify_one();
        let _step = self.stepping.lock().await;
    }

    /// Counts `bytes` just appended to a partition holding `partition_untiered` bytes as
    /// untiered (until the next step recounts exactly), and starts a step early once that
    /// partition has a whole chunk waiting: a busy partition ships full-size chunks as fast
    /// as they fill, a quiet one on the clock.
    ///
    /// Many partitions that each hold less than a chunk can still add up: past half of
    /// `max_untiered_bytes` on the node, steps start early too and ship partial chunks, so
    /// producers do not hit the limit while waiting for the clock.
    pub fn note_appended(&self, bytes: u64, partition_untiered: u64) {
        self.stats
            .untiered_bytes
            .fetch_add(bytes, Ordering::Relaxed);
        if partition_untiered + bytes >= self.config.chunk_bytes as u64 || self.under_pressure() {
            self.wake.notify_one();
        }
    }

    /// More than half of `max_untiered_bytes` waits on the node.
    fn under_pressure(&self) -> bool {
        self.stats.untiered_bytes.load(Ordering::Relaxed) > self.config.max_untiered_bytes / 2
    }

    /// Snapshots a partition group if it applied entries since its last snapshot: always
    /// on the interval's own step (`on_clock`), and on a step woken early only if the last
    /// snapshot is at least an interval old — so the bucket's copy of the manifest trails
    /// the tiered data by at most one interval, without a snapshot upload per chunk.
    async fn snapshot_if_due(&self, p: &Partition, on_clock: bool) {
        {
            // Checked and claimed under one lock: the same group can be stepped twice at
            // once (as leader and as follower) while its leadership moves.
            let mut last = self.snapshotted.lock();
            if !self.due(&last, p, on_clock) {
                return;
            }
            last.insert(p.group, tokio::time::Instant::now());
        }
        let _ = p.raft.trigger().snapshot().await;
    }

    /// Whether [`Tier::snapshot_if_due`] would snapshot the partition now.
    fn snapshot_due(&self, p: &Partition, on_clock: bool) -> bool {
        self.due(&self.snapshotted.lock(), p, on_clock)
    }

    fn due(
        &self,
        last: &std::collections::HashMap<u64, tokio::time::Instant>,
        p: &Partition,
        on_clock: bool,
    ) -> bool {
        let (applied, snapshot) = {
            let m = p.raft.metrics();
            let m = m.borrow();
            (m.last_applied.map(|l| l.index), m.snapshot.map(|l| l.index))
        };
        if applied <= snapshot {
            return false;
        }
        on_clock
            || last.get(&p.group).is_none_or(|t| {
                tokio::time::Instant::now().duration_since(*t) >= self.config.interval
            })
    }

    pub fn cache(&self) -> &ChunkCache {
        &self.cache
    }

    /// True when the node holds more untiered bytes than allowed: producers must back off
    /// until the bucket catches up.
    pub fn over_limit(&self) -> bool {
        self.stats.untiered_bytes.load(Ordering::Relaxed) > self.config.max_untiered_bytes
    }

    /// Waits up to `patience` for the node's untiered bytes to be within
    /// `max_untiered_bytes`; false if they are still over it then.
    pub async fn wait_within_limit(&self, patience: Duration) -> bool {
        if !self.over_limit() {
            return true;
        }
        let deadline = tokio::time::Instant::now() + patience;
        while self.over_limit() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(LIMIT_POLL).await;
        }
        true
    }

    /// Starts loading a chunk into the read cache in the background (read-ahead), if it
    /// fits without evicting anything. A load already under way or cached is shared, not
    /// repeated.
    ///
    /// Read-ahead that evicts costs more than it saves: six partitions caught up at once,
    /// each with its chunk and the next one, need more than the default 64 MiB, and every
    /// chunk was read from the bucket 5–7 times.
    pub fn prefetch(self: &Arc<Self>, chunk: ChunkRef) {
        let size = usize::try_from(chunk.size).unwrap_or(usize::MAX);
        if !self.cache.has_room(size) {
            return;
        }
        let tier = self.clone();
        tokio::spawn(async move {
            if let Err(err) = tier.load_chunk(&chunk, false).await {
                tracing::debug!(key = %chunk.key, %err, "read-ahead failed; the reader will retry");
            }
        });
    }

    /// The batches of a chunk, from the cache or the bucket.
    pub async fn read_chunk(&self, chunk: &ChunkRef) -> Result<Arc<Vec<StoredBatch>>, String> {
        self.load_chunk(chunk, true).await
    }

    /// [`Tier::read_chunk`]; with `used` false, a read-ahead (see [`ChunkCache::preload`]).
    async fn load_chunk(
        &self,
        chunk: &ChunkRef,
        used: bool,
    ) -> Result<Arc<Vec<StoredBatch>>, String> {
        let bucket = self.bucket.clone();
        let key = chunk.key.clone();
        let gets = &self.stats.gets;
        let load = async move {
            gets.fetch_add(1, Ordering::Relaxed);
            let bytes = bucket.get(&key).await.map_err(|e| e.to_string())?;
            let reader = ChunkReader::parse_named(&key, bytes).map_err(|e| e.to_string())?;
            let batches = reader.read_from(i64::MIN);
            let mut out = Vec::with_capacity(batches.len());
            for data in batches {
                let header = crate::partition::batch::BatchHeader::parse(&data)
                    .map_err(|e| format!("chunk {key}: {e}"))?;
                let base_offset = i64::from_be_bytes(data[..8].try_into().unwrap_or_default());
                out.push(StoredBatch {
                    base_offset,
                    last_offset: base_offset + header.last_offset_delta as i64,
                    data,
                });
            }
            Ok(out)
        };
        if used {
            self.cache.get_or_load(&chunk.key, load).await
        } else {
            self.cache.preload(&chunk.key, load).await
        }
    }

    /// Runs the tiering loop for the life of the node.
    pub fn spawn(self: &Arc<Self>, registry: Arc<Registry>, node_id: u64) {
        // The untiered count that gates produce ([`Tier::over_limit`]) is also refreshed on
        // its own clock: while the bucket is down a tiering step sits in upload retries for
        // many intervals, and a count frozen at its last value would let producers run far
        // past max_untiered_bytes.
        let (tier, reg) = (self.clone(), registry.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(tier.config.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let untiered = untiered_bytes(&reg);
                tier.stats.untiered_bytes.store(untiered, Ordering::Relaxed);
            }
        });
        let tier = self.clone();
        tokio::spawn(async move {
            let period = tier.config.interval;
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failed = false;
            loop {
                // Retention, compaction and GC run on the clock; a step woken early by a
                // chunk's worth of data only ships it. While the bucket fails, retry on the
                // clock, not on every produce.
                let upkeep = tokio::select! {
                    _ = tick.tick() => true,
                    _ = tier.wake.notified(), if !failed => false,
                    _ = tier.stop.notified() => break,
                };
                let _step = tier.stepping.lock().await;
                if tier.stopping.load(Ordering::SeqCst) {
                    break;
                }
                failed = tier.step_with(&registry, node_id, upkeep).await;
            }
        });
    }

    /// One pass over the partitions this node leads, with their upkeep (retention,
    /// compaction, GC); true when some partition failed.
    pub async fn step(self: &Arc<Self>, registry: &Registry, node_id: u64) -> bool {
        self.step_with(registry, node_id, true).await
    }

    async fn step_with(self: &Arc<Self>, registry: &Registry, node_id: u64, upkeep: bool) -> bool {
        let limit = Arc::new(tokio::sync::Semaphore::new(self.config.concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        for p in registry.all().into_iter().filter(|p| p.is_leader(node_id)) {
            let (tier, limit) = (self.clone(), limit.clone());
            let configs = registry.topic_configs(&p.topic);
            let retention = retention::RetentionPolicy::from_configs(&configs);
            let archive = crate::topic_config::archive_enabled(&configs);
            tasks.spawn(async move {
                let _permit = limit.acquire_owned().await;
                let tiered = tier.tier_partition(&p, upkeep).await;
                if !upkeep {
                    return tiered;
                }
                if let Err(err) = tier.maintain_partition(&p, &retention, archive).await {
                    tracing::warn!(topic = %p.topic, partition = p.index, %err, "partition upkeep failed; retrying next interval");
                }
                tiered
            });
        }
        // Followers do not tier, but their WAL must not grow either: once the leader's
        // chunks are in their manifest, a snapshot (manifest + the short tail) lets them
        // purge it, as the leader does after each step.
        for p in registry.all().into_iter().filter(|p| !p.is_leader(node_id)) {
            self.snapshot_if_due(&p, upkeep).await;
        }
        let mut results: Vec<Result<bool, String>> = Vec::new();
        while let Some(r) = tasks.join_next().await {
            results.push(r.unwrap_or_else(|e| Err(format!("tiering task: {e}"))));
        }
        let failed = results.iter().any(|r| r.is_err());
        for r in results {
            if let Err(err) = r {
                tracing::warn!(%err, "tiering step failed; retrying next interval");
            }
        }
        let untiered = untiered_bytes(registry);
        self.stats.untiered_bytes.store(untiered, Ordering::Relaxed);
        if failed && untiered > 0 {
            self.stats.lag_ticks.fetch_add(1, Ordering::Relaxed);
        } else if untiered == 0 {
            self.stats.lag_ticks.store(0, Ordering::Relaxed);
        }
        failed
    }

    /// Ships a partition's untiered tail, then snapshots it so the WAL can be purged.
    ///
    /// Whole chunks go first, for as long as a whole chunk or more is waiting (a producer
    /// that pipelines many requests keeps adding them), up to one interval. Then, on the
    /// interval's own step, under pressure, or when a snapshot is due, the partial rest
    /// goes as one more chunk, last, right before the snapshot: a snapshot carries the
    /// untiered tail to the local store and to the bucket, so shipping the rest first
    /// leaves it only what arrived during that one upload, instead of up to a chunk and
    /// more (6 partitions at full ingest: 61 MB of snapshots per 3 GB, was 110 MB). A step
    /// that used up its interval on whole chunks skips the partial one, and a step woken
    /// early ships only whole chunks unless the node is under pressure or a snapshot is
    /// due. `Ok(true)` when a chunk was tiered.
    async fn tier_partition(&self, p: &Arc<Partition>, on_clock: bool) -> Result<bool, String> {
        let started = tokio::time::Instant::now();
        let chunk_bytes = self.config.chunk_bytes as u64;
        let may_ship_partial = on_clock || self.under_pressure();
        if !may_ship_partial && p.log.read().untiered_bytes() < chunk_bytes {
            return Ok(false);
        }
        let mut tiered = false;
        let mut out_of_time = false;
        loop {
            match self.ship(p, true).await? {
                Shipped::Nothing => break,
                Shipped::Chunks => tiered = true,
                Shipped::Stopped => {
                    self.snapshot_if_due(p, on_clock).await;
                    return Ok(true);
                }
            }
            if p.log.read().untiered_bytes() < chunk_bytes {
                break;
            }
            if started.elapsed() >= self.config.interval {
                // Whole chunks are still waiting, and a partial pass would ship them all.
                out_of_time = true;
                break;
            }
        }
        let partial =
            !out_of_time && (may_ship_partial || (tiered && self.snapshot_due(p, on_clock)));
        if partial {
            tiered |= !matches!(self.ship(p, false).await?, Shipped::Nothing);
        } else if !tiered {
            return Ok(false);
        }
        self.snapshot_if_due(p, on_clock).await;
        Ok(tiered)
    }

    /// One pass of [`Tier::tier_partition`]: ships the untiered tail up to the high
    /// watermark (only its whole chunks with `whole_chunks_only`).
    async fn ship(&self, p: &Arc<Partition>, whole_chunks_only: bool) -> Result<Shipped, String> {
        use futures::StreamExt;
        let end = p.log.read().high_watermark();
        let mut pieces = p.log.read().untiered_chunks(self.config.chunk_bytes, end);
        if whole_chunks_only {
            // Only whole chunks; the rest waits to fill up or for the clock.
            let size = |piece: &Vec<BatchLocation>| -> usize {
                piece.iter().map(|b| b.bytes as usize).sum()
            };
            if pieces
                .last()
                .is_some_and(|last| size(last) < self.config.chunk_bytes)
            {
                pieces.pop();
            }
        }
        if pieces.is_empty() {
            return Ok(Shipped::Nothing);
        }
        // Build and upload a few chunks at once (one upload at a time cannot keep up with
        // a fast producer), and commit them to the manifest strictly in offset order.
        let mut uploads = futures::stream::iter(
            pieces
                .into_iter()
                .map(|batches| self.upload_chunk(p, batches)),
        )
        .buffered(UPLOADS_PER_PARTITION);
        let mut shipped = Shipped::Nothing;
        while let Some(chunk) = uploads.next().await {
            let (chunk, batch_bytes) = chunk?;
            if !self.commit_chunk(p, chunk).await? {
                return Ok(match shipped {
                    Shipped::Nothing => Shipped::Nothing,
                    _ => Shipped::Stopped,
                });
            }
            // The node's untiered count is refreshed only when a step ends (or on the
            // clock), while producers add to it all along: take the shipped bytes off now,
            // or a long step at full speed would push it past max_untiered_bytes and
            // refuse producers for no reason.
            let _ =
                self.stats
                    .untiered_bytes
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                        Some(n.saturating_sub(batch_bytes))
                    });
            shipped = Shipped::Chunks;
        }
        Ok(shipped)
    }

    /// Builds `batches` (consecutive, the oldest of the tail) into one chunk object and
    /// uploads it; also answers the batches' bytes.
    async fn upload_chunk(
        &self,
        p: &Arc<Partition>,
        batches: Vec<BatchLocation>,
    ) -> Result<(ChunkRef, u64), String> {
        let (Some(first), Some(last)) = (batches.first(), batches.last()) else {
            return Err("empty chunk".into());
        };
        let batch_bytes = batches.iter().map(|b| u64::from(b.bytes)).sum();
        let (base_offset, last_offset) = (first.base_offset, last.last_offset);
        let _permit = self
            .uploads
            .acquire()
            .await
            .map_err(|e| format!("upload slots: {e}"))?;
        // Copying batches in (and zstd when it pays): off the async workers.
        let (mut writer, probed) = p.compression.writer();
        let (object, max_timestamp) = tokio::task::spawn_blocking(move || {
            let mut max_timestamp = i64::MIN;
            for b in &batches {
                writer
                    .push_batch_at(
                        b.base_offset,
                        b.last_offset,
                        b.max_timestamp,
                        b.leader_epoch,
                        &b.data,
                    )
                    .map_err(|e| format!("build chunk: {e}"))?;
                max_timestamp = max_timestamp.max(b.max_timestamp);
            }
            Ok::<_, String>((writer.finish_parts(), max_timestamp))
        })
        .await
        .map_err(|e| format!("build chunk: {e}"))??;
        p.compression.record(probed, object.compressed);
        let key = layout::chunk_key(p.topic_id, p.index, base_offset, last_offset);
        let size = object.len;
        if let Err(e) = self.bucket.put_parts(&key, object.parts).await {
            self.stats.upload_failures.fetch_add(1, Ordering::Relaxed);
            return Err(format!("upload {key}: {e}"));
        }
        let chunk = ChunkRef {
            key,
            base_offset,
            last_offset,
            max_timestamp,
            size,
        };
        Ok((chunk, batch_bytes))
    }

    /// Records an uploaded chunk in the partition manifest (a Raft entry, so every replica
    /// has it); `Ok(false)` when the commit was refused (the tail moved meanwhile).
    async fn commit_chunk(&self, p: &Arc<Partition>, chunk: ChunkRef) -> Result<bool, String> {
        let size = chunk.size;
        let resp = commit(p, chunk_tiered_command(&chunk))
            .await
            .map_err(|e| format!("commit chunk {}: {e}", chunk.key))?;
        if AppendResult::decode(&resp.data).error != code::NONE {
            // DeleteRecords took these batches meanwhile: nothing will reference the object.
            let orphan = {
                let log = p.log.read();
                chunk.last_offset < log.log_start_offset()
                    && !log.deleted().iter().any(|d| d.chunk.key == chunk.key)
            };
            if orphan {
                let _ = self.bucket.delete(&chunk.key).await;
            }
            return Ok(false);
        }
        self.stats.chunks_uploaded.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes_uploaded.fetch_add(size, Ordering::Relaxed);
        Ok(true)
    }
}

/// How often a produce request held back by `max_untiered_bytes` looks again.
const LIMIT_POLL: Duration = Duration::from_millis(5);

/// What one shipping pass did.
enum Shipped {
    /// Nothing was due.
    Nothing,
    /// Every chunk due was committed.
    Chunks,
    /// A commit was refused (the tail moved meanwhile): stop for this step.
    Stopped,
}

/// Chunks of one partition built and uploaded at once by a tiering step.
const UPLOADS_PER_PARTITION: usize = 4;

/// Chunks built and uploaded at once on the whole node.
const UPLOADS_PER_NODE: usize = 4;

/// Untiered bytes of every partition on the node.
fn untiered_bytes(registry: &Registry) -> u64 {
    registry
        .all()
        .iter()
        .map(|p| p.log.read().untiered_bytes())
        .sum()
}
