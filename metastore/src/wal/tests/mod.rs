//! WAL tests: openraft's storage suite, recovery, torn tails, corruption, rolls, drops,
//! spare segments.

mod recovery;
mod spares;
mod suite;
mod test_sm;

use bytes::Bytes;
use openraft::{CommittedLeaderId, EntryPayload};

use crate::types::{Command, Entry, LogId};

pub(super) fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

/// A normal entry whose command says which group and index it belongs to.
pub(super) fn entry(group: u64, term: u64, index: u64) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Command(Bytes::from(format!("g{group}-i{index}")))),
    }
}
