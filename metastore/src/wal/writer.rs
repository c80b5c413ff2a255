//! The writer thread: the only code that writes segment files.
//!
//! Callers place frames (choose segment and offset) under the WAL's state lock and send
//! them here in that same order, so file contents always match the positions handed out.
//! The thread drains everything queued, writes it with one `write_all` per segment, fsyncs
//! according to the policy and only then completes the callers (group commit).
//!
//! Invariants: a segment is fsynced before the next one is created, so only the last
//! segment can have a torn tail; a completion fires only once the data it covers is
//! durable per policy; after the first I/O error every later job fails (the WAL is
//! poisoned until reopened) because a gap in the file would corrupt what follows.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::num::NonZeroU64;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::storage::LogFlushed;
use parking_lot::Mutex;
use tokio::sync::{oneshot, OwnedSemaphorePermit};

use super::direct::{self, DirectTail};
use super::error::WalError;
use super::format::SEGMENT_HEADER_LEN;
use super::segment;
use super::FsyncPolicy;
use crate::types::TypeConfig;

/// Largest number of bytes the writer gathers into one write.
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// Synced bytes after which the writer drops the segment's pages from the page cache.
const DROP_PAGES_EVERY: u64 = 4 * 1024 * 1024;

/// The page size assumed when dropping synced pages (a larger real page only means a
/// partial page is occasionally dropped and read back).
const PAGE_BYTES: u64 = 4096;

/// Writes every buffer of `bufs`, in order, retrying short writes.
fn write_all_vectored(file: &mut File, bufs: &[Bytes]) -> io::Result<()> {
    let mut slices: Vec<io::IoSlice<'_>> = bufs.iter().map(|b| io::IoSlice::new(b)).collect();
    let mut rest = &mut slices[..];
    // Empty buffers are skipped up front so that a zero-length write means no progress.
    io::IoSlice::advance_slices(&mut rest, 0);
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "wrote 0 bytes")),
            Ok(n) => io::IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Microseconds since `start`, for the counters.
fn micros_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Who to tell when a job is durable.
pub(crate) enum Completion {
    Notify(oneshot::Sender<Result<(), String>>),
    Flushed(LogFlushed<TypeConfig>),
}

impl Completion {
    fn complete(self, result: Result<(), &str>) {
        match self {
            // The caller may have gone away; nothing to tell then.
            Completion::Notify(tx) => drop(tx.send(result.map_err(str::to_string))),
            Completion::Flushed(cb) => {
                cb.log_io_completed(result.map_err(|m| io::Error::other(m.to_string())))
            }
        }
    }
}

/// Work for the writer, in placement order.
pub(crate) enum Job {
    /// Append `bytes` to `segment` (creating it first if it is the next one). After it,
    /// the global write position is `end_pos`.
    Write {
        segment: u64,
        /// The frames' bytes, in order (written with one vectored write, not joined).
        parts: Vec<Bytes>,
        end_pos: u64,
        done: Option<Completion>,
        permit: Option<OwnedSemaphorePermit>,
    },
    /// Make everything written so far durable, then delete these (sealed) segments.
    Delete {
        segments: Vec<u64>,
        /// Read handles of those segments that were open; one still shared with an
        /// in-flight read keeps its file from being recycled under that read.
        readers: Vec<Arc<SegmentReader>>,
        done: Option<Completion>,
    },
}

/// An open read handle of a segment file and the crc salt of its frames.
pub(crate) struct SegmentReader {
    pub segment: u64,
    pub file: File,
    pub salt: u32,
}

/// Dead segments kept to be recycled into new ones (each up to a segment's size on disk).
///
/// Segments die in bursts: one is dead only once every group with entries in it has
/// snapshotted and purged, so at full ingest the segments written during a snapshot
/// interval die together. The next interval's rolls need as many spares, and each one
/// missing is a segment zero-filled from scratch: with 2 kept, a 6-partition producer at
/// about 500 MB/s zero-filled 18 segments per 47 written, 0.4 GB of extra writes per GB.
/// 8 covers an interval (1 s) at the ingest this broker reaches on 2 cores. The price is
/// disk: up to 8 dead segments while segments keep rolling, and [`MIN_SPARES`] once none
/// has rolled for `spares_idle_ttl`.
pub const MAX_SPARES: usize = 8;

