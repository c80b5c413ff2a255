"""Consumer groups: membership and rebalancing with real clients (confluent-kafka,
kafka-python and aiokafka in one group), durable committed offsets across kill -9, simple
(membership-less) commits, admin views, and Kafka's error codes for bad group requests.

Every consumer runs in its own thread with a stop flag and commits synchronously after
processing (and on revocation), so the exactly-once count holds across rebalances. All
waits are bounded; session timeouts are the 6 s minimum and the initial rebalance delay is
the broker's short default.
"""

from __future__ import annotations

import asyncio
import struct
import threading
import time
from collections import Counter

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka import ConsumerGroupTopicPartitions

import kwire
from helpers import DeliveryTracker, produce_all, wait_until

SESSION_MS = 6000
HEARTBEAT_MS = 500


class Tracker:
    """What every member processed and owns; shared by the member threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.processed = Counter()
        self.owned: dict[str, set] = {}
        self.revoked: dict[str, list] = {}
        self.assigned_events: dict[str, int] = {}
        self.errors: list = []

    def process(self, name, keys):
        with self.lock:
            self.processed.update(keys)

    def assign(self, name, parts, incremental=False):
        with self.lock:
            cur = self.owned.setdefault(name, set())
            if not incremental:
                cur.clear()
            cur.update(parts)
            self.assigned_events[name] = self.assigned_events.get(name, 0) + 1

    def revoke(self, name, parts, incremental=False):
        with self.lock:
            self.revoked.setdefault(name, []).append(sorted(parts))
            cur = self.owned.setdefault(name, set())
            if incremental:
                cur.difference_update(parts)
            else:
                cur.clear()

    def owners(self):
        with self.lock:
            return {n: set(p) for n, p in self.owned.items()}

    def total(self):
        with self.lock:
            return sum(self.processed.values())


class Member(threading.Thread):
    def __init__(self, broker, group, topic, tracker, name):
        super().__init__(name=name, daemon=True)
        self.broker, self.group, self.topic, self.tracker = broker, group, topic, tracker
        self.stop_flag = threading.Event()
        self.started_ok = threading.Event()

    def stop(self, timeout=30):
        self.stop_flag.set()
        self.join(timeout)
        assert not self.is_alive(), f"{self.name} did not stop"


class ConfluentMember(Member):
    def __init__(self, *a, conf=None, incremental=False):
        super().__init__(*a)
        self.conf = conf or {}
        self.incremental = incremental

    def run(self):
        conf = self.broker.client_conf({
            "group.id": self.group, "auto.offset.reset": "earliest",
            "enable.auto.commit": False, "session.timeout.ms": SESSION_MS,
            "heartbeat.interval.ms": HEARTBEAT_MS,
            "partition.assignment.strategy": "roundrobin",
        })
        conf.update(self.conf)
        c = Consumer(conf)
        name = self.name
        pending = {}  # processed, not yet committed: partition -> next offset

        def commit_pending():
            if pending:
                offs = [TopicPartition(self.topic, p, o) for p, o in pending.items()]
                try:
                    c.commit(offsets=offs, asynchronous=False)
                    pending.clear()
                except KafkaException as e:
                    self.tracker.errors.append((name, "commit", str(e)))

        def on_assign(consumer, parts):
            self.tracker.assign(name, [p.partition for p in parts], self.incremental)

        def on_revoke(consumer, parts):
            commit_pending()
            self.tracker.revoke(name, [p.partition for p in parts], self.incremental)

        c.subscribe([self.topic], on_assign=on_assign, on_revoke=on_revoke)
        self.started_ok.set()
        try:
            while not self.stop_flag.is_set():
                msgs = c.consume(num_messages=500, timeout=0.2)
                keys = []
                for m in msgs:
                    if m.error() is None:
                        keys.append(m.key())
                        pending[m.partition()] = m.offset() + 1
                self.tracker.process(name, keys)
                commit_pending()
        finally:
            c.close()


class KafkaPythonMember(Member):
    def run(self):
        from kafka import ConsumerRebalanceListener, KafkaConsumer
        from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
        name, tracker = self.name, self.tracker
        c = KafkaConsumer(bootstrap_servers=self.broker.bootstrap, group_id=self.group,
                          enable_auto_commit=False, auto_offset_reset="earliest",
                          session_timeout_ms=SESSION_MS, heartbeat_interval_ms=HEARTBEAT_MS,
                          partition_assignment_strategy=[RoundRobinPartitionAssignor])

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                tracker.revoke(name, [tp.partition for tp in revoked])

            def on_partitions_assigned(self, assigned):
                tracker.assign(name, [tp.partition for tp in assigned])

        c.subscribe([self.topic], listener=Listener())
        self.started_ok.set()
        try:
            while not self.stop_flag.is_set():
                batches = c.poll(timeout_ms=200, max_records=500)
                keys = [r.key for recs in batches.values() for r in recs]
                tracker.process(name, keys)
                if keys:
                    try:
                        c.commit()
                    except Exception as e:  # noqa: BLE001 - counted, then asserted on
                        tracker.errors.append((name, "commit", repr(e)))
        finally:
            c.close()


class AioMember(Member):
    def run(self):
        asyncio.run(self.main())

    async def main(self):
        from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
        from aiokafka.structs import TopicPartition as ATP
        from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
        name, tracker, topic = self.name, self.tracker, self.topic
        pending = {}
        c = AIOKafkaConsumer(bootstrap_servers=self.broker.bootstrap, group_id=self.group,
                             enable_auto_commit=False, auto_offset_reset="earliest",
                             session_timeout_ms=SESSION_MS, heartbeat_interval_ms=HEARTBEAT_MS,
                             partition_assignment_strategy=(RoundRobinPartitionAssignor,))

        async def commit_pending():
            if pending:
                offs = {ATP(topic, p): o for p, o in pending.items()}
                try:
                    await c.commit(offs)
                    for p in list(offs):
                        pending.pop(p.partition, None)
                except Exception as e:  # noqa: BLE001 - counted, then asserted on
                    tracker.errors.append((name, "commit", repr(e)))

        class Listener(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked):
                await commit_pending()
                tracker.revoke(name, [tp.partition for tp in revoked])

            async def on_partitions_assigned(self, assigned):
                tracker.assign(name, [tp.partition for tp in assigned])

        await c.start()
        c.subscribe([topic], listener=Listener())
        self.started_ok.set()
        try:
            while not self.stop_flag.is_set():
                batches = await c.getmany(timeout_ms=200, max_records=500)
                keys = []
                for tp, recs in batches.items():
                    for r in recs:
                        keys.append(r.key)
                        pending[tp.partition] = r.offset + 1
                tracker.process(name, keys)
                await commit_pending()
        finally:
            await c.stop()


def produce_keys(broker, topic, start, end):
    dt = DeliveryTracker()
    p = broker.producer({"linger.ms": 5, "batch.num.messages": 2000})
    produce_all(p, topic, ((f"k{i}".encode(), b"v", None, None) for i in range(start, end)), dt)
    assert not dt.errors, dt.errors[:3]
    assert len(dt.ok) == end - start


def spread(tracker, names, partitions=6):
    """Each named member owns at least one partition and together they own all, once."""
    owners = tracker.owners()
    owned = [owners.get(n, set()) for n in names]
    flat = [p for s in owned for p in s]
    return all(owned) and sorted(flat) == list(range(partitions))


def test_three_clients_rebalance_and_process_every_message_once(broker):
    topic, group, n = "orders", "g-mixed", 50_000
    broker.create_topic(topic, partitions=6)
    tracker = Tracker()
    members = [ConfluentMember(broker, group, topic, tracker, "confluent"),
               KafkaPythonMember(broker, group, topic, tracker, "kafka-python"),
               AioMember(broker, group, topic, tracker, "aiokafka")]
    for m in members:
        m.start()
    names = [m.name for m in members]
    try:
        t0 = time.monotonic()
        wait_until(lambda: spread(tracker, names), timeout=45, what="6 partitions over 3 members")
        print(f"three members stable after {time.monotonic() - t0:.2f}s")
        produce_keys(broker, topic, 0, n // 2)
        wait_until(lambda: tracker.total() >= n // 4, timeout=60, what="a quarter processed")

        # kafka-python leaves: its partitions move to the other two.
        leaving = members[1]
        t0 = time.monotonic()
        leaving.stop()
        wait_until(lambda: spread(tracker, ["confluent", "aiokafka"]), timeout=SESSION_MS / 1000 + 10,
                   what="partitions moved to the remaining two")
        moved_after = time.monotonic() - t0
        print(f"partitions moved after a member left in {moved_after:.2f}s")
        assert moved_after < SESSION_MS / 1000

        # It comes back and gets some partitions again.
        back = KafkaPythonMember(broker, group, topic, tracker, "kafka-python")
        members[1] = back
        back.start()
        wait_until(lambda: spread(tracker, names), timeout=45, what="the returning member gets partitions")
        produce_keys(broker, topic, n // 2, n)
        wait_until(lambda: tracker.total() >= n, timeout=90, what=f"{n} messages processed")
        time.sleep(1.0)  # anything re-delivered would show up now
    finally:
        for m in members:
            m.stop()
    dup = {k: c for k, c in tracker.processed.items() if c != 1}
    assert not dup, f"{len(dup)} keys processed more than once, e.g. {list(dup.items())[:5]}"
    assert len(tracker.processed) == n
    assert not tracker.errors, tracker.errors[:5]

    # Every partition's committed offset is its end: nothing left to process.
    c = broker.consumer({"group.id": group})
    committed = c.committed([TopicPartition(topic, p) for p in range(6)], timeout=10)
    ends = [c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(6)]
    assert [tp.offset for tp in committed] == ends
    assert sum(ends) == n
    metrics = broker.metrics()
    assert "chronik_group_rebalances_total" in metrics
    assert f'chronik_consumer_lag{{group="{group}",topic="{topic}",partition="0"}} 0' in metrics


def test_cooperative_sticky_rebalances_incrementally(broker):
    topic, group = "coop", "g-coop"
    broker.create_topic(topic, partitions=6)
    tracker = Tracker()
    conf = {"partition.assignment.strategy": "cooperative-sticky"}
    a = ConfluentMember(broker, group, topic, tracker, "a", conf=conf, incremental=True)
    a.start()
    members = [a]
    try:
        wait_until(lambda: spread(tracker, ["a"]), timeout=30, what="a owns everything")
        produce_keys(broker, topic, 0, 3000)
        wait_until(lambda: tracker.total() >= 3000, timeout=30, what="first batch processed")
        b = ConfluentMember(broker, group, topic, tracker, "b", conf=conf, incremental=True)
        b.start()
        members.append(b)
        wait_until(lambda: spread(tracker, ["a", "b"]), timeout=30, what="b gets a share")
        # Incremental: a only ever gave up the partitions that moved to b.
        moved = tracker.owners()["b"]
        revoked_by_a = {p for r in tracker.revoked.get("a", []) for p in r}
        assert revoked_by_a == moved, (revoked_by_a, moved)
        assert len(moved) == 3
        produce_keys(broker, topic, 3000, 6000)
        wait_until(lambda: tracker.total() >= 6000, timeout=30, what="second batch processed")
    finally:
        for m in members:
            m.stop()
    assert all(c == 1 for c in tracker.processed.values())
    assert len(tracker.processed) == 6000


def test_static_member_restart_does_not_rebalance(broker):
    topic, group = "static", "g-static"
    broker.create_topic(topic, partitions=4)
    tracker = Tracker()
    mk = lambda name: ConfluentMember(broker, group, topic, tracker, name,  # noqa: E731
                                      conf={"group.instance.id": f"inst-{name}"})
    members = [mk("s1"), mk("s2")]
    for m in members:
        m.start()
    try:
        wait_until(lambda: spread(tracker, ["s1", "s2"], 4), timeout=30, what="two static members")
        before = tracker.owners()
        revocations = {n: len(v) for n, v in tracker.revoked.items()}
        members[1].stop()  # a static member leaves no LeaveGroup: the group stays Stable
        assert describe(broker, group).state.name == "STABLE"
        members[1] = mk("s2")
        members[1].start()
        wait_until(lambda: tracker.assigned_events.get("s2", 0) >= 2, timeout=20,
                   what="s2 got its assignment back")
        time.sleep(2)
        after = tracker.owners()
        assert after["s2"] == before["s2"], "the restarted static member got its partitions back"
        assert after["s1"] == before["s1"]
        s1_revocations = len(tracker.revoked.get("s1", []))
        assert s1_revocations == revocations.get("s1", 0), "s1 saw a revocation"
        d = describe(broker, group)
        assert {m.group_instance_id for m in d.members} == {"inst-s1", "inst-s2"}
    finally:
        for m in members:
            m.stop()


def describe(broker, group):
    return broker.admin().describe_consumer_groups([group], request_timeout=10)[group].result(10)


class CarryOn:
    """Two confluent members of `group` on the 4-partition `topic`, stable, with 2000
    records processed; after something happens to the brokers, `check()` has the next
    2000 processed with no reassignment, no revocation and nothing redelivered. The
    members' session (client side too: librdkafka rejoins on its own when its heartbeats
    fail for a whole session) must span the event."""

    def __init__(self, target, topic, group, session_ms):
        self.target, self.topic = target, topic
        self.tracker = Tracker()
        conf = {"session.timeout.ms": session_ms}
        self.members = [ConfluentMember(target, group, topic, self.tracker, n, conf=conf)
                        for n in ("m1", "m2")]

    def __enter__(self):
        for m in self.members:
            m.start()
        t = self.tracker
        wait_until(lambda: spread(t, ["m1", "m2"], 4), timeout=30, what="two members")
        produce_keys(self.target, self.topic, 0, 2000)
        wait_until(lambda: t.total() >= 2000, timeout=30, what="first 2000 processed")
        self.owners, self.assigned = t.owners(), dict(t.assigned_events)
        self.revoked = {n: len(v) for n, v in t.revoked.items()}
        return self

    def check(self):
        t = self.tracker
        produce_keys(self.target, self.topic, 2000, 4000)
        wait_until(lambda: t.total() >= 4000, timeout=60, what="next 2000 processed")
        time.sleep(2)
        assert t.owners() == self.owners
        assert t.assigned_events == self.assigned, "members were assigned again"
        assert {n: len(v) for n, v in t.revoked.items()} == self.revoked
        dupes = [k for k, n in t.processed.items() if n > 1]
        assert not dupes, f"redelivered: {dupes[:5]}"
        assert t.total() == 4000

    def __exit__(self, *exc):
        for m in self.members:
            m.stop()


def test_members_keep_their_assignments_across_a_broker_kill9(broker):
    """Membership is stored with the offsets: after a kill -9 and restart the broker loads
    the stable group, and its members carry on heartbeating with their assignments (no
    rebalance, nothing redelivered), as Kafka's coordinator loads group metadata."""
    topic, group = "restart-members", "g-restart"
    broker.create_topic(topic, partitions=4)
    with CarryOn(broker, topic, group, session_ms=20000) as group_run:
        broker.kill9()
        broker.start()
        d = describe(broker, group)
        assert d.state.name == "STABLE", "the stored group was loaded"
        assert len(d.members) == 2
        assert all(m.assignment.topic_partitions for m in d.members)
        group_run.check()


