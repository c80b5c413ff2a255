"""Configuration layering (defaults -> chronik.toml -> CHRONIK_* -> flags) and clear,
non-zero exits for bad configuration."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

import kwire
from conftest import chronik_bin


def partitions_of_autocreated(broker, topic):
    md = kwire.metadata_v1(broker.kafka_port, topics=[topic])
    ((err, name, _, parts),) = md.topics
    assert (err, name) == (0, topic)
    return len(parts)


def test_file_then_env_then_flag(broker_factory, tmp_path):
    conf = tmp_path / "chronik.toml"
    conf.write_text("num_partitions = 3\nmessage_max_bytes = 5000\n")

    b = broker_factory(extra_args=["--config", str(conf)])
    assert partitions_of_autocreated(b, "from-file") == 3
    b.close()

    b = broker_factory(extra_args=["--config", str(conf)], env={"CHRONIK_NUM_PARTITIONS": "5"})
    assert partitions_of_autocreated(b, "from-env") == 5
    b.close()

    b = broker_factory(extra_args=["--config", str(conf), "--num-partitions", "7"],
                       env={"CHRONIK_NUM_PARTITIONS": "5"})
    assert partitions_of_autocreated(b, "from-flag") == 7
    # The file's other keys still apply under the env and flag layers.
    from confluent_kafka.admin import ConfigResource
    res = ConfigResource(ConfigResource.Type.BROKER, "1")
    entries = b.admin().describe_configs([res], request_timeout=30)[res].result(timeout=60)
    assert entries["message.max.bytes"].value == "5000"


def run_serve(tmp_path, *args, env=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("CHRONIK_")}
    e["RUST_BACKTRACE"] = "1"
    e.update(env or {})
    return subprocess.run([chronik_bin(), "serve", "--data-dir", str(tmp_path / "data"), *args],
                          capture_output=True, text=True, timeout=30, env=e, cwd=tmp_path)


@pytest.mark.parametrize("args,env,needle", [
    (["--kafka-addr", "nonsense"], {}, "kafka-addr"),
    (["--http-addr", "127.0.0.1:notaport"], {}, "http-addr"),
    (["--wal-fsync", "sometimes"], {}, "wal-fsync"),
    (["--config", "/no/such/chronik.toml"], {}, "/no/such/chronik.toml"),
    (["--num-partitions", "0"], {}, "num-partitions"),
    ([], {"CHRONIK_NUM_PARTITIONS": "many"}, "num_partitions"),
    (["--advertised-addr", "no-port"], {}, "advertised-addr"),
    (["--kafka-addr", "0.0.0.0:0"], {}, "advertised-addr"),
    (["--kafka-addr", "127.0.0.1:0", "--advertised-addr", "[::]:9092"], {}, "advertised-addr"),
], ids=["kafka-addr", "http-addr", "wal-fsync", "missing-config", "zero-partitions",
        "env-not-a-number", "advertised-addr", "listen-on-all-unadvertised", "advertise-all"])
def test_bad_config_exits_with_a_clear_message(tmp_path, args, env, needle):
    r = run_serve(tmp_path, *args, env=env)
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines, "no error message"
    head = "\n".join(lines[:4])
    assert needle.lower() in head.lower(), f"message does not name {needle!r}:\n{r.stderr}"
    assert "panicked" not in r.stderr, r.stderr


def test_bad_toml_exits_with_a_clear_message(tmp_path):
    conf = tmp_path / "chronik.toml"
    conf.write_text("num_partitions = [oops\n")
    r = run_serve(tmp_path, "--config", str(conf))
    assert r.returncode != 0
    assert "chronik.toml" in r.stderr and "panicked" not in r.stderr, r.stderr


def test_misspelt_config_key_is_refused_with_a_suggestion(tmp_path):
    conf = tmp_path / "chronik.toml"
    conf.write_text('kafka_adr = "127.0.0.1:1"\n')
    r = run_serve(tmp_path, "--config", str(conf))
    assert r.returncode != 0
    assert 'unknown key "kafka_adr"' in r.stderr, r.stderr
    assert 'did you mean "kafka_addr"' in r.stderr, r.stderr


def port_free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def test_serve_with_no_flags(tmp_path):
    if not (port_free(9092) and port_free(9644)):
        pytest.skip("127.0.0.1:9092 or :9644 is in use")
    e = {k: v for k, v in os.environ.items() if not k.startswith("CHRONIK_")}
    proc = subprocess.Popen([chronik_bin(), "serve"], cwd=tmp_path, env=e,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        from helpers import wait_until
        wait_until(lambda: kwire.api_versions_v0(9092, timeout=2).error_code == 0, timeout=30,
                   what="chronik serve on 127.0.0.1:9092")
        assert (tmp_path / "data").is_dir(), "default data dir is ./data"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_second_process_on_a_data_dir_is_refused(broker, tmp_path):
    """Two processes on one data dir would both acknowledge writes at the same offsets and
    one's would be lost: the second is refused at once and names the holder."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("CHRONIK_")}
    r = subprocess.run([chronik_bin(), "serve", "--kafka-addr", "127.0.0.1:0",
                        "--http-addr", "127.0.0.1:0", "--data-dir", str(broker.data_dir),
                        "--bucket", f"file://{broker.bucket_dir}"],
                       capture_output=True, text=True, timeout=30, env=e, cwd=tmp_path)
    assert r.returncode != 0
    assert "in use by another Chronik process" in r.stderr, r.stderr
    assert f"pid {broker.proc.pid}" in r.stderr, r.stderr
    assert "panicked" not in r.stderr, r.stderr
    # The first broker was not disturbed.
    assert partitions_of_autocreated(broker, "still-serving") >= 1
