"""Hostile and invalid input: the broker answers with errors or closes the connection,
never crashes, hangs other clients, or loses data."""

import os
import random
import struct

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import NewTopic

import kwire
from helpers import DeliveryTracker, consume_confluent, assign_from_beginning


def assert_serving(broker):
    """A fresh raw client and a real client both still get answers; /health is 200."""
    broker.assert_healthy()
    md = kwire.metadata_v1(broker.kafka_port)
    assert any(port == broker.kafka_port for _, _, port, _ in md.brokers)


def test_oversized_frame_length_closes_connection(broker):
    with kwire.Conn(broker.kafka_port) as c:
        try:
            c.send(struct.pack(">i", 0x7FFFFFFF) + b"\x00" * 64)
        except (BrokenPipeError, ConnectionResetError):
            pass  # already closed on us: fine
        assert c.wait_closed(10), "broker kept a connection announcing a 2 GiB frame"
    assert_serving(broker)


@pytest.mark.parametrize("prefix", [
    pytest.param(b"\xde\xad\xbe\xef", id="negative-size"),
    pytest.param(struct.pack(">i", 0), id="zero-size"),
    pytest.param(struct.pack(">i", 3), id="size-shorter-than-header"),
])
def test_garbage_closes_connection(broker, prefix):
    garbage = random.Random(1234).randbytes(2048)
    with kwire.Conn(broker.kafka_port) as c:
        try:
            c.send(prefix + garbage)
        except (BrokenPipeError, ConnectionResetError):
            pass  # already closed on us: fine
        assert c.wait_closed(10), "broker kept a connection that sent garbage"
    assert_serving(broker)


def test_garbage_inside_wellformed_frame(broker):
    body = random.Random(99).randbytes(200)
    # api key 0x7e7e (unknown) followed by random bytes where the header continues, and a
    # known api key (Produce v9) whose body is random bytes: an error answer or a closed
    # connection are both fine; a crash or a wedged listener is not.
    for data in (kwire.frame(b"\x7e\x7e" + body),
                 kwire.request(kwire.API_PRODUCE, 9, 5, body, flexible=True)):
        with kwire.Conn(broker.kafka_port) as c:
            c.send(data)
            try:
                c.recv_frame(5)
            except (ValueError, TimeoutError, OSError):
                pass
        assert_serving(broker)


@pytest.mark.parametrize("claimed", [0x7FFFFFFF, 0x10000000])
def test_lying_array_length_does_not_kill_the_broker(broker, claimed):
    # Metadata v1 whose topics array claims billions of elements in a 4-byte body: it
    # must be refused (connection closed), not allocated (which aborted the process).
    with kwire.Conn(broker.kafka_port) as c:
        c.send(kwire.request(kwire.API_METADATA, 1, 9, struct.pack(">i", claimed)))
        assert c.wait_closed(10), "broker kept a connection that sent an impossible array"
    assert broker.proc.poll() is None, "broker process died"
    assert_serving(broker)


def test_unknown_api_key(broker):
    with kwire.Conn(broker.kafka_port) as c:
        c.send(kwire.request(9999, 0, 77, b""))
        payload = c.recv_frame(10)
        if payload is not None:  # an error answer must at least echo the correlation id
            assert struct.unpack(">i", payload[:4])[0] == 77
    assert_serving(broker)


def test_half_frame_stall_does_not_block_others(broker):
    stalled = kwire.Conn(broker.kafka_port)
    try:
        stalled.send(struct.pack(">i", 100) + b"\x00\x12\x00\x00\x00\x00")  # 6 of 100 bytes
        # While that connection sits half-read, others are served promptly.
        for i in range(5):
            resp = kwire.api_versions_v0(broker.kafka_port, correlation_id=100 + i, timeout=5)
            assert resp.error_code == 0
        broker.create_topic("stall-ok", partitions=1)
        assert broker.kcat("-L", "-t", "stall-ok").count("stall-ok") >= 1
    finally:
        stalled.close()
    assert_serving(broker)


def test_many_idle_connections_then_serving(broker):
    conns = [kwire.Conn(broker.kafka_port) for _ in range(200)]
    try:
        assert kwire.api_versions_v0(broker.kafka_port, timeout=5).error_code == 0
    finally:
        for c in conns:
            c.close()
    assert_serving(broker)


