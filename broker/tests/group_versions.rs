//! The group APIs through the real dispatch, at every advertised version: one whole group
//! life (find coordinator, join, sync, heartbeat, commit, fetch, list, describe, leave,
//! delete) per version, checking both that every response encodes and decodes at that
//! version and that the answers mean what Kafka's would.

use std::sync::Arc;

mod common;

use bytes::Bytes;
use kafka_protocol::messages::*;

use chronik_broker::broker::Broker;
use chronik_broker::config::Config;
use chronik_broker::protocol::supported;
use common::{round_trip, s, test_config};

/// Sends one request through dispatch and decodes the response at the same version.
async fn ask(broker: &Arc<Broker>, version: i16, body: RequestKind) -> ResponseKind {
    let key = api_key(&body);
    let range = supported(key).unwrap_or_else(|| panic!("{key:?} is not advertised"));
    let version = version.clamp(range.min, range.max);
    round_trip(broker, key, version, &body).await
}

fn api_key(body: &RequestKind) -> ApiKey {
    match body {
        RequestKind::FindCoordinator(_) => ApiKey::FindCoordinator,
        RequestKind::JoinGroup(_) => ApiKey::JoinGroup,
        RequestKind::SyncGroup(_) => ApiKey::SyncGroup,
        RequestKind::Heartbeat(_) => ApiKey::Heartbeat,
        RequestKind::LeaveGroup(_) => ApiKey::LeaveGroup,
        RequestKind::OffsetCommit(_) => ApiKey::OffsetCommit,
        RequestKind::OffsetFetch(_) => ApiKey::OffsetFetch,
        RequestKind::ListGroups(_) => ApiKey::ListGroups,
        RequestKind::DescribeGroups(_) => ApiKey::DescribeGroups,
        RequestKind::DeleteGroups(_) => ApiKey::DeleteGroups,
        RequestKind::OffsetDelete(_) => ApiKey::OffsetDelete,
        RequestKind::CreateTopics(_) => ApiKey::CreateTopics,
        other => panic!("unexpected request {other:?}"),
    }
}

fn join(group: &str, member: &str, session_ms: i32) -> RequestKind {
    let mut r = JoinGroupRequest::default();
    r.group_id = GroupId(s(group));
    r.member_id = s(member);
    r.session_timeout_ms = session_ms;
    r.rebalance_timeout_ms = 10_000;
    r.protocol_type = s("consumer");
    let mut p = join_group_request::JoinGroupRequestProtocol::default();
    p.name = s("range");
    p.metadata = Bytes::from_static(b"\x00\x00\x00\x00\x00\x01\x00\x01t\xff\xff\xff\xff");
    r.protocols = vec![p];
    RequestKind::JoinGroup(r)
}

