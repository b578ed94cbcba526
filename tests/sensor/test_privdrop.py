"""``mamori run`` from an installation tree only root can read (issue 19).

A venv under a private home directory (0700) is what a new user makes: the daemon
starts as root, opens its capture socket, drops to an unprivileged user, and from
then on cannot read a single file of its own installation. Everything it would import
or read lazily (the web app, its templates and static files, uvicorn's and anyio's
run-time modules, the journald binding) must be loaded before that drop.

The tree is real: this checkout's ``mamori`` package (``sensor``, ``parsers`` and ``rules``)
and the venv's site-packages, bind-mounted (in a private mount namespace, ``unshare -m``) under a
0700 directory, and the daemon's ``sys.path`` points only there (``python3 -S``: no
system site-packages). The daemon captures on a veth interface of its own; the page
is then asked for every route, logged in, with a static file and an acknowledgement.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PROJECT, unavailable
from tests.ports import free_port

AS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not AS_ROOT, reason="drops privileges: needs root")
IFACE = "mmpriv0"
LAUNCHER = ("import sys; sys.path[:0] = sys.argv[1:3]; del sys.argv[1:3]; "
            "from mamori.sensor.cli import main; sys.exit(main())")
SAMPLE = PROJECT / "samples" / "modbus_demo.pcap"


def _sh(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60)


@pytest.fixture
def public() -> Iterator[Path]:
    """State and config where the unprivileged user can reach (not pytest's 0700 tmp)."""
    root = Path(tempfile.mkdtemp(prefix="mamori-privdrop-", dir="/tmp"))
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def capture_iface() -> Iterator[str]:
    _sh("ip", "link", "del", IFACE)
    made = _sh("ip", "link", "add", IFACE, "type", "veth", "peer", "name", f"{IFACE}p")
    if made.returncode != 0:
        unavailable(f"cannot create a veth pair: {made.stderr.strip()}")
    _sh("ip", "link", "set", IFACE, "up")
    yield IFACE
    _sh("ip", "link", "del", IFACE)


def _site(public: Path) -> tuple[Path, int, str]:
    """A store with the sample's alerts, a token, the config: all owned by nobody."""
    state = public / "state"
    state.mkdir()
    subprocess.run([sys.executable, "-m", "mamori.sensor.cli", "replay", "--no-progress", "--store",
                    str(state / "mamori.db"), str(SAMPLE)], check=True, cwd=PROJECT,
                   stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-m", "mamori.sensor.cli", "web", "token", "--token-file",
                    str(state / "web" / "token")], check=True, cwd=PROJECT,
                   stdout=subprocess.DEVNULL)
    token = (state / "web" / "token").read_text().strip()
    subprocess.run(["chown", "-R", "nobody:nogroup", str(state)], check=True)
    port = free_port()
    config = public / "sensor.toml"
    config.write_text(f'[sensor]\nuser = "nobody"\nstate_dir = "{state}"\n'
                      f'[capture]\ninterfaces = ["{IFACE}"]\nworkers = 2\n'
                      f'[web]\nenabled = true\nport = {port}\n', encoding="utf-8")
    return config, port, token


def _start(config: Path, private: Path) -> subprocess.Popen[str]:
    """The daemon as root, its code reachable only through ``private`` (0700)."""
    app, site = private / "app", private / "site"
    app.mkdir()
    site.mkdir()
    script = (f"mount --bind {PROJECT} {app} && "
              f"mount --bind {sysconfig.get_paths()['purelib']} {site} && "
              f"exec {sys.executable} -S -B -c '{LAUNCHER}' {app} {site} "
              f"run --config {config}")
    return subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                             script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd="/")


