//! Reopen, torn-tail, corruption, roll, purge and drop tests.

use std::path::{Path, PathBuf};

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{RaftLogReader, Vote};

use super::{entry, log_id};
use crate::wal::{FsyncPolicy, Wal, WalConfig, WalError};

/// Opens a WAL written through the page cache, so that segment files end exactly at
/// their last frame, as these tests' byte surgery expects (direct I/O pads the last
/// block; see `direct_io_segments_reopen_with_every_entry`).
pub(super) fn open(dir: &Path, segment_bytes: u64) -> Wal {
    open_with(dir, segment_bytes, false, false)
}

/// Opens a WAL that fsyncs every batch, with spare preparation and direct I/O as given.
pub(super) fn open_with(
    dir: &Path,
    segment_bytes: u64,
    prepare_spares: bool,
    direct_io: bool,
) -> Wal {
    Wal::open(WalConfig {
        segment_bytes,
        fsync: FsyncPolicy::Always,
        prepare_spares,
        direct_io,
        ..WalConfig::new(dir)
    })
    .expect("open wal")
}

pub(super) fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    v.sort();
    v
}

pub(super) fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).expect("stat").len()
}

/// The (offset, length with header) of each frame of a segment's bytes, walking the
/// length fields from the header on while they fit.
fn frame_spans(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut off = 16;
    while off + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[off..off + 4].try_into().expect("4 bytes")) as usize;
        if len == 0 || off + 8 + len > bytes.len() {
            break;
        }
        spans.push((off, 8 + len));
        off += 8 + len;
    }
    spans
}

/// Whether the frame at `off` is a `synced` frame.
fn is_synced_frame(bytes: &[u8], off: usize) -> bool {
    bytes[off + 8..off + 17] == crate::wal::format::SYNCED_PAYLOAD_PREFIX
}

pub(super) async fn append_range(
    wal: &Wal,
    group: u64,
    term: u64,
    indexes: std::ops::RangeInclusive<u64>,
) {
    let mut s = wal.log_store(group);
    s.blocking_append(indexes.map(|i| entry(group, term, i)))
        .await
        .expect("append");
}

pub(super) async fn indexes(wal: &Wal, group: u64) -> Vec<u64> {
    let mut s = wal.log_store(group);
    let got = s.try_get_log_entries(0..).await.expect("read");
    for e in &got {
        assert_eq!(e, &entry(group, e.log_id.leader_id.term, e.log_id.index));
    }
    got.iter().map(|e| e.log_id.index).collect()
}

#[tokio::test]
async fn reopen_recovers_all_groups() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let wal = open(dir.path(), 64 << 20);
        for i in 1..=10 {
            for g in 0..3 {
                append_range(&wal, g, 1, i..=i).await;
            }
        }
        for g in 0..3 {
            wal.log_store(g)
                .save_vote(&Vote::new_committed(2, g + 1))
                .await
                .expect("vote");
        }
        let mut s0 = wal.log_store(0);
        s0.save_committed(Some(log_id(1, 8)))
            .await
            .expect("committed");
        let mut s1 = wal.log_store(1);
        s1.truncate(log_id(1, 6)).await.expect("truncate");
        append_range(&wal, 1, 2, 6..=7).await;
        let mut s2 = wal.log_store(2);
        s2.purge(log_id(1, 4)).await.expect("purge");
        // A vote after everything else, so committed is not merely the last frame.
        s0.save_vote(&Vote::new_committed(3, 1))
            .await
            .expect("vote");
    }
    let wal = open(dir.path(), 64 << 20);
    assert_eq!(wal.groups(), vec![0, 1, 2]);
    assert_eq!(indexes(&wal, 0).await, (1..=10).collect::<Vec<_>>());
    assert_eq!(indexes(&wal, 1).await, (1..=7).collect::<Vec<_>>());
    assert_eq!(indexes(&wal, 2).await, (5..=10).collect::<Vec<_>>());

    let mut s0 = wal.log_store(0);
    assert_eq!(
        s0.read_vote().await.expect("vote"),
        Some(Vote::new_committed(3, 1))
    );
    assert_eq!(
        s0.read_committed().await.expect("committed"),
        Some(log_id(1, 8))
    );
    let mut s1 = wal.log_store(1);
    assert_eq!(
        s1.read_vote().await.expect("vote"),
        Some(Vote::new_committed(2, 2))
    );
    let st1 = s1.get_log_state().await.expect("state");
    assert_eq!(st1.last_log_id, Some(log_id(2, 7)));
    let mut s2 = wal.log_store(2);
    let st2 = s2.get_log_state().await.expect("state");
    assert_eq!(st2.last_purged_log_id, Some(log_id(1, 4)));
    assert_eq!(st2.last_log_id, Some(log_id(1, 10)));
    assert_eq!(s2.read_entry(4).await.expect("read"), None);
    assert_eq!(s2.read_entry(5).await.expect("read"), Some(entry(2, 1, 5)));
    assert_eq!(s2.last_index(), Some(10));
}