def test_committed_offsets_survive_kill9(broker):
    topic, group = "durable-offsets", "g-durable"
    broker.create_topic(topic, partitions=3)
    produce_keys(broker, topic, 0, 3000)
    c = broker.consumer({"group.id": group, "session.timeout.ms": SESSION_MS,
                         "heartbeat.interval.ms": HEARTBEAT_MS})
    c.subscribe([topic])
    seen = 0
    deadline = time.monotonic() + 30
    while seen < 1500 and time.monotonic() < deadline:
        for m in c.consume(100, timeout=0.5):
            if m.error() is None:
                seen += 1
                c.commit(message=m, asynchronous=False)
    assert seen >= 1500
    committed = {tp.partition: tp.offset for tp in
                 c.committed([TopicPartition(topic, p) for p in range(3)], timeout=10)}
    c.close()
    broker._clients.remove(c)

    broker.kill9()
    broker.start()
    fresh = broker.consumer({"group.id": group, "session.timeout.ms": SESSION_MS})
    after = {tp.partition: tp.offset for tp in
             fresh.committed([TopicPartition(topic, p) for p in range(3)], timeout=10)}
    assert after == committed
    fresh.subscribe([topic])
    rest = []
    deadline = time.monotonic() + 30
    while len(rest) < 3000 - sum(max(o, 0) for o in committed.values()) and time.monotonic() < deadline:
        rest.extend(m for m in fresh.consume(500, timeout=0.5) if m.error() is None)
    assert len(rest) == 3000 - sum(max(o, 0) for o in committed.values())
    assert all(m.offset() >= committed[m.partition()] for m in rest)


