"""tshark as the field-level oracle: one JSON dissection per capture, flattened per PDU.

tshark's JSON (``--no-duplicate-keys``) turns repeated layers of one frame into lists,
so a frame carrying two Modbus ADUs has ``mbtcp: [..., ...]``. We pair the i-th ``mbtcp``
with the i-th ``modbus`` layer; when their counts differ (a PDU tshark could not
dissect) the frame is reported as unaligned rather than guessed at.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TsharkPdu:
    frame: int
    ts: float
    src: str
    dst: str
    sport: int
    dport: int
    layers: dict[str, str]  # flattened fields of the protocol layer(s) of this PDU


def _flatten(node: Any, out: dict[str, str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str):
                out.setdefault(key, value)
            else:
                _flatten(value, out)
    elif isinstance(node, list):
        for item in node:
            _flatten(item, out)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def dissect(
    path: Path, layers: tuple[str, ...], options: tuple[str, ...] = (), where: str = ""
) -> list[dict[str, Any]]:
    """Raw tshark JSON layers for every frame that has the first of ``layers``
    (and matches the display filter ``where``, when given)."""
    display = f"{layers[0]} && ({where})" if where else layers[0]
    cmd = ["tshark", "-r", str(path), "-T", "json", "--no-duplicate-keys",
           "-J", " ".join(("frame", "ip", "ipv6", "tcp", "udp", *layers)),
           "-Y", display, *options]
    out = subprocess.run(cmd, capture_output=True, check=True, timeout=600).stdout
    frames: list[dict[str, Any]] = [p["_source"]["layers"] for p in json.loads(out or b"[]")]
    return frames


def _frames_filter(frames: tuple[int, ...]) -> str:
    return " || ".join(f"frame.number == {n}" for n in frames)


def modbus_pdus(
    path: Path, port: int = 502, *, frames: tuple[int, ...] = (), seq_analysis: bool = True
) -> tuple[list[TsharkPdu], list[int]]:
    """Every Modbus/TCP PDU tshark sees, in frame order; plus frames it could not align.

    ``frames`` limits the answer to those frames. ``seq_analysis=False`` turns off
    tshark's TCP sequence analysis (``tcp.analyze_sequence_numbers``): tshark then
    hands segments it would flag as retransmissions or out-of-order to Modbus too.
    """
    options: tuple[str, ...] = ("-o", f"mbtcp.tcp.port:{port}") if port != 502 else ()
    if not seq_analysis:
        options += ("-o", "tcp.analyze_sequence_numbers:FALSE")
    pdus: list[TsharkPdu] = []
    unaligned: list[int] = []
    for layers in dissect(path, ("mbtcp", "modbus"), options, _frames_filter(frames)):
        frame = layers["frame"]
        number = int(frame["frame.number"])
        ts = float(frame["frame.time_epoch"])
        ip = layers.get("ip") or layers.get("ipv6") or {}
        if isinstance(ip, list):
            ip = ip[-1]
        src = ip.get("ip.src") or ip.get("ipv6.src", "")
        dst = ip.get("ip.dst") or ip.get("ipv6.dst", "")
        tcp = layers.get("tcp", {})
        if isinstance(tcp, list):
            tcp = tcp[-1]
        mbtcp = _as_list(layers.get("mbtcp"))
        modbus = _as_list(layers.get("modbus"))
        if modbus and len(modbus) != len(mbtcp):
            unaligned.append(number)
            continue
        for i, header in enumerate(mbtcp):
            fields: dict[str, str] = {}
            _flatten(header, fields)
            if modbus:
                _flatten(modbus[i], fields)
            pdus.append(TsharkPdu(number, ts, src, dst, int(tcp.get("tcp.srcport", 0)),
                                  int(tcp.get("tcp.dstport", 0)), fields))
    return pdus, unaligned


@dataclass(frozen=True)
class TsharkTcpFrame:
    """A TCP frame as tshark's TCP layer sees it (whatever it carries)."""

    frame: int
    ts: float
    src: str
    sport: int
    dst: str
    dport: int
    experts: tuple[str, ...]  # every expert message of the frame, e.g. TCP analysis


def tcp_frames(path: Path, frames: tuple[int, ...], port: int = 502) -> dict[int, TsharkTcpFrame]:
    """Addresses, time and expert messages of the given TCP frames."""
    if not frames:
        return {}
    options = ["-o", f"mbtcp.tcp.port:{port}"] if port != 502 else []
    cmd = ["tshark", "-r", str(path), "-Y", f"tcp && ({_frames_filter(frames)})",
           "-T", "fields", "-E", "separator=/t", "-E", "occurrence=a", "-E", "aggregator=|",
           *options, "-e", "frame.number", "-e", "frame.time_epoch", "-e", "ip.src",
           "-e", "tcp.srcport", "-e", "ip.dst", "-e", "tcp.dstport", "-e", "_ws.expert.message"]
    out = subprocess.run(cmd, capture_output=True, check=True, timeout=600).stdout.decode()
    result: dict[int, TsharkTcpFrame] = {}
    for line in out.splitlines():
        number, ts, src, sport, dst, dport, experts = (line.split("\t") + [""] * 7)[:7]
        result[int(number)] = TsharkTcpFrame(
            int(number), float(ts), src.split("|")[-1], int(sport.split("|")[-1]),
            dst.split("|")[-1], int(dport.split("|")[-1]),
            tuple(e for e in experts.split("|") if e))
    return result


