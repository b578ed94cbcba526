"""Serving the page: stand-alone (``mamori web``) or in a thread of ``mamori run``.

We bind the listening socket ourselves before handing it to uvicorn, so a refused
address or a port in use is an ordinary ``OSError`` at start-up (uvicorn alone would
log and ``sys.exit`` from inside its thread). Under the daemon, uvicorn runs in a
daemon thread; it installs signal handlers only on the main thread, so the daemon's
own SIGTERM/SIGHUP handling is untouched, and ``close()`` asks it to stop.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

from sensor import config as cfg
from sensor.web.app import WebContext, create_app
from sensor.web.audit import AuditError, OperatorAudit
from sensor.web.auth import Authenticator, TokenFileError, read_token_file
from sensor.web.bind import BindRefused, check_bind
from sensor.web.data import StoreReader
from sensor.web.health import HealthSource, LiveHealth, StoreHealth
from sensor.web.settings import token_path

log = logging.getLogger("mamori.web")


class WebSetupError(ValueError):
    """The page cannot be served: token file, address, store (says which)."""


def rule_guidance(conf: cfg.Config) -> dict[str, str]:
    """Operator guidance per rule id, from the configured rule packs ("" on failure)."""
    from sensor.detection.loader import RuleError, load_rules
    from sensor.detection.settings import rule_dirs, set_names

    try:
        return {r.id: r.guidance for r in load_rules(rule_dirs(conf), set_names())}
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
                      ack_problem=problem)


def listen(conf: cfg.Config) -> socket.socket:
    """A listening socket on the checked address (see :mod:`sensor.web.bind`)."""
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


def _server(ctx: WebContext) -> uvicorn.Server:
    config = uvicorn.Config(create_app(ctx), log_level="warning", access_log=False,
                            server_header=False, proxy_headers=False, lifespan="off",
                            timeout_graceful_shutdown=2)
    return uvicorn.Server(config)


def serve_forever(ctx: WebContext, sock: socket.socket) -> None:
    """``mamori web``: serve until SIGINT/SIGTERM (uvicorn handles both)."""
    _server(ctx).run(sockets=[sock])


class WebThread:
    """The page inside ``mamori run``; ``close()`` stops it (Sensor.shutdown calls it)."""

    def __init__(self, ctx: WebContext, sock: socket.socket) -> None:
        self.sock = sock
        self.url = url_of(sock)
        self._server = _server(ctx)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="mamori-web", daemon=True)
        self._thread.start()
        log.info("web page on %s", self.url)

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)
        self.sock.close()


def daemon_starter(conf: cfg.Config) -> Callable[[Any], WebThread]:
    """For ``build_sensor(web=...)``: given the Sensor, start the page with live health."""
    from sensor.detection.settings import store_path

    def start(sensor: Any) -> WebThread:
        ctx = build_context(conf, store_path(conf),
                            health=lambda reader: LiveHealth(sensor, reader))
        return WebThread(ctx, listen(conf))
    return start
