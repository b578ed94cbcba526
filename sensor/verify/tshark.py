"""``mamori verify FILE.pcap``: Mamori's parsing checked field by field against tshark.

Operators with unusual devices need to know whether Mamori reads their traffic the way
Wireshark's dissectors do before they trust an alert. This runs the capture through
Mamori's pipeline (noting which frame completed each message) and through tshark via
pyshark, pairs the messages frame by frame (Modbus: per TCP direction, in order), and
counts per field how often the two agree; every disagreement is listed with its frame.

tshark is not always right. Where it is known to be wrong in general, sensor/verify/known.py
says so, with the evidence; the differential tests (tests/sensor/test_modbus_vs_tshark.py,
test_dnp3_vs_tshark.py) use the same module, so the tool and the tests cannot drift.
verify applies those rules the same way, requires Mamori's own evidence where they do
(an anomaly event of that stream at that time: a missing one is an ``evidence``
disagreement), and prints each use as a "known tshark error" line with the reason,
apart from agreements and disagreements. A caller that knows single frames of a capture
where tshark is wrong (the tests, for the corpus) passes them as ``FrameNotes``; they
are applied, and their evidence required, the same way.

pyshark runs tshark once per capture and parses its JSON: a few hundred frames a
second, fine for a verification tool, not for the sensor (which never imports this).
"""

from __future__ import annotations

import asyncio
import difflib
import json
import re
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import KW_ONLY, asdict, dataclass, field
from pathlib import Path
from typing import Any

from mamori.parsers.dnp3.events import DNP3Anomaly, DNP3AnomalyEvent, DNP3Application
from mamori.parsers.events import Event
from mamori.parsers.modbus.events import ModbusRequest, ModbusResponse
from mamori.parsers.pipeline import Pipeline, PipelineConfig
from mamori.parsers.stream import Direction
from mamori.sensor.alerting.eventlog import event_to_dict
from mamori.sensor.capture.pcapfile import read_capture_batches
from mamori.sensor.verify.known import (
    MODBUS_RANGE_FCS,
    MODBUS_RANGE_RULE,
    NO_NOTES,
    REASONS,
    RETIMED_EVIDENCE,
    SEQ_SKIPPED_RULE,
    FrameNotes,
    Obj,
    View,
    apply_view,
    dnp3_evidence_given,
    dnp3_said,
    modbus_anomalies,
    modbus_evidence_problem,
    normal_object,
    rule_link_function,
    seq_skip_flagged,
    tshark_view,
    wrap_flags,
)

Row = dict[str, Any]
Stream = tuple[Any, ...]  # (src, sport, dst, dport)


@dataclass
class FieldTally:
    agree: int = 0
    disagree: list[tuple[int | None, Any, Any]] = field(default_factory=list)


@dataclass
class VerifyReport:
    """Per field: agreements, and disagreements as (frame, tshark, mamori); per known
    tshark error (its reason): the frames where it was used."""

    capture: str
    fields: dict[str, FieldTally] = field(default_factory=lambda: defaultdict(FieldTally))
    known: dict[str, list[int | None]] = field(default_factory=lambda: defaultdict(list))

    @property
    def agreed(self) -> bool:
        return all(not t.disagree for t in self.fields.values())

    def compare(self, name: str, frame: int | None, theirs: Any, ours: Any) -> None:
        tally = self.fields[name]
        if theirs == ours:
            tally.agree += 1
        else:
            tally.disagree.append((frame, theirs, ours))

    def known_error(self, why: str, frame: int | None) -> None:
        self.known[why].append(frame)

    def render(self, limit: int = 20) -> str:
        lines = [f"capture {self.capture}", f"{'field':<18} {'agree':>8} {'disagree':>9}"]
        for name in sorted(self.fields):
            tally = self.fields[name]
            lines.append(f"{name:<18} {tally.agree:>8} {len(tally.disagree):>9}")
        for name in sorted(self.fields):
            for frame, theirs, ours in self.fields[name].disagree[:limit]:
                lines.append(f"  frame {frame}: {name}: tshark {theirs!r} mamori {ours!r}")
            more = len(self.fields[name].disagree) - limit
            if more > 0:
                lines.append(f"  ... {more} more {name} disagreements")
        for why, frames in sorted(self.known.items(), key=lambda kv: kv[0]):
            shown = ", ".join(str(f) for f in sorted(set(frames), key=lambda f: f or 0)[:limit])
            etc = " ..." if len(set(frames)) > limit else ""
            lines.append(f"known tshark error ({len(frames)} at frames {shown}{etc}): {why}")
        verdict = "full agreement" if self.agreed else "DISAGREEMENT"
        if self.agreed and self.known:
            verdict += ", except for the known tshark errors above"
        lines.append("verdict: " + verdict)
        return "\n".join(lines)


