"""The web page's limits against the real server (``mamori web``) over HTTP (issue 12).

Integer path and query parameters go to SQLite, whose INTEGER is 64 bits: anything
else must be a 400 (bad query parameter) or a 404 (no such alert), never a 500. An
overlong request line is 414 and too many or too large headers 431, answered by our
own server and read by the client (not a connection reset), over raw sockets since
http.client would refuse to send some of these itself.

Every server test runs twice: on the libraries pip installs (``current``) and on
Debian's own python3 with its python3-starlette, python3-uvicorn and python3-jinja2
(``debian``: bookworm's 0.26.1, 0.17.6 and 3.1.2), which the Debian package runs on.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from starlette.testclient import TestClient

from mamori.sensor import config as cfg
from mamori.sensor.web.app import create_app
from mamori.sensor.web.auth import create_token_file
from mamori.sensor.web.limits import MAX_HEAD_BYTES, MAX_HEADERS, MAX_ID, MAX_REQUEST_LINE
from mamori.sensor.web.server import build_context
from tests.conftest import PROJECT
from tests.web.conftest import (
    CONTROL,
    MODBUS_DEMO,
    WebProcess,
    current_python,
    debian_python,
    replay_into_store,
)

HUGE = "99999999999999999999999"


class Page:
    """The running ``mamori web``, its token and a logged-in session's cookie and CSRF."""

    def __init__(self, server: WebProcess, token: str) -> None:
        self.server = server
        self.token = token
        url = urlsplit(server.url)
        self.host, self.port = str(url.hostname), int(url.port or 80)
        status, headers, _ = self.request(
            "POST", "/login", body=f"operator=Limits+Test&token={token}",
            headers={"Content-Type": "application/x-www-form-urlencoded"}, bearer=False)
        assert status == 303
        found = re.search(r"mamori_session=([^;]+)", headers.get("set-cookie", ""))
        assert found, headers
        self.cookie = f"mamori_session={found.group(1)}"
        _, _, page = self.request("GET", "/alerts", headers={"Cookie": self.cookie},
                                  bearer=False)
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf
        self.csrf = csrf.group(1)

    def request(self, method: str, path: str, body: str | None = None,
                headers: dict[str, str] | None = None, bearer: bool = True
                ) -> tuple[int, dict[str, str], str]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=15)
        try:
            sent = dict(headers or {})
            if bearer:
                sent["Authorization"] = f"Bearer {self.token}"
            conn.request(method, path, body=body, headers=sent)
            resp = conn.getresponse()
            return (resp.status, {k.lower(): v for k, v in resp.getheaders()},
                    resp.read().decode("utf-8", "replace"))
        finally:
            conn.close()

    def raw(self, data: bytes, *more: bytes) -> bytes:
        """Send ``data`` whole (and each of ``more`` 10 ms apart, in segments of their
        own), then read the answer until the server closes or has answered in full."""
        with socket.create_connection((self.host, self.port), timeout=15) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(data)
            for piece in more:
                time.sleep(0.01)
                sock.sendall(piece)
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and b"connection: close" not in \
                        b"".join(chunks).lower():
                    break  # a keep-alive answer: the head is enough here
            return b"".join(chunks)


@pytest.fixture(scope="module", params=["current", "debian"])
def page(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Page]:
    python = debian_python() if request.param == "debian" else current_python()
    print(f"mamori web on {python.python}: {python.versions}")
    tmp = tmp_path_factory.mktemp("web-limits")
    store, token_file = tmp / "mamori.db", tmp / "token"
    replay_into_store(store, [MODBUS_DEMO])
    create_token_file(token_file)
    server = WebProcess(store, token_file, interpreter=python)
    try:
        yield Page(server, token_file.read_text().strip())
    finally:
        server.stop()


def _status(answer: bytes) -> int:
    found = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
    assert found, answer[:200]
    return int(found.group(1))


