//! Tests of the pure group state machine: requests and ticks in, answers out; time is a
//! plain `Instant` the test moves forward.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::state::{Action, Group, GroupConfig, GroupStateKind, JoinRequest, JoinResult};
use crate::errors::code;

const SESSION_MS: i32 = 10_000;
const REBALANCE_MS: i32 = 20_000;

fn config() -> GroupConfig {
    GroupConfig {
        min_session_timeout: Duration::from_millis(6_000),
        max_session_timeout: Duration::from_millis(60_000),
        initial_rebalance_delay: Duration::from_millis(300),
        ..GroupConfig::default()
    }
}

fn req(member_id: &str, protocols: &[&str]) -> JoinRequest {
    JoinRequest {
        member_id: member_id.into(),
        group_instance_id: None,
        client_id: "c".into(),
        client_host: "h".into(),
        session_timeout_ms: SESSION_MS,
        rebalance_timeout_ms: REBALANCE_MS,
        protocol_type: "consumer".into(),
        protocols: protocols
            .iter()
            .map(|p| (p.to_string(), Bytes::from(format!("meta-{p}"))))
            .collect(),
        require_known_member_id: true,
    }
}

fn static_req(instance: &str) -> JoinRequest {
    let mut r = req("", &["range"]);
    r.group_instance_id = Some(instance.into());
    r
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Joins a new dynamic member through the MEMBER_ID_REQUIRED handshake; returns its id
/// (its second join stays parked).
fn join_new(g: &mut Group, now: Instant, fresh: &str) -> String {
    let first = g.join(req("", &["range"]), now, fresh);
    let r = first.reply.expect("immediate answer");
    assert_eq!(r.error, code::MEMBER_ID_REQUIRED);
    let id = r.member_id;
    let second = g.join(req(&id, &["range"]), now, "unused");
    assert!(second.reply.is_none(), "second join parks");
    assert_eq!(second.parked_as.as_deref(), Some(id.as_str()));
    id
}

fn joins(actions: &[Action]) -> Vec<(String, JoinResult)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Join(m, r) => Some((m.clone(), r.clone())),
            _ => None,
        })
        .collect()
}

/// A one-member group, stable at generation 1 with `assignment`.
fn stable_one(now: Instant) -> (Group, String) {
    let mut g = Group::new("g", config());
    let a = join_new(&mut g, now, "a");
    let done = g.tick(now + ms(300));
    assert_eq!(joins(&done).len(), 1);
    let sync = g.sync(
        &a,
        None,
        1,
        None,
        None,
        vec![(a.clone(), Bytes::from("A"))],
        now,
    );
    assert_eq!(
        sync.reply.expect("leader sync answers").assignment,
        Bytes::from("A")
    );
    assert_eq!(g.state(), GroupStateKind::Stable);
    (g, a)
}

