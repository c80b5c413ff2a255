"""Acknowledged data survives a clean restart and a kill -9."""

import sys
from pathlib import Path

from confluent_kafka import TopicPartition

from helpers import (DeliveryTracker, assert_acked_stored_once, assert_producer_succeeded,
                     assign_from_beginning, by_partition, consume_confluent, count_lines,
                     produce_all, producer_process, read_acks, wait_until)

HERE = Path(__file__).resolve().parent


def watermarks(broker, topic, parts):
    consumer = broker.consumer()
    return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
            for p in range(parts)}


def test_clean_restart_keeps_everything(broker):
    topic, parts, total = "dur-clean", 3, 20_000
    broker.create_topic(topic, partitions=parts)
    producer = broker.producer({"acks": "all", "linger.ms": 10})
    dr = DeliveryTracker()
    produce_all(producer, topic,
                ((str(i).encode(), f"v{i}".encode(), i % parts, None) for i in range(total)), dr)
    assert not dr.errors and len(dr.ok) == total
    before = watermarks(broker, topic, parts)

    rc = broker.stop()
    assert rc == 0, f"graceful shutdown on SIGTERM should exit 0, got {rc}"
    broker.start()

    assert watermarks(broker, topic, parts) == before
    consumer = broker.consumer()
    assign_from_beginning(consumer, topic, range(parts))
    msgs = consume_confluent(consumer, total, timeout=120)
    assert len(msgs) == total
    for p, ms in by_partition(msgs).items():
        keys = [int(m.key()) for m in ms]
        assert keys == list(range(p, total, parts)), f"partition {p} differs after restart"
        assert [m.offset() for m in ms] == list(range(len(ms)))

    # The broker keeps accepting writes after the restart, continuing the offsets.
    dr = DeliveryTracker()
    producer = broker.producer({"acks": "all"})
    producer.produce(topic, key=b"after", value=b"restart", partition=0, on_delivery=dr)
    assert producer.flush(30) == 0 and not dr.errors
    assert dr.ok[0].offset() == before[0][1]


def test_kill9_during_produce_keeps_every_acked_message_once(broker, tmp_path):
    topic, parts = "dur-kill", 3
    broker.create_topic(topic, partitions=parts)
    out = tmp_path / "producer"
    acks_log = out / "acks.log"
    with producer_process([sys.executable, str(HERE / "durable_producer.py"), broker.bootstrap,
                           topic, str(parts), str(out)], out) as proc:
        wait_until(lambda: count_lines(acks_log) >= 5000, timeout=90,
                   what="5000 acked messages before the kill")
        broker.kill9()
        acked_at_kill = count_lines(acks_log)
        broker.start()  # same data dir, same ports
        # The idempotent producer reconnects and keeps going after the crash.
        wait_until(lambda: count_lines(acks_log) >= acked_at_kill + 5000, timeout=120,
                   what="5000 more acks after the restart (producer recovered)")
        (out / "stop").touch()
        proc.wait(timeout=180)

    assert_producer_succeeded(proc, out)
    acked = read_acks(acks_log)  # seq -> (partition, offset)

    hw = watermarks(broker, topic, parts)
    consumer = broker.consumer()
    assign_from_beginning(consumer, topic, range(parts))
    msgs = consume_confluent(consumer, sum(h for _, h in hw.values()), timeout=180)
    assert len(msgs) == sum(h for _, h in hw.values()), "could not read up to the high watermark"

    records = {p: [(m.offset(), m.key(), m.value()) for m in ms]
               for p, ms in by_partition(msgs).items()}
    assert_acked_stored_once(records, acked, parts)
    broker.assert_healthy()
