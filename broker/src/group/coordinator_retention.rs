//! Offsets retention on the coordinator (see the module docs of `coordinator`): groups
//! without members lose their old offsets, and empty groups without offsets are forgotten.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chronik_metastore::offsets::OffsetsCommand;

use super::{Coordinator, GroupStateKind, Slot};

/// An empty group without offsets is forgotten after this long, or the offsets retention
/// if that is shorter.
const FORGET_EMPTY_AFTER: Duration = Duration::from_secs(600);

/// Runs offsets retention on the coordinator every quarter of the retention (at most every
/// 10 minutes, Kafka's `offsets.retention.check.interval.ms`), until it is dropped.
pub(super) async fn run_retention(coordinator: std::sync::Weak<Coordinator>) {
    let mut first_seen = HashMap::new();
    loop {
        let every = match coordinator.upgrade() {
            Some(c) => (c.config.offsets_retention / 4)
                .clamp(Duration::from_millis(100), Duration::from_secs(600)),
            None => return,
        };
        tokio::time::sleep(every).await;
        let Some(c) = coordinator.upgrade() else {
            return;
        };
        if c.ready().is_ok() {
            c.expire_idle_groups(&mut first_seen).await;
        } else {
            first_seen.clear();
        }
    }
}

impl Coordinator {
    /// One offsets-retention pass (see the module docs). A group this coordinator holds
    /// in memory is idle since its members' last request; any other group (a
    /// membership-less one, or one not seen since this node became coordinator) since
    /// this coordinator first saw it, kept in `first_seen`.
    async fn expire_idle_groups(&self, first_seen: &mut HashMap<String, Instant>) {
        let now = Instant::now();
        let slots: Vec<(String, Arc<Slot>)> = self
            .groups
            .read()
            .iter()
            .map(|(id, s)| (id.clone(), s.clone()))
            .collect();
        // Per group in memory: idle since when, or None while it has members.
        let mut idle_since: HashMap<String, Option<Instant>> = HashMap::new();
        for (id, slot) in slots {
            let inner = slot.inner.lock();
            let idle = (inner.group.state() == GroupStateKind::Empty).then_some(inner.active_at);
            idle_since.insert(id, idle);
        }
        let with_offsets: Vec<String> = self
            .offsets
            .read()
            .groups()
            .map(|(id, _)| id.clone())
            .collect();
        first_seen.retain(|id, _| with_offsets.contains(id) && !idle_since.contains_key(id));
        let retention = self.config.offsets_retention;
        let before_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
            .saturating_sub(retention.as_millis() as i64);
        let mut expire = Vec::new();
        for id in &with_offsets {
            let since = match idle_since.get(id) {
                Some(Some(at)) => *at,
                Some(None) => continue, // it has members
                None => *first_seen.entry(id.clone()).or_insert(now),
            };
            if now.duration_since(since) >= retention
                && self.offsets.read().has_offsets_before(id, before_ms)
            {
                expire.push(id.clone());
            }
        }
        // A member that joins between this decision and the commit below may fetch offsets
        // about to go; it is the same as joining just after they expired.
        if !expire.is_empty() {
            let n = expire.len();
            if self
                .propose(OffsetsCommand::Expire {
                    groups: expire,
                    before_ms,
                })
                .await
                .is_ok()
            {
                tracing::info!(groups = n, "offsets of groups without members expired");
            }
        }
        // Empty groups without offsets: forget them (a join starts them afresh).
        for (id, idle) in idle_since {
            let Some(since) = idle else {
                continue;
            };
            if now.duration_since(since) < retention.min(FORGET_EMPTY_AFTER)
                || self.offsets.read().has_group(&id)
            {
                continue;
            }
            let Some(slot) = self.groups.read().get(&id).cloned() else {
                continue;
            };
            if slot.inner.lock().group.delete().is_err() {
                continue; // someone joined meanwhile
            }
            let mut groups = self.groups.write();
            if groups.get(&id).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                groups.remove(&id);
            }
            drop(groups);
            slot.wake.notify_one();
            if self.offsets.read().has_stored_group(&id) {
                self.shared.store.queue(&id, None);
            }
        }
    }
}