async fn group_life(broker: &Arc<Broker>, v: i16) {
    let group = format!("g-v{v}");

    // FindCoordinator: this node for groups; transactions are not coordinated here.
    let mut find = FindCoordinatorRequest::default();
    if v >= 4 {
        find.coordinator_keys = vec![s(&group), s("other")];
    } else {
        find.key = s(&group);
    }
    let ResponseKind::FindCoordinator(r) =
        ask(broker, v, RequestKind::FindCoordinator(find.clone())).await
    else {
        unreachable!()
    };
    if v >= 4 {
        assert_eq!(r.coordinators.len(), 2);
        assert!(r
            .coordinators
            .iter()
            .all(|c| c.error_code == 0 && c.node_id.0 == 1));
    } else {
        assert_eq!((r.error_code, r.node_id.0), (0, 1));
    }
    if v >= 1 {
        find.key_type = 1;
        let ResponseKind::FindCoordinator(r) =
            ask(broker, v, RequestKind::FindCoordinator(find)).await
        else {
            unreachable!()
        };
        let code = if v >= 4 {
            r.coordinators[0].error_code
        } else {
            r.error_code
        };
        assert_eq!(
            code, 53,
            "no transaction coordinator: TRANSACTIONAL_ID_AUTHORIZATION_FAILED, fatal at once"
        );
    }

    // A session timeout under the minimum, and an empty group id.
    let ResponseKind::JoinGroup(r) = ask(broker, v, join(&group, "", 1000)).await else {
        unreachable!()
    };
    assert_eq!(r.error_code, 26);
    let ResponseKind::JoinGroup(r) = ask(broker, v, join("", "", 10_000)).await else {
        unreachable!()
    };
    assert_eq!(r.error_code, 24);

    // Join (with the v4+ member-id handshake), then sync as the only member and leader.
    let ResponseKind::JoinGroup(mut r) = ask(broker, v, join(&group, "", 10_000)).await else {
        unreachable!()
    };
    if v >= 4 {
        assert_eq!(r.error_code, 79, "MEMBER_ID_REQUIRED");
        let ResponseKind::JoinGroup(again) =
            ask(broker, v, join(&group, r.member_id.as_str(), 10_000)).await
        else {
            unreachable!()
        };
        r = again;
    }
    assert_eq!(r.error_code, 0, "join v{v}");
    assert_eq!(r.generation_id, 1);
    assert_eq!(r.leader, r.member_id);
    assert_eq!(r.members.len(), 1);
    let member = r.member_id.to_string();

    let mut sync = SyncGroupRequest::default();
    sync.group_id = GroupId(s(&group));
    sync.member_id = s(&member);
    sync.generation_id = 1;
    let mut a = sync_group_request::SyncGroupRequestAssignment::default();
    a.member_id = s(&member);
    a.assignment = Bytes::from_static(b"assignment");
    sync.assignments = vec![a];
    let ResponseKind::SyncGroup(r) = ask(broker, v, RequestKind::SyncGroup(sync)).await else {
        unreachable!()
    };
    assert_eq!(r.error_code, 0);
    assert_eq!(r.assignment, Bytes::from_static(b"assignment"));

    let mut hb = HeartbeatRequest::default();
    hb.group_id = GroupId(s(&group));
    hb.member_id = s(&member);
    hb.generation_id = 1;
    let ResponseKind::Heartbeat(r) = ask(broker, v, RequestKind::Heartbeat(hb.clone())).await
    else {
        unreachable!()
    };
    assert_eq!(r.error_code, 0);
    hb.generation_id = 5;
    let ResponseKind::Heartbeat(r) = ask(broker, v, RequestKind::Heartbeat(hb.clone())).await
    else {
        unreachable!()
    };
    assert_eq!(r.error_code, 22, "ILLEGAL_GENERATION");
    hb.member_id = s("nobody");
    let ResponseKind::Heartbeat(r) = ask(broker, v, RequestKind::Heartbeat(hb)).await else {
        unreachable!()
    };
    assert_eq!(r.error_code, 25, "UNKNOWN_MEMBER_ID");

    // Commit: partition 0 is fine, partition 7 and an unknown topic are not.
    let mut commit = OffsetCommitRequest::default();
    commit.group_id = GroupId(s(&group));
    commit.member_id = s(&member);
    commit.generation_id_or_member_epoch = 1;
    let part = |i: i32, offset: i64| {
        let mut p = offset_commit_request::OffsetCommitRequestPartition::default();
        p.partition_index = i;
        p.committed_offset = offset;
        p.committed_metadata = Some(s("meta"));
        p
    };
    let mut t = offset_commit_request::OffsetCommitRequestTopic::default();
    t.name = TopicName(s("t"));
    t.partitions = vec![part(0, 42), part(7, 1)];
    let mut missing = offset_commit_request::OffsetCommitRequestTopic::default();
    missing.name = TopicName(s("missing"));
    missing.partitions = vec![part(0, 1)];
    commit.topics = vec![t, missing];
    let ResponseKind::OffsetCommit(r) = ask(broker, v, RequestKind::OffsetCommit(commit)).await
    else {
        unreachable!()
    };
    let codes: Vec<Vec<i16>> = r
        .topics
        .iter()
        .map(|t| t.partitions.iter().map(|p| p.error_code).collect())
        .collect();
    assert_eq!(codes, vec![vec![0, 3], vec![3]], "commit v{v}");

    // Fetch: the single-group form before v8, the multi-group form from v8.
    let mut fetch = OffsetFetchRequest::default();
    if v >= 8 {
        let mut g = offset_fetch_request::OffsetFetchRequestGroup::default();
        g.group_id = GroupId(s(&group));
        g.topics = None;
        let mut other = offset_fetch_request::OffsetFetchRequestGroup::default();
        other.group_id = GroupId(s("never-committed"));
        let mut t = offset_fetch_request::OffsetFetchRequestTopics::default();
        t.name = TopicName(s("t"));
        t.partition_indexes = vec![0];
        other.topics = Some(vec![t]);
        fetch.groups = vec![g, other];
    } else {
        fetch.group_id = GroupId(s(&group));
        let mut t = offset_fetch_request::OffsetFetchRequestTopic::default();
        t.name = TopicName(s("t"));
        t.partition_indexes = vec![0, 1];
        fetch.topics = Some(vec![t]);
    }
    let ResponseKind::OffsetFetch(r) = ask(broker, v, RequestKind::OffsetFetch(fetch)).await else {
        unreachable!()
    };
    if v >= 8 {
        assert_eq!(r.groups.len(), 2);
        let p = &r.groups[0].topics[0].partitions[0];
        assert_eq!((p.partition_index, p.committed_offset), (0, 42));
        assert_eq!(p.metadata.as_deref(), Some("meta"));
        assert_eq!(r.groups[1].topics[0].partitions[0].committed_offset, -1);
    } else {
        let offsets: Vec<i64> = r.topics[0]
            .partitions
            .iter()
            .map(|p| p.committed_offset)
            .collect();
        assert_eq!(offsets, vec![42, -1], "fetch v{v}");
    }

    let ResponseKind::ListGroups(r) = ask(
        broker,
        v,
        RequestKind::ListGroups(ListGroupsRequest::default()),
    )
    .await
    else {
        unreachable!()
    };
    assert!(r.groups.iter().any(|g| g.group_id.0.as_str() == group));

    let mut describe = DescribeGroupsRequest::default();
    describe.groups = vec![GroupId(s(&group)), GroupId(s("no-such-group"))];
    if v >= 3 {
        describe.include_authorized_operations = true;
    }
    let ResponseKind::DescribeGroups(r) =
        ask(broker, v, RequestKind::DescribeGroups(describe)).await
    else {
        unreachable!()
    };
    assert_eq!(r.groups[0].group_state.as_str(), "Stable");
    assert_eq!(r.groups[0].members.len(), 1);
    // As Kafka shows a client's address.
    assert_eq!(r.groups[0].members[0].client_host.as_str(), "/127.0.0.1");
    // Without an authorizer every group operation is allowed: READ, DELETE, DESCRIBE.
    let ops = if v >= 3 {
        (1 << 3) | (1 << 6) | (1 << 8)
    } else {
        i32::MIN
    };
    assert_eq!(r.groups[0].authorized_operations, ops);
    assert_eq!(
        r.groups[0].members[0].member_assignment,
        Bytes::from_static(b"assignment")
    );
    assert_eq!(r.groups[1].group_state.as_str(), "Dead");
    assert_eq!(r.groups[1].error_code, if v >= 6 { 69 } else { 0 });

    // A group with members cannot be deleted.
    let mut delete = DeleteGroupsRequest::default();
    delete.groups_names = vec![GroupId(s(&group))];
    let ResponseKind::DeleteGroups(r) =
        ask(broker, v, RequestKind::DeleteGroups(delete.clone())).await
    else {
        unreachable!()
    };
    assert_eq!(r.results[0].error_code, 68, "NON_EMPTY_GROUP");

    let mut leave = LeaveGroupRequest::default();
    leave.group_id = GroupId(s(&group));
    if v >= 3 {
        let mut m = leave_group_request::MemberIdentity::default();
        m.member_id = s(&member);
        let mut ghost = leave_group_request::MemberIdentity::default();
        ghost.member_id = s("ghost");
        leave.members = vec![m, ghost];
    } else {
        leave.member_id = s(&member);
    }
    let ResponseKind::LeaveGroup(r) = ask(broker, v, RequestKind::LeaveGroup(leave)).await else {
        unreachable!()
    };
    if v >= 3 {
        let codes: Vec<i16> = r.members.iter().map(|m| m.error_code).collect();
        assert_eq!(codes, vec![0, 25]);
    } else {
        assert_eq!(r.error_code, 0);
    }

    // Now empty: its offsets can be deleted, then the group itself.
    let mut od = OffsetDeleteRequest::default();
    od.group_id = GroupId(s(&group));
    let mut t = offset_delete_request::OffsetDeleteRequestTopic::default();
    t.name = TopicName(s("t"));
    let mut p = offset_delete_request::OffsetDeleteRequestPartition::default();
    p.partition_index = 1;
    t.partitions = vec![p];
    od.topics = vec![t];
    let ResponseKind::OffsetDelete(r) = ask(broker, v, RequestKind::OffsetDelete(od)).await else {
        unreachable!()
    };
    assert_eq!(r.error_code, 0);
    let ResponseKind::DeleteGroups(r) =
        ask(broker, v, RequestKind::DeleteGroups(delete.clone())).await
    else {
        unreachable!()
    };
    assert_eq!(r.results[0].error_code, 0);
    let ResponseKind::DeleteGroups(r) = ask(broker, v, RequestKind::DeleteGroups(delete)).await
    else {
        unreachable!()
    };
    assert_eq!(r.results[0].error_code, 69, "GROUP_ID_NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_lives_and_dies_at_every_advertised_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        group_initial_rebalance_delay_ms: 10,
        ..test_config(dir.path())
    };
    let broker = chronik_broker::serve::open(config).await.expect("open");
    let mut create = CreateTopicsRequest::default();
    let mut t = create_topics_request::CreatableTopic::default();
    t.name = TopicName(s("t"));
    t.num_partitions = 2;
    t.replication_factor = 1;
    create.topics = vec![t];
    create.timeout_ms = 5_000;
    ask(&broker, 7, RequestKind::CreateTopics(create)).await;
    assert!(
        broker
            .partitions
            .wait_ready("t", 2, std::time::Duration::from_secs(10))
            .await
    );
    // 0..=9 covers every version of every group API (each is clamped to its range).
    for v in 0..=9 {
        group_life(&broker, v).await;
    }
}
