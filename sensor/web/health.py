"""Sensor health for the page: live from the daemon, or what the store can tell.

Under ``mamori run`` the page gets a :class:`LiveHealth` built on the running
``Sensor``: packets/s (from the packet counter between two looks), kernel drops,
flows, the last heartbeat sampled for the collectors and the forwarding lag (journal
messages not yet acknowledged). Stand-alone ``mamori web`` has no daemon to ask, so
:class:`StoreHealth` reports only the store (and says that health is live only under
``mamori run``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from mamori.sensor.web.data import StoreReader

HealthSource = Callable[[], dict[str, Any]]


class StoreHealth:
    """What the store file says: last alert, last write, size, assets."""

    def __init__(self, reader: StoreReader) -> None:
        self.reader = reader

    def __call__(self) -> dict[str, Any]:
        return {"live": False, "store": self.reader.summary(), **self.reader.counts()}


class LiveHealth:
    """Health of the running daemon; called from the web server's thread.

    ``Sensor.snapshot()`` only reads counters, and the forwarder's journal is behind
    its own lock, so reading them from another thread is safe.
    """

    def __init__(self, sensor: Any, reader: StoreReader) -> None:
        self.sensor = sensor
        self.store = StoreHealth(reader)
        self._lock = threading.Lock()
        self._last: tuple[float, int] | None = None
        self._pps = 0.0

    def __call__(self) -> dict[str, Any]:
        snap: dict[str, Any] = self.sensor.snapshot()
        now, packets = time.monotonic(), int(snap.get("packets", 0))
        with self._lock:
            if self._last is not None and now - self._last[0] >= 1.0:
                self._pps = (packets - self._last[1]) / (now - self._last[0])
                self._last = (now, packets)
            elif self._last is None:
                self._last = (now, packets)
            pps = self._pps
        interfaces: dict[str, dict[str, Any]] = snap.get("interfaces", {})
        out = self.store()
        out.update({
            "live": True, "uptime": snap.get("uptime"), "packets": packets,
            "pps": round(pps, 1), "flows": snap.get("flows"),
            "drops": sum(int(i.get("dropped", 0)) for i in interfaces.values()),
            "interfaces": interfaces, "forwarding": self._forwarding(),
            "disk": snap.get("disk", {}),
        })
        return out

    def _forwarding(self) -> dict[str, Any]:
        fw = getattr(self.sensor, "forwarder", None)
        if fw is None:
            return {"configured": False}
        return {"configured": True, "unacked": fw.unacked(), "links": fw.link_state(),
                "last_heartbeat": getattr(self.sensor, "last_heartbeat", None)}
