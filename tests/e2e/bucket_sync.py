"""Waiting until a broker's state has reached the bucket, by its own metrics."""

import re

from helpers import wait_until


def metric_values(broker, name: str) -> dict:
    """{labels-string: value} for one metric name."""
    out = {}
    for line in broker.metrics().splitlines():
        m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
        if m:
            out[m.group(1) or ""] = float(m.group(2))
    return out


def metric(broker, name: str) -> float:
    return sum(metric_values(broker, name).values())


def all_snapshotted(broker) -> bool:
    """Every Raft group's newest snapshot covers everything it applied."""
    applied = metric_values(broker, "chronik_raft_applied_index")
    snap = metric_values(broker, "chronik_raft_snapshot_index")
    return bool(applied) and all(snap.get(k) == v for k, v in applied.items())


def wait_in_bucket(broker, timeout: float = 30) -> None:
    """Waits until the tail is tiered and every group's state is in a snapshot in the bucket."""
    wait_until(lambda: metric(broker, "chronik_tiering_untiered_bytes") == 0
               and all_snapshotted(broker)
               and metric(broker, "chronik_snapshot_upload_failures_total") == 0,
               timeout=timeout, what="everything acknowledged to reach the bucket")
