"""A network partition isolates a partition leader of a three-node cluster.

Every node dials each other node's Raft port through its own TCP proxy in this process (one
per directed pair), so Raft links can be cut and healed while the Kafka ports stay reachable
to clients: the old leader is cut off from the Raft majority but not from producers.

Checked: the majority elects a new leader within 10 s; the isolated leader never
acknowledges an acks=all write (nor exposes it to Fetch), and its unacknowledged write never
appears anywhere; an idempotent acks=all producer keeps going through the majority; after
healing, the old leader rejoins as a follower and catches up; every acknowledged record is
stored exactly once at its acknowledged offset, in order; and at no time, on any node, did
two different leaders share one (partition, leader epoch).

The file doubles as the producer subprocess: `python test_cluster_partition.py produce …`.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent

TOPIC = "cl-netsplit"
PARTS = 3
RATE = 1000  # messages per second, over all partitions
ERR_NONE = 0


# ---- the producer subprocess ------------------------------------------------------------------

def produce_main(bootstrap: str, topic: str, partitions: int, outdir: str, rate: int) -> int:
    """Idempotent acks=all producer: key = sequence number, partition = seq % partitions, paced
    at `rate` messages/s. One line per delivery report: acks.log "seq partition offset",
    errors.log "seq code name". Stops when OUTDIR/stop exists; flushes, writes OUTDIR/done.
    Short request timeouts so that requests stuck on the isolated leader are retried
    (with the same producer sequence) on the new leader within seconds."""
    from confluent_kafka import Producer

    from helpers import IDEMPOTENT_PRODUCER_CONF, AckLog

    log = AckLog(outdir)
    p = Producer({
        **IDEMPOTENT_PRODUCER_CONF,
        "bootstrap.servers": bootstrap,
        "request.timeout.ms": 3_000,
        "topic.metadata.refresh.interval.ms": 2_000,
        "retry.backoff.ms": 100,
        "retry.backoff.max.ms": 500,
        "error_cb": log.on_error,
    })
    start = time.monotonic()
    seq = 0
    while not log.stop_requested() and not log.fatal and time.monotonic() - start < 240:
        due = int((time.monotonic() - start) * rate)
        while seq < due:
            try:
                p.produce(topic, key=str(seq).encode(), value=f"{seq}:{seq % partitions}".encode(),
                          partition=seq % partitions, on_delivery=log.on_delivery)
            except BufferError:
                break
            seq += 1
        p.poll(0.02)
    return log.finish(seq, p.flush(90))


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "produce":
    sys.exit(produce_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5],
                          int(sys.argv[6])))


# ---- the test harness -------------------------------------------------------------------------

import pytest  # noqa: E402 - not needed by the producer subprocess

import kraw  # noqa: E402
import kwire  # noqa: E402
from cluster import Cluster, metadata_v7  # noqa: E402
from helpers import (assert_acked_stored_once, assert_no_failed_deliveries,  # noqa: E402
                     assert_producer_succeeded, producer_process, read_acks, read_lines,
                     wait_until)

ERR_NAMES = {6: "NOT_LEADER_OR_FOLLOWER", 7: "REQUEST_TIMED_OUT", 5: "LEADER_NOT_AVAILABLE",
             19: "NOT_ENOUGH_REPLICAS", 20: "NOT_ENOUGH_REPLICAS_AFTER_APPEND"}
FIRST_PARTITION_GROUP = 16  # metastore/src/types.rs; a fresh cluster's first topic gets 16, 17, …


class Link:
    """One directed Raft link src→dst: a 127.0.0.1 listener that forwards every connection to
    dst's Raft port. cut() closes every forwarded connection and makes the listener close
    new ones at once (the dialer sees the peer hang up); heal() forwards again."""

    def __init__(self, src: int, dst: int, upstream_port: int):
        self.src, self.dst, self.upstream_port = src, dst, upstream_port
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.up = True
        self.closed = False
        self.pairs: set = set()  # (downstream socket, upstream socket)
        self.forwarded = 0  # bytes, both directions
        self.accepted = 0
        self.refused = 0
        self.thread = threading.Thread(target=self._accept_loop, daemon=True,
                                       name=f"link-{src}-{dst}")
        self.thread.start()

    def _accept_loop(self) -> None:
        while not self.closed:
            try:
                down, _ = self.listener.accept()
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                return
            down.settimeout(None)
            if not self.up:
                self.refused += 1
                down.close()
                continue
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=2)
            except OSError:
                down.close()
                continue
            up.settimeout(None)
            for s in (down, up):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = (down, up)
            with self.lock:
                if not self.up or self.closed:  # cut while connecting
                    self.refused += 1
                    down.close()
                    up.close()
                    continue
                self.pairs.add(pair)
                self.accepted += 1
            done = [0]
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b, pair, done), daemon=True,
                                 name=f"pump-{self.src}-{self.dst}").start()

    def _pump(self, a: socket.socket, b: socket.socket, pair, done) -> None:
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
                self.forwarded += len(data)
        except OSError:
            pass
        for s in pair:  # wake the other direction
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self.lock:
            done[0] += 1
            last = done[0] == 2
            if last:
                self.pairs.discard(pair)
        if last:
            for s in pair:
                s.close()

    def cut(self) -> None:
        with self.lock:
            self.up = False
            pairs = list(self.pairs)
        for pair in pairs:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def drained(self) -> bool:
        with self.lock:
            return not self.pairs

    def heal(self) -> None:
        with self.lock:
            self.up = True

    def close(self) -> None:
        self.closed = True
        self.cut()
        self.thread.join(2)
        self.listener.close()


class RaftNet:
    """A Link for every ordered pair of nodes; gives each node a --peers list in which every
    other node is reached through its Link (ids are the same on every node)."""

    def __init__(self, cluster: Cluster):
        self.links: dict = {}
        ids = sorted(cluster.nodes)
        for i in ids:
            for j in ids:
                if i != j:
                    self.links[(i, j)] = Link(i, j, cluster.nodes[j].raft_port)
        for i, n in cluster.nodes.items():
            n.peers = ",".join(
                f"{j}@{n.raft_addr}" if j == i else f"{j}@127.0.0.1:{self.links[(i, j)].port}"
                for j in ids)

    def isolate(self, node_id: int) -> None:
        """Cuts every link from and to `node_id`; returns once their connections are gone."""
        cut = [link for (a, b), link in self.links.items() if node_id in (a, b)]
        for link in cut:
            link.cut()
        wait_until(lambda: all(link.drained() for link in cut), timeout=5, interval=0.02,
                   what=f"the proxied connections of node {node_id} to close")

    def heal(self) -> None:
        for link in self.links.values():
            link.heal()

    def forwarded(self) -> dict:
        return {k: link.forwarded for k, link in self.links.items()}

    def close(self) -> None:
        for link in self.links.values():
            link.close()


class LeaderMonitor:
    """Polls Metadata v7 of every node every 0.2 s in the background and records every
    (partition, leader epoch) -> leader that any node reports. Raft allows at most one
    leader per term, so two leaders for one (partition, epoch) is a split brain."""

    def __init__(self, cluster: Cluster, topic: str):
        self.cluster, self.topic = cluster, topic
        self.seen: dict = defaultdict(set)  # (partition, epoch) -> {(leader, reporting node)}
        self.polls = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="leader-monitor")
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            for n in list(self.cluster.nodes.values()):
                try:
                    t = metadata_v7(n.kafka_port, [self.topic], timeout=2).topics[self.topic]
                except Exception:  # noqa: BLE001 - a node busy or starting: skip this round
                    continue
                for p, pm in t.partitions.items():
                    if pm.error == ERR_NONE and pm.leader >= 0:
                        self.seen[(p, pm.leader_epoch)].add((pm.leader, n.node_id))
                self.polls += 1
            self.stop.wait(0.2)

    def conflicts(self) -> dict:
        return {k: sorted(v) for k, v in list(self.seen.items())
                if len({leader for leader, _ in v}) > 1}

    def history(self) -> dict:
        """{partition: [(epoch, leader), …]} in epoch order."""
        out = defaultdict(list)
        for (p, epoch), v in sorted(self.seen.items()):
            out[p].append((epoch, sorted({leader for leader, _ in v})))
        return dict(out)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


@pytest.fixture
def netsplit_cluster(request, tmp_path):
    """(cluster, raft net): three nodes whose Raft traffic runs through per-pair proxies.
    Nodes, proxies and their threads are torn down at the end, even on failure."""
    request.node._chronik_brokers = []  # conftest attaches their log tails on failure
    cluster = Cluster(tmp_path / "cluster", size=3, registry=request.node._chronik_brokers)
    net = RaftNet(cluster)
    try:
        cluster.start()
        yield cluster, net
    finally:
        cluster.close()
        net.close()


# ---- helpers -------------------------------------------------------------------------------------

def acked_by_partition(acks_log: Path) -> Counter:
    c = Counter()
    for line in read_lines(acks_log):
        parts = line.split()
        if len(parts) == 3:
            c[int(parts[1])] += 1
    return c


def view(node, topic: str) -> dict:
    """{partition: (error, leader, leader_epoch)} as `node` reports it."""
    t = metadata_v7(node.kafka_port, [topic], timeout=3).topics[topic]
    return {p: (pm.error, pm.leader, pm.leader_epoch) for p, pm in t.partitions.items()}


def leading_groups(node) -> set:
    """Raft groups `node` leads: only a leader reports replication lag of its followers."""
    return {labels.split('"')[1] for labels in node.metric("chronik_raft_replication_lag")}


def raw_produce(port: int, topic: str, partition: int, value: bytes, timeout_ms: int,
                wait: float) -> tuple:
    """One acks=all Produce v3; the outcome: ("error", code, base offset) or
    ("no-response", why)."""
    try:
        with kwire.Conn(port, timeout=wait) as c:
            c.send(kraw.produce_request(4242, topic, [(partition, kraw.record_batch([value]))],
                                        acks=-1, timeout_ms=timeout_ms))
            payload = c.recv_frame(wait)
    except (OSError, TimeoutError) as e:
        return ("no-response", repr(e))
    if payload is None:
        return ("no-response", "connection closed")
    corr, parts = kraw.parse_produce(payload)
    assert corr == 4242 and [p.partition for p in parts] == [partition], parts
    return ("error", parts[0].error, parts[0].base_offset)


# ---- the test ------------------------------------------------------------------------------------

def test_isolated_leader_no_split_brain_no_lost_or_duplicated_acks(netsplit_cluster, tmp_path,
                                                                    request):
    cluster, net = netsplit_cluster
    t_start = time.monotonic()
    timings = {}
    cluster.create_topic(TOPIC, PARTS, replication_factor=3)
    monitor = LeaderMonitor(cluster, TOPIC)
    request.addfinalizer(monitor.close)
    out = tmp_path / "producer"
    acks_log, errors_log = out / "acks.log", out / "errors.log"
    with producer_process([sys.executable, str(Path(__file__).resolve()), "produce",
                           cluster.bootstrap, TOPIC, str(PARTS), str(out), str(RATE)],
                          out) as proc:
        wait_until(lambda: acked_by_partition(acks_log)[0] >= 500, timeout=30, interval=0.1,
                   what="500 acked messages on partition 0 before the partition")

        # L: partition 0's leader now, as every node (L included) sees it.
        def agreed_p0():
            vs = [view(n, TOPIC)[0] for n in cluster.nodes.values()]
            return vs[0] if vs[0][0] == ERR_NONE and all(v == vs[0] for v in vs) else None
        _, lid, old_epoch = wait_until(agreed_p0, timeout=10, interval=0.1,
                                       what="an agreed leader of partition 0")
        L = cluster.nodes[lid]
        majority = [n for n in cluster.nodes.values() if n.node_id != lid]
        group = str(FIRST_PARTITION_GROUP + 0)
        assert group in leading_groups(L), (
            f"node {lid} leads partition 0 but not Raft group {group}: the partition -> group "
            f"mapping assumed here is wrong (it leads {leading_groups(L)})")
        # Its replication really runs through the proxies.
        fwd = net.forwarded()
        assert all(fwd[(lid, m.node_id)] > 0 for m in majority), f"bytes per Raft link: {fwd}"
        produce_before = L.metric("chronik_requests_total").get('{api="produce"}', 0)

        # ---- isolate the leader of partition 0 from both other nodes ----------------------
        net.isolate(lid)
        t_iso = time.monotonic()
        fwd_at_iso = net.forwarded()
        marker = f"unacked-write-to-isolated-node-{lid}".encode()
        raw = {}
        raw_thread = threading.Thread(target=lambda: raw.update(result=raw_produce(
            L.kafka_port, TOPIC, 0, marker, timeout_ms=3000, wait=8)), daemon=True)
        raw_thread.start()

        def new_leaders():
            views = [view(n, TOPIC) for n in majority]
            if any(v != views[0] for v in views):
                return None
            v = views[0]
            if all(e == ERR_NONE and ldr != lid and ldr in cluster.nodes
                   for e, ldr, _ in v.values()):
                return v
            return None
        majority_view = wait_until(
            new_leaders, timeout=15, interval=0.1,
            what=f"new leaders agreed by the majority after isolating node {lid}",
            detail=lambda: f"views: { {n.node_id: view(n, TOPIC) for n in majority} }")
        timings["election_s"] = round(time.monotonic() - t_iso, 2)
        new_lid, new_epoch = majority_view[0][1], majority_view[0][2]
        assert timings["election_s"] < 10, f"new leader after {timings['election_s']} s"
        assert new_epoch > old_epoch, (
            f"partition 0: new leader {new_lid} has epoch {new_epoch}, not above {old_epoch}")

        raw_thread.join(12)
        assert "result" in raw, "the raw Produce to the isolated leader never returned"
        result = raw["result"]
        assert not (result[0] == "error" and result[1] == ERR_NONE), (
            f"isolated node {lid} ACKNOWLEDGED an acks=all write to partition 0 at offset "
            f"{result[2]} without a majority: split brain")
        timings["isolated_produce"] = (ERR_NAMES.get(result[1], result[1])
                                       if result[0] == "error" else result)

        # The isolated node does not show its unreplicated write to readers either.
        with kwire.Conn(L.kafka_port, timeout=10) as c:
            hw = kraw.fetch(c, TOPIC, [(0, 0, 1)], timeout=10)[0].high_watermark
            tail = kraw.fetch(c, TOPIC, [(0, max(0, hw - 100), 50 << 20)], timeout=10, corr=201)
        assert marker not in tail[0].records, (
            f"isolated node {lid} serves its uncommitted write to Fetch (high watermark {hw})")
        timings["isolated_view_p0"] = view(L, TOPIC)[0]  # typically still (0, L, old epoch)

        # The producer keeps going through the majority: partition 0 on its new leader.
        acked_p0 = acked_by_partition(acks_log)[0]
        wait_until(lambda: acked_by_partition(acks_log)[0] >= acked_p0 + 1000
                   and time.monotonic() - t_iso >= 6, timeout=30, interval=0.2,
                   what=f"1000 more acks on partition 0 while node {lid} is isolated",
                   detail=lambda: f"producer stalled: {acked_by_partition(acks_log)} acked (was "
                                  f"{acked_p0} on partition 0); errors: "
                                  f"{read_lines(errors_log)[-10:]}")
        timings["isolated_s"] = round(time.monotonic() - t_iso, 2)
        fwd = net.forwarded()
        leaked = {k: fwd[k] - fwd_at_iso[k] for k in fwd if lid in k and fwd[k] != fwd_at_iso[k]}
        assert not leaked, f"Raft bytes crossed the cut links while isolated: {leaked}"
        refused = {k: link.refused for k, link in net.links.items() if lid in k}
        timings["refused_reconnects"] = sum(refused.values())
        timings["produce_requests_to_isolated"] = (
            L.metric("chronik_requests_total").get('{api="produce"}', 0) - produce_before)

        # ---- heal: the old leader rejoins as a follower and catches up --------------------
        net.heal()
        t_heal = time.monotonic()
        target = cluster.nodes[new_lid].applied_indexes()[group]

        def rejoined():
            mine = view(L, TOPIC)[0]
            theirs = view(cluster.nodes[new_lid], TOPIC)[0]
            return mine == theirs and mine[1] != lid and L.applied_indexes()[group] >= target
        wait_until(rejoined, timeout=20, interval=0.1,
                   what=f"node {lid} following partition 0 and caught up after healing",
                   detail=lambda: f"its view {view(L, TOPIC)}, leader's "
                                  f"{view(cluster.nodes[new_lid], TOPIC)}; applied "
                                  f"{L.applied_indexes().get(group)} < {target} (group {group})")
        timings["rejoin_s"] = round(time.monotonic() - t_heal, 2)
        assert group not in leading_groups(L), f"node {lid} still acts as leader of group {group}"

        acked_at_heal = sum(acked_by_partition(acks_log).values())
        wait_until(lambda: sum(acked_by_partition(acks_log).values()) >= acked_at_heal + 500,
                   timeout=20, what="500 more acks after healing")
        (out / "stop").touch()
        proc.wait(timeout=120)

    summary = assert_producer_succeeded(proc, out)
    assert_no_failed_deliveries(errors_log)

    # ---- settled: every node agrees on every partition's leader and epoch ------------------
    def settled():
        views = {n.node_id: view(n, TOPIC) for n in cluster.nodes.values()}
        first = next(iter(views.values()))
        ok = all(v == first for v in views.values()) and all(
            e == ERR_NONE and ldr in cluster.nodes for e, ldr, _ in first.values())
        return views if ok else None
    wait_until(settled, timeout=20, interval=0.2, what="agreed leaders and epochs after healing",
               detail=lambda: f"views: { {n.node_id: view(n, TOPIC) for n in cluster.nodes.values()} }")
    final = view(L, TOPIC)
    assert final[0][1] != lid or final[0][2] > new_epoch, f"partition 0 after healing: {final[0]}"
    monitor.close()
    conflicts = monitor.conflicts()
    assert not conflicts, (
        f"split brain: two leaders for one (partition, leader epoch), as (leader, reported by): "
        f"{conflicts}")
    assert monitor.polls > 50, f"the leader monitor only got {monitor.polls} answers"

    # Every node has applied the same in every partition group (nothing is written now).
    groups = {str(FIRST_PARTITION_GROUP + p) for p in range(PARTS)}

    def same_applied():
        idx = [{g: n.applied_indexes().get(g) for g in groups} for n in cluster.nodes.values()]
        return all(i == idx[0] for i in idx)
    wait_until(same_applied, timeout=20, interval=0.25,
               what="the same applied index on every node in every partition group")

    # ---- every ack exactly once, at its offset, in order; the unacked write nowhere ----------
    acked = read_acks(acks_log)  # seq -> (partition, offset)
    records = cluster.consume_all(TOPIC, range(PARTS), timeout=60)
    for p in range(PARTS):
        recs = records.get(p, [])
        foreign = [(off, k, v) for off, k, v in recs if k is None]
        assert not foreign, (
            f"partition {p}: records nobody was acknowledged for, e.g. {foreign[:3]} (the raw "
            f"Produce to isolated node {lid} got {timings['isolated_produce']})")
        for off, k, v in recs:
            assert v == f"{int(k)}:{p}".encode(), f"partition {p} offset {off}: value {v!r}"
    present = assert_acked_stored_once(records, acked, PARTS)
    # Every produced message was acknowledged (no failures, none undelivered), so the log
    # holds exactly the acknowledged ones.
    produced = int(summary.split()[0].split("=")[1])
    assert len(acked) == produced, f"{produced} produced, {len(acked)} acknowledged"
    assert present == set(acked), f"stored, never acknowledged: {sorted(present - set(acked))[:20]}"
    assert len(acked) >= 3000, f"only {len(acked)} acks: the run proves little"

    timings.update(total_s=round(time.monotonic() - t_start, 1), acked=len(acked),
                   stored=sum(len(r) for r in records.values()), partition0_leader=(lid, new_lid),
                   epochs=(old_epoch, new_epoch), monitor_polls=monitor.polls,
                   leaders_by_epoch=monitor.history())
    print(f"\nnetsplit: {timings}")
