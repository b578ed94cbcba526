"""The Prometheus endpoint (``[metrics] listen``), scraped over HTTP like Prometheus does.

The end-to-end test runs ``mamori run`` on a SPAN port in network namespaces
(``tests/netns.py``) and ``mamori collect`` beside it, replays two public captures
onto the wire, and scrapes both processes with urllib, parsing the text with
prometheus_client's own parser. The values must equal the oracles: tshark's count
and byte sum of the replayed frames on the sensor's ports, the store's alerts by
precursor and severity, the journal's rows while the collector is down (then 0),
the collector's stored messages by kind.

The others check the binding rules (loopback by default, a capture interface's
address refused, the management interface required for anything else), the
configuration errors, the endpoint's limits, and the web page's ``/metrics`` route,
which needs no token while the rest of the page still does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.core import CollectorRegistry, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from mamori.parsers.alerts import Severity
from mamori.parsers.wire import Kind
from mamori.sensor import config as cfg
from mamori.sensor.daemon import run as daemon
from mamori.sensor.metrics.sensor_metrics import SensorMetrics
from mamori.sensor.metrics.server import (
    MAX_CONNECTIONS,
    EndpointStats,
    MetricsServer,
    MetricsSetupError,
    checked_address,
    new_registry,
)
from mamori.sensor.metrics.settings import ListenAddress, parse_listen
from tests.conftest import corpus_path, require_tool, stop_all, unavailable
from tests.netns import SpanLab, lab_or_skip
from tests.ports import free_port

MAMORI = str(Path(sys.executable).parent / "mamori")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def by_label(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        # the Prometheus text format: 0.0.4 from Debian's prometheus_client 0.16, 1.0.0
        # (the same format, renamed) from the newer releases a venv installs
        assert resp.headers["Content-Type"].startswith(
            ("text/plain; version=0.0.4", "text/plain; version=1.0.0"))
        return parse(resp.read().decode())


def wait_for(what: str, predicate: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


# -- configuration and binding ---------------------------------------------------------


def test_listen_is_validated_at_load_with_file_line_and_key(tmp_path: Path) -> None:
    assert parse_listen("127.0.0.1:9470") == ListenAddress("127.0.0.1", 9470)
    assert str(parse_listen("[::1]:0")) == "[::1]:0"
    conf = tmp_path / "sensor.toml"
    for bad, why in (("localhost:9470", "not an IP address"), ("127.0.0.1", "ADDRESS:PORT"),
                     ("::1:9470", "brackets"), ("127.0.0.1:65536", "not a port number"),
                     ("127.0.0.1:-1", "not a port number"), ("127.0.0.1:\uff19", "port")):
        conf.write_text(f'[sensor]\nname = "x"\n\n[metrics]\nlisten = "{bad}"\n')
        out = subprocess.run([MAMORI, "check-config", "--config", str(conf)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2, out
        assert f"{conf}:5: [metrics] listen:" in out.stderr and why in out.stderr, out.stderr
    conf.write_text("[metrics]\nlisten = 9470\n")
    out = subprocess.run([MAMORI, "check-config", "--config", str(conf)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and f"{conf}:2: [metrics] listen:" in out.stderr, out.stderr


def _no_addresses(name: str) -> list[str]:
    return []


def _conf(tmp_path: Path, **values: object) -> cfg.Config:
    return cfg.load(None, {("sensor", "state_dir"): str(tmp_path), **{
        _option(k): v for k, v in values.items()}})


def _option(keyword: str) -> tuple[str, str]:
    """``section__name`` (a keyword argument) as the (section, name) of an option."""
    section, name = keyword.split("__")
    return section, name


def test_binding_follows_the_web_page_rules(tmp_path: Path) -> None:
    """Loopback by default; the wildcard or another address only with a management
    interface (and then only its addresses); a capture interface's address never."""
    assert checked_address(_conf(tmp_path)) is None  # off by default
    loop = _conf(tmp_path, metrics__listen="127.0.0.1:0")
    assert checked_address(loop) == ListenAddress("127.0.0.1", 0)
    with pytest.raises(MetricsSetupError, match=r"\[metrics\] listen 0.0.0.0 is not loopback"
                       r": set \[metrics\] management_interface"):
        checked_address(_conf(tmp_path, metrics__listen="0.0.0.0:0"), _no_addresses)
    mgmt = _conf(tmp_path, metrics__listen="192.0.2.10:9470",
                 metrics__management_interface="mgmt0", capture__interfaces=["eth1"])
    assert checked_address(mgmt, lambda n: ["192.0.2.10/24"] if n == "mgmt0" else []) \
        == ListenAddress("192.0.2.10", 9470)
    with pytest.raises(MetricsSetupError, match="not an address of management interface"):
        checked_address(mgmt, _no_addresses)
    with pytest.raises(MetricsSetupError, match="capture interface eth1"):
        checked_address(mgmt, lambda n: ["192.0.2.10/24"])
    same = _conf(tmp_path, metrics__listen="[::1]:0", metrics__management_interface="eth1",
                 capture__interfaces=["eth1"])
    with pytest.raises(MetricsSetupError, match="management_interface eth1 is a capture"):
        checked_address(same, _no_addresses)