# ---------------------------------------------------------------------- Mamori


@dataclass
class MamoriSide:
    rows: dict[int | None, list[Row]]  # messages per frame (the frame that completed each)
    events: list[dict[str, Any]]  # every other event, as event_to_dict: the evidence


def mamori_messages(path: Path, config: PipelineConfig) -> MamoriSide:
    """Mamori's messages per frame, and its other events."""
    pipeline = Pipeline(config)
    side = MamoriSide(defaultdict(list), [])

    def take(frame: int | None, events: Iterable[Event]) -> None:
        for event in events:
            row = _mamori_row(event)
            if row is not None:
                side.rows[frame].append(row)
            if not isinstance(event, ModbusRequest | ModbusResponse):
                side.events.append(event_to_dict(event))

    for _done, batch in read_capture_batches(path):
        for ts, linktype, data, frame in batch:
            take(frame, pipeline.packet(ts, linktype, data, frame))
    take(None, pipeline.finish())
    return side


def _mamori_row(event: Event) -> Row | None:
    if isinstance(event, ModbusRequest | ModbusResponse):
        response = isinstance(event, ModbusResponse)
        stream = event.flow.endpoints(Direction.TO_CLIENT if response else Direction.TO_SERVER)
        return {"proto": "modbus", "response": response, "stream": stream, "tid": event.tid,
                "unit": event.unit, "fc": event.fc,
                "exception": event.exception if isinstance(event, ModbusResponse) else None,
                "address": event.address, "quantity": event.quantity}
    if isinstance(event, DNP3Application):
        return {"proto": "dnp3", "link_src": event.link_src, "link_dst": event.link_dst,
                "fc": event.fc, "iin": event.iin,
                "objects": tuple((o.group, o.variation, o.qualifier, o.start, o.stop, o.count)
                                 for o in event.objects)}
    if isinstance(event, DNP3AnomalyEvent) and event.kind is DNP3Anomaly.UNKNOWN_FUNCTION_CODE:
        return {"proto": "dnp3", "link_src": event.link_src, "link_dst": event.link_dst,
                "fc": event.fc, "iin": None, "objects": ()}
    return None


# ---------------------------------------------------------------------- tshark


@dataclass(frozen=True)
class TsharkFragment:
    """One DNP3 application fragment as tshark dissected it."""

    frame: int
    ts: float
    link_src: int
    link_dst: int
    fc: int
    iin: int | None
    objects: tuple[Obj, ...]  # (group, variation, qualifier, start, stop, count)
    src: str = ""
    dst: str = ""
    sport: int = 0
    dport: int = 0
    experts: tuple[str, ...] = ()  # tshark's expert messages inside this fragment
    malformed: bool = False  # tshark flagged the frame's DNP3 layer as malformed
    link_control: int = -1  # CTRL byte of the link frame that completed the fragment
    # per object: tshark's expert messages, plus "no item count" when tshark printed
    # "Number of Items: " without a number (range field cut short) and "no qualifier"
    # when it printed no qualifier at all (header cut short)
    object_notes: tuple[tuple[str, ...], ...] = ()
    retransmission: bool = False  # tshark's TCP analysis calls this frame a retransmission

    @property
    def head(self) -> tuple[Any, ...]:
        """(ts, src, sport, dst, dport, link_src, link_dst)"""
        return (round(self.ts, 6), self.src, self.sport, self.dst, self.dport,
                self.link_src, self.link_dst)


