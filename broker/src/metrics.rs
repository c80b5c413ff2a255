//! Prometheus metrics, kept as plain atomics and rendered in the text exposition format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kafka_protocol::messages::ApiKey;

use crate::protocol::SUPPORTED_APIS;

/// Latency bucket upper bounds, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
struct ApiStats {
    count: AtomicU64,
    micros: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
}

pub struct Metrics {
    apis: Vec<(ApiKey, ApiStats)>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    connections: AtomicU64,
    connections_total: AtomicU64,
    bad_requests: AtomicU64,
}

pub fn api_name(api: ApiKey) -> &'static str {
    match api {
        ApiKey::Produce => "produce",
        ApiKey::Fetch => "fetch",
        ApiKey::ListOffsets => "list_offsets",
        ApiKey::Metadata => "metadata",
        ApiKey::ApiVersions => "api_versions",
        ApiKey::CreateTopics => "create_topics",
        ApiKey::DeleteTopics => "delete_topics",
        ApiKey::InitProducerId => "init_producer_id",
        ApiKey::OffsetForLeaderEpoch => "offset_for_leader_epoch",
        ApiKey::DescribeConfigs => "describe_configs",
        ApiKey::AlterConfigs => "alter_configs",
        ApiKey::CreatePartitions => "create_partitions",
        ApiKey::DeleteRecords => "delete_records",
        ApiKey::IncrementalAlterConfigs => "incremental_alter_configs",
        ApiKey::DescribeCluster => "describe_cluster",
        ApiKey::FindCoordinator => "find_coordinator",
        ApiKey::JoinGroup => "join_group",
        ApiKey::SyncGroup => "sync_group",
        ApiKey::Heartbeat => "heartbeat",
        ApiKey::LeaveGroup => "leave_group",
        ApiKey::OffsetCommit => "offset_commit",
        ApiKey::OffsetFetch => "offset_fetch",
        ApiKey::ListGroups => "list_groups",
        ApiKey::DescribeGroups => "describe_groups",
        ApiKey::DeleteGroups => "delete_groups",
        ApiKey::OffsetDelete => "offset_delete",
        _ => "other",
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            apis: SUPPORTED_APIS
                .iter()
                .map(|(k, _)| (*k, ApiStats::default()))
                .collect(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            bad_requests: AtomicU64::new(0),
        }
    }
}

/// Values owned elsewhere, sampled when metrics are rendered.
pub struct Gauges {
    pub partitions: usize,
    pub wal_bytes: u64,
    pub wal_segments: u64,
    pub wal_appends: u64,
    pub wal_fsyncs: u64,
    pub wal_fsync_micros_total: u64,
    pub wal_fsync_micros_max: u64,
    pub wal_writes: u64,
    pub wal_write_micros_total: u64,
}

impl Metrics {
    pub fn observe_request(&self, api: ApiKey, elapsed: Duration) {
        let Some((_, s)) = self.apis.iter().find(|(k, _)| *k == api) else {
            return;
        };
        s.count.fetch_add(1, Ordering::Relaxed);
        s.micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                s.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn add_bytes_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_bytes_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Ordering::Relaxed);
    }

    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn bad_request(&self) {
        self.bad_requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::new();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(out, "# TYPE chronik_requests_total counter");
        for (k, s) in &self.apis {
            let _ = writeln!(
                out,
                "chronik_requests_total{{api=\"{}\"}} {}",
                api_name(*k),
                load(&s.count)
            );
        }
        let _ = writeln!(out, "# TYPE chronik_request_duration_seconds histogram");
        for (k, s) in &self.apis {
            let name = api_name(*k);
            for (i, le) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "chronik_request_duration_seconds_bucket{{api=\"{name}\",le=\"{le}\"}} {}",
                    load(&s.buckets[i])
                );
            }
            let _ = writeln!(
                out,
                "chronik_request_duration_seconds_bucket{{api=\"{name}\",le=\"+Inf\"}} {}",
                load(&s.count)
            );
            let _ = writeln!(
                out,
                "chronik_request_duration_seconds_sum{{api=\"{name}\"}} {}",
                load(&s.micros) as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "chronik_request_duration_seconds_count{{api=\"{name}\"}} {}",
                load(&s.count)
            );
        }
        let mut line = |kind: &str, name: &str, v: String| {
            let _ = writeln!(out, "# TYPE {name} {kind}\n{name} {v}");
        };
        line(
            "counter",
            "chronik_bytes_in_total",
            load(&self.bytes_in).to_string(),
        );
        line(
            "counter",
            "chronik_bytes_out_total",
            load(&self.bytes_out).to_string(),
        );
        line(
            "gauge",
            "chronik_connections",
            load(&self.connections).to_string(),
        );
        line(
            "counter",
            "chronik_connections_total",
            load(&self.connections_total).to_string(),
        );
        line(
            "counter",
            "chronik_bad_requests_total",
            load(&self.bad_requests).to_string(),
        );
        line("gauge", "chronik_partitions", g.partitions.to_string());
        line("gauge", "chronik_wal_bytes", g.wal_bytes.to_string());
        line("gauge", "chronik_wal_segments", g.wal_segments.to_string());
        line(
            "counter",
            "chronik_wal_appends_total",
            g.wal_appends.to_string(),
        );
        line(
            "counter",
            "chronik_wal_fsyncs_total",
            g.wal_fsyncs.to_string(),
        );
        line(
            "counter",
            "chronik_wal_fsync_seconds_total",
            (g.wal_fsync_micros_total as f64 / 1e6).to_string(),
        );
        line(
            "gauge",
            "chronik_wal_fsync_seconds_max",
            (g.wal_fsync_micros_max as f64 / 1e6).to_string(),
        );
        line(
            "counter",
            "chronik_wal_writes_total",
            g.wal_writes.to_string(),
        );
        line(
            "counter",
            "chronik_wal_write_seconds_total",
            (g.wal_write_micros_total as f64 / 1e6).to_string(),
        );
        out
    }
}
