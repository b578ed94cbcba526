"""Where the page may listen: loopback by default, a management interface if named,
never a capture interface.

A capture interface should carry no address at all (ARCHITECTURE, principle 1), but
if one does, serving the page there would make the sensor answer on the tap. So an
address that belongs to a ``[capture] interfaces`` entry is refused, and so is the
wildcard address unless ``[web] management_interface`` says the box has one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

from mamori.sensor.capture.addresses import interface_addresses

AddressLookup = Callable[[str], list[str]]


class BindRefused(ValueError):
    """The configured address is not a safe place to serve the page (says why)."""


def interface_ips(name: str, lookup: AddressLookup = interface_addresses) -> set[str]:
    return {str(ipaddress.ip_interface(a).ip) for a in lookup(name) if a}


def check_bind(bind: str, capture: Sequence[str], management: str,
               lookup: AddressLookup = interface_addresses, *, key: str = "[web] bind",
               management_key: str = "[web] management_interface") -> str:
    """The address to bind, or BindRefused naming the rule it breaks.

    ``key`` and ``management_key`` name the keys in the messages: the metrics endpoint
    (``[metrics] listen``) is bound by the same rules as the page."""
    try:
        addr = ipaddress.ip_address(bind.strip("[]"))
    except ValueError:
        raise BindRefused(f"{key} {bind!r} is not an IP address") from None
    if management and management in capture:
        raise BindRefused(f"{management_key} {management} is a capture interface")
    for name in capture:
        if str(addr) in interface_ips(name, lookup):
            raise BindRefused(f"{key} {addr} is an address of capture interface {name}")
    if addr.is_loopback:
        return str(addr)
    if not management:
        raise BindRefused(f"{key} {addr} is not loopback: set {management_key} "
                          "to serve on the network")
    if addr.is_unspecified:
        return str(addr)
    if str(addr) not in interface_ips(management, lookup):
        raise BindRefused(f"{key} {addr} is not an address of management interface "
                          f"{management}")
    return str(addr)
