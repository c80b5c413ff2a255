"""Shared helpers for the end-to-end tests (bounded polling, confluent consume loops, the
acks.log/errors.log protocol of the producer subprocesses)."""

from __future__ import annotations

import os
import subprocess
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition


def wait_until(pred, timeout: float, interval: float = 0.1, what: str = "condition",
               detail=None):
    """Poll pred() until it returns a truthy value (returned) or timeout (AssertionError).
    detail: optional callable whose string, evaluated at the timeout, is added to the message."""
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
            if detail is not None:
                extra += f": {detail()}"
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}")
        time.sleep(interval)


def close_clients(clients: list) -> None:
    """Close every client in the list (best effort, for teardown) and empty it."""
    for c in clients:
        try:
            c.close()
        except Exception:  # noqa: BLE001 - best effort teardown
            pass
    clients.clear()


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


# ---- producer subprocesses: acks.log / errors.log ------------------------------------------
#
# A producer subprocess writes one line per delivery report to OUTDIR/acks.log
# ("seq partition offset") or OUTDIR/errors.log ("seq code name", or "client-error …" for an
# error callback), stops producing when OUTDIR/stop exists, and writes OUTDIR/done
# ("produced=N undelivered=N fatal=N") once flushed.

# Producer settings every such subprocess uses: idempotent acks=all, quick reconnects.
IDEMPOTENT_PRODUCER_CONF = {
    "broker.address.family": "v4",
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "message.timeout.ms": 120_000,
    "reconnect.backoff.ms": 50,
    "reconnect.backoff.max.ms": 500,
}


class AckLog:
    """The producer side: delivery and error callbacks writing OUTDIR's logs."""

    def __init__(self, outdir: str):
        self.outdir = outdir
        self.acks = open(os.path.join(outdir, "acks.log"), "a", buffering=1)
        self.errors = open(os.path.join(outdir, "errors.log"), "a", buffering=1)
        self.stop_file = os.path.join(outdir, "stop")
        self.fatal = []

    def on_error(self, err: KafkaError) -> None:
        self.errors.write(f"client-error {err.code()} {err.name()} fatal={err.fatal()} {err.str()}\n")
        if err.fatal():
            self.fatal.append(err)

    def on_delivery(self, err, msg) -> None:
        seq = msg.key().decode()
        if err is None:
            self.acks.write(f"{seq} {msg.partition()} {msg.offset()}\n")
        else:
            self.errors.write(f"{seq} {err.code()} {err.name()}\n")

    def stop_requested(self) -> bool:
        return os.path.exists(self.stop_file)

    def finish(self, produced: int, undelivered: int) -> int:
        """Writes OUTDIR/done, closes the logs; the exit code (3 after a fatal error)."""
        with open(os.path.join(self.outdir, "done"), "w") as f:
            f.write(f"produced={produced} undelivered={undelivered} fatal={len(self.fatal)}\n")
        self.acks.close()
        self.errors.close()
        return 3 if self.fatal else 0


def read_lines(path: Path) -> list:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


@contextmanager
def producer_process(cmd: list, out: Path):
    """Runs a producer subprocess writing to `out` (stdout to out/stdout.log); it is killed on
    leaving the block if it is still running."""
    out.mkdir()
    with open(out / "stdout.log", "wb") as stdout:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=stdout,
                                stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def assert_producer_succeeded(proc, out: Path) -> str:
    """The subprocess exited 0 with nothing undelivered; returns the done summary."""
    summary = (out / "done").read_text() if (out / "done").exists() else "(no done file)"
    assert proc.returncode == 0, (
        f"producer exited {proc.returncode}: {summary}\n"
        + "\n".join(read_lines(out / "errors.log")[-20:])
        + "\n" + "\n".join(read_lines(out / "stdout.log")[-20:]))
    assert "undelivered=0" in summary, summary
    return summary


def assert_no_failed_deliveries(errors_log: Path) -> None:
    failed = [line for line in read_lines(errors_log) if not line.startswith("client-error")]
    assert not failed, f"{len(failed)} messages failed delivery, e.g. {failed[:10]}"


def read_acks(acks_log: Path) -> dict:
    """seq -> (partition, offset); fails on two delivery reports for one seq."""
    acked = {}
    for line in read_lines(acks_log):
        seq, p, off = map(int, line.split())
        assert seq not in acked, f"two delivery reports for {seq}"
        acked[seq] = (p, off)
    return acked


def assert_acked_stored_once(records: dict, acked: dict, parts: int) -> set:
    """records {partition: [(offset, key, value), …]} of keys seq (partition seq % parts):
    per partition strictly increasing (nothing duplicated, acked or not, nothing reordered),
    no foreign keys, every acked seq at its acked offset, none lost. Returns the stored seqs."""
    present = set()
    for p in range(parts):
        recs = records.get(p, [])
        seqs = [int(k) for _, k, _ in recs]
        bad = [(a, b) for a, b in zip(seqs, seqs[1:]) if b <= a]
        assert not bad, f"partition {p}: out of order/duplicated {bad[:10]}"
        assert all(s % parts == p for s in seqs), f"partition {p} holds foreign records"
        for off, k, _ in recs:
            s = int(k)
            if s in acked:
                assert acked[s] == (p, off), f"seq {s} acked at {acked[s]} but stored at {(p, off)}"
        present.update(seqs)
    missing = sorted(set(acked) - present)
    assert not missing, f"{len(missing)} acked messages lost, e.g. {missing[:20]}"
    return present
