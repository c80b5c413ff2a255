"""Admin APIs through confluent-kafka's AdminClient."""

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import (AlterConfigOpType, ConfigEntry, ConfigResource, ConfigSource,
                                   NewPartitions, NewTopic, ResourceType)

from helpers import DeliveryTracker, assign_from_beginning, consume_confluent, wait_until

DEFAULT_SOURCES = {ConfigSource.DEFAULT_CONFIG, ConfigSource.STATIC_BROKER_CONFIG,
                   ConfigSource.DYNAMIC_DEFAULT_BROKER_CONFIG}


def describe(broker, topic):
    res = ConfigResource(ResourceType.TOPIC, topic)
    fs = broker.admin().describe_configs([res], request_timeout=30)
    return fs[res].result(timeout=60)


def source(entry) -> ConfigSource:
    s = entry.source
    return s if isinstance(s, ConfigSource) else ConfigSource(int(s))


def is_overridden(entry) -> bool:
    return source(entry) == ConfigSource.DYNAMIC_TOPIC_CONFIG and not entry.is_default


def is_default(entry) -> bool:
    return entry.is_default or source(entry) in DEFAULT_SOURCES


def error_code(exc_info):
    err = exc_info.value.args[0]
    return err.code() if isinstance(err, KafkaError) else None


def test_create_topic_with_configs_and_describe(broker):
    broker.create_topic("adm-cfg", partitions=2,
                        config={"retention.ms": "3600000", "cleanup.policy": "delete"})
    cfg = describe(broker, "adm-cfg")
    assert cfg["retention.ms"].value == "3600000"
    assert is_overridden(cfg["retention.ms"]), cfg["retention.ms"]
    assert cfg["cleanup.policy"].value == "delete"
    # Defaults are listed too, marked as such.
    assert "max.message.bytes" in cfg, sorted(cfg)
    assert is_default(cfg["max.message.bytes"]), cfg["max.message.bytes"]
    assert int(cfg["max.message.bytes"].value) > 0
    assert any(is_default(e) for e in cfg.values())


def test_create_existing_topic_fails(broker):
    broker.create_topic("adm-dup", partitions=1)
    fs = broker.admin().create_topics([NewTopic("adm-dup", 1, 1)], request_timeout=30)
    with pytest.raises(KafkaException) as ei:
        fs["adm-dup"].result(timeout=60)
    assert error_code(ei) == KafkaError.TOPIC_ALREADY_EXISTS


def test_create_topic_validate_only_creates_nothing(broker):
    fs = broker.admin().create_topics([NewTopic("adm-dry", 3, 1)], validate_only=True,
                                      request_timeout=30)
    fs["adm-dry"].result(timeout=60)
    assert "adm-dry" not in broker.topic_names()


def test_alter_and_incremental_alter_configs(broker):
    topic = "adm-alter"
    broker.create_topic(topic, partitions=1,
                        config={"retention.ms": "3600000", "cleanup.policy": "delete"})
    admin = broker.admin()

    # Legacy AlterConfigs replaces the whole set of overrides.
    res = ConfigResource(ResourceType.TOPIC, topic, set_config={"retention.ms": "7200000"})
    admin.alter_configs([res], request_timeout=30)[res].result(timeout=60)
    cfg = describe(broker, topic)
    assert cfg["retention.ms"].value == "7200000"
    assert is_overridden(cfg["retention.ms"]), cfg["retention.ms"]
    assert is_default(cfg["cleanup.policy"]), "AlterConfigs must drop overrides it does not name"

    # IncrementalAlterConfigs: SET one, DELETE another (back to default).
    res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("retention.bytes", "1048576",
                    incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE),
    ])
    admin.incremental_alter_configs([res], request_timeout=30)[res].result(timeout=60)
    cfg = describe(broker, topic)
    assert cfg["retention.bytes"].value == "1048576"
    assert is_overridden(cfg["retention.bytes"]), cfg["retention.bytes"]
    assert is_default(cfg["retention.ms"]), cfg["retention.ms"]
    assert cfg["retention.ms"].value != "7200000"

    # Overrides survive a restart.
    broker.restart()
    cfg = describe(broker, topic)
    assert cfg["retention.bytes"].value == "1048576"
    assert is_overridden(cfg["retention.bytes"]), cfg["retention.bytes"]


