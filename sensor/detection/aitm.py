"""Adversary-in-the-middle on the LAN: the IP-to-MAC bindings of ICS assets, watched.

To sit between a master and an outstation, an attacker on their segment poisons
both ARP caches ("the outstation's IP is at my MAC", and the same to the
outstation about the master), then forwards the traffic, reading or editing it.
Every step shows at the link layer and nowhere else:

* an ICS asset's IP claimed from a MAC it was not bound to, by an ARP reply, a
  gratuitous ARP, a request's sender fields, or the frames of an ICS flow
  (``MAC_CHANGED``);
* the real owner claiming the IP again while the rival does (``DUPLICATE_IP``),
  or an address probe (RFC 5227, sender 0.0.0.0) for an asset's IP from
  another MAC;
* ARP replies nobody asked for, and gratuitous ones, which the poisoner must
  keep sending (``ARP_UNSOLICITED``; the rules count them into a storm);
* an ICS connection whose frames change MAC pair mid-connection
  (``FLOW_MAC_CHANGED``, from the pipeline's ``MacPairEvent``);
* and, for host discovery, every ARP request (``ARP_REQUEST``; a rule counts
  distinct targets per sender: an ARP sweep).

A binding is what an IP was first seen at: from the flows (the inventory's
recorded MAC, an imported baseline included, comes first), or from ARP
before the IP carried any ICS flow. Frames alone never prove a binding: a host
behind a router arrives with the router's MAC, and a site with two routers
(or a load-balancing pair) would change it every few packets. So the frames of
a flow raise findings only for IPs that ARP showed to be on this segment. An
owner silent for ``rebind_after`` seconds while another MAC keeps claiming the
IP hands it over (a replaced device raises the alert once, then stops), so the
table follows the network.

State is bounded: ICS assets and other ARP-seen IPs are separate
:class:`LruTable` s, so a flood of forged ARP for random addresses evicts only
other forged entries, never an asset's binding; the requests awaiting a
reply are a third.
"""

from __future__ import annotations

from typing import Any

from mamori.parsers.events import Event
from mamori.parsers.l2 import ArpEvent, ArpOp, MacPairEvent, MacPairKind
from mamori.sensor.detection.bounded import DEFAULT_MAX_STATE, LruTable
from mamori.sensor.detection.derived import DerivedEvent, DerivedKind
from mamori.sensor.detection.inventory import Inventory

WATCHED = frozenset({ArpEvent, MacPairEvent})
_ANY = "0.0.0.0"


class _Binding:
    __slots__ = ("last_ts", "local", "mac", "rival", "rival_ts")

    def __init__(self, mac: str, ts: float, local: bool) -> None:
        self.mac = mac
        self.last_ts = ts
        self.local = local  # ARP showed the IP on this segment
        self.rival: str | None = None
        self.rival_ts = float("-inf")


