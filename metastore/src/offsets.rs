//! Committed consumer offsets: the state machine of the offsets Raft group
//! ([`crate::types::OFFSETS_GROUP`], Kafka's `__consumer_offsets`).
//!
//! Owns, per consumer group, the last committed offset of each topic partition (with the
//! leader epoch and metadata string the client sent). Group *membership* is not here: as in
//! Kafka it lives in the coordinator's memory and is rebuilt by clients rejoining. Commits
//! and deletions go through Raft, so an acknowledged commit survives a restart or a kill -9
//! (the WAL fsyncs before the entry commits), and the whole map is part of the snapshot that
//! tiering ships to the bucket.
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
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OffsetsResponse {
    Ok,
    Malformed(String),
}

/// topic → partition → offset.
pub type GroupOffsets = BTreeMap<String, BTreeMap<i32, CommittedOffset>>;

/// Committed offsets of every group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetsState {
    groups: BTreeMap<String, GroupOffsets>,
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

    pub fn apply_command(&mut self, cmd: OffsetsCommand) -> OffsetsResponse {
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
        }
        OffsetsResponse::Ok
    }
}

impl ApplyState for OffsetsState {
    fn apply(&mut self, _log_id: &LogId, command: &Command) -> CommandResponse {
        let response = match serde_json::from_slice::<OffsetsCommand>(&command.0) {
            Ok(cmd) => self.apply_command(cmd),
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

    #[test]
    fn snapshot_round_trips() {
        let mut s = OffsetsState::default();
        apply(&mut s, &commit("g", "t", 2, 42));
        let restored =
            OffsetsState::from_snapshot(&s.to_snapshot().expect("snapshot")).expect("restore");
        assert_eq!(restored, s);
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