/// Spares kept however long the WAL idles: what a steady trickle of rolls needs.
pub const MIN_SPARES: usize = 2;

/// Counters and flags shared between the writer and WAL handles.
#[derive(Debug, Default)]
pub(crate) struct WriterShared {
    /// Global position up to which frames are in the segment files (page cache at least).
    pub written_pos: AtomicU64,
    /// (segment, offset) before which everything was made durable: in that segment and in
    /// every earlier one.
    pub synced: Mutex<(u64, u64)>,
    pub fsyncs: AtomicU64,
    pub fsync_micros_total: AtomicU64,
    pub fsync_micros_max: AtomicU64,
    /// Writes of a batch into a segment file, and the time they took.
    pub writes: AtomicU64,
    pub write_micros_total: AtomicU64,
    /// The first I/O error; set once, never cleared.
    pub failed: Mutex<Option<String>>,
}

pub(crate) struct Writer {
    pub dir: PathBuf,
    pub policy: FsyncPolicy,
    pub segment: u64,
    pub file: File,
    pub rx: Receiver<Job>,
    pub shared: Arc<WriterShared>,
    /// Bytes written since the segment's pages were last dropped from the page cache.
    pub undropped_bytes: u64,
    /// Dead segment files waiting to be recycled, at most [`MAX_SPARES`].
    pub spares: Vec<PathBuf>,
    /// The nonce of the segments this instance creates (see `format`).
    pub nonce: u32,
    /// The size segments roll at (spares are prepared at this size).
    pub segment_bytes: u64,
    /// Where the next write goes in the active segment.
    pub segment_end: u64,
    /// Whether to prepare a spare when none is left (see [`segment::prepare_spare`]).
    pub prepare_spares: bool,
    /// Spares over [`MIN_SPARES`] are deleted once no segment rolled for this long.
    pub spares_idle_ttl: Duration,
    /// When a segment last rolled (or the WAL opened).
    pub last_roll: Instant,
    /// The spare being prepared in the background, if any: `Ok(None)` when the
    /// filesystem has no direct I/O.
    pub preparing: Option<JoinHandle<Result<Option<PathBuf>, WalError>>>,
    /// Spares prepared so far (numbers their names).
    pub prepared: u64,
    /// Set when the active segment is written with direct I/O (then nothing is cached).
    pub direct: Option<DirectTail>,
}

