//! Quiet groups: an idle Raft group stops its heartbeats, and one beacon per node pair
//! and heartbeat interval stands in for all of them.
//!
//! Every partition is its own Raft group, and an openraft leader sends each follower a
//! heartbeat every `heartbeat_interval`. So an idle cluster's traffic and CPU grew with its
//! partition count: 300 partitions on 3 nodes made 6,000 RPCs a second that said nothing.
//!
//! - A group this node leads goes **quiet** once it has had no new entry for
//!   [`QUIET_AFTER`] and every member holds and has applied its last entry: its leader
//!   switches openraft's heartbeats and timer off. (A group with no other member never
//!   needs them; a follower needs its timer only while the election gate lets it
//!   campaign.)
//! - Each round (one heartbeat interval) a node sends each peer one **beacon** naming the
//!   quiet groups it leads there, with its term and last log index.
//! - A member whose own state agrees (same term and leader, same last entry, applied)
//!   counts the beacon as hearing its leader, so the election gate keeps its elections off
//!   as an AppendEntries would. A member that does not agree (another term, no leader
//!   known after a restart, a shorter log) names the group in its answer, and the leader
//!   wakes the group's heartbeats for [`WAKE_FOR`], so that Raft itself sorts it out.
//! - A member not heard from for [`ABSENT_AFTER`] (down, stopped, cut off) does not keep
//!   a group awake; it still gets beacons, and asks for heartbeats once it is back.
//! - A write needs no waking: openraft replicates new entries whatever the heartbeat
//!   switch, and the next round sees the new entry and switches heartbeats back on.
//! - A leader that dies stops its beacons too, so its followers' gates open after the
//!   leader lease plus an election timeout, when openraft's timer would have fired after
//!   heartbeats stopped.
//!
//! A peer that cannot read beacons (an older version) answers them as undecodable; the
//! groups it is a member of are then kept awake for [`DEAF_FOR`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use serde::{Deserialize, Serialize};

use super::wire::{RpcReply, RpcRequest};
use super::{CallError, Transport};
use crate::types::{GroupId, NodeId, Raft, METADATA_GROUP};

/// How long a group led here must go without a new entry before it goes quiet.
pub const QUIET_AFTER: Duration = Duration::from_secs(1);
/// A member not heard from for this long does not keep its groups awake.
pub const ABSENT_AFTER: Duration = Duration::from_secs(2);
/// How long a group stays awake after a member asked for heartbeats.
pub const WAKE_FOR: Duration = Duration::from_secs(1);
/// How long groups with a member that cannot read beacons stay awake before it is asked
/// again.
pub const DEAF_FOR: Duration = Duration::from_secs(60);

/// One quiet group in a beacon: its leader (the sender) still leads it in `term`, and
/// its log and state machine end at `last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quiet {
    pub group: GroupId,
    pub term: u64,
    pub last: Option<u64>,
}

/// What a member knows of a group, to check a beacon against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberView {
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log: Option<u64>,
    pub applied: Option<u64>,
}

/// What a member makes of one beacon entry from `from`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The sender is the leader this member follows: it is alive and reaches us.
    pub heard: bool,
    /// This member is where the leader believes it is; if not, it wants heartbeats.
    pub agrees: bool,
}

impl MemberView {
    pub fn judge(&self, from: NodeId, beacon: &Quiet) -> Verdict {
        let heard = self.term == beacon.term && self.leader == Some(from);
        Verdict {
            heard,
            agrees: heard && self.last_log == beacon.last && self.applied == beacon.last,
        }
    }
}

/// What a leader knows of a group it leads, to decide whether it may go quiet.
pub struct LeaderView<'a> {
    pub last_log: Option<u64>,
    pub applied: Option<u64>,
    /// The other members (voters and learners).
    pub members: &'a [NodeId],
    /// What each member is known to hold (openraft's replication metrics).
    pub matched: &'a dyn Fn(NodeId) -> Option<Option<u64>>,
}

impl LeaderView<'_> {
    /// Whether every member holds the last entry and this node has applied it.
    pub fn settled(&self) -> bool {
        !self.members.is_empty()
            && self.applied == self.last_log
            && self
                .members
                .iter()
                .all(|m| (self.matched)(*m) == Some(self.last_log))
    }
}