def _request(port: int, method: str, path: str, headers: dict[str, str] | None = None,
             body: str | None = None) -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, \
            resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def _wait_listening(port: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _out, err = proc.communicate()
            pytest.fail(f"the daemon exited {proc.returncode}:\n{err}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    pytest.fail("the web page never listened")


@needs_root
def test_the_page_answers_after_the_drop_from_a_tree_only_root_can_read(
        public: Path, capture_iface: str, tmp_path: Path) -> None:
    private = tmp_path / "home"  # pytest's tree is root's; this one is 0700 too
    private.mkdir(mode=0o700)
    config, port, token = _site(public)
    probe = subprocess.run(["runuser", "-u", "nobody", "--", "ls", str(private)],
                           capture_output=True, text=True, timeout=30)
    assert probe.returncode != 0, "the private tree must be unreadable by nobody"
    proc = _start(config, private)
    try:
        _wait_listening(port, proc)
        pid = proc.pid  # unshare and sh exec into python: the same process
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}/status").exists() and time.monotonic() < deadline:
            uid = re.search(r"^Uid:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M)
            if uid and int(uid.group(1)) == 65534:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the daemon did not switch to nobody")
        # the capture workers, exec'd before the drop from the private tree, switched too
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        assert len(children) == 2, children
        deadline = time.monotonic() + 10
        uids: list[int] = []
        while time.monotonic() < deadline:
            uids = [int(m.group(1)) for child in children if (m := re.search(
                r"^Uid:\s+(\d+)", Path(f"/proc/{child}/status").read_text(), re.M))]
            if uids == [65534, 65534]:
                break
            time.sleep(0.1)
        assert uids == [65534, 65534], uids
        bearer = {"Authorization": f"Bearer {token}"}
        assert _request(port, "GET", "/", bearer)[0] == 303  # to /alerts
        for path in ("/alerts", "/alerts?severity=high", "/assets", "/map", "/map.svg",
                     "/health", "/api/alerts", "/api/health", "/alerts/1", "/alerts/999999"):
            status, _h, text = _request(port, "GET", path, bearer)
            assert status in (200, 404) and "Traceback" not in text, (path, status, text[:300])
            if path != "/alerts/999999":
                assert status == 200, (path, status, text[:300])
        for path in ("/static/app.css", "/static/live.js"):
            status, _h, text = _request(port, "GET", path)
            assert status == 200 and len(text) > 100, (path, status, text[:200])
        status, _h, text = _request(port, "GET", "/login")
        assert status == 200 and "token" in text.lower(), text[:300]
        status, headers, _t = _request(
            port, "POST", "/login", {"Content-Type": "application/x-www-form-urlencoded"},
            urllib.parse.urlencode({"token": token, "operator": "alice"}))
        assert status == 303, (status, headers)
        cookie = headers["set-cookie"].split(";")[0]
        status, _h, page = _request(port, "GET", "/alerts", {"Cookie": cookie})
        assert status == 200 and "alice" in page, page[:300]
        alerts = json.loads(_request(port, "GET", "/api/alerts", bearer)[2])
        assert alerts["alerts"], alerts
        first = alerts["alerts"][0]["id"]
        status, _h, detail = _request(port, "GET", f"/alerts/{first}", {"Cookie": cookie})
        csrf = re.search(r'name="csrf" value="([^"]+)"', detail)
        assert status == 200 and csrf, detail[:300]
        status, _h, _t = _request(
            port, "POST", f"/alerts/{first}/ack",
            {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie},
            urllib.parse.urlencode({"csrf": csrf.group(1), "note": "seen"}))
        assert status == 303, status
        # Reload as nobody: the config is re-read; the shipped rules in the private tree
        # cannot be, which is said in one line, and the running rules stay.
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert _request(port, "GET", "/api/health", bearer)[0] == 200
        assert proc.poll() is None
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            _out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _out, err = proc.communicate()
        print(err)  # shown with a failure
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "ERROR:" not in err, err  # uvicorn's "ERROR:"
    denied = [line for line in err.splitlines() if "Permission denied" in line]
    assert len(denied) == 1 and f"{private}/app/mamori/rules: Permission denied; keeping" \
        in denied[0], denied
