//! The WAL's lock-protected state: every group's index, frame placement, the tail cache.
//!
//! Placement (which segment and offset a frame gets) happens here, under the same lock
//! that sends the frames to the writer, so the order of the writer's queue is the order of
//! the positions, and the in-memory index can be updated before the write completes.
//!
//! Invariants: `pos` equals the sum of `segments` lengths; every segment after the first
//! starts with checkpoint frames (each group's vote, purged and committed ids) so that a
//! sealed segment without live entries can be deleted without losing state; an entry stays
//! in the tail cache at least until the writer has written it (`written_pos`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::mem;
use std::sync::mpsc::Sender;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;

use super::error::WalError;
use super::format::{self, Frame, Record, SEGMENT_HEADER_LEN};
use super::group::GroupState;
use super::recovery::Recovered;
use super::writer::{Completion, Job, WriterShared};
use crate::types::GroupId;

/// Bytes of recently appended entries kept in memory for reads without disk I/O: the
/// state machine's apply, which trails the append by a group commit or two, and
/// followers that are a little behind. A follower further behind reads the segment files.
/// These are the producers' own buffers, so the cache's size is broker RSS whenever it
/// outlasts the untiered tail; at 64 MiB, peak RSS with 6 busy partitions was about
/// 190 MB, at 16 MiB about 157 MB, for the same throughput.
pub const TAIL_CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// Where a frame was placed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Placed {
    pub segment: u64,
    pub offset: u64,
    pub pos: u64,
    pub frame_len: u64,
}

/// One entry in the tail cache, oldest first.
#[derive(Debug)]
struct CacheRef {
    group: GroupId,
    index: u64,
    pos: u64,
    end_pos: u64,
}

pub(crate) struct State {
    pub groups: HashMap<GroupId, GroupState>,
    /// Segment id -> placed length (header included).
    pub segments: BTreeMap<u64, u64>,
    pub active: u64,
    /// XORed into the crc of every frame placed in the active segment (see `format`).
    active_salt: u32,
    /// The nonce of the segments this instance creates.
    nonce: u32,
    /// Frames placed in the active segment besides its checkpoint; a segment rolls only
    /// when it holds at least one, so a tiny `segment_bytes` cannot loop.
    pub active_frames: u64,
    /// Global position of the next frame.
    pub pos: u64,
    pub segment_bytes: u64,
    pub appends: u64,
    cache: VecDeque<CacheRef>,
    cache_bytes: u64,
    pub tx: Sender<Job>,
    /// The writer's counters, for the position it has made durable.
    io: Arc<WriterShared>,
    /// The durable (segment, offset) the last `synced` frame placed recorded.
    marked: (u64, u64),
}

impl State {
    /// The state of a log recovered as `rec`, written by a writer fed by `tx`.
    pub fn new(
        rec: Recovered,
        nonce: u32,
        segment_bytes: u64,
        tx: Sender<Job>,
        io: Arc<WriterShared>,
    ) -> Self {
        let Recovered {
            groups,
            segments,
            end_pos: pos,
            last_salt: active_salt,
        } = rec;
        let (active, active_len) = segments
            .iter()
            .next_back()
            .map_or((0, SEGMENT_HEADER_LEN), |(id, len)| (*id, *len));
        State {
            groups,
            segments,
            active,
            active_salt,
            nonce,
            active_frames: u64::from(active_len > SEGMENT_HEADER_LEN),
            pos,
            segment_bytes,
            appends: 0,
            cache: VecDeque::new(),
            cache_bytes: 0,
            tx,
            io,
            // Opening made the whole log durable; the first batch after an fsync of this
            // instance says how far that reaches then.
            marked: (active, active_len),
        }
    }

