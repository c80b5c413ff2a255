//! Tiering metrics in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use chronik_bootstrap::snapshots::SnapshotStats;

use super::Tier;

impl Tier {
    pub fn render_metrics(&self, snapshots: &SnapshotStats) -> String {
        let mut out = String::new();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let s = &self.stats;
        let cache = self.cache();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let last_upload = load(&snapshots.last_upload_unix_ms);
        let snapshot_age = if last_upload == 0 {
            -1.0
        } else {
            now_ms.saturating_sub(last_upload) as f64 / 1000.0
        };
        let rows: [(&str, &str, String); 21] = [
            (
                "counter",
                "chronik_tiering_chunks_uploaded_total",
                load(&s.chunks_uploaded).to_string(),
            ),
            (
                "counter",
                "chronik_tiering_bytes_uploaded_total",
                load(&s.bytes_uploaded).to_string(),
            ),
            (
                "counter",
                "chronik_tiering_upload_failures_total",
                load(&s.upload_failures).to_string(),
            ),
            (
                "gauge",
                "chronik_tiering_untiered_bytes",
                load(&s.untiered_bytes).to_string(),
            ),
            (
                "gauge",
                "chronik_tiering_lag_seconds",
                (load(&s.lag_ticks) as f64 * self.config.interval.as_secs_f64()).to_string(),
            ),
            (
                "counter",
                "chronik_tiering_cache_hits_total",
                cache.hits.load(Ordering::Relaxed).to_string(),
            ),
            (
                "counter",
                "chronik_tiering_cache_misses_total",
                cache.misses.load(Ordering::Relaxed).to_string(),
            ),
            (
                "gauge",
                "chronik_tiering_cache_bytes",
                cache.bytes().to_string(),
            ),
            (
                "counter",
                "chronik_bucket_gets_total",
                load(&s.gets).to_string(),
            ),
            (
                "counter",
                "chronik_retention_deletes_total",
                load(&s.retention_deletes).to_string(),
            ),
            (
                "counter",
                "chronik_compaction_segments_written_total",
                load(&s.segments_written).to_string(),
            ),
            (
                "counter",
                "chronik_gc_objects_deleted_total",
                load(&s.objects_deleted).to_string(),
            ),
            (
                "counter",
                "chronik_gc_orphans_deleted_total",
                load(&s.orphans_deleted).to_string(),
            ),
            (
                "counter",
                "chronik_archive_files_written_total",
                load(&s.archive_files).to_string(),
            ),
            (
                "counter",
                "chronik_archive_records_total",
                load(&s.archive_records).to_string(),
            ),
            (
                "counter",
                "chronik_archive_bytes_total",
                load(&s.archive_bytes).to_string(),
            ),
            (
                "counter",
                "chronik_archive_skipped_batches_total",
                load(&s.archive_skipped_batches).to_string(),
            ),
            (
                "counter",
                "chronik_snapshots_saved_total",
                load(&snapshots.saved).to_string(),
            ),
            (
                "counter",
                "chronik_snapshots_uploaded_total",
                load(&snapshots.uploaded).to_string(),
            ),
            (
                "counter",
                "chronik_snapshot_upload_failures_total",
                load(&snapshots.upload_failures).to_string(),
            ),
            (
                "gauge",
                "chronik_snapshot_age_seconds",
                snapshot_age.to_string(),
            ),
        ];
        for (kind, name, value) in rows {
            let _ = writeln!(out, "# TYPE {name} {kind}\n{name} {value}");
        }
        out
    }
}

/// Per Raft group: the last applied and last snapshotted log index. When they are equal,
/// everything the group applied is in a durable snapshot (locally, and in the bucket unless
/// `chronik_snapshot_upload_failures_total` says otherwise).
pub fn render_group_progress(broker: &crate::broker::Broker) -> String {
    let mut out = String::from(
        "# TYPE chronik_raft_applied_index gauge\n# TYPE chronik_raft_snapshot_index gauge\n# TYPE chronik_raft_replication_lag gauge\n",
    );
    let mut row = |group: u64, raft: &chronik_metastore::types::Raft| {
        let m = raft.metrics();
        let m = m.borrow();
        let applied = m.last_applied.map(|l| l.index as i64).unwrap_or(-1);
        let snapshot = m.snapshot.map(|l| l.index as i64).unwrap_or(-1);
        // On a leader: how many log entries each follower is behind.
        if let (Some(progress), Some(last)) = (m.replication.as_ref(), m.last_log_index) {
            for (follower, matched) in progress.iter().filter(|(f, _)| **f != m.id) {
                let behind = last.saturating_sub(matched.map(|l| l.index).unwrap_or(0));
                let _ = writeln!(
                    out,
                    "chronik_raft_replication_lag{{group=\"{group}\",follower=\"{follower}\"}} {behind}"
                );
            }
        }
        let _ = writeln!(
            out,
            "chronik_raft_applied_index{{group=\"{group}\"}} {applied}"
        );
        let _ = writeln!(
            out,
            "chronik_raft_snapshot_index{{group=\"{group}\"}} {snapshot}"
        );
    };
    row(
        chronik_metastore::types::METADATA_GROUP,
        &broker.node.metadata_raft,
    );
    for p in broker.partitions.all() {
        row(p.group, &p.raft);
    }
    let (sent, received) = broker.node.transport.message_counts();
    let quiet = broker.node.transport.quiet_groups();
    let _ = writeln!(
        out,
        "# TYPE chronik_raft_messages_sent_total counter\nchronik_raft_messages_sent_total {sent}\n# TYPE chronik_raft_messages_received_total counter\nchronik_raft_messages_received_total {received}\n# TYPE chronik_raft_quiet_groups gauge\nchronik_raft_quiet_groups {quiet}"
    );
    out
}
