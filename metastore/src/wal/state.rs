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

use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;

use super::error::WalError;
use super::format::{self, Frame, SEGMENT_HEADER_LEN};
use super::group::GroupState;
use super::writer::{Completion, Job};
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
}

impl State {
    pub fn new(
        groups: HashMap<GroupId, GroupState>,
        segments: BTreeMap<u64, u64>,
        pos: u64,
        active_salt: u32,
        nonce: u32,
        segment_bytes: u64,
        tx: Sender<Job>,
    ) -> Self {
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
        }
    }

    /// Places `frames` (each one encoded frame) at the end of the log and queues them for
    /// the writer, rolling to a new segment when the active one is full. `done` fires once
    /// all of them are durable.
    pub fn submit(
        &mut self,
        frames: Vec<Frame>,
        done: Option<Completion>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<Vec<Placed>, WalError> {
        let mut placed = Vec::with_capacity(frames.len());
        let mut parts = Vec::with_capacity(frames.len() * 2);
        for mut frame in frames {
            let len = frame.len() as u64;
            if self.active_frames > 0 && self.active_len() + len > self.segment_bytes {
                self.send(mem::take(&mut parts), None, None)?;
                self.roll()?;
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
