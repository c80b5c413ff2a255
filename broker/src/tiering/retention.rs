//! Retention policy: which prefix of a partition has expired under its topic's
//! `retention.ms` / `retention.bytes`. A pure function of the partition state, the topic
//! configs and the clock; the tiering loop proposes the answer as a DeleteRecords command.
//!
//! Like Kafka, which deletes whole segments (its active one included), only whole units are
//! expired: manifest entries (chunks and segments) and untiered tail batches, oldest first,
//! stopping at the first one that must stay. A unit expires by time when its largest timestamp is older than
//! `now - retention.ms`; by size while the rest of the log stays at least
//! `retention.bytes` (tiered units count their object size, tail batches their batch size).
//! -1 disables either limit.

use std::collections::BTreeMap;

use crate::partition::log::{OpenPages, PageRef, PartitionLog};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// -1: keep forever.
    pub retention_ms: i64,
    /// -1: no size limit.
    pub retention_bytes: i64,
}

/// Kafka's defaults (see topic_config.rs): seven days, no size limit.
const DEFAULT_RETENTION_MS: i64 = 604_800_000;

impl RetentionPolicy {
    /// The effective policy of a topic from its config overrides.
    pub fn from_configs(configs: &BTreeMap<String, String>) -> RetentionPolicy {
        let get = |k: &str, default: i64| {
            configs
                .get(k)
                .and_then(|v| v.trim().parse::<i64>().ok())
                .unwrap_or(default)
        };
        RetentionPolicy {
            retention_ms: get("retention.ms", DEFAULT_RETENTION_MS),
            retention_bytes: get("retention.bytes", -1),
        }
    }
}

/// Whether retention's next cut may fall inside `page`, the first live page, so that it
/// must be opened to cut entry by entry (as a whole unit it would stay until all of it
/// expired). Retention walks oldest first and stops at the first unit that stays, so a cut
/// inside the page needs an entry of it old enough, or the partition over its size limit.
pub fn may_cut_inside(
    log: &PartitionLog,
    page: &PageRef,
    policy: &RetentionPolicy,
    now_ms: i64,
) -> bool {
    let by_time =
        policy.retention_ms >= 0 && page.min_timestamp < now_ms.saturating_sub(policy.retention_ms);
    let by_size = policy.retention_bytes >= 0 && {
        let tail: u64 = log.tail().iter().map(|b| b.bytes as u64).sum();
        let total: u64 = log.units(&[]).map(|u| u.bytes()).sum::<u64>() + tail;
        total > policy.retention_bytes as u64
    };
    by_time || by_size
}

/// One deletable unit: (last offset, largest timestamp, bytes).
type Unit = (i64, i64, u64);

