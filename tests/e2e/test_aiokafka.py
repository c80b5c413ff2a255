"""aiokafka (asyncio) producer and assign-mode consumer. Each test drives its own event
loop with asyncio.run, bounded by asyncio.wait_for."""

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka import codec as acodec


async def produce(bootstrap, topic, messages, **kwargs):
    """messages: (key, value, headers). Returns RecordMetadata (None entries for acks=0)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=30000, **kwargs)
    await producer.start()
    try:
        futs = [await producer.send(topic, key=k, value=v, headers=h, partition=0)
                for k, v, h in messages]
        return await asyncio.gather(*futs)
    finally:
        await producer.stop()


async def consume(bootstrap, topic, partitions, expected, timeout=60.0):
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                request_timeout_ms=30000)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        await consumer.seek_to_beginning()
        out = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(out) < expected and loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=1000)
            for records in batches.values():
                out.extend(records)
        return out
    finally:
        await consumer.stop()


def run(coro, timeout=240):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def sample(n, tag):
    return [(f"k{i}".encode(), f"{tag}-{i}".encode(), [("h", f"{i}".encode())]) for i in range(n)]


@pytest.mark.parametrize("acks", ["all", 1])
def test_produce_consume_acks(broker, acks):
    topic = f"aio-acks-{acks}"
    broker.create_topic(topic, partitions=1)
    msgs = sample(500, topic)
    metas = run(produce(broker.bootstrap, topic, msgs, acks=acks, linger_ms=5))
    assert [m.offset for m in metas] == list(range(len(msgs)))
    got = run(consume(broker.bootstrap, topic, [0], len(msgs)))
    assert [(r.key, r.value, list(r.headers)) for r in got] == msgs
    assert [r.offset for r in got] == list(range(len(msgs)))


def test_acks_zero_then_verify_with_another_consumer(broker):
    topic = "aio-acks-0"
    broker.create_topic(topic, partitions=1)
    msgs = sample(300, topic)
    run(produce(broker.bootstrap, topic, msgs, acks=0))
    got = run(consume(broker.bootstrap, topic, [0], len(msgs)))
    assert [(r.key, r.value) for r in got] == [(k, v) for k, v, _ in msgs]


def test_idempotent_producer(broker):
    topic = "aio-idem"
    broker.create_topic(topic, partitions=1)
    msgs = sample(2000, topic)
    metas = run(produce(broker.bootstrap, topic, msgs, enable_idempotence=True, acks="all"))
    assert [m.offset for m in metas] == list(range(len(msgs)))
    got = run(consume(broker.bootstrap, topic, [0], len(msgs)))
    assert [r.value for r in got] == [v for _, v, _ in msgs]


def test_null_and_empty_values(broker):
    topic = "aio-null"
    broker.create_topic(topic, partitions=1)
    msgs = [(b"a", b"", []), (b"b", None, []), (None, b"c", [])]
    run(produce(broker.bootstrap, topic, msgs, acks="all"))
    got = run(consume(broker.bootstrap, topic, [0], len(msgs)))
    assert [(r.key, r.value) for r in got] == [(k, v) for k, v, _ in msgs]


CODECS = {
    "gzip": acodec.has_gzip,
    "snappy": acodec.has_snappy,
    "lz4": acodec.has_lz4,
    "zstd": acodec.has_zstd,
}


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_compression(broker, codec):
    if not CODECS[codec]():
        pytest.skip(f"python codec library for {codec} is not installed")
    topic = f"aio-z-{codec}"
    broker.create_topic(topic, partitions=1)
    msgs = [(f"k{i}".encode(), (f"{codec}-{i}-" + "xyz" * 40).encode(), [("c", codec.encode())])
            for i in range(1000)]
    run(produce(broker.bootstrap, topic, msgs, acks="all", compression_type=codec, linger_ms=20))
    got = run(consume(broker.bootstrap, topic, [0], len(msgs)))
    assert [(r.key, r.value, list(r.headers)) for r in got] == msgs
