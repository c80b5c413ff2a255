//! The partition state machine: what a partition's committed Raft log means in Kafka terms.
//!
//! Each committed `Append` command carries one record batch as the client sent it. Apply
//! checks the producer's sequence, assigns the next offsets and keeps the batch (a shared
//! slice of the log entry, not a copy) in the untiered tail. The tiering loop uploads a
//! prefix of the tail as a chunk object and commits a `ChunkTiered` command: from then on
//! those offsets are served from the bucket and the tail drops them. Everything is a
//! deterministic function of the log, so every replica assigns the same offsets.
//!
//! DeleteRecords and retention move `log_start_offset` with a `DeleteRecords` command;
//! compaction swaps a run of manifest chunks for one merged segment with `Compacted`. Both
//! move the objects that leave the manifest onto the `deleted` list, stamped with the
//! leader's clock carried in the command, and garbage collection removes them from the list
//! with `ObjectsDeleted` once the objects are gone from the bucket after a grace period.
//!
//! A snapshot holds the whole partition — the chunk manifest, producer state, leader epochs
//! and the untiered tail's bytes — so the Raft log can be purged after every snapshot and a
//! node that lost its disk restores the partition from the bucket alone. The manifest's
//! older entries are sealed into page objects in the bucket (`PageSealed`, see
//! [`super::page`]), so the snapshot names them with one reference per page and stays
//! small however long the partition's history.
//!
//! Invariants: `pages`, then `chunks`, then `tail` cover `log_start_offset..log_end_offset`
//! in order with no gap (pages and chunks may start below `log_start_offset` after
//! DeleteRecords); the leader epoch of a batch is the Raft term of the entry that appended
//! it.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use chronik_metastore::snapshot_buf::SnapshotWriter;
use chronik_metastore::state_machine::ApplyState;
use chronik_metastore::types::{Command, CommandResponse, LogId};

use super::batch::BatchHeader;
pub use super::page::PageRef;
use super::producers::{ProducerTable, SequenceCheck};
use crate::errors::code;
pub use manifest::{entry_index, find_entry, OpenPages, Unit};

/// The first byte of a bare batch command (see [`append_command`]).
const BARE_BATCH: u8 = 0;
const CMD_APPEND: u8 = 1;
const CMD_CHUNK_TIERED: u8 = 2;
const CMD_DELETE_RECORDS: u8 = 3;
const CMD_COMPACTED: u8 = 4;
const CMD_OBJECTS_DELETED: u8 = 5;
const CMD_PAGE_SEALED: u8 = 6;
const CMD_PRODUCERS_EXPIRED: u8 = 7;
const CMD_ARCHIVED: u8 = 8;
/// Offset of the batch inside a prefixed append command (after the kind byte).
pub const APPEND_BATCH_POS: usize = 1;

/// The append command for one validated batch: the batch itself, shared with the request
/// it arrived in (not copied). A command whose first byte is 0 is such a bare batch; every
/// other first byte is a kind, so kinds 1..=255 stay free for commands. A batch whose
/// first byte is not 0 (a client baseOffset of 2^56 or more, which no client sends) is
/// prefixed with [`CMD_APPEND`] instead.
///
/// Nodes that predate bare batches cannot apply them: every node of a cluster must run a
/// build that has them (no rolling upgrade across this change).
pub fn append_command(batch: Bytes) -> Command {
    if batch.first() != Some(&BARE_BATCH) {
        let mut b = BytesMut::with_capacity(batch.len() + 1);
        b.put_u8(CMD_APPEND);
        b.put_slice(&batch);
        return Command(b.freeze());
    }
    Command(batch)
}

/// Encodes the command that records an uploaded chunk in the manifest.
pub fn chunk_tiered_command(chunk: &ChunkRef) -> Command {
    json_command(CMD_CHUNK_TIERED, chunk)
}

