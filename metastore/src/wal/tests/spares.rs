//! Spare segments: dead ones kept for recycling, zero-filled ones prepared ahead of a
//! roll, and the extra ones given back once the WAL idles.

use std::path::Path;
use std::time::Duration;

use openraft::storage::RaftLogStorage;

use super::log_id;
use super::recovery::{
    append_range, file_len, indexes, is_recycled, open, open_with, segments, spares,
};
use crate::wal::{Wal, WalConfig};

/// Segments die in bursts (at full ingest, all those written during a snapshot interval),
/// and the next interval's rolls need as many spares: a burst is kept, up to the cap.
#[tokio::test]
async fn a_burst_of_dead_segments_is_kept_for_recycling() {
    use crate::wal::writer::MAX_SPARES;
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = open(dir.path(), 300);
    let mut s = wal.log_store(3);
    append_range(&wal, 3, 1, 10..=99).await;
    let before = segments(dir.path()).len();
    s.purge(log_id(1, 50)).await.expect("purge");
    let (live, kept) = (segments(dir.path()).len(), spares(dir.path()));
    assert!((3..=MAX_SPARES).contains(&kept), "{kept} spares");
    // (The purge record may have rolled into one of them.)
    assert!(live + kept >= before, "every dead segment is a spare");
    // A bigger burst than the cap: the rest is deleted.
    append_range(&wal, 3, 1, 100..=999).await;
    s.purge(log_id(1, 990)).await.expect("purge");
    assert_eq!(spares(dir.path()), MAX_SPARES);
    // The spares are used before any new file is made.
    let files = |d: &Path| std::fs::read_dir(d).expect("read dir").count();
    let total = files(dir.path());
    let mut next = 1000;
    while spares(dir.path()) > 0 {
        append_range(&wal, 3, 1, next..=next).await;
        assert_eq!(
            files(dir.path()),
            total,
            "no new file while spares are left"
        );
        next += 1;
    }
}

/// After a burst, the spares over the minimum are deleted once no segment has rolled for
/// `spares_idle_ttl`, even while small writes keep coming; the ones left are recycled.
#[tokio::test]
async fn spares_over_the_minimum_go_once_no_segment_rolls() {
    use crate::wal::writer::MIN_SPARES;
    let dir = tempfile::tempdir().expect("tempdir");
    let ttl = Duration::from_secs(1);
    let open_small = || {
        Wal::open(WalConfig {
            segment_bytes: 4096,
            prepare_spares: false,
            direct_io: false,
            spares_idle_ttl: ttl,
            ..WalConfig::new(dir.path())
        })
        .expect("open")
    };
    let wal = open_small();
    let mut s = wal.log_store(3);
    let burst = std::time::Instant::now();
    append_range(&wal, 3, 1, 100..=999).await;
    s.purge(log_id(1, 990)).await.expect("purge");
    assert!(spares(dir.path()) > MIN_SPARES, "a burst of spares");
    // A trickle of writes (a few frames, no roll) must not keep them.
    let mut next = 1000;
    while spares(dir.path()) > MIN_SPARES {
        assert!(
            burst.elapsed() < ttl * 10,
            "spares were not trimmed under a trickle of writes"
        );
        append_range(&wal, 3, 1, next..=next).await;
        next += 1;
        tokio::time::sleep(ttl / 5).await;
    }
    // (The last roll was during the burst, so not before `burst`.)
    assert!(burst.elapsed() >= ttl, "trimmed before the ttl");
    assert_eq!(spares(dir.path()), MIN_SPARES);
    drop((s, wal));
    let wal = open_small();
    assert_eq!(indexes(&wal, 3).await, (991..next).collect::<Vec<_>>());
    // The spares left are recycled before any new file is made.
    let files = std::fs::read_dir(dir.path()).expect("read dir").count();
    while spares(dir.path()) > 0 {
        append_range(&wal, 3, 1, next..=next).await;
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("read dir").count(),
            files
        );
        next += 1;
    }
}

#[tokio::test]
async fn a_prepared_spare_is_ready_for_the_next_roll() {
    let dir = tempfile::tempdir().expect("tempdir");
    let open_preparing = || open_with(dir.path(), 64 * 1024, true, true);
    let wal = open_preparing();
    // Past a quarter of the first segment, with no dead segment to recycle, a spare is
    // zero-filled in the background.
    let mut last = 0;
    while file_len(&segments(dir.path())[0]) < 40 * 1024 {
        last += 1;
        append_range(&wal, 3, 1, last..=last + 99).await;
        last += 99;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while spares(dir.path()) == 0 {
        assert!(std::time::Instant::now() < deadline, "no spare prepared");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let spare = std::fs::read_dir(dir.path())
        .expect("read dir")
        .map(|e| e.expect("dir entry").path())
        .find(|p| p.to_string_lossy().ends_with(".wal.spare"))
        .expect("a spare");
    assert!(file_len(&spare) >= 64 * 1024, "filled to a segment's size");
    // The next roll recycles it instead of starting a new file...
    while segments(dir.path()).len() < 2 {
        last += 1;
        append_range(&wal, 3, 1, last..=last).await;
    }
    assert!(is_recycled(&segments(dir.path())[1]));
    assert!(!spare.exists());
    // ...and the zeros after the last frame read as the end of the log, before and after
    // the segment is sealed by the next roll.
    drop(wal);
    let wal = open(dir.path(), 64 * 1024);
    assert_eq!(indexes(&wal, 3).await, (1..=last).collect::<Vec<_>>());
    drop(wal);
    let wal = open_preparing();
    while segments(dir.path()).len() < 3 {
        last += 1;
        append_range(&wal, 3, 1, last..=last + 99).await;
        last += 99;
    }
    drop(wal);
    let wal = open(dir.path(), 64 * 1024);
    assert_eq!(indexes(&wal, 3).await, (1..=last).collect::<Vec<_>>());
}

#[test]
fn an_interrupted_spare_preparation_is_removed_on_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let unfinished = dir.path().join("preparing.wal.spare.tmp");
    std::fs::write(&unfinished, [0u8; 100]).expect("write");
    drop(open(dir.path(), 1 << 20));
    assert!(!unfinished.exists());
}
