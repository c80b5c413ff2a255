"""Multi-node harness: several `chronik serve` processes forming one Raft cluster.

Every node gets its own data dir and free 127.0.0.1 ports (Kafka, HTTP, Raft); all nodes of
a cluster share one bucket directory. Nodes are launched together (a node cannot become
ready before a quorum exists) and are always killed at teardown by the `cluster` fixture in
test_cluster.py. Metadata is read with a raw Metadata v1 request so that replicas and ISR
are visible exactly as the broker sends them.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import kwire
from conftest import LOG_TAIL_LINES, READY_TIMEOUT, Broker, chronik_bin, free_port
from helpers import close_clients, wait_until

# Short timings so that failover, lease expiry and catch-up take seconds, not the defaults'
# tens of seconds. Passed as CHRONIK_* environment (every config key is one), which works
# whether or not a key also has a command-line flag.
FAST_ENV = {
    "CHRONIK_LEASE_INTERVAL_MS": "200",
    "CHRONIK_LEASE_TIMEOUT_MS": "1500",
    "CHRONIK_RAFT_HEARTBEAT_INTERVAL_MS": "100",
    "CHRONIK_RAFT_ELECTION_TIMEOUT_MIN_MS": "500",
    "CHRONIK_RAFT_ELECTION_TIMEOUT_MAX_MS": "1000",
    "CHRONIK_TIERING_INTERVAL_MS": "500",
    "CHRONIK_SNAPSHOT_INTERVAL_MS": "1000",
    "NO_COLOR": "1",  # plain log files
}

_used_ports: set[int] = set()


def unique_port() -> int:
    """A free port not handed out before in this pytest process (nodes of one cluster must
    never collide, even if the OS would reuse a just-released ephemeral port)."""
    while True:
        p = free_port()
        if p not in _used_ports:
            _used_ports.add(p)
            return p


# ---- raw Metadata v1 with replicas and ISR -----------------------------------------------

@dataclass
class PartitionMeta:
    error: int
    partition: int
    leader: int
    replicas: list
    isr: list
    leader_epoch: int = -1  # Metadata v7+ only (v1 does not carry it)


@dataclass
class TopicMeta:
    error: int
    name: str
    partitions: dict = field(default_factory=dict)  # partition -> PartitionMeta


@dataclass
class ClusterMeta:
    brokers: dict  # node_id -> (host, port)
    controller: int
    topics: dict  # name -> TopicMeta


def parse_metadata(payload: bytes, correlation_id: int, version: int) -> ClusterMeta:
    """A Metadata v1 or v7 response (v7 adds throttle time, cluster id, leader epochs and
    offline replicas; it is also checked for leftover bytes)."""
    assert version in (1, 7), version
    v7 = version == 7
    r = kwire.Reader(payload)
    corr = r.i32()
    if corr != correlation_id:
        raise ValueError(f"correlation id {corr} != {correlation_id}")
    if v7:
        r.i32()  # throttle_time_ms
    brokers = {}
    for _ in range(r.i32()):
        node_id, host, port, _rack = r.i32(), r.string(), r.i32(), r.string()
        brokers[node_id] = (host, port)
    if v7:
        r.string()  # cluster_id
    controller = r.i32()
    topics = {}
    for _ in range(r.i32()):
        err, name, _internal = r.i16(), r.string(), r.i8()
        t = TopicMeta(err, name)
        for _ in range(r.i32()):
            perr, pid, leader = r.i16(), r.i32(), r.i32()
            epoch = r.i32() if v7 else -1
            replicas = [r.i32() for _ in range(r.i32())]
            isr = [r.i32() for _ in range(r.i32())]
            if v7:
                for _ in range(r.i32()):  # offline replicas
                    r.i32()
            t.partitions[pid] = PartitionMeta(perr, pid, leader, replicas, isr, epoch)
        topics[name] = t
    if v7 and r.remaining():
        raise ValueError(f"{r.remaining()} bytes left over after Metadata v7")
    return ClusterMeta(brokers, controller, topics)


def metadata(port: int, topics: list[str] | None = None, timeout: float = 10.0) -> ClusterMeta:
    corr = 7
    with kwire.Conn(port, timeout=timeout) as c:
        c.send(kwire.metadata_v1_request(corr, topics))
        payload = c.recv_frame(timeout)
        if payload is None:
            raise ConnectionError(f"port {port} closed the connection instead of answering Metadata")
        return parse_metadata(payload, corr, 1)


def metadata_v7_request(correlation_id: int, topics: list[str] | None = None) -> bytes:
    """Metadata v7 (the last non-flexible version; the first with leader epochs)."""
    if topics is None:
        body = struct.pack(">i", -1)
    else:
        body = struct.pack(">i", len(topics)) + b"".join(kwire.enc_string(t) for t in topics)
    body += struct.pack(">b", 0)  # allow_auto_topic_creation = false
    return kwire.request(kwire.API_METADATA, 7, correlation_id, body)


def metadata_v7(port: int, topics: list[str] | None = None, timeout: float = 10.0) -> ClusterMeta:
    """Like metadata(), with each partition's leader_epoch as the node reports it."""
    corr = 9
    with kwire.Conn(port, timeout=timeout) as c:
        c.send(metadata_v7_request(corr, topics))
        payload = c.recv_frame(timeout)
        if payload is None:
            raise ConnectionError(f"port {port} closed the connection instead of answering Metadata")
        return parse_metadata(payload, corr, 7)