#[tokio::test]
async fn entries_readable_when_append_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(WalConfig {
        segment_bytes: 1 << 20,
        fsync: FsyncPolicy::IntervalMs(50),
        prepare_spares: false,
        direct_io: true,
        ..WalConfig::new(dir.path())
    })
    .expect("open");
    append_range(&wal, 4, 1, 1..=3).await;
    let s = wal.log_store(4);
    assert_eq!(s.read_entry(2).await.expect("read"), Some(entry(4, 1, 2)));
    assert_eq!(s.last_index(), Some(3));
    assert!(
        wal.stats().fsyncs >= 1,
        "interval policy must fsync before completing"
    );
    assert_eq!(wal.stats().appends, 3);
}

/// Writes entries 1..=4 of group 0 in one batch and entry 5 in another, returns (dir
/// guard, last segment path, its length and the length of the last frame). The second
/// batch starts with a `synced` frame: the first was durable when it was placed.
async fn five_entries() -> (tempfile::TempDir, PathBuf, u64, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let wal = open(dir.path(), 64 << 20);
        append_range(&wal, 0, 1, 1..=4).await;
        append_range(&wal, 0, 1, 5..=5).await;
    }
    let seg = segments(dir.path()).pop().expect("a segment");
    let len = file_len(&seg);
    let bytes = std::fs::read(&seg).expect("read");
    let spans = frame_spans(&bytes);
    assert_eq!(spans.len(), 6, "4 entries, a synced frame, an entry");
    assert!(is_synced_frame(&bytes, spans[4].0));
    (dir, seg, len, spans[5].1 as u64)
}

async fn assert_reopens_with(dir: &Path, want: &[u64]) {
    let wal = open(dir, 64 << 20);
    assert_eq!(indexes(&wal, 0).await, want);
    let next = want.last().copied().unwrap_or(0) + 1;
    append_range(&wal, 0, 1, next..=next).await;
    drop(wal);
    let wal = open(dir, 64 << 20);
    let mut all = want.to_vec();
    all.push(next);
    assert_eq!(indexes(&wal, 0).await, all);
}

#[tokio::test]
async fn torn_tail_partial_frame_is_cut() {
    let (dir, seg, len, last) = five_entries().await;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .expect("open");
    f.set_len(len - 3).expect("chop");
    drop(f);
    let wal = open(dir.path(), 64 << 20);
    assert_eq!(file_len(&seg), len - last, "torn frame cut off");
    drop(wal);
    assert_reopens_with(dir.path(), &[1, 2, 3, 4]).await;
}

#[tokio::test]
async fn torn_tail_zero_fill_is_cut() {
    let (dir, seg, len, _) = five_entries().await;
    let mut bytes = std::fs::read(&seg).expect("read");
    bytes.extend_from_slice(&[0u8; 4096]);
    std::fs::write(&seg, &bytes).expect("write");
    drop(open(dir.path(), 64 << 20));
    assert_eq!(file_len(&seg), len);
    assert_reopens_with(dir.path(), &[1, 2, 3, 4, 5]).await;
}

