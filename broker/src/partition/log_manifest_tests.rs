//! DeleteRecords, compaction swaps and GC bookkeeping on the partition state machine.

use super::super::batch::tests::batch;
use super::*;
use openraft::{CommittedLeaderId, LogId as RaftLogId};

fn run(log: &mut PartitionLog, index: u64, cmd: Command) -> AppendResult {
    let id = RaftLogId::new(CommittedLeaderId::new(1, 1), index);
    log.observe_entry(&id);
    AppendResult::decode(&log.apply(&id, &cmd))
}

pub(crate) fn chunk(base: i64, last: i64, ts: i64, size: u64) -> ChunkRef {
    ChunkRef {
        key: format!("c-{base}-{last}"),
        base_offset: base,
        last_offset: last,
        max_timestamp: ts,
        size,
    }
}

/// Ten batches of 2 records (offsets 0..20, timestamps 0, 10, …, 90); the first six
/// batches tiered as three chunks of two batches each.
fn log_with_chunks() -> PartitionLog {
    let mut log = PartitionLog::default();
    for i in 0..10u64 {
        let r = run(
            &mut log,
            i + 1,
            append_command(batch(-1, -1, -1, 2, i as i64 * 10).into()),
        );
        assert_eq!(r.error, code::NONE);
    }
    for (n, c) in [
        chunk(0, 3, 10, 100),
        chunk(4, 7, 30, 100),
        chunk(8, 11, 50, 100),
    ]
    .into_iter()
    .enumerate()
    {
        let r = run(&mut log, 20 + n as u64, chunk_tiered_command(&c));
        assert_eq!(r.error, code::NONE);
    }
    assert_eq!(log.tail().len(), 4);
    log
}

#[test]
fn delete_records_moves_log_start_and_queues_whole_chunks_for_gc() {
    let mut log = log_with_chunks();
    let r = run(&mut log, 30, delete_records_command(5, 1_000));
    assert_eq!((r.error, r.base_offset), (code::NONE, 5));
    assert_eq!(log.log_start_offset(), 5);
    // Chunk 0..=3 is wholly below; 4..=7 holds the new start and stays.
    assert_eq!(log.chunks().len(), 2);
    assert_eq!(log.deleted().len(), 1);
    assert_eq!(log.deleted()[0].chunk.key, "c-0-3");
    assert_eq!(log.deleted()[0].since_ms, 1_000);
    assert!(log.chunk_for(4).is_some());

    // Never backwards: an older offset answers the current start.
    let r = run(&mut log, 31, delete_records_command(2, 2_000));
    assert_eq!((r.error, r.base_offset), (code::NONE, 5));

    // Into the tail: tail batches wholly below are dropped.
    let r = run(&mut log, 32, delete_records_command(15, 3_000));
    assert_eq!((r.error, r.base_offset), (code::NONE, 15));
    assert!(log.chunks().is_empty());
    assert_eq!(log.deleted().len(), 3);
    assert_eq!(log.tail().first().map(|b| b.base_offset), Some(14));

    // -1 means the high watermark; beyond it is out of range.
    let r = run(&mut log, 33, delete_records_command(21, 4_000));
    assert_eq!(r.error, code::OFFSET_OUT_OF_RANGE);
    let r = run(&mut log, 34, delete_records_command(-5, 4_000));
    assert_eq!(r.error, code::OFFSET_OUT_OF_RANGE);
    let r = run(&mut log, 35, delete_records_command(-1, 4_000));
    assert_eq!((r.error, r.base_offset), (code::NONE, 20));
    assert!(log.tail().is_empty());
    assert_eq!(log.high_watermark(), 20);
    // Appends continue at the log end.
    let r = run(&mut log, 36, append_command(batch(-1, -1, -1, 1, 0).into()));
    assert_eq!((r.error, r.base_offset, r.log_start_offset), (0, 20, 20));
}

