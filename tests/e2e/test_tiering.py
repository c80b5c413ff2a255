"""Tiering: data moves to the bucket, the WAL stays short, and a node whose data directory
is wiped restores topics, data and offsets from the bucket alone."""

import shutil

from bucket_sync import metric, wait_in_bucket
from helpers import (DeliveryTracker, assign_from_beginning, by_partition, consume_confluent,
                     produce_all, wait_until)

# A wiped node waits for its own (dead) lease to expire before restoring: keep it short.
TIER_ARGS = ["--tiering-interval-ms", "200", "--snapshot-interval-ms", "200",
             "--lease-interval-ms", "300", "--lease-timeout-ms", "1500"]
# Small WAL segments, so purged segments are deleted (and the WAL visibly shrinks) quickly.
SMALL_SEGMENTS = {"CHRONIK_WAL_SEGMENT_BYTES": "262144"}


def chunk_objects(broker) -> list:
    return sorted(p for p in broker.bucket_dir.rglob("*.chunk"))


def produce_keyed(broker, topic, parts, total, start=0):
    producer = broker.producer({"acks": "all", "linger.ms": 5})
    dr = DeliveryTracker()
    produce_all(producer, topic, ((str(i).encode(), f"v{i}".encode() * 20, i % parts, None)
                                  for i in range(start, start + total)), dr)
    assert not dr.errors and len(dr.ok) == total, dr.errors[:3]


def consume_keys(broker, topic, parts, expected):
    consumer = broker.consumer()
    assign_from_beginning(consumer, topic, range(parts))
    msgs = consume_confluent(consumer, expected, timeout=120)
    return {p: [int(m.key()) for m in ms] for p, ms in by_partition(msgs).items()}, msgs


def test_data_is_tiered_and_read_back_after_a_wipe(broker_factory):
    broker = broker_factory(extra_args=TIER_ARGS, env=SMALL_SEGMENTS)
    topic, parts, total = "tiered", 3, 30_000
    broker.create_topic(topic, partitions=parts)
    produce_keyed(broker, topic, parts, total)

    # Everything reaches the bucket: no untiered bytes left, chunk objects present.
    wait_until(lambda: metric(broker, "chronik_tiering_untiered_bytes") == 0
               and metric(broker, "chronik_tiering_chunks_uploaded_total") >= parts,
               timeout=30, what="the tail to be tiered")
    assert len(chunk_objects(broker)) >= parts
    # Snapshots let the WAL be purged: the live WAL is far smaller than what was produced.
    wait_until(lambda: metric(broker, "chronik_wal_bytes") < 2_000_000, timeout=30,
               what="the WAL to be purged after snapshots")
    # Tiered data is in the bucket for a restore once a snapshot that lists it is there.
    wait_in_bucket(broker)

    # Lose the disk entirely; keep the bucket.
    broker.kill9()
    shutil.rmtree(broker.data_dir)
    broker.data_dir.mkdir()
    broker.start()

    by_part, msgs = consume_keys(broker, topic, parts, total)
    assert len(msgs) == total
    for p, keys in by_part.items():
        assert keys == list(range(p, total, parts)), f"partition {p} differs after restore"
        assert [m.offset() for m in by_partition(msgs)[p]] == list(range(len(keys)))
    # Reads of tiered offsets went to the bucket.
    assert metric(broker, "chronik_tiering_cache_misses_total") >= parts

    # The restored partitions keep going: offsets continue where they were.
    produce_keyed(broker, topic, parts, 3, start=total)
    _, msgs = consume_keys(broker, topic, parts, total + 3)
    assert len(msgs) == total + 3


def test_untiered_tail_survives_kill9_and_restart(broker_factory):
    # Tiering effectively off: everything stays in the untiered tail, held by the WAL.
    broker = broker_factory(extra_args=["--tiering-interval-ms", "3600000",
                                        "--snapshot-interval-ms", "100"], env=SMALL_SEGMENTS)
    topic = "tail"
    broker.create_topic(topic, partitions=1)
    produce_keyed(broker, topic, 1, 5_000)
    broker.kill9()
    broker.start()
    by_part, msgs = consume_keys(broker, topic, 1, 5_000)
    assert by_part[0] == list(range(5_000))
    assert not chunk_objects(broker)


def test_topics_and_configs_come_back_from_the_bucket(broker_factory):
    broker = broker_factory(extra_args=TIER_ARGS)
    broker.create_topic("restored-config", partitions=2, config={"retention.ms": "123456"})
    # Every group's newest snapshot in the bucket covers what it applied (RPO: one
    # snapshot interval).
    wait_in_bucket(broker)
    broker.kill9()
    shutil.rmtree(broker.data_dir)
    broker.data_dir.mkdir()
    broker.start()
    assert broker.topic_partitions("restored-config") == 2
    from confluent_kafka.admin import ConfigResource
    res = ConfigResource(ConfigResource.Type.TOPIC, "restored-config")
    configs = broker.admin().describe_configs([res])[res].result(timeout=10)
    assert configs["retention.ms"].value == "123456"