# ---- nodes and clusters --------------------------------------------------------------------

class ClusterNode(Broker):
    """A `chronik serve --peers …` process: a conftest Broker with a Raft port, a peer list
    and the cluster's shared bucket instead of a private one."""

    def __init__(self, workdir: Path, node_id: int, bucket_dir: Path, env: dict):
        super().__init__(workdir, env=env, node_id=node_id)
        self.bucket_dir.rmdir()  # the private bucket Broker made; this node uses the shared one
        self.bucket_dir = bucket_dir
        self.kafka_port = unique_port()
        self.http_port = unique_port()
        self.raft_port = unique_port()
        self.peers = ""  # set by the Cluster before launch

    @property
    def raft_addr(self) -> str:
        return f"127.0.0.1:{self.raft_port}"

    def command(self) -> list[str]:
        return [*super().command(), "--raft-addr", self.raft_addr, "--peers", self.peers]

    def start(self, timeout: float = READY_TIMEOUT, wait: bool = True) -> "ClusterNode":
        """Broker.start; wait=False returns right after spawning (peers start concurrently
        and none can be ready before a quorum exists)."""
        self._no_wait = not wait
        try:
            return super().start(timeout)
        finally:
            self._no_wait = False

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        if not getattr(self, "_no_wait", False):
            super().wait_ready(timeout)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The log tail, preceded by the lines that explain a death (panics, fatal errors,
        Raft storage errors), which a long backtrace would otherwise push out of the tail."""
        tail = super().log_tail(lines)
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return tail
        key, seen = [], set()
        for i, line in enumerate(text):
            hit = ("panicked at" in line or line.startswith("chronik: error")
                   or "StorageError" in line or line.startswith("===== start #"))
            if not hit:
                continue
            shown = line if "panicked at" not in line else line + " | " + (
                text[i + 1] if i + 1 < len(text) else "")
            sig = shown.split("Z ", 1)[-1][:200]  # the same error again: show it once
            if sig not in seen:
                seen.add(sig)
                key.append(shown[:1000])
        if not any("start #" not in k for k in key):
            return tail
        return (f"----- node {self.node_id}: starts, panics and fatal errors -----\n"
                + "\n".join(key[:30]) + "\n" + tail)

    def wipe(self) -> None:
        """Delete the node's data dir (the process must be dead)."""
        assert not self.is_running(), "wipe a running node"
        shutil.rmtree(self.data_dir)
        self.data_dir.mkdir()

    def metric(self, name: str) -> dict:
        """{label-string: value} of one metric family from /metrics."""
        out = {}
        for line in self.metrics().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                key, _, value = line.rpartition(" ")
                out[key[len(name):]] = float(value)
        return out

    def applied_indexes(self) -> dict:
        """Raft group -> last applied log index on this node."""
        out = {}
        for labels, v in self.metric("chronik_raft_applied_index").items():
            out[labels.split('"')[1]] = int(v)
        return out


