//! The election gate: a stand-in for Raft's pre-vote, which openraft 0.9 lacks.
//!
//! Without pre-vote, a follower that was frozen (SIGSTOP, a stalled VM, a long swap) finds
//! its election timer long expired when it resumes and campaigns at once in a higher term,
//! before it has even read the heartbeats waiting for it. It cannot win (the others still
//! hear their leader), but its higher term makes the healthy leader step down: every group
//! the node belongs to stalls for an election, for nothing.
//!
//! So a follower's elections are switched off while it hears its leader (an AppendEntries
//! for that group, or a beacon naming it when it is quiet, see [`super::quiet`]), and
//! switched on only once the leader has been silent long enough:
//! - after an AppendEntries, the minimum election timeout, which is before openraft's own
//!   timer (leader lease plus election timeout) fires;
//! - after a beacon, which openraft does not see, as long as that timer: the leader lease
//!   plus an election timeout drawn per group between the minimum and the maximum.
//!
//! When the gate itself finds it was not run for longer than the minimum election
//! timeout, the process was frozen: every group holds its elections for two maximum
//! election timeouts, time enough for a live leader's heartbeats to arrive. A leadership
//! hand-off holds the other voters' elections the same way
//! ([`Transport::hold_elections`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;

use super::Transport;
use crate::types::GroupId;

impl Transport {
    /// Notes an AppendEntries for `group` (or, `by_beacon`, a beacon naming it): its
    /// leader is alive and reaches us, so this node must not campaign. The switch is
    /// turned off here, not at the gate's next round, so that a freeze right after the
    /// first heartbeat of a new group finds it off.
    pub(super) fn heard_leader(&self, group: GroupId, raft: &crate::types::Raft, by_beacon: bool) {
        let mut gate = self.gate.lock();
        gate.heard.insert(group, (Instant::now(), by_beacon));
        if gate.allowed.insert(group, false) != Some(false) {
            raft.runtime_config().elect(false);
        }
    }

    /// Drops what the gate knows of `group` (its Raft instance came or went).
    pub(super) fn forget_gate(&self, group: GroupId) {
        let mut gate = self.gate.lock();
        gate.heard.remove(&group);
        gate.held.remove(&group);
        gate.allowed.remove(&group);
        gate.timeout.remove(&group);
        drop(gate);
        self.quiet.lock().forget(group);
    }

    /// Keeps this node from campaigning in `group` for `window`.
    pub(super) fn hold_elections(&self, group: GroupId, window: Duration) {
        let until = Instant::now() + window;
        let mut gate = self.gate.lock();
        let held = gate.held.entry(group).or_insert(until);
        *held = (*held).max(until);
    }

    /// Runs the election gate over every registered group, and the quiet rounds
    /// ([`super::quiet`]), every heartbeat interval, until the transport is dropped.
    pub fn spawn_election_gate(
        self: &Arc<Self>,
        heartbeat: Duration,
        min: Duration,
        max: Duration,
    ) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let tick = heartbeat.max(Duration::from_millis(10));
            let mut last = Instant::now();
            let mut frozen_until = last;
            loop {
                tokio::time::sleep(tick).await;
                let Some(transport) = weak.upgrade() else {
                    return;
                };
                let now = Instant::now();
                if now.duration_since(last) > min.max(tick * 3) {
                    tracing::warn!(
                        paused_ms = now.duration_since(last).as_millis() as u64,
                        "this process was not running: holding elections until the leaders are heard"
                    );
                    frozen_until = now + max * 2;
                }
                last = now;
                let groups = transport.apply_gate(now, min, max, now < frozen_until);
                transport.quiet_round(now, min, groups);
            }
        });
    }

    /// Sets every registered group's election switch; returns the groups, each with
    /// whether this node may campaign in it.
    fn apply_gate(
        &self,
        now: Instant,
        min: Duration,
        max: Duration,
        frozen: bool,
    ) -> Vec<(GroupId, crate::types::Raft, bool)> {
        let groups: Vec<(GroupId, crate::types::Raft)> = self
            .groups
            .read()
            .iter()
            .map(|(g, r)| (*g, r.clone()))
            .collect();
        let mut gate = self.gate.lock();
        gate.held.retain(|_, until| *until > now);
        let mut decided = Vec::with_capacity(groups.len());
        for (group, raft) in groups {
            let follower = raft.metrics().borrow().state == ServerState::Follower;
            let timeout = *gate
                .timeout
                .entry(group)
                .or_insert_with(|| election_timeout(min, max));
            let hears_leader = gate.heard.get(&group).is_some_and(|(at, by_beacon)| {
                // After an AppendEntries, openraft's own timer (the leader lease, then its
                // election timeout) still runs, so the gate may open early. After a
                // beacon that timer has long run out: the gate alone waits as long.
                let patience = if *by_beacon { max + timeout } else { min };
                now.duration_since(*at) < patience
            });
            let hold = frozen || gate.held.contains_key(&group) || (follower && hears_leader);
            let allow = !hold;
            if gate.allowed.get(&group) != Some(&allow) {
                gate.allowed.insert(group, allow);
                raft.runtime_config().elect(allow);
            }
            decided.push((group, raft, allow));
        }
        decided
    }
}

/// What the gate knows per group.
#[derive(Default)]
pub(super) struct GateState {
    /// When an AppendEntries (false) or a beacon (true) for the group last arrived.
    heard: std::collections::HashMap<GroupId, (Instant, bool)>,
    /// Elections held until then (a leadership hand-off).
    held: std::collections::HashMap<GroupId, Instant>,
    /// What the gate last set each group's election switch to.
    allowed: std::collections::HashMap<GroupId, bool>,
    /// Each group's election timeout, for groups heard by beacon.
    timeout: std::collections::HashMap<GroupId, Duration>,
}

/// A random time between the election timeouts, drawn once per group, as openraft draws
/// its own. Without this spread, every follower of a dead leader of quiet groups would
/// campaign in the same round, and split the vote.
fn election_timeout(min: Duration, max: Duration) -> Duration {
    use std::hash::BuildHasher;
    let spread = max.saturating_sub(min);
    // Each RandomState has its own random keys.
    let draw = std::collections::hash_map::RandomState::new().hash_one(0u8);
    min + spread.mul_f64((draw % 1024) as f64 / 1024.0)
}