@dataclass(frozen=True)
class FrameAddress:
    """Where and when a frame went, as tshark shows it."""

    frame: int
    ts: float
    src: str
    dst: str
    sport: int
    dport: int
    malformed: bool = False  # tshark flagged the frame malformed
    retransmission: bool = False  # tshark's TCP analysis: a (fast) retransmission


@dataclass(frozen=True)
class TsharkSegment(FrameAddress):
    """A DNP3 transport segment tshark did not reassemble into an application fragment."""

    _: KW_ONLY
    link_src: int
    link_dst: int
    transport: int  # the transport header byte: FIN 0x80 | FIR 0x40 | SEQ 0x3F


_ITEMS = re.compile(r"Number of Items: *(-?\d+)")


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _dnp3_object(code: str, tree: dict[str, Any]) -> Obj:
    value = int(code, 16)
    prefix = rng = 0
    start = stop = count = None
    for key, sub in tree.items():
        if key.startswith("Qualifier Field") and isinstance(sub, dict):
            prefix = int(sub.get("dnp3.al.objq.prefix", "0"))
            rng = int(sub.get("dnp3.al.objq.range", "0"))
        elif key.startswith("Number of Items"):
            # tshark writes "Number of Items: " with no number when the range is cut
            # short, and "Number of Items: -1 (bogus)" when stop < start.
            match = _ITEMS.match(key)
            count = int(match.group(1)) if match else None
            if isinstance(sub, dict):
                if "dnp3.al.range.start" in sub:
                    start = int(sub["dnp3.al.range.start"])
                    stop = int(sub["dnp3.al.range.stop"])
                if "dnp3.al.range.quantity" in sub:
                    count = int(sub["dnp3.al.range.quantity"])
    return value >> 8, value & 0xFF, (prefix << 4) | rng, start, stop, count


def _app_objects(app: dict[str, Any]) -> list[tuple[Obj, tuple[str, ...]]]:
    objects = []
    for key, block in app.items():
        if not key.endswith("Data Objects") or not isinstance(block, dict):
            continue
        codes = _as_list(block.get("dnp3.al.obj"))
        trees = _as_list(block.get("dnp3.al.obj_tree"))
        for code, tree in zip(codes, trees, strict=False):
            tree = tree if isinstance(tree, dict) else {}
            notes = expert_messages(tree)
            if any(k.startswith("Number of Items") and not _ITEMS.match(k) for k in tree):
                notes.append("no item count")
            if not any(k.startswith("Qualifier Field") for k in tree):
                notes.append("no qualifier")
            objects.append((_dnp3_object(code, tree), tuple(notes)))
    return objects


def expert_messages(node: Any) -> list[str]:
    """Every tshark expert message below ``node`` of its JSON."""
    return [m for m in _find(node, "_ws.expert.message") if isinstance(m, str)]


