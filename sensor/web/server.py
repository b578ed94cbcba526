"""Serving the page: stand-alone (``mamori web``) or in a thread of ``mamori run``.

We bind the listening socket ourselves before handing it to uvicorn, so a refused
address or a port in use is an ordinary ``OSError`` at start-up (uvicorn alone would
log and ``sys.exit`` from inside its thread). Under the daemon, uvicorn runs in a
daemon thread; it installs signal handlers only on the main thread, so the daemon's
own SIGTERM/SIGHUP handling is untouched, and ``close()`` asks it to stop.

Two uvicorns: Debian 12's python3-uvicorn 0.17.6 (with python3-starlette 0.26.1), which
the Debian package runs on, and what pip installs today. :func:`_server` passes only
the options this uvicorn's Config has: ``timeout_graceful_shutdown`` came in 0.22, and
0.17.6 refused to start with a TypeError when given it.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from mamori.sensor import config as cfg
from mamori.sensor.advisories.live import index_beside
from mamori.sensor.capture.packet_evidence import pcap_directory
from mamori.sensor.metrics.sensor_metrics import SensorMetrics, sensor_collectors
from mamori.sensor.metrics.server import text_source
from mamori.sensor.web.app import WebContext, create_app
from mamori.sensor.web.audit import AuditError, OperatorAudit
from mamori.sensor.web.auth import Authenticator, TokenFileError, read_token_file
from mamori.sensor.web.bind import BindRefused, check_bind
from mamori.sensor.web.data import StoreReader
from mamori.sensor.web.health import HealthSource, LiveHealth, StoreHealth
from mamori.sensor.web.limits import MAX_HEAD_BYTES, head_problem, refusal
from mamori.sensor.web.settings import token_path
from mamori.sensor.web.vulnerable import VulnerableView

log = logging.getLogger("mamori.web")


class WebSetupError(ValueError):
    """The page cannot be served: token file, address, store (says which)."""


def rule_guidance(conf: cfg.Config) -> dict[str, str]:
    """Operator guidance per rule id, from the configured rule packs ("" on failure)."""
    from mamori.sensor.detection.loader import RuleError, load_rules
    from mamori.sensor.detection.settings import rule_dirs, set_names

    try:
        rules = load_rules(rule_dirs(conf), set_names(), trust_checked=True)
        return {r.id: r.guidance for r in rules} | {c.id: c.guidance for c in rules.chains}
    except (RuleError, OSError) as err:
        log.warning("web: no operator guidance, rules did not load: %s", err)
        return {}


def build_context(conf: cfg.Config, store: Path,
                  health: Callable[[StoreReader], HealthSource] | None = None,
                  token_file: Path | None = None) -> WebContext:
    """Everything the app needs; WebSetupError for what an operator must fix."""
    try:
        token = read_token_file(token_file or token_path(conf))
    except TokenFileError as err:
        raise WebSetupError(str(err)) from None
    reader = StoreReader(store)
    audit: OperatorAudit | None = OperatorAudit(store)
    problem = None
    try:
        OperatorAudit(store).ensure()
    except AuditError as err:
        audit, problem = None, f"Acknowledging is unavailable: {err}"
        log.warning("web: %s", problem)
    return WebContext(reader=reader, auth=Authenticator(token,
                                                        conf.get("web", "session_lifetime")),
                      audit=audit, health=(health or StoreHealth)(reader),
                      sensor_name=conf.get("sensor", "name"),
                      page_size=conf.get("web", "page_size"), guidance=rule_guidance(conf),
                      ack_problem=problem, vulnerable=VulnerableView(index_beside(store)),
                      metrics=text_source([SensorMetrics(None, store)]),
                      pcap_dir=pcap_directory(conf, store))


def listen(conf: cfg.Config) -> socket.socket:
    """A listening socket on the checked address (see :mod:`mamori.sensor.web.bind`)."""
    try:
        host = check_bind(conf.get("web", "bind"), conf.get("capture", "interfaces"),
                          conf.get("web", "management_interface"))
    except BindRefused as err:
        raise WebSetupError(str(err)) from None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, conf.get("web", "port")))
        sock.listen(64)
    except OSError as err:
        sock.close()
        raise WebSetupError(f"[web] cannot listen on {host}:{conf.get('web', 'port')}: "
                            f"{err.strerror}") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


DRAIN_BYTES = 8 * 1024 * 1024  # read and dropped after a 414/431 before we reset
DRAIN_SECONDS = 5.0
H11_BUFFER = 4 * MAX_HEAD_BYTES  # h11's limit on an unparsed head; ours answers first


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, answering an overlong head with 414/431 itself.

    h11 alone gives up at 16 KiB with a 400 and closes while the client still sends,
    which the client sees as a reset. This checks the head before h11 sees it
    (:func:`mamori.sensor.web.limits.head_problem`), answers, half-closes, and drops what
    still arrives (up to DRAIN_BYTES or DRAIN_SECONDS) so that the answer is read.
    Only ``conn`` (replaced at construction), ``data_received`` and ``transport`` are
    touched: the same in uvicorn 0.17.6 and today's.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # h11 must never refuse a head we accept: it counts the blank line too, and
        # 0.17.6 has no Config option for this (h11_max_incomplete_event_size, 0.18).
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=H11_BUFFER)
        self._drained: int | None = None  # bytes dropped since the refusal

    def data_received(self, data: bytes) -> None:
        if self._drained is not None:
            self._drained += len(data)
            if self._drained > DRAIN_BYTES:
                self.transport.abort()
            return
        if self.conn.their_state is h11.IDLE:  # a request head, not a body
            status = head_problem(self.conn.trailing_data[0] + data)
            if status is not None:
                self._refuse(status)
                return
        super().data_received(data)

    def _refuse(self, status: int) -> None:
        log.info("web: refused a request head with %d", status)
        self._drained = 0
        self.transport.write(refusal(status))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        asyncio.get_running_loop().call_later(DRAIN_SECONDS, self.transport.close)


def _config_options() -> dict[str, Any]:
    """The Config options we want that this uvicorn has (Debian 12's is 0.17.6)."""
    wanted: dict[str, Any] = {
        "timeout_graceful_shutdown": 2,  # uvicorn >= 0.22; WebThread.close otherwise
    }
    accepted = inspect.signature(uvicorn.Config.__init__).parameters
    return {k: v for k, v in wanted.items() if k in accepted}


def _server(ctx: WebContext) -> uvicorn.Server:
    load_runtime_modules()
    config = uvicorn.Config(create_app(ctx), log_level="warning", access_log=False,
                            server_header=False, proxy_headers=False, lifespan="off",
                            # ws: the page has no websocket route (0.17.6 would load wsproto)
                            http=LimitedH11Protocol, ws="none", **_config_options())
    return uvicorn.Server(config)


def serve_forever(ctx: WebContext, sock: socket.socket) -> None:
    """``mamori web``: serve until SIGINT/SIGTERM (uvicorn handles both)."""
    _server(ctx).run(sockets=[sock])


STARTUP_SECONDS = 10.0


def load_runtime_modules() -> None:
    """Import now what serving imports only on the first request: anyio's asyncio
    backend (Starlette's thread pool, every store read). ``mamori run`` calls this
    before it drops privileges; after that its installation may be unreadable."""
    importlib.import_module("anyio._backends._asyncio")


class WebThread:
    """The page inside ``mamori run``; ``close()`` stops it (Sensor.shutdown calls it)."""

    def __init__(self, ctx: WebContext, sock: socket.socket) -> None:
        self.sock = sock
        self.url = url_of(sock)
        self._server = _server(ctx)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="mamori-web", daemon=True)
        self._thread.start()
        # uvicorn imports its loop, protocol and lifespan modules as it starts: wait for
        # that before the daemon drops privileges (it may no longer read them after).
        deadline = time.monotonic() + STARTUP_SECONDS
        while not self._server.started and self._thread.is_alive() \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._server.started:
            self.close()
            raise WebSetupError(f"[web] the page did not start within {STARTUP_SECONDS:.0f} s")
        log.info("web page on %s", self.url)

    def close(self) -> None:
        """Stop: open connections get 2 s, then are dropped (uvicorn 0.17.6 would wait)."""
        self._server.should_exit = True
        self._thread.join(timeout=2)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout=3)
        self.sock.close()


def daemon_starter(conf: cfg.Config) -> Callable[[Any], WebThread]:
    """For ``build_sensor(web=...)``: given the Sensor, start the page with live health."""
    from mamori.sensor.alerting.settings import store_path

    def start(sensor: Any) -> WebThread:
        ctx = build_context(conf, store_path(conf),
                            health=lambda reader: LiveHealth(sensor, reader))
        ctx.metrics = text_source(sensor_collectors(sensor, store_path(conf)))
        return WebThread(ctx, listen(conf))
    return start
