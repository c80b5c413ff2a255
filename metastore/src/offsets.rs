//! Committed consumer offsets: the state machine of the offsets Raft group
//! ([`crate::types::OFFSETS_GROUP`], Kafka's `__consumer_offsets`).
//!
//! Owns, per consumer group, the last committed offset of each topic partition (with the
//! leader epoch and metadata string the client sent), and the group's membership as of its
//! last completed rebalance ([`StoredGroup`], Kafka's group metadata record). The
//! coordinator works on membership in memory and stores it here when a rebalance completes
//! or the group empties, so a new coordinator (after a failover or a restart) loads the
//! members and their assignments, and consumers carry on heartbeating instead of rejoining.
//! Commits and deletions go through Raft, so an acknowledged commit survives a restart or a
//! kill -9 (the WAL fsyncs before the entry commits), and the whole state is part of the
//! snapshot that tiering ships to the bucket.
//!
//! Validation (group id rules, known topics, membership and generation) happens before
//! proposing; apply is a pure function of the log and never fails on well-formed commands.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::snapshot_buf::SnapshotWriter;
use crate::state_machine::ApplyState;
use crate::types::{Command, CommandResponse, LogId};

/// One committed offset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedOffset {
    pub offset: i64,
    /// -1 when the client did not send one.
    pub leader_epoch: i32,
    pub metadata: String,
    /// Wall-clock time of the commit as the proposer saw it (milliseconds since the epoch).
    pub commit_timestamp_ms: i64,
}

/// One partition's commit inside an [`OffsetsCommand::Commit`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionCommit {
    pub topic: String,
    pub partition: i32,
    pub committed: CommittedOffset,
}

/// A group's membership as of its last completed rebalance: Stable with members and their
/// assignments, or Empty (no members) with the generation and protocol type it ended with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredGroup {
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: Option<String>,
    pub members: Vec<StoredMember>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
    /// (protocol name, metadata), in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OffsetsCommand {
    Commit {
        group: String,
        offsets: Vec<PartitionCommit>,
    },
    /// Removes every offset of the group (DeleteGroups).
    DeleteGroup { group: String },
    /// Removes some offsets of the group (OffsetDelete).
    DeleteOffsets {
        group: String,
        partitions: Vec<(String, i32)>,
    },
    /// Offsets retention (`offsets.retention.minutes`): removes the offsets of `groups`
    /// committed before `before_ms`. The coordinator lists groups that have had no
    /// members for the retention period; an offset committed since it decided is kept.
    Expire { groups: Vec<String>, before_ms: i64 },
    /// Stores (or, with `None`, forgets) the membership of groups, as the coordinator that
    /// led the offsets group in `term` decided it. Applied only from an entry of that same
    /// term: a batch decided in one term whose proposal reaches the log only after its
    /// node was elected again (having unloaded and reloaded its groups) changes nothing.
    StoreGroups {
        term: u64,
        groups: Vec<(String, Option<StoredGroup>)>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OffsetsResponse {
    Ok,
    Malformed(String),
}

/// topic → partition → offset.
pub type GroupOffsets = BTreeMap<String, BTreeMap<i32, CommittedOffset>>;

/// Committed offsets and stored membership of every group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetsState {
    groups: BTreeMap<String, GroupOffsets>,
    /// Absent from snapshots written before membership was stored.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    members: BTreeMap<String, StoredGroup>,
}

impl OffsetsState {
    pub fn group(&self, group: &str) -> Option<&GroupOffsets> {
        self.groups.get(group)
    }

    pub fn get(&self, group: &str, topic: &str, partition: i32) -> Option<&CommittedOffset> {
        self.groups.get(group)?.get(topic)?.get(&partition)
    }

    pub fn has_group(&self, group: &str) -> bool {
        self.groups.contains_key(group)
    }

    /// Whether the group has an offset committed before `before_ms`.
    pub fn has_offsets_before(&self, group: &str, before_ms: i64) -> bool {
        self.groups.get(group).is_some_and(|g| {
            g.values()
                .flat_map(|t| t.values())
                .any(|c| c.commit_timestamp_ms < before_ms)
        })
    }

    /// Every group with at least one committed offset.
    pub fn groups(&self) -> impl Iterator<Item = (&String, &GroupOffsets)> {
        self.groups.iter()
    }

    /// Every group with stored membership.
    pub fn stored_groups(&self) -> impl Iterator<Item = (&String, &StoredGroup)> {
        self.members.iter()
    }

    pub fn has_stored_group(&self, group: &str) -> bool {
        self.members.contains_key(group)
    }