fn json_command(kind: u8, body: &impl Serialize) -> Command {
    let mut b = BytesMut::new();
    b.put_u8(kind);
    // Serialising strings and integers cannot fail.
    b.put_slice(&serde_json::to_vec(body).unwrap_or_default());
    Command(b.freeze())
}

/// Moves the log start to `before_offset` (-1: the high watermark). `now_ms` is the
/// proposer's clock, recorded on the chunks that leave the manifest.
pub fn delete_records_command(before_offset: i64, now_ms: i64) -> Command {
    json_command(
        CMD_DELETE_RECORDS,
        &DeleteRecords {
            before_offset,
            now_ms,
        },
    )
}

/// Swaps the manifest entries named `replaces` (adjacent, in order) for `with`.
pub fn compacted_command(replaces: Vec<String>, with: ChunkRef, now_ms: i64) -> Command {
    json_command(
        CMD_COMPACTED,
        &Compacted {
            replaces,
            with,
            now_ms,
        },
    )
}

/// Forgets deleted objects that garbage collection removed from the bucket.
pub fn objects_deleted_command(keys: Vec<String>) -> Command {
    json_command(CMD_OBJECTS_DELETED, &ObjectsDeleted { keys })
}

/// Swaps the oldest `page.entries` open manifest entries, from `first_key` to `last_key`,
/// for the sealed page that holds them.
pub fn page_sealed_command(page: &PageRef, first_key: String, last_key: String) -> Command {
    json_command(
        CMD_PAGE_SEALED,
        &PageSealed {
            page: page.clone(),
            first_key,
            last_key,
        },
    )
}

/// Forgets idempotent producers whose last batch is older than `now_ms - expiration_ms`
/// (`now_ms` is the proposer's clock).
pub fn producers_expired_command(now_ms: i64, expiration_ms: i64) -> Command {
    json_command(
        CMD_PRODUCERS_EXPIRED,
        &ProducersExpired {
            now_ms,
            expiration_ms,
        },
    )
}

/// Records that the Parquet archive holds `base_offset..up_to` (see
/// `crate::tiering::archive`).
pub fn archived_command(base_offset: i64, up_to: i64) -> Command {
    json_command(CMD_ARCHIVED, &Archived { base_offset, up_to })
}

#[derive(Serialize, Deserialize)]
struct Archived {
    base_offset: i64,
    up_to: i64,
}

#[derive(Serialize, Deserialize)]
struct ProducersExpired {
    now_ms: i64,
    expiration_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct PageSealed {
    page: PageRef,
    first_key: String,
    last_key: String,
}

#[derive(Serialize, Deserialize)]
struct DeleteRecords {
    before_offset: i64,
    now_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct Compacted {
    replaces: Vec<String>,
    with: ChunkRef,
    now_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct ObjectsDeleted {
    keys: Vec<String>,
}

/// An object that left the manifest and awaits garbage collection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedChunk {
    /// The object (for a page: its key, offsets and size).
    pub chunk: ChunkRef,
    /// A sealed manifest page: the objects it names go with it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub page: bool,
    /// The proposer's wall clock (Unix ms) when it left the manifest.
    pub since_ms: i64,
}

/// A chunk object in the bucket holding the batches `base_offset..=last_offset`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub key: String,
    pub base_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
    /// Size of the object.
    pub size: u64,
}

/// Where a read at some offset is served from.
#[derive(Debug)]
pub enum ReadPlan {
    /// Untiered batches, in memory.
    Tail(Vec<BatchLocation>),
    /// A chunk in the bucket that holds the offset.
    Chunk(ChunkRef),
    /// A sealed manifest page that names the chunk (load it, then look again).
    Page(PageRef),
    Empty,
}

/// The outcome of one append, as every replica computed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendResult {
    pub error: i16,
    pub base_offset: i64,
    pub log_start_offset: i64,
}

impl AppendResult {
    fn encode(&self) -> CommandResponse {
        let mut b = BytesMut::with_capacity(18);
        b.put_i16(self.error);
        b.put_i64(self.base_offset);
        b.put_i64(self.log_start_offset);
        CommandResponse(b.freeze())
    }

