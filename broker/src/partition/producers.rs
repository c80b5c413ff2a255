//! Idempotent-producer state of one partition: per producer id, its epoch and the last five
//! batches' sequence ranges, as Kafka keeps them. Checked at apply time so every replica
//! reaches the same verdict.
//!
//! A producer that has not written for `producer_id_expiration_ms` (Kafka's
//! `producer.id.expiration.ms`, one day by default) is forgotten, as Kafka does, so the
//! table (and every snapshot, which carries it) holds the producers of the last day, not
//! every producer that ever wrote. Idleness is measured by the leader's clock, carried in
//! the `ProducersExpired` commands (so every replica agrees), not by the batches'
//! timestamps as in Kafka: a producer that sends old timestamps keeps its state. Like
//! Kafka, a producer the partition does not know is accepted at any sequence: it may be
//! one whose state expired, or whose batches were all deleted.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::batch::BatchHeader;

/// Kafka keeps metadata for this many most recent batches per producer (max.in.flight 5).
const RECENT_BATCHES: usize = 5;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct ProducerEntry {
    epoch: i16,
    /// (first sequence, last sequence, base offset), oldest first.
    recent: VecDeque<(i32, i32, i64)>,
    /// The proposer's clock at the first expiry pass after its last batch (none yet:
    /// it wrote since the last pass, or the state predates expiry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    idle_since_ms: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SequenceCheck {
    /// Append the batch.
    Append,
    /// Already appended at this base offset: answer with it, append nothing.
    Duplicate(i64),
    OutOfOrder,
    StaleEpoch,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProducerTable {
    producers: HashMap<i64, ProducerEntry>,
}

fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

impl ProducerTable {
    pub fn check(&self, h: &BatchHeader) -> SequenceCheck {
        if !h.is_idempotent() {
            return SequenceCheck::Append;
        }
        let Some(p) = self.producers.get(&h.producer_id) else {
            // Unknown here (expired, or its batches deleted): any sequence starts it, as
            // in Kafka since KIP-360.
            return SequenceCheck::Append;
        };
        if h.producer_epoch < p.epoch {
            return SequenceCheck::StaleEpoch;
        }
        if h.producer_epoch > p.epoch {
            return if h.base_sequence == 0 {
                SequenceCheck::Append
            } else {
                SequenceCheck::OutOfOrder
            };
        }
        let last_seq = h.last_sequence();
        if let Some(&(_, _, base)) = p
            .recent
            .iter()
            .find(|(first, last, _)| *first == h.base_sequence && *last == last_seq)
        {
            return SequenceCheck::Duplicate(base);
        }
        match p.recent.back() {
            Some(&(_, last, _)) if next_seq(last) == h.base_sequence => SequenceCheck::Append,
            None if h.base_sequence == 0 => SequenceCheck::Append,
            _ => SequenceCheck::OutOfOrder,
        }
    }

    /// Records an appended batch; call only after [`ProducerTable::check`] said `Append`.
    pub fn record(&mut self, h: &BatchHeader, base_offset: i64) {
        if !h.is_idempotent() {
            return;
        }
        let p = self.producers.entry(h.producer_id).or_default();
        if h.producer_epoch != p.epoch {
            p.epoch = h.producer_epoch;
            p.recent.clear();
        }
        p.recent
            .push_back((h.base_sequence, h.last_sequence(), base_offset));
        while p.recent.len() > RECENT_BATCHES {
            p.recent.pop_front();
        }
        p.idle_since_ms = None;
    }

    /// Whether an expiry pass with this cutoff has work: a producer that wrote since the
    /// last pass (to be stamped), or one idle since before `before_ms`.
    pub fn any_expired(&self, before_ms: i64) -> bool {
        self.producers
            .values()
            .any(|p| p.idle_since_ms.is_none_or(|t| t < before_ms))
    }

    /// An expiry pass at `now_ms`: producers that wrote since the last pass are idle from
    /// now; those idle since before `before_ms` are forgotten. Answers how many.
    pub fn expire(&mut self, before_ms: i64, now_ms: i64) -> usize {
        let was = self.producers.len();
        self.producers
            .retain(|_, p| *p.idle_since_ms.get_or_insert(now_ms) >= before_ms);
        was - self.producers.len()
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::super::batch::tests::batch;
    use super::*;

    fn header(pid: i64, epoch: i16, seq: i32, count: i32) -> BatchHeader {
        BatchHeader::parse(&batch(pid, epoch, seq, count, 0)).expect("header")
    }

    #[test]
    fn in_order_batches_append_and_retries_are_duplicates() {
        let mut t = ProducerTable::default();
        let a = header(1, 0, 0, 3);
        assert_eq!(t.check(&a), SequenceCheck::Append);
        t.record(&a, 100);
        let b = header(1, 0, 3, 2);
        assert_eq!(t.check(&b), SequenceCheck::Append);
        t.record(&b, 103);
        assert_eq!(t.check(&a), SequenceCheck::Duplicate(100));
        assert_eq!(t.check(&b), SequenceCheck::Duplicate(103));
    }

    #[test]
    fn gaps_are_out_of_order_but_unknown_producers_start_anywhere() {
        let mut t = ProducerTable::default();
        assert_eq!(t.check(&header(1, 0, 5, 1)), SequenceCheck::Append);
        let a = header(1, 0, 0, 1);
        t.record(&a, 0);
        assert_eq!(t.check(&header(1, 0, 2, 1)), SequenceCheck::OutOfOrder);
    }

    #[test]
    fn producers_idle_past_the_cutoff_are_forgotten_whatever_their_timestamps() {
        let mut t = ProducerTable::default();
        // Timestamps from long ago do not count: the passes' clock does.
        t.record(&header(1, 0, 0, 1), 0);
        t.record(&header(2, 0, 0, 1), 1);
        assert!(t.any_expired(i64::MIN), "written since the last pass");
        assert_eq!(
            t.expire(0, 1_000),
            0,
            "the first pass only starts the clock"
        );
        assert!(!t.any_expired(1_000));
        // Producer 2 writes again; producer 1 stays idle.
        t.record(&header(2, 0, 1, 1), 2);
        assert_eq!(t.expire(1_000, 2_000), 0);
        assert_eq!(t.expire(1_001, 3_000), 1, "idle since 1000: forgotten");
        assert_eq!(t.len(), 1);
        // Producer 2 goes on where it was; producer 1 starts again at any sequence.
        assert_eq!(t.check(&header(2, 0, 2, 1)), SequenceCheck::Append);
        assert_eq!(t.check(&header(1, 0, 7, 1)), SequenceCheck::Append);
    }

    #[test]
    fn state_from_before_expiry_starts_idle_at_the_first_pass() {
        let mut t: ProducerTable =
            serde_json::from_str(r#"{"producers":{"7":{"epoch":0,"recent":[[0,0,0]]}}}"#)
                .expect("state from before expiry");
        assert!(t.any_expired(0));
        assert_eq!(t.expire(0, 10_000), 0);
        assert!(!t.any_expired(10_000));
        assert_eq!(t.expire(10_001, 20_000), 1);
    }

    #[test]
    fn epochs_fence_old_producers_and_reset_sequences() {
        let mut t = ProducerTable::default();
        t.record(&header(1, 3, 0, 10), 0);
        assert_eq!(t.check(&header(1, 2, 10, 1)), SequenceCheck::StaleEpoch);
        assert_eq!(t.check(&header(1, 4, 0, 1)), SequenceCheck::Append);
        assert_eq!(t.check(&header(1, 4, 7, 1)), SequenceCheck::OutOfOrder);
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut t = ProducerTable::default();
        for i in 0..7 {
            t.record(&header(1, 0, i, 1), i as i64);
        }
        assert_eq!(t.check(&header(1, 0, 6, 1)), SequenceCheck::Duplicate(6));
        assert_eq!(t.check(&header(1, 0, 0, 1)), SequenceCheck::OutOfOrder);
        assert_eq!(t.len(), 1);
    }
}