def test_api_versions_unsupported_version_fallback(broker):
    """ApiVersions v999 gets a v0-encoded UNSUPPORTED_VERSION answer listing the ranges."""
    body = kwire.enc_compact_string("e2e") + kwire.enc_compact_string("1.0") + b"\x00"
    with kwire.Conn(broker.kafka_port) as c:
        c.send(kwire.request(kwire.API_API_VERSIONS, 999, 4242, body, flexible=True))
        payload = c.recv_frame(10)
    assert payload is not None, "connection closed instead of the v0 fallback answer"
    resp = kwire.parse_api_versions_v0(payload)
    assert resp.correlation_id == 4242
    assert resp.error_code == kwire.ERR_UNSUPPORTED_VERSION
    for key in (0, 1, 2, 3, 18, 19, 20):  # Produce Fetch ListOffsets Metadata ApiVersions Create/DeleteTopics
        assert key in resp.ranges, f"api {key} missing from {sorted(resp.ranges)}"
        lo, hi = resp.ranges[key]
        assert 0 <= lo <= hi, (key, lo, hi)
    assert resp.ranges[18][1] >= 3


def test_api_versions_v0_lists_supported_apis(broker):
    resp = kwire.api_versions_v0(broker.kafka_port)
    assert resp.error_code == 0
    expected = {0, 1, 2, 3, 18, 19, 20, 22, 23, 32, 33, 37, 44, 60}
    assert expected <= set(resp.ranges), f"missing: {sorted(expected - set(resp.ranges))}"


def test_produce_to_missing_topic_with_autocreate_off(broker_factory):
    broker = broker_factory(extra_args=["--auto-create-topics", "false"])

    md = kwire.metadata_v1(broker.kafka_port, topics=["no-such-topic"])
    assert [(err, name) for err, name, _, _ in md.topics] == \
        [(kwire.ERR_UNKNOWN_TOPIC_OR_PART, "no-such-topic")]

    producer = broker.producer({"acks": "all", "message.timeout.ms": 15000,
                                "topic.metadata.propagation.max.ms": 1000})
    dr = DeliveryTracker()
    producer.produce("no-such-topic", value=b"x", on_delivery=dr)
    producer.flush(30)
    assert not dr.ok
    assert dr.error_codes() & {KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC}, \
        [str(e) for e, _ in dr.errors]

    from kafka import KafkaProducer
    from kafka.errors import KafkaError as KPError
    kp = KafkaProducer(bootstrap_servers=broker.bootstrap, max_block_ms=5000)
    try:
        with pytest.raises(KPError):
            kp.send("no-such-topic", b"x").get(timeout=30)
    finally:
        kp.close(timeout=5)

    assert "no-such-topic" not in broker.topic_names()
    assert_serving(broker)


@pytest.mark.parametrize("name", ["bad name!", "a" * 300, ".."],
                         ids=["space-bang", "300-chars", "dotdot"])
def test_invalid_topic_name_rejected(broker, name):
    fs = broker.admin().create_topics([NewTopic(name, 1, 1)], request_timeout=30)
    with pytest.raises(KafkaException) as ei:
        fs[name].result(timeout=60)
    assert ei.value.args[0].code() == KafkaError.TOPIC_EXCEPTION, str(ei.value)
    assert name not in broker.topic_names()
    assert_serving(broker)


def test_message_larger_than_max_message_bytes(broker):
    topic = "too-big"
    broker.create_topic(topic, partitions=1, config={"max.message.bytes": "1000"})
    producer = broker.producer({"acks": "all", "compression.type": "none", "linger.ms": 0,
                                "message.max.bytes": 10_000_000, "retries": 0})
    dr = DeliveryTracker()
    producer.produce(topic, value=os.urandom(5000), partition=0, on_delivery=dr)
    producer.flush(30)
    assert not dr.ok, "a 5000-byte record was accepted by a topic with max.message.bytes=1000"
    assert dr.error_codes() == {KafkaError.MSG_SIZE_TOO_LARGE}, [str(e) for e, _ in dr.errors]

    # kafka-python sees the same broker error.
    from kafka import KafkaProducer
    from kafka.errors import MessageSizeTooLargeError
    kp = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", retries=0,
                       max_request_size=10_000_000, request_timeout_ms=30000)
    try:
        with pytest.raises(MessageSizeTooLargeError):
            kp.send(topic, os.urandom(5000), partition=0).get(timeout=30)
    finally:
        kp.close(timeout=5)

    # Small records still go through, and nothing of the rejected ones was stored.
    dr = DeliveryTracker()
    producer.produce(topic, value=b"small", partition=0, on_delivery=dr)
    assert producer.flush(30) == 0 and not dr.errors
    consumer = broker.consumer()
    assign_from_beginning(consumer, topic, [0])
    msgs = consume_confluent(consumer, 1, timeout=30)
    assert [m.value() for m in msgs] == [b"small"]
    assert msgs[0].offset() == 0
    assert_serving(broker)