#[test]
fn a_chunk_that_lost_its_tail_to_delete_records_is_refused() {
    let mut log = log_with_chunks();
    run(&mut log, 30, delete_records_command(16, 0));
    // The tiering loop built 12..=15 before the delete: no longer a prefix of the tail.
    let r = run(&mut log, 31, chunk_tiered_command(&chunk(12, 15, 70, 10)));
    assert_eq!(r.error, code::INVALID_REQUEST);
}

#[test]
fn compaction_swaps_an_exact_run_only() {
    let mut log = log_with_chunks();
    let merged = chunk(0, 7, 30, 150);
    let keys = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    // Not adjacent, wrong order, wrong range, or a single entry: refused, nothing changes.
    for (replaces, with) in [
        (keys(&["c-0-3", "c-8-11"]), chunk(0, 11, 50, 1)),
        (keys(&["c-4-7", "c-0-3"]), merged.clone()),
        (keys(&["c-0-3", "c-4-7"]), chunk(0, 8, 30, 1)),
        (keys(&["c-0-3"]), chunk(0, 3, 10, 1)),
        (keys(&["nope", "c-4-7"]), merged.clone()),
    ] {
        let r = run(&mut log, 40, compacted_command(replaces, with, 0));
        assert_eq!(r.error, code::INVALID_REQUEST);
        assert_eq!(log.chunks().len(), 3);
        assert!(log.deleted().is_empty());
    }

    let r = run(
        &mut log,
        41,
        compacted_command(keys(&["c-0-3", "c-4-7"]), merged.clone(), 7),
    );
    assert_eq!(r.error, code::NONE);
    assert_eq!(log.chunks()[0], merged);
    assert_eq!(log.chunks().len(), 2);
    assert_eq!(log.chunk_for(5), Some(&merged));
    let gone: Vec<&str> = log.deleted().iter().map(|d| d.chunk.key.as_str()).collect();
    assert_eq!(gone, vec!["c-0-3", "c-4-7"]);
    // The same proposal again (a retry) is refused.
    let r = run(
        &mut log,
        42,
        compacted_command(keys(&["c-0-3", "c-4-7"]), merged, 7),
    );
    assert_eq!(r.error, code::INVALID_REQUEST);

    // GC forgets what it deleted; unknown keys are ignored.
    run(
        &mut log,
        43,
        objects_deleted_command(keys(&["c-0-3", "other"])),
    );
    assert_eq!(log.deleted().len(), 1);
}

#[test]
fn snapshot_carries_log_start_and_the_gc_list() {
    let mut log = log_with_chunks();
    run(&mut log, 30, delete_records_command(9, 5));
    let restored = PartitionLog::from_snapshot(&log.to_snapshot().expect("snap")).expect("restore");
    assert_eq!(restored.log_start_offset(), 9);
    assert_eq!(restored.deleted(), log.deleted());
    assert_eq!(restored.chunks(), log.chunks());
}

#[test]
fn the_untiered_tail_is_cut_into_chunks_below_the_end() {
    let log = log_with_chunks();
    // Four tail batches (offsets 12..20) of equal size.
    let size = log.tail()[0].bytes as usize;
    let all = log.untiered_chunks(2 * size, i64::MAX);
    let bases: Vec<Vec<i64>> = all
        .iter()
        .map(|c| c.iter().map(|b| b.base_offset).collect())
        .collect();
    assert_eq!(bases, vec![vec![12, 14], vec![16, 18]]);
    // A chunk limit below one batch still makes progress: one batch per chunk.
    assert_eq!(log.untiered_chunks(1, i64::MAX).len(), 4);
    // Nothing at or past `end` is included.
    let below: usize = log
        .untiered_chunks(usize::MAX, 16)
        .iter()
        .map(Vec::len)
        .sum();
    assert_eq!(below, 2);
}