    pub fn decode(resp: &CommandResponse) -> AppendResult {
        let mut b = resp.0.clone();
        if b.len() < 18 {
            return AppendResult {
                error: code::UNKNOWN_SERVER_ERROR,
                base_offset: -1,
                log_start_offset: -1,
            };
        }
        AppendResult {
            error: b.get_i16(),
            base_offset: b.get_i64(),
            log_start_offset: b.get_i64(),
        }
    }
}

/// One untiered batch and its bytes as the client sent them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchLocation {
    pub base_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
    pub leader_epoch: i32,
    /// Raft log index of the append entry holding the batch.
    pub log_index: u64,
    pub bytes: u32,
    /// The batch (offset fields not yet rewritten); carried outside the JSON in snapshots.
    #[serde(skip)]
    pub data: Bytes,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PartitionLog {
    /// The manifest's sealed pages, in offset order (objects in the bucket).
    #[serde(default)]
    pages: Vec<PageRef>,
    /// The manifest's open part: tiered chunks after the last page, in offset order.
    chunks: Vec<ChunkRef>,
    /// The untiered tail, in offset order.
    batches: Vec<BatchLocation>,
    log_start_offset: i64,
    log_end_offset: i64,
    /// (leader epoch, first offset written in it), ascending.
    epochs: Vec<(i32, i64)>,
    producers: ProducerTable,
    /// Objects no longer in the manifest, oldest first, until GC deletes them.
    #[serde(default)]
    deleted: Vec<DeletedChunk>,
    /// Offsets below this are in the Parquet archive (or were deleted before it).
    #[serde(default)]
    archived_to: i64,
    #[serde(skip, default = "hwm_channel")]
    hwm: watch::Sender<i64>,
    /// Sum of the tail's batch sizes (derived: recounted on restore).
    #[serde(skip)]
    untiered: u64,
}

fn hwm_channel() -> watch::Sender<i64> {
    watch::channel(0).0
}

impl Default for PartitionLog {
    fn default() -> Self {
        Self {
            pages: Vec::new(),
            chunks: Vec::new(),
            batches: Vec::new(),
            log_start_offset: 0,
            log_end_offset: 0,
            epochs: Vec::new(),
            producers: ProducerTable::default(),
            deleted: Vec::new(),
            archived_to: 0,
            hwm: hwm_channel(),
            untiered: 0,
        }
    }
}