impl Writer {
    /// Runs until every sender is gone, then makes the tail durable and returns.
    pub fn run(mut self) {
        let mut unsynced: Vec<Completion> = Vec::new();
        let mut dirty = false;
        let mut last_sync = Instant::now();
        loop {
            self.trim_idle_spares();
            // Under `Always`, written data that nobody waits for (a committed-index
            // record) rides along with the next fsync instead of costing one of its own.
            let sync_deadline = match self.policy {
                _ if !dirty => None,
                FsyncPolicy::IntervalMs(ms) => Some(last_sync + Duration::from_millis(ms)),
                FsyncPolicy::Always if unsynced.is_empty() => None,
                FsyncPolicy::Always | FsyncPolicy::Never => Some(Instant::now()),
            };
            let first = if let Some(deadline) = sync_deadline {
                let wait = deadline.saturating_duration_since(Instant::now());
                match self.rx.recv_timeout(wait) {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Timeout) => {
                        self.sync(&mut unsynced);
                        dirty = false;
                        last_sync = Instant::now();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else if let Some(wait) = self.until_spares_trim() {
                match self.rx.recv_timeout(wait) {
                    Ok(job) => job,
                    // The top of the loop trims them.
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match self.rx.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                }
            };
            let mut batch = vec![first];
            let mut batch_bytes = 0;
            while batch_bytes < MAX_BATCH_BYTES {
                match self.rx.try_recv() {
                    Ok(job) => {
                        if let Job::Write { parts, .. } = &job {
                            batch_bytes += parts.iter().map(Bytes::len).sum::<usize>();
                        }
                        batch.push(job);
                    }
                    Err(_) => break,
                }
            }
            dirty |= self.process(batch, &mut unsynced);
            let sync_now = match self.policy {
                FsyncPolicy::Always => !unsynced.is_empty(),
                FsyncPolicy::Never => false,
                FsyncPolicy::IntervalMs(ms) => last_sync.elapsed() >= Duration::from_millis(ms),
            };
            if dirty && (sync_now || self.failed().is_some()) {
                self.sync(&mut unsynced);
                dirty = false;
                last_sync = Instant::now();
            }
            if matches!(self.policy, FsyncPolicy::Never) {
                self.complete(&mut unsynced);
                dirty = false;
            }
        }
        if dirty {
            self.sync(&mut unsynced);
        }
        self.complete(&mut unsynced);
        // A spare in preparation is finished, not abandoned half-written.
        self.collect_prepared_spare(true);
    }

    fn failed(&self) -> Option<String> {
        self.shared.failed.lock().clone()
    }

    fn fail(&self, err: String) {
        tracing::error!(error = %err, "wal writer failed; no further writes accepted");
        let mut f = self.shared.failed.lock();
        if f.is_none() {
            *f = Some(err);
        }
    }

    /// Writes a batch; completions that wait for durability go to `unsynced`. Returns
    /// whether anything was written.
    fn process(&mut self, batch: Vec<Job>, unsynced: &mut Vec<Completion>) -> bool {
        // The jobs' buffers are written as they are, gathered into one vectored write.
        let mut bufs: Vec<Bytes> = Vec::new();
        let mut end_pos = None;
        let mut wrote = false;
        let mut permits = Vec::new();
        for job in batch {
            match job {
                Job::Write {
                    segment,
                    parts,
                    end_pos: job_end,
                    done,
                    permit,
                } => {
                    if segment != self.segment && self.failed().is_none() {
                        wrote |= self.flush(&mut bufs, &mut end_pos);
                        // A failed write may have left a partial frame: never seal it.
                        if self.failed().is_none() {
                            self.cut_after_last_frame();
                        }
                        self.sync(unsynced);
                        if self.failed().is_none() {
                            self.roll(segment);
                        }
                    }
                    bufs.extend(parts);
                    end_pos = Some(job_end);
                    unsynced.extend(done);
                    permits.extend(permit);
                }
                Job::Delete {
                    segments,
                    readers,
                    done,
                } => {
                    wrote |= self.flush(&mut bufs, &mut end_pos);
                    self.sync(unsynced);
                    self.delete(&segments, readers);
                    // Deleting is best effort; the caller only needs its record durable.
                    unsynced.extend(done);
                    self.complete(unsynced);
                }
            }
        }
        wrote |= self.flush(&mut bufs, &mut end_pos);
        drop(permits);
        wrote
    }

    /// Writes `bufs` to the active segment, in order, with as few calls as the kernel
    /// allows.
    fn flush(&mut self, bufs: &mut Vec<Bytes>, end_pos: &mut Option<u64>) -> bool {
        if bufs.is_empty() && end_pos.is_none() {
            return false;
        }
        if self.failed().is_none() {
            let start = Instant::now();
            let written = match &mut self.direct {
                Some(direct) => match direct.write(&self.file, self.segment_end, bufs) {
                    Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                        // The filesystem took the switch to direct I/O but refuses its
                        // writes (it needs more than 4 KiB alignment): write through
                        // the page cache from here on.
                        tracing::warn!(error = %e, "wal: direct I/O writes refused; writing through the page cache");
                        self.direct = None;
                        direct::disable(&self.file)
                            .and_then(|()| self.file.seek(SeekFrom::Start(self.segment_end)))
                            .and_then(|_| write_all_vectored(&mut self.file, bufs))
                    }
                    other => other,
                },
                None => write_all_vectored(&mut self.file, bufs),
            };
            let micros = micros_since(start);
            self.shared.writes.fetch_add(1, Ordering::Relaxed);
            self.shared
                .write_micros_total
                .fetch_add(micros, Ordering::Relaxed);
            if let Err(e) = written {
                let p = segment::path(&self.dir, self.segment);
                self.fail(format!("write {}: {e}", p.display()));
            } else if let Some(pos) = end_pos {
                let len = bufs.iter().map(|b| b.len() as u64).sum::<u64>();
                self.undropped_bytes += len;
                self.segment_end += len;
                self.shared.written_pos.store(*pos, Ordering::Release);
                self.prepare_spare_if_needed();
            }
        }
        bufs.clear();
        *end_pos = None;
        true
    }

    /// Fsyncs the active segment and completes everything waiting for it.
    fn sync(&mut self, unsynced: &mut Vec<Completion>) {
        if self.failed().is_none() {
            let start = Instant::now();
            let upto = (self.segment, self.segment_end);
            if let Err(e) = self.file.sync_data() {
                let p = segment::path(&self.dir, self.segment);
                self.fail(format!("fsync {}: {e}", p.display()));
            } else {
                let micros = micros_since(start);
                self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
                self.shared
                    .fsync_micros_total
                    .fetch_add(micros, Ordering::Relaxed);
                self.shared
                    .fsync_micros_max
                    .fetch_max(micros, Ordering::Relaxed);
                *self.shared.synced.lock() = upto;
                self.drop_synced_pages();
            }
        }
        self.complete(unsynced);
    }

    /// Drops the segment's synced pages from the page cache every few MiB. Reads of
    /// recent entries come from the WAL's own tail cache, and older ones only on recovery
    /// or for a far-behind follower, so cached segment pages would only grow the page
    /// cache by every byte written.
    fn drop_synced_pages(&mut self) {
        if self.undropped_bytes < DROP_PAGES_EVERY || self.direct.is_some() {
            return;
        }
        self.undropped_bytes = 0;
        // Only whole pages below the append point: dropping the partly written last page
        // would make the next append read it back from disk before writing into it.
        let Some(len) = NonZeroU64::new(self.segment_end & !(PAGE_BYTES - 1)) else {
            return;
        };
        // Only advice: a failure changes nothing but the page cache's contents.
        let _ = rustix::fs::fadvise(&self.file, 0, Some(len), rustix::fs::Advice::DontNeed);
    }

    fn complete(&self, waiting: &mut Vec<Completion>) {
        let failed = self.failed();
        for c in waiting.drain(..) {
            c.complete(failed.as_deref().map_or(Ok(()), Err));
        }
    }

    /// Before a segment is sealed: cuts what follows its last frame (a recycled segment's
    /// bytes from its earlier life, the zero padding of a direct write), durably, so that
    /// a sealed segment ends at its last frame.
    fn cut_after_last_frame(&mut self) {
        let end = self.segment_end;
        let Ok(meta) = self.file.metadata() else {
            self.fail(format!("stat segment {}", self.segment));
            return;
        };
        if meta.len() <= end {
            return;
        }
        if let Err(e) = self.file.set_len(end).and_then(|()| self.file.sync_all()) {
            let p = segment::path(&self.dir, self.segment);
            self.fail(format!(
                "cut segment {} after its last frame: {e}",
                p.display()
            ));
        }
    }

    /// Starts preparing a spare in the background once a quarter of the active segment
    /// is written and no spare is left for the next roll, so that it does not start a new
    /// file (the other three quarters take at least 100 ms to write at full ingest).
    fn prepare_spare_if_needed(&mut self) {
        if !self.prepare_spares
            || !self.spares.is_empty()
            || self.preparing.is_some()
            || self.segment_end < self.segment_bytes / 4
        {
            return;
        }
        let dir = self.dir.clone();
        let spare = segment::prepared_spare_path(&dir, self.nonce, self.prepared);
        self.prepared += 1;
        let len = self.segment_bytes;
        let spawned = std::thread::Builder::new()
            .name("chronik-wal-spare".to_string())
            .spawn(move || Ok(segment::prepare_spare(&dir, &spare, len)?.then_some(spare)));
        match spawned {
            Ok(handle) => self.preparing = Some(handle),
            Err(e) => {
                tracing::warn!(error = %e, "wal: could not start preparing a spare");
                self.prepare_spares = false;
            }
        }
    }

    /// Adds the spare prepared in the background to the spares once it is ready (or,
    /// with `wait`, after waiting for it).
    fn collect_prepared_spare(&mut self, wait: bool) {
        let Some(handle) = self.preparing.take_if(|h| wait || h.is_finished()) else {
            return;
        };
        match handle.join() {
            Ok(Ok(Some(spare))) => self.spares.push(spare),
            Ok(Ok(None)) => {
                tracing::info!("wal: no direct I/O here; new segments grow as they are written");
                self.prepare_spares = false;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "wal: could not prepare a spare; not trying again");
                self.prepare_spares = false;
            }
            Err(_) => self.prepare_spares = false,
        }
    }

