"""tshark as the field-level oracle: one JSON dissection per capture, flattened per PDU.

tshark's JSON (``--no-duplicate-keys``) turns repeated layers of one frame into lists,
so a frame carrying two Modbus ADUs has ``mbtcp: [..., ...]``. We pair the i-th ``mbtcp``
with the i-th ``modbus`` layer; when their counts differ (a PDU tshark could not
dissect) the frame is reported as unaligned rather than guessed at. A DNP3 layer is read
by sensor/verify/tshark.py's ``dnp3_layer``, the reading ``mamori verify`` makes of the same
JSON through pyshark.
"""

from __future__ import annotations

import functools
import json
import subprocess
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Any

from mamori.sensor.verify.tshark import FrameAddress, TsharkFragment, TsharkSegment, dnp3_layer

# The DNP3 records are sensor/verify/tshark.py's own; handed on with the functions that make them.
__all__ = ["TsharkFragment", "TsharkPdu", "TsharkSegment", "TsharkTcpFrame", "dissect",
           "dnp3_dissect", "dnp3_fragments", "modbus_pdus", "tcp_frames"]


@dataclass(frozen=True)
class TsharkPdu(FrameAddress):
    _: KW_ONLY
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
                                  int(tcp.get("tcp.dstport", 0)), layers=fields))
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
        at = FrameAddress(number, ts, src, dst, sport, dport, malformed, retransmission)
        for pdu in _as_list(layers.get("dnp3")):
            fragments, segment = dnp3_layer(pdu, at)
            out.extend(fragments)
            if segment is not None:
                loose.append(segment)
    return out, loose