def test_the_package_depends_on_the_debian_versions_tested_here() -> None:
    """control's floors for the page's libraries are the versions ``debian`` runs on.

    Lower would promise what no test saw; higher would refuse bookworm's own packages.
    """
    tested = debian_python().versions
    text = CONTROL.read_text().split("\nRecommends:")[0]
    for module, package in (("starlette", "python3-starlette"), ("uvicorn", "python3-uvicorn"),
                            ("jinja2", "python3-jinja2"), ("h11", "python3-h11"),
                            ("prometheus_client", "python3-prometheus-client")):
        floor = re.search(rf"\b{package} \(>= ([^)]+)\)", text)
        assert floor, f"{CONTROL}: Depends has no {package} (>= VERSION)"
        assert floor.group(1) == tested[module], (package, floor.group(1), tested)


DAEMON_WEB = """
import http.client, json, socket, sys
from pathlib import Path
from mamori.sensor.daemon import run as daemon
from mamori.sensor import config as cfg
from mamori.sensor.web.server import daemon_starter
tmp = Path(sys.argv[1])
token = (tmp / "web" / "token").read_text().strip()
conf = cfg.load(None, {("sensor", "state_dir"): str(tmp), ("web", "port"): 0})
sensor = daemon.build_sensor(conf, None, web=daemon_starter(conf))
host, port = sensor.web.sock.getsockname()[:2]
conn = http.client.HTTPConnection(host, port, timeout=10)
conn.request("GET", "/api/health", headers={"Authorization": "Bearer " + token})
health = json.loads(conn.getresponse().read())
idle = socket.create_connection((host, port))
idle.sendall(b"GET /api/health HTTP/1.1\\r\\n")  # half a request, open at shutdown
sensor.shutdown()
try:
    socket.create_connection((host, port), timeout=5).close()
    refused = False
except ConnectionRefusedError:
    refused = True
print(json.dumps({"live": health["live"], "stopped": not sensor.web._thread.is_alive(),
                  "refused": refused}))
"""


@pytest.mark.parametrize("which", ["current", "debian"])
def test_the_daemon_serves_the_page_in_a_thread(which: str, tmp_path: Path) -> None:
    """``mamori run --web``: the page in a thread of the daemon, on either uvicorn; its
    shutdown stops the server even with a client that never finishes its request."""
    python = debian_python() if which == "debian" else current_python()
    create_token_file(tmp_path / "web" / "token")
    done = subprocess.run([python.python, "-c", DAEMON_WEB, str(tmp_path)], env=python.env,
                          cwd=PROJECT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"live": True, "stopped": True, "refused": True}


# -- the whole page on this interpreter ---------------------------------------------------

def test_every_page_serves(page: Page) -> None:
    """Each route once: what Debian's starlette/uvicorn/Jinja must render, not only limits."""
    auth = {"Cookie": page.cookie}
    for path, status, kind in [
            ("/", 303, ""), ("/login", 200, "text/html"), ("/alerts", 200, "text/html"),
            ("/alerts?severity=medium&since=1d", 200, "text/html"),
            ("/alerts/1", 200, "text/html"), ("/assets", 200, "text/html"),
            ("/map", 200, "text/html"), ("/map.svg", 200, "image/svg+xml"),
            ("/map?group=role&proto=dnp3&severity=high&since=day&show=alerts", 200,
             "text/html"), ("/map.svg?group=none&show=changed", 200, "image/svg+xml"),
            ("/map?group=vendor", 400, "text/html"), ("/static/map.js", 200, "javascript"),
            ("/health", 200, "text/html"), ("/api/alerts", 200, "application/json"),
            ("/api/health", 200, "application/json"), ("/static/app.css", 200, "text/css"),
            ("/static/live.js", 200, "javascript"), ("/static/nothing.css", 404, ""),
            ("/no/such/page", 404, "")]:
        got, headers, body = page.request("GET", path, headers=auth, bearer=False)
        assert got == status, (path, got, body[:300])
        assert kind in headers.get("content-type", ""), (path, headers)
        assert "default-src" in headers.get("content-security-policy", ""), (path, headers)
    _, _, body = page.request("GET", "/api/alerts", headers=auth, bearer=False)
    alerts = json.loads(body)["alerts"]
    # the sample's attack, and the two campaign chains it completes (rules/chains.yaml)
    assert {a["precursor"] for a in alerts} == {"M1", "M2", "M3", "M4", "M5", "M7", "M14",
                                                "C1", "C2"}
    _, _, body = page.request("GET", "/alerts", headers=auth, bearer=False)
    assert all(f'href="/alerts/{a["id"]}"' in body for a in alerts)  # each one is listed