def test_commit_and_fetch_without_membership(broker):
    from kafka import KafkaConsumer
    from kafka.structs import OffsetAndMetadata, TopicPartition as KTP
    topic = "simple"
    broker.create_topic(topic, partitions=2)
    kc = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id="g-simple",
                       enable_auto_commit=False)
    try:
        tp = KTP(topic, 1)
        kc.assign([tp])
        kc.commit({tp: OffsetAndMetadata(5, "processed by kafka-python", -1)})
        assert kc.committed(tp) == 5
        assert kc.committed(tp, metadata=True).metadata == "processed by kafka-python"
    finally:
        kc.close()
    c = broker.consumer({"group.id": "g-simple"})
    c.assign([TopicPartition(topic, 0)])
    c.commit(offsets=[TopicPartition(topic, 0, 7)], asynchronous=False)
    got = c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)
    # (confluent-kafka's Python binding may read committed metadata past its end, so the
    # metadata string is checked through kafka-python above.)
    assert [t.offset for t in got] == [7, 5]
    offsets = broker.admin().list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions("g-simple")])["g-simple"].result(10)
    assert {(t.partition, t.offset) for t in offsets.topic_partitions} == {(0, 7), (1, 5)}


def test_admin_lists_describes_and_shows_lag(broker):
    from confluent_kafka import ConsumerGroupState
    topic, group = "lagging", "g-admin"
    broker.create_topic(topic, partitions=2)
    produce_keys(broker, topic, 0, 100)
    c = broker.consumer({"group.id": group, "session.timeout.ms": SESSION_MS,
                         "client.id": "admin-test-client"})
    c.subscribe([topic])
    wait_until(lambda: c.poll(0.2) is None and len(c.assignment()) == 2, timeout=30,
               what="consumer assigned")
    c.commit(offsets=[TopicPartition(topic, 0, 10), TopicPartition(topic, 1, 20)],
             asynchronous=False)
    admin = broker.admin()
    listed = admin.list_consumer_groups(request_timeout=10).result(10)
    ids = {g.group_id: g for g in listed.valid}
    assert group in ids and ids[group].state == ConsumerGroupState.STABLE
    d = describe(broker, group)
    assert d.state == ConsumerGroupState.STABLE
    assert d.partition_assignor == "range"
    assert len(d.members) == 1 and d.members[0].client_id == "admin-test-client"
    assert {tp.partition for tp in d.members[0].assignment.topic_partitions} == {0, 1}
    offsets = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(10)
    committed = {t.partition: t.offset for t in offsets.topic_partitions}
    assert committed == {0: 10, 1: 20}
    ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in (0, 1)}
    lag = {p: ends[p] - committed[p] for p in (0, 1)}
    metrics = broker.metrics()
    for p in (0, 1):
        assert f'chronik_consumer_lag{{group="{group}",topic="{topic}",partition="{p}"}} {lag[p]}' in metrics
    assert 'chronik_group_members{group="g-admin",state="Stable"} 1' in metrics

    # Deleting a group with a member is refused; once it left, it works.
    fut = admin.delete_consumer_groups([group], request_timeout=10)[group]
    with pytest.raises(KafkaException) as e:
        fut.result(10)
    assert e.value.args[0].code() == 68  # NON_EMPTY_GROUP
    c.close()
    broker._clients.remove(c)
    admin.delete_consumer_groups([group], request_timeout=10)[group].result(10)
    listed = admin.list_consumer_groups(request_timeout=10).result(10)
    assert group not in {g.group_id for g in listed.valid}