class Cluster:
    def __init__(self, root: Path, size: int = 3, env: dict | None = None, registry=None):
        self.root = Path(root)
        self.bucket_dir = self.root / "bucket"
        self.bucket_dir.mkdir(parents=True, exist_ok=True)
        self.env = dict(FAST_ENV)
        self.env.update(env or {})
        self.nodes: dict[int, ClusterNode] = {}
        self.registry = registry if registry is not None else []  # for log tails on failure
        self._clients = []
        for i in range(1, size + 1):
            self.new_node(i)
        peers = self.peers_spec(range(1, size + 1))
        for n in self.nodes.values():
            n.peers = peers

    def new_node(self, node_id: int) -> ClusterNode:
        n = ClusterNode(self.root / f"node{node_id}", node_id, self.bucket_dir, self.env)
        self.nodes[node_id] = n
        self.registry.append(n)
        return n

    def peers_spec(self, ids) -> str:
        return ",".join(f"{i}@{self.nodes[i].raft_addr}" for i in ids)

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self, timeout: float = READY_TIMEOUT) -> "Cluster":
        for n in self.nodes.values():
            n.start(wait=False)
        for n in self.nodes.values():
            n.wait_ready(timeout)
        self.wait_brokers(len(self.nodes), timeout=timeout)
        return self

    def close(self) -> None:
        close_clients(self._clients)
        for n in self.nodes.values():
            n.close()

    def live(self) -> list[ClusterNode]:
        return [n for n in self.nodes.values() if n.is_running()]

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.live())

    # ---- metadata ----------------------------------------------------------------------------
    def metadata(self, topics: list[str] | None = None, via: ClusterNode | None = None) -> ClusterMeta:
        nodes = [via] if via is not None else self.live()
        last = None
        for n in nodes:
            try:
                return metadata(n.kafka_port, topics)
            except Exception as e:  # noqa: BLE001 - try the next live node
                last = e
        raise AssertionError(f"no live node answered Metadata: {last!r}")

    def wait_brokers(self, count: int, timeout: float = 30.0) -> None:
        """Every live node's Metadata lists `count` brokers at the nodes' Kafka ports."""
        def ok():
            for n in self.live():
                md = metadata(n.kafka_port)
                if len(md.brokers) != count:
                    return False
            return True
        wait_until(ok, timeout=timeout, interval=0.2,
                   what=f"{count} brokers in every live node's Metadata")

    def leaders(self, topic: str, via: ClusterNode | None = None) -> dict:
        t = self.metadata([topic], via=via).topics[topic]
        assert t.error == 0, f"topic {topic}: error {t.error}"
        return {p: pm.leader for p, pm in t.partitions.items()}

    def wait_leaders(self, topic: str, partitions: int, timeout: float = 30.0,
                     exclude: set = frozenset()) -> dict:
        """Until every partition has a live leader (not in `exclude`) and every live node
        agrees on the leaders; returns {partition: leader}."""
        live_ids = {n.node_id for n in self.live()} - set(exclude)

        def ok():
            views = []
            for n in self.live():
                t = metadata(n.kafka_port, [topic]).topics.get(topic)
                if t is None or t.error != 0 or len(t.partitions) != partitions:
                    return None
                ls = {p: pm.leader for p, pm in t.partitions.items()}
                if any(pm.error != 0 for pm in t.partitions.values()):
                    return None
                if not set(ls.values()) <= live_ids:
                    return None
                views.append(ls)
            if all(v == views[0] for v in views):
                return views[0]
            return None
        return wait_until(ok, timeout=timeout, interval=0.2,
                          what=f"live, agreed leaders for all {partitions} partitions of {topic}")

    # ---- clients -----------------------------------------------------------------------------
    def client_conf(self, extra: dict | None = None) -> dict:
        conf = {"bootstrap.servers": self.bootstrap, "broker.address.family": "v4"}
        conf.update(extra or {})
        return conf

    def admin(self):
        """A fresh AdminClient over the live nodes (keep a reference while its futures run:
        a collected client fails them with _DESTROY)."""
        from confluent_kafka.admin import AdminClient
        return AdminClient(self.client_conf())

    def producer(self, conf: dict | None = None):
        from confluent_kafka import Producer
        return Producer(self.client_conf(conf))

    def consumer(self, conf: dict | None = None):
        from confluent_kafka import Consumer
        c = self.client_conf({"group.id": "chronik-e2e-unused", "enable.auto.commit": False,
                              "enable.auto.offset.store": False,
                              "auto.offset.reset": "earliest", "enable.partition.eof": False})
        c.update(conf or {})
        consumer = Consumer(c)
        self._clients.append(consumer)
        return consumer

    def create_topic(self, name: str, partitions: int, replication_factor: int = 3,
                     timeout: float = 60.0) -> dict:
        """CreateTopics through confluent's AdminClient; returns {partition: leader} once every
        partition has a leader that all live nodes agree on."""
        from confluent_kafka.admin import NewTopic
        nt = NewTopic(name, num_partitions=partitions, replication_factor=replication_factor)
        admin = self.admin()
        fs = admin.create_topics([nt], operation_timeout=30, request_timeout=30)
        fs[name].result(timeout=timeout)
        del admin
        return self.wait_leaders(name, partitions, timeout=timeout)

    def watermarks(self, topic: str, partitions: int) -> dict:
        from confluent_kafka import TopicPartition
        consumer = self.consumer()
        try:
            return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=15,
                                                      cached=False)
                    for p in range(partitions)}
        finally:
            consumer.close()
            self._clients.remove(consumer)

    def consume_all(self, topic: str, partitions, timeout: float = 90.0) -> dict:
        """Every record of the given partitions from offset 0 up to the current high
        watermark: {partition: [(offset, key, value), …]}. Fails if the high watermark cannot
        be read or reached in time."""
        from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition
        partitions = list(partitions)
        consumer = self.consumer()
        highs = {p: wait_until(lambda p=p: consumer.get_watermark_offsets(
                     TopicPartition(topic, p), timeout=10, cached=False),
                     timeout=30, what=f"watermarks of {topic}/{p}")[1]
                 for p in partitions}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        out = defaultdict(list)
        need = {p: h for p, h in highs.items() if h > 0}
        deadline = time.monotonic() + timeout
        while need and time.monotonic() < deadline:
            for m in consumer.consume(num_messages=1000, timeout=0.5):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    if err.fatal():
                        raise AssertionError(f"fatal consumer error: {err}")
                    continue
                p = m.partition()
                out[p].append((m.offset(), m.key(), m.value()))
                if p in need and m.offset() + 1 >= need[p]:
                    del need[p]
        consumer.close()
        self._clients.remove(consumer)
        got = {p: len(out[p]) for p in partitions}
        assert not need, (f"{topic}: could not read up to the high watermarks {highs} within "
                          f"{timeout}s; got {got}")
        for p in partitions:
            offs = [o for o, _, _ in out[p]]
            assert offs == list(range(len(offs))), (
                f"{topic}/{p}: offsets not contiguous from 0 (first gaps: "
                f"{[(a, b) for a, b in zip(offs, offs[1:]) if b != a + 1][:5]})")
            assert len(offs) >= highs[p]
        return dict(out)


def run_cli(*args, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([chronik_bin(), *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)

