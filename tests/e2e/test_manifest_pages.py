"""Manifest pages: a partition's older manifest entries move into page objects in the
bucket, so its snapshots stay small however long its history. Reads from the beginning,
lookups by timestamp, DeleteRecords with GC, and a restore from the bucket alone see the
same data as without pages."""

import re
import shutil
import time

from confluent_kafka import TopicPartition

from bucket_sync import wait_in_bucket
from helpers import wait_until
from test_retention import objects, produce_rounds, read_keys, watermarks

# Pages of 4 entries (sealed once 8 are open), fast tiering and GC, compaction off, and a
# short lease so a wiped node restores quickly.
ARGS = ["--tiering-interval-ms", "100", "--snapshot-interval-ms", "200", "--gc-grace-ms", "300",
        "--compaction-min-chunks", "1000000", "--manifest-page-entries", "4",
        "--lease-interval-ms", "300", "--lease-timeout-ms", "1500"]

PAGE_NAME = re.compile(r"^(\d{20})-(\d{20})\.page$")
ROUNDS, PER_ROUND = 14, 40
# Recent enough that the default retention (7 days) keeps it.
T0 = int(time.time() * 1000) - 3_600_000


def pages(broker) -> list:
    """(base, last) of every manifest page object in the bucket, sorted."""
    out = []
    for p in (broker.bucket_dir / "topics").rglob("*.page"):
        m = PAGE_NAME.match(p.name)
        assert m, f"unexpected page object name {p.name}"
        assert p.parent.name == "manifest", p
        out.append((int(m.group(1)), int(m.group(2))))
    return sorted(out)


def produce_timed_rounds(broker, topic):
    """Round r holds keys r*PER_ROUND.. with timestamp T0 + r seconds, tiered on its own."""
    for r in range(ROUNDS):
        produce_rounds(broker, topic, 1, PER_ROUND, timestamp=T0 + r * 1000,
                       start=r * PER_ROUND)


def offset_for_time(broker, topic, ts):
    c = broker.consumer()
    try:
        [tp] = c.offsets_for_times([TopicPartition(topic, 0, ts)], timeout=20)
        return tp.offset
    finally:
        c.close()


def test_old_manifest_entries_move_to_pages_and_everything_reads_the_same(broker_factory):
    broker = broker_factory(extra_args=ARGS)
    topic = "paged"
    total = ROUNDS * PER_ROUND
    broker.create_topic(topic)
    produce_timed_rounds(broker, topic)

    # At least 14 chunks: the oldest entries are sealed into pages of 4, back to back
    # from offset 0, and each page names objects that are still in the bucket.
    wait_until(lambda: len(pages(broker)) >= 2, timeout=30, what="manifest pages to be sealed")
    sealed = pages(broker)
    assert sealed[0][0] == 0
    assert all(a[1] + 1 == b[0] for a, b in zip(sealed, sealed[1:])), sealed
    chunks = objects(broker)
    assert chunks[0][0] == 0 and chunks[-1][1] == total - 1

    def reads_back():
        offsets, keys = read_keys(broker, topic, total)
        assert offsets == list(range(total)) and keys == list(range(total))
        # Lookups by time land inside pages, after them and in the open part.
        for r in (0, 1, 5, ROUNDS - 1):
            assert offset_for_time(broker, topic, T0 + r * 1000) == r * PER_ROUND
            assert offset_for_time(broker, topic, T0 + r * 1000 - 1) == r * PER_ROUND
        assert offset_for_time(broker, topic, T0 + ROUNDS * 1000) == -1

    reads_back()

    # Lose the disk: the snapshot in the bucket names the pages, which are read on demand.
    wait_in_bucket(broker)
    broker.kill9()
    shutil.rmtree(broker.data_dir)
    broker.data_dir.mkdir()
    broker.start()
    reads_back()

    # DeleteRecords past the first page: the page and every object it names leave the
    # bucket after the GC grace period; the page that holds the new start stays.
    # A fresh admin client learns the partition's leader first (DeleteRecords needs it).
    wait_until(lambda: broker.admin().list_topics(topic, timeout=10)
               .topics[topic].partitions[0].leader == 1, timeout=20, what="the admin to see a leader")
    cut = sealed[0][1] + 1 + PER_ROUND // 2
    fs = broker.admin().delete_records([TopicPartition(topic, 0, cut)], operation_timeout=10,
                                       request_timeout=20)
    assert list(fs.values())[0].result(timeout=20).low_watermark == cut
    wait_until(lambda: pages(broker) and pages(broker)[0][0] > sealed[0][1]
               and all(last >= sealed[0][1] + 1 for _, last, _ in objects(broker)),
               timeout=30, what="the first page and its objects to be deleted")
    assert pages(broker)[0][0] <= cut, "the page holding the new log start stays"
    assert watermarks(broker, topic) == (cut, total)
    offsets, keys = read_keys(broker, topic, total - cut)
    assert offsets == list(range(cut, total)) and keys == list(range(cut, total))
    assert offset_for_time(broker, topic, T0) == cut
