//! Tests of the partition state machine (`log.rs`).

use super::super::batch::tests::batch;
use super::*;
use openraft::{CommittedLeaderId, LogId as RaftLogId};

fn log_id(term: u64, index: u64) -> LogId {
    RaftLogId::new(CommittedLeaderId::new(term, 1), index)
}

fn apply(log: &mut PartitionLog, term: u64, index: u64, b: &[u8]) -> AppendResult {
    let id = log_id(term, index);
    log.observe_entry(&id);
    AppendResult::decode(&log.apply(&id, &append_command(Bytes::copy_from_slice(b))))
}

#[test]
fn a_batch_is_its_own_command_unless_its_first_byte_is_not_zero() {
    let plain = Bytes::from(batch(-1, -1, -1, 3, 10));
    let cmd = append_command(plain.clone());
    assert_eq!(cmd.0.as_ptr(), plain.as_ptr(), "shared, not copied");
    // A client-sent baseOffset whose first byte is a command kind: prefixed, and
    // still applied as an append.
    let mut odd = batch(-1, -1, -1, 3, 10);
    odd[0] = CMD_CHUNK_TIERED;
    let cmd = append_command(Bytes::from(odd.clone()));
    assert_eq!(cmd.0[0], CMD_APPEND);
    assert_eq!(&cmd.0[1..], &odd[..]);
    let mut log = PartitionLog::default();
    assert_eq!(apply(&mut log, 1, 1, &odd).base_offset, 0);
    assert_eq!(apply(&mut log, 1, 2, &plain).base_offset, 3);
    // An unknown kind is refused, identically everywhere.
    let id = log_id(1, 3);
    for junk in [&b"\x09junk"[..], &b"\x00junk"[..]] {
        let cmd = Command(Bytes::from_static(junk));
        assert_ne!(
            AppendResult::decode(&log.apply(&id, &cmd)).error,
            code::NONE
        );
    }
    assert_eq!(log.high_watermark(), 6);
}

#[test]
fn offsets_are_assigned_consecutively_at_apply() {
    let mut log = PartitionLog::default();
    assert_eq!(
        apply(&mut log, 1, 1, &batch(-1, -1, -1, 3, 10)).base_offset,
        0
    );
    assert_eq!(
        apply(&mut log, 1, 2, &batch(-1, -1, -1, 2, 20)).base_offset,
        3
    );
    assert_eq!(log.high_watermark(), 5);
    let found = log.batches_from(4, 1);
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].base_offset, found[0].log_index), (3, 2));
    assert_eq!(log.batches_from(0, 1 << 20).len(), 2);
    assert!(log.batches_from(5, 1 << 20).is_empty());
    assert_eq!(log.batch_for_timestamp(15).map(|b| b.base_offset), Some(3));
    assert_eq!(log.batch_for_timestamp(25), None);
}

#[test]
fn duplicate_idempotent_batch_gets_original_offset_and_no_new_offsets() {
    let mut log = PartitionLog::default();
    let b = batch(9, 0, 0, 2, 0);
    assert_eq!(apply(&mut log, 1, 1, &b).base_offset, 0);
    let again = apply(&mut log, 1, 2, &b);
    assert_eq!((again.error, again.base_offset), (code::NONE, 0));
    assert_eq!(log.high_watermark(), 2);
    let gap = apply(&mut log, 1, 3, &batch(9, 0, 5, 1, 0));
    assert_eq!(gap.error, code::OUT_OF_ORDER_SEQUENCE_NUMBER);
}

#[test]
fn producers_expired_commands_forget_idle_producers() {
    let mut log = PartitionLog::default();
    let b = batch(9, 0, 0, 2, 0);
    assert_eq!(apply(&mut log, 1, 1, &b).base_offset, 0);
    let pass = |log: &mut PartitionLog, index, now_ms| {
        let cmd = producers_expired_command(now_ms, 1_000);
        let id = log_id(1, index);
        log.observe_entry(&id);
        AppendResult::decode(&log.apply(&id, &cmd))
    };
    // The first pass starts the clock; the retry is still a duplicate.
    assert_eq!(pass(&mut log, 2, 5_000).base_offset, 0);
    assert_eq!(apply(&mut log, 1, 3, &b).base_offset, 0);
    assert!(!log.producers_to_expire(4_000));
    // Idle for over a second by the proposer's clock: forgotten, in snapshots too.
    assert_eq!(pass(&mut log, 4, 6_001).base_offset, 1);
    let restored = PartitionLog::from_snapshot(&log.to_snapshot().expect("snap")).expect("restore");
    assert_eq!(restored.producers.len(), 0);
    // The same batch now appends again, as Kafka after producer.id.expiration.ms.
    assert_eq!(apply(&mut log, 1, 5, &b).base_offset, 2);
}

#[test]
fn leader_epochs_are_terms_and_answer_offset_for_leader_epoch() {
    let mut log = PartitionLog::default();
    apply(&mut log, 1, 1, &batch(-1, -1, -1, 2, 0));
    apply(&mut log, 3, 2, &batch(-1, -1, -1, 2, 0));
    assert_eq!(log.current_epoch(), 3);
    assert_eq!(log.end_offset_for_epoch(1), (1, 2));
    assert_eq!(log.end_offset_for_epoch(2), (1, 2));
    assert_eq!(log.end_offset_for_epoch(3), (3, 4));
    assert_eq!(log.end_offset_for_epoch(0), (0, 0));
    assert_eq!(log.end_offset_for_epoch(4), (-1, -1));
    assert_eq!(log.end_offset_for_epoch(-1), (-1, -1));
    assert_eq!(
        (log.epoch_at(0), log.epoch_at(2), log.epoch_at(4)),
        (1, 3, 3)
    );
    assert_eq!(log.batches_from(2, 1)[0].leader_epoch, 3);
}

#[test]
fn snapshot_round_trips() {
    let mut log = PartitionLog::default();
    apply(&mut log, 1, 1, &batch(4, 0, 0, 2, 0));
    let restored = PartitionLog::from_snapshot(&log.to_snapshot().expect("snap")).expect("restore");
    assert_eq!(restored.high_watermark(), 2);
    assert_eq!(restored.batches, log.batches);
    assert_eq!(restored.producers.len(), 1);
}

#[test]
fn the_archived_mark_only_moves_forward_from_where_it_is() {
    let mut log = PartitionLog::default();
    apply(&mut log, 1, 1, &batch(4, 0, 0, 10, 0));
    let archived = |log: &mut PartitionLog, index, base, up_to| {
        log.apply(&log_id(1, index), &archived_command(base, up_to));
        log.archived_to()
    };
    assert_eq!(archived(&mut log, 2, 0, 6), 6);
    // A stale leader's file from 0 again, and marks past the log end, are refused.
    assert_eq!(archived(&mut log, 3, 0, 8), 6);
    assert_eq!(archived(&mut log, 4, 6, 11), 6);
    assert_eq!(archived(&mut log, 5, 6, 10), 10);
    let restored = PartitionLog::from_snapshot(&log.to_snapshot().expect("snap")).expect("restore");
    assert_eq!(restored.archived_to(), 10);
}
