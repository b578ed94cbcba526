"""Sans-IO TCP handshake tracking on ICS ports: connection attempts that never became flows.

A SYN or connect scan of port 502 or 20000 sends no Modbus or DNP3 byte, so no
protocol parser ever sees it. It shows only in the handshakes: a SYN answered
by a RST (refused: nothing listens), a SYN-ACK answered by the client's RST
(half-open: ``nmap -sS``), a SYN nobody answers, and a connection set up and
torn down without a byte of payload (``nmap -sT``; the pipeline reports that
one when the flow ends).

Why a table of its own: if every SYN opened a full flow (reassembler, parser),
a scan of a /16 would fill the flow table with 65,536 dead connections and
evict the real ones. Here an attempt costs one small entry in a bounded
table (``limit``, oldest first) and becomes a flow only once the client
completes the handshake. Past the limit the oldest attempt is forgotten,
counted, and reported as ``HANDSHAKE_TABLE_FULL`` (at most once per
``report_every`` seconds of packet time, with the count), so the sensor says
it is being scanned beyond its memory instead of silently losing real flows.

Port probes: a SYN to a port we do not parse is ignored by the pipeline, but
a SYN to any port of a host known to serve an ICS port is reported
(``PORT_PROBE``) so rules can count distinct ports per source and server. The
set of known servers is bounded the same way.

Everything runs on packet time; nothing here reads a clock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from mamori.parsers.fastinit import fast_init
from mamori.parsers.packet import ip_to_str
from mamori.parsers.stream import FlowId, Transport

__all__ = ["HandshakeTable", "Link", "Pending", "TransportEvent", "TransportKind"]

TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10

Key = tuple[int, bytes, int, bytes, int]  # proto, server, server port, client, client port
Segment = tuple[int, int, int, float]  # seq, ack, flags, ts
# client MAC, server MAC, VLAN of the frame whose FlowId an entry holds: the flow the
# handshake becomes reuses that FlowId when its own first frame has the same three.
Link = tuple[bytes | None, bytes | None, int | None]


class TransportKind(Enum):
    REFUSED = "refused"  # the server answered the SYN with a RST
    HALF_OPEN = "half_open"  # SYN, SYN-ACK, then the client's RST instead of its ACK
    UNANSWERED = "unanswered"  # SYN with neither SYN-ACK nor RST within the timeout
    EMPTY_CONNECTION = "empty_connection"  # set up, then closed without any payload
    PORT_PROBE = "port_probe"  # SYN to a port we do not parse on a known ICS server
    HANDSHAKE_TABLE_FULL = "handshake_table_full"  # attempts forgotten at the cap


@fast_init
@dataclass(frozen=True, slots=True)
class TransportEvent:
    """One finding about a connection attempt; ``flow`` is None for table-wide ones.

    ``count`` is the number of attempts a ``HANDSHAKE_TABLE_FULL`` report forgot
    since the previous one (0 for the other kinds).
    """

    ts: float
    kind: TransportKind
    flow: FlowId | None
    detail: str = ""
    count: int = 0


class Pending:
    """An attempt in progress: the client's SYN and the server's answer, as seen.

    ``link`` is what the caller said about the frame ``flow`` was made from (see
    ``Link``), None when it said nothing."""

    __slots__ = ("flow", "link", "syn", "synack", "ts")

    def __init__(self, flow: FlowId, ts: float, link: Link | None = None) -> None:
        self.flow = flow
        self.ts = ts
        self.link = link
        self.syn: Segment | None = None
        self.synack: Segment | None = None


class HandshakeTable:
    """Bounded, oldest-first table of handshakes in progress, and of known ICS servers."""

    def __init__(self, limit: int = 4096, timeout: float = 10.0, max_servers: int = 4096,
                 report_every: float = 60.0) -> None:
        if limit < 1 or max_servers < 1:
            raise ValueError("handshake and server limits must be at least 1")
        if not timeout > 0:
            raise ValueError("the handshake timeout must be longer than 0 s")
        self.limit = limit
        self.timeout = timeout
        self.max_servers = max_servers
        self.report_every = report_every
        self._pending: OrderedDict[Key, Pending] = OrderedDict()  # oldest attempt first
        self._servers: OrderedDict[bytes, None] = OrderedDict()
        self.evicted = 0  # attempts forgotten at the cap, since creation
        self._unreported = 0
        self._next_report = float("-inf")

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def known_servers(self) -> int:
        return len(self._servers)

    def get(self, key: Key) -> Pending | None:
        return self._pending.get(key)

    def note_server(self, server: bytes) -> None:
        """``server`` serves an ICS port (it answered or carried an ICS flow)."""
        servers = self._servers
        if server in servers:
            servers.move_to_end(server)
            return
        servers[server] = None
        if len(servers) > self.max_servers:
            servers.popitem(last=False)

    def open(self, key: Key, make_flow: Callable[[], FlowId], ts: float,
             link: Link | None = None) -> tuple[Pending, list[TransportEvent]]:
        """The entry for ``key``, created (and the table trimmed) if it is new; ``link``
        is kept on a new entry with the FlowId ``make_flow`` makes."""
        pending = self._pending.get(key)
        events: list[TransportEvent] = []
        if pending is not None:
            self._pending.move_to_end(key)
            pending.ts = ts
            return pending, events
        if self._pending:  # (one connection at a time leaves nothing to expire)
            events = self.expire(ts)
        pending = self._pending[key] = Pending(make_flow(), ts, link)
        if len(self._pending) > self.limit:
            self._pending.popitem(last=False)
            self.evicted += 1
            self._unreported += 1
            if ts >= self._next_report:
                self._next_report = ts + self.report_every
                events.append(self._full_report(ts))
        return pending, events

    def _full_report(self, ts: float) -> TransportEvent:
        forgotten, self._unreported = self._unreported, 0
        return TransportEvent(
            ts, TransportKind.HANDSHAKE_TABLE_FULL, None,
            f"connection-attempt table full ({self.limit}); forgot the oldest attempts, "
            f"{forgotten} since the last report ({self.evicted} in all): a scan beyond "
            f"the sensor's memory", forgotten)

    def syn(self, key: Key, make_flow: Callable[[], FlowId], seq: int, flags: int,
            ts: float, link: Link | None = None) -> list[TransportEvent]:
        pending, events = self.open(key, make_flow, ts, link)
        pending.syn = (seq, 0, flags, ts)
        return events

    def answer(self, key: Key, make_flow: Callable[[], FlowId], seq: int, ack: int,
               flags: int, ts: float, link: Link | None = None) -> list[TransportEvent]:
        """A segment from the server on a connection with no flow yet (SYN-ACK or RST)."""
        if flags & TCP_RST:
            pending = self._pending.pop(key, None)
            if pending is not None and pending.synack is not None:
                return [TransportEvent(ts, TransportKind.HALF_OPEN, pending.flow,
                                       "the server reset the connection it had accepted")]
            flow = pending.flow if pending is not None else make_flow()
            detail = "RST answered the SYN" if pending is not None and pending.syn else \
                "RST from the server to a connection never seen open"
            return [TransportEvent(ts, TransportKind.REFUSED, flow, detail)]
        pending, events = self.open(key, make_flow, ts, link)
        pending.synack = (seq, ack, flags, ts)
        self.note_server(key[1])
        return events

    def client_reset(self, key: Key, ts: float) -> list[TransportEvent]:
        """The client's RST before it completed the handshake."""
        pending = self._pending.pop(key, None)
        if pending is None:
            return []
        if pending.synack is not None:
            return [TransportEvent(ts, TransportKind.HALF_OPEN, pending.flow,
                                   "SYN-ACK answered by the client's RST (half-open)")]
        return [TransportEvent(ts, TransportKind.UNANSWERED, pending.flow,
                               "the client gave up before any answer")]

    def complete(self, key: Key) -> Pending | None:
        """The client's first segment after the handshake: the attempt becomes a flow."""
        return self._pending.pop(key, None)

    def expire(self, ts: float) -> list[TransportEvent]:
        """Attempts older than the timeout, oldest first: unanswered, or left half-open."""
        pending = self._pending
        deadline = ts - self.timeout
        events: list[TransportEvent] = []
        while pending:
            key, entry = next(iter(pending.items()))
            if entry.ts >= deadline:
                break
            del pending[key]
            events.append(self._timed_out(entry, ts))
        return events

    def flush(self, ts: float) -> list[TransportEvent]:
        """End of input: every attempt still waiting ends unanswered or half-open.

        Attempts forgotten since the last table-full report are reported now, so
        the reports always add up to ``evicted``.
        """
        events = [self._timed_out(entry, ts) for entry in self._pending.values()]
        self._pending.clear()
        if self._unreported:
            events.append(self._full_report(ts))
        return events

    @staticmethod
    def _timed_out(entry: Pending, ts: float) -> TransportEvent:
        if entry.synack is not None:
            return TransportEvent(ts, TransportKind.HALF_OPEN, entry.flow,
                                  "SYN-ACK never acknowledged by the client")
        return TransportEvent(ts, TransportKind.UNANSWERED, entry.flow,
                              "SYN never answered")

    def probe(self, src: bytes, sport: int, dst: bytes, dport: int,
              ts: float) -> TransportEvent | None:
        """A SYN to a port we do not parse: a finding only if ``dst`` is a known ICS server."""
        if dst not in self._servers:
            return None
        flow = FlowId(Transport.TCP, ip_to_str(src), sport, ip_to_str(dst), dport)
        return TransportEvent(ts, TransportKind.PORT_PROBE, flow,
                              f"SYN to port {dport} of an ICS server")
