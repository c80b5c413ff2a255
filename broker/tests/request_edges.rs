//! Requests at the edges of the protocol, through the real dispatch: entries named twice,
//! topics named by id, fetch sessions, transactions, endpoint types, authorized
//! operations and config descriptions. Each answer is checked against what Kafka gives.

use std::sync::Arc;

mod common;

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use chronik_broker::broker::Broker;
use common::{round_trip, s, test_config};

const INVALID_REQUEST: i16 = 42;

/// Sends a `$kind` request at `$version` and unwraps the `$kind` response; `wrapped`
/// takes a body already wrapped in its `RequestKind`.
macro_rules! ask {
    ($broker:expr, $kind:ident, $version:expr, wrapped $body:expr) => {
        match round_trip($broker, ApiKey::$kind, $version, &$body).await {
            ResponseKind::$kind(r) => r,
            other => panic!("{other:?}"),
        }
    };
    ($broker:expr, $kind:ident, $version:expr, $req:expr) => {
        ask!($broker, $kind, $version, wrapped RequestKind::$kind($req))
    };
}

fn tn(v: &str) -> TopicName {
    TopicName(s(v))
}

async fn create(broker: &Arc<Broker>, names: &[&str]) -> CreateTopicsResponse {
    let mut req = CreateTopicsRequest::default();
    for name in names {
        let mut t = create_topics_request::CreatableTopic::default();
        t.name = tn(name);
        t.num_partitions = 1;
        t.replication_factor = 1;
        req.topics.push(t);
    }
    req.timeout_ms = 5_000;
    ask!(broker, CreateTopics, 7, req)
}