# ---- raw frames for the error codes ------------------------------------------------------

def raw(broker, api, version, body, timeout=15):
    with kwire.Conn(broker.kafka_port, timeout=timeout) as c:
        c.send(kwire.request(api, version, 7, body))
        payload = c.recv_frame(timeout)
    assert payload is not None, "broker closed the connection"
    r = kwire.Reader(payload)
    assert r.i32() == 7
    return r


def join_v0(group, session_ms, member="", ptype="consumer", protocols=(("range", b"m"),)):
    body = kwire.enc_string(group) + struct.pack(">i", session_ms) + kwire.enc_string(member)
    body += kwire.enc_string(ptype) + struct.pack(">i", len(protocols))
    for name, meta in protocols:
        body += kwire.enc_string(name) + struct.pack(">i", len(meta)) + meta
    return body


def test_bad_group_requests_get_kafka_codes(broker):
    broker.create_topic("real", partitions=1)
    JOIN, HEARTBEAT, COMMIT, FIND = 11, 12, 8, 10
    assert raw(broker, JOIN, 0, join_v0("g-bad", 1000)).i16() == 26  # INVALID_SESSION_TIMEOUT
    assert raw(broker, JOIN, 0, join_v0("g-bad", 2_000_000)).i16() == 26
    assert raw(broker, JOIN, 0, join_v0("", 10_000)).i16() == 24  # INVALID_GROUP_ID
    assert raw(broker, JOIN, 0, join_v0("x" * 300, 10_000)).i16() == 24
    assert raw(broker, JOIN, 0, join_v0("g-bad", 10_000, ptype="")).i16() == 23
    # A first member makes the group a "consumer" group; another protocol type is refused.
    first = raw(broker, JOIN, 0, join_v0("g-bad", 10_000))
    assert first.i16() == 0
    assert raw(broker, JOIN, 0, join_v0("g-bad", 10_000, ptype="connect")).i16() == 23
    assert raw(broker, JOIN, 0, join_v0("g-bad", 10_000, protocols=(("other", b""),))).i16() == 23
    assert raw(broker, JOIN, 0, join_v0("g-bad", 10_000, member="stale-member")).i16() == 25
    # Heartbeats from a member the group does not know (e.g. expired).
    hb = kwire.enc_string("g-bad") + struct.pack(">i", 1) + kwire.enc_string("expired")
    assert raw(broker, HEARTBEAT, 0, hb).i16() == 25
    # OffsetCommit v2 for an unknown topic and an unknown partition: per-partition errors.
    def commit(topic, partition, group="g-simple-bad"):
        body = kwire.enc_string(group) + struct.pack(">i", -1) + kwire.enc_string("")
        body += struct.pack(">q", -1) + struct.pack(">i", 1) + kwire.enc_string(topic)
        body += struct.pack(">i", 1) + struct.pack(">iq", partition, 1) + kwire.enc_string("")
        r = raw(broker, COMMIT, 2, body)
        assert r.i32() == 1 and r.string() == topic and r.i32() == 1
        assert r.i32() == partition
        return r.i16()
    assert commit("no-such-topic", 0) == 3
    assert commit("real", 5) == 3
    assert commit("real", 0) == 0
    assert commit("real", 0, group="") == 24
    # FindCoordinator v1 for a transaction: TRANSACTIONAL_ID_AUTHORIZATION_FAILED, which
    # clients treat as fatal (they retry COORDINATOR_NOT_AVAILABLE until their timeout).
    r = raw(broker, FIND, 1, kwire.enc_string("txn") + struct.pack(">b", 1))
    r.i32()
    assert r.i16() == 53
    assert "transactional.id" in r.string()
    r = raw(broker, FIND, 1, kwire.enc_string("g-ok") + struct.pack(">b", 0))
    r.i32()
    assert r.i16() == 0
    # The broker still serves groups.
    c = broker.consumer({"group.id": "g-after-bad"})
    c.assign([TopicPartition("real", 0)])
    c.commit(offsets=[TopicPartition("real", 0, 1)], asynchronous=False)
    assert c.committed([TopicPartition("real", 0)], timeout=10)[0].offset == 1
    broker.assert_healthy()


