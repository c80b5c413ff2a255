"""Chronik's standard benchmark suite (see docs/BENCHMARKS.md for what it measures).

Starts a fresh release broker per scenario on 127.0.0.1, drives it with chronik-bench
(librdkafka), samples the broker's CPU seconds and peak RSS from /proc, and writes the
results with the machine and the exact commands into docs/BENCHMARKS.md plus an SVG chart.
Medians of several runs are reported with min and max.
"""
import argparse
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FAST_LEASE = ["--lease-interval-ms", "200", "--lease-timeout-ms", "1000"]


class Broker:
    def __init__(self, bin_dir, extra=()):
        self.dir = Path(tempfile.mkdtemp(prefix="chronik-bench-"))
        self.kafka, self.http = free_port(), free_port()
        self.cmd = [str(bin_dir / "chronik"), "serve", "--kafka-addr", f"127.0.0.1:{self.kafka}",
                    "--http-addr", f"127.0.0.1:{self.http}", "--data-dir", str(self.dir / "data"),
                    "--bucket", f"file://{self.dir}/bucket", *extra]
        self.proc = None

    @property
    def bootstrap(self):
        return f"127.0.0.1:{self.kafka}"

    def start(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHRONIK_")}
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, stdout=open(self.dir / "log", "ab"),
                                     stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = (self.dir / "log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"broker exited with {self.proc.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("broker did not become healthy")

    def cpu_seconds(self):
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def peak_rss_mb(self):
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def metric(self, name):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/metrics", timeout=5) as r:
            text = r.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + " ") or ("{" not in name and line.startswith(name + "{")):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def produce_path(self):
        """Produce requests answered so far, seconds spent on them, WAL fsyncs and their seconds."""
        return (self.metric('chronik_request_duration_seconds_count{api="produce"}'),
                self.metric('chronik_request_duration_seconds_sum{api="produce"}'),
                self.metric("chronik_wal_fsyncs_total"), self.metric("chronik_wal_fsync_seconds_total"))

    def wait_tiered(self, timeout=600):
        """Until the tail is in the bucket and every group's snapshot covers what it applied."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/metrics", timeout=5) as r:
                text = r.read().decode()
            applied, snap, untiered = {}, {}, None
            for line in text.splitlines():
                if line.startswith("chronik_raft_applied_index{"):
                    k, v = line.rsplit(" ", 1)
                    applied[k.split("{")[1]] = v
                elif line.startswith("chronik_raft_snapshot_index{"):
                    k, v = line.rsplit(" ", 1)
                    snap[k.split("{")[1]] = v
                elif line.startswith("chronik_tiering_untiered_bytes "):
                    untiered = float(line.split()[1])
            if untiered == 0 and applied and applied == snap:
                return
            time.sleep(0.1)
        raise RuntimeError("data did not reach the bucket in time")

    def kill_and_wipe(self):
        """Loses the node's disk: kill -9, delete the data dir, wait for its lease to expire."""
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir / "data")
        lease = self.dir / "bucket" / "cluster" / "leases" / "node-1.json"
        while time.time() * 1000 - json.loads(lease.read_text())["heartbeat_unix_ms"] < 1200:
            time.sleep(0.05)

    def disk_mb(self, sub):
        return sum(f.stat().st_size for f in (self.dir / sub).rglob("*") if f.is_file()) / 1e6

    def stop(self, wipe=True):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if wipe:
            shutil.rmtree(self.dir, ignore_errors=True)


def children_cpu_seconds():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def bench(bin_dir, *args):
    """Runs chronik-bench; its JSON result gains `client_cpu_s` (the client's own CPU)."""
    cmd = [str(bin_dir / "chronik-bench"), *args, "--json"]
    cpu0 = children_cpu_seconds()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=900).stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["client_cpu_s"] = children_cpu_seconds() - cpu0
    return result, " ".join(["chronik-bench", *args])