@pytest.mark.skipif(os.geteuid() != 0, reason="reading lo's addresses as the daemon does")
def test_run_refuses_a_capture_interface_address(tmp_path: Path) -> None:
    """A real ``mamori run`` capturing on lo refuses to serve metrics on lo's address,
    before any capture socket is opened."""
    conf = tmp_path / "sensor.toml"
    conf.write_text(f'[sensor]\nstate_dir = "{tmp_path}"\n[capture]\ninterfaces = ["lo"]\n'
                    f'[metrics]\nlisten = "127.0.0.1:{free_port()}"\n')
    out = subprocess.run([MAMORI, "run", "--config", str(conf)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2, out
    assert "[metrics] listen 127.0.0.1 is an address of capture interface lo" in out.stderr


def test_run_refuses_a_port_in_use_and_stops_cleanly(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        conf = _conf(tmp_path, metrics__listen=f"127.0.0.1:{port}")
        with pytest.raises(daemon.StartupError, match=rf"metrics: \[metrics\] listen: cannot "
                           rf"listen on 127.0.0.1:{port}: Address already in use"):
            daemon.build_sensor(conf, None)
    sensor = daemon.build_sensor(conf, None)  # free again: it starts, and stops
    try:
        assert sensor.metrics is not None and sensor.metrics.address.port == port
        samples = scrape(sensor.metrics.url)
        assert value(samples, "mamori_flows") == 0
        assert value(samples, "mamori_store_bytes") == os.path.getsize(
            tmp_path / "mamori.db") + _wal(tmp_path / "mamori.db")
    finally:
        sensor.shutdown()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)


def _wal(db: Path) -> int:
    wal = db.with_name(db.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


# -- the endpoint itself ----------------------------------------------------------------


class Fixed:
    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("mamori_test_value", "a fixed value", value=42)


@pytest.fixture
def endpoint() -> Iterator[MetricsServer]:
    stats = EndpointStats()
    server = MetricsServer(new_registry([Fixed(), stats]), ListenAddress("127.0.0.1", 0),
                           stats)
    try:
        yield server
    finally:
        server.close()


def test_endpoint_serves_only_get_metrics(endpoint: MetricsServer) -> None:
    samples = scrape(endpoint.url)
    assert value(samples, "mamori_test_value") == 42
    assert value(samples, "process_open_fds") is not None  # the process's own metrics
    base = endpoint.url.removesuffix("/metrics")
    for path in ("/", "/metrics/x", "/favicon.ico"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + path, timeout=10)
        assert err.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(urllib.request.Request(endpoint.url, data=b"x"), timeout=10)
    assert err.value.code == 405


def test_endpoint_refuses_connections_past_its_limit(endpoint: MetricsServer) -> None:
    """MAX_CONNECTIONS idle connections hold every slot: the next ones are closed at
    once (counted), and once those go the endpoint answers again."""
    host, port = endpoint.address.host, endpoint.address.port
    idle = [socket.create_connection((host, port), timeout=10)
            for _ in range(MAX_CONNECTIONS)]
    try:
        wait_for("the idle connections to be accepted", lambda: endpoint._server._slots
                 ._value == 0, timeout=10)
        for _ in range(3):
            with socket.create_connection((host, port), timeout=10) as extra:
                extra.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
                assert extra.recv(100) == b""  # closed unserved
    finally:
        for sock in idle:
            sock.close()
    wait_for("a free slot", lambda: endpoint._server._slots._value > 0,
             timeout=10)
    samples = scrape(endpoint.url)
    assert value(samples, "mamori_metrics_refused_connections_total") == 3


def test_an_idle_connection_is_closed_after_the_timeout(
        monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    """A connection that never sends its request gives its slot back after the
    timeout (shortened here from TIMEOUT_SECONDS), so idle clients cannot keep the
    endpoint full for good."""
    from mamori.sensor.metrics import server as metrics_server

    monkeypatch.setattr(metrics_server._Quiet, "timeout", 0.5)
    stats = EndpointStats()
    endpoint = MetricsServer(new_registry([Fixed(), stats]), ListenAddress("127.0.0.1", 0),
                             stats)
    try:
        idle = [socket.create_connection((endpoint.address.host, endpoint.address.port),
                                         timeout=10) for _ in range(MAX_CONNECTIONS)]
        for sock in idle:
            sock.sendall(b"GET /metr")  # half a request line, never finished
        for sock in idle:
            assert sock.recv(100) == b""  # closed by the server, not by us
            sock.close()
        samples = scrape(endpoint.url)
        assert value(samples, "mamori_test_value") == 42
        assert value(samples, "mamori_metrics_failed_connections_total") == MAX_CONNECTIONS
        assert value(samples, "mamori_metrics_refused_connections_total") == 0
    finally:
        endpoint.close()
    assert "Traceback" not in capfd.readouterr().err  # counted, not printed


def test_a_failing_part_is_counted_and_the_rest_answers(tmp_path: Path) -> None:
    """No store file (stand-alone, before the sensor ever ran): the store part is left
    out and counted, the scrape itself succeeds."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SensorMetrics(None, tmp_path / "absent.db"))
    from prometheus_client import generate_latest

    for n in (1, 2):
        samples = parse(generate_latest(registry).decode())
        assert value(samples, "mamori_metrics_errors_total", part="store") == n
        assert value(samples, "mamori_store_bytes") is None


# -- the web page's /metrics -----------------------------------------------------------


def test_web_page_metrics_need_no_token_but_the_page_does(tmp_path: Path) -> None:
    from mamori.sensor.web.auth import create_token_file
    from mamori.sensor.web.server import daemon_starter

    create_token_file(tmp_path / "web" / "token")
    conf = cfg.load(None, {("sensor", "state_dir"): str(tmp_path), ("web", "port"): 0})
    sensor = daemon.build_sensor(conf, None, web=daemon_starter(conf))
    try:
        assert sensor.metrics is None  # the page's route, not [metrics] listen
        samples = scrape(sensor.web.url + "metrics")
        assert value(samples, "mamori_packets_total") == 0
        assert by_label(samples, "mamori_events_total") == {}  # counted, none yet
        assert value(samples, "mamori_metrics_errors_total", part="store") == 0
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(sensor.web.url + "api/health", timeout=10)
        assert refused.value.code == 401
        for page in ("alerts", "health"):  # to the login form
            with urllib.request.urlopen(sensor.web.url + page, timeout=10) as resp:
                assert resp.url == sensor.web.url + "login"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(sensor.web.url + "metrics",
                                                          data=b"x"), timeout=10)
        assert refused.value.code == 405
    finally:
        sensor.shutdown()


# -- end to end: the daemon and the collector, scraped ------------------------------


SCRAPE = ("import sys, urllib.request\n"
          "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())")
PORTS_FILTER = "tcp.port in {502, 20000} or udp.port in {502, 20000}"


@pytest.fixture
def lab() -> Iterator[SpanLab]:
    with lab_or_skip("mmmet") as span:
        yield span


def _tshark_frames(capture: Path) -> list[int]:
    """The captured length of each frame on the sensor's ports, per tshark."""
    out = subprocess.run([require_tool("tshark"), "-r", str(capture), "-Y", PORTS_FILTER,
                          "-T", "fields", "-e", "frame.cap_len"], capture_output=True,
                         text=True, check=True, timeout=120)
    return [int(line) for line in out.stdout.split()]


def _store_alerts(db: Path) -> dict[frozenset[tuple[str, str]], float]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT precursor, severity, COUNT(*) FROM alerts "
                            "GROUP BY precursor, severity").fetchall()
    finally:
        conn.close()
    return {frozenset({("precursor", p), ("severity", Severity(s).label)}): float(n)
            for p, s, n in rows}


def _rows(db: Path, sql: str) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


def _keys(base: Path) -> None:
    for who in ("collector", "sensor"):
        subprocess.run([MAMORI, "keys", "generate", who, "--dir", str(base / who / "keys")],
                       check=True, capture_output=True, timeout=60)
    allow = base / "collector" / "keys" / "sensors"
    allow.mkdir(parents=True)
    shutil.copy(base / "sensor" / "keys" / "sensor.pub", allow / "sensor.pub")


def test_sensor_and_collector_metrics_equal_the_oracles(lab: SpanLab, tmp_path: Path) -> None:
    base = tmp_path
    _keys(base)
    sensor_port, collector_port, metrics_port = 9471, 9472, 7791
    endpoint = f"tcp://127.0.0.1:{metrics_port}"
    (base / "collector.toml").write_text(
        f'[sensor]\nstate_dir = "{base}/collector"\n\n'
        f'[collect]\nlisten = ["{endpoint}"]\npublish = ""\n\n'
        f'[metrics]\nlisten = "127.0.0.1:{collector_port}"\n')
    (base / "sensor.toml").write_text(
        f'[sensor]\nstate_dir = "{base}/sensor"\n\n'
        f'[capture]\ninterfaces = ["cap0"]\nring_mb = 8\n\n'
        f'[health]\nstats_interval = 1.0\n\n'
        f'[forward]\ncollectors = [{{ endpoint = "{endpoint}", '
        f'server_key = "{base}/collector/keys/collector.pub" }}]\nheartbeat_interval = 1.0\n\n'
        f'[metrics]\nlisten = "127.0.0.1:{sensor_port}"\n')
    store = base / "sensor" / "mamori.db"
    journal = base / "sensor" / "forward" / "journal.db"
    collector_db = base / "collector" / "collector" / "collector.db"

    def sensor_metrics() -> Samples:
        out = lab.ns(lab.sensor, sys.executable, "-c", SCRAPE,
                     f"http://127.0.0.1:{sensor_port}/metrics")
        return parse(out.stdout)

    def collector_metrics() -> Samples:
        out = lab.ns(lab.sensor, sys.executable, "-c", SCRAPE,
                     f"http://127.0.0.1:{collector_port}/metrics")
        return parse(out.stdout)

    captures = [lab.rewrite(corpus_path("suricata-verify/tests/modbus/modbus.pcap"),
                            base / "modbus.pcap"),
                lab.rewrite(corpus_path(
                    "ICS-Security-Tools/pcaps/dnp3/cold_restart_and_response.pcap"),
                    base / "dnp3.pcap")]
    frames = [n for capture in captures for n in _tshark_frames(capture)]
    assert len(frames) > 20
    procs: list[subprocess.Popen[str]] = []
    try:
        sensor = lab.popen(lab.sensor, [MAMORI, "run", "--config", str(base / "sensor.toml")],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(sensor)

        def up() -> bool:
            assert sensor.poll() is None, sensor.communicate()[0]
            try:
                return value(sensor_metrics(), "mamori_flows") is not None
            except subprocess.CalledProcessError:
                return False
        wait_for("the sensor's metrics endpoint", up, 30)
        for capture in captures:
            lab.ns(lab.tap, "tcpreplay", "-q", "-i", "gen0", "--pps=500", str(capture),
                   timeout=120)

        # Packets and bytes per interface: what tshark counts on the sensor's ports.
        wait_for("every replayed frame", lambda: value(
            sensor_metrics(), "mamori_capture_frames_total", interface="cap0") == len(frames))
        samples = sensor_metrics()
        assert value(samples, "mamori_capture_bytes_total", interface="cap0") == sum(frames)
        assert value(samples, "mamori_packets_total") == len(frames)
        assert value(samples, "mamori_packet_bytes_total") == sum(frames)
        assert value(samples, "mamori_capture_kernel_dropped_total", interface="cap0") == 0
        wait_for("the kernel counters' read", lambda: value(
            sensor_metrics(), "mamori_capture_kernel_received_total",
            interface="cap0") == len(frames), 10)
        events = by_label(samples, "mamori_events_total")
        assert events[frozenset({("kind", "ModbusRequest")})] > 0
        assert any("DNP3" in dict(k)["kind"] for k in events), events
        assert (value(samples, "mamori_flows_created_total") or 0) >= 2  # Modbus, DNP3
        assert value(samples, "mamori_detection_events_total") == sum(events.values())

        # Alerts by kind: the store's, once they are all written (D1 from the DNP3 one,
        # the last capture: on a loaded machine the Modbus alerts can be stored and
        # counted a tick before it, so the wait is for D1 too, not for the first match).
        def settled() -> bool:
            first = by_label(sensor_metrics(), "mamori_store_alerts")
            stored = _store_alerts(store)
            return any(dict(k)["precursor"] == "D1" for k in stored) and \
                first == stored == by_label(sensor_metrics(), "mamori_store_alerts")
        wait_for("the store's alerts in the metrics", settled)
        alerts = _store_alerts(store)
        assert any(dict(k)["precursor"] == "D1" for k in alerts), alerts

        # The collector is down: the backlog is every journaled row (none acknowledged).
        def backlog_is_journal() -> bool:
            got = value(sensor_metrics(), "mamori_forward_backlog_messages", collector=endpoint)
            return got == _rows(journal, "SELECT COUNT(*) FROM messages") == value(
                sensor_metrics(), "mamori_forward_backlog_messages", collector=endpoint)
        wait_for("the backlog to settle", backlog_is_journal)
        samples = sensor_metrics()
        pending = value(samples, "mamori_forward_backlog_messages", collector=endpoint)
        assert pending is not None and pending > len(alerts)  # alerts, start, assets
        assert value(samples, "mamori_forward_connected", collector=endpoint) == 0

        collector = lab.popen(lab.sensor, [MAMORI, "collect", "--config",
                                           str(base / "collector.toml"), "--duration", "300"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(collector)
        wait_for("the backlog to drain", lambda: value(
            sensor_metrics(), "mamori_forward_backlog_messages", collector=endpoint) == 0)
        assert _rows(journal, "SELECT COUNT(*) FROM messages WHERE acked = 0") == 0
        assert value(sensor_metrics(), "mamori_forward_connected", collector=endpoint) == 1

        # The collector's counters: what its store holds, by kind.
        stored = _rows(collector_db, "SELECT COUNT(*) FROM messages")
        assert stored >= pending
        got = collector_metrics()
        assert value(got, "mamori_collector_accepted_total") == stored
        for kind in (Kind.ALERT, Kind.HEALTH, Kind.ASSET):
            assert value(got, "mamori_collector_messages_total", kind=kind.name.lower()) == \
                _rows(collector_db, f"SELECT COUNT(*) FROM messages WHERE kind = {int(kind)}")
        assert value(got, "mamori_collector_messages_total", kind="alert") == _rows(
            journal, f"SELECT COUNT(*) FROM messages WHERE kind = {int(Kind.ALERT)}")
        assert value(got, "mamori_collector_sensor_keys") == 1
        assert value(got, "mamori_collector_sensors_seen") == 1
        assert value(got, "mamori_collector_store_bytes") == \
            os.path.getsize(collector_db) + _wal(collector_db)
        assert by_label(got, "mamori_collector_rejected_total") == {}

        assert lab.counter("tx_packets") == 0  # the tap stayed silent throughout
        sensor.terminate()
        out, _ = sensor.communicate(timeout=30)
        assert sensor.returncode == 0, out
    finally:
        stop_all(procs)


DEBIAN_SCRAPE = """
import json, sys, urllib.request
from pathlib import Path
from prometheus_client.parser import text_string_to_metric_families
from mamori.sensor.daemon import run as daemon
from mamori.sensor import config as cfg
from mamori.sensor.web.server import daemon_starter
tmp = Path(sys.argv[1])
conf = cfg.load(None, {("sensor", "state_dir"): str(tmp), ("web", "port"): 0,
                       ("metrics", "listen"): "127.0.0.1:0"})
sensor = daemon.build_sensor(conf, None, web=daemon_starter(conf))
try:
    out = {}
    for url in (sensor.metrics.url, sensor.web.url + "metrics"):
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        out[url] = sorted({s.name for f in text_string_to_metric_families(text)
                           for s in f.samples})
finally:
    sensor.shutdown()
import prometheus_client
print(json.dumps({"version": prometheus_client.__file__, "names": list(out.values())}))
"""


@pytest.mark.parametrize("which", ["current", "debian"])
def test_the_endpoint_runs_on_debians_prometheus_client(which: str, tmp_path: Path) -> None:
    """bookworm's python3-prometheus-client 0.16.0 (what the package depends on) serves
    both endpoints, with the same metric names as the pip-installed library."""
    from mamori.sensor.web.auth import create_token_file
    from tests.web.conftest import current_python, debian_python

    python = debian_python() if which == "debian" else current_python()
    create_token_file(tmp_path / "web" / "token")
    done = subprocess.run([python.python, "-c", DEBIAN_SCRAPE, str(tmp_path)], env=python.env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    listen, page = result["names"]
    assert set(listen) - set(page) == {"mamori_metrics_refused_connections_total",
                                       "mamori_metrics_failed_connections_total"}
    assert {"mamori_packets_total", "mamori_store_bytes", "mamori_flows",
            "mamori_metrics_errors_total", "process_open_fds"} <= set(listen)
    if which == "debian":
        assert result["version"].startswith("/usr/lib/python3/dist-packages/")


@pytest.mark.skipif(os.geteuid() != 0, reason="drops privileges: needs root")
def test_scrapes_answer_after_the_drop_from_a_tree_only_root_can_read(
        tmp_path: Path) -> None:
    """The daemon as root from a 0700 tree, dropping to nobody (tests/sensor/
    test_privdrop.py): both endpoints still answer, with every part read, after the
    drop, when the installation can no longer be read."""
    from tests.sensor import test_privdrop as priv

    made = priv._sh("ip", "link", "add", priv.IFACE, "type", "veth", "peer", "name",
                    f"{priv.IFACE}p")
    if made.returncode != 0:
        unavailable(f"cannot create a veth pair: {made.stderr.strip()}")
    public = Path(tempfile.mkdtemp(prefix="mamori-metrics-", dir="/tmp"))
    os.chmod(public, 0o755)
    private = tmp_path / "home"
    private.mkdir(mode=0o700)
    proc = None
    try:
        priv._sh("ip", "link", "set", priv.IFACE, "up")
        config, web_port, _token = priv._site(public)
        metrics_port = free_port()
        with config.open("a", encoding="utf-8") as f:
            f.write(f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n')
        proc = priv._start(config, private)
        priv._wait_listening(web_port, proc)

        def dropped() -> bool:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            return "\nUid:\t65534\t" in status
        wait_for("the switch to nobody", dropped, 15)
        for url in (f"http://127.0.0.1:{metrics_port}/metrics",
                    f"http://127.0.0.1:{web_port}/metrics"):
            samples = scrape(url)
            errors = by_label(samples, "mamori_metrics_errors_total")
            assert errors and not any(errors.values()), (url, errors)
            assert sum(by_label(samples, "mamori_store_alerts").values()) > 0, url
            assert value(samples, "mamori_capture_frames_total", interface=priv.IFACE) == 0
            assert (value(samples, "process_open_fds") or 0) > 0
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "Traceback" not in err and "WARNING mamori.metrics" not in err, err
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.communicate()
        priv._sh("ip", "link", "del", priv.IFACE)
        shutil.rmtree(public, ignore_errors=True)


def test_collect_refuses_a_bad_metrics_address_and_a_port_in_use(tmp_path: Path) -> None:
    """``mamori collect`` says which key is wrong and exits 2, before or right after it
    binds; with a free port it serves, and stops with it."""
    subprocess.run([MAMORI, "keys", "generate", "collector", "--dir", str(tmp_path / "keys")],
                   check=True, capture_output=True, timeout=60)
    (tmp_path / "keys" / "sensors").mkdir()
    conf = tmp_path / "collector.toml"

    def collect(listen: str, *extra: str) -> subprocess.CompletedProcess[str]:
        conf.write_text(f'[sensor]\nstate_dir = "{tmp_path}"\n[collect]\n'
                        f'listen = ["tcp://127.0.0.1:{free_port()}"]\npublish = ""\n'
                        f'[metrics]\nlisten = "{listen}"\n')
        return subprocess.run([MAMORI, "collect", "--config", str(conf), *extra],
                              capture_output=True, text=True, timeout=60)

    out = collect("0.0.0.0:0", "--duration", "1")
    assert out.returncode == 2 and "mamori collect: [metrics] listen 0.0.0.0 is not " \
        "loopback: set [metrics] management_interface" in out.stderr, out.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        out = collect(f"127.0.0.1:{port}", "--duration", "1")
    assert out.returncode == 2, out
    assert f"mamori collect: [metrics] listen: cannot listen on 127.0.0.1:{port}: " \
        "Address already in use" in out.stderr, out.stderr
    port = free_port()
    conf.write_text(conf.read_text().replace("[metrics]\n", "[metrics]\n#"))  # off
    proc = subprocess.Popen([MAMORI, "collect", "--config", str(conf), "--duration", "30",
                             "--metrics-listen", f"127.0.0.1:{port}"],
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for("the collector's endpoint", lambda: _answers(port), 30)
        samples = scrape(f"http://127.0.0.1:{port}/metrics")
        assert value(samples, "mamori_collector_accepted_total") == 0
        assert value(samples, "mamori_collector_messages_total", kind="alert") == 0
        assert value(samples, "mamori_collector_sensor_keys") == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)


def _answers(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_backlog_counts_what_pending_returns_for_shared_and_own_streams(
        tmp_path: Path) -> None:
    """Two shared-policy collectors and one with its own policy (own rows only), over
    two epochs, partly acknowledged: the backlog of each is what ``pending`` lists,
    on the journal's connection and on a read-only one of the metrics endpoint."""
    from mamori.sensor.forwarding.journal import AlertJournal, Outgoing, count_backlog
    from mamori.sensor.metrics.sensor_metrics import read_only

    a, b, own = "tcp://a:1", "tcp://b:1", "tcp://own:1"
    journal = AlertJournal(tmp_path / "journal.db", [a, b, own], shared=[a, b])
    try:
        for epoch_round in range(2):
            journal.start_epoch()
            journal.append_many([Outgoing(Kind.ALERT, {"n": i}) for i in range(7)])
            journal.append_many([Outgoing(Kind.ALERT, {"n": i}, collector=own)
                                 for i in range(5)])
            if epoch_round == 0:
                journal.ack(a, journal.epoch, 7)  # a has all of the first epoch
                journal.ack(b, journal.epoch, 3)
                journal.ack(own, journal.epoch, 4)
        journal.ack(a, journal.epoch, 2)
        expected = {a: 5, b: 4 + 7, own: 1 + 5}
        db = read_only(journal.path)
        try:
            for collector, n in expected.items():
                assert len(journal.pending(collector, 0, 1000)) == n
                assert journal.backlog(collector) == n
                assert count_backlog(db, collector, journal.takes_shared(collector)) == n
        finally:
            db.close()
    finally:
        journal.close()
