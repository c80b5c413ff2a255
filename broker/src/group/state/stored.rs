//! A [`Group`]'s durable form: what a coordinator stores when a rebalance completes or the
//! group empties ([`StoredGroup`]), and the group a new coordinator loads from it.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use chronik_metastore::offsets::{StoredGroup, StoredMember};

use super::{Group, GroupConfig, GroupStateKind, Member};

impl Group {
    /// The group as a new coordinator loads it: Stable with the stored members and their
    /// assignments, each given a full session from `now` to heartbeat the new coordinator
    /// (as Kafka does when it loads a group); or Empty with the stored generation.
    pub fn restore(
        group_id: impl Into<String>,
        config: GroupConfig,
        stored: &StoredGroup,
        now: Instant,
    ) -> Group {
        let mut g = Group::new(group_id, config);
        g.generation = stored.generation;
        g.protocol_type = stored.protocol_type.clone();
        if stored.members.is_empty() {
            return g;
        }
        g.protocol_name = stored.protocol_name.clone();
        for m in &stored.members {
            let session_timeout = Duration::from_millis(m.session_timeout_ms);
            let member = Member {
                member_id: m.member_id.clone(),
                group_instance_id: m.group_instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                session_timeout,
                rebalance_timeout: Duration::from_millis(m.rebalance_timeout_ms),
                protocols: m.protocols.clone(),
                assignment: m.assignment.clone(),
                awaiting_join: false,
                awaiting_sync: false,
                session_deadline: now + session_timeout,
            };
            if let Some(instance) = &member.group_instance_id {
                g.static_members
                    .insert(instance.clone(), member.member_id.clone());
            }
            g.members.insert(member.member_id.clone(), member);
        }
        g.leader = stored.leader.clone().filter(|l| g.members.contains_key(l));
        g.state = GroupStateKind::Stable;
        g
    }

    /// Identifies the group's durable form, when it has one (Stable or Empty; a group in a
    /// rebalance keeps its last stored form): it changes whenever that form does, so the
    /// coordinator stores the group only then, not on every request.
    pub fn durable_key(&self) -> Option<u64> {
        if !matches!(self.state, GroupStateKind::Stable | GroupStateKind::Empty) {
            return None;
        }
        let mut h = DefaultHasher::new();
        (self.state == GroupStateKind::Stable).hash(&mut h);
        self.generation.hash(&mut h);
        self.protocol_type.hash(&mut h);
        self.leader.hash(&mut h);
        // Member ids change with a static member's replacement, which keeps the generation.
        for id in self.members.keys() {
            id.hash(&mut h);
        }
        Some(h.finish())
    }

    /// The group's durable form (see [`Group::durable_key`]).
    pub fn durable(&self) -> Option<StoredGroup> {
        self.durable_key()?;
        Some(StoredGroup {
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader: self.leader.clone(),
            members: self
                .members
                .values()
                .map(|m| StoredMember {
                    member_id: m.member_id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    session_timeout_ms: m.session_timeout.as_millis() as u64,
                    rebalance_timeout_ms: m.rebalance_timeout.as_millis() as u64,
                    protocols: m.protocols.clone(),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        })
    }
}
