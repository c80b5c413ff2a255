//! In-memory state of one Raft group's log: the entry index, vote, committed and purged ids.
//!
//! The same transitions run during recovery (frames replayed from disk) and on the live path
//! (records just queued for the writer), so what the log store shows and what a restart
//! rebuilds cannot drift apart.
//!
//! Invariants: entry indexes are consecutive (openraft never leaves holes, and `insert`
//! drops everything at or after the new index first), and every entry is above `purged`.

use std::collections::BTreeMap;

use super::format::Record;
use crate::types::{Entry, LogId, Vote};

/// Where an entry's frame lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntryLoc {
    pub segment: u64,
    /// Byte offset of the frame (its header) in the segment file.
    pub offset: u64,
    /// Frame length including its 8-byte header.
    pub frame_len: u64,
    /// Global write position of the frame; identifies one append across truncations.
    pub pos: u64,
    pub log_id: LogId,
}

/// One entry of the index; `cached` is the tail-cache copy, if still held.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub loc: EntryLoc,
    pub cached: Option<Entry>,
}

/// The log state of one group.
#[derive(Debug, Default)]
pub(crate) struct GroupState {
    pub entries: BTreeMap<u64, Slot>,
    pub vote: Option<Vote>,
    pub committed: Option<LogId>,
    pub purged: Option<LogId>,
}

impl GroupState {
    /// Applies a non-entry record. Entries go through [`GroupState::insert`] because they
    /// carry a location. `DropGroup` is handled by the owner of the group map.
    pub fn apply(&mut self, record: &Record) {
        match record {
            Record::Vote(v) => self.vote = Some(*v),
            Record::Committed(c) => self.committed = *c,
            Record::Truncate { since } => self.truncate(*since),
            Record::Purge(id) => self.purge(*id),
            Record::Entry(_) | Record::DropGroup | Record::Synced { .. } => {}
        }
    }

    /// Adds an entry, replacing any entry at or after its index.
    pub fn insert(&mut self, slot: Slot) {
        let index = slot.loc.log_id.index;
        self.truncate(index);
        self.entries.insert(index, slot);
    }

    /// Removes entries with index >= `since`.
    pub fn truncate(&mut self, since: u64) {
        drop(self.entries.split_off(&since));
    }

    /// Removes entries with index <= `upto.index` and remembers `upto` as purged.
    pub fn purge(&mut self, upto: LogId) {
        if self.purged.is_some_and(|p| p.index >= upto.index) {
            return;
        }
        self.purged = Some(upto);
        self.entries = self.entries.split_off(&(upto.index + 1));
    }

    /// The id of the last entry, or the purged id when no entry is left.
    pub fn last_log_id(&self) -> Option<LogId> {
        self.entries
            .values()
            .next_back()
            .map(|s| s.loc.log_id)
            .or(self.purged)
    }

    /// Whether anything about this group would be recovered.
    pub fn has_state(&self) -> bool {
        !self.entries.is_empty()
            || self.vote.is_some()
            || self.committed.is_some()
            || self.purged.is_some()
    }

    /// Records that describe this group's non-entry state, written at the start of each new
    /// segment so older segments can be deleted once they hold no live entries.
    pub fn checkpoint(&self) -> Vec<Record> {
        let mut out = Vec::new();
        if let Some(v) = self.vote {
            out.push(Record::Vote(v));
        }
        if let Some(p) = self.purged {
            out.push(Record::Purge(p));
        }
        if self.committed.is_some() {
            out.push(Record::Committed(self.committed));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn slot(index: u64) -> Slot {
        Slot {
            loc: EntryLoc {
                segment: 0,
                offset: 0,
                frame_len: 0,
                pos: index,
                log_id: LogId::new(CommittedLeaderId::new(1, 0), index),
            },
            cached: None,
        }
    }

    #[test]
    fn insert_truncate_purge() {
        let mut g = GroupState::default();
        for i in 1..=5 {
            g.insert(slot(i));
        }
        g.insert(slot(3));
        assert_eq!(g.entries.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
        g.apply(&Record::Truncate { since: 3 });
        assert_eq!(g.last_log_id().map(|l| l.index), Some(2));
        g.apply(&Record::Purge(LogId::new(CommittedLeaderId::new(1, 0), 10)));
        assert!(g.entries.is_empty());
        assert_eq!(g.last_log_id().map(|l| l.index), Some(10));
        // An older purge never moves the purged id back.
        g.purge(LogId::new(CommittedLeaderId::new(1, 0), 4));
        assert_eq!(g.purged.map(|l| l.index), Some(10));
    }
}