def summary(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def fmt(s, digits=1):
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"


def produce_scenario(bin_dir, runs, count, partitions):
    mb, cpu_gb, client_gb, rss, p99, commands = [], [], [], [], [], []
    req_ms, fsync_ms, fsyncs_per_req = [], [], []
    for i in range(runs):
        b = Broker(bin_dir)
        b.start()
        try:
            path0 = b.produce_path()
            cpu0 = b.cpu_seconds()
            r, cmd = bench(bin_dir, "produce", "--brokers", b.bootstrap, "--topic", f"p{partitions}",
                           "--partitions", str(partitions), "--msg-size", "1024", "--count", str(count),
                           "--acks", "all")
            cpu = b.cpu_seconds() - cpu0
            reqs, req_s, fsyncs, fsync_s = (x - y for x, y in zip(b.produce_path(), path0))
            req_ms.append(1000 * req_s / max(reqs, 1))
            fsync_ms.append(1000 * fsync_s / max(fsyncs, 1))
            fsyncs_per_req.append(fsyncs / max(reqs, 1))
            gb = r["throughput"]["bytes"] / 1e9
            mb.append(r["throughput"]["mb_per_sec"])
            cpu_gb.append(cpu / gb)
            client_gb.append(r["client_cpu_s"] / gb)
            rss.append(b.peak_rss_mb())
            p99.append(r["latency"]["p99_ms"])
            commands.append(cmd.replace(b.bootstrap, "BROKER"))
        finally:
            b.stop()
    mock, mock_gb = [], []
    for _ in range(runs):
        r, mock_cmd = bench(bin_dir, "produce", "--mock", "--topic", f"m{partitions}",
                            "--partitions", str(partitions), "--msg-size", "1024",
                            "--count", str(count), "--acks", "all")
        mock.append(r["throughput"]["mb_per_sec"])
        mock_gb.append(r["client_cpu_s"] / (r["throughput"]["bytes"] / 1e9))
    return {"partitions": partitions, "mb_s": summary(mb), "cpu_s_per_gb": summary(cpu_gb),
            "client_cpu_s_per_gb": summary(client_gb), "mock_cpu_s_per_gb": summary(mock_gb),
            "peak_rss_mb": summary(rss), "mock_mb_s": summary(mock),
            "broker_ms_per_request": summary(req_ms), "fsync_ms": summary(fsync_ms),
            "fsyncs_per_request": summary(fsyncs_per_req),
            "ratio": statistics.median(mb) / statistics.median(mock),
            "commands": [commands[0], mock_cmd]}


def latency_scenario(bin_dir, runs, seconds):
    rate = 20 * 1024  # 20 MiB/s of 1 KiB messages
    res = []
    for _ in range(runs):
        b = Broker(bin_dir)
        b.start()
        try:
            r, cmd = bench(bin_dir, "produce", "--brokers", b.bootstrap, "--topic", "lat",
                           "--msg-size", "1024", "--duration-s", str(seconds), "--rate", str(rate),
                           "--acks", "all", "--linger-ms", "1")
            res.append(r)
        finally:
            b.stop()
    pick = lambda k: summary([r["latency"][k] for r in res])
    return {"p50": pick("p50_ms"), "p99": pick("p99_ms"), "p999": pick("p999_ms"), "max": pick("max_ms"),
            "mb_s": summary([r["throughput"]["mb_per_sec"] for r in res]),
            "command": cmd.replace(b.bootstrap, "BROKER")}


def consume_scenario(bin_dir, runs, count):
    res = []
    for _ in range(runs):
        b = Broker(bin_dir)
        b.start()
        try:
            bench(bin_dir, "produce", "--brokers", b.bootstrap, "--topic", "c", "--partitions", "6",
                  "--msg-size", "1024", "--count", str(count), "--acks", "all")
            r, cmd = bench(bin_dir, "consume", "--brokers", b.bootstrap, "--topic", "c", "--from", "beginning")
            res.append(r["throughput"]["mb_per_sec"])
        finally:
            b.stop()
    return {"mb_s": summary(res), "command": cmd.replace(b.bootstrap, "BROKER")}


def bootstrap_scenario(bin_dir, history_mb):
    """After losing the disk: time from process start to the first acked produce and to the
    first fetch of the oldest data; then a cold catch-up read of the whole history from the
    bucket. Also the local disk used while the history was produced."""
    b = Broker(bin_dir, FAST_LEASE)
    b.start()
    try:
        bench(bin_dir, "produce", "--brokers", b.bootstrap, "--topic", "h", "--msg-size", "1024",
              "--count", str(history_mb * 1000), "--acks", "all")
        b.wait_tiered()
        local_mb = b.disk_mb("data")
        bucket_mb = b.disk_mb("bucket")
        b.kill_and_wipe()
        t0 = time.monotonic()
        b.start()
        bench(bin_dir, "produce", "--brokers", b.bootstrap, "--topic", "h", "--msg-size", "1024",
              "--count", "1", "--acks", "all")
        to_produce = time.monotonic() - t0
        bench(bin_dir, "consume", "--brokers", b.bootstrap, "--topic", "h", "--from", "beginning",
              "--count", "1")
        to_fetch_old = time.monotonic() - t0
        # A fresh process again, so the read cache is empty: a cold catch-up from the bucket.
        b.stop(wipe=False)
        b.start()
        cold, cmd = bench(bin_dir, "consume", "--brokers", b.bootstrap, "--topic", "h", "--from", "beginning")
        return {"history_mb": history_mb, "to_first_produce_s": to_produce,
                "to_first_old_fetch_s": to_fetch_old, "local_data_mb": local_mb, "bucket_mb": bucket_mb,
                "cold_catchup_mb_s": cold["throughput"]["mb_per_sec"],
                "cold_catchup_messages": cold["throughput"]["messages"],
                "peak_rss_mb": b.peak_rss_mb(), "command": cmd.replace(b.bootstrap, "BROKER")}
    finally:
        b.stop()


def idle_scenario(bin_dir, partitions, seconds):
    b = Broker(bin_dir, ["--num-partitions", str(max(partitions, 1))])
    b.start()
    try:
        if partitions:
            bench(bin_dir, "produce", "--brokers", b.bootstrap, "--topic", "idle",
                  "--partitions", str(partitions), "--msg-size", "10", "--count", "1")
        time.sleep(2)
        cpu0 = b.cpu_seconds()
        time.sleep(seconds)
        return (b.cpu_seconds() - cpu0) / seconds * 100  # % of one core
    finally:
        b.stop()


def svg_chart(rows):
    """A bar chart of produce MB/s: Chronik vs librdkafka's mock cluster."""
    w, h, pad, bar = 520, 240, 50, 50
    top = max(max(r["mb_s"]["max"], r["mock_mb_s"]["max"]) for r in rows) * 1.15
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
             f'<text x="{w/2}" y="18" text-anchor="middle">Produce, 1 KiB, acks=all (MB/s, median)</text>']
    x = pad
    for r in rows:
        for label, s, color in (("chronik", r["mb_s"], "#3b7dd8"), ("mock", r["mock_mb_s"], "#999")):
            bh = (h - 2 * pad) * s["median"] / top
            parts.append(f'<rect x="{x}" y="{h-pad-bh:.1f}" width="{bar}" height="{bh:.1f}" fill="{color}"/>')
            parts.append(f'<text x="{x+bar/2}" y="{h-pad-bh-4:.1f}" text-anchor="middle">{s["median"]:.0f}</text>')
            parts.append(f'<text x="{x+bar/2}" y="{h-pad+14}" text-anchor="middle">{label}</text>')
            x += bar + 10
        parts.append(f'<text x="{x-bar-15}" y="{h-pad+30}" text-anchor="middle">{r["partitions"]} partition(s)</text>')
        x += 40
    parts.append("</svg>")
    return "\n".join(parts)


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    mem = next((l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")), "0")
    return f"{os.cpu_count()} cores ({cpu}), {int(mem) // 1024 // 1024} GiB RAM, {platform.system()} {platform.release()}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True, type=Path)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--bootstrap-only", type=int, metavar="MB",
                    help="only measure bootstrap after a wipe with MB of history, and add it "
                         "to docs/benchmarks.json")
    ap.add_argument("--idle-only", action="store_true",
                    help="only measure the idle cost, and replace it in docs/benchmarks.json")
    a = ap.parse_args()
    if a.idle_only:
        path = ROOT / "docs" / "benchmarks.json"
        result = json.loads(path.read_text())
        result["idle_cpu_pct"] = {p: idle_scenario(a.bin_dir, p, 10) for p in (1, 100, 300)}
        result["idle_when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        path.write_text(json.dumps(result, indent=2) + "\n")
        write_markdown(result)
        print(json.dumps(result["idle_cpu_pct"], indent=2))
        return
    if a.bootstrap_only:
        path = ROOT / "docs" / "benchmarks.json"
        result = json.loads(path.read_text())
        result["bootstrap"] = [x for x in result["bootstrap"] if x["history_mb"] != a.bootstrap_only]
        result["bootstrap"].append(bootstrap_scenario(a.bin_dir, a.bootstrap_only))
        result["bootstrap"].sort(key=lambda x: x["history_mb"])
        path.write_text(json.dumps(result, indent=2) + "\n")
        write_markdown(result)
        print(json.dumps(result["bootstrap"], indent=2))
        return
    runs, count, secs = (1, 50_000, 3) if a.quick else (3, 1_000_000, 15)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    produce = [produce_scenario(a.bin_dir, runs, count, p) for p in (1, 6)]
    latency = latency_scenario(a.bin_dir, runs, secs)
    consume = consume_scenario(a.bin_dir, runs, count)
    bootstrap = [bootstrap_scenario(a.bin_dir, mb) for mb in ((10, 50) if a.quick else (100, 2000))]
    idle = {p: idle_scenario(a.bin_dir, p, 3 if a.quick else 10) for p in (1, 100, 300)}
    result = {"when": started, "machine": machine(), "runs": runs, "produce": produce, "latency": latency,
              "consume": consume, "bootstrap": bootstrap, "idle_cpu_pct": idle}
    previous = ROOT / "docs" / "benchmarks.json"
    if previous.exists() and "rpo" in (old := json.loads(previous.read_text())):
        result["rpo"] = old["rpo"]  # measured separately, by bench/rpo.py --record
    (ROOT / "docs").mkdir(exist_ok=True)
    (ROOT / "docs" / "benchmarks.json").write_text(json.dumps(result, indent=2) + "\n")
    (ROOT / "docs" / "benchmarks-produce.svg").write_text(svg_chart(produce) + "\n")
    write_markdown(result)
    print(json.dumps(result, indent=2))


def write_markdown(r):
    target = lambda ok: "met" if ok else "**not met**"
    lines = [
        "# Benchmarks",
        "",
        f"Measured {r['when']} on {r['machine']}, with `bench/run.sh` (release builds; "
        f"medians of {r['runs']} runs, min–max in parentheses). The broker and the client share the "
        "machine's cores. Raw figures: [`benchmarks.json`](benchmarks.json).",
        "",
        "![produce throughput](benchmarks-produce.svg)",
        "",
        "## 1. Produce throughput (1 KiB messages, acks=all, fsync every group commit)",
        "",
        "| partitions | Chronik MB/s | librdkafka mock MB/s | ratio (target ≥ 0.90) | broker CPU-s/GB (target ≤ 1.0) | peak RSS MB (target ≤ 200) |",
        "|---|---|---|---|---|---|",
    ]
    for p in r["produce"]:
        lines.append(
            f"| {p['partitions']} | {fmt(p['mb_s'])} | {fmt(p['mock_mb_s'])} | {p['ratio']:.2f} ({target(p['ratio'] >= 0.9)}) "
            f"| {fmt(p['cpu_s_per_gb'], 2)} ({target(p['cpu_s_per_gb']['median'] <= 1.0)}) "
            f"| {fmt(p['peak_rss_mb'])} ({target(p['peak_rss_mb']['max'] <= 200)}) |")
    lines += ["", "Commands: " + "; ".join(f"`{c}`" for c in r["produce"][0]["commands"] + r["produce"][1]["commands"][:1]), ""]
    if all("broker_ms_per_request" in p for p in r["produce"]):
        lines += [
            "Where a produce request's time goes, and what the client spends:",
            "",
            "| partitions | broker time per produce request, ms | WAL fsync, ms | fsyncs per request "
            "| client CPU-s/GB against Chronik | mock process CPU-s/GB (client + in-process mock) |",
            "|---|---|---|---|---|---|",
        ]
        for p in r["produce"]:
            lines.append(
                f"| {p['partitions']} | {fmt(p['broker_ms_per_request'], 2)} | {fmt(p['fsync_ms'], 2)} "
                f"| {fmt(p['fsyncs_per_request'], 2)} | {fmt(p['client_cpu_s_per_gb'], 2)} "
                f"| {fmt(p['mock_cpu_s_per_gb'], 2)} |")
        lines += [
            "",
            "The broker time runs from a request's last byte read to its response being ready. "
            "The mock gets a topic with the same partition count as Chronik's. An idempotent "
            "librdkafka producer has one produce request (about 1 MB here) in flight per partition "
            "at a time, so with one partition, throughput is one request per client time plus "
            "round trip; while it waits, its I/O thread polls without sleeping, so the client's "
            "CPU per GB grows with the broker's latency. See the analysis below.",
            "",
        ]
    l = r["latency"]
    lines += [
        "## 2. Produce latency at a fixed 20 MiB/s (acks=all)",
        "",
        "| p50 ms | p99 ms | p99.9 ms | max ms | achieved MB/s |",
        "|---|---|---|---|---|",
        f"| {fmt(l['p50'], 2)} | {fmt(l['p99'], 2)} | {fmt(l['p999'], 2)} | {fmt(l['max'], 2)} | {fmt(l['mb_s'])} |",
        "",
        f"Command: `{l['command']}`",
        "",
        "## 3. Consume",
        "",
        f"Tail catch-up from the beginning of a just-written 6-partition topic: "
        f"{fmt(r['consume']['mb_s'])} MB/s (command: `{r['consume']['command']}`).",
        "",
        "Cold catch-up from the bucket (a fresh process after a wipe of the data directory, so "
        "every read misses the cache and goes to the bucket, here a local-directory bucket):",
        "",
        "| history | MB/s | messages |",
        "|---|---|---|",
    ]
    for x in r["bootstrap"]:
        lines.append(f"| {x['history_mb']} MB | {x['cold_catchup_mb_s']:.1f} | {x['cold_catchup_messages']} |")
    lines += [
        "",
        "## 4. Bootstrap after losing the disk (data dir wiped, restore from the bucket)",
        "",
        "| history | to first acked produce (s) | to first fetch of the oldest data (s) | local data dir while producing (MB) | bucket (MB) | peak RSS (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for x in r["bootstrap"]:
        lines.append(f"| {x['history_mb']} MB | {x['to_first_produce_s']:.2f} | {x['to_first_old_fetch_s']:.2f} "
                     f"| {x['local_data_mb']:.1f} | {x['bucket_mb']:.1f} | {x['peak_rss_mb']:.0f} |")
    lines += [
        "",
        "The node is started after the previous owner's lease expired (the suite waits for it), "
        "so these are pure restore times; a real restart after a wipe additionally waits up to "
        "`lease_timeout_ms` for the dead owner's lease.",
        "",
    ]
    if "rpo" in r:
        x = r["rpo"]
        lines += [
            "### Recovery point (RPO) after losing the disk",
            "",
            f"`bench/rpo.py`: produce {x['rate_msgs_per_s']} msgs/s (1 KB, acks=all, idempotent), "
            f"`kill -9` the broker and wipe its data dir mid-stream, restore from the bucket. "
            f"Acked before the crash: {x['acked_before_crash']}; restored: {x['restored']}; "
            f"acked but lost: {x['acked_lost']}; **RPO: {x['rpo_seconds']} s**, the worst of "
            f"{len(x.get('runs', [1]))} runs with a random crash phase (all: {x.get('runs')}) "
            f"(with {x['settings']}; the bound is one tiering/snapshot interval plus the time a "
            "step takes).",
            "",
        ]
    lines += [
        "## 5. Idle cost",
        "",
    ]
    if r.get("idle_when"):
        lines += [f"Measured {r['idle_when']}, after the rest of this page, with "
                  "`python3 bench/suite.py --bin-dir target/release --idle-only` (one run of 10 s "
                  "per row).", ""]
    lines += [
        "| partitions | broker CPU, % of one core | Raft messages/s |",
        "|---|---|---|",
    ]
    for p, pct in r["idle_cpu_pct"].items():
        lines.append(f"| {p} | {pct:.1f} | 0 (single node: no peers) |")
    lines += ["", "A 3-node cluster's idle cost (CPU and Raft messages per second with 1, 100 and "
              "300 partitions) and the time a new node takes to serve a partition are in "
              "[`BENCHMARKS_CLUSTER.md`](BENCHMARKS_CLUSTER.md) (`bench/cluster.py`).", ""]
    analysis = ROOT / "bench" / "analysis.md"
    if analysis.exists():
        lines += [analysis.read_text()]
    (ROOT / "docs" / "BENCHMARKS.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
