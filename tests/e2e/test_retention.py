"""Retention, DeleteRecords, compaction and GC: the earliest offset moves, the objects that
left a partition's manifest leave the bucket after the GC grace period, and what is kept
stays readable from the beginning, in order."""

import os
import re
import time

import pytest
from confluent_kafka import KafkaException, TopicPartition

from bucket_sync import metric
from helpers import DeliveryTracker, assign_from_beginning, consume_confluent, wait_until

# Fast tiering and GC; compaction off unless a test turns it on.
ARGS = ["--tiering-interval-ms", "200", "--snapshot-interval-ms", "200", "--gc-grace-ms", "300",
        "--compaction-min-chunks", "1000000"]

CHUNK_NAME = re.compile(r"^(\d{20})-(\d{20})\.(chunk|segment)$")


def objects(broker) -> list:
    """(base, last, kind) of every chunk and segment object in the bucket, sorted."""
    out = []
    for p in (broker.bucket_dir / "topics").rglob("*"):
        m = CHUNK_NAME.match(p.name)
        if m:
            out.append((int(m.group(1)), int(m.group(2)), m.group(3)))
    return sorted(out)


def produce(broker, topic, start, count, timestamp=None, conf=None):
    """Keys start..start+count to partition 0; `timestamp` (ms) sets every record's time."""
    producer = broker.producer({"acks": "all", "linger.ms": 5, **(conf or {})})
    dr = DeliveryTracker()
    for i in range(start, start + count):
        kwargs = {"timestamp": timestamp} if timestamp is not None else {}
        producer.produce(topic, key=str(i).encode(), value=f"value-{i}".encode() * 10,
                         partition=0, on_delivery=dr, **kwargs)
        producer.poll(0)
    assert producer.flush(60) == 0
    assert not dr.errors and len(dr.ok) == count, dr.errors[:3]


def wait_tiered(broker, end):
    """Until offsets below `end` are in bucket objects (the tail is tiered)."""
    wait_until(lambda: any(last == end - 1 for _, last, _ in objects(broker)), timeout=30,
               what=f"offsets below {end} to be tiered")


def produce_rounds(broker, topic, rounds, per_round, timestamp=None, start=0):
    """Each round is tiered before the next, so rounds land in separate chunks."""
    for r in range(rounds):
        produce(broker, topic, start + r * per_round, per_round, timestamp)
        wait_tiered(broker, start + (r + 1) * per_round)


def watermarks(broker, topic):
    c = broker.consumer()
    return c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)


def read_keys(broker, topic, expected):
    c = broker.consumer()
    assign_from_beginning(c, topic, [0])
    msgs = consume_confluent(c, expected, timeout=60)
    return [m.offset() for m in msgs], [int(m.key()) for m in msgs]