    /// Applies a command from an entry written in `term`.
    pub fn apply_command(&mut self, term: u64, cmd: OffsetsCommand) -> OffsetsResponse {
        match cmd {
            OffsetsCommand::Commit { group, offsets } => {
                if offsets.is_empty() {
                    return OffsetsResponse::Ok;
                }
                let g = self.groups.entry(group).or_default();
                for c in offsets {
                    g.entry(c.topic)
                        .or_default()
                        .insert(c.partition, c.committed);
                }
            }
            OffsetsCommand::DeleteGroup { group } => {
                self.groups.remove(&group);
                self.members.remove(&group);
            }
            OffsetsCommand::DeleteOffsets { group, partitions } => {
                if let Some(g) = self.groups.get_mut(&group) {
                    for (topic, partition) in partitions {
                        if let Some(t) = g.get_mut(&topic) {
                            t.remove(&partition);
                            if t.is_empty() {
                                g.remove(&topic);
                            }
                        }
                    }
                    if g.is_empty() {
                        self.groups.remove(&group);
                    }
                }
            }
            OffsetsCommand::Expire { groups, before_ms } => {
                for group in groups {
                    let Some(g) = self.groups.get_mut(&group) else {
                        continue;
                    };
                    for t in g.values_mut() {
                        t.retain(|_, c| c.commit_timestamp_ms >= before_ms);
                    }
                    g.retain(|_, t| !t.is_empty());
                    if g.is_empty() {
                        self.groups.remove(&group);
                    }
                }
            }
            OffsetsCommand::StoreGroups {
                term: proposed_in,
                groups,
            } => {
                if proposed_in != term {
                    return OffsetsResponse::Ok;
                }
                for (group, stored) in groups {
                    match stored {
                        Some(stored) => self.members.insert(group, stored),
                        None => self.members.remove(&group),
                    };
                }
            }
        }
        OffsetsResponse::Ok
    }
}

impl ApplyState for OffsetsState {
    fn apply(&mut self, log_id: &LogId, command: &Command) -> CommandResponse {
        let response = match serde_json::from_slice::<OffsetsCommand>(&command.0) {
            Ok(cmd) => self.apply_command(log_id.leader_id.term, cmd),
            Err(err) => OffsetsResponse::Malformed(err.to_string()),
        };
        CommandResponse(Bytes::from(
            serde_json::to_vec(&response).unwrap_or_default(),
        ))
    }

    fn write_snapshot(&self, out: &mut SnapshotWriter) -> Result<(), String> {
        serde_json::to_writer(out, self).map_err(|e| e.to_string())
    }

