"""Scale benchmark: thousands of simulated sensors held by one collector process.

For each sensor count (default 1000, 2000, 5000, 10000) a fresh collector (``mamori
collect``, SQLite store) and ``bench/sim_sensors.py`` workers: the sensors connect at
``--connect-rate`` per second (0: all at once, the storm after a collector restart;
real CURVE handshakes with distinct keys, ZAP checked against an allow-list of that
many files), heartbeats every 10 s, sends an alert every ``--alert-interval`` s, and
leaves out ``--drop`` of first sends so that gaps must be found and repaired. After
``--duration`` s of that the simulator drains (everything acknowledged, a last
heartbeat) and the bench checks the store: every sensor's stream stored whole (seq 1..
last, nothing lost), and marked complete.

Sampled from /proc every 0.5 s for the collector process: CPU (share of one core),
peak RSS and peak open file descriptors. Handshake time is per sensor, from connect()
until its socket takes the first message (ZMQ_IMMEDIATE: after CURVE and ZAP); first
ack adds the storage commit and the way back. The ratio column is CPU-seconds per
1000 sensors against the smallest run of the same invocation (the reference).

    .venv/bin/python bench/bench_scale.py [--counts 1000,2000,5000,10000] [--duration 40]
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from bench import sim_sensors  # noqa: E402
from mamori.sensor.collector.storage import SqliteStorage  # noqa: E402
from mamori.sensor.forwarding.keys import generate  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


class Sampler(threading.Thread):
    """CPU, RSS and open descriptors of one process, every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.stop = threading.Event()
        self.peak_rss = self.peak_fds = 0
        self.samples: list[tuple[float, float]] = []  # (wall, cpu seconds)

    def _cpu(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.samples.append((time.monotonic(), self._cpu()))
                rss = int(Path(f"/proc/{self.pid}/statm").read_text().split()[1]) * PAGE
                fds = len(os.listdir(f"/proc/{self.pid}/fd"))
            except (OSError, IndexError, ValueError):
                return
            self.peak_rss, self.peak_fds = max(self.peak_rss, rss), max(self.peak_fds, fds)
            self.stop.wait(self.interval)

    def cpu_seconds(self) -> float:
        return self.samples[-1][1] - self.samples[0][1] if len(self.samples) > 1 else 0.0

    def peak_cpu(self, window: float = 5.0) -> float:
        """Highest share of one core over any ``window`` s."""
        best, j = 0.0, 0
        for i, (t, c) in enumerate(self.samples):
            while self.samples[j][0] < t - window:
                j += 1
            if i > j and t > self.samples[j][0]:
                best = max(best, (c - self.samples[j][1]) / (t - self.samples[j][0]))
        return best


def one_run(n: int, args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix=f"mamori-scale-{n}-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    coll = tmp / "collector"
    generate("collector", coll / "keys")
    secrets = tmp / "secrets.txt"
    sim_sensors.make_keys(n, coll / "keys" / "sensors", secrets)
    conf = tmp / "collector.toml"
    conf.write_text(f'[sensor]\nstate_dir = "{coll}"\n[collect]\nlisten = ["{endpoint}"]\n'
                    'publish = ""\nreplay_interval = 1.0\n')
    proc = subprocess.Popen([sys.executable, "-m", "mamori.sensor.forwarding.cli", "collect",
                             "--config", str(conf)], cwd=PROJECT, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    if b"listening" not in line:
        raise RuntimeError(line.decode(errors="replace"))
    sampler = Sampler(proc.pid)
    sampler.start()
    started = time.monotonic()
    load = os.getloadavg()[0]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    report = sim_sensors.run(endpoint, coll / "keys" / "collector.pub", secrets, n,
                             max(2, -(-n // 2500)),
                             args.duration + (n / args.connect_rate if args.connect_rate else 0),
                             heartbeat=10.0,
                             alert_interval=args.alert_interval, drop=args.drop,
                             ack_timeout=5.0, drain=args.drain, seed=n,
                             connect_rate=args.connect_rate)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the simulator's workers
    sim_cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    time.sleep(1.0)
    sampler.stop.set()
    sampler.join()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    st = SqliteStorage(coll / "collector" / "collector.db")
    try:
        names = {r[1]: r[0] for r in st._all("SELECT sensor, name FROM sensors")}
        stored = {r[0]: (int(r[1]), int(r[2]), int(r[3])) for r in st._all(
            "SELECT sensor, COUNT(*), MIN(seq), MAX(seq) FROM messages GROUP BY sensor")}
        contig = {r[0]: int(r[1]) for r in st._all("SELECT sensor, contig FROM streams")}
        lost = int(st._all("SELECT COUNT(*) FROM lost")[0][0])
        status = {r.name: r for r in st.status()}
        failed = sum(n for (who, why), n in st.rejects().items() if why == "handshake_failed")
    finally:
        st.close()
    whole = marked = 0
    for name, last in report["last_seq"].items():
        key = names.get(name, "")
        if stored.get(key) == (last, 1, last) and contig.get(key) == last:
            whole += 1
        row = status.get(name)
        if row is not None and row.complete_ts is not None and row.outstanding == 0:
            marked += 1
    return {"sensors": n, "connected": report["connected"], "whole": whole,
            "marked_complete": marked, "lost": lost, "messages": report["messages"],
            "dropped": report["dropped"], "replays": report["replays"],
            "resent": report["resent"], "handshake": report["handshake"],
            "first_ack": report["first_ack"], "cpu_s": round(sampler.cpu_seconds(), 2),
            "cpu_avg": round(sampler.cpu_seconds() / wall, 3),
            "cpu_peak5s": round(sampler.peak_cpu(), 3),
            "rss_mb": round(sampler.peak_rss / 2**20, 1), "fds": sampler.peak_fds,
            "wall_s": round(wall, 1), "sim_cpu_s": round(sim_cpu, 1),
            "load": [round(load, 1), round(os.getloadavg()[0], 1)],
            "handshake_failed": failed}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--counts", default="1000,2000,5000,10000")
    p.add_argument("--duration", type=float, default=30.0,
                   help="seconds of heartbeats and alerts after the last sensor connected")
    p.add_argument("--alert-interval", type=float, default=30.0)
    p.add_argument("--drop", type=float, default=0.002)
    p.add_argument("--drain", type=float, default=120.0)
    p.add_argument("--connect-rate", type=float, default=250.0,
                   help="new sensor connections per second, all workers; 0 = all at once")
    args = p.parse_args()
    counts = [int(x) for x in args.counts.split(",")]
    need = max(counts) + 512
    if sim_sensors.raise_fd_limit(need) < need:
        print(f"ulimit -n is below {need}: raise it for this bench", file=sys.stderr)
        return 2
    results = []
    for n in counts:
        r = one_run(n, args)
        results.append(r)
        print(r, file=sys.stderr, flush=True)
    ref = results[0]
    ref_cost = ref["cpu_s"] / ref["sensors"] * 1000 or 1e-9
    print(f"{'sensors':>8} {'whole':>6} {'done':>6} {'msgs':>7} {'gaps':>5} {'hs p50':>7} "
          f"{'hs p99':>7} {'ack p99':>8} {'cpu avg':>8} {'cpu pk':>7} {'rss MB':>7} "
          f"{'fds':>6} {'cpu/1k':>7} {'ratio':>6} {'sim cpu':>8} {'hs fail':>7} {'load':>9}")
    for r in results:
        cost = r["cpu_s"] / r["sensors"] * 1000
        print(f"{r['sensors']:>8} {r['whole']:>6} {r['marked_complete']:>6} "
              f"{r['messages']:>7} {r['dropped']:>5} {r['handshake']['p50']:>7} "
              f"{r['handshake']['p99']:>7} {r['first_ack']['p99']:>8} {r['cpu_avg']:>8} "
              f"{r['cpu_peak5s']:>7} {r['rss_mb']:>7} {r['fds']:>6} {cost:>7.2f} "
              f"{cost / ref_cost:>6.2f} {r['sim_cpu_s']:>8} {r['handshake_failed']:>7} "
              f"{r['load'][0]:>4}-{r['load'][1]:<4}")
    return 0 if all(r["whole"] == r["sensors"] == r["marked_complete"] for r in results) \
        else 1


if __name__ == "__main__":
    sys.exit(main())
