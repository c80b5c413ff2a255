"""kcat (librdkafka 2.0.2 from Debian) against the broker."""

import json

import pytest


def test_metadata_lists_broker_and_topics(broker):
    broker.create_topic("kcat-meta", partitions=2)
    md = json.loads(broker.kcat("-L", "-J"))
    brokers = {(b["id"], b["name"]) for b in md["brokers"]}
    assert (1, broker.bootstrap) in brokers, md["brokers"]
    topics = {t["topic"]: t for t in md["topics"]}
    assert "kcat-meta" in topics, sorted(topics)
    parts = topics["kcat-meta"]["partitions"]
    assert sorted(p["partition"] for p in parts) == [0, 1]
    assert all(p["leader"] == 1 for p in parts), parts

    # The plain-text listing too.
    text = broker.kcat("-L")
    assert f"broker 1 at {broker.bootstrap}" in text, text
    assert 'topic "kcat-meta" with 2 partitions' in text, text


def test_keyed_produce_consume_roundtrip_autocreate(broker):
    n = 2000
    lines = "".join(f"key{i}:value-{i}\n" for i in range(1, n + 1))
    # No explicit create: the topic is auto-created with num.partitions=1.
    broker.kcat("-P", "-t", "kcat-keyed", "-K:", input=lines)
    out = broker.kcat("-C", "-t", "kcat-keyed", "-o", "beginning", "-e", "-f", "%k:%s\n")
    assert out == lines
    assert broker.topic_partitions("kcat-keyed") == 1


def test_offsets_and_partition_in_output(broker):
    broker.create_topic("kcat-offsets", partitions=1)
    broker.kcat("-P", "-t", "kcat-offsets", input="".join(f"m{i}\n" for i in range(50)))
    out = broker.kcat("-C", "-t", "kcat-offsets", "-o", "beginning", "-e", "-f", "%p %o %s\n")
    assert out.splitlines() == [f"0 {i} m{i}" for i in range(50)]
    # Start from an absolute offset and from the end minus N.
    out = broker.kcat("-C", "-t", "kcat-offsets", "-o", "45", "-e", "-f", "%o\n")
    assert out.split() == [str(i) for i in range(45, 50)]
    out = broker.kcat("-C", "-t", "kcat-offsets", "-o", "-3", "-e", "-f", "%o\n")
    assert out.split() == ["47", "48", "49"]


def test_headers_roundtrip(broker):
    broker.create_topic("kcat-headers", partitions=1)
    broker.kcat("-P", "-t", "kcat-headers", "-H", "trace=abc", "-H", "n=2",
                input="v1\nv2\nv3\n")
    out = broker.kcat("-C", "-t", "kcat-headers", "-o", "beginning", "-e", "-f", "%h|%s\n")
    assert out.splitlines() == [f"trace=abc,n=2|v{i}" for i in (1, 2, 3)]


def test_empty_and_null_values(broker):
    broker.create_topic("kcat-empty", partitions=1)
    # "k:" is key k with an empty (zero-length, not null) value.
    broker.kcat("-P", "-t", "kcat-empty", "-K:", input="a:\nb:x\nc:\n")
    # With -Z an empty value is sent as NULL.
    broker.kcat("-P", "-t", "kcat-empty", "-K:", "-Z", input="d:\n")
    # %S is the value length: 0 for empty, -1 for NULL (librdkafka may hand both out
    # with a NULL payload pointer, so the length is what tells them apart).
    out = broker.kcat("-C", "-t", "kcat-empty", "-o", "beginning", "-e", "-f", "%k|%S|%s\n")
    assert out.splitlines() == ["a|0|", "b|1|x", "c|0|", "d|-1|"]


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compression_roundtrip(broker, codec):
    topic = f"kcat-z-{codec}"
    broker.create_topic(topic, partitions=1)
    # Repetitive payloads so batches really compress; linger so there are multi-record batches.
    lines = "".join(f"k{i}:{codec}-payload-{i}-" + "abcdefgh" * 8 + "\n" for i in range(3000))
    broker.kcat("-P", "-t", topic, "-K:", "-z", codec, "-X", "linger.ms=50", input=lines)
    out = broker.kcat("-C", "-t", topic, "-o", "beginning", "-e", "-f", "%k:%s\n")
    assert out == lines