impl PartitionLog {
    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset
    }

    /// Every applied offset is committed, so the log end is the high watermark.
    pub fn high_watermark(&self) -> i64 {
        self.log_end_offset
    }

    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.hwm.subscribe()
    }

    pub fn current_epoch(&self) -> i32 {
        self.epochs.last().map(|e| e.0).unwrap_or(0)
    }

    /// Where a read at `offset` is served from: a chunk in the bucket (or the sealed page
    /// that names it), or the tail.
    pub fn plan_read(&self, offset: i64, max_bytes: usize) -> ReadPlan {
        if let Some(c) = self.chunk_for(offset) {
            return ReadPlan::Chunk(c.clone());
        }
        if let Some(p) = self.page_for(offset) {
            return ReadPlan::Page(p.clone());
        }
        let batches = self.batches_from(offset, max_bytes);
        if batches.is_empty() {
            ReadPlan::Empty
        } else {
            ReadPlan::Tail(batches)
        }
    }

    /// The untiered tail, oldest first.
    pub fn tail(&self) -> &[BatchLocation] {
        &self.batches
    }

    /// Whether a `ProducersExpired` pass with this cutoff has work (see
    /// [`ProducerTable::any_expired`]).
    pub fn producers_to_expire(&self, before_ms: i64) -> bool {
        self.producers.any_expired(before_ms)
    }

    /// Objects that left the manifest and await garbage collection.
    pub fn deleted(&self) -> &[DeletedChunk] {
        &self.deleted
    }

    /// Bytes held in memory by the untiered tail.
    pub fn untiered_bytes(&self) -> u64 {
        self.untiered
    }

    /// Drops the first `n` tail batches (tiered or deleted).
    fn drop_tail_prefix(&mut self, n: usize) {
        let gone: u64 = self.batches[..n].iter().map(|b| b.bytes as u64).sum();
        self.batches.drain(..n);
        self.untiered -= gone;
    }

    /// The untiered batches below `end`, cut into consecutive chunks of about
    /// `chunk_bytes` each (at least one batch per chunk).
    pub fn untiered_chunks(&self, chunk_bytes: usize, end: i64) -> Vec<Vec<BatchLocation>> {
        let mut chunks: Vec<Vec<BatchLocation>> = Vec::new();
        let mut current = Vec::new();
        let mut total = 0usize;
        for b in self.batches.iter().take_while(|b| b.base_offset < end) {
            if !current.is_empty() && total + b.bytes as usize > chunk_bytes {
                chunks.push(std::mem::take(&mut current));
                total = 0;
            }
            total += b.bytes as usize;
            current.push(b.clone());
        }
        if !current.is_empty() {
            chunks.push(current);
        }
        chunks
    }

    /// Batches from the one containing `offset`, until `max_bytes` is reached (the first
    /// batch is always included, as Kafka does, so a consumer can always make progress).
    pub fn batches_from(&self, offset: i64, max_bytes: usize) -> Vec<BatchLocation> {
        let start = self.batches.partition_point(|b| b.last_offset < offset);
        let mut out = Vec::new();
        let mut total = 0usize;
        for b in &self.batches[start..] {
            if !out.is_empty() && total + b.bytes as usize > max_bytes {
                break;
            }
            total += b.bytes as usize;
            out.push(b.clone());
        }
        out
    }

    /// The first batch whose max timestamp is at or after `timestamp`.
    pub fn batch_for_timestamp(&self, timestamp: i64) -> Option<BatchLocation> {
        self.batches
            .iter()
            .find(|b| b.max_timestamp >= timestamp)
            .cloned()
    }

    /// For OffsetForLeaderEpoch, as Kafka's leader-epoch cache answers it: for the latest
    /// epoch, the log end; for an older one, the largest epoch <= it and the start offset of
    /// the next epoch after it; for an epoch newer than any known, or none known, (-1, -1).
    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        let Some(&(latest, _)) = self.epochs.last() else {
            return (-1, -1);
        };
        if epoch < 0 {
            return (-1, -1);
        }
        if epoch == latest {
            return (latest, self.log_end_offset);
        }
        let idx = self.epochs.partition_point(|(e, _)| *e <= epoch);
        let Some(&(_, next_start)) = self.epochs.get(idx) else {
            return (-1, -1);
        };
        match idx.checked_sub(1).map(|i| self.epochs[i]) {
            Some((found, _)) => (found, next_start),
            // Older than every epoch we know: the requested epoch ends where ours begin.
            None => (epoch, next_start),
        }
    }

    /// The leader epoch of the batch holding `offset`, or the latest epoch at the log end.
    pub fn epoch_at(&self, offset: i64) -> i32 {
        let idx = self.epochs.partition_point(|(_, start)| *start <= offset);
        match idx.checked_sub(1) {
            Some(i) => self.epochs[i].0,
            None => self.epochs.first().map(|e| e.0).unwrap_or(-1),
        }
    }

    /// Records an uploaded chunk: it must cover exactly a prefix of the tail (a stale or
    /// repeated proposal is refused, identically on every replica).
    fn chunk_tiered(&mut self, chunk: ChunkRef) -> AppendResult {
        let refused = AppendResult {
            error: code::INVALID_REQUEST,
            base_offset: -1,
            log_start_offset: self.log_start_offset,
        };
        let starts_tail = self
            .batches
            .first()
            .is_some_and(|b| b.base_offset == chunk.base_offset);
        let Some(end) = self
            .batches
            .iter()
            .position(|b| b.last_offset == chunk.last_offset)
        else {
            return refused;
        };
        if !starts_tail {
            return refused;
        }
        self.drop_tail_prefix(end + 1);
        let base_offset = chunk.base_offset;
        // A key back in the manifest is live again, whatever GC was told before.
        self.deleted.retain(|d| d.chunk.key != chunk.key);
        self.chunks.push(chunk);
        AppendResult {
            error: code::NONE,
            base_offset,
            log_start_offset: self.log_start_offset,
        }
    }

    fn result(&self, error: i16, base_offset: i64) -> AppendResult {
        AppendResult {
            error,
            base_offset,
            log_start_offset: self.log_start_offset,
        }
    }

    /// Kafka's DeleteRecords: the log start moves forward (never back) to `before_offset`,
    /// at most the high watermark. Tail batches wholly below it are dropped; chunks wholly
    /// below it leave the manifest for the GC list. Answers the new low watermark.
    fn delete_records(&mut self, cmd: DeleteRecords) -> AppendResult {
        let hwm = self.log_end_offset;
        let target = if cmd.before_offset == -1 {
            hwm
        } else {
            cmd.before_offset
        };
        if target < 0 || target > hwm {
            return self.result(code::OFFSET_OUT_OF_RANGE, -1);
        }
        if target > self.log_start_offset {
            self.log_start_offset = target;
            let tail = self.batches.partition_point(|b| b.last_offset < target);
            self.drop_tail_prefix(tail);
            let since_ms = cmd.now_ms;
            // A page leaves once all it names is below the log start; until then the
            // objects it names stay in the bucket.
            let pages = self.pages.partition_point(|p| p.last_offset < target);
            self.deleted
                .extend(self.pages.drain(..pages).map(|p| DeletedChunk {
                    chunk: ChunkRef {
                        key: p.key,
                        base_offset: p.base_offset,
                        last_offset: p.last_offset,
                        max_timestamp: p.max_timestamp,
                        size: p.size,
                    },
                    page: true,
                    since_ms,
                }));
            let gone = self.chunks.partition_point(|c| c.last_offset < target);
            self.deleted
                .extend(self.chunks.drain(..gone).map(|chunk| DeletedChunk {
                    chunk,
                    page: false,
                    since_ms,
                }));
        }
        self.result(code::NONE, self.log_start_offset)
    }

    /// Swaps a run of manifest entries for the merged object, only if the run is still
    /// exactly those entries (a concurrent DeleteRecords or a stale proposal is refused,
    /// identically on every replica) and the merged object covers exactly their offsets.
    fn compacted(&mut self, cmd: Compacted) -> AppendResult {
        let n = cmd.replaces.len();
        let start = cmd
            .replaces
            .first()
            .and_then(|k| self.chunks.iter().position(|c| &c.key == k));
        let Some(run) = start.and_then(|i| self.chunks.get(i..i + n).map(|r| (i, r))) else {
            return self.result(code::INVALID_REQUEST, -1);
        };
        let (i, run) = run;
        let same = n >= 2
            && run.iter().map(|c| &c.key).eq(cmd.replaces.iter())
            && run[0].base_offset == cmd.with.base_offset
            && run[n - 1].last_offset == cmd.with.last_offset
            && !self.chunks.iter().any(|c| c.key == cmd.with.key);
        if !same {
            return self.result(code::INVALID_REQUEST, -1);
        }
        let base_offset = cmd.with.base_offset;
        self.deleted.retain(|d| d.chunk.key != cmd.with.key);
        let since_ms = cmd.now_ms;
        let old: Vec<ChunkRef> = self.chunks.splice(i..i + n, [cmd.with]).collect();
        self.deleted
            .extend(old.into_iter().map(|chunk| DeletedChunk {
                chunk,
                page: false,
                since_ms,
            }));
        self.result(code::NONE, base_offset)
    }

    /// Swaps the oldest open entries for the sealed page that holds them, only if they are
    /// still exactly those entries (a concurrent compaction or DeleteRecords, or a stale
    /// proposal, is refused identically on every replica). At least one entry stays open.
    fn page_sealed(&mut self, cmd: PageSealed) -> AppendResult {
        let n = cmd.page.entries as usize;
        let same = n >= 1
            && self.chunks.len() > n
            && self.chunks[0].key == cmd.first_key
            && self.chunks[n - 1].key == cmd.last_key
            && self.chunks[0].base_offset == cmd.page.base_offset
            && self.chunks[n - 1].last_offset == cmd.page.last_offset
            && !self.references(&cmd.page.key);
        if !same {
            return self.result(code::INVALID_REQUEST, -1);
        }
        let base_offset = cmd.page.base_offset;
        self.chunks.drain(..n);
        self.deleted.retain(|d| d.chunk.key != cmd.page.key);
        self.pages.push(cmd.page);
        self.result(code::NONE, base_offset)
    }

    /// Offsets below this are archived as Parquet.
    pub fn archived_to(&self) -> i64 {
        self.archived_to
    }

    /// Moves the archived mark from `base_offset` (where the archive file starts: the
    /// mark, or past it when retention deleted what was not archived yet) to `up_to`.
    /// A proposal from a leader that did not see the mark where it is now is refused.
    fn archived(&mut self, cmd: Archived) -> AppendResult {
        if cmd.base_offset < self.archived_to
            || cmd.up_to <= cmd.base_offset
            || cmd.up_to > self.log_end_offset
        {
            return self.result(code::INVALID_REQUEST, -1);
        }
        self.archived_to = cmd.up_to;
        self.result(code::NONE, cmd.up_to)
    }

    fn objects_deleted(&mut self, cmd: ObjectsDeleted) -> AppendResult {
        self.deleted.retain(|d| !cmd.keys.contains(&d.chunk.key));
        self.result(code::NONE, -1)
    }

    fn append(&mut self, log_id: &LogId, batch: Bytes) -> AppendResult {
        let result = |error, base_offset| AppendResult {
            error,
            base_offset,
            log_start_offset: self.log_start_offset,
        };
        // The leader validated the batch before proposing; a replica that disagrees about its
        // header must not apply it (and will answer the same on every replica).
        let Ok(header) = BatchHeader::parse(&batch) else {
            return result(code::CORRUPT_MESSAGE, -1);
        };
        match self.producers.check(&header) {
            SequenceCheck::Append => {}
            SequenceCheck::Duplicate(base) => return result(code::NONE, base),
            SequenceCheck::OutOfOrder => return result(code::OUT_OF_ORDER_SEQUENCE_NUMBER, -1),
            SequenceCheck::StaleEpoch => return result(code::INVALID_PRODUCER_EPOCH, -1),
        }
        let base_offset = self.log_end_offset;
        let last_offset = base_offset + header.last_offset_delta as i64;
        self.producers.record(&header, base_offset);
        self.batches.push(BatchLocation {
            base_offset,
            last_offset,
            max_timestamp: header.max_timestamp,
            leader_epoch: log_id.leader_id.term as i32,
            log_index: log_id.index,
            bytes: header.batch_len as u32,
            data: batch.slice(..header.batch_len),
        });
        self.untiered += header.batch_len as u64;
        self.log_end_offset = last_offset + 1;
        result(code::NONE, base_offset)
    }
}

