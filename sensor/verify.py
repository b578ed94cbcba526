"""``mamori verify FILE.pcap``: Mamori's parsing checked field by field against tshark.

Operators with unusual devices need to know whether Mamori reads their traffic the way
Wireshark's dissectors do before they trust an alert. This runs the capture through
Mamori's pipeline (noting which frame completed each message) and through tshark via
pyshark, pairs the messages frame by frame, and counts per field how often the two
agree; every disagreement is listed with its frame number.

tshark is not always right. Where it is known to be wrong, the comparison leaves the
field out, and says so: ``TSHARK_GAPS`` are systematic (with the evidence), and
``TSHARK_ERRORS`` single frames. They are the same findings as the differential tests
(tests/sensor/test_modbus_vs_tshark.py, test_dnp3_vs_tshark.py), kept here as data so
the tool and the tests cannot drift.

pyshark runs tshark once per capture and parses its JSON: a few hundred frames a
second, fine for a verification tool, not for the sensor (which never imports this).
"""

from __future__ import annotations

import difflib
import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from parsers.dnp3.events import DNP3Anomaly, DNP3AnomalyEvent, DNP3Application
from parsers.modbus.events import ModbusRequest, ModbusResponse
from parsers.stream import Direction
from sensor.capture.pcapfile import read_capture_batches
from sensor.pipeline import Pipeline, PipelineConfig

#: Fields with a known, systematic tshark 4.0 gap: what it is and the evidence.
TSHARK_GAPS: Final[dict[str, str]] = {
    "dnp3.iin": (
        "tshark 4.0 reads the IIN only for FC 129 and 130 (dnp3_al_process_iin); "
        "AUTHENTICATE_RESP (131) shows none. Evidence: auth_change_session_keys.pcap "
        "frame 5, c1 83 90 00 ...: IIN 0x9000 in the bytes, absent in tshark."),
    "dnp3.objects": (
        "tshark 4.0 walks object headers only for FC 1-10, 20, 21, 25-27, 129, 130 "
        "(switch (al_func) in packet-dnp.c); for the others it shows none. Evidence: "
        "assign_class.pcap frame 1, c3 16 3c 03 06 ...: ASSIGN_CLASS with g60v3, no "
        "object in tshark. It also stops at g50v4, g51v2 and g120 (not in its table: "
        "'Unknown Object\\Variation'; yadnp3.pcap frame 15) and reads range codes 3-5 "
        "as one address, so headers are compared up to the first such one."),
    "dnp3.fragment": (
        "tshark decodes transport and application layers inside link frames whose "
        "function carries no user data (packet-dnp.c: 'This code should probably check "
        "what DOES have TR or AL data'); IEEE 1815 9.2.4 passes user data up only from "
        "function 3/4 with PRM. Such tshark fragments are not expected from Mamori."),
    "dnp3.wrap": (
        "IEEE 1815 8.2.1.2: the transport sequence counts modulo 64, so a fragment may "
        "run 62, 63, 0. tshark 4.0 does not reassemble such a fragment ('Unreassembled "
        "fragment 0'). Evidence: dnp3_example.pcap frames 17 (transport 0x7f, FIR seq 63) "
        "and 18 (0x80, FIN seq 0): Mamori reports the RESPONSE, tshark nothing."),
    "modbus.range": (
        "tshark puts the request's address and quantity into a response only when it "
        "paired the two itself; responses are compared on them only where tshark has them."),
}

#: (sha256 of the capture, frame) → why tshark's dissection of that frame is wrong.
TSHARK_ERRORS: Final[dict[tuple[str, int], str]] = {
    ("d9b22ee7b5ece4a78d8f9995aff20d55bfb315752ce136f97c77eb5ce73511bf", 311): (
        "icsnpp-dnp3 dnp3_example.pcap: tshark shows a CONFIRM built from 49 zero bytes, "
        "a reassembly-table mix-up; the frame holds a RESPONSE (c8 81 00 00 0c 01 17 ...)."),
}

_OBJECT_FCS: Final = frozenset({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 20, 21, 25, 26, 27, 129, 130})
_IIN_FCS: Final = frozenset({129, 130})
_RANGE_FCS: Final = frozenset({1, 2, 3, 4, 5, 6, 15, 16})

