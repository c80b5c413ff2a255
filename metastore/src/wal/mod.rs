//! The node WAL: one segmented, append-only log per node that is the openraft log storage
//! of every Raft group on the node (group 0 = metadata, one group per partition).
//!
//! - [`format`]: the bytes on disk (segment header, frame, records), version 1.
//! - [`segment`]: segment files (naming, creation, positional reads).
//! - [`recovery`]: replay on open, torn-tail cut, corruption detection.
//! - [`group`]: one group's in-memory index, vote, committed and purged ids.
//! - [`state`]: the lock-protected state: frame placement, tail cache, dead segments.
//! - [`writer`]: the writer thread (group commit and fsync policy).
//! - [`log_store`]: [`WalLogStore`], the openraft `RaftLogStorage` of one group.
//!
//! Every write (entries, votes, committed ids, truncations, purges, group drops) of every
//! group goes through one queue to one writer thread, so writes are totally ordered as
//! openraft requires and one fsync covers many groups' appends.

mod direct;
mod error;
pub mod format;
mod group;
mod log_store;
mod recovery;
mod segment;
mod state;
mod writer;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs::File;
use std::io::Seek;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

pub use error::WalError;
pub use log_store::WalLogStore;
pub use state::TAIL_CACHE_BYTES;

use format::{Frame, Record};
use group::EntryLoc;
use state::{Placed, State};
use writer::{Completion, SegmentReader, Writer, WriterShared};

use crate::types::{Entry, GroupId};

/// Default segment size: a segment rolls once it would exceed this.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Bytes queued for the writer but not yet written; appends wait (asynchronously) for room.
pub const MAX_PENDING_BYTES: usize = 32 * 1024 * 1024;

/// When the writer fsyncs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Fsync every group-commit batch before completing it.
    #[default]
    Always,
    /// Fsync at most every N ms; completions still wait for the fsync that covers them.
    IntervalMs(u64),
    /// Never fsync (except when sealing a segment); complete after the write.
    Never,
}

/// WAL configuration.
#[derive(Debug, Clone)]
pub struct WalConfig {
    /// The WAL directory, usually `<data_dir>/wal`.
    pub dir: PathBuf,
    /// A segment rolls once it would exceed this many bytes.
    pub segment_bytes: u64,
    pub fsync: FsyncPolicy,
    /// Zero-fill a spare segment in the background when the next roll would otherwise
    /// start a new file (see `segment::prepare_spare`).
    pub prepare_spares: bool,
    /// Write segments with direct I/O where the filesystem has it (see `direct`).
    pub direct_io: bool,
    /// Spares kept beyond [`writer::MIN_SPARES`] after a burst are deleted once no
    /// segment has rolled for this long.
    pub spares_idle_ttl: Duration,
}

impl WalConfig {
    /// Defaults: 64 MiB segments, fsync every batch.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        WalConfig {
            dir: dir.into(),
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            fsync: FsyncPolicy::Always,
            prepare_spares: true,
            direct_io: true,
            spares_idle_ttl: DEFAULT_SPARES_IDLE_TTL,
        }
    }
}

/// See [`WalConfig::spares_idle_ttl`].
pub const DEFAULT_SPARES_IDLE_TTL: Duration = Duration::from_secs(60);

/// Plain counters about the WAL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    pub bytes_on_disk: u64,
    pub segments: u64,
    /// Entries appended since open.
    pub appends: u64,
    pub fsyncs: u64,
    pub fsync_micros_total: u64,
    pub fsync_micros_max: u64,
    /// Batch writes into segment files (a group commit is one, or one per segment it
    /// spans), and their total time.
    pub writes: u64,
    pub write_micros_total: u64,
}