def dnp3_layer(pdu: dict[str, Any], at: FrameAddress
               ) -> tuple[list[TsharkFragment], TsharkSegment | None]:
    """One ``dnp3`` layer of tshark's JSON (``-T json --no-duplicate-keys``, as pyshark
    reads it too): its application fragments, or the segment it left unreassembled."""
    link: dict[str, Any] = {}
    fragments: list[TsharkFragment] = []
    for key, value in pdu.items():
        for item in _as_list(value):
            if key.startswith("Data Link Layer") and isinstance(item, dict):
                link = item
            elif key.startswith("Application Layer") and isinstance(item, dict):
                iin = item.get("dnp3.al.iin")
                objects = _app_objects(item)
                fragments.append(TsharkFragment(
                    at.frame, at.ts, int(link.get("dnp3.src", "-1")),
                    int(link.get("dnp3.dst", "-1")), int(item["dnp3.al.func"]),
                    int(iin, 16) if iin else None, tuple(o for o, _ in objects),
                    at.src, at.dst, at.sport, at.dport, tuple(expert_messages(item)),
                    at.malformed, int(link.get("dnp3.ctl", "-1"), 0),
                    tuple(n for _, n in objects), at.retransmission))
    transport = pdu.get("dnp3.tr.ctl")
    if fragments or not isinstance(transport, str):
        return fragments, None
    return [], TsharkSegment(**asdict(at), link_src=int(link.get("dnp3.src", "-1")),
                             link_dst=int(link.get("dnp3.dst", "-1")),
                             transport=int(transport, 0))


def _int(value: Any) -> int | None:
    if isinstance(value, list):
        value = value[0] if value else None
    if not isinstance(value, str) or not value:
        return None
    try:
        return int(value, 0)
    except ValueError:
        return None


def _find(node: Any, key: str) -> list[Any]:
    """Every value of ``key`` anywhere below ``node`` (tshark JSON nests by tree)."""
    out: list[Any] = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                out.extend(v if isinstance(v, list) else [v])
            else:
                out.extend(_find(v, key))
    elif isinstance(node, list):
        for item in node:
            out.extend(_find(item, key))
    return out


@dataclass
class TsharkSide:
    modbus: list[Row] = field(default_factory=list)  # in frame order
    fragments: list[TsharkFragment] = field(default_factory=list)
    segments: list[TsharkSegment] = field(default_factory=list)
    frames: dict[int, FrameAddress] = field(default_factory=dict)  # the frames asked for
    experts: dict[int, tuple[str, ...]] = field(default_factory=dict)  # of those frames
    modbus_ports: frozenset[int] = frozenset({502})


def _frames_filter(frames: Iterable[int]) -> str:
    return " || ".join(f"frame.number == {n}" for n in sorted(frames))


def tshark_messages(path: Path, config: PipelineConfig, frames: Iterable[int] = (), *,
                    seq_analysis: bool = True) -> TsharkSide:
    """tshark's Modbus PDUs and DNP3 fragments, through pyshark; plus the address and
    expert messages of ``frames`` (whatever they carry). ``seq_analysis=False``: only
    ``frames``, with tshark's TCP sequence analysis off (``tcp.analyze_sequence_numbers``),
    so that tshark hands segments it flags as retransmissions to Modbus too."""
    import pyshark  # only this tool needs it

    _ensure_event_loop()
    asked = set(frames)
    prefs: dict[str, Any] = {}
    decode_as: dict[str, str] = {}
    modbus_ports = sorted(config.modbus_ports)
    if modbus_ports and modbus_ports != [502]:
        prefs["mbtcp.tcp.port"] = str(modbus_ports[0])
    for port in sorted(config.dnp3_ports):
        if port != 20000:
            decode_as[f"tcp.port=={port}"] = "dnp3"
            decode_as[f"udp.port=={port}"] = "dnp3"
    if seq_analysis:
        display = " || ".join(("mbtcp || dnp3", *([_frames_filter(asked)] if asked else ())))
    else:
        prefs["tcp.analyze_sequence_numbers"] = "FALSE"
        display = _frames_filter(asked)
    attempts = 3
    for attempt in range(1, attempts + 1):
        capture = pyshark.FileCapture(str(path), display_filter=display, use_json=True,
                                      keep_packets=False, override_prefs=prefs or None,
                                      decode_as=decode_as or None)
        side = TsharkSide(modbus_ports=config.modbus_ports)
        try:
            for packet in capture:
                _tshark_packet(packet, config, asked, side)
            capture.close()
        except pyshark.capture.capture.TSharkCrashException as err:
            # pyshark swaps asyncio's child watcher for each capture; now and then the
            # watcher finds tshark already reaped ("Unknown child process pid ..., will
            # report returncode 255") and pyshark reports a crash that was none. A real
            # tshark failure repeats, so one more run tells the two apart.
            if attempt == attempts or "retcode: 255" not in str(err):
                raise
            continue
        finally:
            _restore_child_watcher()
        return side
    raise AssertionError("unreachable")