def test_invalid_config_value_rejected(broker):
    topic = "adm-badcfg"
    broker.create_topic(topic, partitions=1)
    res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("retention.ms", "not-a-number", incremental_operation=AlterConfigOpType.SET)])
    with pytest.raises(KafkaException) as ei:
        broker.admin().incremental_alter_configs([res], request_timeout=30)[res].result(timeout=60)
    assert error_code(ei) == KafkaError.INVALID_CONFIG
    broker.assert_healthy()


def test_create_partitions(broker):
    topic = "adm-parts"
    broker.create_topic(topic, partitions=2)
    admin = broker.admin()

    fs = admin.create_partitions([NewPartitions(topic, 4)], validate_only=True, request_timeout=30)
    fs[topic].result(timeout=60)
    assert broker.topic_partitions(topic) == 2, "validate_only must not change the topic"

    fs = admin.create_partitions([NewPartitions(topic, 4)], request_timeout=30)
    fs[topic].result(timeout=60)
    wait_until(lambda: broker.topic_partitions(topic) == 4, timeout=30, what="4 partitions")

    # The new partitions are usable.
    producer = broker.producer({"acks": "all"})
    dr = DeliveryTracker()
    for p in range(4):
        producer.produce(topic, value=f"p{p}".encode(), partition=p, on_delivery=dr)
    assert producer.flush(30) == 0
    assert not dr.errors, dr.errors
    assert sorted(m.partition() for m in dr.ok) == [0, 1, 2, 3]
    consumer = broker.consumer()
    assign_from_beginning(consumer, topic, [2, 3])
    got = consume_confluent(consumer, 2, timeout=30)
    assert sorted((m.partition(), m.offset(), m.value()) for m in got) == \
        [(2, 0, b"p2"), (3, 0, b"p3")]

    # Shrinking is refused.
    fs = admin.create_partitions([NewPartitions(topic, 3)], request_timeout=30)
    with pytest.raises(KafkaException) as ei:
        fs[topic].result(timeout=60)
    assert error_code(ei) == KafkaError.INVALID_PARTITIONS
    assert broker.topic_partitions(topic) == 4


def test_delete_topic(broker_factory):
    broker = broker_factory(extra_args=["--auto-create-topics", "false"])
    topic = "adm-del"
    broker.create_topic(topic, partitions=2)
    producer = broker.producer({"acks": "all"})
    dr = DeliveryTracker()
    producer.produce(topic, value=b"before delete", partition=0, on_delivery=dr)
    assert producer.flush(30) == 0 and not dr.errors

    fs = broker.admin().delete_topics([topic], operation_timeout=30, request_timeout=30)
    fs[topic].result(timeout=60)
    wait_until(lambda: topic not in broker.topic_names(), timeout=30,
               what=f"{topic} to disappear from metadata")

    # With auto-create off, producing to the deleted topic fails.
    fresh = broker.producer({"acks": "all", "message.timeout.ms": 15000,
                             "topic.metadata.propagation.max.ms": 1000})
    dr = DeliveryTracker()
    fresh.produce(topic, value=b"after delete", on_delivery=dr)
    fresh.flush(30)
    assert not dr.ok, "produce to a deleted topic succeeded"
    assert dr.error_codes() & {KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC}, \
        [str(e) for e, _ in dr.errors]

    # Deleting it again reports it as unknown; the name can be reused.
    fs = broker.admin().delete_topics([topic], request_timeout=30)
    with pytest.raises(KafkaException) as ei:
        fs[topic].result(timeout=60)
    assert error_code(ei) == KafkaError.UNKNOWN_TOPIC_OR_PART
    broker.create_topic(topic, partitions=1)
    consumer = broker.consumer()
    lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10, cached=False)
    assert (lo, hi) == (0, 0), "a re-created topic must start empty"


def test_describe_cluster(broker):
    desc = broker.admin().describe_cluster(request_timeout=30).result(timeout=60)
    assert desc.cluster_id, "cluster id must be set"
    assert [(n.id, n.host, n.port) for n in desc.nodes] == [(1, "127.0.0.1", broker.kafka_port)]
    assert desc.controller is not None and desc.controller.id == 1
