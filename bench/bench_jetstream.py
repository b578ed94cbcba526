"""Sensor alert to subscriber: JetStream against the local PUB socket, in the same run.

Real processes on loopback: nats-server (one node, or a cluster with --nodes 3 and
stream replicas 3), one ``mamori collect`` with both its PUB socket and JetStream
publishing on, and SENSORS sensor processes forwarding over CURVE at an aggregate RATE
(0 = as fast as they can). Two subscribers in this process see the same alerts: a ZeroMQ
SUB on the PUB socket and a JetStream pull consumer (the way ``mamori subscribe``
reads). Latency is the receive time minus the alert's timestamp taken by the sensor when
it raised it (one host, one clock), so it spans journal, CURVE link, the collector's
commit and, for JetStream, the publisher's read of storage, the stream's ack and the
consumer's delivery. Throughput is alerts received per second from the first alert
raised to the last one received. The ratios are JetStream / PUB.

``--catch-up`` measures the publisher alone: NATS is down while the sensors send, the
collector stores everything (its ingest rate is the reference), then NATS starts and the
publisher empties its backlog from storage; the ratio is catch-up rate / ingest rate
(above 1: an outage is caught up faster than it built up).

    .venv/bin/python bench/bench_jetstream.py [--sensors 4] [--alerts 5000] [--rate 2000]
                                              [--nodes 1|3] [--catch-up]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

import zmq  # noqa: E402

from tests.peers.nats_cluster import USERS, NatsCluster  # noqa: E402
from tests.ports import free_ports  # noqa: E402
from tests.sensor.test_collector import Site  # noqa: E402

SENSOR = """
import sys, time
from mamori.sensor import config as cfg
from mamori.parsers.alerts import Alert, Severity
from mamori.sensor.forwarding.forwarder import Forwarder
fw = Forwarder(cfg.load(sys.argv[1])).start()
n, interval = int(sys.argv[2]), float(sys.argv[3])
start = time.monotonic()
for i in range(1, n + 1):
    if interval:
        delay = start + i * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    t = time.time()
    fw.submit_alert(Alert("mamori.modbus.write_unknown_master", "M3", Severity.HIGH,
                          ("T0855",), "Modbus write from a new master", "modbus", t, t,
                          src="10.20.1.15", sport=50412, dst="10.20.2.7", dport=502, unit=1,
                          evidence={"fc": 6, "addr": 40001}, id=i))
fw.close(120)
"""


class Path_:
    """One subscriber's observations: (alert ts, receive time) per alert."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.samples: list[tuple[float, float]] = []
        self.keys: set[tuple[str, int, int]] = set()

    def see(self, data: bytes, now: float) -> None:
        doc = json.loads(data)
        if doc.get("kind", "alert") != "alert" or "first_ts" not in doc:
            return
        key = (doc["sensor_key"], doc["epoch"], doc["seq"])
        if key not in self.keys:
            self.keys.add(key)
            self.samples.append((float(doc["first_ts"]), now))

    def report(self) -> dict[str, float]:
        lat = sorted(r - t for t, r in self.samples)
        first = min(t for t, _ in self.samples)
        last = max(r for _, r in self.samples)
        return {"alerts": len(self.samples), "p50_ms": 1000 * statistics.median(lat),
                "p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))],
                "max_ms": 1000 * lat[-1], "per_s": len(self.samples) / (last - first)}


def pub_reader(endpoint: str, path: Path_, total: int, stop: threading.Event) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 1_000_000)
    sock.setsockopt(zmq.SUBSCRIBE, b"alert")
    sock.connect(endpoint)
    try:
        while not stop.is_set() and len(path.keys) < total:
            if sock.poll(200):
                _, data = sock.recv_multipart()
                path.see(data, time.time())
    finally:
        sock.close(0)


async def js_reader(urls: list[str], path: Path_, total: int, stop: threading.Event,
                    ready: threading.Event) -> None:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    nc = await nats.connect(servers=urls, user="national", password=USERS["national"],
                            max_reconnect_attempts=-1)
    js = nc.jetstream(timeout=10)
    for _ in range(100):  # the collector creates the stream when it connects
        try:
            await js.stream_info("MAMORI")
            break
        except Exception:
            await asyncio.sleep(0.1)
    await js.add_consumer("MAMORI", ConsumerConfig(
        name="bench", durable_name="bench", filter_subject="mamori.alert.>",
        deliver_policy=DeliverPolicy.NEW, ack_policy=AckPolicy.EXPLICIT,
        max_ack_pending=20_000))
    sub = await js.pull_subscribe_bind("bench", "MAMORI")
    ready.set()
    while not stop.is_set() and len(path.keys) < total:
        try:
            msgs = await sub.fetch(512, timeout=0.5)
        except Exception:
            continue
        now = time.time()
        for msg in msgs:
            path.see(msg.data, now)
        await asyncio.gather(*(m.ack() for m in msgs))
    await nc.close()