#[test]
fn first_rebalance_waits_the_initial_delay_then_the_leader_gets_the_members() {
    let t0 = Instant::now();
    let mut g = Group::new("g", config());
    let a = join_new(&mut g, t0, "a");
    assert_eq!(g.state(), GroupStateKind::PreparingRebalance);
    // Nothing completes before the initial delay, even though everyone has joined.
    assert!(g.tick(t0 + ms(100)).is_empty());
    let b = join_new(&mut g, t0 + ms(200), "b");
    // b's join extended the delay to 200 + 300 ms.
    assert!(g.tick(t0 + ms(400)).is_empty());
    let done = joins(&g.tick(t0 + ms(500)));
    assert_eq!(done.len(), 2);
    let leader = g.leader().expect("leader").to_string();
    for (member, r) in &done {
        assert_eq!(r.error, code::NONE);
        assert_eq!(r.generation, 1);
        assert_eq!(r.protocol_name.as_deref(), Some("range"));
        assert_eq!(r.leader, leader);
        assert_eq!(r.members.len(), if *member == leader { 2 } else { 0 });
    }
    assert_eq!(g.state(), GroupStateKind::CompletingRebalance);

    // The follower's sync waits for the leader's.
    let follower = if leader == a { b.clone() } else { a.clone() };
    let parked = g.sync(&follower, None, 1, None, None, vec![], t0 + ms(600));
    assert!(parked.reply.is_none());
    let assignments = vec![(a.clone(), Bytes::from("A")), (b.clone(), Bytes::from("B"))];
    let lead = g.sync(
        &leader,
        None,
        1,
        Some("consumer"),
        Some("range"),
        assignments,
        t0 + ms(700),
    );
    let mine = lead.reply.expect("leader answered at once");
    assert_eq!(mine.error, code::NONE);
    assert_eq!(lead.actions.len(), 1, "the parked follower is answered");
    match &lead.actions[0] {
        Action::Sync(m, r) => {
            assert_eq!(m, &follower);
            assert_eq!(
                r.assignment,
                Bytes::from(if follower == a { "A" } else { "B" })
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(g.state(), GroupStateKind::Stable);
    assert_eq!(g.rebalances(), 1);
}

#[test]
fn a_new_member_rebalances_a_stable_group_and_completes_when_all_rejoined() {
    let t0 = Instant::now();
    let (mut g, a) = stable_one(t0);
    let b = join_new(&mut g, t0 + ms(1000), "b");
    assert_eq!(g.state(), GroupStateKind::PreparingRebalance);
    assert_eq!(
        g.heartbeat(&a, None, 1, t0 + ms(1100)),
        code::REBALANCE_IN_PROGRESS
    );
    // A commit from the old generation is still accepted while preparing.
    assert_eq!(g.check_commit(&a, None, 1, t0 + ms(1100)), Ok(()));
    let out = g.join(req(&a, &["range"]), t0 + ms(1200), "x");
    // a was the last one missing: its own answer comes back at once, b's as an action.
    let mine = out.reply.expect("completed by this join");
    assert_eq!(mine.generation, 2);
    assert_eq!(joins(&out.actions)[0].0, b);
    assert_eq!(
        g.leader(),
        Some(a.as_str()),
        "the leader that rejoined stays leader"
    );
    assert_eq!(mine.members.len(), 2);
}

#[test]
fn an_expired_session_removes_the_member_and_survivors_rebalance() {
    let t0 = Instant::now();
    let (mut g, a) = stable_one(t0);
    let b = join_new(&mut g, t0, "b");
    let out = g.join(req(&a, &["range"]), t0, "x");
    assert!(out.reply.is_some());
    g.sync(&a, None, 2, None, None, vec![], t0);
    assert_eq!(g.state(), GroupStateKind::Stable);
    // b heartbeats, a goes silent.
    let t = t0 + ms(9_000);
    assert_eq!(g.heartbeat(&b, None, 2, t), code::NONE);
    assert_eq!(g.next_deadline(), Some(t0 + ms(SESSION_MS as u64)));
    assert!(g.tick(t0 + ms(SESSION_MS as u64)).is_empty());
    assert_eq!(g.member_count(), 1);
    assert_eq!(g.state(), GroupStateKind::PreparingRebalance);
    assert_eq!(g.heartbeat(&a, None, 2, t), code::UNKNOWN_MEMBER_ID);
    let done = g.join(req(&b, &["range"]), t0 + ms(10_500), "x");
    let r = done.reply.expect("b alone completes the rebalance");
    assert_eq!((r.generation, r.leader.as_str()), (3, b.as_str()));
}

#[test]
fn members_that_do_not_rejoin_are_dropped_at_the_rebalance_timeout() {
    let t0 = Instant::now();
    let (mut g, a) = stable_one(t0);
    let b = join_new(&mut g, t0, "b");
    // a keeps heartbeating but never rejoins.
    for i in 1..=3 {
        let t = t0 + ms(i * 5_000);
        assert_eq!(g.heartbeat(&a, None, 1, t), code::REBALANCE_IN_PROGRESS);
        g.tick(t);
    }
    let done = joins(&g.tick(t0 + ms(REBALANCE_MS as u64)));
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].0, b);
    assert_eq!(done[0].1.leader, b);
    assert_eq!(g.member_count(), 1);
    assert_eq!(
        g.heartbeat(&a, None, 2, t0 + ms(21_000)),
        code::UNKNOWN_MEMBER_ID
    );
}

#[test]
fn fencing_codes() {
    let t0 = Instant::now();
    let (mut g, a) = stable_one(t0);
    assert_eq!(g.heartbeat("nobody", None, 1, t0), code::UNKNOWN_MEMBER_ID);
    assert_eq!(g.heartbeat(&a, None, 7, t0), code::ILLEGAL_GENERATION);
    assert_eq!(
        g.check_commit(&a, None, 0, t0),
        Err(code::ILLEGAL_GENERATION)
    );
    assert_eq!(
        g.check_commit("", None, -1, t0),
        Err(code::UNKNOWN_MEMBER_ID)
    );
    let sync = g
        .sync(&a, None, 9, None, None, vec![], t0)
        .reply
        .expect("answer");
    assert_eq!(sync.error, code::ILLEGAL_GENERATION);
    let wrong = g
        .sync(&a, None, 1, Some("connect"), None, vec![], t0)
        .reply
        .expect("answer");
    assert_eq!(wrong.error, code::INCONSISTENT_GROUP_PROTOCOL);
    // A rebalance in progress: sync answers REBALANCE_IN_PROGRESS.
    join_new(&mut g, t0, "b");
    let sync = g
        .sync(&a, None, 1, None, None, vec![], t0)
        .reply
        .expect("answer");
    assert_eq!(sync.error, code::REBALANCE_IN_PROGRESS);
    // A known member id that is not in the group.
    let r = g
        .join(req("ghost", &["range"]), t0, "x")
        .reply
        .expect("answer");
    assert_eq!(r.error, code::UNKNOWN_MEMBER_ID);
}

#[test]
fn bad_joins_get_kafka_codes_and_change_nothing() {
    let t0 = Instant::now();
    let (mut g, _a) = stable_one(t0);
    let mut short = req("", &["range"]);
    short.session_timeout_ms = 5_999;
    let r = g.join(short, t0, "x").reply.expect("answer");
    assert_eq!(r.error, code::INVALID_SESSION_TIMEOUT);
    let mut long = req("", &["range"]);
    long.session_timeout_ms = 60_001;
    assert_eq!(
        g.join(long, t0, "x").reply.map(|r| r.error),
        Some(code::INVALID_SESSION_TIMEOUT)
    );
    let mut other_type = req("", &["range"]);
    other_type.protocol_type = "connect".into();
    let r = g.join(other_type, t0, "x").reply.expect("answer");
    assert_eq!(r.error, code::INCONSISTENT_GROUP_PROTOCOL);
    let r = g
        .join(req("", &["roundrobin"]), t0, "x")
        .reply
        .expect("answer");
    assert_eq!(r.error, code::INCONSISTENT_GROUP_PROTOCOL);
    let r = g.join(req("", &[]), t0, "x").reply.expect("answer");
    assert_eq!(r.error, code::INCONSISTENT_GROUP_PROTOCOL);
    assert_eq!(g.state(), GroupStateKind::Stable);
    assert_eq!(g.member_count(), 1);
    // Any non-empty protocol type may start a group.
    let mut fresh = Group::new("h", config());
    let mut connect = req("", &["default"]);
    connect.protocol_type = "connect".into();
    connect.require_known_member_id = false;
    assert!(fresh.join(connect, t0, "x").parked_as.is_some());
}

#[test]
fn static_member_rejoining_a_stable_group_keeps_its_assignment_without_rebalance() {
    let t0 = Instant::now();
    let mut g = Group::new("g", config());
    let first = g.join(static_req("i1"), t0, "one");
    let old_id = first
        .parked_as
        .expect("static members skip MEMBER_ID_REQUIRED");
    assert!(old_id.starts_with("i1-"));
    g.tick(t0 + ms(300));
    g.sync(
        &old_id,
        Some("i1"),
        1,
        None,
        None,
        vec![(old_id.clone(), Bytes::from("P"))],
        t0,
    );
    assert_eq!(g.state(), GroupStateKind::Stable);

    // The process restarts: a fresh join with the same instance id and no member id. Its
    // protocol metadata differs (cooperative-sticky lists owned partitions, and a new
    // process owns none): the protocol names decide, as in Kafka.
    let mut restarted = static_req("i1");
    restarted.protocols[0].1 = Bytes::from("meta-range-owning-nothing");
    let again = g.join(restarted, t0 + ms(2_000), "two");
    let r = again.reply.expect("answered at once, no rebalance");
    assert_eq!(r.error, code::NONE);
    assert_eq!(r.generation, 1);
    assert_ne!(r.member_id, old_id);
    assert_eq!(
        r.leader, old_id,
        "the old leader id, so it does not reassign"
    );
    assert!(r.members.is_empty());
    assert_eq!(g.state(), GroupStateKind::Stable);
    assert_eq!(g.rebalances(), 1);
    let sync = g
        .sync(&r.member_id, Some("i1"), 1, None, None, vec![], t0)
        .reply
        .expect("sync");
    assert_eq!(sync.assignment, Bytes::from("P"));
    // The old incarnation is fenced.
    assert_eq!(
        g.heartbeat(&old_id, Some("i1"), 1, t0),
        code::FENCED_INSTANCE_ID
    );
    let (left, _) = g.leave(&old_id, Some("i1"), t0);
    assert_eq!(left.error, code::FENCED_INSTANCE_ID);
}

#[test]
fn leave_removes_members_and_reports_unknown_ones() {
    let t0 = Instant::now();
    let (mut g, a) = stable_one(t0);
    let (unknown, _) = g.leave("ghost", None, t0);
    assert_eq!(unknown.error, code::UNKNOWN_MEMBER_ID);
    let (left, _) = g.leave(&a, None, t0);
    assert_eq!(left.error, code::NONE);
    // The last member left: the rebalance completes with nobody and the group is empty.
    assert_eq!(g.state(), GroupStateKind::Empty);
    assert_eq!(g.generation(), 2);
    assert_eq!(g.check_commit("", None, -1, t0), Ok(()));
    assert_eq!(g.delete(), Ok(()));
    assert_eq!(g.state(), GroupStateKind::Dead);
}

#[test]
fn a_leader_that_never_syncs_is_dropped_after_the_rebalance_timeout() {
    let t0 = Instant::now();
    let mut g = Group::new("g", config());
    let a = join_new(&mut g, t0, "a");
    let b = join_new(&mut g, t0, "b");
    g.tick(t0 + ms(300));
    let leader = g.leader().expect("leader").to_string();
    let follower = if leader == a { b } else { a };
    assert!(g
        .sync(&follower, None, 1, None, None, vec![], t0 + ms(400))
        .reply
        .is_none());
    g.tick(t0 + ms(300 + REBALANCE_MS as u64));
    assert_eq!(g.member_count(), 1);
    assert!(g.members().all(|m| m.member_id == follower));
    // The parked follower was told to rejoin.
    assert_eq!(g.state(), GroupStateKind::PreparingRebalance);
}

#[test]
fn the_protocol_most_members_prefer_wins() {
    let t0 = Instant::now();
    let mut g = Group::new("g", config());
    let mut ids = Vec::new();
    for (fresh, protos) in [
        ("a", &["range", "cooperative-sticky"][..]),
        ("b", &["cooperative-sticky", "range"][..]),
        ("c", &["cooperative-sticky", "range", "roundrobin"][..]),
    ] {
        let mut r = req("", protos);
        r.require_known_member_id = false;
        ids.push(g.join(r, t0, fresh).parked_as.expect("parked"));
    }
    let done = joins(&g.tick(t0 + ms(300)));
    assert_eq!(done.len(), 3);
    assert_eq!(g.protocol_name(), Some("cooperative-sticky"));
    let leader = done
        .iter()
        .find(|(_, r)| !r.members.is_empty())
        .expect("leader");
    assert!(leader
        .1
        .members
        .iter()
        .all(|(_, _, m)| m == &Bytes::from("meta-cooperative-sticky")));
}

#[test]
fn pending_member_ids_expire_and_do_not_block_forever() {
    let t0 = Instant::now();
    let (mut g, a) = stable_one(t0);
    // Someone asks for a member id and never comes back.
    let r = g.join(req("", &["range"]), t0, "p").reply.expect("answer");
    assert_eq!(r.error, code::MEMBER_ID_REQUIRED);
    assert_eq!(
        g.state(),
        GroupStateKind::Stable,
        "a pending id alone does not rebalance"
    );
    g.tick(t0 + ms(SESSION_MS as u64 - 1));
    assert_eq!(
        g.heartbeat(&a, None, 1, t0 + ms(SESSION_MS as u64 - 1)),
        code::NONE
    );
    g.tick(t0 + ms(SESSION_MS as u64 + 1));
    assert!(g.next_deadline().is_some());
    assert_eq!(g.member_count(), 1);
}

#[test]
fn a_stored_stable_group_is_restored_with_members_that_keep_heartbeating() {
    let t0 = Instant::now();
    let (g, a) = stable_one(t0);
    let key = g.durable_key().expect("a stable group has a durable form");
    let stored = g.durable().expect("durable form");
    assert_eq!(stored.generation, 1);
    assert_eq!(stored.members.len(), 1);

    // A new coordinator, much later: the member gets a full session from the load.
    let t1 = t0 + ms(600_000);
    let mut r = Group::restore("g", config(), &stored, t1);
    assert_eq!(r.state(), GroupStateKind::Stable);
    assert_eq!(
        r.durable_key(),
        Some(key),
        "restoring changes nothing to store"
    );
    assert_eq!(r.heartbeat(&a, None, 1, t1 + ms(1_000)), code::NONE);
    assert_eq!(r.check_commit(&a, None, 1, t1 + ms(1_000)), Ok(()));
    let sync = r.sync(&a, None, 1, None, None, Vec::new(), t1 + ms(2_000));
    let assignment = sync.reply.expect("stable sync answers at once").assignment;
    assert_eq!(assignment, Bytes::from("A"));
    // A stale generation still has to rejoin.
    assert_eq!(r.heartbeat(&a, None, 0, t1), code::ILLEGAL_GENERATION);

    // A member that never comes back expires a session after the load, and the group
    // empties; its durable form changes to Empty with the next generation.
    assert!(r.tick(t1 + ms(SESSION_MS as u64 + 2_000)).is_empty());
    assert_eq!(r.state(), GroupStateKind::Empty);
    let empty = r.durable().expect("an empty group has a durable form");
    assert!(empty.members.is_empty());
    assert_eq!(empty.generation, 2);
    assert_eq!(empty.protocol_type.as_deref(), Some("consumer"));
    let e = Group::restore("g", config(), &empty, t1);
    assert_eq!(e.state(), GroupStateKind::Empty);
    assert_eq!(e.generation(), 2);
    assert_eq!(e.protocol_type(), Some("consumer"));
}

#[test]
fn only_stable_and_empty_groups_have_a_durable_form() {
    let t0 = Instant::now();
    let mut g = Group::new("g", config());
    let fresh = g.durable_key();
    assert!(fresh.is_some());
    join_new(&mut g, t0, "a");
    assert_eq!(g.state(), GroupStateKind::PreparingRebalance);
    assert!(g.durable_key().is_none() && g.durable().is_none());
    g.tick(t0 + ms(300));
    assert_eq!(g.state(), GroupStateKind::CompletingRebalance);
    assert!(g.durable_key().is_none());
}

#[test]
fn a_restored_static_member_is_replaced_without_rebalance_and_the_form_changes() {
    let t0 = Instant::now();
    let mut g = Group::new("g", config());
    let first = g.join(static_req("i1"), t0, "x");
    assert!(first.reply.is_none());
    g.tick(t0 + ms(300));
    let id = g.members().next().expect("member").member_id.clone();
    let sync = g.sync(
        &id,
        Some("i1"),
        1,
        None,
        None,
        vec![(id.clone(), Bytes::from_static(b"mine"))],
        t0 + ms(400),
    );
    assert_eq!(sync.reply.expect("leader sync").error, code::NONE);
    let stored = g.durable().expect("stable");

    let mut r = Group::restore("g", config(), &stored, t0 + ms(1_000));
    let key = r.durable_key();
    let rejoin = r.join(static_req("i1"), t0 + ms(1_100), "y");
    let answer = rejoin.reply.expect("static rejoin answers at once");
    assert_eq!(answer.error, code::NONE);
    assert_eq!(answer.generation, 1, "no rebalance");
    assert_eq!(r.state(), GroupStateKind::Stable);
    assert_ne!(r.durable_key(), key, "the new member id must be stored");
    let m = r.members().next().expect("member");
    assert_eq!(m.assignment, Bytes::from_static(b"mine"));
}
