"""Signed rule bundles pushed from a collector to three live sensors over CURVE (issue 17).

Real processes in network namespaces (``tests/netns.py``): one ``mamori collect`` and
three ``mamori run`` daemons capturing on the same SPAN port. The test pushes with
``mamori collect push-rules`` and watches what the centre sees: the collector's
status (the heartbeats' ``rules`` and ``rules_offer``) and the alerts in its SIEM file.
Detection with a bundle's rules is shown by replaying a capture with a listen-only
request onto the wire and finding the bundle's own rule id in the alerts of each
sensor.

* bundle 1 reaches the two sensors that run; the third is offline and gets it when
  it starts;
* bundle 2, several chunks long, replaces it everywhere;
* a tampered bundle, a downgrade and a bundle whose rules do not load are refused,
  each with its reason at the collector and an S7 alert, and change nothing;
* the active bundle of one sensor is changed on disk: at its next load (SIGHUP) it
  rolls back to bundle 1 and goes on detecting with bundle 1's rules.

The push and rollback timings are printed (``pytest -s``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from nacl.signing import SigningKey

from mamori.parsers.wire import RULES_CHUNK_BYTES
from mamori.sensor.collector.storage import SqliteStorage
from mamori.sensor.detection.bundle import build
from mamori.sensor.forwarding.keys import read_key
from tests.conftest import PROJECT
from tests.netns import SERVER_IP, SpanLab, lab_or_skip
from tests.pcaprewrite import rewrite
from tests.ports import free_port

MAMORI = str(Path(sys.executable).parent / "mamori")
SAMPLE = PROJECT / "samples" / "modbus_demo.pcap"
SENSORS = ("s1", "s2", "s3")
REFUSED = "mamori.sensor.rule_bundle_refused"
PACK = """\
pack: site.{name}
rules:
  - id: site.{name}.listen_only
    precursor: M1
    title: Listen only, by bundle {name}
    severity: critical
    attack: [T0814]
    match: {{proto: modbus, type: request, fc: {fc}, sub: 4}}
{padding}"""


@pytest.fixture
def lab() -> Iterator[SpanLab]:
    with lab_or_skip("mmpush") as span:
        yield span


def wait(check: Callable[[], bool], timeout: float, what: str,
         detail: Callable[[], object] = lambda: "") -> float:
    """Seconds until ``check()`` held; fails after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} {detail()}")