def test_acknowledging_an_alert(page: Page) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": page.cookie}
    status, headers, body = page.request("POST", "/alerts/2/ack", body=f"csrf={page.csrf}",
                                         headers=form, bearer=False)
    assert (status, headers.get("location")) == (303, "/alerts/2"), body[:300]
    _, _, body = page.request("GET", "/alerts/2", headers={"Cookie": page.cookie},
                              bearer=False)
    assert "Limits Test" in body  # the audit trail names the operator


# -- integer parameters -------------------------------------------------------------------

NOT_IDS = [HUGE, str(MAX_ID + 1), "-1", "1.5", "1e3", "abc", "9" * 5000, "%2B1", "1_0",
           "%EF%BC%91", "0x10", "1%202"]  # %2B1 is "+1", %EF%BC%91 a full-width 1


@pytest.mark.parametrize("alert_id", NOT_IDS)
def test_alert_detail_of_no_alert_id_is_404(page: Page, alert_id: str) -> None:
    status, _, body = page.request("GET", f"/alerts/{alert_id}")
    assert status == 404, body[:300]


def test_alert_detail_at_the_edges(page: Page) -> None:
    assert page.request("GET", "/alerts/1")[0] == 200
    assert page.request("GET", f"/alerts/{MAX_ID}")[0] == 404
    assert page.request("GET", "/alerts/0")[0] == 404


@pytest.mark.parametrize("value", NOT_IDS)
def test_alert_list_before_that_is_not_an_id_is_400(page: Page, value: str) -> None:
    status, _, body = page.request("GET", f"/alerts?before={value}")
    assert status == 400, body[:300]
    assert "before" in body and "is not an alert id" in body


@pytest.mark.parametrize("value", NOT_IDS)
def test_api_after_that_is_not_an_id_is_400(page: Page, value: str) -> None:
    status, _, body = page.request("GET", f"/api/alerts?after={value}")
    assert status == 400, body[:300]
    assert "after" in body


def test_id_parameters_that_are_ids_still_work(page: Page) -> None:
    for path in ("/alerts?before=", "/alerts?before=0", "/alerts?before=3",
                 f"/alerts?before={MAX_ID}", "/api/alerts?after=", "/api/alerts?after=0",
                 f"/api/alerts?after={MAX_ID}", "/alerts?severity=low&before=5"):
        status, _, body = page.request("GET", path)
        assert status == 200, (path, body[:300])
    _, _, body = page.request("GET", f"/api/alerts?after={MAX_ID}")
    assert '"alerts":[]' in body.replace(" ", "")


@pytest.mark.parametrize("alert_id", [HUGE, str(MAX_ID + 1), "9" * 5000, "abc"])
def test_acknowledging_no_alert_id_is_404(page: Page, alert_id: str) -> None:
    status, _, body = page.request(
        "POST", f"/alerts/{alert_id}/ack", body=f"csrf={page.csrf}",
        headers={"Content-Type": "application/x-www-form-urlencoded",
                 "Cookie": page.cookie}, bearer=False)
    assert status == 404, body[:300]


