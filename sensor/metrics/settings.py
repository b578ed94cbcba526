"""The ``[metrics]`` configuration keys (``OPTIONS``; ``mamori.sensor.schema`` holds them all).

One ``listen`` key for both the sensor and the collector: ``ADDRESS:PORT`` (an IPv6
address in brackets), or empty for no endpoint, which is the default. Off by default
because several sensor instances share a box (``mamori-sensor@eth1``, ``@eth2``): a
default port would make the second instance fail to start; each instance is given its
own port where metrics are wanted. The address is validated at load (file, line and
key on a mistake); whether it is a safe place to listen (loopback, the management
interface, never a capture interface) is checked at start, as for the web page
(:mod:`mamori.sensor.web.bind`), because it needs the interfaces' addresses.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from mamori.sensor import configkit as cfg


@dataclass(frozen=True, slots=True)
class ListenAddress:
    host: str  # an IP address literal, without brackets
    port: int  # 0: any free port (tests)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(text: str) -> ListenAddress:
    """``127.0.0.1:9470`` or ``[::1]:9470``; ValueError saying what is wrong."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not ADDRESS:PORT (e.g. 127.0.0.1:9470, [::1]:9470)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: an IPv6 address goes in brackets, e.g. [::1]:9470")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address "
                         "(a host name is not accepted: the address is checked)") from None
    if not port.isascii() or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: {port!r} is not a port number (0-65535)")
    return ListenAddress(str(addr), int(port))


def v_listen(value: Any) -> str:
    """The address normalised (``[::1]:9470``), or "" for none."""
    text = cfg.v_str(value).strip()
    return str(parse_listen(text)) if text else ""


def listen_address(config: cfg.Config) -> ListenAddress | None:
    """``[metrics] listen`` of a loaded configuration (validated), None when off."""
    text: str = config.get("metrics", "listen")
    return parse_listen(text) if text else None


OPTIONS: tuple[cfg.Option, ...] = (
    cfg.Option("metrics", "listen", "", v_listen,
               "ADDRESS:PORT of the Prometheus /metrics endpoint (e.g. 127.0.0.1:9470); "
               "empty: none. Anything but loopback needs management_interface; a capture "
               "interface's address is refused", "--metrics-listen"),
    cfg.Option("metrics", "management_interface", "", cfg.v_str,
               "name of the management interface the endpoint may listen on"),
)