class Centre:
    """The collector, the three sensors' configs and state, and the signing key."""

    def __init__(self, lab: SpanLab, root: Path) -> None:
        self.lab, self.root = lab, root
        self.coll = root / "collector"
        self.siem = root / "siem.jsonl"
        self.db = self.coll / "collector" / "collector.db"
        self.mamori("keys", "generate", "collector", "--dir", self.coll / "keys")
        self.mamori("rules", "keygen", "centre", "--dir", root / "centre")
        trusted = root / "trusted"
        trusted.mkdir()
        shutil.copy(root / "centre" / "centre.pub", trusted / "centre.pub")
        self.port = free_port()
        endpoint = f"tcp://127.0.0.1:{self.port}"
        self.collector_conf = root / "collector.toml"
        self.collector_conf.write_text(
            f'[sensor]\nstate_dir = "{self.coll}"\n[collect]\nlisten = ["{endpoint}"]\n'
            f'publish = ""\njsonl = "{self.siem}"\n')
        self.keys: dict[str, str] = {}
        for name in SENSORS:
            state = root / name
            self.mamori("keys", "generate", name, "--dir", self.coll / "keys" / "sensors")
            (state / "keys").mkdir(parents=True)
            secret = self.coll / "keys" / "sensors" / f"{name}.secret"
            shutil.move(secret, state / "keys" / "sensor.secret")
            self.keys[name] = read_key(self.coll / "keys" / "sensors" / f"{name}.pub").decode()
            (root / f"{name}.toml").write_text(
                f'[sensor]\nstate_dir = "{state}"\nname = "{name}"\n'
                f'[capture]\ninterfaces = ["cap0"]\nring_mb = 4\n'
                f'[detection]\ntrusted_rule_keys = "{trusted}"\n'
                f'[forward]\nheartbeat_interval = 1.0\ncollectors = [{{endpoint = '
                f'"{endpoint}", server_key = "{self.coll / "keys" / "collector.pub"}"}}]\n')
        self.procs: dict[str, subprocess.Popen[str]] = {}

    def mamori(self, *args: str | Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([MAMORI, *map(str, args)], capture_output=True, text=True,
                              cwd=self.root, timeout=60)
        if ok:
            assert done.returncode == 0, (args, done.stderr)
        return done

    def start(self, name: str) -> None:
        args = ([MAMORI, "collect", "--config", str(self.collector_conf), "--duration", "300"]
                if name == "collector" else
                [MAMORI, "run", "--config", str(self.root / f"{name}.toml")])
        log = (self.root / f"{name}.log").open("a")
        self.procs[name] = self.lab.popen(self.lab.sensor, args, stdout=log,
                                          stderr=subprocess.STDOUT)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def rules(self) -> dict[str, dict[str, Any]]:
        """The collector's view: sensor name -> the rules part of its status."""
        if not self.db.exists():
            return {}
        storage = SqliteStorage(self.db)
        try:
            return {r.name: r.rules for r in storage.status()}
        finally:
            storage.close()

    def bundle(self, version: int, name: str, fc: int = 8, chunks: int = 0,
               comment: str = "") -> Path:
        pack = self.root / f"pack-{name}" / f"{name}.yaml"
        pack.parent.mkdir(exist_ok=True)
        padding = ("# " + "p" * 78 + "\n") * (chunks * RULES_CHUNK_BYTES // 80)
        pack.write_text(PACK.format(name=name, fc=fc, padding=padding))
        out = self.root / f"{name}-{version}.mrb"
        self.mamori("rules", "bundle", "--key", self.root / "centre" / "centre.sign",
                    "--version", str(version), "--comment", comment or name, "-o", out,
                    pack.parent)
        return out

    def push(self, bundle: Path, *sensors: str) -> subprocess.CompletedProcess[str]:
        return self.mamori("collect", "push-rules", "--config", self.collector_conf, bundle,
                           *(["--sensors", *sensors] if sensors else []))

    def until_running(self, version: int, sensors: tuple[str, ...], timeout: float = 30,
                      state: str = "applied") -> float:
        return wait(lambda: all(
            self.rules().get(s, {}).get("running") == version
            and self.rules()[s].get("state") == state for s in sensors),
            timeout, f"bundle {version} running on {sensors}", self.rules)

    def alerts(self) -> list[dict[str, Any]]:
        if not self.siem.exists():
            return []
        return [json.loads(line) for line in self.siem.read_text().splitlines() if line]

    def detections(self, rule: str) -> dict[str, int]:
        """sensor -> how many times (summed aggregate updates) ``rule`` reached the SIEM."""
        seen: dict[str, int] = {}
        for alert in self.alerts():
            if alert["rule"] == rule:
                seen[alert["sensor"]] = seen.get(alert["sensor"], 0) + 1
        return seen


def test_pushed_bundles_reach_three_live_sensors(lab: SpanLab, tmp_path: Path) -> None:
    c = Centre(lab, tmp_path)
    replays = iter(range(10, 20))

    def replay() -> None:
        """The sample onto the wire, from a new client each time: the same flow again
        would be retransmissions to the sensors' TCP reassembly, and not parsed."""
        n = next(replays)
        capture = rewrite(SAMPLE, tmp_path / f"demo{n}.pcap", f"10.250.1.{n}", SERVER_IP)
        lab.ns(lab.tap, "tcpreplay", "-q", "-i", "gen0", "--pps=500", str(capture))

    timings: dict[str, float] = {}
    try:
        c.start("collector")
        c.start("s1")
        c.start("s2")
        wait(lambda: all(c.rules().get(s, {}).get("running") == 0 for s in ("s1", "s2")), 60,
             "s1 and s2 heard from", c.rules)

        # Bundle 1 to every sensor in the allow-list; s3 is not running.
        one = c.bundle(1, "a")
        started = time.monotonic()
        done = c.push(one)
        command = time.monotonic() - started
        assert "offered to 3 sensor(s): s1, s2, s3" in done.stdout, done.stdout
        c.until_running(1, ("s1", "s2"))
        timings["push bundle 1 (1 chunk) to 2 sensors"] = time.monotonic() - started
        timings["  of which the push-rules process"] = command
        started = time.monotonic()
        c.start("s3")
        c.until_running(1, ("s3",), timeout=60)
        timings["offline sensor: start to bundle 1 running"] = time.monotonic() - started
        replay()
        wait(lambda: set(c.detections("site.a.listen_only")) == set(SENSORS), 30,
             "bundle 1's rule firing on every sensor", lambda: c.detections("site.a.listen_only"))
        assert not c.detections("mamori.modbus.listen_only")  # the shipped packs are not loaded

        # Bundle 2, four chunks, by key and by name.
        two = c.bundle(2, "b", chunks=3)
        assert 3 * RULES_CHUNK_BYTES < two.stat().st_size <= 4 * RULES_CHUNK_BYTES
        started = time.monotonic()
        c.push(two, c.keys["s1"], "s2", "s3")
        c.until_running(2, SENSORS)
        timings["push bundle 2 (4 chunks) to 3 sensors"] = time.monotonic() - started
        replay()
        wait(lambda: set(c.detections("site.b.listen_only")) == set(SENSORS), 30,
             "bundle 2's rule firing on every sensor", lambda: c.detections("site.b.listen_only"))

        # Tampered after signing: push-rules will not offer it; a collector taken over
        # would, so it goes into the collector's store directly, for s1.
        three = c.bundle(3, "c")
        outer = msgpack.unpackb(three.read_bytes(), raw=False)
        outer["files"]["c.yaml"] = outer["files"]["c.yaml"].replace(b"fc: 8", b"fc: 6")
        tampered = bytes(msgpack.packb(outer))
        (tmp_path / "tampered.mrb").write_bytes(tampered)
        refused = c.mamori("collect", "push-rules", "--config", c.collector_conf,
                           tmp_path / "tampered.mrb", ok=False)
        assert refused.returncode == 1 and "not offered (TAMPERED)" in refused.stderr, refused
        storage = SqliteStorage(c.db)
        storage.offer_rules(hashlib.sha256(tampered).hexdigest(), 3, tampered,
                            [c.keys["s1"]], time.time())
        storage.close()
        # A downgrade (a new bundle, version 1) for s2; packs that do not load for s3,
        # signed by the centre's key all the same (rules bundle would not build them).
        c.push(c.bundle(1, "a", comment="older"), "s2")
        broken = tmp_path / "pack-broken" / "broken.yaml"
        broken.parent.mkdir()
        broken.write_text(PACK.format(name="broken", fc="'x'", padding=""))
        centre = SigningKey(bytes.fromhex((tmp_path / "centre" / "centre.sign").read_text()))
        (tmp_path / "broken.mrb").write_bytes(build([broken], centre, 4))
        c.push(tmp_path / "broken.mrb", "s3")
        for name, reason in (("s1", "TAMPERED"), ("s2", "DOWNGRADE"), ("s3", "INVALID_RULES")):
            c.until_running(2, (name,), state="refused")
            assert c.rules()[name]["detail"] == reason, c.rules()
        wait(lambda: {(a["sensor"], a["evidence"]["reason"]) for a in c.alerts()
                      if a["rule"] == REFUSED} == {("s1", "TAMPERED"), ("s2", "DOWNGRADE"),
                                                   ("s3", "INVALID_RULES")}, 30,
             "three S7 refusals at the collector")
        local = c.mamori("rules", "status", "--config", tmp_path / "s1.toml").stdout
        assert "active bundle: 2 " in local and "refused: TAMPERED 1" in local, local
        assert local.splitlines()[-1].endswith("refused TAMPERED (from tcp://127.0.0.1:"
                                               f"{c.port})"), local
        status = c.mamori("collect", "status", "--config", c.collector_conf).stdout
        line = next(x for x in status.splitlines() if x.startswith("s2 "))
        assert "2 (offer 1: refused DOWNGRADE)" in line, status

        # s3's active bundle changed on disk: its next load rolls back to bundle 1.
        before = c.detections("site.a.listen_only")["s3"]
        pack = tmp_path / "s3" / "rules" / "bundles" / "2" / "b.yaml"
        pack.write_text(pack.read_text().replace("fc: 8", "fc: 5"))
        started = time.monotonic()
        c.procs["s3"].send_signal(signal.SIGHUP)  # ip netns exec passes it on
        wait(lambda: c.rules()["s3"]["running"] == 1, 30, "s3 rolled back to 1", c.rules)
        timings["rollback: SIGHUP to bundle 1 running, seen at the collector"] = \
            time.monotonic() - started
        wait(lambda: any(a["rule"] == REFUSED and a["sensor"] == "s3"
                         and a["evidence"]["source"] == "load" for a in c.alerts()), 30,
             "the S7 of the rollback")
        replay()
        wait(lambda: c.detections("site.a.listen_only").get("s3", 0) > before, 30,
             "s3 detecting with bundle 1 after the rollback")
        for name in ("s1", "s2"):
            assert c.rules()[name]["running"] == 2
    finally:
        c.stop_all()
        for name in ("collector", *SENSORS):
            log = tmp_path / f"{name}.log"
            if log.exists() and "Traceback" in log.read_text():
                print(log.read_text()[-3000:])
    for name in SENSORS:
        assert c.procs[name].returncode == 0, (tmp_path / f"{name}.log").read_text()[-2000:]
    print()
    for what, seconds in timings.items():
        print(f"  {what}: {seconds:.2f} s")