/// The quiet rounds' state.
#[derive(Default)]
pub(super) struct QuietState {
    /// Per group led here: its last log index and since when it has been that.
    led: HashMap<GroupId, (Option<u64>, Instant)>,
    /// Groups kept awake until then (a member asked for heartbeats).
    woken: HashMap<GroupId, Instant>,
    /// Groups whose heartbeats a leadership hand-off holds off, until then.
    silenced: HashMap<GroupId, Instant>,
    /// What each group's heartbeat and tick switches were last set to.
    switches: HashMap<GroupId, Switches>,
    /// Peers that cannot read beacons, until then.
    deaf: HashMap<NodeId, Instant>,
    /// Peers with a beacon in flight.
    in_flight: HashSet<NodeId>,
    /// Groups quiet after the last round.
    quiet: usize,
}

/// A group's openraft runtime switches.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Switches {
    /// The leader's periodic heartbeats.
    heartbeat: bool,
    /// openraft's timer, which does nothing but heartbeats on a leader and elections on
    /// a follower: off on a quiet leader, and on a member whose elections the gate holds.
    /// Idle, it was most of a node's CPU: every group's core woke every 1.5 heartbeat
    /// intervals to find there was nothing to do.
    tick: bool,
}

impl QuietState {
    fn set_switches(&mut self, group: GroupId, raft: &Raft, want: Switches) {
        let had = self.switches.insert(group, want);
        if had.map(|h| h.heartbeat) != Some(want.heartbeat) {
            raft.runtime_config().heartbeat(want.heartbeat);
        }
        if had.map(|h| h.tick) != Some(want.tick) {
            raft.runtime_config().tick(want.tick);
        }
    }

    /// Turns heartbeats (and the timer) back on: the group is not quiet any more.
    fn wake(&mut self, group: GroupId, raft: &Raft) {
        let on = Switches {
            heartbeat: true,
            tick: true,
        };
        self.set_switches(group, raft, on);
    }

    pub(super) fn forget(&mut self, group: GroupId) {
        self.led.remove(&group);
        self.woken.remove(&group);
        self.silenced.remove(&group);
        self.switches.remove(&group);
    }
}

impl Transport {
    /// How many groups led here are quiet (for the metrics page).
    pub fn quiet_groups(&self) -> usize {
        self.quiet.lock().quiet
    }

    /// Switches `group`'s heartbeats off until `until` (a leadership hand-off), or, with
    /// None, gives the switch back to the quiet rounds.
    pub(super) fn hold_heartbeats(&self, group: GroupId, raft: &Raft, until: Option<Instant>) {
        let mut quiet = self.quiet.lock();
        match until {
            Some(until) => {
                quiet.silenced.insert(group, until);
                let silent = Switches {
                    heartbeat: false,
                    tick: true,
                };
                quiet.set_switches(group, raft, silent);
            }
            None => {
                quiet.silenced.remove(&group);
                quiet.wake(group, raft);
            }
        }
    }

