"""Prometheus /metrics and /health on the HTTP port."""

import re

from helpers import DeliveryTracker, assign_from_beginning, consume_confluent

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def samples(text):
    """[(name, labels, value)] for every sample line in Prometheus text format."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        out.append((m.group(1), m.group(2) or "", float(m.group(3))))
    return out


def with_prefix(ss, prefix):
    return [s for s in ss if s[0].startswith(prefix)]


def test_metrics_after_traffic(broker):
    broker.create_topic("met", partitions=2)
    producer = broker.producer({"acks": "all"})
    dr = DeliveryTracker()
    for i in range(500):
        producer.produce("met", value=b"x" * 100, partition=i % 2, on_delivery=dr)
    assert producer.flush(30) == 0 and not dr.errors
    consumer = broker.consumer()
    assign_from_beginning(consumer, "met", [0, 1])
    assert len(consume_confluent(consumer, 500, timeout=60)) == 500

    text = broker.metrics()
    ss = samples(text)

    reqs = with_prefix(ss, "chronik_requests_total")
    assert reqs, "no chronik_requests_total samples"
    per_api = {}
    for _, lbl, v in reqs:
        m = re.search(r'api="([^"]*)"', lbl)
        if m:
            per_api[m.group(1).lower()] = per_api.get(m.group(1).lower(), 0) + v
    for api in ("produce", "fetch", "metadata"):
        assert per_api.get(api, 0) > 0, f"no {api} requests counted: {per_api}"

    bytes_in = with_prefix(ss, "chronik_bytes_in_total")
    assert bytes_in and sum(v for *_, v in bytes_in) >= 500 * 100, bytes_in

    assert with_prefix(ss, "chronik_wal_fsync"), "no chronik_wal_fsync* metric"
    assert any(v > 0 for *_, v in with_prefix(ss, "chronik_wal_fsync")), \
        "acks=all produce must have fsynced the WAL at least once"

    parts = with_prefix(ss, "chronik_partitions")
    assert parts and sum(v for *_, v in parts) >= 2, parts


def test_health_and_unknown_path(broker):
    assert broker.health() == 200
    from conftest import http_get
    status, _ = http_get(f"{broker.http_base}/no-such-endpoint")
    assert status == 404