/// `log_with_chunks` with its first two entries (offsets 0..=7) sealed into a page.
fn log_with_page() -> (PartitionLog, PageRef, Vec<ChunkRef>) {
    let mut log = log_with_chunks();
    let entries = log.chunks()[..2].to_vec();
    let page = PageRef::new("page-0-7".into(), &entries, 77).expect("entries");
    let r = run(
        &mut log,
        40,
        page_sealed_command(&page, "c-0-3".into(), "c-4-7".into()),
    );
    assert_eq!((r.error, r.base_offset), (code::NONE, 0));
    (log, page, entries)
}

#[test]
fn sealing_swaps_the_oldest_entries_for_a_page_and_reads_find_it() {
    let (mut log, page, _) = log_with_page();
    assert_eq!(log.pages(), std::slice::from_ref(&page));
    assert_eq!(log.chunks(), [chunk(8, 11, 50, 100)]);
    assert_eq!((page.max_timestamp, page.bytes, page.entries), (30, 200, 2));
    assert!(matches!(log.plan_read(5, 1), ReadPlan::Page(p) if p == page));
    assert!(matches!(log.plan_read(8, 1), ReadPlan::Chunk(c) if c.key == "c-8-11"));
    assert!(log.references("page-0-7") && log.references("c-8-11"));
    assert!(!log.references("c-0-3"));

    // The same proposal again, keys that are not the oldest entries, or a page that
    // would leave nothing open: refused, and nothing changes.
    let again = page_sealed_command(&page, "c-0-3".into(), "c-4-7".into());
    assert_eq!(run(&mut log, 41, again).error, code::INVALID_REQUEST);
    let last = PageRef::new("page-8-11".into(), &[chunk(8, 11, 50, 100)], 1).expect("entry");
    let all = page_sealed_command(&last, "c-8-11".into(), "c-8-11".into());
    assert_eq!(run(&mut log, 42, all).error, code::INVALID_REQUEST);
    assert_eq!((log.pages().len(), log.chunks().len()), (1, 1));

    // Snapshots carry the page reference, not its entries.
    let restored = PartitionLog::from_snapshot(&log.to_snapshot().expect("snap")).expect("restore");
    assert_eq!(restored.pages(), log.pages());
    assert_eq!(restored.chunks(), log.chunks());
}

#[test]
fn lookups_by_time_open_a_page_only_when_the_answer_is_inside_it() {
    let (mut log, page, entries) = log_with_page();
    // Timestamp 20: the page's newest is 30, so the answer is inside it.
    assert!(matches!(log.find_timestamp(20, &[]), Some(ReadPlan::Page(p)) if p == page));
    let open = [(&page, entries.as_slice())];
    assert!(matches!(log.find_timestamp(20, &open), Some(ReadPlan::Chunk(c)) if c.key == "c-4-7"));
    assert!(matches!(log.find_timestamp(40, &[]), Some(ReadPlan::Chunk(c)) if c.key == "c-8-11"));

    // Once the log start is inside the page, the page straddles it: its summary counts
    // the expired entry, so lookups and retention look at its entries.
    run(&mut log, 50, delete_records_command(5, 1_000));
    assert_eq!(log.straddling_page(), Some(&page));
    assert_eq!(
        log.pages().len(),
        1,
        "a page leaves only when all of it is below"
    );
    let keys = |open| {
        log.units(open)
            .map(|u| match u {
                Unit::Page(p) => p.key.clone(),
                Unit::Chunk(c) => c.key.clone(),
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(&[]), ["page-0-7", "c-8-11"]);
    assert_eq!(keys(&open), ["c-4-7", "c-8-11"]);
}

#[test]
fn a_page_wholly_below_the_log_start_goes_to_gc_as_a_page() {
    let (mut log, _, _) = log_with_page();
    run(&mut log, 50, delete_records_command(9, 2_000));
    assert!(log.pages().is_empty());
    assert_eq!(log.straddling_page(), None);
    let d = &log.deleted()[0];
    assert_eq!(
        (d.chunk.key.as_str(), d.page, d.since_ms),
        ("page-0-7", true, 2_000)
    );
    assert_eq!(d.chunk.size, 77);
    // Chunk 8..=11 holds the new start and stays.
    assert_eq!(log.chunks().len(), 1);
}