#[tokio::test]
async fn torn_tail_bad_crc_last_frame_is_cut() {
    let (dir, seg, len, last) = five_entries().await;
    let mut bytes = std::fs::read(&seg).expect("read");
    let i = bytes.len() - 1;
    bytes[i] ^= 0xff;
    std::fs::write(&seg, &bytes).expect("write");
    drop(open(dir.path(), 64 << 20));
    assert_eq!(file_len(&seg), len - last);
    assert_reopens_with(dir.path(), &[1, 2, 3, 4]).await;
}

/// Damage to a frame that a later `synced` frame records as durable is not a torn write.
#[tokio::test]
async fn bad_crc_mid_file_fails_open() {
    let (dir, seg, len, _) = five_entries().await;
    let mut bytes = std::fs::read(&seg).expect("read");
    // Inside the first frame's payload (16-byte segment header + 8-byte frame header).
    bytes[16 + 8 + 3] ^= 0x01;
    std::fs::write(&seg, &bytes).expect("write");
    let err = Wal::open(WalConfig::new(dir.path()))
        .err()
        .expect("open must fail");
    match &err {
        WalError::Corrupt {
            segment, offset, ..
        } => {
            assert_eq!(segment, "0000000000000000.wal");
            assert_eq!(*offset, 16);
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(err.to_string().contains("0000000000000000.wal"), "{err}");
    assert!(err.to_string().contains("synced frame"), "{err}");
    assert_eq!(file_len(&seg), len, "nothing was cut");
}

/// Entries 1..=4 in one durable batch, then 5..=8 in one batch; returns the dir guard,
/// the segment, its bytes and the spans of the second batch's entry frames.
async fn two_batches() -> (tempfile::TempDir, PathBuf, Vec<u8>, Vec<(usize, usize)>) {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let wal = open(dir.path(), 64 << 20);
        append_range(&wal, 0, 1, 1..=4).await;
        append_range(&wal, 0, 1, 5..=8).await;
    }
    let seg = segments(dir.path()).pop().expect("a segment");
    let bytes = std::fs::read(&seg).expect("read");
    let spans = frame_spans(&bytes);
    assert_eq!(spans.len(), 9, "4 entries, a synced frame, 4 entries");
    assert!(is_synced_frame(&bytes, spans[4].0));
    (dir, seg, bytes, spans[5..].to_vec())
}

/// A write of many blocks can reach the disk in any order, so a crash may leave a frame
/// of the last batch unwritten (zeros) or half written while frames after it made it.
/// None of them was acknowledged: the log ends at the first bad one.
#[tokio::test]
async fn torn_write_before_intact_frames_is_cut() {
    for zeroed in [true, false] {
        let (dir, seg, mut bytes, batch) = two_batches().await;
        let (off, len) = batch[1];
        if zeroed {
            bytes[off..off + len].fill(0);
        } else {
            bytes[off + len - 1] ^= 0x01;
        }
        std::fs::write(&seg, &bytes).expect("write");
        drop(open(dir.path(), 64 << 20));
        assert_eq!(file_len(&seg), off as u64, "cut at the torn frame");
        assert_reopens_with(dir.path(), &[1, 2, 3, 4, 5]).await;
    }
}

/// `synced` frames name a segment and an offset in it, so they mean the same after
/// segments were deleted and the log was reopened (positions counted from the first
/// segment would not): a torn write is still cut there, and damage is still caught.
#[tokio::test]
async fn synced_frames_after_purged_segments() {
    for torn in [true, false] {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let wal = open(dir.path(), 600);
            for i in 10..=40 {
                append_range(&wal, 0, 1, i..=i).await;
            }
            wal.log_store(0).purge(log_id(1, 30)).await.expect("purge");
            append_range(&wal, 0, 1, 41..=42).await;
            if !torn {
                append_range(&wal, 0, 1, 43..=43).await;
            }
        }
        let seg = segments(dir.path()).pop().expect("a segment");
        assert!(
            !seg.ends_with("0000000000000000.wal"),
            "early segments were deleted"
        );
        let mut bytes = std::fs::read(&seg).expect("read");
        let spans = frame_spans(&bytes);
        let batch = spans
            .iter()
            .rposition(|(off, len)| *len == 48 && !is_synced_frame(&bytes, *off))
            .expect("an entry");
        // Entry 41: the first of the two-entry batch.
        let (off, len) = spans[if torn { batch - 1 } else { batch - 3 }];
        assert!(!is_synced_frame(&bytes, off));
        bytes[off..off + len].fill(0);
        std::fs::write(&seg, &bytes).expect("write");
        let opened = Wal::open(WalConfig::new(dir.path()));
        if torn {
            let wal = opened.expect("a torn write is cut");
            assert_eq!(indexes(&wal, 0).await, (31..=40).collect::<Vec<_>>());
        } else {
            let err = opened.err().expect("damage before a synced frame fails");
            assert!(matches!(err, WalError::Corrupt { .. }), "{err}");
        }
    }
}