def _ensure_event_loop() -> None:
    """pyshark asks ``asyncio.get_event_loop()``; after an ``asyncio.run`` in this thread
    (``mamori subscribe``, or another caller in the same process) none is set, and that
    raises RuntimeError. Give the thread a fresh loop then."""
    try:
        asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())


def _restore_child_watcher() -> None:
    """Undo pyshark's process-wide asyncio change.

    pyshark installs a SafeChildWatcher attached to its own event loop, which it
    then closes; any later asyncio subprocess in the same process (Playwright, our
    own tools) fails with "get_child_watcher() is not activated". The default
    ThreadedChildWatcher needs no loop, so put it back.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_child_watcher(asyncio.ThreadedChildWatcher())


def _tshark_packet(packet: Any, config: PipelineConfig, asked: set[int],
                   side: TsharkSide) -> None:
    frame = int(packet.number)
    ip = getattr(packet, "ip", None) or getattr(packet, "ipv6", None)
    l4 = getattr(packet, "tcp", None) or getattr(packet, "udp", None)
    tcp = getattr(packet, "tcp", None)
    layers = [layer._all_fields for layer in packet.layers]
    at = FrameAddress(
        frame, round(float(packet.sniff_timestamp), 6),
        str(ip.src) if ip is not None else "", str(ip.dst) if ip is not None else "",
        int(l4.srcport) if l4 is not None else 0, int(l4.dstport) if l4 is not None else 0,
        "_ws.malformed" in json.dumps(layers),
        tcp is not None and any(
            f"tcp.analysis.{k}" in json.dumps(tcp._all_fields)
            for k in ("retransmission", "fast_retransmission")))
    if frame in asked:
        side.frames[frame] = at
        side.experts[frame] = tuple(expert_messages(layers))
    stream = (at.src, at.sport, at.dst, at.dport)
    to_server = tcp is not None and at.dport in config.modbus_ports
    mbtcp = _layers(packet, "mbtcp")
    modbus = _layers(packet, "modbus")
    for i, header in enumerate(mbtcp):
        fields: dict[str, Any] = dict(header._all_fields)
        if i < len(modbus):
            fields.update(modbus[i]._all_fields)
        side.modbus.append({**_tshark_modbus(fields, to_server), "stream": stream,
                            "frame": frame, "ts": at.ts})
    for layer in _layers(packet, "dnp3"):
        fragments, segment = dnp3_layer(layer._all_fields, at)
        side.fragments.extend(fragments)
        if segment is not None:
            side.segments.append(segment)


def _layers(packet: Any, name: str) -> list[Any]:
    """Every instance of a protocol layer in a frame (a frame may hold several ADUs).

    pyshark keeps repeated layers of one frame as the first layer plus its
    ``duplicate_layers``; ``get_multiple_layers`` alone would see only the first.
    """
    out: list[Any] = []
    for layer in packet.get_multiple_layers(name):
        out.append(layer)
        out.extend(getattr(layer, "duplicate_layers", ()))
    return out


def _tshark_modbus(fields: dict[str, Any], to_server: bool) -> Row:
    fc = _int(_find(fields, "modbus.func_code"))
    exception = _int(_find(fields, "modbus.exception_code"))
    quantity = _int(_find(fields, "modbus.bit_cnt"))
    if quantity is None:
        quantity = _int(_find(fields, "modbus.word_cnt"))
    return {"proto": "modbus", "response": not to_server,
            "tid": _int(_find(fields, "mbtcp.trans_id")),
            "unit": _int(_find(fields, "mbtcp.unit_id")),
            "fc": None if fc is None else fc & 0x7F, "exception": exception,
            "address": _int(_find(fields, "modbus.reference_num")), "quantity": quantity}


# ---------------------------------------------------------------------- compare: DNP3


def compare_messages(report: VerifyReport, notes: FrameNotes, fragments: list[TsharkFragment],
                     segments: list[TsharkSegment], ours: MamoriSide) -> None:
    """DNP3: pair the i-th fragment of each frame on both sides, compare their fields,
    after the rules of sensor/verify/known.py (with the evidence they require) and the
    caller's ``notes.errors``."""
    said = dnp3_said(e for e in ours.events if e.get("proto") == "dnp3")
    theirs: dict[int, list[tuple[TsharkFragment, View]]] = defaultdict(list)
    errors: set[int] = set()
    seen: dict[tuple[Any, ...], set[tuple[Any, ...]]] = defaultdict(set)
    for f in fragments:
        if f.frame in notes.errors:
            report.known_error(notes.errors[f.frame], f.frame)
            errors.add(f.frame)
            continue
        kinds = rule_link_function(f.link_control)
        if kinds is not None:
            report.known_error(REASONS["dnp3.link_function"], f.frame)
            _dnp3_evidence(report, f, kinds, said)
            continue
        view = tshark_view(f.fc, f.objects, f.object_notes, f.malformed)
        body = apply_view(view, f.fc, f.iin, tuple(normal_object(o) for o in f.objects))
        if f.retransmission and body in seen[f.head[1:]]:
            report.known_error(REASONS["dnp3.retransmission"], f.frame)
            continue
        seen[f.head[1:]].add(body)
        theirs[f.frame].append((f, view))
        if view.expect_anomaly:
            _dnp3_evidence(report, f, view.expect_anomaly, said)
    wrapped: Counter[int] = Counter()
    flags = wrap_flags(((s.src, s.sport, s.dst, s.dport, s.link_src, s.link_dst), s.transport)
                       for s in segments)
    for s, flag in zip(segments, flags, strict=True):
        if flag:
            wrapped[s.frame] += 1
    for frame in sorted((set(theirs) | {f for f in ours.rows if f is not None}) - errors):
        t_list = theirs.get(frame, [])
        o_list = [r for r in ours.rows.get(frame, []) if r["proto"] == "dnp3"]
        extra = min(wrapped[frame], len(o_list) - len(t_list))
        if extra > 0:
            report.known_error(REASONS["dnp3.wrap"], frame)
            o_list = o_list[: len(o_list) - extra]
        if not t_list and not o_list:
            continue
        report.compare("dnp3.messages", frame, len(t_list), len(o_list))
        for (t, view), o in zip(t_list, o_list, strict=False):
            _compare_dnp3(report, t, view, o)