/// The node WAL. Cheap to clone; the writer thread stops when the last clone is dropped.
#[derive(Clone)]
pub struct Wal {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    state: Mutex<State>,
    io: Arc<WriterShared>,
    pending: Arc<Semaphore>,
    /// Open read handles of segment files, for positional reads.
    readers: Mutex<HashMap<u64, Arc<SegmentReader>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Wal {
    /// Opens (creating the dir if needed) and recovers: scans all segments, cuts a torn
    /// tail off the last segment, rebuilds per-group state. Blocking file I/O.
    pub fn open(config: WalConfig) -> Result<Wal, WalError> {
        let dir = config.dir;
        std::fs::create_dir_all(&dir).map_err(|e| WalError::io("create dir", &dir, e))?;
        let nonce = format::random_nonce();
        let rec = recovery::recover(&dir, nonce)?;
        let active = rec.segments.keys().next_back().copied().unwrap_or(0);
        let mut file = segment::open_at_end(&dir, active)?;
        let segment_end = file
            .stream_position()
            .map_err(|e| WalError::io("seek segment", segment::path(&dir, active), e))?;
        let direct = if config.direct_io {
            let path = segment::path(&dir, active);
            direct::enable(&file, &path, segment_end)
                .map_err(|e| WalError::io("switch segment to direct I/O", &path, e))?
                .map(direct::DirectTail::new)
        } else {
            None
        };
        segment::remove_unfinished_spare(&dir)?;
        let mut spares = segment::list_spares(&dir)?;
        for extra in spares.split_off(spares.len().min(writer::MAX_SPARES)) {
            if let Err(e) = std::fs::remove_file(&extra) {
                tracing::warn!(path = %extra.display(), error = %e, "wal: could not delete a spare");
            }
        }
        // What recovery read may still be only in the page cache (a crashed process's
        // last writes): made durable here, so the first batch can say it is.
        file.sync_data()
            .map_err(|e| WalError::io("fsync segment", segment::path(&dir, active), e))?;
        let io = Arc::new(WriterShared::default());
        io.written_pos.store(rec.end_pos, Ordering::Release);
        *io.synced.lock() = (active, segment_end);
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            dir: dir.clone(),
            policy: config.fsync,
            segment: active,
            file,
            rx,
            shared: io.clone(),
            undropped_bytes: 0,
            spares,
            nonce,
            segment_bytes: config.segment_bytes,
            segment_end,
            prepare_spares: config.prepare_spares,
            spares_idle_ttl: config.spares_idle_ttl,
            last_roll: std::time::Instant::now(),
            preparing: None,
            prepared: 0,
            direct,
        };
        let handle = std::thread::Builder::new()
            .name("chronik-wal".to_string())
            .spawn(move || writer.run())
            .map_err(|e| WalError::io("spawn writer thread", &dir, e))?;
        tracing::info!(
            dir = %dir.display(),
            segments = rec.segments.len(),
            groups = rec.groups.len(),
            "wal opened"
        );
        let state = State::new(rec, nonce, config.segment_bytes, tx, io.clone());
        Ok(Wal {
            inner: Arc::new(Inner {
                dir,
                state: Mutex::new(state),
                io,
                pending: Arc::new(Semaphore::new(MAX_PENDING_BYTES)),
                readers: Mutex::new(HashMap::new()),
                writer: Mutex::new(Some(handle)),
            }),
        })
    }

    /// Group ids that have any state (entries, vote, committed, purged) and were not dropped.
    pub fn groups(&self) -> Vec<GroupId> {
        let state = self.inner.state.lock();
        let mut ids: Vec<GroupId> = state
            .groups
            .iter()
            .filter(|(_, g)| g.has_state())
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The openraft log storage of one group.
    pub fn log_store(&self, group: GroupId) -> WalLogStore {
        WalLogStore::new(self.clone(), group)
    }

    /// Writes a durable tombstone for `group`: its state is freed and not recovered again.
    pub async fn drop_group(&self, group: GroupId) -> Result<(), WalError> {
        self.write_record(group, Record::DropGroup, true).await
    }

    /// Plain counters.
    pub fn stats(&self) -> WalStats {
        let (bytes_on_disk, segments, appends) = {
            let s = self.inner.state.lock();
            (
                s.segments.values().sum(),
                s.segments.len() as u64,
                s.appends,
            )
        };
        let io = &self.inner.io;
        WalStats {
            bytes_on_disk,
            segments,
            appends,
            fsyncs: io.fsyncs.load(Ordering::Relaxed),
            fsync_micros_total: io.fsync_micros_total.load(Ordering::Relaxed),
            fsync_micros_max: io.fsync_micros_max.load(Ordering::Relaxed),
            writes: io.writes.load(Ordering::Relaxed),
            write_micros_total: io.write_micros_total.load(Ordering::Relaxed),
        }
    }

    /// Waits for room in the writer queue for `bytes`.
    async fn reserve(&self, bytes: usize) -> Result<OwnedSemaphorePermit, WalError> {
        if let Some(err) = self.inner.io.failed.lock().clone() {
            return Err(WalError::WriterFailed(err));
        }
        let n = u32::try_from(bytes.clamp(1, MAX_PENDING_BYTES)).unwrap_or(u32::MAX);
        self.inner
            .pending
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(|_| WalError::Closed)
    }

    /// Writes one non-entry record of `group`, applies it to the in-memory state in the
    /// same critical section, and (if `wait`) returns once it is durable per policy.
    async fn write_record(
        &self,
        group: GroupId,
        record: Record,
        wait: bool,
    ) -> Result<(), WalError> {
        let mut frame = Vec::new();
        format::encode_frame(group, &record, &mut frame)
            .map_err(|reason| WalError::Encode { group, reason })?;
        let permit = self.reserve(frame.len()).await?;
        let (tx, rx) = oneshot::channel();
        let done = wait.then_some(Completion::Notify(tx));
        {
            let mut state = self.inner.state.lock();
            match &record {
                Record::DropGroup => {
                    state.groups.remove(&group);
                }
                other => state.groups.entry(group).or_default().apply(other),
            }
            let dead = if matches!(record, Record::Purge(_) | Record::DropGroup) {
                state.dead_segments()
            } else {
                Vec::new()
            };
            if dead.is_empty() {
                state.submit(vec![Frame::whole(frame)], done, Some(permit))?;
            } else {
                // The record is queued first: the writer makes it durable before deleting.
                state.submit(vec![Frame::whole(frame)], None, Some(permit))?;
                self.delete_segments(&mut state, dead, done)?;
            }
        }
        if !wait {
            return Ok(());
        }
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(WalError::WriterFailed(e)),
            Err(_) => Err(WalError::Closed),
        }
    }