class AddressWatch:
    """Turns ARP and flow MAC-pair events into AitM findings (``DerivedEvent``)."""

    def __init__(self, inventory: Inventory, max_state: int = DEFAULT_MAX_STATE, *,
                 conflict_window: float = 300.0, rebind_after: float = 3600.0,
                 reply_window: float = 5.0) -> None:
        self.inventory = inventory
        self.conflict_window = conflict_window
        self.rebind_after = rebind_after
        self.reply_window = reply_window
        self._assets: LruTable[str, _Binding] = LruTable(max_state, "ICS asset MAC bindings")
        self._others: LruTable[str, _Binding] = LruTable(max_state, "ARP-seen MAC bindings")
        self._asked: LruTable[tuple[str, str], float] = LruTable(max_state, "ARP requests")

    def tables(self) -> tuple[LruTable[Any, Any], ...]:
        return (self._assets, self._others, self._asked)

    def binding(self, ip: str) -> str | None:
        """The MAC an ICS asset's IP is bound to, if it is one."""
        b = self._assets.get(ip)
        return b.mac if b is not None else None

    def observe(self, ev: Event) -> list[DerivedEvent]:
        if type(ev) is MacPairEvent:
            return self._mac_pair(ev)
        if type(ev) is ArpEvent:
            return self._arp(ev)
        return []

    # -- flows ------------------------------------------------------------------------

    def _mac_pair(self, ev: MacPairEvent) -> list[DerivedEvent]:
        flow = ev.flow
        out: list[DerivedEvent] = []
        if ev.kind is MacPairKind.CHANGED and any(
                self._local(ip) for ip, mac, first in (
                    (flow.client, ev.client_mac, flow.client_mac),
                    (flow.server, ev.server_mac, flow.server_mac)) if mac != first):
            out.append(DerivedEvent(
                ev.ts, DerivedKind.FLOW_MAC_CHANGED, flow.client, flow.client_port,
                flow.server, flow.server_port,
                detail=f"frames of this connection now go {ev.client_mac} -> "
                       f"{ev.server_mac}; it started {flow.client_mac} -> {flow.server_mac}"))
        how = f"frames of the ICS flow {flow.client} -> {flow.server}:{flow.server_port}"
        for ip, mac in ((flow.client, ev.client_mac), (flow.server, ev.server_mac)):
            found = self._claim(ip, mac, ev.ts, how, asset=True)
            if found is not None:
                out.append(found)
        return out

    # -- ARP --------------------------------------------------------------------------

    def _arp(self, ev: ArpEvent) -> list[DerivedEvent]:
        out: list[DerivedEvent] = []
        ts = ev.ts
        forged = "" if ev.src_mac in (None, ev.sender_mac) else \
            f" (sent from Ethernet address {ev.src_mac})"
        if ev.sender_ip == _ANY:  # an address probe: who else uses target_ip?
            b = self._assets.get(ev.target_ip)
            if b is not None and b.mac != ev.sender_mac:
                out.append(DerivedEvent(
                    ts, DerivedKind.DUPLICATE_IP, ev.target_ip,
                    detail=f"{ev.sender_mac} probes for {ev.target_ip}, which is in use at "
                           f"{b.mac}{forged}"))
            return out
        if ev.kind is ArpOp.REQUEST and not ev.gratuitous:
            self._asked.put((ev.target_ip, ev.sender_ip), ts)
            out.append(DerivedEvent(ts, DerivedKind.ARP_REQUEST, ev.sender_ip, dst=ev.target_ip,
                                    detail=f"who has {ev.target_ip}, asks {ev.sender_mac}"))
            how = f"the sender of an ARP request{forged}"
        else:
            asked = None if ev.gratuitous else self._asked.pop(
                (ev.sender_ip, ev.target_ip), None)
            if asked is None or ts - asked > self.reply_window:
                what = "gratuitous ARP" if ev.gratuitous else "ARP reply nobody asked for"
                out.append(DerivedEvent(
                    ts, DerivedKind.ARP_UNSOLICITED, ev.sender_ip,
                    dst=None if ev.gratuitous else ev.target_ip,
                    detail=f"{what}: {ev.sender_ip} is at {ev.sender_mac}{forged}"))
                how = what + forged
            else:
                how = "an ARP reply" + forged
        found = self._claim(ev.sender_ip, ev.sender_mac, ts, how, asset=False)
        if found is not None:
            out.append(found)
        return out

    # -- bindings ---------------------------------------------------------------------

    def _local(self, ip: str) -> bool:
        b = self._assets.get(ip)
        return b.local if b is not None else ip in self._others

    def _claim(self, ip: str, mac: str, ts: float, how: str, *, asset: bool
               ) -> DerivedEvent | None:
        """``mac`` says it has ``ip``: a finding if that contradicts an asset's binding."""
        b = self._assets.get(ip)
        if b is None:
            if not asset:
                other = self._others.get(ip)
                if other is None:
                    self._others.put(ip, _Binding(mac, ts, True))
                elif other.mac == mac:
                    other.last_ts = ts
                return None
            b = self._others.pop(ip, None)
            if b is None:
                known = self.inventory.assets.get(ip)
                b = _Binding(known.mac if known is not None and known.mac else mac, ts, False)
            self._assets.put(ip, b)
        else:
            self._assets.move_to_end(ip)
        if not asset:
            b.local = True
        elif not b.local:
            return None  # frames of an IP ARP never placed here: maybe a router's MAC
        if mac == b.mac:
            b.last_ts = ts
            if b.rival is not None and ts - b.rival_ts <= self.conflict_window:
                return DerivedEvent(ts, DerivedKind.DUPLICATE_IP, ip,
                                    detail=f"{ip} claimed by {b.mac} ({how}) and by "
                                           f"{b.rival} {ts - b.rival_ts:.0f}s before")
            return None
        previous = b.mac
        if b.rival == mac and ts - b.last_ts > self.rebind_after:
            b.mac, b.rival, b.last_ts = mac, None, ts  # the owner went: follow the network
            return DerivedEvent(ts, DerivedKind.MAC_CHANGED, ip,
                                detail=f"{ip} moved from {previous} to {mac} ({how}); "
                                       f"{previous} silent for {self.rebind_after:.0f}s")
        b.rival, b.rival_ts = mac, ts
        return DerivedEvent(ts, DerivedKind.MAC_CHANGED, ip,
                            detail=f"{ip} is bound to {previous}; {how} says {mac}")
