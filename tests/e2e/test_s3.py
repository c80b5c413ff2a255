"""The broker against a real S3 API (moto): tier, lose the disk, restore from S3 alone; and
start-up failures for a malformed bucket URL or an unreachable endpoint.

scripts/test starts moto and exports CHRONIK_TEST_S3_ENDPOINT and CHRONIK_TEST_S3_BUCKET;
without them the moto test skips. Every test uses its own key prefix in the shared bucket.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid

import pytest

from conftest import chronik_bin, free_port
from helpers import (DeliveryTracker, assign_from_beginning, by_partition, consume_confluent,
                     produce_all, wait_until)
from bucket_sync import metric, wait_in_bucket

TIER_ARGS = ["--tiering-interval-ms", "200", "--snapshot-interval-ms", "200"]
OFFSETS_GROUP = 1  # chronik_metastore::types::OFFSETS_GROUP
# Fencing: a node with a wiped data dir may restore only once the previous owner's lease
# expired; keep that short so a kill -9 + wipe + restart takes a second, not fifteen.
FAST_LEASE = {"CHRONIK_LEASE_INTERVAL_MS": "200", "CHRONIK_LEASE_TIMEOUT_MS": "1000"}


def s3_env(endpoint: str) -> dict:
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}


def use_bucket(broker, url: str) -> None:
    """Point a Broker (from the shared fixture, which passes a file:// bucket) at `url`."""
    base = broker.command

    def command():
        cmd = base()
        cmd[cmd.index("--bucket") + 1] = url
        return cmd
    broker.command = command


@pytest.fixture
def moto():
    endpoint = os.environ.get("CHRONIK_TEST_S3_ENDPOINT")
    if not endpoint:
        pytest.skip("CHRONIK_TEST_S3_ENDPOINT is not set (scripts/test starts moto and sets it)")
    bucket = os.environ.get("CHRONIK_TEST_S3_BUCKET", "chronik-test")
    import boto3
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test")
    try:
        s3.create_bucket(Bucket=bucket)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    except s3.exceptions.BucketAlreadyExists:
        pass
    prefix = f"e2e-{uuid.uuid4().hex[:12]}"
    yield endpoint, bucket, prefix, s3
    # Remove what this test wrote.
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix + "/") for o in page.get("Contents", [])]
    for i in range(0, len(keys), 1000):
        s3.delete_objects(Bucket=bucket,
                          Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})


def restart_after_wipe(broker, timeout: float = 30):
    """kill -9, wipe the data dir, start again; waits out the dead node's bucket lease."""
    broker.kill9()
    shutil.rmtree(broker.data_dir)
    broker.data_dir.mkdir()
    return start_past_lease(broker, timeout)


def start_past_lease(broker, timeout: float = 30):
    """Start; while the start-up fails on the previous owner's bucket lease, retry."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return broker.start()
        except AssertionError:
            log = broker.log_path.read_text(errors="replace")
            last_start = log[log.rfind("===== start #"):]
            if "lease" not in last_start or time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def snapshots_settled(broker) -> bool:
    """Every Raft group on the node has snapshotted all it applied (the snapshot is saved,
    and uploaded unless the bucket failed, before the group's snapshot index moves)."""
    import re
    applied, snap = {}, {}
    for line in broker.metrics().splitlines():
        m = re.match(r'^chronik_raft_(applied|snapshot)_index\{group="(\d+)"\} (-?\d+)$', line)
        if m:
            (applied if m.group(1) == "applied" else snap)[m.group(2)] = int(m.group(3))
    return bool(applied) and applied == snap


def snapshot_payload(raw: bytes) -> bytes:
    """The state machine payload of a bucket snapshot (envelope: tiering/src/snapshot.rs)."""
    import struct
    import zstandard
    assert raw[:8] == b"CHRNKSNP", raw[:8]
    version = raw[8]
    pos = 8 + 1 + 8 + 8
    (inc_len,) = struct.unpack(">H", raw[pos:pos + 2])
    pos += 2 + inc_len
    (raw_len,) = struct.unpack(">Q", raw[pos:pos + 8])
    pos += 8
    codec = 1 if version == 1 else raw[pos]
    pos += 0 if version == 1 else 1
    (stored_len,) = struct.unpack(">Q", raw[pos:pos + 8])
    pos += 8
    stored = raw[pos:pos + stored_len]
    if codec == 0:
        return stored
    return zstandard.ZstdDecompressor().decompress(stored, max_output_size=raw_len)


def keys_under(s3, bucket: str, prefix: str) -> list[str]:
    return sorted(o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix) for o in page.get("Contents", []))


