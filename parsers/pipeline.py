"""Frames in, protocol events out: decode, flow table, reassembly, parsers.

This is the glue between the capture sources and the sans-IO parsers. It is the
hot path of the sensor: every captured frame passes through ``Pipeline.packet``,
so the common case (an in-order TCP segment of a known flow) is a handful of
dict look-ups and one call into the reassembler.

Flows are keyed on the server side, which is the side holding a configured
protocol port. A frame on no configured port is counted and dropped before any
flow state exists, so unrelated traffic cannot fill the flow table.

The flow table is bounded (``max_flows``) and least-recently-used: a full table
evicts the flow that has been quiet the longest and says so with a
``PipelineAnomalyEvent``. Idle flows expire by *packet* time, never the wall
clock, so a replay gives the same events every time.

A TCP connection that has ended both ways lingers ``closed_linger`` seconds so
its last ACKs find it, but at most ``max_closed_flows`` of those ended by a FIN
or RST do: past that the connection that ended first expires early, exactly as its linger would have
ended it (a closed connection has nothing left to flush). Without that bound a
storm of short connections (30,000 sources, one write each) keeps every one of
them, parser and reassembler included, for the whole linger.

A TCP connection becomes a flow only once its client completes the handshake:
until then the SYN and the server's answer wait in a bounded handshake table
(``mamori.parsers.handshake``), so a SYN scan of a /16 cannot fill the flow table
and evict the real flows. Refused, half-open and unanswered attempts, and
connections closed without payload, come out as ``TransportEvent``; ARP frames
as ``ArpEvent``; each Ethernet flow's MAC pair as ``MacPairEvent``, when it
starts and whenever a new pair appears mid-connection (``mamori.parsers.l2``).
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from typing import TYPE_CHECKING, Final, cast

from mamori.parsers.dnp3 import DNP3Parser
from mamori.parsers.dnp3.events import DNP3Application
from mamori.parsers.dnp3.memo import DNP3Memo
from mamori.parsers.handshake import HandshakeTable, Link, Pending, TransportEvent, TransportKind
from mamori.parsers.l2 import ArpEvent, MacPairEvent, MacPairKind, decode_arp
from mamori.parsers.modbus import ModbusParser, RequestMemo
from mamori.parsers.modbus.events import ModbusResponse
from mamori.parsers.packet import (
    Decoded,
    DecodeProblem,
    PacketAnomaly,
    decode,
    ip_to_str,
    mac_to_str,
)
from mamori.parsers.packetring import PacketRing
from mamori.parsers.stream import Direction, FlowId, StreamParser, Transport
from mamori.parsers.tcp import TcpReassembler

if TYPE_CHECKING:
    from mamori.parsers.events import Event

MODBUS = "modbus"
DNP3 = "dnp3"


class PipelineAnomaly(Enum):
    """Sensor-level blind spots that no single protocol parser can see."""

    FLOW_TABLE_FULL = "flow_table_full"  # a flow was evicted to make room
    IP_FRAGMENT = "ip_fragment"  # fragments are not reassembled; counted
    MALFORMED_FRAME = "malformed_frame"  # L2-L4 headers did not decode


@dataclass(frozen=True, slots=True)
class PipelineAnomalyEvent:
    ts: float
    kind: PipelineAnomaly
    detail: str
    frame: int = 0
    flow: FlowId | None = None


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """Limits and ports. Everything here is a plain value so configs can build it."""

    modbus_ports: frozenset[int] = frozenset({502})
    dnp3_ports: frozenset[int] = frozenset({20000})
    max_flows: int = 65536
    tcp_idle_timeout: float = 600.0
    udp_idle_timeout: float = 120.0
    closed_linger: float = 30.0
    max_closed_flows: int = 4096
    max_buffered_per_flow: int = 256 * 1024
    max_handshakes: int = 4096  # connection attempts not yet flows (a scan's footprint)
    handshake_timeout: float = 10.0  # seconds of packet time a SYN waits for its answer

    def __post_init__(self) -> None:
        both = self.modbus_ports & self.dnp3_ports
        if both:
            raise ValueError(f"port(s) {sorted(both)} configured for both Modbus and DNP3")
        for port in self.modbus_ports | self.dnp3_ports:
            if not 0 < port < 65536:
                raise ValueError(f"port {port} is out of range 1-65535")
        if self.max_flows < 1:
            raise ValueError("max_flows must be at least 1")
        if self.max_closed_flows < 1:
            raise ValueError("max_closed_flows must be at least 1")
        if self.max_handshakes < 1:
            raise ValueError("max_handshakes must be at least 1")


@dataclass
class PipelineStats:
    packets: int = 0
    bytes: int = 0
    ignored: int = 0  # IP traffic on ports we do not parse
    not_ip: int = 0  # ARP, LLDP, other ethertypes and IP protocols
    arp: int = 0  # ARP messages decoded (also counted in not_ip)
    problems: Counter[str] = field(default_factory=Counter)
    flows_created: int = 0
    flows_expired: int = 0
    flows_evicted: int = 0
    flows_closed_early: int = 0  # ended connections expired before their linger was over
    first_ts: float | None = None
    last_ts: float | None = None


class _Flow:
    """State held for one conversation. Plain slotted class: it is mutable by nature."""

    __slots__ = ("cmac", "empty", "id", "last_ts", "macs", "parser", "proto", "smac", "tcp")

    def __init__(
        self, flow_id: FlowId, proto: str, parser: StreamParser[Event],
        tcp: TcpReassembler[Event] | None, ts: float,
    ) -> None:
        self.id = flow_id
        self.proto = proto
        self.parser = parser
        self.tcp = tcp
        self.last_ts = ts
        self.empty = False  # set up by a whole handshake, no payload yet
        self.cmac: bytes | None = None  # the MAC pair of the last frame (Ethernet only)
        self.smac: bytes | None = None
        self.macs: tuple[tuple[bytes, bytes], ...] = ()  # pairs seen, at most _MAX_PAIRS


FlowKey = tuple[int, bytes, int, bytes, int]
_EMPTY: Final[list[Event]] = []
# Responses learn the number of the frame that completed them: the inventory keeps it
# as the evidence of where a device announced its identity. Set through the slot
# (the events are frozen); only server-to-client segments are scanned. getattr: mypyc
# before 1.10 takes ``type.__dict__`` for a dict and rejects the mappingproxy it is.
_SET_MODBUS_FRAME: Final = getattr(ModbusResponse, "__dict__")["frame"].__set__  # noqa: B009
_SET_DNP3_FRAME: Final = getattr(DNP3Application, "__dict__")["frame"].__set__  # noqa: B009
_TO_SERVER: Final = Direction.TO_SERVER
_TO_CLIENT: Final = Direction.TO_CLIENT
_LRU_RESOLUTION: Final = 1.0  # seconds of packet time
_MAX_PAIRS: Final = 4  # MAC pairs one flow reports; a flow flapping between more says so once each
_SYN: Final = 0x02
_RST: Final = 0x04
_ACK: Final = 0x10


def _number(events: Sequence[Event], frame_no: int) -> None:
    """Stamp the responses among one frame's events with that frame's number."""
    for ev in events:
        if type(ev) is ModbusResponse:
            _SET_MODBUS_FRAME(ev, frame_no)
        elif isinstance(ev, DNP3Application):
            _SET_DNP3_FRAME(ev, frame_no)


class Pipeline:
    """Feed it frames with ``packet``; call ``finish`` at the end of the input."""

    _SWEEP_EVERY = 1024  # packets between idle-expiry checks, and at least ...
    # ... once per shortest timeout of packet time: on a quiet link (or the next copy of
    # a capture an hour on) a packet count alone would leave long-idle flows in the
    # table, and the first packet of a new connection on one's 4-tuple would join it.

    def __init__(self, config: PipelineConfig | None = None) -> None:
        self.config = config or PipelineConfig()
        self.stats = PipelineStats()
        self._proto_by_port: dict[int, str] = {p: MODBUS for p in self.config.modbus_ports}
        self._proto_by_port.update({p: DNP3 for p in self.config.dnp3_ports})
        self._flows: OrderedDict[FlowKey, _Flow] = OrderedDict()
        self._closed: OrderedDict[FlowKey, _Flow] = OrderedDict()  # ended, oldest first
        self._until_sweep = self._SWEEP_EVERY
        self._sweep_gap = min(self.config.tcp_idle_timeout, self.config.udp_idle_timeout,
                              self.config.closed_linger)
        self._sweep_at = math.inf  # packet time of the next sweep, set by the first packet
        self._handshakes = HandshakeTable(self.config.max_handshakes,
                                          self.config.handshake_timeout)
        # One memo of decoded Modbus requests for every connection: a poll set is
        # mostly the same few requests, on one connection or on many.
        self._request_memo = RequestMemo()
        self._factories: dict[str, Callable[[FlowId], StreamParser[Event]]] = {
            MODBUS: self._modbus_parser,
            DNP3: partial(DNP3Parser, memo=DNP3Memo()),  # one memo for all DNP3 flows
        }
        # Recent frames per flow (mamori.parsers.packetring), fed when set; None: not kept.
        self.ring: PacketRing | None = None

    @property
    def active_flows(self) -> int:
        return len(self._flows)

    @property
    def handshakes(self) -> HandshakeTable:
        return self._handshakes

    @property
    def request_memo(self) -> RequestMemo:
        """The decoded Modbus requests shared by the flows (its counters: hit rate)."""
        return self._request_memo

    def packet(self, ts: float, linktype: int, frame: bytes, frame_no: int = 0) -> Sequence[Event]:
        """Process one captured frame; return the events it completed."""
        stats = self.stats
        stats.packets += 1
        stats.bytes += len(frame)
        if stats.first_ts is None:
            stats.first_ts = ts
            self._sweep_at = ts + self._sweep_gap
        stats.last_ts = ts
        self._until_sweep -= 1
        swept: list[Event] = (self._sweep(ts) if self._until_sweep <= 0 or ts >= self._sweep_at
                              else _EMPTY)

        decoded = decode(linktype, frame)
        if type(decoded) is DecodeProblem:
            return swept + self._problem(ts, decoded, frame_no, linktype, frame)
        pkt = cast(Decoded, decoded)
        # One unpack instead of an attribute load per use (some fields are read twice).
        proto, src, dst, sport, dport, seq, ack, flags, payload, src_mac, dst_mac, _ = pkt
        ports = self._proto_by_port
        if dport in ports and not (sport in ports and (proto, src, sport, dst, dport)
                                   in self._flows):
            key: FlowKey = (proto, dst, dport, src, sport)
            direction = _TO_SERVER
        elif sport in ports:
            key = (proto, src, sport, dst, dport)
            direction = _TO_CLIENT
        else:
            stats.ignored += 1
            if proto == 6 and flags & 0x12 == _SYN:
                probe = self._handshakes.probe(src, sport, dst, dport, ts)
                if probe is not None:
                    return [*swept, probe]
            return swept

        if self.ring is not None:  # issue 20: the packets behind an alert
            self.ring.add(key, ts, linktype, frame)
        flows = self._flows
        flow = flows.get(key)
        if flow is None:
            pending: Pending | None = None
            if proto == 6:
                if not payload:
                    early = self._attempt(key, pkt, direction, ts)
                    if early is not None:
                        return swept + early if swept else early
                pending = self._handshakes.complete(key)
            flow, evicted = self._new_flow(key, pkt, direction, ts, pending)
            if evicted:
                swept = swept + evicted
            if pending is not None:
                tcp = flow.tcp
                assert tcp is not None
                # The waiting SYN and SYN-ACK, in order, to the new flow's reassembler.
                opened = tcp.handshake(pending.syn, pending.synack)
                if opened:
                    swept = swept + list(opened)
                flow.empty = pending.syn is not None and pending.synack is not None
            if flow.cmac is not None:  # then the FlowId has both MACs, formatted
                flow_id = flow.id
                swept = [*swept, MacPairEvent(ts, MacPairKind.STARTED, flow_id,
                                              flow_id.client_mac or "", flow_id.server_mac or "")]
        elif ts - flow.last_ts > _LRU_RESOLUTION:
            # Keeping the LRU order to the second is enough for minute-long timeouts,
            # and saves a re-link on nearly every packet of a busy flow.
            flows.move_to_end(key)
        flow.last_ts = ts
        if dst_mac is not None and flow.cmac is not None:
            if direction is _TO_SERVER:
                if src_mac != flow.cmac or dst_mac != flow.smac:
                    swept = swept + self._mac_pair(flow, src_mac, dst_mac, ts)
            elif dst_mac != flow.cmac or src_mac != flow.smac:
                swept = swept + self._mac_pair(flow, dst_mac, src_mac, ts)

        tcp = flow.tcp
        if tcp is not None:
            if flow.empty and payload:
                flow.empty = False
            events: Sequence[Event] = tcp.segment(direction, seq, flags, payload, ts, ack)
            if flags & 0x05 and tcp.closed:  # FIN or RST that ended the connection
                swept = self._ended(key, flow, ts, swept)
        elif payload:
            events = flow.parser.receive(direction, payload, ts)
        else:
            events = _EMPTY
        if events and direction is _TO_CLIENT and frame_no:
            _number(events, frame_no)
        if swept:
            return swept + list(events)
        return events

    def finish(self, ts: float | None = None) -> list[Event]:
        """End of input: close every flow, flushing partial data as gaps and EOFs."""
        end = ts if ts is not None else (self.stats.last_ts or 0.0)
        events: list[Event] = []
        self._closed.clear()
        while self._flows:
            _, flow = self._flows.popitem(last=False)
            events.extend(self._close(flow, end))
        events.extend(self._handshakes.flush(end))
        return events

    # -- internals -------------------------------------------------------------------

    def _modbus_parser(self, flow_id: FlowId) -> StreamParser[Event]:
        return ModbusParser(flow_id, memo=self._request_memo)

    def _problem(self, ts: float, problem: DecodeProblem, frame_no: int, linktype: int,
                 frame: bytes) -> list[Event]:
        name = problem.anomaly.name
        if not problem.anomaly.is_anomaly:
            self.stats.not_ip += 1
            if problem.anomaly is PacketAnomaly.NOT_IP:
                arp = decode_arp(ts, linktype, frame)
                if type(arp) is ArpEvent:
                    self.stats.arp += 1
                    return [arp]
                if arp is not None:  # the ARP ethertype, but not ARP we can read
                    self.stats.problems["ARP_MALFORMED"] += 1
            return _EMPTY
        self.stats.problems[name] += 1
        kind = (PipelineAnomaly.IP_FRAGMENT if name == "IP_FRAGMENT"
                else PipelineAnomaly.MALFORMED_FRAME)
        return [PipelineAnomalyEvent(ts, kind, f"{name}: {problem.detail}", frame_no)]

    def _attempt(self, key: FlowKey, pkt: Decoded, direction: Direction,
                 ts: float) -> list[Event] | None:
        """A payload-less TCP segment of no flow: handshake events, or None to open a flow."""
        flags = pkt.flags
        table = self._handshakes
        # Sorted out first: the client's ACK that completes a handshake (once per
        # connection) needs neither the link nor the FlowId maker.
        if direction is _TO_SERVER:
            if flags & _RST:  # gave up, or a stray reset: nothing to parse either way
                found: list[Event] = list(table.client_reset(key, ts))
                if not found:
                    self.stats.ignored += 1
                return found
            if not flags & _SYN or flags & _ACK:
                return None
            link: Link = (pkt.src_mac, pkt.dst_mac, pkt.vlan)
        else:
            if not flags & _RST and flags & (_SYN | _ACK) != _SYN | _ACK:
                return None
            link = (pkt.dst_mac, pkt.src_mac, pkt.vlan)

        def make() -> FlowId:
            return self._flow_id(key, link)

        if direction is _TO_SERVER:
            return list(table.syn(key, make, pkt.seq, flags, ts, link))
        return list(table.answer(key, make, pkt.seq, pkt.ack, flags, ts, link))

    def _mac_pair(self, flow: _Flow, client: bytes | None, server: bytes | None, ts: float
                  ) -> list[Event]:
        """A frame of the flow with another MAC pair: reported the first time it is seen."""
        if client is None or server is None or (client[0] | server[0]) & 1:  # group address
            return _EMPTY
        flow.cmac, flow.smac = client, server
        pair = (client, server)
        if pair in flow.macs or len(flow.macs) >= _MAX_PAIRS:
            return _EMPTY
        flow.macs += (pair,)
        return [MacPairEvent(ts, MacPairKind.CHANGED, flow.id, mac_to_str(client),
                             mac_to_str(server))]

    @staticmethod
    def _flow_id(key: FlowKey, link: Link) -> FlowId:
        """The flow of ``key`` as seen in a frame with ``link``'s MACs and VLAN."""
        proto_num, server_raw, server_port, client_raw, client_port = key
        client_mac, server_mac, vlan = link
        return FlowId(
            transport=Transport.TCP if proto_num == 6 else Transport.UDP,
            client=ip_to_str(client_raw),
            client_port=client_port,
            server=ip_to_str(server_raw),
            server_port=server_port,
            client_mac=mac_to_str(client_mac) if client_mac else None,
            server_mac=mac_to_str(server_mac) if server_mac else None,
            vlan=vlan,
        )

    def _new_flow(
        self, key: FlowKey, pkt: Decoded, direction: Direction, ts: float,
        pending: Pending | None = None,
    ) -> tuple[_Flow, list[Event]]:
        """A flow for ``key``; ``pending`` is its handshake, whose FlowId it takes when
        the handshake's frame had this frame's MACs and VLAN (it would be equal)."""
        proto_num, server_raw, server_port, _, _ = key
        transport = Transport.TCP if proto_num == 6 else Transport.UDP
        to_server = direction is _TO_SERVER
        cmac, smac = (pkt.src_mac, pkt.dst_mac) if to_server else (pkt.dst_mac, pkt.src_mac)
        link = (cmac, smac, pkt.vlan)
        if pending is not None and pending.link == link:
            flow_id = pending.flow
        else:
            flow_id = self._flow_id(key, link)
        proto = self._proto_by_port[server_port]
        parser = self._factories[proto](flow_id)
        tcp = (TcpReassembler(flow_id, parser, max_buffered=self.config.max_buffered_per_flow)
               if transport is Transport.TCP else None)
        evicted: list[Event] = []
        if len(self._flows) >= self.config.max_flows:
            victim_key, victim = self._flows.popitem(last=False)
            self._closed.pop(victim_key, None)
            self.stats.flows_evicted += 1
            evicted.append(PipelineAnomalyEvent(
                ts, PipelineAnomaly.FLOW_TABLE_FULL,
                f"flow table full ({self.config.max_flows}); evicted the least recently "
                f"active flow", flow=victim.id))
            evicted.extend(self._close(victim, ts))
        flow = _Flow(flow_id, proto, parser, tcp, ts)
        if cmac is not None and smac is not None and not (cmac[0] | smac[0]) & 1:
            flow.cmac, flow.smac = cmac, smac
            flow.macs = ((cmac, smac),)
        self._flows[key] = flow
        self._handshakes.note_server(server_raw)
        self.stats.flows_created += 1
        return flow, evicted

    def _ended(self, key: FlowKey, flow: _Flow, ts: float, events: list[Event]) -> list[Event]:
        """Note an ended connection; expire the oldest ended one past ``max_closed_flows``."""
        if flow.empty:  # set up and torn down without a byte: a connect scan's footprint
            flow.empty = False
            events = [*events, TransportEvent(ts, TransportKind.EMPTY_CONNECTION, flow.id,
                                              "connection closed without any payload")]
        closed = self._closed
        closed[key] = flow
        closed.move_to_end(key)
        if len(closed) <= self.config.max_closed_flows:
            return events
        old_key, old = closed.popitem(last=False)
        # Only if it is still that flow, still ended (a reused 4-tuple reopens it).
        if self._flows.get(old_key) is old and old.tcp is not None and old.tcp.closed:
            del self._flows[old_key]
            self.stats.flows_expired += 1
            self.stats.flows_closed_early += 1
            flushed = self._close(old, ts)
            if flushed:
                return events + flushed
        return events

    def _close(self, flow: _Flow, ts: float) -> list[Event]:
        if flow.tcp is not None:
            return list(flow.tcp.close(ts))
        return list(flow.parser.eof(Direction.TO_SERVER, ts)) + list(
            flow.parser.eof(Direction.TO_CLIENT, ts))

    def _sweep(self, ts: float) -> list[Event]:
        """Expire idle flows, oldest first.

        The table is in least-recently-active order, so the scan stops at the first
        flow younger than the shortest timeout. A TCP connection that has ended (FIN
        or RST both ways) lingers only ``closed_linger`` seconds, so the last ACKs
        still find it instead of opening a "mid-stream" flow.
        """
        self._until_sweep = self._SWEEP_EVERY
        self._sweep_at = ts + self._sweep_gap
        config = self.config
        tcp_deadline = ts - config.tcp_idle_timeout
        udp_deadline = ts - config.udp_idle_timeout
        closed_deadline = ts - config.closed_linger
        newest_deadline = max(tcp_deadline, udp_deadline, closed_deadline)
        expired: list[FlowKey] = []
        for key, flow in self._flows.items():
            if flow.last_ts >= newest_deadline:
                break
            tcp = flow.tcp
            if tcp is None:
                deadline = udp_deadline
            else:
                deadline = closed_deadline if tcp.closed else tcp_deadline
            if flow.last_ts < deadline:
                expired.append(key)
        events: list[Event] = []
        for key in expired:
            flow = self._flows.pop(key)
            self._closed.pop(key, None)
            self.stats.flows_expired += 1
            events.extend(self._close(flow, ts))
        events.extend(self._handshakes.expire(ts))
        return events
