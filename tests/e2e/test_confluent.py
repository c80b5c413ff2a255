"""confluent-kafka (bundled librdkafka 2.16) producer and assign-mode consumer."""

import time

from confluent_kafka import OFFSET_END, TopicPartition

from helpers import (DeliveryTracker, assign_from_beginning, by_partition, consume_confluent,
                     produce_all)


def test_bulk_acks_all_six_partitions(broker):
    topic, parts, total = "cf-bulk", 6, 100_000
    broker.create_topic(topic, partitions=parts)
    producer = broker.producer({"acks": "all", "linger.ms": 20, "batch.num.messages": 10000,
                                "queue.buffering.max.messages": 200_000})
    dr = DeliveryTracker()
    seq = [0] * parts

    def items():
        for i in range(total):
            p = i % parts
            yield f"k{i}".encode(), f"{p}:{seq[p]}".encode(), p, None
            seq[p] += 1

    produce_all(producer, topic, items(), dr, flush_timeout=120)
    assert not dr.errors, dr.errors[:5]
    assert len(dr.ok) == total
    expected = {p: total // parts + (1 if p < total % parts else 0) for p in range(parts)}

    consumer = broker.consumer({"fetch.max.bytes": 8 << 20})
    assign_from_beginning(consumer, topic, range(parts))
    msgs = consume_confluent(consumer, total, timeout=180)
    got = by_partition(msgs)
    assert {p: len(got[p]) for p in range(parts)} == expected
    for p in range(parts):
        for n, m in enumerate(got[p]):
            assert m.value() == f"{p}:{n}".encode(), (p, n, m.value())
            assert m.offset() == n, (p, n, m.offset())

    for p in range(parts):
        lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
        assert (lo, hi) == (0, expected[p])


def test_idempotent_producer_no_duplicates(broker):
    topic, parts, total = "cf-idem", 3, 10_000
    broker.create_topic(topic, partitions=parts)
    producer = broker.producer({"enable.idempotence": True, "acks": "all", "linger.ms": 5})
    dr = DeliveryTracker()
    produce_all(producer, topic,
                ((str(i).encode(), f"v{i}".encode(), i % parts, None) for i in range(total)), dr)
    assert not dr.errors, dr.errors[:5]

    consumer = broker.consumer()
    assign_from_beginning(consumer, topic, range(parts))
    msgs = consume_confluent(consumer, total, timeout=120)
    keys = [int(m.key()) for m in msgs]
    assert len(keys) == total
    assert len(set(keys)) == total, "duplicates delivered"
    for p, ms in by_partition(msgs).items():
        ks = [int(m.key()) for m in ms]
        assert ks == sorted(ks), f"partition {p} out of order"
        assert [m.offset() for m in ms] == list(range(len(ms)))


def test_keys_headers_empty_and_null(broker):
    topic = "cf-shapes"
    broker.create_topic(topic, partitions=1)
    cases = [
        (b"k1", b"plain", [("h1", b"x"), ("h2", b"")]),
        (None, b"no key", None),
        (b"", b"empty key", [("dup", b"1"), ("dup", b"2")]),
        (b"k-empty", b"", [("nullhdr", None)]),
        (b"k-null", None, None),  # a tombstone
        (b"bin\x00\xff", bytes(range(256)), [("bin", bytes(range(256)))]),
        (b"big", b"x" * 200_000, None),
    ]
    producer = broker.producer({"acks": "all"})
    dr = DeliveryTracker()
    produce_all(producer, topic, ((k, v, 0, h) for k, v, h in cases), dr)
    assert not dr.errors, dr.errors

    consumer = broker.consumer()
    assign_from_beginning(consumer, topic, [0])
    msgs = consume_confluent(consumer, len(cases), timeout=60)
    assert len(msgs) == len(cases)
    for m, (k, v, h) in zip(msgs, cases):
        assert m.key() == k
        assert m.value() == v
        assert (m.headers() or None) == h


def test_offsets_for_times_and_watermarks(broker):
    topic = "cf-times"
    broker.create_topic(topic, partitions=1)
    base = (int(time.time()) - 3600) * 1000  # an hour ago, CreateTime
    producer = broker.producer({"acks": "all", "linger.ms": 0})
    dr = DeliveryTracker()
    for i in range(10):
        producer.produce(topic, value=f"t{i}".encode(), partition=0, timestamp=base + i * 1000,
                         on_delivery=dr)
        producer.flush(30)  # one batch per message: exercises batch-level time indexing
    assert not dr.errors and len(dr.ok) == 10

    consumer = broker.consumer()
    lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10, cached=False)
    assert (lo, hi) == (0, 10)

    def lookup(ts):
        [tp] = consumer.offsets_for_times([TopicPartition(topic, 0, ts)], timeout=10)
        assert tp.error is None, tp.error
        return tp.offset

    assert lookup(base) == 0
    assert lookup(base - 10_000) == 0
    assert lookup(base + 3500) == 4
    assert lookup(base + 9000) == 9
    assert lookup(base + 60_000) in (-1, OFFSET_END)  # later than everything: no offset

    # Timestamps survive the round trip.
    assign_from_beginning(consumer, topic, [0])
    msgs = consume_confluent(consumer, 10, timeout=60)
    assert [m.timestamp()[1] for m in msgs] == [base + i * 1000 for i in range(10)]


def test_transactional_producer_is_refused_at_once(broker):
    """Transactions are not implemented: init_transactions must fail fast with a fatal error
    that says why, not retry the coordinator lookup until its timeout."""
    from confluent_kafka import KafkaException, Producer

    producer = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": "tx-1"})
    started = time.monotonic()
    try:
        producer.init_transactions(30)
    except KafkaException as e:
        err = e.args[0]
    else:
        raise AssertionError("init_transactions succeeded against a broker without transactions")
    assert time.monotonic() - started < 10
    assert err.fatal() or not err.retriable(), err
    assert "transactional.id" in err.str(), err.str()