/// The same damage in a batch that a later batch's `synced` frame records as durable
/// fails the open and cuts nothing.
#[tokio::test]
async fn damage_before_a_later_synced_frame_fails_open() {
    let (dir, seg, _, _) = two_batches().await;
    {
        // The first batch after opening needs no synced frame (opening made the log
        // durable); the second has one.
        let wal = open(dir.path(), 64 << 20);
        append_range(&wal, 0, 1, 9..=9).await;
        append_range(&wal, 0, 1, 10..=10).await;
    }
    let mut bytes = std::fs::read(&seg).expect("read");
    let spans = frame_spans(&bytes);
    let (off, len) = spans[6];
    bytes[off..off + len].fill(0);
    std::fs::write(&seg, &bytes).expect("write");
    let err = Wal::open(WalConfig::new(dir.path()))
        .err()
        .expect("open must fail");
    assert!(
        matches!(err, WalError::Corrupt { offset, .. } if offset == off as u64),
        "{err}"
    );
    assert_eq!(file_len(&seg), bytes.len() as u64, "nothing was cut");
}

#[tokio::test]
async fn corruption_in_sealed_segment_fails_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let wal = open(dir.path(), 200);
        append_range(&wal, 0, 1, 1..=20).await;
    }
    let segs = segments(dir.path());
    assert!(segs.len() > 2);
    // Chop the end of a sealed segment: that is not a torn tail, it is lost data.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&segs[0])
        .expect("open");
    f.set_len(file_len(&segs[0]) - 2).expect("chop");
    drop(f);
    let err = Wal::open(WalConfig::new(dir.path()))
        .err()
        .expect("open must fail");
    assert!(err.to_string().contains("0000000000000000.wal"), "{err}");
}

#[tokio::test]
async fn segments_roll_and_reads_span_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let wal = open(dir.path(), 300);
        for i in (1..=60).step_by(3) {
            append_range(&wal, 0, 1, i..=i + 2).await;
            append_range(&wal, 9, 1, i..=i + 2).await;
        }
        let stats = wal.stats();
        assert!(stats.segments > 5, "{stats:?}");
        assert_eq!(stats.segments as usize, segments(dir.path()).len());
    }
    let wal = open(dir.path(), 300);
    assert_eq!(indexes(&wal, 0).await, (1..=60).collect::<Vec<_>>());
    assert_eq!(indexes(&wal, 9).await, (1..=60).collect::<Vec<_>>());
    let s = wal.log_store(9);
    for i in [1, 17, 33, 60] {
        assert_eq!(s.read_entry(i).await.expect("read"), Some(entry(9, 1, i)));
    }
}

#[tokio::test]
async fn purge_deletes_dead_segments_and_keeps_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let wal = open(dir.path(), 300);
        let mut s = wal.log_store(3);
        s.save_vote(&Vote::new_committed(4, 2)).await.expect("vote");
        s.save_committed(Some(log_id(1, 40)))
            .await
            .expect("committed");
        append_range(&wal, 3, 1, 1..=50).await;
        let before = wal.stats().segments;
        s.purge(log_id(1, 45)).await.expect("purge");
        let after = wal.stats().segments;
        assert!(after < before, "before {before} after {after}");
        assert_eq!(after as usize, segments(dir.path()).len());
    }
    let wal = open(dir.path(), 300);
    let mut s = wal.log_store(3);
    assert_eq!(
        s.read_vote().await.expect("vote"),
        Some(Vote::new_committed(4, 2))
    );
    assert_eq!(
        s.read_committed().await.expect("committed"),
        Some(log_id(1, 40))
    );
    let st = s.get_log_state().await.expect("state");
    assert_eq!(st.last_purged_log_id, Some(log_id(1, 45)));
    assert_eq!(indexes(&wal, 3).await, (46..=50).collect::<Vec<_>>());
}

