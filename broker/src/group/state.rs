//! One consumer group's membership under the classic group protocol, as a pure state
//! machine: requests and timer ticks go in (with the current time), answers and answers to
//! parked requests come out as [`Action`]s. No I/O, no clock, no randomness: the runtime in
//! `coordinator.rs` passes `now` and fresh member-id suffixes, parks JoinGroup/SyncGroup
//! requests until an action answers them, and wakes the group at [`Group::next_deadline`].
//!
//! It follows Kafka's `GroupCoordinator`: states Empty → PreparingRebalance →
//! CompletingRebalance → Stable; a rebalance completes when every known member rejoined or
//! the rebalance timeout passed (members that did not rejoin are dropped, static members
//! are kept); the first rebalance of an empty group waits `initial_rebalance_delay` for more
//! members; the leader's SyncGroup carries every member's assignment; session timeouts
//! remove silent members; static members (group.instance.id) rejoining a stable group get a
//! new member id and their old assignment without a rebalance.
//!
//! Invariants: `generation` only grows; a member is awaiting a join or a sync answer, never
//! both; `static_members` maps each instance id to exactly one member in `members`.

// Early answers travel in `Err` (a JoinResult, moved once per request), not failures.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::errors::code;

mod rebalance;
mod stored;
mod types;

pub use types::*;

#[derive(Debug)]
pub struct Group {
    pub group_id: String,
    config: GroupConfig,
    state: GroupStateKind,
    generation: i32,
    protocol_type: Option<String>,
    protocol_name: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    static_members: HashMap<String, String>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, until they join or the deadline passes.
    pending_members: HashMap<String, Instant>,
    /// When the current join phase (PreparingRebalance) or sync phase (CompletingRebalance)
    /// gives up waiting.
    rebalance_deadline: Option<Instant>,
    /// During the first rebalance of an empty group: the latest the delay may be extended to.
    initial_delay_cap: Option<Instant>,
    rebalances: u64,
    out: Vec<Action>,
}

impl Group {
    pub fn new(group_id: impl Into<String>, config: GroupConfig) -> Self {
        Self {
            group_id: group_id.into(),
            config,
            state: GroupStateKind::Empty,
            generation: 0,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: BTreeMap::new(),
            static_members: HashMap::new(),
            pending_members: HashMap::new(),
            rebalance_deadline: None,
            initial_delay_cap: None,
            rebalances: 0,
            out: Vec::new(),
        }
    }

    // ---- observation --------------------------------------------------------------------

    pub fn state(&self) -> GroupStateKind {
        self.state
    }

    pub fn generation(&self) -> i32 {
        self.generation
    }

    pub fn protocol_type(&self) -> Option<&str> {
        self.protocol_type.as_deref()
    }

    pub fn protocol_name(&self) -> Option<&str> {
        self.protocol_name.as_deref()
    }

    pub fn leader(&self) -> Option<&str> {
        self.leader.as_deref()
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// Completed rebalances so far (generations that ended in CompletingRebalance).
    pub fn rebalances(&self) -> u64 {
        self.rebalances
    }

    /// Metadata of a member for the selected protocol (DescribeGroups).
    pub fn member_metadata(&self, member: &Member) -> Bytes {
        self.protocol_name
            .as_deref()
            .map(|p| member.metadata(p))
            .unwrap_or_default()
    }

    /// The earliest time [`Group::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let sessions = self
            .members
            .values()
            .filter(|m| !m.awaiting_join && !m.awaiting_sync)
            .map(|m| m.session_deadline);
        sessions
            .chain(self.pending_members.values().copied())
            .chain(self.rebalance_deadline)
            .min()
    }

    // ---- requests -----------------------------------------------------------------------