def test_delete_records_moves_earliest_and_deletes_chunk_objects(broker_factory):
    broker = broker_factory(extra_args=ARGS)
    topic = "deleted"
    broker.create_topic(topic)
    produce_rounds(broker, topic, 3, 500)
    before = objects(broker)
    assert len(before) >= 3 and before[0][0] == 0

    # Delete up to the end of the first round's chunk(s).
    cut = 500
    fs = broker.admin().delete_records([TopicPartition(topic, 0, cut)], operation_timeout=10,
                                       request_timeout=20)
    deleted = list(fs.values())[0].result(timeout=20)
    assert deleted.low_watermark == cut
    assert watermarks(broker, topic) == (cut, 1500)

    # Objects wholly below the cut leave the bucket after the grace period; the rest stay.
    wait_until(lambda: all(last >= cut for _, last, _ in objects(broker)), timeout=30,
               what="chunks below the new log start to be deleted from the bucket")
    assert [o for o in before if o[1] >= cut] == objects(broker)
    assert metric(broker, "chronik_gc_objects_deleted_total") >= 1

    # Consumers from the beginning start at the new log start.
    offsets, keys = read_keys(broker, topic, 1000)
    assert offsets == list(range(cut, 1500)) and keys == list(range(cut, 1500))

    # Errors as Kafka answers them.
    fs = broker.admin().delete_records([TopicPartition(topic, 0, 999_999)], request_timeout=20)
    with pytest.raises(KafkaException) as e:
        list(fs.values())[0].result(timeout=20)
    assert "OFFSET_OUT_OF_RANGE" in str(e.value) or "out of range" in str(e.value).lower()

    # kafka-python's admin: -1 deletes everything up to the high watermark.
    from kafka import KafkaAdminClient
    from kafka.structs import TopicPartition as KTP
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=20_000)
    try:
        res = admin.delete_records({KTP(topic, 0): -1}, timeout_ms=20_000)
        assert res[KTP(topic, 0)]["low_watermark"] == 1500
    finally:
        admin.close()
    assert watermarks(broker, topic) == (1500, 1500)
    wait_until(lambda: not objects(broker), timeout=30, what="every chunk to be deleted")

    # The partition keeps going at the log end.
    produce(broker, topic, 1500, 10)
    offsets, keys = read_keys(broker, topic, 10)
    assert offsets == list(range(1500, 1510))

    # DeleteRecords survives a restart (it is in the Raft log / snapshot).
    broker.restart()
    assert watermarks(broker, topic)[0] == 1500


def test_retention_ms_expires_old_chunks_and_keeps_new_data(broker_factory):
    broker = broker_factory(extra_args=ARGS)
    topic = "expiring"
    broker.create_topic(topic, config={"retention.ms": "600000"})
    old = int(time.time() * 1000) - 3_600_000
    # An hour old: past retention as soon as it is written.
    produce_rounds(broker, topic, 2, 300, timestamp=old)
    produce_rounds(broker, topic, 1, 300, start=600)

    wait_until(lambda: watermarks(broker, topic)[0] == 600, timeout=30,
               what="retention to move the earliest offset past the old data")
    wait_until(lambda: objects(broker) and all(base >= 600 for base, _, _ in objects(broker)),
               timeout=30, what="expired chunks to leave the bucket")
    offsets, keys = read_keys(broker, topic, 300)
    assert keys == list(range(600, 900))
    assert metric(broker, "chronik_retention_deletes_total") >= 1


def test_retention_ms_expires_the_newest_data_too(broker_factory):
    # Kafka rolls and deletes an active segment whose records have all expired; so does
    # Chronik with the newest chunk and the untiered tail. The partition is then empty at
    # its end offset, and new data goes on from there.
    broker = broker_factory(extra_args=ARGS)
    topic = "all-expired"
    broker.create_topic(topic, config={"retention.ms": "600000"})
    produce(broker, topic, 0, 100, timestamp=int(time.time() * 1000) - 3_600_000)
    wait_until(lambda: watermarks(broker, topic) == (100, 100), timeout=30,
               what="retention to expire the newest data")
    produce(broker, topic, 100, 50)
    offsets, keys = read_keys(broker, topic, 50)
    assert (offsets, keys) == (list(range(100, 150)), list(range(100, 150)))
    assert watermarks(broker, topic) == (100, 150)


def test_retention_bytes_keeps_only_the_newest_data(broker_factory):
    broker = broker_factory(extra_args=ARGS)
    topic = "sized"
    broker.create_topic(topic, config={"retention.bytes": "1"})
    produce_rounds(broker, topic, 3, 300)
    # Kafka keeps at least retention.bytes: only the newest chunk stays.
    wait_until(lambda: len(objects(broker)) == 1, timeout=30,
               what="all but the newest chunk to be deleted")
    (base, last, _), = objects(broker)
    assert last == 899
    low, high = watermarks(broker, topic)
    assert (low, high) == (base, 900)
    offsets, keys = read_keys(broker, topic, 900 - base)
    assert keys == list(range(base, 900))


