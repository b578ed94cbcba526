"""Bytes on the wire per forwarding policy, measured on the frames the forwarder journals.

The Modbus demo capture (mapped onto site addresses) is replayed through detection;
its alerts, a DNP3 alert and the device identities found are submitted to one
Forwarder with five destinations, each on another policy. The journal keeps, per
destination, the exact frames that would be sent (CURVE adds 16 bytes of MAC and a
few of ZMTP framing to each). No collector is needed: the frames are read back from
the journal, which is what the send loop sends.

    .venv/bin/python bench/bench_policy_bytes.py [--repeat 20]

Ratios are against the default (metadata-only) policy, measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from mamori.parsers.alerts import Alert, Severity  # noqa: E402
from mamori.parsers.pipeline import PipelineConfig  # noqa: E402
from mamori.parsers.wire import Kind  # noqa: E402
from mamori.sensor import config as cfg  # noqa: E402
from mamori.sensor.advisories.national import IdentityFeed  # noqa: E402
from mamori.sensor.capture.replay import replay_files  # noqa: E402
from mamori.sensor.detection.settings import build_detector  # noqa: E402
from mamori.sensor.forwarding.forwarder import Forwarder  # noqa: E402
from mamori.sensor.forwarding.keys import generate  # noqa: E402
from tests.pcaprewrite import rewrite  # noqa: E402

ALL = '["ip", "mac", "unit", "link", "identity"]'
POLICIES = {  # name -> [forward.policies.NAME] body ("" = the default policy)
    "default": "",
    "everything": 'deny_fields = []',
    "minimal": 'allow_fields = []',
    "pseudonymised": f"pseudonymise = {ALL}",
    "high-only-pseudonymised": f'severities = ["high", "critical"]\npseudonymise = {ALL}',
}


def config(tmp: Path) -> Path:
    generate("sensor", tmp / "keys")
    (tmp / "keys" / "sensor.secret").chmod(0o600)
    generate("collector", tmp / "ckeys")
    text = [f'[sensor]\nstate_dir = "{tmp}"\n[forward]\nheartbeat_interval = 3600\n']
    for port, name in enumerate(POLICIES, start=1):
        text.append(f'[[forward.collectors]]\nendpoint = "tcp://127.0.0.1:{port}"\n'
                    f'server_key = "{tmp / "ckeys" / "collector.pub"}"\n'
                    + (f'policy = "{name}"\n' if POLICIES[name] else ""))
    for name, body in POLICIES.items():
        if body:
            text.append(f"[forward.policies.{name}]\n{body}\n")
    path = tmp / "sensor.toml"
    path.write_text("".join(text))
    return path


def messages(tmp: Path, repeat: int) -> tuple[list[Alert], list[dict[str, object]]]:
    capture = rewrite(PROJECT / "samples" / "modbus_demo.pcap", tmp / "site.pcap",
                      "10.77.1.5", "10.77.2.9")
    detector = build_detector(cfg.load(None))
    replay_files([capture], PipelineConfig(), extra_sinks=[detector.process])
    alerts = detector.drain()
    t = time.time()
    alerts.append(Alert("mamori.dnp3.cold_restart", "D1", Severity.HIGH, ("T0816",),
                        "DNP3 cold restart", "dnp3", t, t, src="10.77.1.5", sport=40001,
                        dst="10.77.4.4", dport=20000, link_src=3, link_dst=10,
                        evidence={"fc": 13}))
    assets = IdentityFeed().changed([a.to_dict() for a in detector.inventory.assets.values()])
    return alerts * repeat, assets * repeat


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=20, help="submit the set this often")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        alerts, assets = messages(tmp, args.repeat)
        forwarder = Forwarder(cfg.load(config(tmp), check_files=True))
        for alert in alerts:
            forwarder.submit_alert(alert)
        for body in assets:
            forwarder.submit(Kind.ASSET, body)
        results = {}
        for link, name in zip(forwarder.journal.collectors, POLICIES, strict=True):
            rows = forwarder.journal.pending(link, 0, 1_000_000)
            by_kind = {k: [len(r.frame) for r in rows if r.kind == k]
                       for k in (Kind.ALERT, Kind.ASSET)}
            results[name] = (by_kind, sum(len(r.frame) for r in rows))
        forwarder.close(0)
    base_alert = statistics.median(results["default"][0][Kind.ALERT])
    base_total = results["default"][1]
    print(f"{len(alerts)} alerts and {len(assets)} asset records submitted "
          f"({args.repeat} x the demo capture's set); frame bytes incl. envelope")
    print(f"{'policy':<25} {'alerts':>6} {'median':>7} {'range':>9} {'assets':>6} "
          f"{'median':>7} {'total':>8} {'alert/default':>13} {'total/default':>13}")
    for name, (by_kind, total) in results.items():
        a, s = by_kind[Kind.ALERT], by_kind[Kind.ASSET]
        med = statistics.median(a) if a else 0
        print(f"{name:<25} {len(a):>6} {med:>7.1f} {min(a):>4}-{max(a):<4} {len(s):>6} "
              f"{statistics.median(s) if s else 0:>7.1f} {total:>8} "
              f"{med / base_alert:>13.3f} {total / base_total:>13.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
