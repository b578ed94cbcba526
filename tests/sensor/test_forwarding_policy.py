"""Per-destination policies, keyed pseudonyms and the audit chain, on real processes.

One sensor process per capture replays a real capture (the Modbus demo mapped onto
site addresses) through detection and forwards its alerts and device identities to
two destinations: the real collector process (policy ``national``, its own key, high
severity only) and a CURVE ROUTER in this test that keeps every frame's raw bytes
(policy ``cert``, another key). The frames are scanned for the original addresses
and identity strings; none may appear.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import zmq

from mamori.parsers.alerts import Alert, Pseudonym, Severity
from mamori.parsers.wire import JOURNALED_KINDS, Ack, Envelope, Kind, decode, encode, encode_ack
from mamori.sensor import config as cfg
from mamori.sensor.forwarding.audit import Sent, shape_json
from mamori.sensor.forwarding.forwarder import EVICTION_RULE, Forwarder
from mamori.sensor.forwarding.journal import AlertJournal, Outgoing
from mamori.sensor.forwarding.keys import generate, load_pair
from mamori.sensor.forwarding.policy import DestinationPolicy, PolicySpec
from mamori.sensor.forwarding.pseudonym import Pseudonymiser, PseudonymKeyError, load_key
from tests.pcaprewrite import rewrite
from tests.ports import free_port
from tests.sensor.test_collector import PROJECT, Site, alert_seqs, wait_for

CLIENT, SERVERS = "10.77.1.5", ("10.77.2.9", "10.77.3.3")
MAC = "02:42:ac:11:00:05"
IDENTITY = ("Mamori Test Works", "MTW-PLC-1")

# A sensor run: replay the captures through detection, forward alerts, the device
# identities found and one layer-2 alert (a MAC, and addresses inside its text).
SENSOR = """
import json, sys, time
from mamori.sensor import config as cfg
from mamori.sensor.advisories.national import IdentityFeed
from mamori.parsers.alerts import Alert, Severity
from mamori.sensor.detection.settings import build_detector
from mamori.sensor.forwarding.forwarder import Forwarder
from mamori.parsers.pipeline import PipelineConfig
from mamori.sensor.capture.replay import replay_files
from mamori.parsers.wire import Kind
conf = cfg.load(sys.argv[1], check_files=True)
det = build_detector(conf)
replay_files(sys.argv[2:], PipelineConfig(), extra_sinks=[det.process])
fw = Forwarder(conf).start()
alerts = det.drain()
t = time.time()
alerts.append(Alert("mamori.test.l2", "I2", Severity.HIGH, (), "ARP spoof", "ip", t, t,
                    src="%(mac)s", link_src=10, link_dst=1, id=len(alerts) + 1,
                    evidence={"detail": "%(mac)s claims %(server)s", "peer": "%(client)s"}))
for a in alerts:
    fw.submit_alert(a)
for body in IdentityFeed().changed([a.to_dict() for a in det.inventory.assets.values()]):
    fw.submit(Kind.ASSET, body)
deadline = time.monotonic() + 20
while fw.unacked() and time.monotonic() < deadline:
    time.sleep(0.05)
left = fw.unacked()
fw.close(5)
print(json.dumps({"unacked": left, "alerts": len(alerts)}))
"""


class Capture:
    """A CURVE ROUTER that keeps every frame's raw bytes and acks journaled ones."""

    def __init__(self, keys: Path) -> None:
        generate("capture", keys)
        self.pair = load_pair(keys / "capture.secret")
        self.pub = keys / "capture.pub"
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.frames: list[bytes] = []
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sock = self._ctx.socket(zmq.ROUTER)
        sock.curve_server = True
        sock.curve_secretkey, sock.curve_publickey = self.pair.secret, self.pair.public
        sock.linger = 0
        sock.bind(self.endpoint)
        while not self._stop.is_set():
            if not sock.poll(50):
                continue
            route, frame = sock.recv_multipart()
            self.frames.append(frame)
            env = decode(frame)  # anything the collector would refuse fails the test
            if env.kind in JOURNALED_KINDS:
                sock.send_multipart([route, encode_ack(Ack(env.epoch, env.seq))])
        sock.close(0)

    def envelopes(self) -> list[Envelope]:
        return [decode(f) for f in self.frames]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._ctx.term()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Site, Capture, Path]]:
    site = Site(tmp_path)
    capture = Capture(tmp_path / "capture-keys")
    conf = site.sensor_confs[0]
    conf.write_text(conf.read_text() .split("collectors =")[0] + f"""
[[forward.collectors]]
endpoint = "{site.endpoint}"
server_key = "{site.coll_dir / 'keys' / 'collector.pub'}"
policy = "national"

[[forward.collectors]]
endpoint = "{capture.endpoint}"
server_key = "{capture.pub}"
policy = "cert"

[forward.policies.national]
severities = ["high", "critical"]
deny_fields = ["title", "evidence.detail"]
pseudonymise = ["ip", "mac", "unit", "link", "identity"]
pseudonym_key = "keys/national.key"

[forward.policies.cert]
allow_fields = ["*"]
pseudonymise = ["ip", "mac", "unit", "link", "identity"]
pseudonym_key = "keys/cert.key"
""")
    site.start_collector()
    yield site, capture, conf
    capture.close()
    if site.proc is not None:
        site.proc.kill()
        site.proc.wait(timeout=10)