def test_compaction_merges_small_chunks_and_reads_stay_in_order(broker_factory):
    broker = broker_factory(extra_args=[
        "--tiering-interval-ms", "100", "--snapshot-interval-ms", "200", "--gc-grace-ms", "300",
        "--compaction-min-chunks", "4"])
    topic = "compacted"
    broker.create_topic(topic)
    total = 3000
    # A quiet partition: each round is cut on the clock into a chunk far below the chunk
    # size, the kind compaction merges (full-size chunks are left alone).
    produce_rounds(broker, topic, 6, total // 6)

    # Read everything while chunks are being cut, merged and collected.
    offsets, keys = read_keys(broker, topic, total)
    assert offsets == list(range(total)) and keys == list(range(total))

    wait_tiered(broker, total)
    wait_until(lambda: metric(broker, "chronik_compaction_segments_written_total") >= 1,
               timeout=60, what="segments to be written")
    uploaded = metric(broker, "chronik_tiering_chunks_uploaded_total")

    def tiles(objs):
        return (objs and objs[0][0] == 0 and objs[-1][1] == total - 1
                and all(a[1] + 1 == b[0] for a, b in zip(objs, objs[1:])))

    def settled():
        objs = objects(broker)
        # Every chunk that compaction merged is gone (GC after the grace period): at most
        # min_chunks - 1 loose chunks, and the objects left tile the log exactly.
        return (sum(1 for o in objs if o[2] == "chunk") < 4 and len(objs) < uploaded
                and tiles(objs))

    wait_until(settled, timeout=60, what="merged chunks to be collected")
    objs = objects(broker)
    assert any(kind == "segment" for _, _, kind in objs)
    # The objects tile the log with no gap or overlap.
    assert objs[0][0] == 0 and objs[-1][1] == total - 1
    assert all(a[1] + 1 == b[0] for a, b in zip(objs, objs[1:])), objs

    # A cold reader (after a restart: empty cache) reads everything, in order, from segments.
    broker.restart()
    offsets, keys = read_keys(broker, topic, total)
    assert offsets == list(range(total)) and keys == list(range(total))


def test_objects_no_manifest_can_name_are_swept(broker_factory):
    broker = broker_factory(extra_args=ARGS)
    topic = "orphans"
    broker.create_topic(topic)
    produce_rounds(broker, topic, 2, 200)
    before = objects(broker)
    (b0, l0, _), (_, l1, _) = before[0], before[1]
    assert l0 > b0, before
    topic_dir = next((broker.bucket_dir / "topics").rglob("*.chunk")).parent.parent
    hour_ago = time.time() - 3600

    def plant(kind, base, last, ext):
        path = topic_dir / kind / f"{base:020}-{last:020}.{ext}"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"not a real object")
        os.utime(path, (hour_ago, hour_ago))
        return path

    # A lost upload (its commit never came) of a range that is now tiered differently: no
    # command can ever commit it.
    lost = plant("chunks", b0, l0 - 1, "chunk")
    # A merge of exactly the first two chunks: compaction could still commit it.
    mergeable = plant("segments", b0, l1, "segment")
    # Past the log end: after a restore from an older snapshot such an object may hold the
    # only copy of records the restore lost, so it is kept for recovery tools.
    beyond = plant("chunks", 500, 599, "chunk")
    # Not a Chronik key: never touched.
    stray = topic_dir / "chunks" / "notes.txt"
    stray.write_text("an operator's notes")
    os.utime(stray, (hour_ago, hour_ago))

    wait_until(lambda: not lost.exists(), timeout=30, what="the lost upload to be swept")
    time.sleep(1.5)  # another sweep pass
    assert mergeable.exists() and beyond.exists() and stray.exists()
    assert metric(broker, "chronik_gc_orphans_deleted_total") == 1
    assert [o for o in objects(broker) if o in before] == before, "every named object stays"
    offsets, keys = read_keys(broker, topic, 400)
    assert offsets == list(range(400)) and keys == list(range(400))