def test_acknowledging_without_csrf_is_still_403_first(page: Page) -> None:
    status, _, _ = page.request(
        "POST", f"/alerts/{HUGE}/ack", body="csrf=forged",
        headers={"Content-Type": "application/x-www-form-urlencoded",
                 "Cookie": page.cookie}, bearer=False)
    assert status == 403


@pytest.mark.parametrize("query", [
    "since=99999999999999999999999d", "until=9999-12-31", "since=0001-01-01",
    "severity=" + "x" * 5000, "since=" + "9" * 5000, "asset=" + HUGE,
    "since=" + "9" * 400 + "d", "since=1e308d", "since=nand", "since=infd",
    "until=9999-12-31T23:59:59-23:59", "since=0001-01-01T00:00:00%2B23:59",
    "asset=%00", "precursor=%FF%FE", "state=" + HUGE, "severity=%00"])
def test_other_parameters_never_500(page: Page, query: str) -> None:
    for path in ("/alerts", "/api/alerts"):
        status, _, body = page.request("GET", f"{path}?{query}")
        assert status in (200, 400), (path, query, status, body[:300])


# -- request sizes over raw sockets -------------------------------------------------------

def _get(target: str, headers: str = "") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode()


def test_a_1mb_query_string_is_414_not_a_reset(page: Page) -> None:
    answer = page.raw(_get("/alerts?asset=" + "A" * 1_000_000))
    assert _status(answer) == 414
    assert b"connection: close" in answer.lower()


def _target(line: int) -> str:
    """An alert-list target whose request line ``GET <target> HTTP/1.1`` is ``line`` long."""
    prefix = "/alerts?asset="
    return prefix + "A" * (line - len("GET  HTTP/1.1") - len(prefix))


def test_request_line_limit_is_exact(page: Page) -> None:
    bearer = f"Authorization: Bearer {page.token}\r\n"
    assert _status(page.raw(_get(_target(MAX_REQUEST_LINE), bearer))) == 200
    assert _status(page.raw(_get(_target(MAX_REQUEST_LINE + 1), bearer))) == 414
    assert _status(page.raw(_get("/" + "a" * 20_000))) == 414  # a long path, no query
    # The line's CR in one segment, its LF in the next: still the same line.
    head = _get(_target(MAX_REQUEST_LINE), bearer)
    cut = head.index(b"\n")
    assert _status(page.raw(head[:cut], head[cut:])) == 200


def test_an_incomplete_overlong_request_line_is_answered_at_once(page: Page) -> None:
    """The client has not finished the line: the answer must not wait for it."""
    with socket.create_connection((page.host, page.port), timeout=15) as sock:
        sock.sendall(b"GET /alerts?asset=" + b"A" * (MAX_REQUEST_LINE + 100))
        started = time.monotonic()
        answer = sock.recv(65536)
        assert _status(answer) == 414
        assert time.monotonic() - started < 5


def _headers(count: int, page: Page) -> str:
    """``count`` header lines with the request's Host: Authorization and fillers."""
    fillers = "".join(f"X-Filler-{i}: {i}\r\n" for i in range(count - 2))
    return fillers + f"Authorization: Bearer {page.token}\r\n"


def test_header_count_limit_is_exact(page: Page) -> None:
    assert _status(page.raw(_get("/alerts", _headers(MAX_HEADERS, page)))) == 200
    assert _status(page.raw(_get("/alerts", _headers(MAX_HEADERS + 1, page)))) == 431
    # The blank line after the last header in a segment of its own, even its CR and LF
    # apart: what has arrived is MAX_HEADERS headers, not one more.
    head = _get("/alerts", _headers(MAX_HEADERS, page))
    assert _status(page.raw(head[:-2], head[-2:])) == 200
    assert _status(page.raw(head[:-1], head[-1:])) == 200
    assert _status(page.raw(head[:-3], head[-3:-1], head[-1:])) == 200
    # Too many, sent one line at a time: refused once the line over the limit arrives.
    lines = _get("/alerts", _headers(MAX_HEADERS + 1, page)).split(b"\r\n")
    assert _status(page.raw(*[line + b"\r\n" for line in lines[:-2]])) == 431


