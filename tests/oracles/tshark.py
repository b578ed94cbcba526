"""tshark as the field-level oracle: one JSON dissection per capture, flattened per PDU.

tshark's JSON (``--no-duplicate-keys``) turns repeated layers of one frame into lists,
so a frame carrying two Modbus ADUs has ``mbtcp: [..., ...]``. We pair the i-th ``mbtcp``
with the i-th ``modbus`` layer; when their counts differ (a PDU tshark could not
dissect) the frame is reported as unaligned rather than guessed at.
"""

from __future__ import annotations

import json
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
    path: Path, layers: tuple[str, ...], options: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """Raw tshark JSON layers for every frame that has the first of ``layers``."""
    cmd = ["tshark", "-r", str(path), "-T", "json", "--no-duplicate-keys",
           "-J", " ".join(("frame", "ip", "ipv6", "tcp", "udp", *layers)),
           "-Y", layers[0], *options]
    out = subprocess.run(cmd, capture_output=True, check=True, timeout=600).stdout
    frames: list[dict[str, Any]] = [p["_source"]["layers"] for p in json.loads(out or b"[]")]
    return frames


def modbus_pdus(path: Path, port: int = 502) -> tuple[list[TsharkPdu], list[int]]:
    """Every Modbus/TCP PDU tshark sees, in frame order; plus frames it could not align."""
    options = ("-o", f"mbtcp.tcp.port:{port}") if port != 502 else ()
    pdus: list[TsharkPdu] = []
    unaligned: list[int] = []
    for layers in dissect(path, ("mbtcp", "modbus"), options):
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
            count = int(key.rsplit(":", 1)[1])
            if isinstance(sub, dict):
                if "dnp3.al.range.start" in sub:
                    start = int(sub["dnp3.al.range.start"])
                    stop = int(sub["dnp3.al.range.stop"])
                if "dnp3.al.range.quantity" in sub:
                    count = int(sub["dnp3.al.range.quantity"])
    return value >> 8, value & 0xFF, (prefix << 4) | rng, start, stop, count


def _app_objects(app: dict[str, Any]) -> list[tuple[int, int, int, int | None, int | None,
                                                    int | None]]:
    objects = []
    for key, block in app.items():
        if not key.endswith("Data Objects") or not isinstance(block, dict):
            continue
        codes = _as_list(block.get("dnp3.al.obj"))
        trees = _as_list(block.get("dnp3.al.obj_tree"))
        for code, tree in zip(codes, trees, strict=False):
            objects.append(_dnp3_object(code, tree if isinstance(tree, dict) else {}))
    return objects


def dnp3_fragments(path: Path, ports: tuple[int, ...] = (20000,)) -> list[TsharkFragment]:
    """Every DNP3 application fragment tshark reassembles, in frame order."""
    options: list[str] = []
    for port in ports:
        options += ["-d", f"tcp.port=={port},dnp3", "-d", f"udp.port=={port},dnp3"]
    out: list[TsharkFragment] = []
    for layers in dissect(path, ("dnp3",), tuple(options)):
        frame = layers["frame"]
        number = int(frame["frame.number"])
        ts = float(frame["frame.time_epoch"])
        for pdu in _as_list(layers.get("dnp3")):
            link: dict[str, Any] = {}
            for key, value in pdu.items():
                for item in _as_list(value):
                    if key.startswith("Data Link Layer") and isinstance(item, dict):
                        link = item
                    elif key.startswith("Application Layer") and isinstance(item, dict):
                        iin = item.get("dnp3.al.iin")
                        out.append(TsharkFragment(
                            number, ts, int(link.get("dnp3.src", "-1")),
                            int(link.get("dnp3.dst", "-1")), int(item["dnp3.al.func"]),
                            int(iin, 16) if iin else None, tuple(_app_objects(item))))
    return out
