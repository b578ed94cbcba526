"""A SPAN port in network namespaces, for end-to-end tests and the live benchmark.

Topology (every address is a test host of ours, inside namespaces we create)::

    ns P-srv  srv0 10.250.1.1/24 ─┐
                                  ├─ br0 (ns P-tap, a hub) ── gen0 ══ cap0 (ns P-sensor)
    ns P-cli  cli0 10.250.1.2/24 ─┘                                  no IP, ARP off, IPv6
                                                                     off before link up

The bridge forgets MAC addresses at once, so it floods every frame to every port:
the sensor's ``cap0`` sees the server and client talk, exactly like a SPAN port.
``tcpreplay`` on ``gen0`` injects captures straight onto the sensor's wire.
Everything is removed again by ``close()``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

SERVER_IP = "10.250.1.1"
CLIENT_IP = "10.250.1.2"


def sh(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check,
                          timeout=timeout)


class SpanLab:
    def __init__(self, prefix: str = "mmt") -> None:
        self.prefix = prefix
        self.sensor = f"{prefix}-sensor"
        self.tap = f"{prefix}-tap"
        self.srv = f"{prefix}-srv"
        self.cli = f"{prefix}-cli"

    # -- build ---------------------------------------------------------------------------

    def setup(self) -> SpanLab:
        self.close()
        for ns in (self.sensor, self.tap, self.srv, self.cli):
            sh("ip", "netns", "add", ns)
            self.ns(ns, "ip", "link", "set", "lo", "up")
        # The capture end: IPv6 and ARP off before the link ever comes up.
        self._veth(self.tap, "gen0", self.sensor, "cap0")
        self.ns(self.sensor, "sysctl", "-qw", "net.ipv6.conf.cap0.disable_ipv6=1")
        self.ns(self.sensor, "ip", "link", "set", "cap0", "arp", "off")
        self.ns(self.sensor, "ip", "link", "set", "cap0", "up")
        # The hub and the two hosts.
        self.ns(self.tap, "ip", "link", "add", "br0", "type", "bridge", "ageing_time", "0")
        self.ns(self.tap, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        for ns, name, ip in ((self.srv, "srv0", SERVER_IP), (self.cli, "cli0", CLIENT_IP)):
            self._veth(self.tap, f"{name}p", ns, name)
            self.ns(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            self.ns(ns, "ip", "addr", "add", f"{ip}/24", "dev", name)
            self.ns(ns, "ip", "link", "set", name, "up")
            self.ns(self.tap, "ip", "link", "set", f"{name}p", "master", "br0")
            self.ns(self.tap, "ip", "link", "set", f"{name}p", "up")
        self.ns(self.tap, "ip", "link", "set", "gen0", "master", "br0")
        self.ns(self.tap, "ip", "link", "set", "gen0", "up")
        self.ns(self.tap, "ip", "link", "set", "br0", "up")
        return self

    def _veth(self, ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
        """A veth pair between two namespaces.

        Made in the root namespace and then moved: on this kernel a pair created
        straight into two namespaces never gets carrier.
        """
        tmp_a, tmp_b = f"{self.prefix}{name_a}"[:15], f"{self.prefix}{name_b}x"[:15]
        sh("ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b)
        for tmp, ns, name in ((tmp_a, ns_a, name_a), (tmp_b, ns_b, name_b)):
            sh("ip", "link", "set", tmp, "netns", ns)
            self.ns(ns, "ip", "link", "set", tmp, "name", name)

    def close(self) -> None:
        for ns in (self.sensor, self.tap, self.srv, self.cli):
            sh("ip", "netns", "del", ns, check=False)

    # -- use -----------------------------------------------------------------------------

    def ns(self, namespace: str, *args: str, check: bool = True,
           timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", namespace, *args, check=check, timeout=timeout)

    def popen(self, namespace: str, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(["ip", "netns", "exec", namespace, *args], text=True, **kwargs)

    def counter(self, name: str) -> int:
        """A statistics counter of the sensor's capture interface (e.g. tx_packets)."""
        out = self.ns(self.sensor, "cat", f"/sys/class/net/cap0/statistics/{name}")
        return int(out.stdout.strip())

    def replay(self, capture: Path, pps: int, rewrite_to: Path | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """tcpreplay onto the sensor's wire at a fixed rate (addresses rewritten, see below)."""
        source = capture
        if rewrite_to is not None:
            source = self.rewrite(capture, rewrite_to)
        return self.ns(self.tap, "tcpreplay", "-q", "-i", "gen0", f"--pps={pps}", str(source),
                       timeout=timeout)

    @staticmethod
    def rewrite(capture: Path, out: Path) -> Path:
        """Map every conversation of a public capture onto our two test hosts.

        The frames only ever travel from gen0 to cap0 inside our namespaces, but we
        keep foreign addresses off every wire anyway (see tests/pcaprewrite.py for
        why not tcprewrite).
        """
        from tests.pcaprewrite import rewrite

        return rewrite(capture, out, CLIENT_IP, SERVER_IP)


@contextlib.contextmanager
def lab_or_skip(prefix: str) -> Iterator[SpanLab]:
    """A lab that is set up, and removed again afterwards; skipped (failed in CI) where
    namespaces cannot be made."""
    from tests.conftest import unavailable

    why = available()
    if why is not None:
        unavailable(why)
    span = SpanLab(prefix=prefix).setup()
    try:
        yield span
    finally:
        span.close()


def available() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tcpreplay"):
        if subprocess.run(["which", tool], capture_output=True).returncode:
            return f"{tool} is not installed"
    with contextlib.suppress(Exception):
        sh("ip", "netns", "add", "mmt-probe")
        sh("ip", "netns", "del", "mmt-probe")
        return None
    return "cannot create network namespaces"