def _sized(size: int, page: Page) -> bytes:
    """A request whose head (request line and headers, no final CRLF CRLF) is ``size``."""
    head = _get("/alerts", f"Authorization: Bearer {page.token}\r\nX-Pad: ")
    pad = size - (len(head) - len(b"\r\n"))  # _get ends it with "\r\n" already
    return head[:-2] + b"p" * pad + b"\r\n\r\n"


def test_header_size_limit_is_exact(page: Page) -> None:
    assert len(_sized(MAX_HEAD_BYTES, page)) == MAX_HEAD_BYTES + 4
    assert _status(page.raw(_sized(MAX_HEAD_BYTES, page))) == 200
    assert _status(page.raw(_sized(MAX_HEAD_BYTES + 1, page))) == 431
    # Whole but for its blank line, which follows: h11's own buffer limit must not
    # refuse first (uvicorn 0.17.6 leaves it at 16 KiB, where the head alone is).
    head = _sized(MAX_HEAD_BYTES, page)
    assert _status(page.raw(head[:-2], head[-2:])) == 200
    assert _status(page.raw(head[:-1], head[-1:])) == 200


def test_too_large_headers_are_431(page: Page) -> None:
    assert _status(page.raw(_get("/alerts", f"Cookie: {'c' * MAX_HEAD_BYTES}\r\n"))) == 431
    # Many headers under the count limit that add up to too much.
    sized = "".join(f"X-Filler-{i}: {'v' * 400}\r\n" for i in range(60))
    assert _status(page.raw(_get("/alerts", sized))) == 431
    # A 1 MB header, sent whole before the client reads.
    assert _status(page.raw(_get("/alerts", f"X-Big: {'b' * 1_000_000}\r\n"))) == 431


def test_the_server_still_serves_after_refusals(page: Page) -> None:
    for _ in range(3):
        page.raw(_get("/alerts?asset=" + "A" * 100_000))
    assert page.request("GET", "/api/health")[0] == 200


def test_a_post_body_is_not_a_head(page: Page) -> None:
    """A body larger than the head limit is the form's business (4 KiB), not a 431."""
    body = "csrf=" + "x" * (2 * MAX_HEAD_BYTES)
    status, _, _ = page.request(
        "POST", "/alerts/1/ack", body=body,
        headers={"Content-Type": "application/x-www-form-urlencoded",
                 "Cookie": page.cookie}, bearer=False)
    assert status == 403  # the form was too large to read, so no CSRF token


# -- the same limits at the ASGI layer (any server, the test client) ------------------------

def test_asgi_limits_through_the_test_client(tmp_path: Path) -> None:
    store, token_file = tmp_path / "mamori.db", tmp_path / "token"
    replay_into_store(store, [MODBUS_DEMO])
    create_token_file(token_file)
    app = create_app(build_context(cfg.load(None), store, token_file=token_file))
    client = TestClient(app, follow_redirects=False)
    assert client.get(_target(MAX_REQUEST_LINE)).status_code == 303  # to the login
    r = client.get(_target(MAX_REQUEST_LINE + 1))
    assert r.status_code == 414
    assert "content-security-policy" in r.headers
    r = client.get("/alerts", headers={f"x-filler-{i}": "1" for i in range(MAX_HEADERS + 1)})
    assert r.status_code == 431
    r = client.get("/alerts", headers={"x-big": "b" * MAX_HEAD_BYTES})
    assert r.status_code == 431
    assert client.get("/alerts").status_code == 303  # the login redirect, as before


def test_the_server_logged_no_error(page: Page) -> None:
    """Last, after everything above: no traceback (a 500) on the server's side either."""
    time.sleep(0.2)
    log = "".join(page.server.log)
    assert "Traceback" not in log and "Exception" not in log, log[-3000:]
