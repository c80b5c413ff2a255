"""`chronik topics|groups|cluster …`: the admin commands against a running broker."""

import json
import subprocess
import time

from confluent_kafka import Consumer, TopicPartition

from conftest import chronik_bin
from helpers import DeliveryTracker, produce_all


def cli(broker, *args, check=True):
    proc = subprocess.run([chronik_bin(), *args, "--bootstrap", broker.bootstrap],
                          capture_output=True, text=True, timeout=60)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_topics_lifecycle_and_cluster_status(broker):
    cli(broker, "topics", "create", "cli-t", "--partitions", "3", "--config", "retention.ms=60000")
    listed = json.loads(cli(broker, "topics", "list", "--json").stdout)
    assert {"topic": "cli-t", "partitions": 3} == {k: listed[0][k] for k in ("topic", "partitions")}
    producer = broker.producer({"acks": "all"})
    dr = DeliveryTracker()
    produce_all(producer, "cli-t", ((None, b"v", i % 3, None) for i in range(30)), dr)
    described = json.loads(cli(broker, "topics", "describe", "cli-t", "--json").stdout)
    assert [p["latest"] for p in described["partitions"]] == [10, 10, 10]
    assert all(p["leader"] == 1 and p["earliest"] == 0 for p in described["partitions"])
    table = cli(broker, "topics", "describe", "cli-t").stdout
    assert table.splitlines()[0].split() == ["PARTITION", "LEADER", "EPOCH", "EARLIEST", "LATEST"]

    status = json.loads(cli(broker, "cluster", "status", "--json").stdout)
    assert status["brokers"] == [{"id": 1, "host": "127.0.0.1", "port": broker.kafka_port,
                                  "fenced": False}]
    assert status["partitions"] == 3 and status["leaderless_partitions"] == 0

    cli(broker, "topics", "delete", "cli-t")
    assert json.loads(cli(broker, "topics", "list", "--json").stdout) == []


def test_groups_show_committed_offsets_and_lag(broker):
    broker.create_topic("cli-g", partitions=1)
    producer = broker.producer({"acks": "all"})
    dr = DeliveryTracker()
    produce_all(producer, "cli-g", ((None, b"v", 0, None) for _ in range(50)), dr)
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "cli-group",
                  "enable.auto.commit": False})
    c.commit(offsets=[TopicPartition("cli-g", 0, 20)], asynchronous=False)
    c.close()
    groups = json.loads(cli(broker, "groups", "list", "--json").stdout)
    assert "cli-group" in [g["group"] for g in groups]
    desc = json.loads(cli(broker, "groups", "describe", "cli-group", "--json").stdout)
    assert desc["offsets"] == [{"topic": "cli-g", "partition": 0, "committed": 20, "latest": 50, "lag": 30}]

    # A live member: its host and the partitions it was assigned.
    live = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "cli-group",
                     "enable.auto.commit": False, "broker.address.family": "v4"})
    live.subscribe(["cli-g"])
    try:
        deadline = time.monotonic() + 30
        while not live.assignment() and time.monotonic() < deadline:
            live.poll(0.2)
        assert live.assignment(), "the consumer was never assigned its partition"
        desc = json.loads(cli(broker, "groups", "describe", "cli-group", "--json").stdout)
        (member,) = desc["members"]
        assert member["client_host"] == "/127.0.0.1"
        assert member["assignment"] == [{"topic": "cli-g", "partitions": [0]}]
        text = cli(broker, "groups", "describe", "cli-group").stdout
        assert "cli-g:0" in text, text
    finally:
        live.close()


def test_errors_are_clear_and_exit_nonzero(broker):
    bad = cli(broker, "topics", "create", "bad name!", check=False)
    assert bad.returncode != 0 and "INVALID_TOPIC_EXCEPTION" in bad.stderr
    missing = cli(broker, "topics", "describe", "no-such-topic", check=False)
    assert missing.returncode != 0 and "UNKNOWN_TOPIC_OR_PARTITION" in missing.stderr
    down = subprocess.run([chronik_bin(), "topics", "list", "--bootstrap", "127.0.0.1:1"],
                          capture_output=True, text=True, timeout=60)
    assert down.returncode != 0 and "is the broker running?" in down.stderr
    # The broker's HTTP address instead of its Kafka one, and a host name that does not
    # resolve: each says what is wrong.
    http = subprocess.run([chronik_bin(), "topics", "list", "--bootstrap",
                           f"127.0.0.1:{broker.http_port}"],
                          capture_output=True, text=True, timeout=60)
    assert http.returncode != 0 and "HTTP" in http.stderr, http.stderr
    unknown = subprocess.run([chronik_bin(), "topics", "list", "--bootstrap",
                              "no-such-host.invalid:9092"],
                             capture_output=True, text=True, timeout=60)
    assert unknown.returncode != 0 and "resolve" in unknown.stderr, unknown.stderr
    nogroup = cli(broker, "groups", "describe", "no-such-group", check=False)
    assert nogroup.returncode != 0 and "does not exist" in nogroup.stderr, nogroup.stderr
