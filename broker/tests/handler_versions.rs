//! Every handler answers every advertised version with a response the codec can encode.
//!
//! kafka-protocol refuses to encode a response that sets a field its version lacks, and the
//! broker closes the connection when encoding fails. So this drives each handler through the
//! real dispatch, at every version in `SUPPORTED_APIS`, with a typical request (success and
//! error cases mixed), and checks that an encoded response comes back and decodes again.

mod common;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use chronik_broker::protocol::SUPPORTED_APIS;
use common::{round_trip, s, test_config};

fn tn(v: &str) -> TopicName {
    TopicName(s(v))
}

fn batch(count: usize) -> Bytes {
    let records: Vec<Record> = (0..count)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder groups records whose offset - sequence is constant.
            sequence: i as i32 - 1,
            timestamp: 1_000,
            key: None,
            value: Some(Bytes::from(format!("v{i}"))),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("encode batch");
    buf.freeze()
}

/// Typical requests for `key` at `version`; `None` for APIs this test does not cover.
fn requests(key: ApiKey, version: i16) -> Option<Vec<RequestKind>> {
    let topic = "t";
    let missing = "missing-topic";
    Some(match key {
        ApiKey::ApiVersions => vec![RequestKind::ApiVersions(ApiVersionsRequest::default())],
        ApiKey::Metadata => {
            let mut all = MetadataRequest::default();
            all.topics = if version == 0 { Some(vec![]) } else { None };
            let mut some = MetadataRequest::default();
            let names = [topic, missing, "bad name!"];
            some.topics = Some(
                names
                    .iter()
                    .map(|n| {
                        let mut t = metadata_request::MetadataRequestTopic::default();
                        t.name = Some(tn(n));
                        t
                    })
                    .collect(),
            );
            if version >= 4 {
                some.allow_auto_topic_creation = false;
            }
            vec![RequestKind::Metadata(all), RequestKind::Metadata(some)]
        }
        ApiKey::Produce => {
            let mut req = ProduceRequest::default();
            req.acks = -1;
            req.timeout_ms = 5_000;
            let part = |index: i32, records: Bytes| {
                let mut p = produce_request::PartitionProduceData::default();
                p.index = index;
                p.records = Some(records);
                p
            };
            let mut corrupt = batch(1).to_vec();
            let last = corrupt.len() - 1;
            corrupt[last] ^= 0xff;
            let mut t = produce_request::TopicProduceData::default();
            t.name = tn(topic);
            t.partition_data = vec![
                part(0, batch(3)),
                part(0, Bytes::from(corrupt)),
                part(7, batch(1)),
            ];
            let mut m = produce_request::TopicProduceData::default();
            m.name = tn(missing);
            m.partition_data = vec![part(0, batch(1))];
            req.topic_data = vec![t, m];
            let mut bad_acks = req.clone();
            bad_acks.acks = 2;
            vec![RequestKind::Produce(req), RequestKind::Produce(bad_acks)]
        }
        ApiKey::Fetch => {
            let mut req = FetchRequest::default();
            req.max_wait_ms = 0;
            req.min_bytes = 1;
            req.max_bytes = 1 << 20;
            let part = |partition: i32, offset: i64, epoch: i32| {
                let mut p = fetch_request::FetchPartition::default();
                p.partition = partition;
                p.fetch_offset = offset;
                p.partition_max_bytes = 1 << 20;
                if version >= 9 {
                    p.current_leader_epoch = epoch;
                }
                if version >= 5 {
                    p.log_start_offset = -1;
                }
                p
            };
            let mut t = fetch_request::FetchTopic::default();
            t.topic = tn(topic);
            t.partitions = vec![part(0, 0, -1), part(0, 1_000, -1), part(0, 0, 999)];
            let mut m = fetch_request::FetchTopic::default();
            m.topic = tn(missing);
            m.partitions = vec![part(0, 0, -1)];
            let mut ok = req.clone();
            ok.topics = vec![t.clone()];
            ok.topics[0].partitions.truncate(1);
            req.topics = vec![t, m];
            vec![RequestKind::Fetch(ok), RequestKind::Fetch(req)]
        }
        ApiKey::ListOffsets => {
            let mut req = ListOffsetsRequest::default();
            let mut timestamps = vec![-1, -2, 0, 1_001, 99_999_999_999];
            if version >= 7 {
                timestamps.push(-3);
            }
            let mut t = list_offsets_request::ListOffsetsTopic::default();
            t.name = tn(topic);
            t.partitions = timestamps
                .into_iter()
                .map(|ts| {
                    let mut p = list_offsets_request::ListOffsetsPartition::default();
                    p.timestamp = ts;
                    p
                })
                .collect();
            let mut m = list_offsets_request::ListOffsetsTopic::default();
            m.name = tn(missing);
            m.partitions = vec![Default::default()];
            req.topics = vec![t, m];
            vec![RequestKind::ListOffsets(req)]
        }
        ApiKey::OffsetForLeaderEpoch => {
            let mut req = OffsetForLeaderEpochRequest::default();
            let part = |epoch: i32, current: i32| {
                let mut p = offset_for_leader_epoch_request::OffsetForLeaderPartition::default();
                p.leader_epoch = epoch;
                p.current_leader_epoch = current;
                p
            };
            let mut t = offset_for_leader_epoch_request::OffsetForLeaderTopic::default();
            t.topic = tn(topic);
            t.partitions = vec![part(1, -1), part(0, -1), part(1, 999)];
            let mut m = offset_for_leader_epoch_request::OffsetForLeaderTopic::default();
            m.topic = tn(missing);
            m.partitions = vec![part(1, -1)];
            req.topics = vec![t, m];
            vec![RequestKind::OffsetForLeaderEpoch(req)]
        }
        ApiKey::CreateTopics => {
            let mut req = CreateTopicsRequest::default();
            req.timeout_ms = 5_000;
            let topic = |name: &str, partitions: i32, cfg: Option<(&str, &str)>| {
                let mut t = create_topics_request::CreatableTopic::default();
                t.name = tn(name);
                t.num_partitions = partitions;
                t.replication_factor = -1;
                if let Some((k, v)) = cfg {
                    let mut c = create_topics_request::CreatableTopicConfig::default();
                    c.name = s(k);
                    c.value = Some(s(v));
                    t.configs.push(c);
                }
                t
            };
            req.topics = vec![
                topic(
                    &format!("created-v{version}"),
                    2,
                    Some(("retention.ms", "1000")),
                ),
                topic("t", 1, None),
                topic("bad name!", 1, None),
                topic("zero-parts", 0, None),
                topic("bad-config", 1, Some(("retention.ms", "abc"))),
            ];
            let mut validate = req.clone();
            validate.validate_only = true;
            validate.topics[0].name = tn(&format!("validated-v{version}"));
            vec![
                RequestKind::CreateTopics(req),
                RequestKind::CreateTopics(validate),
            ]
        }
        ApiKey::DeleteTopics => {
            let mut req = DeleteTopicsRequest::default();
            req.timeout_ms = 5_000;
            let names = [format!("created-v{}", 7.min(version + 1)), missing.into()];
            if version >= 6 {
                req.topics = names
                    .iter()
                    .map(|n| {
                        let mut t = delete_topics_request::DeleteTopicState::default();
                        t.name = Some(tn(n));
                        t
                    })
                    .collect();
            } else {
                req.topic_names = names.iter().map(|n| tn(n)).collect();
            }
            vec![RequestKind::DeleteTopics(req)]
        }
        ApiKey::CreatePartitions => {
            let mut req = CreatePartitionsRequest::default();
            req.timeout_ms = 5_000;
            let topic = |name: &str, count: i32| {
                let mut t = create_partitions_request::CreatePartitionsTopic::default();
                t.name = tn(name);
                t.count = count;
                t
            };
            req.topics = vec![topic("no-such-topic-for-partitions", 1), topic(missing, 3)];
            let mut grow = req.clone();
            grow.topics = vec![topic("t", 2 + version as i32)];
            grow.validate_only = true;
            vec![
                RequestKind::CreatePartitions(req),
                RequestKind::CreatePartitions(grow),
            ]
        }
        ApiKey::DescribeConfigs => {
            let mut req = DescribeConfigsRequest::default();
            let res = |ty: i8, name: &str, keys: Option<Vec<&str>>| {
                let mut r = describe_configs_request::DescribeConfigsResource::default();
                r.resource_type = ty;
                r.resource_name = s(name);
                r.configuration_keys = keys.map(|k| k.into_iter().map(s).collect());
                r
            };
            req.resources = vec![
                res(2, topic, None),
                res(2, topic, Some(vec!["retention.ms", "nope.key"])),
                res(4, "1", None),
                res(4, "", Some(vec!["message.max.bytes"])),
                res(2, missing, None),
                res(4, "99", None),
                res(8, "x", None),
            ];
            req.include_synonyms = true;
            if version >= 3 {
                req.include_documentation = true;
            }
            let mut plain = req.clone();
            plain.include_synonyms = false;
            plain.include_documentation = false;
            vec![
                RequestKind::DescribeConfigs(req),
                RequestKind::DescribeConfigs(plain),
            ]
        }
        ApiKey::AlterConfigs => {
            let mut req = AlterConfigsRequest::default();
            let res = |ty: i8, name: &str, k: &str, v: &str| {
                let mut r = alter_configs_request::AlterConfigsResource::default();
                r.resource_type = ty;
                r.resource_name = s(name);
                let mut c = alter_configs_request::AlterableConfig::default();
                c.name = s(k);
                c.value = Some(s(v));
                r.configs = vec![c];
                r
            };
            req.resources = vec![
                res(2, topic, "retention.ms", "60000"),
                res(2, topic, "retention.ms", "abc"),
                res(2, topic, "no.such.config", "1"),
                res(2, missing, "retention.ms", "1"),
                res(4, "1", "log.retention.ms", "1"),
            ];
            vec![RequestKind::AlterConfigs(req)]
        }
        ApiKey::IncrementalAlterConfigs => {
            let mut req = IncrementalAlterConfigsRequest::default();
            let res = |ty: i8, name: &str, k: &str, op: i8, v: Option<&str>| {
                let mut r = incremental_alter_configs_request::AlterConfigsResource::default();
                r.resource_type = ty;
                r.resource_name = s(name);
                let mut c = incremental_alter_configs_request::AlterableConfig::default();
                c.name = s(k);
                c.config_operation = op;
                c.value = v.map(s);
                r.configs = vec![c];
                r
            };
            req.resources = vec![
                res(2, topic, "retention.ms", 0, Some("70000")),
                res(2, topic, "retention.ms", 1, None),
                res(2, topic, "cleanup.policy", 2, Some("compact")),
                res(2, topic, "retention.ms", 9, Some("1")),
                res(2, missing, "retention.ms", 0, Some("1")),
                res(4, "1", "log.retention.ms", 0, Some("1")),
            ];
            vec![RequestKind::IncrementalAlterConfigs(req)]
        }
        ApiKey::DeleteRecords => {
            let mut req = DeleteRecordsRequest::default();
            req.timeout_ms = 5_000;
            let part = |index: i32, offset: i64| {
                let mut p = delete_records_request::DeleteRecordsPartition::default();
                p.partition_index = index;
                p.offset = offset;
                p
            };
            let mut t = delete_records_request::DeleteRecordsTopic::default();
            t.name = tn(topic);
            t.partitions = vec![part(0, 0), part(0, 1_000_000), part(9, 0)];
            let mut m = delete_records_request::DeleteRecordsTopic::default();
            m.name = tn(missing);
            m.partitions = vec![part(0, -1)];
            req.topics = vec![t, m];
            vec![RequestKind::DeleteRecords(req)]
        }
        ApiKey::DescribeCluster => {
            vec![RequestKind::DescribeCluster(
                DescribeClusterRequest::default(),
            )]
        }
        ApiKey::InitProducerId => {
            let mut idem = InitProducerIdRequest::default();
            idem.transaction_timeout_ms = 60_000;
            let mut txn = idem.clone();
            txn.transactional_id = Some(TransactionalId(s("txn")));
            vec![
                RequestKind::InitProducerId(idem),
                RequestKind::InitProducerId(txn),
            ]
        }
        _ => return None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_handler_encodes_at_every_advertised_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = chronik_broker::serve::open(test_config(dir.path()))
        .await
        .expect("open");

    // A topic with data, so fetches and timestamp lookups return records.
    let mut create = CreateTopicsRequest::default();
    let mut t = create_topics_request::CreatableTopic::default();
    t.name = tn("t");
    t.num_partitions = 1;
    t.replication_factor = 1;
    create.topics = vec![t];
    create.timeout_ms = 5_000;
    round_trip(
        &broker,
        ApiKey::CreateTopics,
        7,
        &RequestKind::CreateTopics(create),
    )
    .await;
    assert!(
        broker
            .partitions
            .wait_ready("t", 1, std::time::Duration::from_secs(10))
            .await
    );

    let mut covered = 0;
    for (key, _) in SUPPORTED_APIS {
        let Some(range) = chronik_broker::protocol::supported(*key) else {
            continue;
        };
        for version in range.min..=range.max {
            let Some(reqs) = requests(*key, version) else {
                continue;
            };
            for body in &reqs {
                let resp = round_trip(&broker, *key, version, body).await;
                check(&resp, version);
                covered += 1;
            }
        }
    }
    assert!(covered > 50, "only {covered} requests covered");
}

/// A few semantic checks on the responses that should hold at every version.
fn check(resp: &ResponseKind, version: i16) {
    match resp {
        ResponseKind::Produce(r) => {
            let t = &r.responses[0];
            assert_eq!(t.partition_responses.len(), 3);
            let codes: Vec<i16> = t.partition_responses.iter().map(|p| p.error_code).collect();
            if codes[0] == 21 {
                assert!(codes.iter().all(|c| *c == 21), "acks=2: {codes:?}");
            } else {
                assert_eq!(codes, vec![0, 2, 3], "produce v{version}: {r:?}");
                assert_eq!(r.responses[1].partition_responses[0].error_code, 3);
            }
        }
        ResponseKind::ApiVersions(r) => assert_eq!(r.error_code, 0),
        _ => {}
    }
}
