"""End-to-end harness: starts real `chronik serve` processes and talks to them with real clients.

The binary comes from $CHRONIK_BIN (scripts/test exports it); every broker gets fresh
127.0.0.1 ports and a fresh data dir under the test's tmp_path, and is always killed at
teardown. On a test failure the tail of each broker's log is attached to the report.
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import kwire
from helpers import close_clients, wait_until

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 60.0
LOG_TAIL_LINES = 80

_live_processes: set[subprocess.Popen] = set()


@atexit.register
def _kill_leftovers() -> None:
    for p in list(_live_processes):
        if p.poll() is None:
            p.kill()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass


def chronik_bin() -> str:
    path = os.environ.get("CHRONIK_BIN")
    if not path:
        candidate = REPO / "target" / "debug" / "chronik"
        if candidate.exists():
            path = str(candidate)
    if not path or not os.access(path, os.X_OK):
        pytest.fail(f"CHRONIK_BIN is not set to an executable chronik binary (got {path!r}); "
                    "run the suite through scripts/test", pytrace=False)
    return os.path.abspath(path)


def kcat_bin() -> str:
    path = os.environ.get("CHRONIK_KCAT") or shutil.which("kcat") or shutil.which("kafkacat")
    if not path:
        pytest.fail("kcat is not installed; run the suite through scripts/test", pytrace=False)
    return path


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = open("/proc/sys/net/ipv4/ip_local_port_range").read().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_handed_out: set[int] = set()


def free_port() -> int:
    """A port that is free now and outside the kernel's ephemeral range.

    A port handed out by bind(0) comes from the ephemeral range, the same range outgoing
    connections use: between picking it and the broker binding it, a client connection
    can take it ("Address already in use"). Ports below that range are never assigned to
    outgoing connections, so only another listener could take one."""
    low, high = _ephemeral_range()
    start, end = (max(1024, low - 12000), low) if low - 1024 >= 2000 else (high + 1, 65536)
    for _ in range(200):
        port = random.randrange(start, end)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


class Broker:
    """One `chronik serve` process with its own ports, data dir and bucket."""

    def __init__(self, workdir: Path, extra_args=(), env=None, node_id: int = 1):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"
        self.bucket_dir = self.workdir / "bucket"
        self.data_dir.mkdir(exist_ok=True)
        self.bucket_dir.mkdir(exist_ok=True)
        self.log_path = self.workdir / "broker.log"
        self.node_id = node_id
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.kafka_port = free_port()
        self.http_port = free_port()
        while self.http_port == self.kafka_port:
            self.http_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self._admin = None
        self._clients = []  # confluent producers/consumers to close at teardown

    # ---- addresses -------------------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def command(self) -> list[str]:
        return [
            chronik_bin(), "serve",
            "--node-id", str(self.node_id),
            "--kafka-addr", self.bootstrap,
            "--advertised-addr", self.bootstrap,
            "--http-addr", f"127.0.0.1:{self.http_port}",
            "--data-dir", str(self.data_dir),
            "--bucket", f"file://{self.bucket_dir}",
            *self.extra_args,
        ]

    # ---- lifecycle -------------------------------------------------------------------
    def start(self, timeout: float = READY_TIMEOUT) -> "Broker":
        assert self.proc is None or self.proc.poll() is not None, "broker already running"
        # Hermetic: no CHRONIK_* from the caller's environment (e.g. CHRONIK_BIN) leaks into
        # the broker's configuration; only what the test asks for.
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHRONIK_")}
        env.setdefault("RUST_LOG", "info,openraft=warn")
        env.setdefault("RUST_BACKTRACE", "1")
        env.update(self.env)
        self.starts += 1
        cmd = self.command()
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start #{self.starts}: {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=env,
                                         cwd=self.workdir, start_new_session=True)
        _live_processes.add(self.proc)
        self.wait_ready(timeout)
        return self

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        last = "no attempt yet"
        while time.monotonic() < deadline:
            if not self.is_running():
                raise AssertionError(
                    f"broker exited with code {self.proc.returncode} before becoming ready\n"
                    + self.log_tail())
            try:
                status, _ = http_get(f"{self.http_base}/health", timeout=2)
                if status == 200:
                    md = kwire.metadata_v1(self.kafka_port, timeout=5)
                    if any(port == self.kafka_port for _, _, port, _ in md.brokers):
                        return
                    last = f"metadata lists brokers {md.brokers}, not port {self.kafka_port}"
                else:
                    last = f"/health answered {status}"
            except Exception as e:  # noqa: BLE001 - keep polling until the deadline
                last = repr(e)
            time.sleep(0.1)
        raise AssertionError(f"broker not ready after {timeout}s (last: {last})\n" + self.log_tail())

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait up to timeout, then SIGKILL. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        _live_processes.discard(self.proc)
        return self.proc.returncode

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc is not None:
            _live_processes.discard(self.proc)

    def restart(self, timeout: float = READY_TIMEOUT) -> "Broker":
        """Stop (gracefully, if still running) and start again: same data dir, same ports."""
        self.stop()
        return self.start(timeout)

    def close(self) -> None:
        close_clients(self._clients)
        self._admin = None
        self.kill9()

    # ---- observation -----------------------------------------------------------------
    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no broker log)"
        return f"----- last {lines} lines of {self.log_path} -----\n" + "\n".join(text[-lines:])

    def health(self) -> int:
        return http_get(f"{self.http_base}/health")[0]

    def assert_healthy(self) -> None:
        assert self.is_running(), f"broker died (exit {self.proc.returncode})"
        assert self.health() == 200, "/health is not 200"
        resp = kwire.api_versions_v0(self.kafka_port)
        assert resp.error_code == 0, f"ApiVersions v0 error {resp.error_code}"

    def metrics(self) -> str:
        status, body = http_get(f"{self.http_base}/metrics")
        assert status == 200, f"/metrics answered {status}"
        return body

    # ---- clients -----------------------------------------------------------------------
    def kcat(self, *args: str, input: str | bytes | None = None, timeout: float = 60,
             binary: bool = False):
        """Run kcat -b bootstrap ARGS; returns stdout (str, or bytes if binary=True)."""
        if isinstance(input, str):
            input = input.encode()
        cmd = [kcat_bin(), "-b", self.bootstrap, *args]
        try:
            r = subprocess.run(cmd, input=input if input is not None else b"",
                               capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"kcat timed out after {timeout}s: {cmd}\nstderr: "
                        f"{(e.stderr or b'').decode(errors='replace')[-4000:]}")
        if r.returncode != 0:
            pytest.fail(f"kcat exited {r.returncode}: {cmd}\nstderr: "
                        f"{r.stderr.decode(errors='replace')[-4000:]}")
        return r.stdout if binary else r.stdout.decode("utf-8", "surrogateescape")

    def client_conf(self, extra: dict | None = None) -> dict:
        conf = {"bootstrap.servers": self.bootstrap, "broker.address.family": "v4"}
        conf.update(extra or {})
        return conf

    def admin(self):
        from confluent_kafka.admin import AdminClient
        if self._admin is None:
            self._admin = AdminClient(self.client_conf())
        return self._admin

    def producer(self, conf: dict | None = None):
        from confluent_kafka import Producer
        return Producer(self.client_conf(conf))

    def consumer(self, conf: dict | None = None):
        """An assign-only confluent consumer (group.id set, nothing committed)."""
        from confluent_kafka import Consumer
        c = self.client_conf()
        c.update({"group.id": "chronik-e2e-unused", "enable.auto.commit": False,
                  "enable.auto.offset.store": False, "auto.offset.reset": "earliest",
                  "enable.partition.eof": False})
        c.update(conf or {})
        consumer = Consumer(c)
        self._clients.append(consumer)
        return consumer

    def topic_partitions(self, name: str, timeout: float = 10) -> int | None:
        md = self.admin().list_topics(topic=name, timeout=timeout)
        t = md.topics.get(name)
        if t is None or t.error is not None:
            return None
        return len(t.partitions)

    def topic_names(self, timeout: float = 10) -> set:
        return set(self.admin().list_topics(timeout=timeout).topics)

    def create_topic(self, name: str, partitions: int = 1, config: dict | None = None,
                     timeout: float = 60):
        from confluent_kafka.admin import NewTopic
        nt = NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})
        fs = self.admin().create_topics([nt], operation_timeout=30, request_timeout=30)
        fs[name].result(timeout=timeout)
        wait_until(lambda: self.topic_partitions(name) == partitions, timeout=30,
                   what=f"topic {name} with {partitions} partitions in metadata")


# ---- fixtures ----------------------------------------------------------------------------

@pytest.fixture
def broker_factory(request, tmp_path):
    """make(extra_args=[...], env={...}) -> started Broker; all are killed at teardown."""
    brokers: list[Broker] = []
    request.node._chronik_brokers = brokers

    def make(extra_args=(), env=None, start: bool = True, node_id: int = 1) -> Broker:
        b = Broker(tmp_path / f"broker{len(brokers)}", extra_args=extra_args, env=env,
                   node_id=node_id)
        brokers.append(b)
        if start:
            b.start()
        return b

    yield make
    for b in brokers:
        b.close()


@pytest.fixture
def broker(broker_factory) -> Broker:
    """A fresh single-node broker with default settings."""
    return broker_factory()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and rep.when != "setup":  # setup failures already carry the log tail
        for i, b in enumerate(getattr(item, "_chronik_brokers", [])):
            rep.sections.append((f"chronik broker {i} log ({rep.when})", b.log_tail()))
