"""The live daemon on loopback: kernel filter, no duplicates, sd_notify, signals, bad config.

These run ``mamori run`` as a real process on ``lo`` (root is needed for a packet
socket; the suite runs as root in CI) and talk to it the way systemd does: a
NOTIFY_SOCKET the test binds, WATCHDOG_USEC, SIGHUP and SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mamori.parsers.events import Event
from mamori.sensor.capture.bpf import port_filter, render
from mamori.sensor.capture.live import LiveCapture
from tests.ports import free_port

MAMORI = str(Path(sys.executable).parent / "mamori")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="packet sockets need root")


def test_filter_program_is_well_formed() -> None:
    """The layout and instruction set; tests/sensor/test_bpf.py checks what it does."""
    program = port_filter({502, 20000})
    assert program[-1] == (0x06, 0, 0, 262144)  # accept (a user filter would follow)
    assert (0x06, 0, 0, 0) in program  # drop
    for code, jt, jf, _ in program:
        assert 0 <= jt <= 255 and 0 <= jf <= 255
        assert code in {0x00, 0x01, 0x02, 0x60, 0x28, 0x30, 0x48, 0x50, 0x04, 0x0C, 0x54,
                        0x64, 0x07, 0x87, 0x05, 0x15, 0x25, 0x35, 0x45, 0x06}
    assert "0x000001f6" in render(program)  # 502
    with pytest.raises(ValueError):
        port_filter(set())


@needs_root
def test_loopback_capture_filters_ports_and_sees_each_frame_once() -> None:
    wanted, other = free_port(), free_port()
    cap = LiveCapture("lo", frozenset({wanted}), block_size=1 << 16, block_count=4,
                      block_timeout_ms=10)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s4, \
                socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s6:
            for i in range(5):
                s4.sendto(b"v4-%d" % i, ("127.0.0.1", wanted))
                s4.sendto(b"no", ("127.0.0.1", other))
            s6.sendto(b"v6", ("::1", wanted))
            s6.sendto(b"no", ("::1", other))
        frames: list[tuple[float, int, bytes, int]] = []
        deadline = time.monotonic() + 3
        while len(frames) < 6 and time.monotonic() < deadline:
            frames.extend(cap.read(100))
        payloads = sorted(f[2][-4:] for f in frames)
        assert len(frames) == 6, payloads  # one copy each, nothing for the other port
        assert not any(p.endswith(b"no") for p in payloads)
        assert all(abs(f[0] - time.time()) < 10 for f in frames)  # kernel timestamps
        stats = cap.stats()
        assert stats.received >= 6 and stats.dropped == 0
    finally:
        cap.close()


class NotifySocket:
    """What systemd does for a Type=notify service: a datagram socket it reads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def wait_for(self, needle: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(needle in m for m in self.messages):
                return True
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
        return any(needle in m for m in self.messages)

    def close(self) -> None:
        self.sock.close()


class Daemon:
    """``mamori run`` as systemd runs it: a NOTIFY_SOCKET, then SIGHUP and SIGTERM."""

    def __init__(self, tmp_path: Path, config: str, **env: str) -> None:
        self.config = tmp_path / "sensor.toml"
        self.config.write_text(config)
        self.events = tmp_path / "events.jsonl"
        self.notify = NotifySocket(tmp_path / "notify")
        self.proc = subprocess.Popen(
            [MAMORI, "run", "--config", str(self.config), "--events", str(self.events)],
            env=dict(os.environ, NOTIFY_SOCKET=str(self.notify.path), **env),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def __enter__(self) -> Daemon:
        assert self.notify.wait_for("READY=1", 15), self.notify.messages
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
        self.notify.close()

    def stop(self) -> None:
        """SIGTERM after the last frames are read; it must exit 0."""
        time.sleep(0.5)
        self.proc.send_signal(signal.SIGTERM)
        _out, err = self.proc.communicate(timeout=15)
        assert self.proc.returncode == 0, err

    def modbus_events(self) -> list[dict[str, object]]:
        rows = [json.loads(line) for line in self.events.read_text().splitlines()]
        return [r for r in rows if r["proto"] == "modbus"]


def _modbus_exchange(port: int, source: str = "127.0.0.1") -> None:
    """One Read Holding Registers request and its response, client bound to ``source``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the last one's TIME_WAIT
        server.bind(("127.0.0.1", port))
        server.listen(1)
        with socket.create_connection(("127.0.0.1", port), source_address=(source, 0)) as client:
            peer, _ = server.accept()
            with peer:
                client.sendall(bytes.fromhex("000100000006010300000002"))
                peer.recv(100)
                peer.sendall(bytes.fromhex("000100000007010304000a000b"))
                client.recv(100)


@needs_root
def test_daemon_notifies_systemd_reloads_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    good = f'[capture]\ninterfaces = ["lo"]\n\n[ports]\nmodbus = [{port}]\n'
    with Daemon(tmp_path, good, WATCHDOG_USEC="400000") as daemon:
        notify = daemon.notify
        assert notify.wait_for("WATCHDOG=1", 5), notify.messages
        _modbus_exchange(port)  # real Modbus traffic on the configured port
        # A broken config on reload is refused; the daemon keeps running.
        daemon.config.write_text("[ports]\nmodbus = [0]\n")
        daemon.proc.send_signal(signal.SIGHUP)
        assert notify.wait_for("reload refused", 5), notify.messages
        assert daemon.proc.poll() is None
        daemon.config.write_text(good)
        daemon.proc.send_signal(signal.SIGHUP)
        assert notify.wait_for("configuration reloaded", 5), notify.messages
        daemon.stop()
        assert notify.wait_for("STOPPING=1", 2), notify.messages
    rows = daemon.modbus_events()
    assert [(r["type"], r["fc"]) for r in rows] == [("request", 3), ("response", 3)], rows


@needs_root
def test_sighup_reopens_the_events_file_after_logrotate_moved_it(tmp_path: Path) -> None:
    port = free_port()
    with Daemon(tmp_path, f'[capture]\ninterfaces = ["lo"]\n\n[ports]\nmodbus = [{port}]\n'
                ) as daemon:
        _modbus_exchange(port)
        deadline = time.monotonic() + 10
        while len(daemon.modbus_events()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        rotated = daemon.events.with_name("events.jsonl.1")
        daemon.events.rename(rotated)  # what logrotate does, then it sends SIGHUP
        daemon.proc.send_signal(signal.SIGHUP)
        assert daemon.notify.wait_for("configuration reloaded", 5), daemon.notify.messages
        assert daemon.events.exists()  # reopened at the same path
        _modbus_exchange(port)
        daemon.stop()
    old = [json.loads(line) for line in rotated.read_text().splitlines()]
    assert [(r["type"], r["fc"]) for r in old if r["proto"] == "modbus"] == \
        [("request", 3), ("response", 3)]
    new = daemon.modbus_events()
    assert [(r["type"], r["fc"]) for r in new] == [("request", 3), ("response", 3)], new


@needs_root
def test_sighup_reopens_the_eve_output_after_logrotate_moved_it(tmp_path: Path) -> None:
    eve = tmp_path / "eve.json"
    with Daemon(tmp_path, f'[sensor]\nstate_dir = "{tmp_path}"\n[capture]\n'
                f'interfaces = ["lo"]\n[output]\neve = "{eve}"\n') as daemon:
        assert eve.exists()
        eve.rename(tmp_path / "eve.json.1")
        daemon.proc.send_signal(signal.SIGHUP)
        assert daemon.notify.wait_for("configuration reloaded", 5), daemon.notify.messages
        assert eve.exists()  # reopened at the same path
        daemon.stop()


@needs_root
def test_daemon_applies_the_configured_capture_filter(tmp_path: Path) -> None:
    """``[capture] filter`` reaches the kernel: a host it excludes yields no event."""
    port = free_port()
    with Daemon(tmp_path, f'[capture]\ninterfaces = ["lo"]\nfilter = "not host 127.0.0.2"\n'
                          f'\n[ports]\nmodbus = [{port}]\n') as daemon:
        _modbus_exchange(port, "127.0.0.2")  # filtered out
        _modbus_exchange(port, "127.0.0.1")
        daemon.stop()
    rows = daemon.modbus_events()
    assert {r["src"] for r in rows} == {"127.0.0.1"} and len(rows) == 2, rows


def test_bad_config_names_file_line_and_key(tmp_path: Path) -> None:
    config = tmp_path / "sensor.toml"
    config.write_text('[capture]\ninterfaces = ["lo"]\n\n[ports]\nmodbsu = [502]\n')
    result = subprocess.run([MAMORI, "run", "--config", str(config)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2
    assert f"{config}:5: [ports] modbsu: unknown key" in result.stderr
    check = subprocess.run([MAMORI, "check-config", "--config", str(config)],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 2 and "modbsu" in check.stderr


def test_missing_interface_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "sensor.toml"
    config.write_text('[capture]\ninterfaces = ["mamori-nope0"]\n')
    result = subprocess.run([MAMORI, "run", "--config", str(config)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 1
    assert "mamori-nope0" in result.stderr


def test_an_events_file_that_fills_up_is_reported_once_and_abandoned(
        caplog: pytest.LogCaptureFixture) -> None:
    """/dev/full refuses every write: one error naming it, then the daemon goes on."""
    from mamori.parsers.pipeline import PipelineConfig
    from mamori.sensor.capture.replay import replay_files
    from mamori.sensor.daemon.run import EventFile
    from tests.conftest import PROJECT

    events: list[Event] = []
    replay_files([PROJECT / "samples" / "modbus_demo.pcap"], PipelineConfig(),
                 extra_sinks=[events.extend])
    assert events
    out = EventFile(Path("/dev/full"))
    with caplog.at_level("ERROR", logger="mamori.daemon"):
        for start in range(0, len(events), 10):
            out.consume(events[start:start + 10])  # never raises
        out.close()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1, errors
    assert errors[0].startswith("--events /dev/full: cannot write: No space left on device")