/// The offset before which data has expired, if that is past the current log start.
///
/// A sealed manifest page counts as one unit (its newest timestamp, the bytes it names),
/// except the `open` ones (pass the page straddling the log start, see
/// [`PartitionLog::straddling_page`]), which count entry by entry.
pub fn retention_cutoff(
    log: &PartitionLog,
    policy: &RetentionPolicy,
    now_ms: i64,
    open: OpenPages<'_>,
) -> Option<i64> {
    let start = log.log_start_offset();
    let mut units: Vec<Unit> = log
        .units(open)
        .map(|u| (u.last_offset(), u.max_timestamp(), u.bytes()))
        .collect();
    // As in Kafka, which rolls its active segment so that it can delete it, the newest
    // data expires too: the newest chunk and the untiered tail are units like the others.
    units.extend(
        log.tail()
            .iter()
            .map(|b| (b.last_offset, b.max_timestamp, b.bytes as u64))
            .filter(|(last, _, _)| *last >= start),
    );
    let mut cutoff = start;
    if policy.retention_ms >= 0 {
        let oldest_kept = now_ms.saturating_sub(policy.retention_ms);
        for (last, max_ts, _) in &units {
            // A unit without timestamps (-1) cannot be aged: it stays, as Kafka keeps such
            // a segment until its file's modification time is old enough.
            if *max_ts >= oldest_kept || *max_ts < 0 {
                break;
            }
            cutoff = cutoff.max(last + 1);
        }
    }
    if policy.retention_bytes >= 0 {
        let total: u64 = units.iter().map(|u| u.2).sum();
        let mut over = total as i64 - policy.retention_bytes;
        for (last, _, size) in &units {
            if over - (*size as i64) < 0 {
                break;
            }
            over -= *size as i64;
            cutoff = cutoff.max(last + 1);
        }
    }
    (cutoff > start).then_some(cutoff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::log::{
        append_command, chunk_tiered_command, delete_records_command, AppendResult, ChunkRef,
    };
    use chronik_metastore::state_machine::ApplyState;
    use chronik_metastore::types::Command;
    use openraft::{CommittedLeaderId, LogId};

    fn run(log: &mut PartitionLog, index: u64, cmd: Command) -> AppendResult {
        let id = LogId::new(CommittedLeaderId::new(1, 1), index);
        log.observe_entry(&id);
        AppendResult::decode(&log.apply(&id, &cmd))
    }

    /// Offsets 0..10 in five batches of two with timestamps 100, 200, …, 500; the first
    /// four batches tiered as two chunks of 1000 bytes each (timestamps 200 and 400).
    fn log() -> PartitionLog {
        let mut log = PartitionLog::default();
        for i in 0..5u64 {
            let b = crate::partition::batch::tests::batch(-1, -1, -1, 2, (i as i64 + 1) * 100);
            run(&mut log, i + 1, append_command(b.into()));
        }
        for (n, (base, last, ts)) in [(0, 3, 200), (4, 7, 400)].into_iter().enumerate() {
            let c = ChunkRef {
                key: format!("k{n}"),
                base_offset: base,
                last_offset: last,
                max_timestamp: ts,
                size: 1000,
            };
            assert_eq!(
                run(&mut log, 10 + n as u64, chunk_tiered_command(&c)).error,
                0
            );
        }
        log
    }

    fn policy(ms: i64, bytes: i64) -> RetentionPolicy {
        RetentionPolicy {
            retention_ms: ms,
            retention_bytes: bytes,
        }
    }

    #[test]
    fn time_retention_expires_whole_units_oldest_first() {
        let log = log();
        assert_eq!(retention_cutoff(&log, &policy(-1, -1), 10_000, &[]), None);
        // Nothing older than now - ms.
        assert_eq!(retention_cutoff(&log, &policy(1_000, -1), 1_000, &[]), None);
        // The first chunk (max ts 200) is older than 250; the second (400) is not.
        assert_eq!(retention_cutoff(&log, &policy(50, -1), 300, &[]), Some(4));
        // The second chunk expired too; the tail batch (500) has not.
        assert_eq!(retention_cutoff(&log, &policy(50, -1), 451, &[]), Some(8));
        // As Kafka deletes an expired active segment, everything expired goes, the newest
        // chunk and the tail included: the log is then empty at its end offset.
        assert_eq!(
            retention_cutoff(&log, &policy(0, -1), 10_000, &[]),
            Some(10)
        );
    }

    #[test]
    fn a_batch_without_timestamps_does_not_expire_by_time() {
        let mut log = PartitionLog::default();
        let b = crate::partition::batch::tests::batch(-1, -1, -1, 2, -1);
        run(&mut log, 1, append_command(b.into()));
        assert_eq!(retention_cutoff(&log, &policy(0, -1), 10_000, &[]), None);
    }

    #[test]
    fn size_retention_keeps_at_least_the_limit() {
        let log = log();
        let tail = log.tail()[0].bytes as i64;
        // Total = 2000 + tail. Dropping the first chunk leaves 1000 + tail >= limit.
        assert_eq!(
            retention_cutoff(&log, &policy(-1, 1000 + tail), 0, &[]),
            Some(4)
        );
        assert_eq!(
            retention_cutoff(&log, &policy(-1, 1001 + tail), 0, &[]),
            None
        );
        // At least the limit stays: with the tail's size as the limit, only the tail.
        assert_eq!(retention_cutoff(&log, &policy(-1, tail), 0, &[]), Some(8));
        // A limit of 0 keeps nothing, as in Kafka.
        assert_eq!(retention_cutoff(&log, &policy(-1, 0), 0, &[]), Some(10));
        assert_eq!(retention_cutoff(&log, &policy(-1, 1 << 40), 0, &[]), None);
    }

    #[test]
    fn cutoff_is_relative_to_the_current_log_start() {
        let mut log = log();
        run(&mut log, 20, delete_records_command(4, 0));
        assert_eq!(retention_cutoff(&log, &policy(50, -1), 300, &[]), None);
        // The newest chunk (400) has expired by 451; the tail (500) has not.
        assert_eq!(retention_cutoff(&log, &policy(50, -1), 451, &[]), Some(8));
    }

    #[test]
    fn policy_reads_topic_configs_with_kafka_defaults() {
        let none = BTreeMap::new();
        assert_eq!(
            RetentionPolicy::from_configs(&none),
            policy(604_800_000, -1)
        );
        let set: BTreeMap<String, String> = [
            ("retention.ms".to_string(), "-1".to_string()),
            ("retention.bytes".to_string(), "4096".to_string()),
        ]
        .into();
        assert_eq!(RetentionPolicy::from_configs(&set), policy(-1, 4096));
    }

    #[test]
    fn the_first_page_is_opened_when_the_cut_falls_inside_it() {
        use crate::partition::log::{page_sealed_command, PageRef};
        let mut log = log();
        // The tail batch (offsets 8..=9, timestamp 500) tiered too, then k0 and k1 sealed
        // into one page: newest timestamp 400, oldest entry 200.
        let k2 = ChunkRef {
            key: "k2".into(),
            base_offset: 8,
            last_offset: 9,
            max_timestamp: 500,
            size: 1000,
        };
        assert_eq!(run(&mut log, 20, chunk_tiered_command(&k2)).error, 0);
        let entries = log.chunks()[..2].to_vec();
        let page = PageRef::new("page".into(), &entries, 10).expect("entries");
        assert_eq!(
            run(
                &mut log,
                21,
                page_sealed_command(&page, "k0".into(), "k1".into())
            )
            .error,
            0
        );
        let open = [(&page, entries.as_slice())];

        // Everything older than 250: as one unit the page stays (its newest is 400), but
        // its first entry (200) has expired, so retention opens it and cuts inside.
        let p = policy(50, -1);
        assert_eq!(log.first_live_page(), Some(&page));
        assert!(may_cut_inside(&log, &page, &p, 300));
        assert_eq!(retention_cutoff(&log, &p, 300, &[]), None);
        assert_eq!(retention_cutoff(&log, &p, 300, &open), Some(4));
        // Nothing in it old enough: no need to open it.
        assert!(!may_cut_inside(&log, &page, &p, 200));
        // Over the size limit by one entry: the same cut.
        let by_size = policy(-1, 1000 + tail_bytes(&log) as i64 + 1000);
        assert!(may_cut_inside(&log, &page, &by_size, 0));
        assert_eq!(retention_cutoff(&log, &by_size, 0, &open), Some(4));
        assert!(!may_cut_inside(&log, &page, &policy(-1, 1 << 40), 0));

        // Once the log start is inside the page, it straddles it.
        run(&mut log, 22, delete_records_command(4, 0));
        assert_eq!(log.straddling_page(), Some(&page));
        // Everything older than 450: k1 (400) goes, k2 (500) stays.
        assert_eq!(retention_cutoff(&log, &policy(50, -1), 500, &open), Some(8));
        // Everything older than 550: k2, the newest entry, goes too.
        assert_eq!(
            retention_cutoff(&log, &policy(50, -1), 600, &open),
            Some(10)
        );
    }

    fn tail_bytes(log: &PartitionLog) -> u64 {
        log.tail().iter().map(|b| b.bytes as u64).sum()
    }
}