#[tokio::test]
async fn dropped_group_is_not_recovered() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let wal = open(dir.path(), 64 << 20);
        append_range(&wal, 5, 1, 1..=3).await;
        append_range(&wal, 6, 1, 1..=3).await;
        wal.log_store(5)
            .save_vote(&Vote::new(1, 1))
            .await
            .expect("vote");
        wal.drop_group(5).await.expect("drop");
        assert_eq!(wal.groups(), vec![6]);
    }
    let wal = open(dir.path(), 64 << 20);
    assert_eq!(wal.groups(), vec![6]);
    let mut s = wal.log_store(5);
    assert_eq!(s.read_vote().await.expect("vote"), None);
    assert_eq!(s.get_log_state().await.expect("state").last_log_id, None);
    assert_eq!(indexes(&wal, 6).await, vec![1, 2, 3]);
}

#[tokio::test]
async fn never_policy_completes_without_fsync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(WalConfig {
        segment_bytes: 1 << 20,
        fsync: FsyncPolicy::Never,
        prepare_spares: false,
        direct_io: true,
        ..WalConfig::new(dir.path())
    })
    .expect("open");
    append_range(&wal, 0, 1, 1..=5).await;
    let stats = wal.stats();
    assert_eq!(stats.fsyncs, 0);
    // The append completed once written, and the write is counted.
    assert!(stats.writes >= 1, "{stats:?}");
    drop(wal);
    let wal = open(dir.path(), 1 << 20);
    assert_eq!(indexes(&wal, 0).await, vec![1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn unawaited_record_rides_with_the_next_fsync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = open(dir.path(), 1 << 20);
    append_range(&wal, 0, 1, 1..=2).await;
    let after_append = wal.stats().fsyncs;
    assert!(after_append >= 1, "an awaited append is fsynced");
    let mut s = wal.log_store(0);
    // Nobody waits for the committed id, so under `Always` it costs no fsync of its own...
    s.save_committed(Some(log_id(1, 2)))
        .await
        .expect("save committed");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(wal.stats().fsyncs, after_append);
    // ...and the next awaited write makes it durable along with itself.
    append_range(&wal, 0, 1, 3..=3).await;
    assert_eq!(wal.stats().fsyncs, after_append + 1);
    drop((s, wal));
    let wal = open(dir.path(), 1 << 20);
    let mut s = wal.log_store(0);
    assert_eq!(s.read_committed().await.expect("read"), Some(log_id(1, 2)));
    assert_eq!(indexes(&wal, 0).await, vec![1, 2, 3]);
}

pub(super) fn spares(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .expect("read dir")
        .filter(|e| {
            let name = e.as_ref().expect("dir entry").file_name();
            name.to_string_lossy().ends_with(".wal.spare")
        })
        .count()
}

pub(super) fn is_recycled(segment: &Path) -> bool {
    std::fs::read(segment).expect("read")[9] & 1 == 1
}

/// A WAL whose dead segments became spares and whose last two segments were recycled from
/// them, holding group 3's entries 36..=`last` after a purge up to 35. The spares were
/// 300-byte segments and are reused as 150-byte ones, so both recycled segments had old
/// bytes after their last frame. Returns the dir guard and `last`.
async fn recycled_tail() -> (tempfile::TempDir, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let wal = open(dir.path(), 300);
        append_range(&wal, 3, 1, 1..=40).await;
        let mut s = wal.log_store(3);
        s.purge(log_id(1, 35)).await.expect("purge");
    }
    assert!(spares(dir.path()) >= 2, "dead segments were kept as spares");
    // Roll into the spares (kept across the reopen), so that one recycled segment is
    // sealed and one is last.
    let wal = open(dir.path(), 150);
    let mut last = 40;
    while spares(dir.path()) > 0 {
        last += 1;
        append_range(&wal, 3, 1, last..=last).await;
    }
    let segs = segments(dir.path());
    let n = segs.len();
    assert!(is_recycled(&segs[n - 1]) && is_recycled(&segs[n - 2]));
    (dir, last)
}