def catch_up(args: argparse.Namespace) -> int:
    from mamori.parsers.wire import Kind
    from mamori.sensor import config as cfg
    from mamori.sensor.collector.jetstream import JetStreamSettings, status_report

    tmp = Path(tempfile.mkdtemp(prefix="mamori-bench-js-"))
    cluster = NatsCluster(tmp / "nats", args.nodes)
    site = Site(tmp, args.sensors, f"nats_servers = {json.dumps(cluster.urls)}\n"
                f'nats_user = "collector"\nnats_password = "{USERS["collector"]}"\n'
                f"nats_replicas = {args.nodes}\n")
    settings = JetStreamSettings.from_config(cfg.load(site.collector_conf))
    assert settings is not None
    total = args.sensors * args.alerts

    def stored() -> int:
        st = site.storage()
        try:
            return sum(len(st.sequence(r.sensor, int(Kind.ALERT))) for r in st.status())
        finally:
            st.close()

    def behind() -> tuple[bool, int]:
        st = site.storage()
        try:
            state = status_report(settings, st)
        finally:
            st.close()
        return bool(state["connected"]), int(state["behind"])

    try:
        site.start_collector()
        interval = args.sensors / args.rate if args.rate else 0.0
        t0 = time.monotonic()
        sensors = [subprocess.Popen([sys.executable, "-c", SENSOR, str(c), str(args.alerts),
                                     str(interval)], cwd=PROJECT)
                   for c in site.sensor_confs]
        for proc in sensors:
            proc.wait(timeout=600)
        while stored() < total and time.monotonic() - t0 < 600:
            time.sleep(0.05)
        ingest = time.monotonic() - t0
        backlog = behind()[1]
        cluster.start()
        t1 = time.monotonic()
        while behind() != (True, 0) and time.monotonic() - t1 < 600:
            time.sleep(0.05)
        drained = time.monotonic() - t1
    finally:
        site.stop_collector()
        cluster.stop()
    print(f"{args.sensors} sensors x {args.alerts} alerts, NATS down while they send, "
          f"nats nodes {args.nodes}")
    print(f"  ingest (collector store)  {total} alerts in {ingest:6.2f} s  "
          f"{total / ingest:8.0f}/s")
    print(f"  JetStream catch-up        {backlog} messages in {drained:6.2f} s  "
          f"{backlog / drained:8.0f}/s (from NATS start, includes its startup)")
    print(f"  ratio catch-up/ingest: {(backlog / drained) / (total / ingest):.2f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sensors", type=int, default=4)
    parser.add_argument("--alerts", type=int, default=5000, help="per sensor")
    parser.add_argument("--rate", type=float, default=2000.0,
                        help="aggregate alerts/s (0 = as fast as the sensors can)")
    parser.add_argument("--nodes", type=int, choices=(1, 3), default=1)
    parser.add_argument("--catch-up", action="store_true",
                        help="publisher backlog rate after an outage, against ingest")
    args = parser.parse_args()
    if args.catch_up:
        return catch_up(args)
    tmp = Path(tempfile.mkdtemp(prefix="mamori-bench-js-"))
    cluster = NatsCluster(tmp / "nats", args.nodes)
    cluster.start()
    (pub_port,) = free_ports(1)
    pub = f"tcp://127.0.0.1:{pub_port}"
    site = Site(tmp, args.sensors, f"nats_servers = {json.dumps(cluster.urls)}\n"
                f'nats_user = "collector"\nnats_password = "{USERS["collector"]}"\n'
                f"nats_replicas = {args.nodes}\n")
    text = site.collector_conf.read_text().replace('publish = ""', f'publish = "{pub}"')
    site.collector_conf.write_text(text)
    total = args.sensors * args.alerts
    paths = {"pub": Path_("local PUB socket"), "jetstream": Path_("JetStream")}
    stop = threading.Event()
    ready = threading.Event()
    try:
        site.start_collector()
        threads = [
            threading.Thread(target=pub_reader, args=(pub, paths["pub"], total, stop)),
            threading.Thread(target=lambda: asyncio.run(js_reader(
                cluster.urls, paths["jetstream"], total, stop, ready)))]
        for t in threads:
            t.start()
        if not ready.wait(30):
            raise SystemExit("the JetStream consumer did not start")
        time.sleep(0.5)  # the SUB socket's subscription reaches the collector
        interval = args.sensors / args.rate if args.rate else 0.0
        sensors = [subprocess.Popen([sys.executable, "-c", SENSOR, str(c), str(args.alerts),
                                     str(interval)], cwd=PROJECT)
                   for c in site.sensor_confs]
        for proc in sensors:
            proc.wait(timeout=600)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and any(len(p.keys) < total
                                                  for p in paths.values()):
            time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(timeout=30)
    finally:
        stop.set()
        site.stop_collector()
        cluster.stop()
    rep = {k: p.report() for k, p in paths.items()}
    print(f"{args.sensors} sensors x {args.alerts} alerts, rate "
          f"{args.rate or 'max'}/s, nats nodes {args.nodes}")
    for key, p in paths.items():
        r = rep[key]
        print(f"  {p.name:<17} received {r['alerts']:>6.0f}/{total}  p50 {r['p50_ms']:7.1f} ms"
              f"  p99 {r['p99_ms']:7.1f} ms  max {r['max_ms']:7.1f} ms  {r['per_s']:8.0f}/s")
    js, ps = rep["jetstream"], rep["pub"]
    print(f"  ratio JetStream/PUB: p50 {js['p50_ms'] / ps['p50_ms']:.2f}  "
          f"p99 {js['p99_ms'] / ps['p99_ms']:.2f}  throughput {js['per_s'] / ps['per_s']:.2f}")
    return 0 if js["alerts"] == total else 1


if __name__ == "__main__":
    sys.exit(main())