async fn metadata(broker: &Arc<Broker>, topics: Vec<(Option<&str>, Uuid)>) -> MetadataResponse {
    let mut req = MetadataRequest::default();
    req.topics = Some(
        topics
            .into_iter()
            .map(|(name, id)| {
                let mut t = metadata_request::MetadataRequestTopic::default();
                t.name = name.map(tn);
                t.topic_id = id;
                t
            })
            .collect(),
    );
    ask!(broker, Metadata, 12, req)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_requests_get_kafkas_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = chronik_broker::serve::open(test_config(dir.path()))
        .await
        .expect("open");

    // CreateTopics: a name given twice is refused once, the others are created.
    let r = create(&broker, &["a", "dup", "dup"]).await;
    let codes: Vec<(String, i16)> = r
        .topics
        .iter()
        .map(|t| (t.name.0.to_string(), t.error_code))
        .collect();
    assert_eq!(
        codes,
        vec![("a".into(), 0), ("dup".into(), INVALID_REQUEST)],
        "{r:?}"
    );
    assert!(
        broker
            .partitions
            .wait_ready("a", 1, std::time::Duration::from_secs(10))
            .await
    );

    // Metadata v12 by topic id: the known id is answered with its name, an unknown one
    // with UNKNOWN_TOPIC_ID (100); a name asked twice is answered once.
    let id = metadata(&broker, vec![(Some("a"), Uuid::nil())])
        .await
        .topics[0]
        .topic_id;
    assert_ne!(id, Uuid::nil());
    let unknown = Uuid::new_v4();
    let r = metadata(
        &broker,
        vec![(None, id), (Some("a"), Uuid::nil()), (None, unknown)],
    )
    .await;
    assert_eq!(r.topics.len(), 2, "{r:?}");
    assert_eq!(r.topics[0].name, Some(tn("a")));
    assert_eq!(r.topics[0].error_code, 0);
    assert_eq!(r.topics[0].partitions.len(), 1);
    assert_eq!(
        (r.topics[1].topic_id, r.topics[1].error_code),
        (unknown, 100)
    );
    assert_eq!(r.topics[1].name, None);

    // CreatePartitions: a topic named twice is not grown twice.
    let mut req = CreatePartitionsRequest::default();
    for count in [3, 4] {
        let mut t = create_partitions_request::CreatePartitionsTopic::default();
        t.name = tn("a");
        t.count = count;
        req.topics.push(t);
    }
    req.timeout_ms = 5_000;
    let r = ask!(&broker, CreatePartitions, 3, req);
    assert_eq!(r.results.len(), 1, "{r:?}");
    assert_eq!(r.results[0].error_code, INVALID_REQUEST);
    let parts = metadata(&broker, vec![(Some("a"), Uuid::nil())])
        .await
        .topics[0]
        .partitions
        .len();
    assert_eq!(parts, 1);

    // IncrementalAlterConfigs: a key set twice in one resource, and a resource twice.
    let alter = |resources: Vec<Vec<(&str, i8, Option<&str>)>>| {
        let mut req = IncrementalAlterConfigsRequest::default();
        for configs in resources {
            let mut r = incremental_alter_configs_request::AlterConfigsResource::default();
            r.resource_type = 2;
            r.resource_name = s("a");
            for (name, op, value) in configs {
                let mut c = incremental_alter_configs_request::AlterableConfig::default();
                c.name = s(name);
                c.config_operation = op;
                c.value = value.map(s);
                r.configs.push(c);
            }
            req.resources.push(r);
        }
        RequestKind::IncrementalAlterConfigs(req)
    };
    let body = alter(vec![vec![
        ("retention.ms", 0, Some("1000")),
        ("retention.ms", 1, None),
    ]]);
    let r = ask!(&broker, IncrementalAlterConfigs, 1, wrapped body);
    assert_eq!(r.responses[0].error_code, INVALID_REQUEST, "{r:?}");
    let body = alter(vec![
        vec![("retention.ms", 0, Some("1000"))],
        vec![("retention.ms", 0, Some("2000"))],
    ]);
    let r = ask!(&broker, IncrementalAlterConfigs, 1, wrapped body);
    assert_eq!(r.responses.len(), 1, "{r:?}");
    assert_eq!(r.responses[0].error_code, INVALID_REQUEST);

    // DescribeConfigs v4: nothing was changed above; synonyms, types and documentation.
    let mut req = DescribeConfigsRequest::default();
    let mut res = describe_configs_request::DescribeConfigsResource::default();
    res.resource_type = 2;
    res.resource_name = s("a");
    res.configuration_keys = Some(vec![s("retention.ms")]);
    req.resources.push(res);
    req.include_synonyms = true;
    req.include_documentation = true;
    let r = ask!(&broker, DescribeConfigs, 4, req);
    let c = &r.results[0].configs[0];
    assert_eq!(c.value.as_ref().map(StrBytes::as_str), Some("604800000"));
    assert_eq!((c.config_source, c.config_type), (5, 5), "{c:?}");
    assert_eq!(c.synonyms.len(), 1);
    assert_eq!(c.synonyms[0].source, 5);
    assert!(c.documentation.as_ref().is_some_and(|d| !d.is_empty()));

    // ListOffsets: every entry of a partition asked for twice is refused.
    let mut req = ListOffsetsRequest::default();
    let mut t = list_offsets_request::ListOffsetsTopic::default();
    t.name = tn("a");
    for _ in 0..2 {
        let mut p = list_offsets_request::ListOffsetsPartition::default();
        p.timestamp = -1;
        t.partitions.push(p);
    }
    req.topics.push(t);
    let r = ask!(&broker, ListOffsets, 7, req);
    let codes: Vec<i16> = r.topics[0]
        .partitions
        .iter()
        .map(|p| p.error_code)
        .collect();
    assert_eq!(codes, vec![INVALID_REQUEST, INVALID_REQUEST]);

    // DeleteTopics: a name given twice is refused once and the topic stays.
    let mut req = DeleteTopicsRequest::default();
    req.topic_names = vec![tn("a"), tn("a")];
    req.timeout_ms = 5_000;
    let r = ask!(&broker, DeleteTopics, 5, req);
    assert_eq!(r.responses.len(), 1, "{r:?}");
    assert_eq!(r.responses[0].error_code, INVALID_REQUEST);
    assert_eq!(
        metadata(&broker, vec![(Some("a"), Uuid::nil())])
            .await
            .topics[0]
            .error_code,
        0
    );

    // Fetch: an incremental fetch names a session this broker never gave out.
    let mut req = FetchRequest::default();
    req.session_id = 7;
    req.session_epoch = 1;
    req.max_wait_ms = 0;
    let r = ask!(&broker, Fetch, 12, req);
    assert_eq!(r.error_code, 70, "FETCH_SESSION_ID_NOT_FOUND: {r:?}");

    // FindCoordinator for a transactional id: a fatal error at once, not a retriable one.
    for version in [1, 3, 4] {
        let mut req = FindCoordinatorRequest::default();
        req.key_type = 1;
        if version >= 4 {
            req.coordinator_keys = vec![s("tx")];
        } else {
            req.key = s("tx");
        }
        let r = ask!(&broker, FindCoordinator, version, req);
        let (code, message) = if version >= 4 {
            (
                r.coordinators[0].error_code,
                r.coordinators[0].error_message.clone(),
            )
        } else {
            (r.error_code, r.error_message.clone())
        };
        assert_eq!(code, 53, "v{version}: {r:?}");
        assert!(message.is_some_and(|m| m.contains("transactional.id")));
    }

    // DescribeCluster: controller endpoints are refused; authorized operations when asked.
    let mut req = DescribeClusterRequest::default();
    req.endpoint_type = 2;
    let r = ask!(&broker, DescribeCluster, 1, req);
    assert_eq!(r.error_code, 114, "MISMATCHED_ENDPOINT_TYPE: {r:?}");
    let mut req = DescribeClusterRequest::default();
    req.endpoint_type = 1;
    req.include_cluster_authorized_operations = true;
    let r = ask!(&broker, DescribeCluster, 1, req);
    assert_eq!(r.error_code, 0);
    // DESCRIBE (8) and ALTER (7) among others, never UNKNOWN (0) or ANY (1).
    assert_eq!(r.cluster_authorized_operations & 0b11, 0);
    assert_ne!(r.cluster_authorized_operations & (1 << 8), 0);
    assert_ne!(r.cluster_authorized_operations & (1 << 7), 0);
}