    /// Switches to segment `next` (the previous one is already fsynced by the caller),
    /// recycling a spare file when there is one.
    fn roll(&mut self, next: u64) {
        self.collect_prepared_spare(false);
        let file = match self.spares.pop() {
            Some(spare) => segment::recycle(&self.dir, &spare, next, self.nonce).or_else(|e| {
                if segment::path(&self.dir, next).exists() {
                    // The rename happened: the segment exists but is not known durable.
                    return Err(e);
                }
                tracing::warn!(error = %e, "wal: could not recycle a spare; creating a new segment");
                let _ = std::fs::remove_file(&spare);
                segment::create(&self.dir, next, self.nonce)
            }),
            None => segment::create(&self.dir, next, self.nonce),
        };
        match file {
            Ok(f) => {
                self.file = f;
                self.segment = next;
                self.segment_end = SEGMENT_HEADER_LEN;
                self.last_roll = Instant::now();
            }
            Err(e) => return self.fail(e.to_string()),
        }
        if let Some(direct) = &mut self.direct {
            let path = segment::path(&self.dir, next);
            match direct::enable(&self.file, &path, SEGMENT_HEADER_LEN) {
                Ok(Some(tail)) => direct.reset(tail),
                Ok(None) => self.direct = None,
                Err(e) => self.fail(format!("switch {} to direct I/O: {e}", path.display())),
            }
        }
    }

