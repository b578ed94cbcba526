"""DNP3 replays and sequence abuse: the message-to-message state they need.

The parsers see one message at a time; these precursors only show against the
messages before it (PRECURSORS.md D16-D18):

* **D16 replay.** Every DNP3 request is reduced to a *fingerprint*: a hash of
  its application control byte (which holds the sequence number), function code
  and decoded object headers with their details (CROBs, analog outputs, times,
  file and IIN objects). Per association (outstation IP and port, master and
  outstation link addresses) the last ``fingerprints`` of them are kept with the
  host that first sent each. The same fingerprint from *another host* is a
  recorded request replayed (``FRAGMENT_REPLAY``). A master's own poll repeats
  its fingerprint every 16 requests as the sequence number wraps, so within one
  connection a repeat is normal; it is a replay when the sequence number went
  back to reach it (``SESSION_REPLAY``). The same host sending it again on a new
  connection is a master reconnecting as far as metadata can tell, and is not
  reported (docs/floods-and-replays.md says why).
* **D17 sequence.** Per connection and link pair, a new request carries the
  last sequence number plus one; a retry repeats the last number with the same
  fingerprint. The same number with another request, or a number that went back
  (by 1 to 8, modulo 16), is reported (``SEQUENCE_ANOMALY``). A jump forward is
  not: requests the sensor missed look like that. A stream gap resets the
  connection's state. Secure Authentication replies (FC 32, 33) reuse the
  challenged request's number by design and are left out.
* **D18 confirm of nothing.** The parser pairs each CONFIRM with the response
  that asked for it (``paired_fc``). A CONFIRM it could not pair, on a
  connection where a response asking for confirmation was seen, answers nothing
  (``CONFIRM_UNMATCHED``). Before such a response the sensor may have picked the
  connection up mid-stream, so nothing is said.

M16 (a Modbus write identical to the pair's previous request) is found by the
inventory, on the pair it already looks up (``Inventory._write``), and B6
request rates are counted there too.

Bounded state: connections (and link pairs per connection), associations and
fingerprints per association are all capped; the least recently used go first
and are counted in ``evicted``. The first time a table overflows, and then at
most once per ``_NOTICE_EVERY`` seconds of packet time while it keeps
overflowing, a ``DETECTION_STATE_FULL`` finding names it (S7): a replay among
forgotten fingerprints is not seen.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from mamori.parsers.dnp3.events import (
    DNP3Anomaly,
    DNP3AnomalyEvent,
    DNP3Request,
    DNP3Response,
    DNP3Unsolicited,
)
from mamori.parsers.events import Event
from mamori.parsers.stream import FlowId
from mamori.sensor.detection.bounded import DEFAULT_MAX_STATE, LruTable
from mamori.sensor.detection.derived import DerivedEvent, DerivedKind

DEFAULT_FINGERPRINTS = 256  # per association: 16 sequence numbers of 16 distinct requests
_LINKS_PER_FLOW = 16  # link pairs followed per connection; more are ignored (and counted)
_NOTICE_EVERY = 3600.0  # seconds of packet time between two S7 findings for one table
# Secure Authentication: the master's reply to a challenge reuses the sequence
# number of the request challenged (IEEE 1815-2012 7.5), so it is no new request.
_AUTHENTICATION_FCS = frozenset({32, 33})

WATCHED = frozenset({DNP3Request, DNP3Response, DNP3Unsolicited, DNP3AnomalyEvent})

# per link pair of a connection: [last request seq or None, its fingerprint,
# a response asking for confirmation was seen]
_Session = list[Any]
_Prints = OrderedDict[int, tuple[str, FlowId]]  # fingerprint -> (first host, its last flow)


class FloodWatch:
    """Feed it DNP3 events (``WATCHED``); it returns findings or ``None``."""

    def __init__(self, max_state: int = DEFAULT_MAX_STATE,
                 fingerprints: int = DEFAULT_FINGERPRINTS) -> None:
        if max_state < 1 or fingerprints < 1:
            raise ValueError("max_state and fingerprints must be at least 1")
        self.fingerprints = fingerprints
        self._sessions: LruTable[FlowId, dict[tuple[int, int], _Session]] = LruTable(
            max_state, "DNP3 request sequences")
        self._prints: LruTable[tuple[str, int, int, int], _Prints] = LruTable(
            max_state, "DNP3 request fingerprints")
        self.fingerprints_evicted = 0  # forgotten from full associations
        self.links_ignored = 0  # link pairs past _LINKS_PER_FLOW on one connection
        self._noticed: dict[str, tuple[int, float]] = {}  # table -> (evicted, when said)
        self._forgotten = 0  # everything evicted when the tables were last looked at
        self._grew = False  # an entry was added since then (only that can evict)
        # the last connection looked up: consecutive messages of one connection skip
        # hashing its FlowId (no other connection came between, so nothing evicted it)
        self._last_flow: FlowId | None = None
        self._last_links: dict[tuple[int, int], _Session] = {}

    def tables(self) -> tuple[LruTable[Any, Any], ...]:
        return (self._sessions, self._prints)

    @property
    def evicted(self) -> dict[str, int]:
        return {"DNP3 fingerprints per association": self.fingerprints_evicted,
                "DNP3 link pairs per connection": self.links_ignored}

    def observe(self, ev: Event) -> list[DerivedEvent] | None:
        if type(ev) is DNP3Request:
            found = self._request(ev)
        elif type(ev) is DNP3AnomalyEvent:
            if ev.kind is DNP3Anomaly.GAP:  # what was lost may hold any sequence number
                self._sessions.pop(ev.flow, None)
                self._last_flow = None
            return None
        else:
            if (type(ev) is DNP3Response or type(ev) is DNP3Unsolicited) and ev.con:
                session = self._session(ev.flow, (ev.link_dst, ev.link_src), ev.ts)
                if session is not None:
                    session[2] = True
            return None
        if not self._grew:
            return None if found is None else [found]
        self._grew = False
        full = self._full(ev.ts)
        if full is None:
            return None if found is None else [found]
        return full if found is None else [found, *full]

    # -- DNP3 -------------------------------------------------------------------------

    def _session(self, flow: FlowId, link: tuple[int, int], ts: float) -> _Session | None:
        if flow is self._last_flow:
            links = self._last_links
        else:
            held = self._sessions.get(flow)
            if held is None:
                links = {}
                self._sessions.put(flow, links)
                self._grew = True
            else:
                links = held
                self._sessions.move_to_end(flow)
            self._last_flow, self._last_links = flow, links
        session = links.get(link)
        if session is None:
            if len(links) >= _LINKS_PER_FLOW:
                self.links_ignored += 1
                self._grew = True
                return None
            session = links[link] = [None, None, False]
        return session

    def _request(self, ev: DNP3Request) -> DerivedEvent | None:
        flow = ev.flow
        session = self._session(flow, (ev.link_src, ev.link_dst), ev.ts)
        if ev.fc == 0:
            if ev.paired_fc is None and session is not None and session[2]:
                return _dnp3(ev, DerivedKind.CONFIRM_UNMATCHED,
                             f"CONFIRM seq {ev.seq}{' (unsolicited)' if ev.uns else ''} "
                             "of no response awaiting confirmation")
            return None
        if ev.fc in _AUTHENTICATION_FCS:  # answers a challenge with the challenged seq
            return None
        fp = hash((ev.app_control, ev.fc, ev.objects))
        seq = ev.seq
        back = False
        found: DerivedEvent | None = None
        if session is not None and session[0] is not None:
            step = (seq - session[0]) & 15
            if step == 0 and fp != session[1]:
                found = _dnp3(ev, DerivedKind.SEQUENCE_ANOMALY,
                              f"seq {seq} repeated with a different request (not a retry)")
            elif step >= 8:
                back = True
        replay = self._fingerprint(ev, fp, back)
        if replay is not None:
            found = replay
        elif back:
            found = _dnp3(ev, DerivedKind.SEQUENCE_ANOMALY,
                          f"seq went back from {session[0]} to {seq}")  # type: ignore[index]
        if session is not None:
            session[0], session[1] = seq, fp
        return found

    def _fingerprint(self, ev: DNP3Request, fp: int, back: bool) -> DerivedEvent | None:
        flow = ev.flow
        key = (flow.server, flow.server_port, ev.link_src, ev.link_dst)
        prints = self._prints.get(key)
        if prints is None:
            prints = OrderedDict()
            self._prints.put(key, prints)
            self._grew = True
        else:
            self._prints.move_to_end(key)
        seen = prints.get(fp)
        if seen is None:
            prints[fp] = (flow.client, flow)
            if len(prints) > self.fingerprints:
                prints.popitem(last=False)
                self.fingerprints_evicted += 1
                self._grew = True
            return None
        first, last_flow = seen
        if first != flow.client:  # kept as the first host's, so its own polls stay quiet
            return _dnp3(ev, DerivedKind.FRAGMENT_REPLAY,
                         f"{ev.fc_name} seq {ev.seq} identical to a request {first} sent")
        prints[fp] = (first, flow)
        prints.move_to_end(fp)
        if back and last_flow == flow:
            return _dnp3(ev, DerivedKind.SESSION_REPLAY,
                         f"{ev.fc_name} seq {ev.seq} repeats an earlier request of this "
                         "connection, the sequence number gone back to it")
        return None

    # -- bounds -----------------------------------------------------------------------

    def _full(self, ts: float) -> list[DerivedEvent] | None:
        """S7 for a table that forgot entries since it was last reported (rate-limited)."""
        forgotten = self._sessions.evicted + self._prints.evicted \
            + self.fingerprints_evicted + self.links_ignored
        if forgotten == self._forgotten:
            return None  # the common case: nothing forgotten since the last look
        self._forgotten = forgotten
        out: list[DerivedEvent] | None = None
        counts = [(t.name, t.evicted, t.limit) for t in self.tables()]
        counts += [("DNP3 fingerprints per association", self.fingerprints_evicted,
                    self.fingerprints),
                   ("DNP3 link pairs per connection", self.links_ignored, _LINKS_PER_FLOW)]
        for name, evicted, limit in counts:
            if not evicted:
                continue
            said = self._noticed.get(name)
            if said is not None and (said[0] == evicted or ts - said[1] < _NOTICE_EVERY):
                continue
            self._noticed[name] = (evicted, ts)
            if out is None:
                out = []
            out.append(DerivedEvent(
                ts, DerivedKind.DETECTION_STATE_FULL,
                detail=f"detection table '{name}' full ({limit} entries): {evicted} "
                       "forgotten so far, least recently used first; replays or bursts "
                       "among them are not seen"))
        return out


def _dnp3(ev: DNP3Request, kind: DerivedKind, detail: str) -> DerivedEvent:
    flow = ev.flow
    return DerivedEvent(ev.ts, kind, flow.client, flow.client_port, flow.server,
                        flow.server_port, link_src=ev.link_src, link_dst=ev.link_dst,
                        fc=ev.fc, detail=detail)