Row = dict[str, Any]


@dataclass
class FieldTally:
    agree: int = 0
    disagree: list[tuple[int | None, Any, Any]] = field(default_factory=list)


@dataclass
class VerifyReport:
    """Per field: agreements, and disagreements as (frame, tshark, mamori)."""

    capture: str
    fields: dict[str, FieldTally] = field(default_factory=lambda: defaultdict(FieldTally))
    skipped: Counter[str] = field(default_factory=Counter)  # known tshark errors used

    @property
    def agreed(self) -> bool:
        return all(not t.disagree for t in self.fields.values())

    def compare(self, name: str, frame: int | None, theirs: Any, ours: Any) -> None:
        tally = self.fields[name]
        if theirs == ours:
            tally.agree += 1
        else:
            tally.disagree.append((frame, theirs, ours))

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
        for why, n in sorted(self.skipped.items()):
            lines.append(f"not compared ({n}): {why}")
        lines.append("verdict: " + ("full agreement" if self.agreed else "DISAGREEMENT"))
        return "\n".join(lines)


# ---------------------------------------------------------------------- Mamori


def mamori_messages(path: Path, config: PipelineConfig) -> dict[int | None, list[Row]]:
    """Mamori's messages per frame (the frame whose bytes completed each one)."""
    pipeline = Pipeline(config)
    out: dict[int | None, list[Row]] = defaultdict(list)
    for _done, batch in read_capture_batches(path):
        for ts, linktype, data, frame in batch:
            for event in pipeline.packet(ts, linktype, data, frame):
                row = _mamori_row(event)
                if row is not None:
                    out[frame].append(row)
    for event in pipeline.finish():
        row = _mamori_row(event)
        if row is not None:
            out[None].append(row)
    return out


def _mamori_row(event: Any) -> Row | None:
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
                "objects": [(o.group, o.variation, o.qualifier & 0x7F, o.start, o.stop)
                            for o in event.objects]}
    if isinstance(event, DNP3AnomalyEvent) and event.kind is DNP3Anomaly.UNKNOWN_FUNCTION_CODE:
        return {"proto": "dnp3", "link_src": event.link_src, "link_dst": event.link_dst,
                "fc": event.fc, "iin": None, "objects": []}
    return None


# ---------------------------------------------------------------------- tshark


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


def tshark_messages(path: Path, config: PipelineConfig
                    ) -> dict[int, list[Row]]:
    """tshark's Modbus PDUs and DNP3 fragments per frame, through pyshark."""
    import pyshark  # only this tool needs it

    prefs: dict[str, Any] = {}
    decode_as: dict[str, str] = {}
    modbus_ports = sorted(config.modbus_ports)
    if modbus_ports and modbus_ports != [502]:
        prefs["mbtcp.tcp.port"] = str(modbus_ports[0])
    for port in sorted(config.dnp3_ports):
        if port != 20000:
            decode_as[f"tcp.port=={port}"] = "dnp3"
            decode_as[f"udp.port=={port}"] = "dnp3"
    capture = pyshark.FileCapture(str(path), display_filter="mbtcp || dnp3", use_json=True,
                                  keep_packets=False, override_prefs=prefs or None,
                                  decode_as=decode_as or None)
    out: dict[int, list[Row]] = defaultdict(list)
    last_seq: dict[tuple[int | None, int | None], int] = {}
    try:
        for packet in capture:
            frame = int(packet.number)
            mbtcp = _layers(packet, "mbtcp")
            modbus = _layers(packet, "modbus")
            tcp = getattr(packet, "tcp", None)
            ip = getattr(packet, "ip", None) or getattr(packet, "ipv6", None)
            to_server = tcp is not None and int(tcp.dstport) in config.modbus_ports
            stream = (str(ip.src), int(tcp.srcport), str(ip.dst), int(tcp.dstport)) \
                if tcp is not None and ip is not None else None
            for i, header in enumerate(mbtcp):
                fields: dict[str, Any] = dict(header._all_fields)
                if i < len(modbus):
                    fields.update(modbus[i]._all_fields)
                out[frame].append({**_tshark_modbus(fields, to_server), "stream": stream})
            for layer in _layers(packet, "dnp3"):
                rows = _tshark_dnp3(layer._all_fields)
                out[frame].extend(rows)
                link = next((v for k, v in layer._all_fields.items()
                             if k.startswith("Data Link Layer") and isinstance(v, dict)), {})
                link_key = (_int(link.get("dnp3.src")), _int(link.get("dnp3.dst")))
                transport = _int(layer._all_fields.get("dnp3.tr.ctl"))
                if transport is None:
                    continue
                if not rows and transport & 0xC0 == 0x80 and transport & 0x3F == 0 \
                        and last_seq.get(link_key) == 63:
                    out[frame].append({"proto": "wrap"})
                last_seq[link_key] = transport & 0x3F
    finally:
        capture.close()
    return out


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


