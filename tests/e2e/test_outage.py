"""Bucket faults: an S3 outage (a TCP proxy in front of moto that the test cuts and
restores), corrupt chunk objects, and corrupt group snapshots.

While the bucket is down, produce keeps working and the tail stays readable; past
max_untiered_bytes a produce request waits (half its timeout) and then gets the retriable
KAFKA_STORAGE_ERROR; when the bucket is back
the tail is tiered and every acked offset is readable, in order. A corrupt chunk fails only
the fetches of its range; a corrupt newest snapshot makes restore fall back to the previous
one, and a bucket with only corrupt snapshots makes the node refuse to start.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

import kraw
import kwire
from helpers import (DeliveryTracker, assign_from_beginning, by_partition, consume_confluent,
                     produce_all, wait_until)
from test_s3 import (FAST_LEASE, keys_under, moto, restart_after_wipe, s3_env,  # noqa: F401
                     snapshot_payload, snapshots_settled, start_past_lease, use_bucket)
from test_tiering import metric

TIER_ARGS = ["--tiering-interval-ms", "200", "--snapshot-interval-ms", "200"]
KAFKA_STORAGE_ERROR = 56


class CuttableProxy:
    """A TCP proxy on 127.0.0.1 in front of `upstream`. cut() resets every live connection
    and answers new ones by closing them at once (connection reset); restore() undoes it."""

    def __init__(self, upstream_port: int):
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.up = True
        self.closed = False
        self.lock = threading.Lock()
        self.live: set[socket.socket] = set()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            if not self.up:
                self._reset(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                self._reset(client)
                continue
            with self.lock:
                self.live.update((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            with self.lock:
                for s in (src, dst):
                    if s in self.live:
                        self.live.discard(s)
                        s.close()

    @staticmethod
    def _reset(s: socket.socket):
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        except OSError:
            pass
        s.close()

    def cut(self):
        self.up = False
        with self.lock:
            for s in list(self.live):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def restore(self):
        self.up = True

    def close(self):
        self.cut()
        self.closed = True
        self.listener.close()
        self.thread.join(2)


def produce_values(broker, topic, partition, values):
    producer = broker.producer({"acks": "all", "linger.ms": 5, "message.timeout.ms": 30_000})
    dr = DeliveryTracker()
    produce_all(producer, topic, ((None, v, partition, None) for v in values), dr,
                flush_timeout=40)
    assert not dr.errors and len(dr.ok) == len(values), dr.errors[:3]
    return sorted(m.offset() for m in dr.ok)


def test_produce_survives_a_bucket_outage_and_nothing_is_lost(broker_factory, moto):  # noqa: F811
    endpoint, bucket, prefix, _ = moto
    proxy = CuttableProxy(int(endpoint.rsplit(":", 1)[1]))
    try:
        limit = 300_000
        broker = broker_factory(
            extra_args=[*TIER_ARGS, "--max-untiered-bytes", str(limit)],
            env={**s3_env(f"http://127.0.0.1:{proxy.port}"), **FAST_LEASE}, start=False)
        use_bucket(broker, f"s3://{bucket}/{prefix}")
        broker.start()
        topic = "outage"
        broker.create_topic(topic, partitions=1)
        acked: dict[int, bytes] = {}

        def record(values, offsets):
            assert len(offsets) == len(values)
            acked.update(zip(offsets, values))

        vals = [f"before-{i}".encode() for i in range(500)]
        record(vals, produce_values(broker, topic, 0, vals))
        wait_until(lambda: metric(broker, "chronik_tiering_untiered_bytes") == 0
                   and metric(broker, "chronik_tiering_chunks_uploaded_total") >= 1,
                   timeout=30, what="the first data tiered")
        uploads_before = metric(broker, "chronik_tiering_chunks_uploaded_total")

        # ---- outage: produce (acks=all) keeps working below the limit, the tail is readable
        proxy.cut()
        vals = [f"during-{i}".encode() * 4 for i in range(1000)]  # ~50 KB, under the limit
        offsets = produce_values(broker, topic, 0, vals)
        record(vals, offsets)
        consumer = broker.consumer()
        from confluent_kafka import TopicPartition
        consumer.assign([TopicPartition(topic, 0, offsets[0])])
        got = consume_confluent(consumer, len(vals), timeout=30)
        assert [m.value() for m in got] == vals
        assert [m.offset() for m in got] == offsets
        broker.assert_healthy()
        time.sleep(1)  # several tiering intervals: nothing can have been uploaded
        assert metric(broker, "chronik_tiering_chunks_uploaded_total") == uploads_before
        assert metric(broker, "chronik_tiering_untiered_bytes") > 0

        # ---- past max_untiered_bytes: KAFKA_STORAGE_ERROR (retriable), not unbounded growth
        codes = []
        with kwire.Conn(broker.kafka_port) as conn:
            deadline = time.monotonic() + 40
            n = 0
            while time.monotonic() < deadline:
                batch_vals = [f"fill-{n}-{i}".encode() + b"x" * 1000 for i in range(20)]
                sent = time.monotonic()
                part = kraw.produce(conn, topic, [(0, kraw.record_batch(batch_vals))],
                                    corr=1000 + n)[0]
                waited = time.monotonic() - sent
                n += 1
                codes.append(part.error)
                if part.error == 0:
                    record(batch_vals, list(range(part.base_offset,
                                                  part.base_offset + len(batch_vals))))
                elif part.error == KAFKA_STORAGE_ERROR:
                    break
                else:
                    pytest.fail(f"unexpected produce error {part.error}")
                if metric(broker, "chronik_tiering_untiered_bytes") > limit:
                    time.sleep(0.05)  # the refusal starts once the tiering loop has counted
        assert codes and codes[-1] == KAFKA_STORAGE_ERROR, \
            f"no KAFKA_STORAGE_ERROR after {len(codes)} produces ({sum(c == 0 for c in codes)} ok)"
        # The refused request first waited half its 10 s timeout for tiering to catch up.
        assert waited >= 4.5, f"refused after only {waited:.2f} s"
        untiered = metric(broker, "chronik_tiering_untiered_bytes")
        assert untiered < limit * 2, f"untiered data grew to {untiered} bytes"
        broker.assert_healthy()

        # ---- the bucket returns: the tail is tiered, produce is accepted again
        proxy.restore()
        wait_until(lambda: metric(broker, "chronik_tiering_untiered_bytes") == 0,
                   timeout=60, what="the tail to be tiered after the outage")
        assert metric(broker, "chronik_tiering_chunks_uploaded_total") > uploads_before
        vals = [f"after-{i}".encode() for i in range(200)]
        record(vals, produce_values(broker, topic, 0, vals))

        # Every acked offset is readable, in order, with its value; nothing else is there.
        consumer = broker.consumer()
        assign_from_beginning(consumer, topic, [0])
        msgs = consume_confluent(consumer, len(acked), timeout=60)
        assert [m.offset() for m in msgs] == sorted(acked)
        assert [m.value() for m in msgs] == [acked[o] for o in sorted(acked)]
        assert sorted(acked) == list(range(len(acked)))
    finally:
        proxy.close()


def test_acked_during_an_outage_survives_kill9_and_reaches_the_bucket(broker_factory,
                                                                      moto):  # noqa: F811
    endpoint, bucket, prefix, _ = moto
    proxy = CuttableProxy(int(endpoint.rsplit(":", 1)[1]))
    try:
        broker = broker_factory(
            extra_args=TIER_ARGS,
            env={**s3_env(f"http://127.0.0.1:{proxy.port}"), **FAST_LEASE}, start=False)
        use_bucket(broker, f"s3://{bucket}/{prefix}")
        broker.start()
        topic = "outage-crash"
        broker.create_topic(topic, partitions=2)
        sent = {0: [], 1: []}
        for p in (0, 1):
            vals = [f"p{p}-before-{i}".encode() for i in range(300)]
            assert produce_values(broker, topic, p, vals) == list(range(300))
            sent[p] += vals
        wait_until(lambda: metric(broker, "chronik_tiering_untiered_bytes") == 0,
                   timeout=30, what="the first data tiered")

        proxy.cut()
        for p in (0, 1):
            vals = [f"p{p}-during-{i}".encode() for i in range(300)]
            assert produce_values(broker, topic, p, vals) == list(range(300, 600))
            sent[p] += vals
        wait_until(lambda: metric(broker, "chronik_tiering_untiered_bytes") > 0, timeout=10,
                   what="untiered data counted during the outage")
        broker.kill9()  # acked but only on the local disk

        proxy.restore()
        start_past_lease(broker)
        # (A fresh process counts uploads from 0: both partitions' tails must go up.)
        wait_until(lambda: metric(broker, "chronik_tiering_chunks_uploaded_total") >= 2
                   and metric(broker, "chronik_tiering_untiered_bytes") == 0,
                   timeout=60, what="the tail acked during the outage to be tiered")
        # Both tails' chunks (ending at offset 599) are in the bucket; the manifest entry
        # that names each commits after its upload, and the snapshot after that: a restore
        # is only promised what a snapshot in the bucket holds.
        wait_until(lambda: sum(k.endswith(f"-{599:020}.chunk")
                               for k in keys_under(moto[3], bucket, prefix + "/topics/")) == 2,
                   timeout=30, what="chunks ending at offset 599 for both partitions")
        time.sleep(1.0)  # five tiering and snapshot intervals
        wait_until(lambda: snapshots_settled(broker), timeout=30,
                   what="the snapshots that follow the upload")

        # Only the bucket is left: everything acked, in order.
        restart_after_wipe(broker)
        consumer = broker.consumer()
        assign_from_beginning(consumer, topic, [0, 1])
        msgs = consume_confluent(consumer, 1200, timeout=60)
        got = by_partition(msgs)
        for p in (0, 1):
            assert [m.offset() for m in got[p]] == list(range(600)), f"partition {p}"
            assert [m.value() for m in got[p]] == sent[p], f"partition {p}"
    finally:
        proxy.close()


def test_state_changed_during_an_outage_reaches_the_bucket(broker_factory, moto):  # noqa: F811
    """A group that stops changing takes no new snapshot: its snapshot upload that failed
    during the outage must be retried, or the bucket keeps a stale copy for good (here: a
    topic config and a committed offset, changed only while the bucket was down)."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import ConfigResource
    endpoint, bucket, prefix, s3 = moto
    proxy = CuttableProxy(int(endpoint.rsplit(":", 1)[1]))
    try:
        broker = broker_factory(
            extra_args=TIER_ARGS,
            env={**s3_env(f"http://127.0.0.1:{proxy.port}"), **FAST_LEASE}, start=False)
        use_bucket(broker, f"s3://{bucket}/{prefix}")
        broker.start()
        topic = "changed-in-outage"
        broker.create_topic(topic, partitions=1)
        vals = [f"v{i}".encode() for i in range(100)]
        assert produce_values(broker, topic, 0, vals) == list(range(100))
        wait_until(lambda: metric(broker, "chronik_tiering_untiered_bytes") == 0
                   and metric(broker, "chronik_tiering_chunks_uploaded_total") >= 1,
                   timeout=30, what="the partition tiered")
        time.sleep(0.5)

        proxy.cut()
        res = ConfigResource(ConfigResource.Type.TOPIC, topic, set_config={"retention.ms": "7777777"})
        broker.admin().alter_configs([res])[res].result(timeout=30)
        c = broker.consumer({"group.id": "g-outage"})
        c.assign([TopicPartition(topic, 0)])
        c.commit(offsets=[TopicPartition(topic, 0, 42)], asynchronous=False)
        wait_until(lambda: snapshots_settled(broker), timeout=30,
                   what="snapshots taken locally during the outage")
        proxy.restore()

        def newest_in_bucket_has(group: int, needle: bytes) -> bool:
            keys = keys_under(s3, bucket, f"{prefix}/snapshots/group-{group:020}/")
            raw = keys and s3.get_object(Bucket=bucket, Key=keys[-1])["Body"].read()
            return bool(raw) and needle in snapshot_payload(raw)
        # No new entries follow in either group: only a retried upload can get these there.
        wait_until(lambda: newest_in_bucket_has(0, b"7777777")
                   and newest_in_bucket_has(1, b"g-outage"),
                   timeout=30, what="the snapshots taken during the outage in the bucket")

        restart_after_wipe(broker)
        desc = ConfigResource(ConfigResource.Type.TOPIC, topic)
        configs = broker.admin().describe_configs([desc])[desc].result(timeout=10)
        assert configs["retention.ms"].value == "7777777", "topic config lost with the disk"
        g = broker.consumer({"group.id": "g-outage"})
        assert g.committed([TopicPartition(topic, 0)], timeout=10)[0].offset == 42, \
            "committed offset lost with the disk"
        consumer = broker.consumer()
        assign_from_beginning(consumer, topic, [0])
        assert [m.value() for m in consume_confluent(consumer, 100, timeout=30)] == vals
    finally:
        proxy.close()