impl ApplyState for PartitionLog {
    fn apply(&mut self, log_id: &LogId, command: &Command) -> CommandResponse {
        let bytes: &Bytes = &command.0;
        let body = bytes.get(1..).unwrap_or_default();
        let corrupt = |log: &Self| log.result(code::CORRUPT_MESSAGE, -1);
        let result = match bytes.first() {
            Some(&CMD_APPEND) => self.append(log_id, bytes.slice(APPEND_BATCH_POS..)),
            Some(&CMD_CHUNK_TIERED) => match serde_json::from_slice(body) {
                Ok(chunk) => self.chunk_tiered(chunk),
                Err(_) => corrupt(self),
            },
            Some(&CMD_DELETE_RECORDS) => match serde_json::from_slice(body) {
                Ok(cmd) => self.delete_records(cmd),
                Err(_) => corrupt(self),
            },
            Some(&CMD_COMPACTED) => match serde_json::from_slice(body) {
                Ok(cmd) => self.compacted(cmd),
                Err(_) => corrupt(self),
            },
            Some(&CMD_OBJECTS_DELETED) => match serde_json::from_slice(body) {
                Ok(cmd) => self.objects_deleted(cmd),
                Err(_) => corrupt(self),
            },
            Some(&CMD_PAGE_SEALED) => match serde_json::from_slice(body) {
                Ok(cmd) => self.page_sealed(cmd),
                Err(_) => corrupt(self),
            },
            Some(&CMD_ARCHIVED) => match serde_json::from_slice(body) {
                Ok(cmd) => self.archived(cmd),
                Err(_) => corrupt(self),
            },
            Some(&CMD_PRODUCERS_EXPIRED) => match serde_json::from_slice(body) {
                Ok(ProducersExpired {
                    now_ms,
                    expiration_ms,
                }) => {
                    let before = now_ms.saturating_sub(expiration_ms);
                    let gone = self.producers.expire(before, now_ms);
                    self.result(code::NONE, gone as i64)
                }
                Err(_) => corrupt(self),
            },
            Some(&BARE_BATCH) => self.append(log_id, bytes.clone()),
            _ => corrupt(self),
        };
        result.encode()
    }

