"""Acknowledged data survives a clean restart and a kill -9."""

import subprocess
import sys
from pathlib import Path

from confluent_kafka import TopicPartition

from helpers import (DeliveryTracker, assign_from_beginning, by_partition, consume_confluent,
                     produce_all, wait_until)

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


def read_lines(path: Path) -> list:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def test_kill9_during_produce_keeps_every_acked_message_once(broker, tmp_path):
    topic, parts = "dur-kill", 3
    broker.create_topic(topic, partitions=parts)
    out = tmp_path / "producer"
    out.mkdir()
    acks_log, errors_log = out / "acks.log", out / "errors.log"
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "durable_producer.py"), broker.bootstrap, topic, str(parts),
         str(out)],
        stdin=subprocess.DEVNULL, stdout=open(out / "stdout.log", "wb"), stderr=subprocess.STDOUT)
    try:
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
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    summary = (out / "done").read_text() if (out / "done").exists() else "(no done file)"
    assert proc.returncode == 0, (
        f"producer exited {proc.returncode}: {summary}\n" + "\n".join(read_lines(errors_log)[-20:])
        + "\n" + "\n".join(read_lines(out / "stdout.log")[-20:]))
    assert "undelivered=0" in summary, summary

    acked = {}  # seq -> (partition, offset)
    for line in read_lines(acks_log):
        seq, p, off = map(int, line.split())
        assert seq not in acked, f"two delivery reports for {seq}"
        acked[seq] = (p, off)

    hw = watermarks(broker, topic, parts)
    consumer = broker.consumer()
    assign_from_beginning(consumer, topic, range(parts))
    msgs = consume_confluent(consumer, sum(h for _, h in hw.values()), timeout=180)
    assert len(msgs) == sum(h for _, h in hw.values()), "could not read up to the high watermark"

    for p, ms in by_partition(msgs).items():
        seqs = [int(m.key()) for m in ms]
        # Strictly increasing: nothing duplicated (acked or not), nothing reordered.
        dups_or_reorders = [(a, b) for a, b in zip(seqs, seqs[1:]) if b <= a]
        assert not dups_or_reorders, f"partition {p}: out of order/duplicates {dups_or_reorders[:10]}"
        assert all(s % parts == p for s in seqs), f"partition {p} holds foreign records"
        for m in ms:
            s = int(m.key())
            if s in acked:
                assert acked[s] == (p, m.offset()), \
                    f"seq {s} acked at {acked[s]} but stored at {(p, m.offset())}"
    present = {int(m.key()) for m in msgs}
    missing = sorted(set(acked) - present)
    assert not missing, f"{len(missing)} acked messages lost, e.g. {missing[:20]}"
    broker.assert_healthy()
