"""Bucket fencing: a second cluster cannot take over a bucket a live cluster owns; a node
with an empty data dir restores from a bucket whose owner is gone; a data dir of one
cluster is refused on another cluster's bucket."""

import json
import subprocess
import time

from bucket_sync import metric, wait_in_bucket
from helpers import DeliveryTracker, assign_from_beginning, consume_confluent, produce_all, wait_until

FAST_LEASE = ["--lease-interval-ms", "300", "--lease-timeout-ms", "2000",
              "--tiering-interval-ms", "200", "--snapshot-interval-ms", "200"]


def run_to_exit(broker, timeout=30):
    """Starts the broker's command and expects it to exit by itself; returns (code, output)."""
    proc = subprocess.run(broker.command(), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout,
                          env={"PATH": "/usr/bin:/bin", "RUST_LOG": "info,openraft=warn"})
    return proc.returncode, proc.stdout + proc.stderr


def lease_age_ms(bucket_dir) -> float:
    lease = json.loads((bucket_dir / "cluster" / "leases" / "node-1.json").read_text())
    return time.time() * 1000 - lease["heartbeat_unix_ms"]


def test_second_cluster_is_refused_while_the_owner_lives(broker_factory):
    owner = broker_factory(extra_args=FAST_LEASE)
    intruder = broker_factory(extra_args=FAST_LEASE, start=False)
    intruder.bucket_dir = owner.bucket_dir
    code, out = run_to_exit(intruder)
    assert code != 0
    assert "owned by live cluster" in out, out[-2000:]
    owner.assert_healthy()


def test_new_node_id_without_peers_is_told_to_give_them(broker_factory):
    # A node with another id and no --peers cannot join the live cluster: it must say so
    # at once instead of waiting for a metadata leader it has no address for.
    owner = broker_factory(extra_args=FAST_LEASE)
    stranger = broker_factory(extra_args=FAST_LEASE, start=False, node_id=2)
    stranger.bucket_dir = owner.bucket_dir
    started = time.monotonic()
    code, out = run_to_exit(stranger)
    assert code != 0
    assert "--peers" in out and "nodes 1 renew leases" in out, out[-2000:]
    assert time.monotonic() - started < 15
    owner.assert_healthy()


def test_empty_node_restores_once_the_owner_is_gone(broker_factory):
    owner = broker_factory(extra_args=FAST_LEASE)
    owner.create_topic("dr", partitions=2)
    producer = owner.producer({"acks": "all"})
    dr = DeliveryTracker()
    produce_all(producer, "dr", ((str(i).encode(), b"x", i % 2, None) for i in range(1000)), dr)
    wait_until(lambda: metric(owner, "chronik_tiering_chunks_uploaded_total") >= 2,
               timeout=30, what="both partitions to be tiered")
    wait_in_bucket(owner)
    owner.kill9()
    # The owner's lease has to expire before anyone may restore from its bucket.
    wait_until(lambda: lease_age_ms(owner.bucket_dir) > 2500, timeout=30,
               what="the dead owner's lease to expire")
    successor = broker_factory(extra_args=FAST_LEASE, start=False)
    successor.bucket_dir = owner.bucket_dir
    successor.start()
    consumer = successor.consumer()
    assign_from_beginning(consumer, "dr", range(2))
    assert len(consume_confluent(consumer, 1000, timeout=60)) == 1000
    consumer.close()

    # The restored node is an ordinary node from now on: it writes, and a kill -9 restart
    # recovers from its own data dir (its WAL starts after the restored snapshot).
    producer = successor.producer({"acks": "all"})
    dr = DeliveryTracker()
    produce_all(producer, "dr", ((str(i).encode(), b"y", i % 2, None) for i in range(200)), dr)
    successor.kill9()
    successor.start()
    consumer = successor.consumer()
    assign_from_beginning(consumer, "dr", range(2))
    assert len(consume_confluent(consumer, 1200, timeout=60)) == 1200


def test_clean_stop_gives_up_the_lease(broker_factory):
    # After a clean stop nobody is writing to the bucket, so a node restoring from it
    # (a replaced disk) need not wait for the lease to expire. The default lease timeout
    # (15 s) is kept here: the restore must not wait for it.
    owner = broker_factory(extra_args=["--tiering-interval-ms", "200",
                                       "--snapshot-interval-ms", "200"])
    owner.create_topic("clean", partitions=1)
    producer = owner.producer({"acks": "all"})
    dr = DeliveryTracker()
    produce_all(producer, "clean", ((str(i).encode(), b"x", 0, None) for i in range(300)), dr)
    wait_in_bucket(owner)
    assert owner.stop() == 0
    assert "released the bucket lease" in owner.log_tail()
    assert lease_age_ms(owner.bucket_dir) > 1e9, "the lease is marked expired"
    successor = broker_factory(start=False)
    successor.bucket_dir = owner.bucket_dir
    started = time.monotonic()
    successor.start()
    assert time.monotonic() - started < 10, "the restore waited for the lease"
    consumer = successor.consumer()
    assign_from_beginning(consumer, "clean", [0])
    assert len(consume_confluent(consumer, 300, timeout=60)) == 300
    consumer.close()


def test_restart_on_a_wrong_empty_bucket_is_refused(broker_factory, tmp_path):
    # A node whose data lives in one bucket, restarted with --bucket naming an empty one,
    # would ship new data where no restore ever looks: it is refused, and the empty
    # bucket stays empty.
    node = broker_factory(extra_args=FAST_LEASE)
    node.create_topic("wrong-bucket")
    assert node.stop() == 0
    wrong = tmp_path / "wrong-bucket"
    wrong.mkdir()
    node.bucket_dir = wrong
    code, out = run_to_exit(node)
    assert code != 0
    assert "check --bucket" in out, out[-2000:]
    assert not any(wrong.rglob("*")), list(wrong.rglob("*"))


def test_data_dir_of_another_cluster_is_refused(broker_factory):
    first = broker_factory(extra_args=FAST_LEASE)
    second = broker_factory(extra_args=FAST_LEASE)
    second.stop()
    # second's data dir belongs to its own cluster; first's bucket to another.
    second.bucket_dir = first.bucket_dir
    code, out = run_to_exit(second)
    assert code != 0
    assert "belongs to cluster" in out, out[-2000:]
