"""Fetch semantics: long poll that wakes on new data, min_bytes, the response and partition
byte limits (KIP-74), and out-of-range offsets with the clients' auto.offset.reset."""

from __future__ import annotations

import threading
import time

from confluent_kafka import TopicPartition

import kraw
import kwire
from helpers import DeliveryTracker, consume_confluent


def fill(broker, topic, partition, batches, value_size=1000):
    """Produces `batches` single-record batches of ~value_size bytes; returns batch sizes."""
    with kwire.Conn(broker.kafka_port) as c:
        sizes = []
        for i in range(batches):
            b = kraw.record_batch([bytes([65 + i % 26]) * value_size])
            (p,) = kraw.produce(c, topic, [(partition, b)], corr=i)
            assert p.error == 0
            sizes.append(len(b))
        return sizes


def test_long_poll_wakes_when_data_arrives(broker):
    topic = "fetch-wake"
    broker.create_topic(topic)
    fill(broker, topic, 0, 1, value_size=10)

    def produce_later():
        time.sleep(1.0)
        fill(broker, topic, 0, 1, value_size=10)

    t = threading.Thread(target=produce_later)
    with kwire.Conn(broker.kafka_port) as c:
        started = time.monotonic()
        t.start()
        (p,) = kraw.fetch(c, topic, [(0, 1, 1 << 20)], max_wait_ms=5000, min_bytes=1)
        elapsed = time.monotonic() - started
    t.join()
    assert p.error == 0
    assert [base for base, _, _ in p.batches()] == [1]
    assert 0.8 <= elapsed < 3.0, f"long poll answered after {elapsed:.2f}s"


def test_long_poll_with_librdkafka(broker):
    topic = "fetch-wake-rdkafka"
    broker.create_topic(topic)
    consumer = broker.consumer({"fetch.wait.max.ms": 5000, "fetch.min.bytes": 1})
    consumer.assign([TopicPartition(topic, 0, 0)])
    consumer.poll(1.0)  # connected and waiting in a fetch
    producer = broker.producer({"acks": "all", "linger.ms": 0})
    sent = time.monotonic()
    producer.produce(topic, value=b"wake up", partition=0)
    assert producer.flush(10) == 0
    msgs = consume_confluent(consumer, 1, timeout=10)
    elapsed = time.monotonic() - sent
    assert [m.value() for m in msgs] == [b"wake up"]
    assert elapsed < 3.0, f"consumer got the message after {elapsed:.2f}s"


def test_min_bytes_and_max_wait(broker):
    topic = "fetch-min-bytes"
    broker.create_topic(topic)
    size = fill(broker, topic, 0, 1, value_size=100)[0]
    with kwire.Conn(broker.kafka_port) as c:
        # min_bytes not reached: waits max_wait, then answers with what there is.
        started = time.monotonic()
        (p,) = kraw.fetch(c, topic, [(0, 0, 1 << 20)], max_wait_ms=1500, min_bytes=size * 10)
        waited = time.monotonic() - started
        assert p.error == 0 and len(p.records) == size
        assert 1.3 <= waited < 4.0, f"answered after {waited:.2f}s, want ~1.5s"
        # min_bytes reached: at once.
        started = time.monotonic()
        (p,) = kraw.fetch(c, topic, [(0, 0, 1 << 20)], max_wait_ms=5000, min_bytes=size)
        assert len(p.records) == size and time.monotonic() - started < 1.0
        # Nothing to read and min_bytes 0: at once too.
        started = time.monotonic()
        (p,) = kraw.fetch(c, topic, [(0, 1, 1 << 20)], max_wait_ms=5000, min_bytes=0)
        assert p.error == 0 and p.records == b"" and time.monotonic() - started < 1.0


def test_response_and_partition_max_bytes(broker):
    topic = "fetch-max-bytes"
    broker.create_topic(topic, partitions=2)
    sizes = fill(broker, topic, 0, 6)
    fill(broker, topic, 1, 6)
    one = sizes[0]
    with kwire.Conn(broker.kafka_port) as c:
        # Partition limit: whole batches up to it.
        (p,) = kraw.fetch(c, topic, [(0, 0, int(one * 2.5))])
        assert [b for b, _, _ in p.batches()] == [0, 1] and len(p.records) == 2 * one
        # A first batch larger than every limit still comes back (KIP-74)...
        (p,) = kraw.fetch(c, topic, [(0, 0, 10)], max_bytes=10)
        assert [b for b, _, _ in p.batches()] == [0]
        # ...but only for the first partition; the response limit covers all partitions.
        p0, p1 = kraw.fetch(c, topic, [(0, 0, 1 << 20), (1, 0, 1 << 20)],
                            max_bytes=int(one * 3.5))
        assert len(p0.records) == 3 * one and p1.records == b""
        p0, p1 = kraw.fetch(c, topic, [(0, 4, 1 << 20), (1, 0, 1 << 20)],
                            max_bytes=int(one * 3.5))
        assert [b for b, _, _ in p0.batches()] == [4, 5]
        assert [b for b, _, _ in p1.batches()] == [0]
        assert len(p0.records) + len(p1.records) <= int(one * 3.5)

    # kafka-python's fetch_max_bytes / max_partition_fetch_bytes still deliver everything.
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KTP
    kc = KafkaConsumer(bootstrap_servers=broker.bootstrap, fetch_max_bytes=one * 2,
                       max_partition_fetch_bytes=one, consumer_timeout_ms=3000,
                       enable_auto_commit=False, group_id=None)
    try:
        kc.assign([KTP(topic, 0), KTP(topic, 1)])
        kc.seek_to_beginning()
        got = [(m.partition, m.offset) for m in kc]
    finally:
        kc.close()
    assert sorted(got) == [(p, o) for p in (0, 1) for o in range(6)]


def test_offset_out_of_range_and_auto_offset_reset(broker):
    topic = "fetch-out-of-range"
    broker.create_topic(topic)
    producer = broker.producer({"acks": "all"})
    dr = DeliveryTracker()
    for i in range(3):
        producer.produce(topic, value=f"m{i}".encode(), partition=0, on_delivery=dr)
    assert producer.flush(30) == 0 and not dr.errors

    with kwire.Conn(broker.kafka_port) as c:
        (p,) = kraw.fetch(c, topic, [(0, 1000, 1 << 20)], max_wait_ms=5000)
        assert (p.error, p.high_watermark) == (kraw.ERR_OFFSET_OUT_OF_RANGE, 3)
        (p,) = kraw.fetch(c, topic, [(0, -5, 1 << 20)])
        assert p.error == kraw.ERR_OFFSET_OUT_OF_RANGE
        # Fetching exactly at the high watermark is not out of range.
        (p,) = kraw.fetch(c, topic, [(0, 3, 1 << 20)])
        assert (p.error, p.records) == (0, b"")

    early = broker.consumer({"auto.offset.reset": "earliest"})
    early.assign([TopicPartition(topic, 0, 1000)])
    msgs = consume_confluent(early, 3, timeout=30)
    assert [m.offset() for m in msgs] == [0, 1, 2]

    late = broker.consumer({"auto.offset.reset": "latest"})
    late.assign([TopicPartition(topic, 0, 1000)])
    late.poll(2.0)  # reset to the end happens here
    producer.produce(topic, value=b"after reset", partition=0, on_delivery=dr)
    assert producer.flush(30) == 0
    msgs = consume_confluent(late, 1, timeout=30)
    assert [(m.offset(), m.value()) for m in msgs] == [(3, b"after reset")]