def run_sensor(conf: Path, *captures: Path) -> dict[str, int]:
    script = SENSOR % {"mac": MAC, "server": SERVERS[0], "client": CLIENT}
    proc = subprocess.run([sys.executable, "-c", script, str(conf), *map(str, captures)],
                          cwd=PROJECT, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, int] = json.loads(proc.stdout.splitlines()[-1])
    return result


def mamori(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mamori.sensor.cli", *args], cwd=PROJECT,
                          capture_output=True, text=True, timeout=60)


def forbidden() -> list[bytes]:
    """Every form in which the original addresses and identities could travel."""
    out = [MAC.encode(), bytes.fromhex(MAC.replace(":", "")), *(s.encode() for s in IDENTITY)]
    for ip in (CLIENT, *SERVERS):
        out += [ip.encode(), bytes(int(x) for x in ip.split("."))]
    out.append(b"6d6f726920")  # the hex of the identity strings, as server_id_data has it
    return out


def test_pseudonymised_frames_carry_no_address_and_audit_proves_it(
        world: tuple[Site, Capture, Path], tmp_path: Path) -> None:
    site, capture, conf = world
    caps = []
    for i, server in enumerate(SERVERS):
        caps.append(rewrite(PROJECT / "samples" / "modbus_demo.pcap",
                            tmp_path / f"cap{i}.pcap", CLIENT, server))
    runs = [run_sensor(conf, cap) for cap in caps]  # two captures, two sensor runs
    assert all(r["unacked"] == 0 for r in runs)  # both destinations acked everything

    # Nothing of the original addresses in any byte the capture destination received.
    raw = b"".join(capture.frames)
    assert len(capture.frames) > 10
    for needle in forbidden():
        assert needle not in raw, needle

    envs = capture.envelopes()
    alerts: list[Alert] = [e.body for e in envs if e.kind is Kind.ALERT]
    assets = [e.body for e in envs if e.kind is Kind.ASSET]
    assert len(alerts) == sum(r["alerts"] for r in runs) and len(assets) == 2
    for a in alerts:
        for value in (a.src, a.dst, a.unit, a.link_src, a.link_dst):
            assert value is None or isinstance(value, Pseudonym)
    # The same client in both captures: one pseudonym for this destination.
    by_rule: dict[str, list[Alert]] = {}
    for a in alerts:
        if a.rule == "mamori.modbus.listen_only":
            by_rule.setdefault("listen", []).append(a)
    first, second = by_rule["listen"]
    assert first.src == second.src and first.dst != second.dst  # two servers
    l2 = next(a for a in alerts if a.rule == "mamori.test.l2")
    assert isinstance(l2.src, Pseudonym) and l2.evidence["peer"] == first.src
    assert l2.evidence["detail"] == f"{l2.src} claims {first.dst}"  # text tokens too
    assert all(isinstance(v, Pseudonym) for v in assets[0]["identity"].values())
    assert isinstance(assets[0]["ip"], Pseudonym)

    # The real collector (version 2, another key, high severity only) stored pseudonyms.
    high = [a for a in alerts if a.severity >= Severity.HIGH]
    assert 0 < len(high) < len(alerts)
    wait_for(lambda: len(site.jsonl_alerts()) == len(high), 15, "the national alerts")
    site.stop_collector()
    stored = site.jsonl_alerts()
    # high and critical (the captures' campaign chains) only; titles withheld
    assert {d["severity"] for d in stored} == {"high", "critical"}
    assert {d["title"] for d in stored} == {""}
    national = next(d for d in stored if d["rule"] == "mamori.modbus.listen_only")
    assert national["src"].startswith("pn:") and national["src"] != first.src  # other key
    assert national["unit"].startswith("pn:")
    for path in (site.jsonl, *sorted((site.coll_dir / "collector").glob("collector.db*"))):
        data = path.read_bytes()
        assert not any(needle in data for needle in forbidden()), path
    st = site.storage()
    try:
        (row,) = [r for r in st.status() if r.name == "s0"]
        assert row.epoch == 2 and row.lost == 0 and not row.rejected
        assert row.outstanding == 0  # its own stream: no gap where medium alerts were
    finally:
        st.close()

    # Re-identification on the box, for the site only.
    assert first.src is not None
    out = mamori("audit", "resolve", "--config", str(conf), first.src, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["value"] == CLIENT
    out = mamori("audit", "resolve", "--config", str(conf), national["unit"])
    assert out.returncode == 0 and "unit 1" in out.stdout, out
    assert mamori("audit", "resolve", "--config", str(conf), "pn:" + "0" * 24).returncode == 1

    # What left for the capture destination: every message, its policy and hash.
    out = mamori("audit", "--config", str(conf), "--destination", capture.endpoint,
                 "--json", "--since", "1h")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    journaled = [e for e in envs if e.kind in JOURNALED_KINDS]
    assert len(rows) == len(journaled)
    assert {r["policy"] for r in rows} == {"cert"} and len({r["policy_hash"] for r in rows}) == 1
    listen = next(r for r in rows if r["kind"] == "alert" and "unit" in r["pseudonymised"])
    assert {"src", "dst", "unit"} <= set(listen["pseudonymised"])
    out = mamori("audit", "--config", str(conf), "--destination", site.endpoint, "--json")
    national_rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert {r["policy"] for r in national_rows} == {"national"}
    assert len([r for r in national_rows if r["kind"] == "alert"]) == len(high)
    assert all("title" in r["withheld"] for r in national_rows if r["kind"] == "alert")
    assert any("evidence.detail" in r["withheld"] for r in national_rows)
    assert not any(r["policy_hash"] == rows[0]["policy_hash"] for r in national_rows)
    out = mamori("audit", "--config", str(conf), "--destination", capture.endpoint,
                 "--until", "2h")  # before any of it
    assert out.returncode == 0 and "0 messages" in out.stderr

    # The chain verifies; one modified row makes it fail, naming that row.
    ok = mamori("audit", "verify", "--config", str(conf))
    assert ok.returncode == 0 and "intact" in ok.stdout, ok
    journal = tmp_path / "s0" / "forward" / "journal.db"
    with sqlite3.connect(journal) as db:
        (was,) = db.execute("SELECT pseudonymised FROM audit_log WHERE n = 5").fetchone()
        db.execute("UPDATE audit_log SET pseudonymised = '' WHERE n = 5")
    bad = mamori("audit", "verify", "--config", str(conf))
    assert bad.returncode == 1 and "row 5:" in bad.stderr and "modified" in bad.stderr, bad
    with sqlite3.connect(journal) as db:  # put it back: intact again; then delete one
        db.execute("UPDATE audit_log SET pseudonymised = ? WHERE n = 5", (was,))
    assert mamori("audit", "verify", "--config", str(conf)).returncode == 0
    with sqlite3.connect(journal) as db:
        db.execute("DELETE FROM audit_log WHERE n = 7")
    bad = mamori("audit", "verify", "--config", str(conf))
    assert bad.returncode == 1 and "row 8 follows row 6" in bad.stderr, bad


def test_collector_refuses_unknown_version_clearly_and_still_reads_version_1(
        tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.start_collector()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        pair = load_pair(site.coll_dir / "keys" / "sensors" / "s0.secret")
        sock = ctx.socket(zmq.DEALER)
        sock.curve_secretkey, sock.curve_publickey = pair.secret, pair.public
        sock.curve_serverkey = load_pair(site.coll_dir / "keys" / "collector.secret").public
        sock.linger = 0
        sock.connect(site.endpoint)
        for seq in range(1, 21):  # a sensor newer than this collector: version 7
            sock.send(msgpack.packb([7, 1, seq, time.time(), int(Kind.HEALTH), {}]))
        v2 = encode(1, 1, time.time(), Kind.HEALTH, {"event": "start", "epoch": 1})
        sock.send(b"\x96\x01" + v2[2:])  # an older sensor: version 1
        assert sock.poll(5000), "no ack for the version-1 frame"
        assert msgpack.unpackb(sock.recv())[1:] == [int(Kind.ACK), [1, 1]]
        sock.close(0)
    finally:
        ctx.term()
        assert site.proc is not None and site.proc.stderr is not None
        site.proc.terminate()
        err = site.proc.stderr.read().decode()
        site.proc.wait(timeout=10)
        site.proc = None
    assert err.count("wire version 7") == 1, err  # logged once, counted every time
    assert "this collector reads 1, 2" in err and "'bad_version': 20" in err, err
    st = site.storage()
    try:
        (row,) = [r for r in st.status() if r.name == "s0"]
        assert row.rejected == {"bad_version": 20} and row.last_seq == 1
    finally:
        st.close()


POLICY_ERRORS = [
    ('policy = "nosuch"', "", "[forward] collectors", 8, "no policy 'nosuch'"),
    ('policy = "p"', '[forward.policies.p]\nseverities = ["hihg"]\n', "[forward] policies",
     11, "p.severities: 'hihg' is not a severity"),
    ('policy = "p"', '[forward.policies.p]\n\nsevrities = ["high"]\n', "[forward] policies",
     12, "p.sevrities: unknown policy key"),
    ('policy = "p"', '[forward.policies.p]\npseudonymise = ["ipv9"]\n', "[forward] policies",
     11, "'ipv9' is not one of ip, mac"),
    ('policy = "p"', '[forward.policies.p]\ndeny_fields = ["rule"]\n', "[forward] policies",
     11, "cannot deny required field(s) rule"),
    ('policy = "p"', '[forward.policies.p]\nprecursors = ["m1"]\n', "[forward] policies",
     11, "'m1' is not a precursor id"),
    ('policy = "default"', '[forward.policies.default]\nassets = false\n',
     "[forward] policies", 10, "'default' is reserved"),
    ('policy = 5', "", "[forward] collectors", 8, "policy must name"),
]


@pytest.mark.parametrize(("entry", "tables", "key", "line", "message"), POLICY_ERRORS)
def test_policy_errors_name_file_line_and_key(tmp_path: Path, entry: str, tables: str,
                                              key: str, line: int, message: str) -> None:
    generate("c", tmp_path / "k")
    path = tmp_path / "sensor.toml"
    path.write_text(f'[sensor]\nstate_dir = "{tmp_path}"\n\n[forward]\n\n[[forward.collectors]]\n'
                    f'endpoint = "tcp://127.0.0.1:9"\n{entry}\nserver_key = '
                    f'"{tmp_path / "k" / "c.pub"}"\n{tables}')
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(path, check_files=True)
    assert str(err.value).startswith(f"{path}:{line}: {key}: "), str(err.value)
    assert message in str(err.value)


def test_pseudonym_key_is_created_private_and_unsafe_keys_are_refused(tmp_path: Path) -> None:
    key = tmp_path / "keys" / "p.key"
    made = load_key(key, create=True)
    assert len(made) == 32 and (key.stat().st_mode & 0o777) == 0o600
    assert load_key(key) == made  # read back, not regenerated
    os.chmod(key, 0o640)
    with pytest.raises(PseudonymKeyError, match="accessible by others"):
        load_key(key, create=True)
    os.chmod(key, 0o600)
    key.write_text("not a key\n")
    with pytest.raises(PseudonymKeyError, match="one line of 64 hex digits"):
        load_key(key)
    with pytest.raises(PseudonymKeyError, match="not a regular file"):
        load_key(tmp_path / "keys", create=True)
    # check-config names the file, the line and the key for an unusable key
    generate("c", tmp_path / "k")
    conf = tmp_path / "sensor.toml"
    conf.write_text(f'[sensor]\nstate_dir = "{tmp_path}"\n[forward]\ncollectors = [{{endpoint = '
                    f'"tcp://127.0.0.1:9", server_key = "{tmp_path / "k" / "c.pub"}", '
                    'policy = "p"}]\n[forward.policies.p]\npseudonymise = ["ip"]\n'
                    f'pseudonym_key = "{key}"\n')
    out = mamori("check-config", "--config", str(conf))
    assert out.returncode != 0
    assert f"{conf}:7: [forward] policies: p: {key}: not a pseudonym key" in out.stderr, out


# The outbound journal as version 1 of the wire wrote it (one shared stream).
V1_SCHEMA = """
CREATE TABLE epochs (epoch INTEGER PRIMARY KEY, started REAL NOT NULL,
    last_seq INTEGER NOT NULL DEFAULT 0);
CREATE TABLE messages (id INTEGER PRIMARY KEY, epoch INTEGER NOT NULL, seq INTEGER NOT NULL,
    ts REAL NOT NULL, kind INTEGER NOT NULL, frame BLOB NOT NULL,
    fields TEXT NOT NULL DEFAULT '', acked INTEGER NOT NULL DEFAULT 0, UNIQUE (epoch, seq));
CREATE INDEX messages_acked ON messages (acked, id);
CREATE TABLE acks (collector TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (collector, epoch));
CREATE TABLE evicted (epoch INTEGER NOT NULL, first INTEGER NOT NULL, last INTEGER NOT NULL,
    ts REAL NOT NULL);
CREATE TABLE audit (hour INTEGER NOT NULL, collector TEXT NOT NULL, kind INTEGER NOT NULL,
    fields TEXT NOT NULL, messages INTEGER NOT NULL, retransmits INTEGER NOT NULL,
    bytes INTEGER NOT NULL, first_ts REAL NOT NULL, last_ts REAL NOT NULL,
    PRIMARY KEY (hour, collector, kind, fields));
CREATE TABLE store_sync (store TEXT PRIMARY KEY, rev INTEGER NOT NULL);
"""


def test_version_1_journal_is_migrated_without_losing_unacked_messages(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    with sqlite3.connect(path) as db:
        db.executescript(V1_SCHEMA)
        db.execute("INSERT INTO epochs VALUES (1, 0, 4)")
        for seq in range(1, 5):
            db.execute("INSERT INTO messages (epoch, seq, ts, kind, frame) VALUES (1, ?, 0, 4, ?)",
                       (seq, msgpack.packb([1, 1, seq, 0.0, 4, {"n": seq}])))
        db.execute("INSERT INTO acks VALUES ('a', 1, 2)")
    j = AlertJournal(path, ["a", "b"], shared=["a", "b"])
    try:
        assert [r.seq for r in j.pending("a", 0, 10)] == [3, 4]  # a had acked 1..2
        assert [r.seq for r in j.pending("b", 0, 10)] == [1, 2, 3, 4]
        assert decode(j.pending("b", 0, 10)[0].frame).body == {"n": 1}  # version 1, read
        assert j.start_epoch() == 2
        j.append_many([])
        assert j.locate("b", 1, 5) == (None, 4)
        j.ack("a", 1, 4)
        j.ack("b", 1, 4)
        assert j.stats()["unacked"] == 0
    finally:
        j.close()


def test_audit_chain_pruned_far_past_its_cap_still_verifies(tmp_path: Path) -> None:
    j = AlertJournal(tmp_path / "j.db", ["a"], audit_max_rows=1000)
    try:
        j.start_epoch()
        for batch in range(35):  # 3.5 times the cap, in batches as the send loop does
            sent = [Sent("a", 1, batch * 100 + i, int(Kind.ALERT), b"frame%d" % i, "id",
                         shape_json("p", "h" * 64, ["title"], ["src"])) for i in range(1, 101)]
            j.record_audit([], sent=sent)
        with sqlite3.connect(tmp_path / "j.db") as db:
            (count, low, high) = db.execute(
                "SELECT COUNT(*), MIN(n), MAX(n) FROM audit_log").fetchone()
        assert count <= 1000 and high == 3500 and low == high - count + 1
        verdict = j.verify_audit()
        assert verdict.ok and verdict.first == low and verdict.rows == count
        j.record_audit([], sent=[Sent("a", 1, 3500, int(Kind.ALERT), b"again", "", "")])
        assert j.verify_audit().rows == count  # a resend adds no row
    finally:
        j.close()
    with sqlite3.connect(tmp_path / "j.db") as db:
        db.execute("UPDATE audit_log SET bytes = bytes + 1 WHERE n = ?", (high - 10,))
    j = AlertJournal(tmp_path / "j.db", ["a"], audit_max_rows=1000)
    try:
        assert j.verify_audit().bad_row == high - 10
    finally:
        j.close()


def test_pseudonym_map_and_memory_stay_bounded_past_their_caps(tmp_path: Path) -> None:
    key = load_key(tmp_path / "k.key", create=True)
    pseudonymiser = Pseudonymiser(key, remembered=50, refresh_after=50)
    policy = DestinationPolicy(PolicySpec("p", pseudonymise=frozenset({"ip"})), pseudonymiser)
    j = AlertJournal(tmp_path / "j.db", ["a"], shared=[], pseudonyms_max=100)
    made: list[tuple[str, str]] = []
    try:
        j.start_epoch()
        for i in range(1000):  # a scan of 1000 hosts: ten times the map's cap
            ip = f"10.9.{i // 250}.{i % 250 + 1}"
            t = float(i)
            shaped = policy.shape_alert(Alert("r", "M1", Severity.HIGH, (), "t", "modbus", t,
                                              t, src=ip, dst="10.0.0.1"))
            assert shaped is not None
            made.append((ip, shaped.body[10].data.hex()))
            j.append_many([Outgoing(Kind.ALERT, shaped.body, "", "a")],
                          pseudonyms=pseudonymiser.take_new(), ts=t)
        assert len(pseudonymiser._known) == 50  # memory: bounded
        with sqlite3.connect(tmp_path / "j.db") as db:
            (count,) = db.execute("SELECT COUNT(*) FROM pseudonyms").fetchone()
        assert count == 100
        resolved = j.resolve("pn:" + made[-1][1])
        assert resolved is not None and resolved["value"] == made[-1][0]
        assert j.resolve(made[0][1]) is None  # the least recently seen went first
        # The shared destination host, used in every alert, stays resolvable.
        digest = policy.shape_alert(Alert("r", "M1", Severity.HIGH, (), "t", "modbus", 0, 0,
                                          dst="10.0.0.1"))
        assert digest is not None
        assert j.resolve(digest.body[12].data.hex()) is not None
    finally:
        j.close()


def test_effective_config_with_policies_dumps_and_reloads_equal(tmp_path: Path) -> None:
    generate("c", tmp_path / "k")
    path = tmp_path / "sensor.toml"
    path.write_text(f'[sensor]\nstate_dir = "{tmp_path}"\n[forward]\ncollectors = [{{endpoint = '
                    f'"tcp://127.0.0.1:9", server_key = "{tmp_path / "k" / "c.pub"}", '
                    'policy = "p"}]\n[forward.policies.p]\nseverities = ["high"]\n'
                    'precursors = ["M1", "S*"]\npseudonymise = ["ip", "unit"]\n'
                    'pseudonym_key = "keys/p.key"\nassets = false\n')
    first = cfg.load(path)
    again = tmp_path / "dumped.toml"
    again.write_text(cfg.dump(first))
    second = cfg.load(again)
    for key in ("collectors", "policies"):
        assert second.get("forward", key) == first.get("forward", key)


def test_audit_time_flags_and_missing_chain_are_one_line_errors(tmp_path: Path) -> None:
    conf = tmp_path / "sensor.toml"
    conf.write_text(f'[sensor]\nstate_dir = "{tmp_path}"\n')
    out = mamori("audit", "--config", str(conf), "--destination", "x", "--until", "soon")
    assert out.returncode == 2
    assert out.stderr.strip() == ("mamori audit: --until: 'soon' is neither a duration (24h, 7d) "
                                  "nor a date (2025-01-31, 2025-01-31T12:00)")
    out = mamori("audit", "verify", "--config", str(conf))
    assert out.returncode == 1 and "nothing forwarded yet" in out.stderr
    (tmp_path / "forward").mkdir()
    with sqlite3.connect(tmp_path / "forward" / "journal.db") as db:
        db.executescript(V1_SCHEMA)
    out = mamori("audit", "resolve", "--config", str(conf), "pn:00")
    assert out.returncode == 1 and "no audit chain yet" in out.stderr, out


def test_eviction_alert_tells_each_destination_of_its_own_stream(tmp_path: Path) -> None:
    generate("sensor", tmp_path / "keys")
    generate("c", tmp_path / "ck")
    key = str(tmp_path / "ck" / "c.pub")
    conf = cfg.load(None, {
        ("sensor", "state_dir"): str(tmp_path), ("forward", "journal_max_bytes"): 64 * 1024,
        ("forward", "collectors"): [
            {"endpoint": "tcp://127.0.0.1:9", "server_key": key},
            {"endpoint": "tcp://127.0.0.1:10", "server_key": key, "policy": "few"}],
        ("forward", "policies"): {"few": {"precursors": ["M1", "S*"]}}})
    meta: list[Alert] = []
    fw = Forwarder(conf, on_meta_alert=meta.append)
    try:
        t = time.time()
        for i in range(1, 1500):  # nobody acks: the 64 KiB journal evicts unacked rows
            fw.submit_alert(Alert("r", "M1" if i % 10 == 0 else "M3", Severity.HIGH, (),
                                  "x" * 100, "modbus", t, t, id=i,
                                  src="10.0.0.1", evidence={"pad": "y" * 100}))
        assert meta and set(meta[0].evidence["collectors"]) <= set(fw.journal.collectors)
        for collector in fw.journal.collectors:
            rows = fw.journal.pending(collector, 0, 100_000)
            kept = {(r.epoch, r.seq) for r in rows}
            told = [decode(r.frame).body for r in rows if r.kind == Kind.ALERT]
            told = [a for a in told if a.rule == EVICTION_RULE]
            assert told, collector
            for a in told:
                for epoch, first, last in a.evidence["ranges"]:
                    assert not kept & {(epoch, s) for s in range(first, last + 1)}
                    assert last <= fw.journal.last_seq(collector)  # its own stream's seqs
    finally:
        fw.close(0)


def test_rows_no_configured_collector_takes_do_not_stay_unacked(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    j = AlertJournal(path)  # no collector yet: shared rows
    j.start_epoch()
    j.append(Kind.HEALTH, {"n": 1})
    j.close()
    j = AlertJournal(path, ["a", "b"], shared=["a"])
    try:
        j.start_epoch()
        j.append_many([Outgoing(Kind.HEALTH, {"n": 2}, "", c) for c in ("a", "b")])
        assert j.stats()["unacked"] == 3  # the shared row (for a), a's and b's
        assert [r.seq for r in j.pending("b", 0, 10)] == [1]  # b: its own stream only
    finally:
        j.close()
    j = AlertJournal(path, ["b"], shared=[])  # a removed; b has a policy of its own
    try:
        assert j.stats()["unacked"] == 1 and j.pending("b", 0, 10)[0].collector == "b"
        j.ack("b", 2, 1)
        assert j.stats()["unacked"] == 0  # close() has nothing to wait for
    finally:
        j.close()
    j = AlertJournal(path, ["a"])  # a configured again: what is left still reaches it
    try:
        assert [(r.epoch, r.seq) for r in j.pending("a", 0, 10)] == [(1, 1), (2, 1)]
    finally:
        j.close()


def test_a_named_policy_stream_backlog_of_an_earlier_epoch_arrives_whole(
        tmp_path: Path) -> None:
    """Issue 12's stall, on a destination with its own policy and so its own stream:
    a backlog of 50 send windows journaled while the collector was away, by a run
    that ended, is delivered whole by the next run, once, in order."""
    site = Site(tmp_path)
    conf = site.sensor_confs[0]
    conf.write_text(conf.read_text().split("collectors =")[0] + f"""window = 20
[[forward.collectors]]
endpoint = "{site.endpoint}"
server_key = "{site.coll_dir / 'keys' / 'collector.pub'}"
policy = "serious"

[forward.policies.serious]
severities = ["high", "critical"]
""")
    backlog = 1000  # alerts: 50 windows of 20
    site.sensor(conf, backlog, 0.0, 0.5).communicate(timeout=60)  # nobody listening
    site.start_collector()
    try:
        site.sensor(conf, 1, 0.0, 60.0).communicate(timeout=90)
        seqs = alert_seqs(site, "s0")
    finally:
        site.stop_collector()
    first = [s for e, s in seqs if e == 1]
    assert len(first) == backlog and first == sorted(set(first))
    assert first == list(range(first[0], first[0] + backlog))  # no gap
    assert [e for e, _ in seqs].count(2) == 1
