"""Real ``nats-server`` processes on loopback: one node or a JetStream cluster.

Every node gets free ports, its own store directory and the same accounts: a
``collector`` user that may publish the stream and use the JetStream API (nothing else),
a ``national`` subscriber that reads everything, and an ``energy`` sector CERT confined
by subject permissions to its sector and to its own durable consumer ``energy-cert``
(the example of docs/subscribers.md).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.conftest import unavailable
from tests.ports import free_ports

USERS = {"collector": "collector-pw", "national": "national-pw", "energy": "energy-pw"}
STREAM = "MAMORI"

_READER = ("$JS.API.INFO", "$JS.API.STREAM.INFO.MAMORI", "$JS.API.CONSUMER.CREATE.MAMORI.>",
           "$JS.API.CONSUMER.DURABLE.CREATE.MAMORI.>", "$JS.API.CONSUMER.INFO.MAMORI.>",
           "$JS.API.CONSUMER.DELETE.MAMORI.>", "$JS.API.CONSUMER.MSG.NEXT.MAMORI.>",
           "$JS.ACK.MAMORI.>")
# The sector CERT: one consumer, named, whose filter must lie inside its sector.
_SECTOR = ("$JS.API.CONSUMER.CREATE.MAMORI.energy-cert.mamori.*.energy.>",
           "$JS.API.CONSUMER.INFO.MAMORI.energy-cert",
           "$JS.API.CONSUMER.MSG.NEXT.MAMORI.energy-cert",
           "$JS.ACK.MAMORI.energy-cert.>")


def nats_server() -> str:
    found = shutil.which("nats-server")
    if found is None:
        unavailable("nats-server is not installed (make test installs it as root)")
    assert found is not None
    return found


def _list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


def _accounts() -> str:
    return f"""
accounts {{
  MAMORI {{
    jetstream: enabled
    users: [
      {{user: collector, password: "{USERS['collector']}",
        permissions: {{publish: ["mamori.>", "$JS.API.>"], subscribe: ["_INBOX.>"]}}}}
      {{user: national, password: "{USERS['national']}",
        permissions: {{publish: {_list(_READER)}, subscribe: ["_INBOX.>"]}}}}
      {{user: energy, password: "{USERS['energy']}",
        permissions: {{publish: {_list(_SECTOR)}, subscribe: ["_INBOX.>"]}}}}
    ]
  }}
}}
"""


class NatsNode:
    def __init__(self, root: Path, name: str, port: int, cluster_port: int, http_port: int,
                 routes: list[int], cluster: bool) -> None:
        self.name, self.port, self.http_port = name, port, http_port
        self.url = f"nats://127.0.0.1:{port}"
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "nats.conf"
        self.log = self.dir / "nats.log"
        cluster_block = ""
        if cluster:
            cluster_block = (
                f"cluster {{\n  name: mamori\n  listen: 127.0.0.1:{cluster_port}\n  routes: ["
                + ", ".join(f"nats-route://127.0.0.1:{p}" for p in routes) + "]\n}\n")
        self.conf.write_text(
            f"server_name: {name}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{http_port}\n"
            f'jetstream {{\n  store_dir: "{self.dir / "js"}"\n  max_memory_store: 64MB\n'
            f"  max_file_store: 2GB\n}}\n{cluster_block}{_accounts()}")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([nats_server(), "-c", str(self.conf), "-l", str(self.log)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.proc = None

    def healthy(self) -> bool:
        """JetStream is up and (in a cluster) has a meta leader: /healthz says ok."""
        try:
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.http_port}/healthz?js-enabled-only=true",
                    timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class NatsCluster:
    """``size`` nodes (1 = a single server without a cluster block)."""

    def __init__(self, root: Path, size: int = 3) -> None:
        ports = free_ports(3 * size)
        client, cluster, http = ports[:size], ports[size:2 * size], ports[2 * size:]
        self.nodes = [NatsNode(root, f"n{i + 1}", client[i], cluster[i], http[i],
                               [p for j, p in enumerate(cluster) if j != i], size > 1)
                      for i in range(size)]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def start(self, timeout: float = 30) -> None:
        for node in self.nodes:
            node.start()
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(n.healthy() for n in self.nodes if n.proc is not None):
                return
            time.sleep(0.2)
        logs = "\n".join(n.log_text()[-2000:] for n in self.nodes)
        raise AssertionError(f"NATS nodes not healthy in {timeout} s:\n{logs}")

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()
