"""Serving ``/metrics``: the address checked like the web page's, a thread of its own.

The endpoint needs no session token (a Prometheus server scrapes it) and shows only
counters, never an alert's content; it is bound by the web page's rules instead
(:func:`mamori.sensor.web.bind.check_bind`): loopback unless ``[metrics]
management_interface`` names the box's management interface, never an address of a
capture interface.

Why not ``prometheus_client.start_http_server``: in Debian 12's 0.16 it returns
nothing to stop it with, binds by itself (a refused address would surface inside
its thread) and serves every path. Here the socket is bound before anything else
starts, so a port in use is a start-up error naming ``[metrics] listen``; the
exposition itself is ``prometheus_client.make_wsgi_app`` (text format, OpenMetrics
when asked, gzip), under a threading WSGI server that ``close()`` stops.

A scrape runs on the server's threads and reads the daemon's counters as they are,
plus SQLite files over read-only connections of its own: it takes no lock the
capture loop, the store or the forwarder's journal waits for. At most
``MAX_CONNECTIONS`` scrapes are served at once and each connection gets
``TIMEOUT_SECONDS``: more are closed at once and counted, so a flood of
connections cannot pile up threads.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import make_wsgi_app
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from mamori.sensor import config as cfg
from mamori.sensor.metrics.settings import ListenAddress, listen_address
from mamori.sensor.web.bind import BindRefused, check_bind

log = logging.getLogger("mamori.metrics")

MAX_CONNECTIONS = 8
TIMEOUT_SECONDS = 10.0
PATH = "/metrics"

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class MetricsSetupError(ValueError):
    """The endpoint cannot be served (names ``[metrics] listen`` and why)."""


def checked_address(conf: cfg.Config, lookup: Any = None) -> ListenAddress | None:
    """``[metrics] listen`` if it is a safe place to listen; None when off."""
    address = listen_address(conf)
    if address is None:
        return None
    extra = {} if lookup is None else {"lookup": lookup}
    try:
        # the collector's configuration may have no [capture] section registered
        capture = conf.values.get(("capture", "interfaces"), ())
        host = check_bind(address.host, capture,
                          conf.get("metrics", "management_interface"),
                          key="[metrics] listen",
                          management_key="[metrics] management_interface", **extra)
    except BindRefused as err:
        raise MetricsSetupError(str(err)) from None
    return ListenAddress(host, address.port)


class _Quiet(WSGIRequestHandler):
    """No access log on stderr (journald), a timeout against idle connections."""

    timeout = TIMEOUT_SECONDS

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, sock: socket.socket, host: str) -> None:
        super().__init__(sock.getsockname()[:2], _Quiet, bind_and_activate=False)
        self.socket.close()
        self.socket = sock  # bound and listening already
        self.server_name, self.server_port = host, sock.getsockname()[1]
        self.setup_environ()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.refused = 0
        self.failed = 0  # connections that timed out or broke before an answer
        self._said: set[str] = set()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:  # no thread for it: give the slot back
            self._slots.release()
            raise

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that timed out or went away is counted, not a traceback on stderr
        (socketserver's default); anything else is logged once per kind."""
        self.failed += 1
        err = sys.exc_info()[1]
        if isinstance(err, OSError):  # TimeoutError, ConnectionResetError, BrokenPipe
            return
        kind = type(err).__name__
        if kind not in self._said and len(self._said) < 16:
            self._said.add(kind)
            log.warning("metrics: a request failed: %r", err)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def only_metrics(app: WsgiApp) -> WsgiApp:
    """``GET``/``HEAD /metrics`` only: 404 for other paths, 405 for other methods."""
    def serve(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"Not Found: the metrics are at /metrics\n"]
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Content-Type", "text/plain"),
                                                      ("Allow", "GET, HEAD")])
            return [b"Method Not Allowed\n"]
        return app(environ, start_response)
    return serve


class EndpointStats:
    """The endpoint's own counters, as a collector (connections refused when full)."""

    def __init__(self) -> None:
        self.server: _Server | None = None

    def collect(self) -> Iterable[Metric]:
        refused = CounterMetricFamily(
            "mamori_metrics_refused_connections",
            "Connections to the metrics endpoint closed unserved because "
            f"{MAX_CONNECTIONS} were being served")
        refused.add_metric([], self.server.refused if self.server is not None else 0)
        yield refused
        failed = CounterMetricFamily(
            "mamori_metrics_failed_connections",
            f"Connections that sent no whole request within {TIMEOUT_SECONDS:.0f} s or "
            "broke before the answer")
        failed.add_metric([], self.server.failed if self.server is not None else 0)
        yield failed


def new_registry(collectors: Sequence[Any]) -> CollectorRegistry:
    """A registry of our collectors and the process's own metrics (CPU, memory, fds)."""
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    ProcessCollector(registry=registry)
    return registry


class MetricsServer:
    """``/metrics`` of ``registry`` on a checked address; ``close()`` stops it."""

    def __init__(self, registry: CollectorRegistry, address: ListenAddress,
                 stats: EndpointStats | None = None) -> None:
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address.host, address.port))
            sock.listen(64)
        except OSError as err:
            sock.close()
            raise MetricsSetupError(f"[metrics] listen: cannot listen on {address}: "
                                    f"{err.strerror or err}") from None
        self._server = _Server(sock, address.host)
        self._server.set_app(only_metrics(make_wsgi_app(registry)))
        if stats is not None:
            stats.server = self._server
        host, port = sock.getsockname()[:2]
        self.address = ListenAddress(host, port)
        self.url = f"http://{self.address}{PATH}"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.5},
                                        name="mamori-metrics", daemon=True)
        self._thread.start()
        log.info("metrics on %s", self.url)

    @property
    def refused(self) -> int:
        return self._server.refused

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve(conf: cfg.Config, collectors: Sequence[Any]) -> MetricsServer | None:
    """The endpoint ``[metrics] listen`` asks for, serving ``collectors``; None when off.

    MetricsSetupError (naming the key) when the address is refused or in use."""
    address = checked_address(conf)
    if address is None:
        return None
    stats = EndpointStats()
    return MetricsServer(new_registry([*collectors, stats]), address, stats)


def text_source(collectors: Sequence[Any]) -> Callable[[], tuple[bytes, str]]:
    """For the web page's ``/metrics`` route: the text format of ``collectors``."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    registry = new_registry(collectors)

    def text() -> tuple[bytes, str]:
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return text