    fn from_snapshot(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

/// Encodes a command for [`crate::types::Command`].
pub fn encode_command(cmd: &OffsetsCommand) -> Command {
    Command(Bytes::from(serde_json::to_vec(cmd).unwrap_or_default()))
}

/// Decodes the response of an applied offsets command.
pub fn decode_response(resp: &CommandResponse) -> OffsetsResponse {
    serde_json::from_slice(&resp.0)
        .unwrap_or_else(|e| OffsetsResponse::Malformed(format!("bad response: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, LogId as RaftLogId};

    fn commit(group: &str, topic: &str, partition: i32, offset: i64) -> OffsetsCommand {
        OffsetsCommand::Commit {
            group: group.into(),
            offsets: vec![PartitionCommit {
                topic: topic.into(),
                partition,
                committed: CommittedOffset {
                    offset,
                    leader_epoch: -1,
                    metadata: "m".into(),
                    commit_timestamp_ms: 1,
                },
            }],
        }
    }

    fn apply(s: &mut OffsetsState, cmd: &OffsetsCommand) -> OffsetsResponse {
        let id = RaftLogId::new(CommittedLeaderId::new(1, 1), 1);
        decode_response(&s.apply(&id, &encode_command(cmd)))
    }

    #[test]
    fn commits_overwrite_and_deletes_remove() {
        let mut s = OffsetsState::default();
        assert_eq!(apply(&mut s, &commit("g", "t", 0, 5)), OffsetsResponse::Ok);
        apply(&mut s, &commit("g", "t", 0, 9));
        apply(&mut s, &commit("g", "t", 1, 3));
        apply(&mut s, &commit("h", "t", 0, 1));
        assert_eq!(s.get("g", "t", 0).map(|c| c.offset), Some(9));
        assert_eq!(s.get("g", "t", 0).map(|c| c.metadata.as_str()), Some("m"));
        apply(
            &mut s,
            &OffsetsCommand::DeleteOffsets {
                group: "g".into(),
                partitions: vec![("t".into(), 0)],
            },
        );
        assert!(s.get("g", "t", 0).is_none());
        assert!(s.get("g", "t", 1).is_some());
        apply(&mut s, &OffsetsCommand::DeleteGroup { group: "g".into() });
        assert!(!s.has_group("g"));
        assert!(s.has_group("h"));
    }

    #[test]
    fn malformed_commands_change_nothing() {
        let mut s = OffsetsState::default();
        let id = RaftLogId::new(CommittedLeaderId::new(1, 1), 1);
        let resp = decode_response(&s.apply(&id, &Command(Bytes::from_static(b"{"))));
        assert!(matches!(resp, OffsetsResponse::Malformed(_)));
        assert_eq!(s, OffsetsState::default());
    }

    fn stored(generation: i32) -> StoredGroup {
        StoredGroup {
            generation,
            protocol_type: Some("consumer".into()),
            protocol_name: Some("range".into()),
            leader: Some("m1".into()),
            members: vec![StoredMember {
                member_id: "m1".into(),
                group_instance_id: None,
                client_id: "c".into(),
                client_host: "/127.0.0.1".into(),
                session_timeout_ms: 10_000,
                rebalance_timeout_ms: 30_000,
                protocols: vec![("range".into(), Bytes::from_static(&[0, 1, 0xff]))],
                assignment: Bytes::from_static(&[0, 1, 2]),
            }],
        }
    }

    fn apply_in(s: &mut OffsetsState, term: u64, cmd: &OffsetsCommand) -> OffsetsResponse {
        let id = RaftLogId::new(CommittedLeaderId::new(term, 1), 1);
        decode_response(&s.apply(&id, &encode_command(cmd)))
    }

    #[test]
    fn snapshot_round_trips() {
        let mut s = OffsetsState::default();
        apply(&mut s, &commit("g", "t", 2, 42));
        let store = OffsetsCommand::StoreGroups {
            term: 1,
            groups: vec![("g".into(), Some(stored(3)))],
        };
        apply(&mut s, &store);
        assert!(s.has_stored_group("g"));
        let restored =
            OffsetsState::from_snapshot(&s.to_snapshot().expect("snapshot")).expect("restore");
        assert_eq!(restored, s);
        // A snapshot from before membership was stored still loads.
        let old = OffsetsState::from_snapshot(br#"{"groups":{}}"#).expect("old snapshot");
        assert_eq!(old, OffsetsState::default());
    }

    #[test]
    fn stored_membership_only_from_its_own_term() {
        let mut s = OffsetsState::default();
        let store = |term, generation| OffsetsCommand::StoreGroups {
            term,
            groups: vec![("g".into(), Some(stored(generation)))],
        };
        apply_in(&mut s, 5, &store(5, 2));
        assert_eq!(s.stored_groups().next().map(|(_, g)| g.generation), Some(2));
        // A deposed coordinator's proposal, committed in a later term, changes nothing.
        apply_in(&mut s, 6, &store(5, 1));
        assert_eq!(s.stored_groups().next().map(|(_, g)| g.generation), Some(2));
        let forget = OffsetsCommand::StoreGroups {
            term: 6,
            groups: vec![("g".into(), None)],
        };
        apply_in(&mut s, 6, &forget);
        assert!(!s.has_stored_group("g"));
        apply_in(&mut s, 6, &store(6, 3));
        apply(&mut s, &OffsetsCommand::DeleteGroup { group: "g".into() });
        assert!(!s.has_stored_group("g"));
    }

    fn commit_at(group: &str, partition: i32, at_ms: i64) -> OffsetsCommand {
        let OffsetsCommand::Commit { group, mut offsets } = commit(group, "t", partition, 7) else {
            unreachable!("commit builds a Commit");
        };
        offsets[0].committed.commit_timestamp_ms = at_ms;
        OffsetsCommand::Commit { group, offsets }
    }

    #[test]
    fn expiry_removes_only_the_listed_groups_older_commits() {
        let mut s = OffsetsState::default();
        apply(&mut s, &commit_at("old", 0, 100));
        apply(&mut s, &commit_at("mixed", 0, 100));
        apply(&mut s, &commit_at("mixed", 1, 900));
        apply(&mut s, &commit_at("unlisted", 0, 100));
        let expire = OffsetsCommand::Expire {
            groups: vec!["old".into(), "mixed".into(), "gone".into()],
            before_ms: 500,
        };
        assert_eq!(apply(&mut s, &expire), OffsetsResponse::Ok);
        assert!(!s.has_group("old"));
        // A commit made after the coordinator decided is kept.
        assert!(s.get("mixed", "t", 0).is_none());
        assert!(s.get("mixed", "t", 1).is_some());
        assert!(s.has_group("unlisted"));
    }
}