    pub fn join(&mut self, req: JoinRequest, now: Instant, fresh_id: &str) -> Outcome<JoinResult> {
        let requester = req.member_id.clone();
        let now_reply = |r: JoinResult| Outcome {
            reply: Some(r),
            parked_as: None,
            actions: Vec::new(),
        };
        if self.state == GroupStateKind::Dead {
            return now_reply(JoinResult::error(
                code::COORDINATOR_NOT_AVAILABLE,
                &requester,
            ));
        }
        let session = req.session_timeout_ms;
        if session < 0
            || Duration::from_millis(session as u64) < self.config.min_session_timeout
            || Duration::from_millis(session as u64) > self.config.max_session_timeout
        {
            return now_reply(JoinResult::error(code::INVALID_SESSION_TIMEOUT, &requester));
        }
        if req.protocol_type.is_empty() || req.protocols.is_empty() || !self.supports(&req) {
            return now_reply(JoinResult::error(
                code::INCONSISTENT_GROUP_PROTOCOL,
                &requester,
            ));
        }
        let member_id = if req.member_id.is_empty() {
            match self.join_unknown(req, now, fresh_id) {
                Ok(id) => id,
                Err(result) => return now_reply(result),
            }
        } else {
            match self.join_known(req, now) {
                Ok(id) => id,
                Err(result) => return now_reply(result),
            }
        };
        self.maybe_complete_join(now);
        self.outcome_for(&member_id, |a| match a {
            Action::Join(m, r) if *m == member_id => Ok(r),
            other => Err(other),
        })
    }

    fn supports(&self, req: &JoinRequest) -> bool {
        if self.state == GroupStateKind::Empty && self.members.is_empty() {
            return true;
        }
        if self.protocol_type.as_deref() != Some(req.protocol_type.as_str()) {
            return false;
        }
        // Some protocol every other member (and this one) supports.
        req.protocols.iter().any(|(name, _)| {
            self.members
                .values()
                .filter(|m| m.member_id != req.member_id)
                .all(|m| m.protocols.iter().any(|(n, _)| n == name))
        })
    }

    fn join_unknown(
        &mut self,
        req: JoinRequest,
        now: Instant,
        fresh_id: &str,
    ) -> Result<String, JoinResult> {
        let prefix = req.group_instance_id.as_deref().unwrap_or(&req.client_id);
        let new_id = format!("{prefix}-{fresh_id}");
        if let Some(instance) = req.group_instance_id.clone() {
            if let Some(old_id) = self.static_members.get(&instance).cloned() {
                return Ok(self.replace_static_member(&old_id, &new_id, req, now));
            }
        } else if req.require_known_member_id {
            let deadline = now + Duration::from_millis(req.session_timeout_ms as u64);
            self.pending_members.insert(new_id.clone(), deadline);
            return Err(JoinResult::error(code::MEMBER_ID_REQUIRED, &new_id));
        }
        self.add_member(&new_id, req, now);
        Ok(new_id)
    }

    fn join_known(&mut self, req: JoinRequest, now: Instant) -> Result<String, JoinResult> {
        let id = req.member_id.clone();
        if self.pending_members.remove(&id).is_some() {
            self.add_member(&id, req, now);
            return Ok(id);
        }
        if let Some(instance) = &req.group_instance_id {
            if let Some(current) = self.static_members.get(instance) {
                if *current != id {
                    return Err(JoinResult::error(code::FENCED_INSTANCE_ID, &id));
                }
            }
        }
        let Some(member) = self.members.get(&id) else {
            return Err(JoinResult::error(code::UNKNOWN_MEMBER_ID, &id));
        };
        let same = member.same_protocols(&req.protocols);
        let is_leader = self.leader.as_deref() == Some(id.as_str());
        match self.state {
            GroupStateKind::PreparingRebalance => {
                self.update_member(&id, req, now);
            }
            GroupStateKind::CompletingRebalance if same => {
                // The member missed our join answer: give it again.
                return Err(self.current_join_result(&id, is_leader));
            }
            GroupStateKind::Stable if same && !is_leader => {
                return Err(self.current_join_result(&id, false));
            }
            GroupStateKind::CompletingRebalance | GroupStateKind::Stable => {
                self.update_member(&id, req, now);
                self.prepare_rebalance(now);
            }
            GroupStateKind::Empty | GroupStateKind::Dead => {
                return Err(JoinResult::error(code::UNKNOWN_MEMBER_ID, &id));
            }
        }
        Ok(id)
    }