def _tshark_dnp3(layer: dict[str, Any]) -> list[Row]:
    link: dict[str, Any] = {}
    rows: list[Row] = []
    for key, value in layer.items():
        for item in value if isinstance(value, list) else [value]:
            if key.startswith("Data Link Layer") and isinstance(item, dict):
                link = item
            elif key.startswith("Application Layer") and isinstance(item, dict):
                rows.append(_tshark_fragment(link, item))
    return rows


def _tshark_fragment(link: dict[str, Any], app: dict[str, Any]) -> Row:
    control = _int(link.get("dnp3.ctl"))
    objects: list[tuple[int, int, int, int | None, int | None]] = []
    complete = True
    for key, block in app.items():
        if not key.endswith("Data Objects") or not isinstance(block, dict):
            continue
        codes = block.get("dnp3.al.obj")
        trees = block.get("dnp3.al.obj_tree")
        codes = codes if isinstance(codes, list) else [codes] if codes else []
        trees = trees if isinstance(trees, list) else [trees] if trees else []
        for code, tree in zip(codes, trees, strict=False):
            value = _int(code) or 0
            tree = tree if isinstance(tree, dict) else {}
            prefix = _int(_find(tree, "dnp3.al.objq.prefix")) or 0
            rng = _int(_find(tree, "dnp3.al.objq.range")) or 0
            start = _int(_find(tree, "dnp3.al.range.start"))
            stop = _int(_find(tree, "dnp3.al.range.stop"))
            objects.append((value >> 8, value & 0xFF, prefix << 4 | rng, start, stop))
            experts = " ".join(str(m) for m in _find(tree, "_ws.expert.message"))
            if "Unknown Object" in experts or rng in (3, 4, 5) or _find(tree, "_ws.malformed"):
                complete = False
                break
        if not complete:
            break
    iin = _find(app, "dnp3.al.iin")
    return {"proto": "dnp3", "link_src": _int(link.get("dnp3.src")),
            "link_dst": _int(link.get("dnp3.dst")), "fc": _int(app.get("dnp3.al.func")),
            "iin": _int(iin), "objects": objects, "objects_complete": complete,
            "user_data": control is None or bool(control & 0x40 and control & 0x0F in (3, 4))}


# ---------------------------------------------------------------------- compare


def compare_messages(report: VerifyReport, digest: str, theirs: dict[int, list[Row]],
                     ours: dict[int | None, list[Row]]) -> None:
    """DNP3: pair the i-th fragment of each frame on both sides, compare their fields."""
    for frame in sorted(set(theirs) | {f for f in ours if f is not None}):
        if (digest, frame) in TSHARK_ERRORS:
            report.skipped[TSHARK_ERRORS[(digest, frame)]] += 1
            continue
        t_rows = [r for r in theirs.get(frame, []) if r.get("user_data", True)]
        dropped = len(theirs.get(frame, [])) - len(t_rows)
        if dropped:
            report.skipped[TSHARK_GAPS["dnp3.fragment"]] += dropped
        t_list = [r for r in t_rows if r["proto"] == "dnp3"]
        o_list = [r for r in ours.get(frame, []) if r["proto"] == "dnp3"]
        if any(r["proto"] == "wrap" for r in t_rows) and len(o_list) > len(t_list):
            report.skipped[TSHARK_GAPS["dnp3.wrap"]] += len(o_list) - len(t_list)
            o_list = o_list[: len(t_list)]
        if not t_list and not o_list:
            continue
        report.compare("dnp3.messages", frame, len(t_list), len(o_list))
        for t, o in zip(t_list, o_list, strict=False):
            _compare_dnp3(report, frame, t, o)