# ---- corrupt objects in a file:// bucket ------------------------------------------------------

def chunk_files(broker, partition: int) -> list:
    return sorted(p for p in broker.bucket_dir.rglob("*.chunk")
                  if p.parent.parent.name == str(partition))


def corrupt(path, how: str):
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[len(data) // 2] ^= 0x40
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncate", "bitflip"])
def test_corrupt_chunk_fails_only_its_range(broker_factory, how):
    broker = broker_factory(extra_args=TIER_ARGS, env=FAST_LEASE)
    topic, total = "corrupt-chunk", 2_000
    broker.create_topic(topic, partitions=2)
    producer = broker.producer({"acks": "all", "linger.ms": 5})
    dr = DeliveryTracker()
    produce_all(producer, topic, ((str(i).encode(), f"v{i}".encode() * 10, i % 2, None)
                                  for i in range(total)), dr)
    assert not dr.errors and len(dr.ok) == total
    wait_until(lambda: metric(broker, "chronik_tiering_untiered_bytes") == 0
               and chunk_files(broker, 0) and chunk_files(broker, 1),
               timeout=30, what="both partitions tiered")
    wait_until(lambda: snapshots_settled(broker), timeout=30,
               what="snapshots (with the manifests) in the bucket")

    restart_after_wipe(broker)
    victim = chunk_files(broker, 0)[0]
    corrupt(victim, how)
    key = victim.relative_to(broker.bucket_dir).as_posix()

    with kwire.Conn(broker.kafka_port) as conn:
        bad = kraw.fetch(conn, topic, [(0, 0, 1 << 20)], corr=7)[0]
        good = kraw.fetch(conn, topic, [(1, 0, 1 << 20)], corr=8)[0]
    assert bad.error == KAFKA_STORAGE_ERROR and not bad.records, bad
    assert good.error == 0 and good.batches(), good
    wait_until(lambda: key in broker.log_path.read_text(errors="replace"), timeout=5,
               what=f"the broker log to name {key}")
    log = broker.log_path.read_text(errors="replace")
    assert "panicked" not in log

    # The other partition serves everything; the corrupt range keeps failing (no garbage).
    consumer = broker.consumer()
    assign_from_beginning(consumer, topic, [1])
    msgs = consume_confluent(consumer, total // 2, timeout=30)
    assert [int(m.key()) for m in msgs] == list(range(1, total, 2))
    with kwire.Conn(broker.kafka_port) as conn:
        assert kraw.fetch(conn, topic, [(0, 0, 1 << 20)], corr=9)[0].error == KAFKA_STORAGE_ERROR
    broker.assert_healthy()


def metadata_snapshots(broker) -> list:
    return sorted((broker.bucket_dir / "snapshots" / f"group-{0:020}").glob("*.snap"))


def newest_changes(broker, before):
    snaps = metadata_snapshots(broker)
    return snaps and (not before or snaps[-1].name > before[-1].name)


def test_corrupt_newest_snapshot_falls_back_to_the_previous_one(broker_factory):
    broker = broker_factory(extra_args=TIER_ARGS, env=FAST_LEASE)
    before = metadata_snapshots(broker)
    broker.create_topic("first", partitions=1)
    wait_until(lambda: newest_changes(broker, before), timeout=30,
               what="a metadata snapshot after the first topic")
    before = metadata_snapshots(broker)
    broker.create_topic("second", partitions=1)
    wait_until(lambda: newest_changes(broker, before), timeout=30,
               what="a metadata snapshot after the second topic")
    broker.kill9()
    snaps = metadata_snapshots(broker)
    assert len(snaps) >= 2, snaps
    newest = snaps[-1]
    corrupt(newest, "bitflip")

    restart_after_wipe(broker)
    log = broker.log_path.read_text(errors="replace")
    restart_log = log[log.rfind("===== start #"):]
    assert newest.name in restart_log and "trying the previous one" in restart_log, restart_log
    assert "restoring group from bucket snapshot" in restart_log
    names = broker.topic_names()
    # The fallback snapshot predates "second" but knows "first".
    assert "first" in names
    broker.assert_healthy()


def test_only_corrupt_snapshots_refuse_to_start(broker_factory):
    broker = broker_factory(extra_args=TIER_ARGS, env=FAST_LEASE)
    broker.create_topic("precious", partitions=1)
    wait_until(lambda: len(metadata_snapshots(broker)) >= 1, timeout=30,
               what="a metadata snapshot in the bucket")
    time.sleep(0.5)
    broker.kill9()
    for snap in metadata_snapshots(broker):
        corrupt(snap, "truncate")
    with pytest.raises(AssertionError) as e:
        restart_after_wipe(broker, timeout=30)
    message = str(e.value)
    assert "broker exited with code" in message, message
    assert "snapshot" in message and "group 0" in message, message
    assert "panicked" not in message, message