@dataclass(frozen=True)
class TsharkFragment:
    """One DNP3 application fragment as tshark dissected it."""

    frame: int
    ts: float
    link_src: int
    link_dst: int
    fc: int
    iin: int | None
    objects: tuple[tuple[int, int, int, int | None, int | None, int | None], ...]
    # (group, variation, qualifier, start, stop, count)
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


@dataclass(frozen=True)
class TsharkSegment:
    """A DNP3 transport segment tshark did not reassemble into an application fragment."""

    frame: int
    ts: float
    src: str
    dst: str
    sport: int
    dport: int
    link_src: int
    link_dst: int
    transport: int  # the transport header byte: FIN 0x80 | FIR 0x40 | SEQ 0x3F


_ITEMS = re.compile(r"Number of Items: *(-?\d+)")


def _dnp3_object(code: str, tree: dict[str, Any]) -> tuple[int, int, int, int | None,
                                                             int | None, int | None]:
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


def _app_objects(app: dict[str, Any]) -> list[tuple[tuple[int, int, int, int | None,
                                                          int | None, int | None],
                                                    tuple[str, ...]]]:
    objects = []
    for key, block in app.items():
        if not key.endswith("Data Objects") or not isinstance(block, dict):
            continue
        codes = _as_list(block.get("dnp3.al.obj"))
        trees = _as_list(block.get("dnp3.al.obj_tree"))
        for code, tree in zip(codes, trees, strict=False):
            tree = tree if isinstance(tree, dict) else {}
            notes: list[str] = []
            _experts(tree, notes)
            if any(k.startswith("Number of Items") and not _ITEMS.match(k) for k in tree):
                notes.append("no item count")
            if not any(k.startswith("Qualifier Field") for k in tree):
                notes.append("no qualifier")
            objects.append((_dnp3_object(code, tree), tuple(notes)))
    return objects


def _experts(node: Any, out: list[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_ws.expert.message" and isinstance(value, str):
                out.append(value)
            else:
                _experts(value, out)
    elif isinstance(node, list):
        for item in node:
            _experts(item, out)


def dnp3_fragments(path: Path, ports: tuple[int, ...] = (20000,)) -> list[TsharkFragment]:
    """Every DNP3 application fragment tshark reassembles, in frame order."""
    return dnp3_dissect(path, ports)[0]


@functools.lru_cache(maxsize=4)
def dnp3_dissect(path: Path, ports: tuple[int, ...] = (20000,)
                 ) -> tuple[list[TsharkFragment], list[TsharkSegment]]:
    """tshark's application fragments, and the transport segments it left unreassembled."""
    options: list[str] = []
    for port in ports:
        options += ["-d", f"tcp.port=={port},dnp3", "-d", f"udp.port=={port},dnp3"]
    out: list[TsharkFragment] = []
    loose: list[TsharkSegment] = []
    for layers in dissect(path, ("dnp3",), tuple(options)):
        frame = layers["frame"]
        number = int(frame["frame.number"])
        ts = float(frame["frame.time_epoch"])
        ip = layers.get("ip") or layers.get("ipv6") or {}
        if isinstance(ip, list):
            ip = ip[-1]
        src = ip.get("ip.src") or ip.get("ipv6.src", "")
        dst = ip.get("ip.dst") or ip.get("ipv6.dst", "")
        l4 = layers.get("tcp") or layers.get("udp") or {}
        if isinstance(l4, list):
            l4 = l4[-1]
        sport = int(l4.get("tcp.srcport") or l4.get("udp.srcport") or 0)
        dport = int(l4.get("tcp.dstport") or l4.get("udp.dstport") or 0)
        tcp_text = json.dumps(layers.get("tcp"))
        retransmission = ("tcp.analysis.retransmission" in tcp_text
                          or "tcp.analysis.fast_retransmission" in tcp_text)
        malformed = "_ws.malformed" in json.dumps(layers)
        for pdu in _as_list(layers.get("dnp3")):
            link: dict[str, Any] = {}
            has_app = False
            for key, value in pdu.items():
                for item in _as_list(value):
                    if key.startswith("Data Link Layer") and isinstance(item, dict):
                        link = item
                    elif key.startswith("Application Layer") and isinstance(item, dict):
                        has_app = True
                        iin = item.get("dnp3.al.iin")
                        experts: list[str] = []
                        _experts(item, experts)
                        objects = _app_objects(item)
                        out.append(TsharkFragment(
                            number, ts, int(link.get("dnp3.src", "-1")),
                            int(link.get("dnp3.dst", "-1")), int(item["dnp3.al.func"]),
                            int(iin, 16) if iin else None, tuple(o for o, _ in objects),
                            src, dst, sport, dport, tuple(experts), malformed,
                            int(link.get("dnp3.ctl", "-1"), 0),
                            tuple(n for _, n in objects), retransmission))
            transport = pdu.get("dnp3.tr.ctl")
            if not has_app and isinstance(transport, str):
                loose.append(TsharkSegment(number, ts, src, dst, sport, dport,
                                           int(link.get("dnp3.src", "-1")),
                                           int(link.get("dnp3.dst", "-1")), int(transport, 0)))
    return out, loose