def _dnp3_evidence(report: VerifyReport, f: TsharkFragment, kinds: str,
                   said: set[tuple[Any, ...]]) -> None:
    given = dnp3_evidence_given(f.head, kinds, said)
    report.compare("dnp3.evidence", f.frame, kinds, kinds if given else None)


def _compare_dnp3(report: VerifyReport, t: TsharkFragment, view: View, o: Row) -> None:
    frame = t.frame
    report.compare("dnp3.link_src", frame, t.link_src, o["link_src"])
    report.compare("dnp3.link_dst", frame, t.link_dst, o["link_dst"])
    report.compare("dnp3.fc", frame, t.fc, o["fc"])
    mine = tuple(normal_object(x) for x in o["objects"])
    if any(x[2] & 0x80 for x in o["objects"]):
        report.known_error(REASONS["dnp3.qualifier_bit7"], frame)
    _, iin, cut = apply_view(view, o["fc"], o["iin"], mine)
    if view.iin:
        report.compare("dnp3.iin", frame, t.iin, iin)
    elif o["iin"] is not None:
        report.known_error(REASONS["dnp3.iin_fc"], frame)
    full = tuple(normal_object(x) for x in t.objects)
    _, _, objects = apply_view(view, t.fc, t.iin, full)
    if (cut != mine or objects != full) and view.why is not None:
        report.known_error(REASONS[view.why], frame)
    report.compare("dnp3.objects", frame, objects, cut)