    /// Appends encoded entry frames; entries are readable (cached) when this returns.
    fn append_locked(
        &self,
        state: &mut State,
        group: GroupId,
        frames: Vec<Frame>,
        entries: Vec<Entry>,
        done: Completion,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), WalError> {
        let placed: Vec<Placed> = state.submit(frames, Some(done), Some(permit))?;
        let written = self.inner.io.written_pos.load(Ordering::Acquire);
        state.appends += entries.len() as u64;
        for (entry, p) in entries.into_iter().zip(placed) {
            let index = entry.log_id.index;
            let loc = EntryLoc {
                segment: p.segment,
                offset: p.offset,
                frame_len: p.frame_len,
                pos: p.pos,
                log_id: entry.log_id,
            };
            state.groups.entry(group).or_default().insert(group::Slot {
                loc,
                cached: Some(entry),
            });
            state.cache_added(group, index, p, written);
        }
        Ok(())
    }

    /// Queues deletion of sealed segments that no longer hold live entries; `done` fires
    /// once they are gone.
    fn delete_segments(
        &self,
        state: &mut State,
        dead: Vec<u64>,
        done: Option<Completion>,
    ) -> Result<(), WalError> {
        for id in &dead {
            state.segments.remove(id);
        }
        let readers = {
            let mut readers = self.inner.readers.lock();
            dead.iter().filter_map(|id| readers.remove(id)).collect()
        };
        tracing::debug!(segments = ?dead, "wal: deleting segments without live entries");
        state
            .tx
            .send(writer::Job::Delete {
                segments: dead,
                readers,
                done,
            })
            .map_err(|_| WalError::Closed)
    }

    /// Reads the entry at `loc` from its segment file (blocking).
    fn read_at(&self, group: GroupId, loc: EntryLoc) -> Result<Entry, WalError> {
        let reader = {
            let mut readers = self.inner.readers.lock();
            match readers.get(&loc.segment) {
                Some(r) => r.clone(),
                None => {
                    let p = segment::path(&self.inner.dir, loc.segment);
                    let file = File::open(&p).map_err(|e| WalError::io("open segment", &p, e))?;
                    let salt = segment::read_header(&file, loc.segment)?.salt(loc.segment);
                    let r = Arc::new(SegmentReader {
                        segment: loc.segment,
                        file,
                        salt,
                    });
                    readers.insert(loc.segment, r.clone());
                    r
                }
            }
        };
        let (got_group, record) = segment::read_frame(
            &reader.file,
            loc.segment,
            reader.salt,
            loc.offset,
            loc.frame_len,
        )?;
        match record {
            Record::Entry(e) if got_group == group && e.log_id == loc.log_id => Ok(e),
            _ => Err(WalError::corrupt(
                &segment::file_name(loc.segment),
                loc.offset,
                format!("expected entry {} of group {group}", loc.log_id),
            )),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Close the queue so the writer drains it, makes the tail durable, and exits.
        let (closed, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.state.get_mut().tx, closed));
        if let Some(handle) = self.writer.get_mut().take() {
            if handle.join().is_err() {
                tracing::error!("wal writer thread panicked");
            }
        }
    }
}
