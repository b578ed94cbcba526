"""The IP addresses an interface carries, from ``ip -j addr show dev NAME``.

Two places need them: ``mamori check-iface`` (a capture interface should carry none)
and the bind checks of the web page and the metrics endpoint
(``mamori.sensor.web.bind``: never listen on a capture interface's address). An
interface the tool cannot describe (no ``ip``, no such interface, a timeout) has
none that we know of: the callers then refuse or warn on what they can see.
"""

from __future__ import annotations

import json
import subprocess


def interface_addresses(name: str) -> list[str]:
    """``ADDRESS/PREFIXLEN`` for each address of interface ``name`` (IPv4 and IPv6)."""
    try:
        out = subprocess.run(["ip", "-j", "addr", "show", "dev", name], capture_output=True,
                             text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    found: list[str] = []
    for link in json.loads(out or "[]"):
        for info in link.get("addr_info", []):
            found.append(f"{info.get('local')}/{info.get('prefixlen')}")
    return found