# ---------------------------------------------------------------------- compare: Modbus


Numbered = list[tuple[tuple[Any, ...], int | None, Row]]  # (sort key, frame, row)


def compare_modbus_streams(report: VerifyReport, notes: FrameNotes, theirs: TsharkSide,
                           again: TsharkSide, ours: MamoriSide) -> None:
    """Modbus PDUs aligned per TCP direction, as the differential test does.

    A PDU completed by an out-of-order or retransmitted segment is reported by tshark
    and by Mamori's reassembly at different frames, so frames alone do not pair them:
    each direction's two sequences are aligned on (tid, unit, fc, exception) and a
    PDU on one side only is a ``modbus.messages`` disagreement at its frame. ``again``
    is tshark's second pass, without sequence analysis, over the ``notes.seq_skipped``
    frames.
    """
    want = _tshark_modbus_rows(report, notes, theirs, again,
                               modbus_anomalies(ours.events))
    mine: dict[Any, list[tuple[int | None, Row]]] = defaultdict(list)
    for frame, rows in ours.rows.items():
        for row in rows:
            if row["proto"] == "modbus":
                mine[row["stream"]].append((frame, row))
    by_stream: dict[Any, Numbered] = defaultdict(list)
    for item in want:
        by_stream[item[2]["stream"]].append(item)

    def key(row: Row) -> tuple[Any, ...]:
        return row["tid"], row["unit"], row["fc"], row["exception"]

    for stream in sorted(set(mine) | set(by_stream), key=str):
        a = [(frame, row) for _, frame, row in sorted(by_stream.get(stream, []),
                                                      key=lambda x: x[0])]
        b = sorted(mine.get(stream, []), key=lambda x: (x[0] is None, x[0] or 0))
        matcher = difflib.SequenceMatcher(a=[key(r) for _, r in a], b=[key(r) for _, r in b],
                                          autojunk=False)
        for tag, a0, a1, b0, b1 in matcher.get_opcodes():
            if tag == "equal":
                for (frame, t), (_, o) in zip(a[a0:a1], b[b0:b1], strict=True):
                    report.compare("modbus.messages", frame, 1, 1)
                    _compare_modbus(report, frame or 0, t, o)
                continue
            for (frame, t), (_, o) in zip(a[a0:a1], b[b0:b1], strict=False):
                _compare_modbus(report, frame or 0, t, o)  # replaced: fields differ
            for frame, _ in a[a0 + (b1 - b0):a1]:
                report.compare("modbus.messages", frame, 1, 0)
            for frame, _ in b[b0 + (a1 - a0):b1]:
                report.compare("modbus.messages", frame, 0, 1)


