"""Produce at the wire level: acks, batch validation and idempotent-producer dedup, with
hand-built v2 batches (kraw.py), including across a kill -9 restart."""

from __future__ import annotations

import struct
import time

import kraw
import kwire


def new_topic(broker, name, partitions=1):
    broker.create_topic(name, partitions=partitions)
    return name


def hwm(broker, topic, partition=0):
    with kwire.Conn(broker.kafka_port) as c:
        (p,) = kraw.fetch(c, topic, [(partition, 0, 1)])
        assert p.error == 0, p
        return p.high_watermark


def test_acks_zero_one_and_invalid(broker):
    topic = new_topic(broker, "raw-acks")
    with kwire.Conn(broker.kafka_port) as c:
        # acks=0: no response at all; the next request's answer is the first thing read.
        c.send(kraw.produce_request(1, topic, [(0, kraw.record_batch([b"a0", b"a1"]))], acks=0))
        c.send(kwire.request(kwire.API_API_VERSIONS, 0, 2))
        payload = c.recv_frame(10)
        assert payload is not None
        assert struct.unpack(">i", payload[:4])[0] == 2, "acks=0 produce was answered"

        (p,) = kraw.produce(c, topic, [(0, kraw.record_batch([b"b0"]))], acks=1, corr=3)
        assert (p.error, p.base_offset) == (0, 2), "acks=0 data must have landed first"

        (p,) = kraw.produce(c, topic, [(0, kraw.record_batch([b"c0"]))], acks=2, corr=4)
        assert p.error == kraw.ERR_INVALID_REQUIRED_ACKS
        (p,) = kraw.produce(c, topic, [(0, kraw.record_batch([b"c0"]))], acks=-2, corr=5)
        assert p.error == kraw.ERR_INVALID_REQUIRED_ACKS
    # acks=0 that fails (a partition that does not exist): no answer either, but the broker
    # closes the connection, as Kafka does, so the client notices.
    with kwire.Conn(broker.kafka_port) as c:
        c.send(kraw.produce_request(6, topic, [(7, kraw.record_batch([b"d0"]))], acks=0))
        assert c.wait_closed(10), "the broker should close the connection"
    assert hwm(broker, topic) == 3
    broker.assert_healthy()


def test_bad_batches_get_kafka_errors_and_store_nothing(broker):
    topic = new_topic(broker, "raw-bad")
    good = kraw.record_batch([b"x", b"y"])
    corrupt = bytearray(good)
    corrupt[-2] ^= 0xFF
    v1 = bytearray(good)
    v1[16] = 1
    # A v1 message set: offset, size, crc, magic 1, attributes, timestamp, key -1, value.
    msg = struct.pack(">bbqi", 1, 0, 0, -1) + struct.pack(">i", 1) + b"v"
    legacy = struct.pack(">qi", 0, len(msg) + 4) + struct.pack(">I", 0) + msg
    count = bytearray(kraw.record_batch([b"x"]))
    count[57:61] = struct.pack(">i", 2)
    count[17:21] = struct.pack(">I", kraw.crc32c(bytes(count[21:])))
    cases = {
        "corrupt crc": (bytes(corrupt), kraw.ERR_CORRUPT_MESSAGE),
        "magic byte 1": (bytes(v1), kraw.ERR_INVALID_RECORD),
        "v1 message set": (legacy, kraw.ERR_INVALID_RECORD),
        "two batches": (good + good, kraw.ERR_INVALID_RECORD),
        "count mismatch": (bytes(count), kraw.ERR_INVALID_RECORD),
        "truncated": (good[:-3], kraw.ERR_CORRUPT_MESSAGE),
    }
    with kwire.Conn(broker.kafka_port) as c:
        for i, (name, (records, want)) in enumerate(cases.items()):
            (p,) = kraw.produce(c, topic, [(0, records)], corr=10 + i)
            assert p.error == want, f"{name}: error {p.error}, want {want}"
        (p,) = kraw.produce(c, topic, [(0, good)], corr=99)
        assert (p.error, p.base_offset) == (0, 0), "nothing of the bad batches was stored"
    assert hwm(broker, topic) == 2
    broker.assert_healthy()


