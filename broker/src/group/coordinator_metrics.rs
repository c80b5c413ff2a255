//! The coordinator's Prometheus metrics: groups, members, rebalances, commits and
//! consumer lag.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::Coordinator;
use crate::partition::Registry;

impl Coordinator {
    /// Prometheus text for groups, members, rebalances, commits and consumer lag (computed
    /// now from committed offsets and high watermarks).
    pub fn render_metrics(&self, partitions: &Registry) -> String {
        let groups = self.list();
        let mut out = String::new();
        let _ = writeln!(out, "# TYPE chronik_group_count gauge");
        let _ = writeln!(out, "chronik_group_count {}", groups.len());
        let _ = writeln!(out, "# TYPE chronik_group_members gauge");
        for g in &groups {
            let _ = writeln!(
                out,
                "chronik_group_members{{group=\"{}\",state=\"{}\"}} {}",
                escape(&g.group_id),
                g.state.name(),
                g.members.len()
            );
        }
        let _ = writeln!(out, "# TYPE chronik_group_rebalances_total counter");
        let _ = writeln!(
            out,
            "chronik_group_rebalances_total {}",
            self.shared.rebalances.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# TYPE chronik_group_offset_commits_total counter");
        let _ = writeln!(
            out,
            "chronik_group_offset_commits_total {}",
            self.shared.commits.load(Ordering::Relaxed)
        );
        let committed: Vec<(String, String, i32, i64)> = {
            let state = self.offsets.read();
            state
                .groups()
                .flat_map(|(g, topics)| {
                    topics.iter().flat_map(move |(t, parts)| {
                        parts
                            .iter()
                            .map(move |(p, c)| (g.clone(), t.clone(), *p, c.offset))
                    })
                })
                .collect()
        };
        // Each partition's lag is reported by its leader only, so that summing the metric
        // over the cluster's nodes counts every partition once.
        let _ = writeln!(out, "# TYPE chronik_consumer_lag gauge");
        for (g, t, p, offset) in committed {
            let Some(part) = partitions.get(&t, p).filter(|p| p.is_leader(self.node_id)) else {
                continue;
            };
            let hwm = part.log.read().high_watermark();
            let _ = writeln!(
                out,
                "chronik_consumer_lag{{group=\"{}\",topic=\"{}\",partition=\"{p}\"}} {}",
                escape(&g),
                escape(&t),
                (hwm - offset).max(0)
            );
        }
        out
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