def test_offsets_of_groups_without_members_expire(broker_factory):
    """offsets.retention.minutes: a group that has had no members for the retention loses
    its offsets (and is forgotten); a group with a live member keeps them."""
    broker = broker_factory(extra_args=["--offsets-retention-ms", "2000"])
    topic = "retained"
    broker.create_topic(topic, partitions=1)
    tp = TopicPartition(topic, 0)

    def committed(group):
        c = broker.consumer({"group.id": group})
        try:
            return c.committed([tp], timeout=10)[0].offset
        finally:
            c.close()

    # A member that stays in its group (librdkafka heartbeats in the background).
    live = broker.consumer({"group.id": "g-live", "session.timeout.ms": SESSION_MS,
                            "heartbeat.interval.ms": HEARTBEAT_MS})
    try:
        live.subscribe([topic])
        wait_until(lambda: live.poll(0.2) is None and live.assignment(), timeout=30,
                   what="the live member's assignment")
        live.commit(offsets=[TopicPartition(topic, 0, 3)], asynchronous=False)
        # A member that leaves, and a commit without membership.
        gone = broker.consumer({"group.id": "g-gone"})
        gone.subscribe([topic])
        wait_until(lambda: gone.poll(0.2) is None and gone.assignment(), timeout=30,
                   what="the leaving member's assignment")
        gone.commit(offsets=[TopicPartition(topic, 0, 4)], asynchronous=False)
        gone.close()
        simple = broker.consumer({"group.id": "g-simple"})
        simple.assign([tp])
        simple.commit(offsets=[TopicPartition(topic, 0, 5)], asynchronous=False)
        simple.close()
        assert [committed(g) for g in ("g-live", "g-gone", "g-simple")] == [3, 4, 5]

        def listed():
            return {g.group_id for g in broker.admin().list_consumer_groups().result(10).valid}

        # Expired, then forgotten: no offsets and not listed any more.
        wait_until(lambda: committed("g-gone") < 0 and committed("g-simple") < 0
                   and not {"g-gone", "g-simple"} & listed(), timeout=30,
                   what="the groups without members to expire")
        assert committed("g-live") == 3 and "g-live" in listed()
    finally:
        live.close()
