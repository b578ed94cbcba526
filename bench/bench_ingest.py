"""Collector ingest on loopback: alerts/s stored durably, against raw database writes.

A real ``mamori collect`` process (SQLite with synchronous=FULL, or PostgreSQL with
fsync on) and simulated sensors (bench/ingest_sim.py: real CURVE links, the real wire
protocol, no journal) sending as fast as the collector acknowledges. An alert counts
when the collector acknowledged it, which it does only after the batch committed.

Figures, per engine:

* ``collector``: alerts acknowledged per second of wall time, first send to last ack;
* ``per core``: alerts per second of the collector process's own CPU time (user +
  system), the figure that does not depend on what else the machine runs;
* ``reference``: the same rows written by raw ``sqlite3`` ``executemany`` (same
  pragmas) or raw psycopg ``COPY`` into a table of the same shape, in batches of the
  size the collector commits at full load, one commit per batch, measured in this run,
  per second of wall time and per second of this process's CPU time;
* ``ratio``: collector / reference, per core and wall (below 1: what the collector's
  decoding, validation, acks, publishing and bookkeeping cost on top of the bare write;
  the PostgreSQL server's own CPU is in neither per-core figure);
* ``PostgreSQL server``: the server's own CPU (postmaster and all its processes) over
  the run, in total and per alert: the part of a round the collector waits for, which
  does not depend on what else the machine runs either.

``--rate N`` switches to the latency run: the sensors send N alerts/s in aggregate,
each stamped with its send time, and a subscriber on the collector's PUB socket takes
its receive time: p50 and p99 of sensor alert to subscriber, and, as references, the
same for the bare link (the collector's receive time minus the send time, stored) and
for one bare durable commit of a round's rows on the same engine and disk; and the
CPU per alert of the collector and of the PostgreSQL server.

    .venv/bin/python bench/bench_ingest.py [--engine sqlite|postgres|both]
        [--sensors 20] [--alerts 10000] [--procs 1] [--rate 0]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

import zmq  # noqa: E402

from bench.ingest_sim import frame  # noqa: E402
from mamori.parsers.wire import decode  # noqa: E402
from mamori.sensor.collector.server import _stored  # noqa: E402
from mamori.sensor.collector.storage import (  # noqa: E402
    SqliteStorage,
    message_rows,
    open_storage,
)
from mamori.sensor.forwarding.keys import generate  # noqa: E402
from tests.peers.postgres import pg_bin, postgres_cluster  # noqa: E402

BATCH = 1000  # about what the collector commits per round at full load (25 ms of reading)


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, in clock ticks


def server_cpu(dsn: str) -> float:
    """CPU seconds so far of the PostgreSQL server behind ``dsn`` (on this machine): the
    postmaster and every process it runs (backends, WAL writer, checkpointer). The
    collector waits for the server inside each round, so this is part of what a round
    costs, and it shares the cores with the collector and the sensors."""
    import psycopg

    with psycopg.connect(dsn) as conn:  # its backend's parent, read while it lives
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        postmaster = _ppid(int(row[0]))
    total = cpu_seconds(postmaster)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if _ppid(int(stat.parent.name)) == postmaster:
                total += cpu_seconds(int(stat.parent.name))
        except (OSError, ValueError):  # gone meanwhile
            continue
    return total


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


class Site:
    """Keys, a collector config and the simulator configs in a temporary directory."""

    def __init__(self, tmp: Path, sensors: int, dsn: str, publish: str,
                 profile: str = "") -> None:
        self.tmp = tmp
        self.profile = ["-m", "cProfile", "-o", profile] if profile else []
        self.endpoint = free_endpoint()
        self.publish = publish
        keys = tmp / "keys"
        generate("collector", keys)
        self.secrets = []
        for i in range(sensors):
            generate(f"s{i}", keys / "sensors")
            self.secrets.append((keys / "sensors" / f"s{i}.secret").read_text().split()[-1])
        self.server_key = (keys / "collector.pub").read_text().split()[-1]
        self.conf = tmp / "collector.toml"
        dsn_line = f'dsn = "{dsn}"\n' if dsn else ""
        self.conf.write_text(f'[sensor]\nstate_dir = "{tmp}"\n[collect]\n'
                             f'listen = ["{self.endpoint}"]\npublish = "{publish}"\n{dsn_line}')

    @contextmanager
    def collector(self) -> Iterator[subprocess.Popen[bytes]]:
        proc = subprocess.Popen([sys.executable, *self.profile,
                                 "-m", "mamori.sensor.forwarding.cli",
                                 "collect",
                                 "--config", str(self.conf)], cwd=PROJECT,
                                stderr=subprocess.PIPE)
        assert proc.stderr is not None
        proc.stderr.readline()  # "listening on ..."
        try:
            yield proc
        finally:
            proc.terminate()
            proc.wait(timeout=60)

    def simulate(self, procs: int, alerts: int, rate: float) -> list[dict[str, Any]]:
        runs = []
        for p in range(procs):
            conf = self.tmp / f"sim{p}.json"
            conf.write_text(json.dumps({
                "endpoint": self.endpoint, "server_key": self.server_key,
                "secrets": self.secrets[p::procs], "alerts": alerts, "rate": rate / procs,
                "window": 2000, "timeout": 600}))
            runs.append(subprocess.Popen([sys.executable, str(PROJECT / "bench" /
                                                              "ingest_sim.py"), str(conf)],
                                         stdout=subprocess.PIPE))
        return [json.loads(r.communicate(timeout=660)[0]) for r in runs]


def batches(alerts: int) -> list[list[Any]]:
    """The rows the collector writes for ``alerts`` alerts, in commit-sized batches."""
    now = time.time()
    stored = [_stored(f"sensor{i % 20:02d}", decode(frame(i + 1, now)), now)
              for i in range(alerts)]
    return [list(message_rows(stored[i:i + BATCH])) for i in range(0, alerts, BATCH)]


def reference_sqlite(tmp: Path, alerts: int) -> tuple[float, float]:
    conn = sqlite3.connect(str(tmp / "reference.db"))
    conn.execute(f"PRAGMA page_size={SqliteStorage.PAGE_SIZE}")  # the collector's pragmas
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE messages (sensor TEXT, epoch INTEGER, seq INTEGER, kind "
                 "INTEGER, ts REAL, received REAL, body TEXT, PRIMARY KEY (sensor, epoch, seq))")
    conn.execute("CREATE TABLE alerts (sensor TEXT, akey TEXT, epoch INTEGER, seq INTEGER, "
                 "count INTEGER, last_ts REAL, doc TEXT, PRIMARY KEY (sensor, akey))")
    work = batches(alerts)
    start, cpu = time.perf_counter(), time.process_time()
    for rows, alert_rows in work:
        conn.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        conn.executemany("INSERT INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?)", alert_rows)
        conn.commit()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    conn.close()
    return alerts / elapsed, alerts / cpu


def reference_postgres(dsn: str, alerts: int) -> tuple[float, float]:
    import psycopg

    conn = psycopg.connect(dsn)
    for table in ("messages", "alerts"):
        conn.execute(f"CREATE TABLE ref_{table} (LIKE {table})")
    conn.execute("ALTER TABLE ref_messages ADD PRIMARY KEY (sensor, epoch, seq)")
    conn.execute("ALTER TABLE ref_alerts ADD PRIMARY KEY (sensor, akey)")
    conn.commit()
    work = batches(alerts)
    start, cpu = time.perf_counter(), time.process_time()
    cur = conn.cursor()
    for rows, alert_rows in work:
        for table, data in (("ref_messages", rows), ("ref_alerts", alert_rows)):
            with cur.copy(f"COPY {table} FROM STDIN") as copy:
                for row in data:
                    copy.write_row(row)
        conn.commit()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    conn.close()
    return alerts / elapsed, alerts / cpu


def commit_latencies(engine: str, tmp: Path, dsn: str, rate: float,
                     rounds: int = 400) -> list[float]:
    """Seconds each bare durable commit of one round's rows takes (the rows the collector
    reads in ``ROUND_SECONDS`` at ``rate``), measured in this run: the floor under the
    collector's share of the latency, set by the disk's fsync and, for PostgreSQL, the
    server on the same cores. Its p99 is what a p99 target has to be read against."""
    from mamori.sensor.collector.server import ROUND_SECONDS

    per_round = max(1, int(rate * ROUND_SECONDS))
    rows = batches(per_round)[0][0]
    out: list[float] = []
    if engine == "sqlite":
        conn = sqlite3.connect(str(tmp / "commit-latency.db"))
        conn.execute(f"PRAGMA page_size={SqliteStorage.PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE m (sensor TEXT, epoch INTEGER, seq INTEGER, kind INTEGER,"
                     " ts REAL, received REAL, body TEXT)")
        for _ in range(rounds):
            start = time.perf_counter()
            conn.executemany("INSERT INTO m VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            conn.commit()
            out.append(time.perf_counter() - start)
        conn.close()
        return out
    import psycopg

    conn_pg = psycopg.connect(dsn)
    conn_pg.execute("CREATE TABLE IF NOT EXISTS lat_messages (sensor TEXT, epoch BIGINT, "
                    "seq BIGINT, kind BIGINT, ts DOUBLE PRECISION, received DOUBLE PRECISION,"
                    " body TEXT)")
    conn_pg.commit()
    cur = conn_pg.cursor()
    for _ in range(rounds):
        start = time.perf_counter()
        with cur.copy("COPY lat_messages FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        conn_pg.commit()
        out.append(time.perf_counter() - start)
    conn_pg.close()
    return out


class Subscriber(threading.Thread):
    """Receive times of every alert on the collector's PUB socket (parsed afterwards)."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.rcvhwm = 0
        self.sock.subscribe(b"alert")
        self.sock.connect(endpoint)
        self.seen: list[tuple[float, bytes]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            if self.sock.poll(100):
                while True:
                    try:
                        _, data = self.sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self.seen.append((time.time(), data))

    def latencies(self, received: dict[tuple[str, int, int], float]) -> tuple[
            list[float], list[float]]:
        """Sensor send -> here, and collector receive -> here (the collector's share:
        the rest of its round, the commit, the publish)."""
        total, inside = [], []
        for now, data in self.seen:
            doc = json.loads(data)
            total.append(now - doc["sent_ts"])
            inside.append(now - received[(doc["sensor_key"], doc["epoch"], doc["seq"])])
        return total, inside


def quantiles(values: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(values, n=100)
    return q[49] * 1000, q[98] * 1000


def run_engine(engine: str, args: argparse.Namespace, dsn: str) -> bool:
    tmp = Path(tempfile.mkdtemp(prefix=f"mamori-ingest-{engine}-"))
    try:
        return measure(engine, args, dsn, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def measure(engine: str, args: argparse.Namespace, dsn: str, tmp: Path) -> bool:
    publish = free_endpoint()  # on, as by default: building and sending is part of ingest
    site = Site(tmp, args.sensors, dsn, publish,
                f"{args.profile}.{engine}" if args.profile else "")
    total: int = args.sensors * args.alerts
    sub = None
    with site.collector() as proc:
        if args.rate:  # the latency run subscribes; the throughput run only publishes
            sub = Subscriber(publish)
            sub.start()
            time.sleep(0.5)  # the SUB has joined before the first alert
        cpu0, server0 = cpu_seconds(proc.pid), server_cpu(dsn) if dsn else 0.0
        results = site.simulate(args.procs, args.alerts, args.rate)
        cpu = cpu_seconds(proc.pid) - cpu0
        server = server_cpu(dsn) - server0 if dsn else 0.0
    acked: int = sum(r["acked"] for r in results)
    wall = max(r["last_ack"] for r in results) - min(r["first_send"] for r in results)
    ok = acked == total
    if sub is not None:
        time.sleep(0.5)
        sub.stop.set()
        sub.join()
        store = open_storage(tmp / "collector" / "collector.db", dsn)
        received = {(k, e, s): r for k, e, s, r in store.received_times()}
        l50, l99 = quantiles(store.latencies())
        store.close()
        seen, inside = sub.latencies(received)
        p50, p99 = quantiles(seen)
        i50, i99 = quantiles(inside)
        print(f"{engine}: {args.rate:.0f} alerts/s aggregate from {args.sensors} sensors, "
              f"acked {acked}/{total}, seen by the subscriber {len(sub.seen)}")
        print(f"  sensor alert -> subscriber: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
        print(f"  of which collector receive -> subscriber: p50 {i50:.1f} ms, "
              f"p99 {i99:.1f} ms")
        print(f"  collector {cpu / acked * 1e6:.0f} us CPU per alert" + (
            f", PostgreSQL server {server / acked * 1e6:.0f} us" if dsn else ""))
        print(f"  reference, sensor alert -> collector receive: p50 {l50:.1f} ms, "
              f"p99 {l99:.1f} ms; ratio p99 {p99 / l99:.2f}")
        c50, c99 = quantiles(commit_latencies(engine, tmp, dsn, args.rate))
        print(f"  reference, one bare durable commit of a round's rows: p50 {c50:.1f} ms, "
              f"p99 {c99:.1f} ms; collector's share p99 / commit p99 {i99 / c99:.2f}")
        return ok and len(sub.seen) == total
    ref_wall, ref_core = (reference_sqlite(tmp, min(total, 100_000)) if engine == "sqlite"
                          else reference_postgres(dsn, min(total, 100_000)))
    per_core = acked / cpu if cpu else 0.0
    print(f"{engine}: {args.sensors} sensors x {args.alerts} alerts, acked {acked}/{total}")
    print(f"  collector: {acked / wall:,.0f} alerts/s wall, {per_core:,.0f} alerts/s per "
          f"core ({cpu:.1f} s CPU)" + (f"; PostgreSQL server {server:.1f} s CPU, "
                                       f"{server / acked * 1e6:.0f} us per alert" if dsn else ""))
    print(f"  reference ({'sqlite3 executemany' if engine == 'sqlite' else 'psycopg COPY'}):"
          f" {ref_wall:,.0f} rows/s wall, {ref_core:,.0f} rows/s per core; ratio per core "
          f"{per_core / ref_core:.2f}, wall {acked / wall / ref_wall:.2f}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--sensors", type=int, default=20)
    parser.add_argument("--alerts", type=int, default=10_000, help="per sensor")
    parser.add_argument("--procs", type=int, default=1, help="simulator processes")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="aggregate alerts/s for the latency run (0: throughput run)")
    parser.add_argument("--profile", metavar="FILE", default="",
                        help="run the collector under cProfile, stats to FILE.ENGINE")
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"({os.cpu_count()} cores)")
    ok = True
    if args.engine in ("sqlite", "both"):
        ok &= run_engine("sqlite", args, "")
    if args.engine in ("postgres", "both"):
        bindir = pg_bin()
        if bindir is None:
            print("postgres: server binaries not installed (Debian package postgresql)")
            return 1
        with postgres_cluster(bindir, fsync=True) as dsn:
            ok &= run_engine("postgres", args, dsn)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
