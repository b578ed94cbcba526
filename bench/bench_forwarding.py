"""End-to-end forwarding benchmark on loopback: alerts/s and sensor->collector latency.

A real collector process (SQLite store) and SENSORS sensor processes, each journaling
(SQLite, synchronous=FULL) and forwarding ALERTS alerts over CURVE as fast as it can.
Latency is the collector's receive time minus the sensor's send timestamp, per alert.

    .venv/bin/python bench/bench_forwarding.py [--sensors 4] [--alerts 2000]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from mamori.sensor.collector.storage import SqliteStorage  # noqa: E402
from mamori.sensor.forwarding.keys import generate  # noqa: E402

SENSOR = """
import sys, time
from mamori.sensor import config as cfg
from mamori.parsers.alerts import Alert, Severity
from mamori.sensor.forwarding.forwarder import Forwarder
fw = Forwarder(cfg.load(sys.argv[1])).start()
for i in range(1, int(sys.argv[2]) + 1):
    t = time.time()
    fw.submit_alert(Alert("mamori.modbus.write_unknown_master", "M3", Severity.HIGH,
                          ("T0855",), "Modbus write from a new master", "modbus", t, t,
                          src="10.20.1.15", sport=50412, dst="10.20.2.7", dport=502, unit=1,
                          evidence={"fc": 6, "addr": 40001}, id=i))
fw.close(60)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sensors", type=int, default=4)
    parser.add_argument("--alerts", type=int, default=2000, help="per sensor")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mamori-bench-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    coll = tmp / "collector"
    generate("collector", coll / "keys")
    conf = tmp / "collector.toml"
    conf.write_text(f'[sensor]\nstate_dir = "{coll}"\n[collect]\nlisten = ["{endpoint}"]\n'
                    'publish = ""\n')
    sensor_confs = []
    for i in range(args.sensors):
        generate(f"s{i}", coll / "keys" / "sensors")
        c = tmp / f"s{i}.toml"
        c.write_text(f'[sensor]\nstate_dir = "{tmp / f"s{i}"}"\n[forward]\n'
                     f'secret_key = "{coll / "keys" / "sensors" / f"s{i}.secret"}"\n'
                     f'collectors = [{{endpoint = "{endpoint}", '
                     f'server_key = "{coll / "keys" / "collector.pub"}"}}]\n')
        sensor_confs.append(c)
    collector = subprocess.Popen([sys.executable, "-m", "mamori.sensor.forwarding.cli", "collect",
                                  "--config", str(conf), "--duration", "300"], cwd=PROJECT,
                                 stderr=subprocess.PIPE)
    assert collector.stderr is not None
    collector.stderr.readline()
    start = time.time()
    sensors = [subprocess.Popen([sys.executable, "-c", SENSOR, str(c), str(args.alerts)],
                                cwd=PROJECT) for c in sensor_confs]
    for proc in sensors:
        proc.wait(timeout=290)
    collector.terminate()
    collector.wait(timeout=30)
    store = SqliteStorage(coll / "collector" / "collector.db")
    latencies = sorted(store.latencies())
    last = max(r.last_received for r in store.status())
    total = sum(r.messages for r in store.status())
    store.close()
    expected = args.sensors * (args.alerts + 1)
    q = statistics.quantiles(latencies, n=100)
    print(f"sensors={args.sensors} alerts/sensor={args.alerts} stored={total}/{expected}")
    print(f"throughput: {total / (last - start):.0f} alerts/s end to end "
          f"(process start to last stored)")
    print(f"latency: p50 {q[49] * 1000:.2f} ms, p99 {q[98] * 1000:.2f} ms")
    return 0 if total == expected else 1


if __name__ == "__main__":
    sys.exit(main())