def _tshark_modbus_rows(report: VerifyReport, notes: FrameNotes, theirs: TsharkSide,
                        again: TsharkSide, anomalies: Any) -> Numbered:
    """tshark's rows, with the noted frames handled as the differential test handles
    them; each note checked to hold, with Mamori's evidence."""
    skipped, extra = notes.seq_skipped, notes.extra
    dropped, retimed = notes.dropped, notes.retimed
    dissected = {row["frame"] for row in theirs.modbus}

    def entry_holds(frame: int, holds: bool, what: str) -> None:
        report.compare("known_entries", frame, what, what if holds else f"not {what}")

    def evidence(frame: int, row: Row, what: str | None) -> None:
        if what:
            problem = modbus_evidence_problem(what, row["stream"], row["ts"], anomalies)
            report.compare("modbus.evidence", frame, what, problem or what)

    rows: Numbered = []
    seen: dict[Stream, set[tuple[Any, ...]]] = defaultdict(set)
    for i, row in enumerate(theirs.modbus):
        frame = row["frame"]
        if frame in notes.errors:
            report.known_error(notes.errors[frame], frame)
            continue
        if frame in dropped:
            report.known_error(dropped[frame][1], frame)
            evidence(frame, row, dropped[frame][0])
            continue
        seen[row["stream"]].add((row["tid"], row["unit"], row["fc"]))
        rows.append(((frame, 0, i), frame, row))
    for frame in set(dropped) | set(retimed):
        entry_holds(frame, frame in dissected, "dissected by tshark")
    again_rows: dict[int, list[Row]] = defaultdict(list)
    for row in again.modbus:
        again_rows[row["frame"]].append(row)
    for frame, entry in skipped.items():
        entry_holds(frame, frame not in dissected, "not dissected by tshark")
        entry_holds(frame, seq_skip_flagged(theirs.experts.get(frame, ())),
                    "flagged retransmission or out-of-order")
        found = again_rows.get(frame, [])
        entry_holds(frame, len(found) > entry.seen, "new PDUs without sequence analysis")
        for row in found[: entry.seen]:
            entry_holds(frame, (row["tid"], row["unit"], row["fc"]) in seen[row["stream"]],
                        "leading PDUs dissected before")
        report.known_error(f"{SEQ_SKIPPED_RULE} {entry.why}", frame)
        for i, row in enumerate(found[entry.seen:]):
            rows.append(((frame, 0, i), frame, row))
            evidence(frame, row, entry.evidence)
    for frame, ex in extra.items():
        entry_holds(frame, frame not in dissected and frame in theirs.frames,
                    "not dissected by tshark")
        at = theirs.frames.get(frame)
        if at is None:
            continue
        row = {"proto": "modbus", "response": at.dport not in theirs.modbus_ports, "tid": ex.tid,
               "unit": ex.unit, "fc": ex.fc, "exception": None, "address": None,
               "quantity": None, "stream": (at.src, at.sport, at.dst, at.dport),
               "frame": frame, "ts": at.ts}
        report.known_error(ex.why, frame)
        rows.append(((frame, 0, 0), frame, row))
        evidence(frame, row, ex.evidence)
    times = {frame: row["ts"] for _, frame, row in rows if frame is not None}
    for n, (key, frame, row) in enumerate(rows):
        if frame is not None and frame in retimed:
            source, why = retimed[frame]
            row = {**row, "ts": times.get(source, row["ts"])}
            rows[n] = ((source, 1, frame, key[2]), frame, row)
            report.known_error(why, frame)
            evidence(frame, row, RETIMED_EVIDENCE)
    return rows


def _compare_modbus(report: VerifyReport, frame: int, t: Row, o: Row) -> None:
    for name in ("tid", "unit", "fc", "exception"):
        report.compare(f"modbus.{name}", frame, t[name], o[name])
    if o["fc"] in MODBUS_RANGE_FCS and o["exception"] is None:
        for name in ("address", "quantity"):
            if t[name] is None and o["response"]:
                report.known_error(MODBUS_RANGE_RULE, frame)
            elif not (name == "quantity" and o["fc"] in (5, 6)):
                report.compare(f"modbus.{name}", frame, t[name], o[name])


# ---------------------------------------------------------------------- verify


def verify_capture(path: Path, config: PipelineConfig,
                   notes: FrameNotes = NO_NOTES) -> VerifyReport:
    """Mamori against tshark on one capture; ``notes``: its frames the caller knows
    tshark to be wrong at (``mamori verify`` knows none, only the general rules)."""
    report = VerifyReport(str(path))
    theirs = tshark_messages(path, config, notes.modbus_frames())
    skipped = set(notes.seq_skipped)
    again = tshark_messages(path, config, skipped, seq_analysis=False) if skipped \
        else TsharkSide()
    ours = mamori_messages(path, config)
    compare_messages(report, notes, theirs.fragments, theirs.segments, ours)
    compare_modbus_streams(report, notes, theirs, again, ours)
    return report
