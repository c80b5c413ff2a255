"""Leader epochs across restarts (never going back), OffsetForLeaderEpoch, ListOffsets
max-timestamp, and topic deletion/re-creation surviving a restart."""

from __future__ import annotations

import time

from confluent_kafka import TopicPartition
from confluent_kafka.admin import OffsetSpec

import kraw
import kwire
from helpers import DeliveryTracker, consume_confluent, wait_until


def produce_raw(broker, topic, values, corr=1):
    with kwire.Conn(broker.kafka_port) as c:
        (p,) = kraw.produce(c, topic, [(0, kraw.record_batch(values))], corr=corr)
        assert p.error == 0
        return p.base_offset


def batch_epochs(broker, topic, offset=0):
    with kwire.Conn(broker.kafka_port) as c:
        (p,) = kraw.fetch(c, topic, [(0, offset, 1 << 20)])
        assert p.error == 0
        return [epoch for _, _, epoch in p.batches()]


def test_offset_for_leader_epoch_across_restart(broker):
    topic = "epochs"
    broker.create_topic(topic)
    produce_raw(broker, topic, [b"a", b"b", b"c"])
    (e1,) = batch_epochs(broker, topic)
    assert e1 >= 1
    with kwire.Conn(broker.kafka_port) as c:
        assert kraw.offset_for_leader_epoch(c, topic, 0, e1) == (0, e1, 3)

    broker.restart()
    produce_raw(broker, topic, [b"d", b"e"])
    epochs = batch_epochs(broker, topic)
    e2 = epochs[-1]
    # A lone voter may keep its term across a restart (openraft re-uses its committed vote);
    # either way the epoch never goes back, and the answers stay consistent.
    assert epochs == [e1, e2] and e2 >= e1, epochs
    with kwire.Conn(broker.kafka_port) as c:
        if e2 > e1:
            assert kraw.offset_for_leader_epoch(c, topic, 0, e1) == (0, e1, 3)
        assert kraw.offset_for_leader_epoch(c, topic, 0, e2) == (0, e2, 5)
        assert kraw.offset_for_leader_epoch(c, topic, 0, e2 + 1) == (0, -1, -1)
        # A client that believes a future epoch is current gets UNKNOWN_LEADER_EPOCH.
        assert kraw.offset_for_leader_epoch(c, topic, 0, e2, current_leader_epoch=e2 + 5)[0] == 75
        assert kraw.offset_for_leader_epoch(c, topic, 0, e2, current_leader_epoch=e2)[0] == 0
        assert kraw.offset_for_leader_epoch(c, "no-such-topic", 0, e1)[0] == 3


def test_librdkafka_keeps_consuming_across_restart(broker):
    topic = "epochs-consumer"
    broker.create_topic(topic)
    producer = broker.producer({"acks": "all"})
    for i in range(3):
        producer.produce(topic, value=f"before{i}".encode(), partition=0)
    assert producer.flush(30) == 0
    consumer = broker.consumer({"topic.metadata.refresh.interval.ms": 1000,
                                "reconnect.backoff.max.ms": 500})
    consumer.assign([TopicPartition(topic, 0, 0)])
    assert [m.value() for m in consume_confluent(consumer, 3, timeout=30)] == \
        [b"before0", b"before1", b"before2"]

    broker.restart()
    producer = broker.producer({"acks": "all"})
    for i in range(2):
        producer.produce(topic, value=f"after{i}".encode(), partition=0)
    assert producer.flush(30) == 0
    started = time.monotonic()
    msgs = consume_confluent(consumer, 2, timeout=45)
    assert [(m.offset(), m.value()) for m in msgs] == [(3, b"after0"), (4, b"after1")], \
        f"consumer after restart got {[(m.offset(), m.value()) for m in msgs]}"
    assert time.monotonic() - started < 30


def test_list_offsets_max_timestamp(broker):
    topic = "max-ts"
    # Timestamps from 1970 would be past the default retention at once.
    broker.create_topic(topic, config={"retention.ms": "-1"})
    producer = broker.producer({"acks": "all", "linger.ms": 0})
    for ts in (1_000, 5_000, 3_000):
        producer.produce(topic, value=b"x", partition=0, timestamp=ts)
        producer.flush(30)
    tp = TopicPartition(topic, 0)
    res = broker.admin().list_offsets({tp: OffsetSpec.max_timestamp()},
                                      request_timeout=30)[tp].result(timeout=60)
    assert (res.offset, res.timestamp) == (1, 5_000)
    res = broker.admin().list_offsets({tp: OffsetSpec.latest()}, request_timeout=30)[tp]
    assert res.result(timeout=60).offset == 3
    res = broker.admin().list_offsets({tp: OffsetSpec.for_timestamp(2_000)},
                                      request_timeout=30)[tp].result(timeout=60)
    assert (res.offset, res.timestamp) == (1, 5_000)


def test_recreated_topic_starts_empty_even_after_restart(broker):
    topic = "recreate"
    broker.create_topic(topic, partitions=2)
    producer = broker.producer({"acks": "all"})
    dr = DeliveryTracker()
    for i in range(5):
        producer.produce(topic, value=f"old{i}".encode(), partition=i % 2, on_delivery=dr)
    assert producer.flush(30) == 0 and not dr.errors
    producer = None

    fs = broker.admin().delete_topics([topic], operation_timeout=30, request_timeout=30)
    fs[topic].result(timeout=60)
    wait_until(lambda: topic not in broker.topic_names(), timeout=30, what="topic deleted")
    broker.create_topic(topic, partitions=1)
    assert produce_raw(broker, topic, [b"new0"]) == 0

    broker.restart()
    consumer = broker.consumer()
    lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10, cached=False)
    assert (lo, hi) == (0, 1)
    consumer.assign([TopicPartition(topic, 0, 0)])
    msgs = consume_confluent(consumer, 1, timeout=30)
    assert [m.value() for m in msgs] == [b"new0"]
    assert broker.topic_partitions(topic) == 1