    fn observe_entry(&mut self, log_id: &LogId) {
        let term = log_id.leader_id.term as i32;
        if self.epochs.last().is_none_or(|(e, _)| *e < term) {
            self.epochs.push((term, self.log_end_offset));
        }
    }

    /// `u32 BE length | JSON of the state | the tail batches' bytes, in order`.
    fn write_snapshot(&self, out: &mut SnapshotWriter) -> Result<(), String> {
        use std::io::Write;
        let json = serde_json::to_vec(self).map_err(|e| e.to_string())?;
        out.write_all(&(json.len() as u32).to_be_bytes())
            .and_then(|()| out.write_all(&json))
            .map_err(|e| e.to_string())?;
        // The untiered batches go in as the shared buffers they are, not copied.
        for b in &self.batches {
            out.push_shared(b.data.clone());
        }
        Ok(())
    }

    fn from_snapshot(bytes: &[u8]) -> Result<Self, String> {
        let len = bytes
            .get(..4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or("partition snapshot is truncated")?;
        let json = bytes
            .get(4..4 + len)
            .ok_or("partition snapshot is truncated")?;
        let mut log: PartitionLog = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        let data = Bytes::copy_from_slice(&bytes[4 + len..]);
        let mut at = 0usize;
        for b in &mut log.batches {
            let end = at + b.bytes as usize;
            b.data = data
                .get(at..end)
                .map(|_| data.slice(at..end))
                .ok_or("partition snapshot tail is truncated")?;
            at = end;
        }
        if at != data.len() {
            return Err("partition snapshot has trailing bytes".into());
        }
        log.untiered = at as u64;
        log.hwm.send_replace(log.log_end_offset);
        Ok(log)
    }

    fn adopt(&mut self, restored: Self) {
        // Keep the high-watermark channel: fetches wait on it.
        let hwm = std::mem::replace(&mut self.hwm, hwm_channel());
        *self = restored;
        self.hwm = hwm;
    }

    fn applied(state: &Arc<RwLock<Self>>) {
        let s = state.read();
        s.hwm.send_if_modified(|hwm| {
            let changed = *hwm != s.log_end_offset;
            *hwm = s.log_end_offset;
            changed
        });
    }
}

#[path = "log_manifest.rs"]
mod manifest;

#[cfg(test)]
#[path = "log_manifest_tests.rs"]
mod manifest_tests;

#[cfg(test)]
#[path = "log_tests.rs"]
mod tests;