def compare_modbus_streams(report: VerifyReport, digest: str,
                           theirs: dict[int, list[Row]],
                           ours: dict[int | None, list[Row]]) -> None:
    """Modbus PDUs aligned per TCP direction, as the differential test does.

    A PDU completed by an out-of-order or retransmitted segment is reported by tshark
    and by Mamori's reassembly at different frames, so frames alone do not pair them:
    each direction's two sequences are aligned on (tid, unit, fc, exception) and a
    PDU on one side only is a ``modbus.messages`` disagreement at its frame.
    """
    mine: dict[Any, list[tuple[int | None, Row]]] = defaultdict(list)
    for frame, rows in ours.items():
        for row in rows:
            if row["proto"] == "modbus":
                mine[row["stream"]].append((frame, row))
    want: dict[Any, list[tuple[int | None, Row]]] = defaultdict(list)
    for frame, rows in theirs.items():
        if (digest, frame) in TSHARK_ERRORS:
            report.skipped[TSHARK_ERRORS[(digest, frame)]] += 1
            continue
        for row in rows:
            if row["proto"] == "modbus":
                want[row["stream"]].append((frame, row))

    def key(row: Row) -> tuple[Any, ...]:
        return row["tid"], row["unit"], row["fc"], row["exception"]

    for stream in sorted(set(mine) | set(want), key=str):
        a = sorted(want.get(stream, []), key=lambda x: x[0] or 0)
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


def _compare_modbus(report: VerifyReport, frame: int, t: Row, o: Row) -> None:
    for name in ("tid", "unit", "fc", "exception"):
        report.compare(f"modbus.{name}", frame, t[name], o[name])
    if o["fc"] in _RANGE_FCS and o["exception"] is None:
        for name in ("address", "quantity"):
            if t[name] is None and o["response"]:
                report.skipped[TSHARK_GAPS["modbus.range"]] += 1
            elif not (name == "quantity" and o["fc"] in (5, 6)):
                report.compare(f"modbus.{name}", frame, t[name], o[name])


def _compare_dnp3(report: VerifyReport, frame: int, t: Row, o: Row) -> None:
    for name in ("link_src", "link_dst", "fc"):
        report.compare(f"dnp3.{name}", frame, t[name], o[name])
    if o["fc"] in _IIN_FCS:
        report.compare("dnp3.iin", frame, t["iin"], o["iin"])
    elif o["iin"] is not None:
        report.skipped[TSHARK_GAPS["dnp3.iin"]] += 1
    if o["fc"] not in _OBJECT_FCS:
        if o["objects"]:
            report.skipped[TSHARK_GAPS["dnp3.objects"]] += 1
        return
    mine = [_normal(x) for x in o["objects"]]
    theirs = [_normal(x) for x in t["objects"]]
    if not t["objects_complete"]:
        report.skipped[TSHARK_GAPS["dnp3.objects"]] += 1
        mine = mine[: len(theirs)]
        if theirs:
            mine = [*mine[:-1], *[x[:3] for x in mine[-1:]]]
            theirs = [*theirs[:-1], theirs[-1][:3]]
    report.compare("dnp3.objects", frame, theirs, mine)


def _normal(obj: tuple[Any, ...]) -> tuple[Any, ...]:
    """Start/stop only where the qualifier's range code defines them (0-2)."""
    group, variation, qualifier, start, stop = obj
    if qualifier & 0x0F in (0, 1, 2):
        return group, variation, qualifier, start, stop
    return group, variation, qualifier


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_capture(path: Path, config: PipelineConfig) -> VerifyReport:
    report = VerifyReport(str(path))
    digest = sha256(path)
    theirs, ours = tshark_messages(path, config), mamori_messages(path, config)
    compare_messages(report, digest, theirs, ours)
    compare_modbus_streams(report, digest, theirs, ours)
    return report


def verify_files(paths: Iterable[Path], config: PipelineConfig) -> list[VerifyReport]:
    return [verify_capture(p, config) for p in paths]
