"""kafka-python 3.x: it opens with ApiVersions v4 and relies on the v0-encoded
UNSUPPORTED_VERSION fallback, so every test here also covers that negotiation."""

import time

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka import codec as kcodec


def consume(broker, topic, partitions, expected, timeout=60.0):
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None,
                             enable_auto_commit=False, auto_offset_reset="earliest",
                             request_timeout_ms=30000)
    try:
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        consumer.seek_to_beginning()
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500, max_records=1000).values():
                out.extend(records)
        return out
    finally:
        consumer.close()


def produce(broker, topic, messages, **producer_kwargs):
    """messages: (key, value, headers) tuples. Returns the RecordMetadata of each send."""
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, request_timeout_ms=30000,
                             max_block_ms=30000, **producer_kwargs)
    try:
        futures = [producer.send(topic, key=k, value=v, headers=h or [], partition=0)
                   for k, v, h in messages]
        producer.flush(timeout=30)
        return [f.get(timeout=30) for f in futures]
    finally:
        producer.close(timeout=10)


def sample(n, tag):
    return [(f"k{i}".encode(), f"{tag}-{i}".encode(), [("h", f"{i}".encode())]) for i in range(n)]


@pytest.mark.parametrize("acks", ["all", 1])
def test_produce_consume_acks(broker, acks):
    topic = f"kp-acks-{acks}"
    broker.create_topic(topic, partitions=1)
    msgs = sample(500, topic)
    metas = produce(broker, topic, msgs, acks=acks, linger_ms=5)
    assert [m.offset for m in metas] == list(range(len(msgs)))
    got = consume(broker, topic, [0], len(msgs))
    assert [(r.key, r.value, list(r.headers)) for r in got] == msgs
    assert [r.offset for r in got] == list(range(len(msgs)))


def test_acks_zero_then_verify_with_another_consumer(broker):
    topic = "kp-acks-0"
    broker.create_topic(topic, partitions=1)
    msgs = sample(300, topic)
    produce(broker, topic, msgs, acks=0)
    # Nothing was acknowledged: a separate consumer must still see every message.
    got = consume(broker, topic, [0], len(msgs), timeout=60)
    assert [(r.key, r.value) for r in got] == [(k, v) for k, v, _ in msgs]


def test_null_and_empty_values(broker):
    topic = "kp-null"
    broker.create_topic(topic, partitions=1)
    msgs = [(b"a", b"", None), (b"b", None, None), (None, b"c", None)]
    produce(broker, topic, msgs, acks="all")
    got = consume(broker, topic, [0], len(msgs))
    assert [(r.key, r.value) for r in got] == [(k, v) for k, v, _ in msgs]


CODECS = {
    "gzip": kcodec.has_gzip,
    "snappy": kcodec.has_snappy,
    "lz4": kcodec.has_lz4,
    "zstd": kcodec.has_zstd,
}


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_compression(broker, codec):
    if not CODECS[codec]():
        pytest.skip(f"python codec library for {codec} is not installed")
    topic = f"kp-z-{codec}"
    broker.create_topic(topic, partitions=1)
    msgs = [(f"k{i}".encode(), (f"{codec}-{i}-" + "xyz" * 40).encode(), [("c", codec.encode())])
            for i in range(1000)]
    produce(broker, topic, msgs, acks="all", compression_type=codec, linger_ms=20)
    got = consume(broker, topic, [0], len(msgs))
    assert [(r.key, r.value, list(r.headers)) for r in got] == msgs
