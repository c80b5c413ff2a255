//! Rebalances of a [`Group`]: preparing one, completing the join phase, and choosing the
//! protocol every member supports.

use std::time::{Duration, Instant};

use super::{Action, Group, GroupStateKind, SyncResult};
use crate::errors::code;

impl Group {
    pub(super) fn max_rebalance_timeout(&self) -> Duration {
        self.members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or(Duration::ZERO)
    }

    pub(super) fn prepare_rebalance(&mut self, now: Instant) {
        if self.state == GroupStateKind::CompletingRebalance {
            for m in self.members.values_mut() {
                if m.awaiting_sync {
                    m.awaiting_sync = false;
                    self.out.push(Action::Sync(
                        m.member_id.clone(),
                        SyncResult::error(code::REBALANCE_IN_PROGRESS),
                    ));
                }
            }
        }
        let timeout = self.max_rebalance_timeout();
        if self.state == GroupStateKind::Empty {
            let delay = self.config.initial_rebalance_delay.min(timeout);
            self.rebalance_deadline = Some(now + delay);
            self.initial_delay_cap = Some(now + timeout.max(delay));
        } else {
            self.rebalance_deadline = Some(now + timeout);
            self.initial_delay_cap = None;
        }
        self.state = GroupStateKind::PreparingRebalance;
    }

    /// A member joining during the initial delay pushes the delay out, up to the cap.
    pub(super) fn extend_initial_delay(&mut self, now: Instant) {
        if let Some(cap) = self.initial_delay_cap {
            self.rebalance_deadline = Some((now + self.config.initial_rebalance_delay).min(cap));
        }
    }

    pub(super) fn maybe_complete_join(&mut self, now: Instant) {
        if self.state != GroupStateKind::PreparingRebalance || self.initial_delay_cap.is_some() {
            return;
        }
        let all_joined =
            self.members.values().all(|m| m.awaiting_join) && self.pending_members.is_empty();
        if all_joined {
            self.complete_join(now);
        }
    }

    pub(super) fn complete_join(&mut self, now: Instant) {
        // Dynamic members that did not rejoin in time are dropped; static ones are kept.
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| !m.awaiting_join && m.group_instance_id.is_none())
            .map(|m| m.member_id.clone())
            .collect();
        for id in gone {
            if let Some(m) = self.members.remove(&id) {
                tracing::info!(group = %self.group_id, member = %m.member_id, "member did not rejoin in time");
            }
            if self.leader.as_deref() == Some(id.as_str()) {
                self.leader = None;
            }
        }
        self.rebalance_deadline = None;
        self.initial_delay_cap = None;
        if self.members.is_empty() {
            self.generation += 1;
            self.state = GroupStateKind::Empty;
            self.protocol_name = None;
            self.leader = None;
            return;
        }
        let leader_joined = self
            .leader
            .as_ref()
            .and_then(|l| self.members.get(l))
            .is_some_and(|m| m.awaiting_join);
        if !leader_joined {
            self.leader = self
                .members
                .values()
                .find(|m| m.awaiting_join)
                .map(|m| m.member_id.clone());
        }
        let Some(leader) = self.leader.clone() else {
            // Only static members that have not rejoined: wait for them or their sessions.
            self.rebalance_deadline = Some(now + self.max_rebalance_timeout());
            return;
        };
        self.generation += 1;
        self.rebalances += 1;
        self.protocol_name = self.select_protocol();
        self.state = GroupStateKind::CompletingRebalance;
        self.rebalance_deadline = Some(now + self.max_rebalance_timeout());
        let joined: Vec<String> = self
            .members
            .values()
            .filter(|m| m.awaiting_join)
            .map(|m| m.member_id.clone())
            .collect();
        for id in joined {
            let result = self.current_join_result(&id, id == leader);
            if let Some(m) = self.members.get_mut(&id) {
                m.awaiting_join = false;
                m.session_deadline = now + m.session_timeout;
            }
            self.out.push(Action::Join(id, result));
        }
    }

    /// The protocol every member supports that most members prefer (Kafka's vote).
    pub(super) fn select_protocol(&self) -> Option<String> {
        let first = self.members.values().next()?;
        let candidates: Vec<&String> = first
            .protocols
            .iter()
            .map(|(n, _)| n)
            .filter(|n| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(p, _)| p == *n))
            })
            .collect();
        let mut votes = vec![0usize; candidates.len()];
        for m in self.members.values() {
            let first_supported = m
                .protocols
                .iter()
                .find_map(|(p, _)| candidates.iter().position(|c| *c == p));
            if let Some(i) = first_supported {
                votes[i] += 1;
            }
        }
        // Most votes; ties go to the first member's preference order.
        let mut best: Option<usize> = None;
        for (i, n) in votes.iter().enumerate() {
            if best.is_none_or(|b| *n > votes[b]) {
                best = Some(i);
            }
        }
        best.map(|i| candidates[i].clone())
    }
}