#[tokio::test]
async fn dead_segments_are_recycled_and_their_old_bytes_cut() {
    let (dir, last) = recycled_tail().await;
    let segs = segments(dir.path());
    let tail = segs.last().expect("a segment").clone();
    let before = file_len(&tail);
    // The sealed recycled segment ends at its last frame (opening checks it strictly),
    // and the old bytes after the last one's last frame are cut, not read as frames.
    let wal = open(dir.path(), 300);
    assert!(file_len(&tail) < before, "old bytes were cut");
    assert_eq!(indexes(&wal, 3).await, (36..=last).collect::<Vec<_>>());
    // Writing goes on where the log ended, into more spares as segments die.
    append_range(&wal, 3, 1, last + 1..=last + 20).await;
    wal.log_store(3)
        .purge(log_id(1, last + 10))
        .await
        .expect("purge");
    append_range(&wal, 3, 1, last + 21..=last + 40).await;
    drop(wal);
    let wal = open(dir.path(), 300);
    assert_eq!(
        indexes(&wal, 3).await,
        (last + 11..=last + 40).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn torn_write_in_a_recycled_segment_ends_the_log() {
    let (dir, last) = recycled_tail().await;
    let tail = segments(dir.path()).pop().expect("a segment");
    // A crash mid-write can leave any mix of new and old pages: damage the last frame.
    let mut bytes = std::fs::read(&tail).expect("read");
    let wal = open(dir.path(), 300);
    let end = file_len(&tail) as usize;
    drop(wal);
    bytes[end - 1] ^= 0xff;
    std::fs::write(&tail, &bytes).expect("write");
    let wal = open(dir.path(), 300);
    assert_eq!(indexes(&wal, 3).await, (36..last).collect::<Vec<_>>());
}

#[tokio::test]
async fn version_1_segments_are_still_read() {
    let (dir, seg, _, _) = five_entries().await;
    // Rewrite the segment as version 1 wrote it: no flags, crcs without a salt.
    let mut bytes = std::fs::read(&seg).expect("read");
    let salt = crate::wal::format::check_segment_header(&bytes[..16])
        .expect("v2 header")
        .salt(0);
    bytes[8] = 1;
    bytes[9..16].fill(0);
    let mut off = 16;
    while off + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[off..off + 4].try_into().expect("4 bytes")) as usize;
        crate::wal::format::salt_frame(&mut bytes[off..], salt);
        off += 8 + len;
    }
    std::fs::write(&seg, &bytes).expect("write");
    {
        let wal = open(dir.path(), 64 << 20);
        assert_eq!(indexes(&wal, 0).await, vec![1, 2, 3, 4, 5]);
        // Appends to a version 1 segment stay unsalted, so the segment stays readable.
        append_range(&wal, 0, 1, 6..=7).await;
    }
    assert_reopens_with(dir.path(), &[1, 2, 3, 4, 5, 6, 7]).await;
}

/// Group 3 with entries 10..=60 (two-digit indexes, so every entry frame has one size)
/// in 300-byte segments, purged up to 45 so that dead segments became spares, then
/// appended one entry at a time from 61 until a roll took a spare. The last segment is
/// then a recycled file whose old life had the same layout (checkpoint, then per batch a
/// synced frame and an entry frame of the same size) and more frames: after the new
/// entries, the old ones line up exactly on frame boundaries. Returns the dir guard and
/// the last index written.
async fn aligned_recycled_tail(extra: u64) -> (tempfile::TempDir, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = open(dir.path(), 300);
    let mut s = wal.log_store(3);
    append_range(&wal, 3, 1, 10..=14).await;
    s.purge(log_id(1, 11)).await.expect("purge");
    for i in 15..=60 {
        append_range(&wal, 3, 1, i..=i).await;
    }
    s.purge(log_id(1, 45)).await.expect("purge");
    let kept = spares(dir.path());
    assert!(kept >= 2, "dead segments were kept as spares");
    let mut last = 60;
    while spares(dir.path()) == kept {
        last += 1;
        append_range(&wal, 3, 1, last..=last).await;
    }
    append_range(&wal, 3, 1, last + 1..=last + extra).await;
    assert!(is_recycled(&segments(dir.path()).pop().expect("a segment")));
    (dir, last + extra)
}

