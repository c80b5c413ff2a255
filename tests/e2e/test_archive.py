"""The Parquet archive: a topic created with archive.parquet.enable=true gets its records
written as Parquet files under the bucket's archive/topic=NAME/partition=N/, and the
analysts' readers (DuckDB, pyarrow, pandas, DataFusion) read them as they are.

Records are produced by confluent-kafka with keys, headers, explicit timestamps and every
compression codec; the files must hold each record exactly once, with its fields intact,
also across a broker killed mid-way and a topic whose archive is switched on later.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from helpers import DeliveryTracker, wait_until
from test_s3 import moto  # noqa: F401 - the S3 server fixture

duckdb = pytest.importorskip("duckdb")
pa_ds = pytest.importorskip("pyarrow.dataset")
pa = pytest.importorskip("pyarrow")

# Small files and a short wait, so that a few thousand records make several files.
ARCHIVE_ARGS = ["--archive-file-bytes", "16384", "--archive-interval-ms", "300",
                "--tiering-interval-ms", "200"]
# Recent enough for the default 7-day retention (see the retention test for older ones).
BASE_TS = int(time.time() * 1000) - 3_600_000


def archive_dir(broker, topic: str) -> Path:
    return broker.bucket_dir / "archive" / f"topic={topic}"


def create(broker, topic: str, partitions: int, archive: bool = True) -> None:
    from confluent_kafka.admin import NewTopic
    config = {"archive.parquet.enable": "true"} if archive else {}
    fs = broker.admin().create_topics([NewTopic(topic, num_partitions=partitions,
                                                replication_factor=1, config=config)])
    fs[topic].result(timeout=30)


def produce(broker, topic: str, start: int, count: int, partitions: int,
            codec: str = "none", base_ts: int = BASE_TS) -> None:
    """Keys k{i}, values v{i}, headers n={i}, empty=null, n=again (a repeated key), timestamp
    base_ts+i, to partition i % partitions."""
    # Small batches: a file is cut at whole batches, so several files need several batches.
    producer = broker.producer({"acks": "all", "linger.ms": 5, "compression.type": codec,
                                "batch.size": 4096})
    dr = DeliveryTracker()
    for i in range(start, start + count):
        producer.produce(topic, key=f"k{i}".encode(), value=f"v{i}".encode(),
                         partition=i % partitions, timestamp=base_ts + i,
                         headers=[("n", str(i).encode()), ("empty", None), ("n", b"again")],
                         on_delivery=dr)
        producer.poll(0)
    assert producer.flush(60) == 0, "undelivered records after 60 s"
    assert not dr.errors, f"delivery errors: {[str(e) for e, _ in dr.errors[:5]]}"
    assert len(dr.ok) == count


def archived(broker, topic: str):
    """All archived rows of `topic` through DuckDB, hive partition column included."""
    files = sorted(archive_dir(broker, topic).glob("partition=*/*.parquet"))
    if not files:
        return []
    con = duckdb.connect()
    try:
        return con.execute(
            "SELECT partition, \"offset\", key, value, epoch_ms(timestamp), timestamp_type, "
            "headers FROM read_parquet(?, hive_partitioning = true) "
            "ORDER BY partition, \"offset\"",
            [[str(f) for f in files]]).fetchall()
    finally:
        con.close()


def wait_archived(broker, topic: str, total: int, timeout: float = 60.0):
    return wait_until(lambda: (rows := archived(broker, topic)) and len(rows) >= total and rows,
                      timeout=timeout, interval=0.5, what=f"{total} records of {topic} archived",
                      detail=lambda: f"{len(archived(broker, topic))} archived")


def check_rows(rows, total: int, partitions: int, base_ts: int = BASE_TS) -> None:
    by_part: dict = {}
    for part, offset, key, value, ts, ts_type, headers in rows:
        by_part.setdefault(int(part), []).append((offset, key, value, ts, ts_type, headers))
    for p in range(partitions):
        got = by_part.get(p, [])
        assert [r[0] for r in got] == list(range(len(got))), \
            f"partition {p}: offsets not exactly 0..{len(got) - 1} (duplicates or gaps)"
        expected = list(range(p, total, partitions))
        assert len(got) == len(expected), f"partition {p}: {len(got)} rows, expected {len(expected)}"
        for (offset, key, value, ts, ts_type, headers), i in zip(got, expected):
            assert (bytes(key), bytes(value), ts) == (f"k{i}".encode(), f"v{i}".encode(),
                                                      base_ts + i), f"partition {p} offset {offset}"
            assert ts_type == "CreateTime"
            assert [(h["key"], None if h["value"] is None else bytes(h["value"]))
                    for h in headers] == [("n", str(i).encode()), ("empty", None), ("n", b"again")], \
                "headers in record order, a repeated key included"


@pytest.mark.parametrize("codec", ["none", "zstd", "gzip", "lz4", "snappy"])
def test_records_reach_the_archive_once_each_with_their_fields(broker_factory, codec):
    broker = broker_factory(extra_args=ARCHIVE_ARGS)
    topic, parts, total = f"arch-{codec}", 3, 3000
    create(broker, topic, parts)
    create(broker, "arch-off", 1, archive=False)
    produce(broker, topic, 0, total, parts, codec)
    produce(broker, "arch-off", 0, 10, 1)
    check_rows(wait_archived(broker, topic, total), total, parts)
    files = list(archive_dir(broker, topic).glob("partition=*/*.parquet"))
    if codec == "none":
        assert len(files) > parts, "16 KiB files: each partition's ~40 KB make several"
    assert not archive_dir(broker, "arch-off").exists(), "a topic without the setting has no archive"
    metrics = broker.metrics()
    assert f"chronik_archive_records_total {total}" in metrics


def test_pyarrow_pandas_and_datafusion_read_the_archive(broker_factory):
    broker = broker_factory(extra_args=ARCHIVE_ARGS)
    topic = "arch-readers"
    create(broker, topic, 2)
    produce(broker, topic, 0, 1000, 2)
    wait_archived(broker, topic, 1000)
    root = broker.bucket_dir / "archive"
    ds = pa_ds.dataset(str(root), format="parquet", partitioning="hive")
    table = ds.to_table(filter=pa_ds.field("topic") == topic)
    assert table.num_rows == 1000
    schema = {f.name: str(f.type) for f in table.schema}
    assert schema["offset"] == "int64" and schema["timestamp"] == "timestamp[ms, tz=UTC]"
    assert schema["key"] == "binary" and schema["value"] == "binary"
    # Not an idempotent producer: no sequence numbers.
    assert set(table["sequence"].to_pylist()) == {-1} and set(table["producer_id"].to_pylist()) == {-1}
    df = table.to_pandas()
    assert sorted(df[df["partition"] == 1]["offset"].tolist()) == list(range(500))
    assert df["timestamp"].min().value // 1_000_000 == BASE_TS

    datafusion = pytest.importorskip("datafusion")
    ctx = datafusion.SessionContext()
    ctx.register_parquet("orders", str(archive_dir(broker, topic) / "partition=0"))
    n = ctx.sql("SELECT count(*) AS n, max(\"offset\") AS last FROM orders").to_pydict()
    assert (n["n"][0], n["last"][0]) == (500, 499)


def test_a_broker_killed_mid_way_archives_every_record_once(broker_factory):
    broker = broker_factory(extra_args=ARCHIVE_ARGS)
    topic, parts = "arch-kill", 2
    create(broker, topic, parts)
    produce(broker, topic, 0, 2000, parts)
    wait_archived(broker, topic, 200)
    broker.kill9()
    broker.start()
    produce(broker, topic, 2000, 2000, parts)
    check_rows(wait_archived(broker, topic, 4000), 4000, parts)


def test_switching_the_archive_on_later_archives_the_topic_from_its_start(broker_factory):
    broker = broker_factory(extra_args=ARCHIVE_ARGS)
    topic = "arch-later"
    create(broker, topic, 1, archive=False)
    produce(broker, topic, 0, 500, 1)
    time.sleep(1)
    assert not archive_dir(broker, topic).exists()
    from confluent_kafka.admin import ConfigResource
    res = ConfigResource("topic", topic, set_config={"archive.parquet.enable": "true"})
    broker.admin().alter_configs([res])[res].result(timeout=30)
    check_rows(wait_archived(broker, topic, 500), 500, 1)


def test_retention_waits_for_the_archive(broker_factory):
    # Records older than retention.ms are deleted from the topic, but only once the
    # archive has them: analysts keep what Kafka consumers no longer see.
    # A long archive wait: the old records are archived because retention asks for it.
    broker = broker_factory(extra_args=["--archive-file-bytes", "16384", "--archive-interval-ms",
                                        "600000", "--tiering-interval-ms", "200"])
    topic, old = "arch-old", 1_600_000_000_000
    create(broker, topic, 1)
    produce(broker, topic, 0, 500, 1, base_ts=old)
    check_rows(wait_archived(broker, topic, 500), 500, 1, base_ts=old)
    from confluent_kafka import TopicPartition
    consumer = broker.consumer()
    wait_until(lambda: consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=5,
                                                      cached=False)[0] == 500,
               timeout=30, what="retention moved the log start past the archived records")


def test_the_archive_on_s3_reads_with_pyarrow(broker_factory, moto):
    # The same files in a real S3-compatible server, read straight from it.
    from test_s3 import s3_env, use_bucket
    endpoint, bucket, prefix, _ = moto
    broker = broker_factory(extra_args=ARCHIVE_ARGS, env=s3_env(endpoint), start=False)
    use_bucket(broker, f"s3://{bucket}/{prefix}")
    broker.start()
    topic = "arch-s3"
    create(broker, topic, 2)
    produce(broker, topic, 0, 1000, 2)
    import pyarrow.fs as pafs
    s3 = pafs.S3FileSystem(endpoint_override=endpoint.removeprefix("http://"), scheme="http",
                           access_key="test", secret_key="test", region="us-east-1")
    root = f"{bucket}/{prefix}/archive/topic={topic}"

    def table():
        t = pa_ds.dataset(root, filesystem=s3, format="parquet", partitioning="hive").to_table()
        return t if t.num_rows >= 1000 else None
    t = wait_until(table, timeout=60, interval=0.5, what="1000 records archived in S3")
    rows = sorted(zip(t["partition"].to_pylist(), t["offset"].to_pylist()))
    assert rows == sorted([(0, o) for o in range(500)] + [(1, o) for o in range(500)])