    /// How long until [`Writer::trim_idle_spares`] would delete spares, if it ever will
    /// without another roll.
    fn until_spares_trim(&self) -> Option<Duration> {
        (self.spares.len() > MIN_SPARES && self.failed().is_none()).then(|| {
            (self.last_roll + self.spares_idle_ttl).saturating_duration_since(Instant::now())
        })
    }

    /// After a burst, the spares over [`MIN_SPARES`] are disk held for a burst that may
    /// not come again: deleted once no segment has rolled for `spares_idle_ttl`, whatever
    /// else was written meanwhile.
    fn trim_idle_spares(&mut self) {
        self.collect_prepared_spare(false);
        if self.spares.len() <= MIN_SPARES
            || self.last_roll.elapsed() < self.spares_idle_ttl
            || self.failed().is_some()
        {
            return;
        }
        for spare in self.spares.drain(MIN_SPARES..) {
            if let Err(e) = std::fs::remove_file(&spare) {
                tracing::warn!(path = %spare.display(), error = %e, "wal: could not delete a spare");
            }
        }
        if let Err(e) = segment::sync_dir(&self.dir) {
            tracing::warn!(error = %e, "wal: fsync dir after deleting spares");
        }
    }

    /// Deletes dead segments, keeping up to [`MAX_SPARES`] of them as spares.
    fn delete(&mut self, segments: &[u64], readers: Vec<Arc<SegmentReader>>) {
        if self.failed().is_some() {
            return;
        }
        for id in segments {
            let p = segment::path(&self.dir, *id);
            let in_use = readers
                .iter()
                .any(|r| r.segment == *id && Arc::strong_count(r) > 1);
            if self.spares.len() < MAX_SPARES && !in_use {
                let spare = segment::spare_path(&self.dir, *id);
                match std::fs::rename(&p, &spare) {
                    Ok(()) => {
                        self.spares.push(spare);
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(path = %p.display(), error = %e, "wal: could not keep a spare");
                    }
                }
            }
            if let Err(e) = std::fs::remove_file(&p) {
                // Not fatal: a leftover sealed segment only costs space and replay time.
                tracing::warn!(path = %p.display(), error = %e, "wal: could not delete segment");
            }
        }
        if let Err(e) = segment::sync_dir(&self.dir) {
            tracing::warn!(error = %e, "wal: fsync dir after delete");
        }
    }
}