#[tokio::test]
async fn old_frames_of_a_recycled_segment_are_not_replayed() {
    let (dir, last) = aligned_recycled_tail(0).await;
    let wal = open(dir.path(), 300);
    assert_eq!(indexes(&wal, 3).await, (46..=last).collect::<Vec<_>>());
}

#[tokio::test]
async fn damage_inside_a_recycled_segment_fails_open() {
    let (dir, _) = aligned_recycled_tail(2).await;
    let tail = segments(dir.path()).pop().expect("a segment");
    let mut bytes = std::fs::read(&tail).expect("read");
    // The new life: header, checkpoint, a synced frame, an entry frame, then a synced
    // frame recording that entry durable and two more entries. Damage the first entry.
    let spans = frame_spans(&bytes);
    assert!(is_synced_frame(&bytes, spans[1].0) && is_synced_frame(&bytes, spans[3].0));
    bytes[spans[2].0 + 8 + 20] ^= 0x01;
    std::fs::write(&tail, &bytes).expect("write");
    let err = Wal::open(WalConfig {
        segment_bytes: 300,
        fsync: FsyncPolicy::Always,
        prepare_spares: false,
        direct_io: true,
        ..WalConfig::new(dir.path())
    })
    .err()
    .expect("open must fail");
    assert!(matches!(err, WalError::Corrupt { .. }), "{err}");
}

/// An entry of group 5 whose payload is `len` bytes derived from its index.
fn sized_entry(index: u64, len: usize) -> crate::types::Entry {
    let bytes: Vec<u8> = (0..len).map(|i| (i as u64 * 31 + index) as u8).collect();
    crate::types::Entry {
        log_id: log_id(1, index),
        payload: openraft::EntryPayload::Normal(crate::types::Command(bytes.into())),
    }
}

async fn assert_sized_entries(wal: &Wal, sizes: &[usize]) {
    let got = wal
        .log_store(5)
        .try_get_log_entries(0..)
        .await
        .expect("read");
    assert_eq!(got.len(), sizes.len());
    for (i, (e, len)) in got.iter().zip(sizes).enumerate() {
        assert_eq!(e, &sized_entry(i as u64 + 1, *len), "entry {}", i + 1);
    }
}

#[tokio::test]
async fn direct_io_segments_reopen_with_every_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let open_direct = || open_with(dir.path(), 256 * 1024, false, true);
    // Entries that end mid-block, on a block boundary's neighbourhood, span several
    // blocks, and one larger than the 2 MiB staging buffer, across several rolls.
    let pattern = [1usize, 4000, 4096, 5000, 100_000, 3 << 20, 10, 70_000];
    let mut sizes = Vec::new();
    for round in 0..3 {
        let wal = open_direct();
        for (i, len) in pattern.iter().enumerate() {
            let index = sizes.len() as u64 + 1;
            let mut s = wal.log_store(5);
            s.blocking_append([sized_entry(index, *len + round + i)])
                .await
                .expect("append");
            sizes.push(*len + round + i);
        }
        assert_sized_entries(&wal, &sizes).await;
        drop(wal);
        let segs = segments(dir.path());
        assert!(segs.len() > round + 1, "segments rolled: {segs:?}");
        // Sealed segments end at their last frame (opening checks that strictly); the
        // last one may end with the zero padding of its last block, cut on open.
        let direct = crate::wal::direct::ALIGN as u64;
        assert_eq!(file_len(segs.last().expect("a segment")) % direct, 0);
    }
    let wal = open_direct();
    assert_sized_entries(&wal, &sizes).await;
    // The same files read the same through the page cache.
    drop(wal);
    let wal = open(dir.path(), 256 * 1024);
    assert_sized_entries(&wal, &sizes).await;
}