def test_idempotent_dedup_gap_and_state_survives_kill9(broker):
    topic = new_topic(broker, "raw-idem")
    with kwire.Conn(broker.kafka_port) as c:
        pid, epoch = kraw.init_producer_id(c)
        assert pid >= 0 and epoch == 0
        b0 = kraw.record_batch([b"0", b"1", b"2"], pid, epoch, 0)
        b1 = kraw.record_batch([b"3", b"4"], pid, epoch, 3)
        assert kraw.produce(c, topic, [(0, b0)], corr=1)[0] == kraw.ProducePart(0, 0, 0)
        # The same batch again: the original offset, nothing appended.
        assert kraw.produce(c, topic, [(0, b0)], corr=2)[0] == kraw.ProducePart(0, 0, 0)
        assert kraw.produce(c, topic, [(0, b1)], corr=3)[0] == kraw.ProducePart(0, 0, 3)
        gap = kraw.record_batch([b"x"], pid, epoch, 9)
        assert kraw.produce(c, topic, [(0, gap)], corr=4)[0].error == kraw.ERR_OUT_OF_ORDER_SEQUENCE
        # A producer id the partition does not know starts at any sequence, as in Kafka
        # since KIP-360 (its state may have expired, or its batches been deleted).
        stranger = kraw.record_batch([b"x"], pid + 1000, 0, 5)
        assert kraw.produce(c, topic, [(0, stranger)], corr=5)[0] == kraw.ProducePart(0, 0, 5)
        # ... and from then on it is known: a gap after it is out of order.
        gap = kraw.record_batch([b"y"], pid + 1000, 0, 9)
        assert kraw.produce(c, topic, [(0, gap)], corr=55)[0].error == \
            kraw.ERR_OUT_OF_ORDER_SEQUENCE
    assert hwm(broker, topic) == 6

    broker.kill9()
    broker.start()
    with kwire.Conn(broker.kafka_port) as c:
        # The retry of the last batch after the crash is still recognised.
        assert kraw.produce(c, topic, [(0, b1)], corr=6)[0] == kraw.ProducePart(0, 0, 3)
        assert kraw.produce(c, topic, [(0, b0)], corr=7)[0] == kraw.ProducePart(0, 0, 0)
        gap = kraw.record_batch([b"x"], pid, epoch, 6)
        assert kraw.produce(c, topic, [(0, gap)], corr=8)[0].error == kraw.ERR_OUT_OF_ORDER_SEQUENCE
        b2 = kraw.record_batch([b"5"], pid, epoch, 5)
        assert kraw.produce(c, topic, [(0, b2)], corr=9)[0] == kraw.ProducePart(0, 0, 6)
        (p,) = kraw.fetch(c, topic, [(0, 0, 1 << 20)])
        assert p.high_watermark == 7
        assert [(base, n) for base, n, _ in p.batches()] == [(0, 3), (3, 2), (5, 1), (6, 1)]


def test_idle_idempotent_producers_are_forgotten_and_busy_ones_kept(broker_factory):
    # Producers idle for 3 s are forgotten (checked every 0.75 s, on the 0.2 s upkeep).
    broker = broker_factory(extra_args=["--producer-id-expiration-ms", "3000",
                                        "--tiering-interval-ms", "200"])
    topic = new_topic(broker, "raw-expiry")
    with kwire.Conn(broker.kafka_port) as c:
        idle, epoch = kraw.init_producer_id(c)
        busy, _ = kraw.init_producer_id(c)
        now = int(time.time() * 1000)  # recent, so retention keeps it
        first = kraw.record_batch([b"a"], idle, epoch, 0, timestamp=now)
        assert kraw.produce(c, topic, [(0, first)], corr=1)[0] == kraw.ProducePart(0, 0, 0)
        # The busy producer writes every 0.3 s; the idle one only resends its first batch,
        # which is a duplicate (offset 0) for as long as the partition remembers it. Once
        # forgotten, the resend appends again, as in Kafka after producer.id.expiration.ms.
        seq, corr = 0, 10
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, "the idle producer was never forgotten"
            b = kraw.record_batch([b"b"], busy, epoch, seq, timestamp=now)
            (p,) = kraw.produce(c, topic, [(0, b)], corr=corr)
            assert p.error == 0
            last, last_offset, seq = b, p.base_offset, seq + 1
            (p,) = kraw.produce(c, topic, [(0, first)], corr=corr + 1)
            corr += 2
            assert p.error == 0
            if p.base_offset != 0:
                break
            time.sleep(0.3)
        # The busy one is still known: its last batch again is a duplicate, a gap is refused.
        end = hwm(broker, topic)
        assert kraw.produce(c, topic, [(0, last)], corr=corr)[0] == \
            kraw.ProducePart(0, 0, last_offset)
        gap = kraw.record_batch([b"b"], busy, epoch, seq + 3, timestamp=now)
        assert kraw.produce(c, topic, [(0, gap)], corr=corr + 1)[0].error == \
            kraw.ERR_OUT_OF_ORDER_SEQUENCE
    assert hwm(broker, topic) == end
