//! [`WalLogStore`]: one group's view of the node WAL, implementing openraft's
//! `RaftLogStorage` and `RaftLogReader`.
//!
//! Reads never block the runtime: entries still in the tail cache are cloned from memory,
//! the rest are read from segment files in `spawn_blocking`. Writes go through the WAL's
//! single queue, so they are serialized with every other group's writes.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, OptionalSend, RaftLogReader, StorageIOError};

use super::error::WalError;
use super::format::{self, Record};
use super::group::EntryLoc;
use super::writer::Completion;
use super::Wal;
use crate::types::{Entry, GroupId, LogId, StorageError, TypeConfig, Vote};

/// The openraft log storage of one Raft group. Cheap to clone.
#[derive(Clone)]
pub struct WalLogStore {
    wal: Wal,
    group: GroupId,
}

/// An entry found in the index: in memory, or to be read from disk.
enum Found {
    Cached(Entry),
    OnDisk(EntryLoc),
}

impl WalLogStore {
    pub(crate) fn new(wal: Wal, group: GroupId) -> Self {
        WalLogStore { wal, group }
    }

    /// The group this store belongs to.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// Reads one entry by Raft log index (None if absent or purged).
    pub async fn read_entry(&self, index: u64) -> Result<Option<Entry>, WalError> {
        let mut got = self.read_range(index, index.saturating_add(1)).await?;
        Ok(got.pop())
    }

    /// Index of the last entry present, if any.
    pub fn last_index(&self) -> Option<u64> {
        let state = self.wal.inner.state.lock();
        state
            .groups
            .get(&self.group)
            .and_then(|g| g.entries.keys().next_back().copied())
    }

    /// Entries with `start <= index < end` that are present, in index order.
    async fn read_range(&self, start: u64, end: u64) -> Result<Vec<Entry>, WalError> {
        if start >= end {
            return Ok(Vec::new());
        }
        let found: Vec<Found> = {
            let state = self.wal.inner.state.lock();
            let Some(g) = state.groups.get(&self.group) else {
                return Ok(Vec::new());
            };
            g.entries
                .range(start..end)
                .map(|(_, slot)| match &slot.cached {
                    Some(e) => Found::Cached(e.clone()),
                    None => Found::OnDisk(slot.loc),
                })
                .collect()
        };
        if found.iter().all(|f| matches!(f, Found::Cached(_))) {
            return Ok(found
                .into_iter()
                .filter_map(|f| match f {
                    Found::Cached(e) => Some(e),
                    Found::OnDisk(_) => None,
                })
                .collect());
        }
        let wal = self.wal.clone();
        let group = self.group;
        tokio::task::spawn_blocking(move || {
            found
                .into_iter()
                .map(|f| match f {
                    Found::Cached(e) => Ok(e),
                    Found::OnDisk(loc) => wal.read_at(group, loc),
                })
                .collect::<Result<Vec<Entry>, WalError>>()
        })
        .await
        .map_err(|e| WalError::ReadTask(e.to_string()))?
    }
}

fn io_err(e: WalError) -> AnyError {
    AnyError::new(&e)
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for WalLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = bounds(&range);
        self.read_range(start, end)
            .await
            .map_err(|e| StorageIOError::read_logs(io_err(e)).into())
    }
}

impl RaftLogStorage<TypeConfig> for WalLogStore {
    type LogReader = WalLogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let state = self.wal.inner.state.lock();
        let (last_purged_log_id, last_log_id) = match state.groups.get(&self.group) {
            Some(g) => (g.purged, g.last_log_id()),
            None => (None, None),
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.wal
            .write_record(self.group, Record::Vote(*vote), true)
            .await
            .map_err(|e| StorageIOError::write_vote(io_err(e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let state = self.wal.inner.state.lock();
        Ok(state.groups.get(&self.group).and_then(|g| g.vote))
    }

    /// Queued behind earlier writes but not awaited: losing the latest committed id in a
    /// crash only means re-applying fewer entries on restart, which openraft handles.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.wal
            .write_record(self.group, Record::Committed(committed), false)
            .await
            .map_err(|e| StorageIOError::write(io_err(e)).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let state = self.wal.inner.state.lock();
        Ok(state.groups.get(&self.group).and_then(|g| g.committed))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut frames = Vec::with_capacity(entries.len());
        let mut bytes = 0;
        for e in &entries {
            let f = format::entry_frame(self.group, e).map_err(|reason| {
                StorageIOError::write_log_entry(
                    e.log_id,
                    io_err(WalError::Encode {
                        group: self.group,
                        reason,
                    }),
                )
            })?;
            bytes += f.len();
            frames.push(f);
        }
        let permit = self
            .wal
            .reserve(bytes)
            .await
            .map_err(|e| StorageIOError::write_logs(io_err(e)))?;
        let mut state = self.wal.inner.state.lock();
        self.wal
            .append_locked(
                &mut state,
                self.group,
                frames,
                entries,
                Completion::Flushed(callback),
                permit,
            )
            .map_err(|e| StorageIOError::write_logs(io_err(e)).into())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.wal
            .write_record(
                self.group,
                Record::Truncate {
                    since: log_id.index,
                },
                true,
            )
            .await
            .map_err(|e| StorageIOError::write_logs(io_err(e)).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.wal
            .write_record(self.group, Record::Purge(log_id), true)
            .await
            .map_err(|e| StorageIOError::write_logs(io_err(e)).into())
    }
}