    /// Places `frames` (each one encoded frame) at the end of the log and queues them for
    /// the writer, rolling to a new segment when the active one is full. `done` fires once
    /// all of them are durable. Returns where each of `frames` went.
    ///
    /// When the writer has made more of the log durable since the last `synced` frame, one
    /// goes in front of the first frame (in the same segment), recording that position:
    /// recovery's evidence that what lies before it is not a torn write.
    pub fn submit(
        &mut self,
        frames: Vec<Frame>,
        done: Option<Completion>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<Vec<Placed>, WalError> {
        let mut placed = Vec::with_capacity(frames.len());
        let mut parts = Vec::with_capacity(frames.len() * 2 + 1);
        let mut synced = self.synced_frame()?;
        for mut frame in frames {
            let len = frame.len() as u64;
            let marker_len = synced.as_ref().map_or(0, |m| m.len() as u64);
            if self.active_frames > 0 && self.active_len() + marker_len + len > self.segment_bytes {
                self.send(mem::take(&mut parts), None, None)?;
                self.roll()?;
            }
            if let Some(mut marker) = synced.take() {
                format::salt_frame(&mut marker, self.active_salt);
                self.advance(marker.len() as u64);
                parts.push(Bytes::from(marker));
            }
            format::salt_frame(&mut frame.head, self.active_salt);
            placed.push(Placed {
                segment: self.active,
                offset: self.active_len(),
                pos: self.pos,
                frame_len: len,
            });
            self.advance(len);
            self.active_frames += 1;
            parts.push(Bytes::from(frame.head));
            if !frame.body.is_empty() {
                parts.push(frame.body);
            }
        }
        self.send(parts, done, permit)?;
        Ok(placed)
    }

    /// A `synced` frame (not yet salted) if the durable position moved since the last one.
    fn synced_frame(&mut self) -> Result<Option<Vec<u8>>, WalError> {
        let synced = *self.io.synced.lock();
        if synced <= self.marked {
            return Ok(None);
        }
        self.marked = synced;
        let (segment, offset) = synced;
        let record = Record::Synced { segment, offset };
        let mut frame = Vec::with_capacity(40);
        format::encode_frame(format::SYNCED_GROUP, &record, &mut frame).map_err(|reason| {
            WalError::Encode {
                group: format::SYNCED_GROUP,
                reason,
            }
        })?;
        Ok(Some(frame))
    }

    fn active_len(&self) -> u64 {
        self.segments
            .get(&self.active)
            .copied()
            .unwrap_or(SEGMENT_HEADER_LEN)
    }

    fn advance(&mut self, len: u64) {
        *self
            .segments
            .entry(self.active)
            .or_insert(SEGMENT_HEADER_LEN) += len;
        self.pos += len;
    }

    fn send(
        &mut self,
        parts: Vec<Bytes>,
        done: Option<Completion>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<(), WalError> {
        if parts.is_empty() && done.is_none() {
            return Ok(());
        }
        self.tx
            .send(Job::Write {
                segment: self.active,
                parts,
                end_pos: self.pos,
                done,
                permit,
            })
            .map_err(|_| WalError::Closed)
    }

    /// Starts the next segment with a checkpoint of every group's non-entry state.
    fn roll(&mut self) -> Result<(), WalError> {
        self.active += 1;
        self.active_salt = format::salt(self.active, self.nonce);
        self.active_frames = 0;
        self.segments.insert(self.active, SEGMENT_HEADER_LEN);
        self.pos += SEGMENT_HEADER_LEN;
        let mut checkpoint = Vec::new();
        for (group, state) in &self.groups {
            for record in state.checkpoint() {
                let start = checkpoint.len();
                format::encode_frame(*group, &record, &mut checkpoint).map_err(|reason| {
                    WalError::Encode {
                        group: *group,
                        reason,
                    }
                })?;
                format::salt_frame(&mut checkpoint[start..], self.active_salt);
            }
        }
        self.advance(checkpoint.len() as u64);
        // Sent even when empty of frames so the writer creates the segment now.
        self.tx
            .send(Job::Write {
                segment: self.active,
                parts: vec![Bytes::from(checkpoint)],
                end_pos: self.pos,
                done: None,
                permit: None,
            })
            .map_err(|_| WalError::Closed)
    }

    /// Remembers that entry `index` of `group` (placed at `placed`) is held in the cache,
    /// then evicts the oldest cached entries the writer has written, down to the bound.
    pub fn cache_added(&mut self, group: GroupId, index: u64, placed: Placed, written_pos: u64) {
        self.cache.push_back(CacheRef {
            group,
            index,
            pos: placed.pos,
            end_pos: placed.pos + placed.frame_len,
        });
        self.cache_bytes += placed.frame_len;
        while self.cache_bytes > TAIL_CACHE_BYTES {
            let Some(front) = self.cache.front() else {
                break;
            };
            if front.end_pos > written_pos {
                break;
            }
            let Some(r) = self.cache.pop_front() else {
                break;
            };
            self.cache_bytes -= r.end_pos - r.pos;
            if let Some(slot) = self
                .groups
                .get_mut(&r.group)
                .and_then(|g| g.entries.get_mut(&r.index))
            {
                if slot.loc.pos == r.pos {
                    slot.cached = None;
                }
            }
        }
    }

    /// Sealed segments that hold no live entry of any group, oldest first. Deleting them
    /// loses nothing: later segments start with checkpoints of the non-entry state.
    pub fn dead_segments(&self) -> Vec<u64> {
        let min_live = self
            .groups
            .values()
            .filter_map(|g| g.entries.values().next().map(|s| s.loc.segment))
            .min()
            .unwrap_or(self.active)
            .min(self.active);
        self.segments.range(..min_live).map(|(id, _)| *id).collect()
    }
}