    fn current_join_result(&self, member_id: &str, with_members: bool) -> JoinResult {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        JoinResult {
            error: code::NONE,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            members: if with_members {
                self.members
                    .values()
                    .map(|m| {
                        (
                            m.member_id.clone(),
                            m.group_instance_id.clone(),
                            m.metadata(&protocol),
                        )
                    })
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    fn new_member(&self, id: &str, req: JoinRequest, now: Instant) -> Member {
        let session_timeout = Duration::from_millis(req.session_timeout_ms.max(0) as u64);
        let rebalance_timeout = if req.rebalance_timeout_ms > 0 {
            Duration::from_millis(req.rebalance_timeout_ms as u64)
        } else {
            session_timeout
        };
        Member {
            member_id: id.to_string(),
            group_instance_id: req.group_instance_id,
            client_id: req.client_id,
            client_host: req.client_host,
            session_timeout,
            rebalance_timeout,
            protocols: req.protocols,
            assignment: Bytes::new(),
            awaiting_join: true,
            awaiting_sync: false,
            session_deadline: now + session_timeout,
        }
    }

    fn add_member(&mut self, id: &str, req: JoinRequest, now: Instant) {
        if self.members.is_empty() {
            self.protocol_type = Some(req.protocol_type.clone());
        }
        let member = self.new_member(id, req, now);
        if let Some(instance) = &member.group_instance_id {
            self.static_members.insert(instance.clone(), id.to_string());
        }
        self.members.insert(id.to_string(), member);
        match self.state {
            GroupStateKind::Empty
            | GroupStateKind::Stable
            | GroupStateKind::CompletingRebalance => self.prepare_rebalance(now),
            GroupStateKind::PreparingRebalance => self.extend_initial_delay(now),
            GroupStateKind::Dead => {}
        }
    }

    fn update_member(&mut self, id: &str, req: JoinRequest, now: Instant) {
        if let Some(m) = self.members.get_mut(id) {
            if m.awaiting_join {
                // A second join from the same member replaces the parked one.
                self.out.push(Action::Join(
                    id.to_string(),
                    JoinResult::error(code::REBALANCE_IN_PROGRESS, id),
                ));
            }
            m.protocols = req.protocols;
            m.client_id = req.client_id;
            m.client_host = req.client_host;
            m.session_timeout = Duration::from_millis(req.session_timeout_ms.max(0) as u64);
            if req.rebalance_timeout_ms > 0 {
                m.rebalance_timeout = Duration::from_millis(req.rebalance_timeout_ms as u64);
            }
            m.awaiting_join = true;
            m.session_deadline = now + m.session_timeout;
        }
    }

    fn replace_static_member(
        &mut self,
        old_id: &str,
        new_id: &str,
        req: JoinRequest,
        now: Instant,
    ) -> String {
        let Some(old) = self.members.remove(old_id) else {
            self.add_member(new_id, req, now);
            return new_id.to_string();
        };
        if old.awaiting_join {
            self.out.push(Action::Join(
                old_id.to_string(),
                JoinResult::error(code::FENCED_INSTANCE_ID, old_id),
            ));
        }
        if old.awaiting_sync {
            self.out.push(Action::Sync(
                old_id.to_string(),
                SyncResult::error(code::FENCED_INSTANCE_ID),
            ));
        }
        let same = old.same_protocols(&req.protocols);
        let old_leader = self.leader.clone();
        let mut member = self.new_member(new_id, req, now);
        member.assignment = old.assignment.clone();
        member.awaiting_join = old.awaiting_join;
        if let Some(instance) = &member.group_instance_id {
            self.static_members
                .insert(instance.clone(), new_id.to_string());
        }
        self.members.insert(new_id.to_string(), member);
        if self.leader.as_deref() == Some(old_id) {
            self.leader = Some(new_id.to_string());
        }
        match self.state {
            GroupStateKind::Stable if same => {
                // Same subscription: keep the assignment, no rebalance. Answer with the old
                // leader id so a returning leader does not run a pointless assignment.
                let mut result = self.current_join_result(new_id, false);
                result.leader = old_leader.unwrap_or_default();
                if let Some(m) = self.members.get_mut(new_id) {
                    m.awaiting_join = false;
                }
                self.out.push(Action::Join(new_id.to_string(), result));
            }
            GroupStateKind::Stable | GroupStateKind::CompletingRebalance => {
                if let Some(m) = self.members.get_mut(new_id) {
                    m.awaiting_join = true;
                }
                self.prepare_rebalance(now);
            }
            _ => {
                if let Some(m) = self.members.get_mut(new_id) {
                    m.awaiting_join = true;
                }
            }
        }
        new_id.to_string()
    }

    #[allow(clippy::too_many_arguments)] // SyncGroup's fields, one to one
    pub fn sync(
        &mut self,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation: i32,
        protocol_type: Option<&str>,
        protocol_name: Option<&str>,
        assignments: Vec<(String, Bytes)>,
        now: Instant,
    ) -> Outcome<SyncResult> {
        let now_reply = |e: i16| Outcome {
            reply: Some(SyncResult::error(e)),
            parked_as: None,
            actions: Vec::new(),
        };
        if self.state == GroupStateKind::Dead {
            return now_reply(code::COORDINATOR_NOT_AVAILABLE);
        }
        if let Err(e) = self.check_member(member_id, group_instance_id) {
            return now_reply(e);
        }
        if generation != self.generation {
            return now_reply(code::ILLEGAL_GENERATION);
        }
        if protocol_type.is_some_and(|p| Some(p) != self.protocol_type.as_deref())
            || protocol_name.is_some_and(|p| Some(p) != self.protocol_name.as_deref())
        {
            return now_reply(code::INCONSISTENT_GROUP_PROTOCOL);
        }
        match self.state {
            GroupStateKind::Empty | GroupStateKind::Dead => now_reply(code::UNKNOWN_MEMBER_ID),
            GroupStateKind::PreparingRebalance => now_reply(code::REBALANCE_IN_PROGRESS),
            GroupStateKind::Stable => {
                let assignment = self
                    .members
                    .get(member_id)
                    .map(|m| m.assignment.clone())
                    .unwrap_or_default();
                if let Some(m) = self.members.get_mut(member_id) {
                    m.session_deadline = now + m.session_timeout;
                }
                Outcome {
                    reply: Some(self.sync_result(assignment)),
                    parked_as: None,
                    actions: Vec::new(),
                }
            }
            GroupStateKind::CompletingRebalance => {
                if let Some(m) = self.members.get_mut(member_id) {
                    if m.awaiting_sync {
                        self.out.push(Action::Sync(
                            member_id.to_string(),
                            SyncResult::error(code::REBALANCE_IN_PROGRESS),
                        ));
                    }
                    m.awaiting_sync = true;
                }
                if self.leader.as_deref() == Some(member_id) {
                    let mut given: HashMap<String, Bytes> = assignments.into_iter().collect();
                    for m in self.members.values_mut() {
                        m.assignment = given.remove(&m.member_id).unwrap_or_default();
                    }
                    self.state = GroupStateKind::Stable;
                    self.rebalance_deadline = None;
                    let waiting: Vec<String> = self
                        .members
                        .values()
                        .filter(|m| m.awaiting_sync)
                        .map(|m| m.member_id.clone())
                        .collect();
                    for id in waiting {
                        let assignment = match self.members.get_mut(&id) {
                            Some(m) => {
                                m.awaiting_sync = false;
                                m.session_deadline = now + m.session_timeout;
                                m.assignment.clone()
                            }
                            None => continue,
                        };
                        let result = self.sync_result(assignment);
                        self.out.push(Action::Sync(id, result));
                    }
                }
                let me = member_id.to_string();
                self.outcome_for(member_id, |a| match a {
                    Action::Sync(m, r) if *m == me => Ok(r),
                    other => Err(other),
                })
            }
        }
    }

    fn sync_result(&self, assignment: Bytes) -> SyncResult {
        SyncResult {
            error: code::NONE,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            assignment,
        }
    }

    /// Takes the buffered actions, pulling out the one that answers `member_id`'s request.
    fn outcome_for<T>(
        &mut self,
        member_id: &str,
        mut pick: impl FnMut(Action) -> Result<T, Action>,
    ) -> Outcome<T> {
        let mut reply = None;
        let mut actions = Vec::new();
        for a in std::mem::take(&mut self.out) {
            if reply.is_some() {
                actions.push(a);
                continue;
            }
            match pick(a) {
                Ok(r) => reply = Some(r),
                Err(a) => actions.push(a),
            }
        }
        let parked_as = reply.is_none().then(|| member_id.to_string());
        Outcome {
            reply,
            parked_as,
            actions,
        }
    }

    fn check_member(&self, member_id: &str, instance: Option<&str>) -> Result<(), i16> {
        if let Some(instance) = instance {
            if let Some(current) = self.static_members.get(instance) {
                if current != member_id {
                    return Err(code::FENCED_INSTANCE_ID);
                }
            }
        }
        if !self.members.contains_key(member_id) {
            return Err(code::UNKNOWN_MEMBER_ID);
        }
        Ok(())
    }

    pub fn heartbeat(
        &mut self,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation: i32,
        now: Instant,
    ) -> i16 {
        if self.state == GroupStateKind::Dead {
            return code::COORDINATOR_NOT_AVAILABLE;
        }
        if let Err(e) = self.check_member(member_id, group_instance_id) {
            return e;
        }
        if generation != self.generation {
            return code::ILLEGAL_GENERATION;
        }
        if let Some(m) = self.members.get_mut(member_id) {
            m.session_deadline = now + m.session_timeout;
        }
        match self.state {
            GroupStateKind::PreparingRebalance => code::REBALANCE_IN_PROGRESS,
            GroupStateKind::Empty => code::UNKNOWN_MEMBER_ID,
            _ => code::NONE,
        }
    }

    /// LeaveGroup for one member: by member id, or (v3+) by group instance id.
    pub fn leave(
        &mut self,
        member_id: &str,
        group_instance_id: Option<&str>,
        now: Instant,
    ) -> (LeaveResult, Vec<Action>) {
        let result = |error| LeaveResult {
            member_id: member_id.to_string(),
            group_instance_id: group_instance_id.map(str::to_string),
            error,
        };
        if self.state == GroupStateKind::Dead {
            return (result(code::COORDINATOR_NOT_AVAILABLE), Vec::new());
        }
        let id = match group_instance_id {
            Some(instance) => match self.static_members.get(instance) {
                None => return (result(code::UNKNOWN_MEMBER_ID), Vec::new()),
                Some(current) if !member_id.is_empty() && current != member_id => {
                    return (result(code::FENCED_INSTANCE_ID), Vec::new())
                }
                Some(current) => current.clone(),
            },
            None => member_id.to_string(),
        };
        if self.pending_members.remove(&id).is_some() {
            return (result(code::NONE), Vec::new());
        }
        if !self.members.contains_key(&id) {
            return (result(code::UNKNOWN_MEMBER_ID), Vec::new());
        }
        self.remove_member(&id, now);
        (result(code::NONE), std::mem::take(&mut self.out))
    }

    /// OffsetCommit's membership check: `Ok(true)` to commit, `Ok(false)` for a group that
    /// only stores offsets (generation -1, no member id), else the error code.
    pub fn check_commit(
        &mut self,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation: i32,
        now: Instant,
    ) -> Result<(), i16> {
        match self.state {
            GroupStateKind::Dead => return Err(code::COORDINATOR_NOT_AVAILABLE),
            _ if generation < 0 && member_id.is_empty() => {
                return if self.state == GroupStateKind::Empty {
                    Ok(())
                } else {
                    // Kafka: a standalone commit into an active group is a stale member.
                    Err(code::UNKNOWN_MEMBER_ID)
                };
            }
            GroupStateKind::CompletingRebalance => return Err(code::REBALANCE_IN_PROGRESS),
            _ => {}
        }
        if self.pending_members.contains_key(member_id) {
            return Err(code::UNKNOWN_MEMBER_ID);
        }
        self.check_member(member_id, group_instance_id)?;
        if generation != self.generation {
            return Err(code::ILLEGAL_GENERATION);
        }
        if let Some(m) = self.members.get_mut(member_id) {
            m.session_deadline = now + m.session_timeout;
        }
        Ok(())
    }

    /// Marks the group deleted (DeleteGroups); only an empty group may be.
    pub fn delete(&mut self) -> Result<(), i16> {
        match self.state {
            GroupStateKind::Empty => {
                self.state = GroupStateKind::Dead;
                Ok(())
            }
            GroupStateKind::Dead => Err(code::GROUP_ID_NOT_FOUND),
            _ => Err(code::NON_EMPTY_GROUP),
        }
    }

    /// Forgets the group on this node: its coordinator moved away (Kafka unloads a
    /// coordinator's groups when it loses the offsets partition). Requests parked on it
    /// are answered by the caller.
    pub fn unload(&mut self) {
        self.state = GroupStateKind::Dead;
    }

    // ---- time ---------------------------------------------------------------------------

    /// Expires sessions, pending member ids and rebalance deadlines that are due at `now`.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        self.pending_members.retain(|_, deadline| *deadline > now);
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| !m.awaiting_join && !m.awaiting_sync && m.session_deadline <= now)
            .map(|m| m.member_id.clone())
            .collect();
        for id in expired {
            tracing::info!(group = %self.group_id, member = %id, "member session expired");
            self.remove_member(&id, now);
        }
        if self.rebalance_deadline.is_some_and(|d| d <= now) {
            self.rebalance_deadline = None;
            match self.state {
                GroupStateKind::PreparingRebalance => {
                    self.initial_delay_cap = None;
                    self.complete_join(now);
                }
                GroupStateKind::CompletingRebalance => {
                    // The leader (or some member) never synced: drop who did not and retry.
                    let silent: Vec<String> = self
                        .members
                        .values()
                        .filter(|m| !m.awaiting_sync)
                        .map(|m| m.member_id.clone())
                        .collect();
                    for id in silent {
                        self.remove_member(&id, now);
                    }
                }
                _ => {}
            }
        }
        self.maybe_complete_join(now);
        std::mem::take(&mut self.out)
    }

    // ---- transitions --------------------------------------------------------------------

    fn remove_member(&mut self, id: &str, now: Instant) {
        let Some(m) = self.members.remove(id) else {
            return;
        };
        if let Some(instance) = &m.group_instance_id {
            self.static_members.remove(instance);
        }
        if m.awaiting_join {
            self.out.push(Action::Join(
                id.to_string(),
                JoinResult::error(code::UNKNOWN_MEMBER_ID, id),
            ));
        }
        if m.awaiting_sync {
            self.out.push(Action::Sync(
                id.to_string(),
                SyncResult::error(code::UNKNOWN_MEMBER_ID),
            ));
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = None;
        }
        match self.state {
            GroupStateKind::Stable | GroupStateKind::CompletingRebalance => {
                self.prepare_rebalance(now);
                // The last member left: the rebalance completes at once, empty.
                self.maybe_complete_join(now);
            }
            GroupStateKind::PreparingRebalance => self.maybe_complete_join(now),
            GroupStateKind::Empty | GroupStateKind::Dead => {}
        }
    }
}