    /// One round: decides which groups led here are quiet, sets their heartbeat switches,
    /// and sends each peer its beacon.
    /// `groups` are the registered groups, each with whether the election gate lets this
    /// node campaign in it (this round's [`Transport::apply_gate`]).
    pub(super) fn quiet_round(
        self: &Arc<Self>,
        now: Instant,
        ttl: Duration,
        groups: Vec<(GroupId, Raft, bool)>,
    ) {
        let mut beacons: BTreeMap<NodeId, (Option<String>, Vec<Quiet>)> = BTreeMap::new();
        let mut absent: HashMap<NodeId, bool> = HashMap::new();
        let mut quiet = self.quiet.lock();
        quiet.woken.retain(|_, until| *until > now);
        quiet.silenced.retain(|_, until| *until > now);
        quiet.deaf.retain(|_, until| *until > now);
        quiet.quiet = 0;
        for (group, raft, may_campaign) in groups {
            let metrics = raft.metrics();
            let m = metrics.borrow();
            if m.state != ServerState::Leader {
                quiet.led.remove(&group);
                if !quiet.silenced.contains_key(&group) {
                    // Heartbeats on, so that a leadership won later starts with them; the
                    // timer runs while the gate lets this member campaign.
                    let want = Switches {
                        heartbeat: true,
                        tick: may_campaign,
                    };
                    quiet.set_switches(group, &raft, want);
                }
                continue;
            }
            let last_log = m.last_log_index;
            let since = match quiet.led.get(&group) {
                Some((last, since)) if *last == last_log => *since,
                _ => {
                    quiet.led.insert(group, (last_log, now));
                    now
                }
            };
            if quiet.silenced.contains_key(&group) {
                continue;
            }
            let membership = m.membership_config.membership();
            let members: Vec<NodeId> = membership
                .nodes()
                .map(|(id, _)| *id)
                .filter(|id| *id != self.node_id)
                .collect();
            if members.is_empty() {
                // The only member: nobody to heartbeat, and nobody to elect.
                let none = Switches {
                    heartbeat: false,
                    tick: false,
                };
                quiet.set_switches(group, &raft, none);
                continue;
            }
            let matched = |node: NodeId| {
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(&node))
                    .map(|l| l.map(|l| l.index))
            };
            // A member not heard from for a while (down, stopped, cut off) does not keep
            // the group awake: heartbeats cannot reach it either. It is still sent
            // beacons, and asks for heartbeats when it is back and finds itself behind.
            let present: Vec<NodeId> = members
                .iter()
                .copied()
                .filter(|n| {
                    let gone = absent.entry(*n).or_insert_with(|| {
                        self.heard_since(*n).is_none_or(|ago| ago > ABSENT_AFTER)
                    });
                    !*gone
                })
                .collect();
            let view = LeaderView {
                last_log,
                applied: m.last_applied.map(|l| l.index),
                members: &present,
                matched: &matched,
            };
            let is_quiet = now.duration_since(since) >= QUIET_AFTER
                && view.settled()
                && !quiet.woken.contains_key(&group)
                && !members.iter().any(|n| quiet.deaf.contains_key(n));
            let want = Switches {
                heartbeat: !is_quiet,
                tick: !is_quiet,
            };
            quiet.set_switches(group, &raft, want);
            if !is_quiet {
                continue;
            }
            quiet.quiet += 1;
            let beacon = Quiet {
                group,
                term: m.current_term,
                last: last_log,
            };
            for node in &members {
                let hint = membership.get_node(node).map(|n| n.addr.clone());
                beacons
                    .entry(*node)
                    .or_insert_with(|| (hint, Vec::new()))
                    .1
                    .push(beacon);
            }
        }
        for (node, (hint, list)) in beacons {
            if !quiet.in_flight.insert(node) {
                continue;
            }
            let transport = self.clone();
            tokio::spawn(async move {
                transport.send_beacon(node, hint, list, ttl).await;
                transport.quiet.lock().in_flight.remove(&node);
            });
        }
    }

    async fn send_beacon(
        &self,
        node: NodeId,
        hint: Option<String>,
        list: Vec<Quiet>,
        ttl: Duration,
    ) {
        let request = RpcRequest::Beacon(list.clone());
        let wake: Vec<GroupId> = match self
            .call(node, hint.as_deref(), METADATA_GROUP, request, ttl)
            .await
        {
            Ok(RpcReply::Beacon(wake)) => wake,
            // Down or slow: its groups stay quiet, and it asks for heartbeats when it is
            // back and finds itself behind.
            Err(CallError::Unreachable { .. } | CallError::NoAddress(_)) => return,
            Ok(_) | Err(_) => {
                tracing::info!(
                    node,
                    "peer does not read beacons (an older version?): its groups keep their heartbeats"
                );
                self.quiet
                    .lock()
                    .deaf
                    .insert(node, Instant::now() + DEAF_FOR);
                list.iter().map(|q| q.group).collect()
            }
        };
        if wake.is_empty() {
            return;
        }
        tracing::debug!(node, ?wake, "beacon answered: waking groups");
        let until = Instant::now() + WAKE_FOR;
        for group in wake {
            let Some(raft) = self.groups.read().get(&group).cloned() else {
                continue;
            };
            {
                let mut quiet = self.quiet.lock();
                quiet.woken.insert(group, until);
                if quiet.silenced.contains_key(&group) {
                    continue;
                }
                quiet.wake(group, &raft);
            }
            let _ = raft.trigger().heartbeat().await;
        }
    }

    /// Serves a beacon from `from`: notes the leaders heard, and answers with the groups
    /// that want their heartbeats back.
    pub(super) fn receive_beacon(&self, from: NodeId, list: Vec<Quiet>) -> Vec<GroupId> {
        let mut wake = Vec::new();
        for beacon in list {
            let Some(raft) = self.groups.read().get(&beacon.group).cloned() else {
                wake.push(beacon.group);
                continue;
            };
            let view = {
                let m = raft.metrics();
                let m = m.borrow();
                MemberView {
                    term: m.current_term,
                    leader: m.current_leader,
                    last_log: m.last_log_index,
                    applied: m.last_applied.map(|l| l.index),
                }
            };
            let verdict = view.judge(from, &beacon);
            if verdict.agrees {
                tracing::trace!(group = beacon.group, from, ?beacon, "beacon agrees");
            } else {
                tracing::debug!(
                    group = beacon.group,
                    from,
                    ?beacon,
                    ?view,
                    ?verdict,
                    "beacon: asking for heartbeats"
                );
            }
            if verdict.heard {
                self.heard_leader(beacon.group, &raft, true);
            }
            if !verdict.agrees {
                wake.push(beacon.group);
            }
        }
        wake
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(term: u64, leader: Option<NodeId>, last_log: u64, applied: u64) -> MemberView {
        MemberView {
            term,
            leader,
            last_log: Some(last_log),
            applied: Some(applied),
        }
    }

    #[test]
    fn a_member_in_step_with_its_leader_hears_it_and_agrees() {
        let beacon = Quiet {
            group: 7,
            term: 3,
            last: Some(10),
        };
        let v = member(3, Some(1), 10, 10).judge(1, &beacon);
        assert_eq!(
            v,
            Verdict {
                heard: true,
                agrees: true
            }
        );
    }

    #[test]
    fn a_member_behind_hears_its_leader_but_asks_for_heartbeats() {
        let beacon = Quiet {
            group: 7,
            term: 3,
            last: Some(10),
        };
        // A shorter log, or a state machine that has not applied the last entry.
        for view in [member(3, Some(1), 9, 9), member(3, Some(1), 10, 9)] {
            let v = view.judge(1, &beacon);
            assert!(v.heard && !v.agrees, "{view:?}");
        }
    }

    #[test]
    fn a_member_of_another_term_or_leader_does_not_count_the_beacon() {
        let beacon = Quiet {
            group: 7,
            term: 3,
            last: Some(10),
        };
        // A newer term (it voted in an election the sender missed), no leader known (just
        // restarted), or another leader: the beacon proves nothing, and Raft must sort it
        // out with real heartbeats.
        for view in [
            member(4, Some(2), 10, 10),
            member(3, None, 10, 10),
            member(3, Some(2), 10, 10),
        ] {
            let v = view.judge(1, &beacon);
            assert!(!v.heard && !v.agrees, "{view:?}");
        }
    }

    #[test]
    fn a_group_settles_only_when_every_member_holds_its_last_entry() {
        let members = [2, 3];
        let all = |_: NodeId| Some(Some(10));
        let view = LeaderView {
            last_log: Some(10),
            applied: Some(10),
            members: &members,
            matched: &all,
        };
        assert!(view.settled());
        let one_behind = |n: NodeId| Some(if n == 3 { Some(9) } else { Some(10) });
        let view = LeaderView {
            matched: &one_behind,
            ..view
        };
        assert!(!view.settled());
        // A member that has not answered yet (a learner just added).
        let unknown = |n: NodeId| if n == 3 { None } else { Some(Some(10)) };
        let view = LeaderView {
            matched: &unknown,
            ..view
        };
        assert!(!view.settled());
        // The leader has not applied its last entry.
        let view = LeaderView {
            applied: Some(9),
            matched: &all,
            ..view
        };
        assert!(!view.settled());
        // A single-member group has nobody to beacon.
        let view = LeaderView {
            applied: Some(10),
            members: &[],
            ..view
        };
        assert!(!view.settled());
    }
}