def test_restore_from_s3_after_losing_the_disk(broker_factory, moto):
    endpoint, bucket, prefix, s3 = moto
    broker = broker_factory(extra_args=TIER_ARGS, env={**s3_env(endpoint), **FAST_LEASE},
                            start=False)
    use_bucket(broker, f"s3://{bucket}/{prefix}")
    broker.start()
    topic, parts, total = "s3-restore", 2, 4_000
    broker.create_topic(topic, partitions=parts)

    producer = broker.producer({"acks": "all", "linger.ms": 5})
    dr = DeliveryTracker()
    produce_all(producer, topic, ((str(i).encode(), f"value-{i}".encode(), i % parts, None)
                                  for i in range(total)), dr)
    assert not dr.errors and len(dr.ok) == total, dr.errors[:3]

    # A committed group offset, durable in the bucket before the disk goes.
    from confluent_kafka import TopicPartition
    snap_prefix = f"{prefix}/snapshots/group-{OFFSETS_GROUP:020}/"
    c = broker.consumer({"group.id": "g-s3"})
    c.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
    c.commit(offsets=[TopicPartition(topic, 0, 123), TopicPartition(topic, 1, 456)],
             asynchronous=False)
    c.close()
    broker._clients.remove(c)

    wait_until(lambda: metric(broker, "chronik_tiering_untiered_bytes") == 0
               and metric(broker, "chronik_tiering_chunks_uploaded_total") >= parts,
               timeout=30, what="everything tiered to S3")
    def newest_offsets_snapshot_has_group():
        keys = keys_under(s3, bucket, snap_prefix)
        raw = keys and s3.get_object(Bucket=bucket, Key=keys[-1])["Body"].read()
        return raw and b"g-s3" in snapshot_payload(raw)
    wait_until(newest_offsets_snapshot_has_group, timeout=30,
               what="an offsets snapshot with the commit in S3")
    chunks = [k for k in keys_under(s3, bucket, prefix + "/") if k.endswith(".chunk")]
    assert len(chunks) >= parts, chunks
    # ... and a partition snapshot listing every chunk (the restore starts from it).
    wait_in_bucket(broker)

    restart_after_wipe(broker)

    consumer = broker.consumer()
    assign_from_beginning(consumer, topic, range(parts))
    msgs = consume_confluent(consumer, total, timeout=60)
    assert len(msgs) == total
    for p, ms in by_partition(msgs).items():
        assert [int(m.key()) for m in ms] == list(range(p, total, parts)), f"partition {p}"
        assert [m.offset() for m in ms] == list(range(len(ms)))
    assert metric(broker, "chronik_tiering_cache_misses_total") >= parts

    # kcat reads the same from S3-restored partitions.
    out = broker.kcat("-C", "-t", topic, "-p", "1", "-o", "beginning", "-e", "-q",
                      "-f", "%k\n", timeout=60)
    assert [int(k) for k in out.split()] == list(range(1, total, parts))

    g = broker.consumer({"group.id": "g-s3"})
    got = g.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)
    assert [t.offset for t in got] == [123, 456]


def run_serve(tmp_path, bucket_url: str, env: dict, timeout: float = 30):
    e = {k: v for k, v in os.environ.items()
         if not k.startswith("CHRONIK_") and not k.startswith("AWS_")}
    e.update(env)
    cmd = [chronik_bin(), "serve", "--data-dir", str(tmp_path / "data"),
           "--kafka-addr", f"127.0.0.1:{free_port()}", "--http-addr", f"127.0.0.1:{free_port()}",
           "--bucket", bucket_url]
    start = time.monotonic()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e,
                           cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail(f"chronik serve --bucket {bucket_url} still running after {timeout}s "
                    "(it should give up and exit)")
    return r, time.monotonic() - start


@pytest.mark.parametrize("url,needle", [
    ("s3:///only-a-prefix", "names no bucket"),
    ("not a url", "not a url"),
    ("ftp://host/path", "ftp"),
], ids=["no-bucket-name", "not-a-url", "unknown-scheme"])
def test_malformed_bucket_url_exits_with_a_clear_message(tmp_path, url, needle):
    r, _ = run_serve(tmp_path, url, s3_env("http://127.0.0.1:1"))
    assert r.returncode != 0
    assert "panicked" not in r.stderr, r.stderr
    assert url in r.stderr, f"the message does not name the URL:\n{r.stderr}"
    assert needle in r.stderr, f"the message does not say {needle!r}:\n{r.stderr}"


def test_unreachable_s3_endpoint_exits_quickly_naming_it(tmp_path):
    closed = free_port()  # nothing listens there
    url = "s3://nowhere-bucket/some/prefix"
    r, took = run_serve(tmp_path, url, s3_env(f"http://127.0.0.1:{closed}"), timeout=45)
    assert r.returncode != 0
    assert "panicked" not in r.stderr, r.stderr
    assert url in r.stderr, f"the message does not name the URL:\n{r.stderr}"
    assert "cannot be reached" in r.stderr and "AWS_ENDPOINT_URL" in r.stderr, r.stderr
    assert took < 30, f"took {took:.1f}s to give up"
