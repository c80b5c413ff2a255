"""Shared helpers for the end-to-end tests (bounded polling, confluent consume loops)."""

from __future__ import annotations

import time
from collections import defaultdict

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition


def wait_until(pred, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll pred() until it returns a truthy value (returned) or timeout (AssertionError)."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = pred()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - report the last failure on timeout
            last_exc = e
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}")
        time.sleep(interval)


def assign_from_beginning(consumer: Consumer, topic: str, partitions) -> None:
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])


def consume_confluent(consumer: Consumer, expected: int, timeout: float = 120.0,
                      batch: int = 1000) -> list:
    """Consume until `expected` messages arrived (or timeout). Returns the messages.

    Non-fatal client errors (e.g. partition EOF, coordinator lookups the broker does not
    support) are ignored; fatal ones fail immediately. Stops early with whatever arrived
    if the deadline passes; callers assert on the count.
    """
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < expected and time.monotonic() < deadline:
        msgs = consumer.consume(num_messages=min(batch, max(1, expected - len(out))), timeout=1.0)
        for m in msgs:
            err = m.error()
            if err is None:
                out.append(m)
            elif err.code() == KafkaError._PARTITION_EOF:
                continue
            elif err.fatal():
                raise AssertionError(f"fatal consumer error: {err}")
    return out


def consume_until_quiet(consumer: Consumer, quiet: float = 3.0, timeout: float = 60.0) -> list:
    """Consume until nothing new arrives for `quiet` seconds (bounded by timeout)."""
    out = []
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - last < quiet:
        for m in consumer.consume(num_messages=1000, timeout=0.5):
            err = m.error()
            if err is None:
                out.append(m)
                last = time.monotonic()
            elif err.fatal():
                raise AssertionError(f"fatal consumer error: {err}")
    return out


def by_partition(msgs) -> dict:
    parts = defaultdict(list)
    for m in msgs:
        parts[m.partition()].append(m)
    return parts


class DeliveryTracker:
    """Collects confluent delivery reports."""

    def __init__(self):
        self.ok = []
        self.errors = []

    def __call__(self, err, msg):
        if err is not None:
            self.errors.append((err, msg))
        else:
            self.ok.append(msg)

    def error_codes(self) -> set:
        return {e.code() for e, _ in self.errors}


def produce_all(producer, topic: str, items, on_delivery, flush_timeout: float = 60.0,
                full_timeout: float = 60.0) -> None:
    """Produce (key, value, partition, headers) tuples, retrying on a full local queue,
    then flush; asserts that everything was delivered (a report arrived) in time."""
    for key, value, partition, headers in items:
        kwargs = {"key": key, "value": value, "on_delivery": on_delivery}
        if partition is not None:
            kwargs["partition"] = partition
        if headers is not None:
            kwargs["headers"] = headers
        deadline = time.monotonic() + full_timeout
        while True:
            try:
                producer.produce(topic, **kwargs)
                break
            except BufferError:
                if time.monotonic() > deadline:
                    raise AssertionError("producer queue stayed full for too long")
                producer.poll(0.05)
        producer.poll(0)
    remaining = producer.flush(flush_timeout)
    assert remaining == 0, f"{remaining} messages still undelivered after flush({flush_timeout})"
