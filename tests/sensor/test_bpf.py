"""The kernel capture filter, frame by frame, against three oracles.

1. The replay decoder (``mamori.parsers.packet.decode``): live capture must let through
   exactly the frames replay would turn into one of our events or anomalies.
2. ``tcpdump -dd``: libpcap's compiler on the same ports, over the frames where its
   ``port`` primitive means what ours does (no IPv4 fragments, no IPv6 extension
   headers, at most two VLAN tags).
3. The Linux kernel: the program attached to a packet socket on a veth pair, with
   every frame sent through it; this is also the oracle for tests/bpfvm.py.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mamori.parsers.l2 import decode_arp
from mamori.parsers.packet import (
    MAX_IPV6_EXTENSIONS,
    MAX_VLAN_DEPTH,
    Decoded,
    PacketAnomaly,
    decode,
)
from mamori.sensor.capture import bpf
from tests import bpfvm
from tests.conftest import PROJECT, require_tool

PORTS = frozenset({502, 20000})
_A = PacketAnomaly
# Problems the decoder reports before it knows the ports: the filter lets them through.
PORTLESS = {_A.IP_FRAGMENT, _A.VLAN_TOO_DEEP, _A.IPV6_TOO_MANY_EXTENSIONS}


def l4(proto: int, sport: int, dport: int, payload: bytes) -> bytes:
    if proto == 6:
        return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x18, 8192, 0, 0) + payload
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def ipv4(proto: int, body: bytes, *, options: bytes = b"", frag: int = 0) -> bytes:
    ihl = 5 + len(options) // 4
    return struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 4 * ihl + len(body), 1, frag, 64, proto,
                       0, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])) + options + body


def ipv6(proto: int, body: bytes, chain: tuple[tuple[int, bytes], ...] = ()) -> bytes:
    """``chain``: (header type, header bytes after the next-header byte) outermost first."""
    headers = b""
    kinds = [kind for kind, _ in chain] + [proto]
    for (_, rest), nxt in zip(chain, kinds[1:], strict=True):
        headers += bytes([nxt]) + rest
    payload = headers + body
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), kinds[0], 64,
                       b"\xfd" + b"\0" * 14 + b"\x01", b"\xfd" + b"\0" * 14 + b"\x02") + payload


def ext8(units: int = 0) -> bytes:
    return bytes([units]) + b"\0" * (6 + 8 * units)


def ah() -> bytes:
    return bytes([4]) + b"\0" * 22  # (4 + 2) * 4 = 24 bytes


def fragment(offset: int = 0, more: bool = False) -> bytes:
    return b"\0" + struct.pack("!HI", (offset << 3) | more, 7)


def ethernet(etype: int, body: bytes, tags: tuple[int, ...] = ()) -> bytes:
    frame = b"\xff" * 6 + b"\x02\0\0\0\0\x01"
    for i, tpid in enumerate(tags):
        frame += struct.pack("!HH", tpid, 100 + i)
    return frame + struct.pack("!H", etype) + body


def catalogue() -> Iterator[tuple[str, bytes]]:
    """Named frames; every one unique (a serial number in each payload)."""
    serial = 0

    def mark() -> bytes:
        nonlocal serial
        serial += 1
        return b"mamori%06d" % serial

    tag_sets: list[tuple[int, ...]] = [(), (0x8100,), (0x88A8, 0x8100), (0x9100,),
                                       (0x8100,) * MAX_VLAN_DEPTH, (0x8100,) * (MAX_VLAN_DEPTH + 1)]
    port_pairs = [(40000, 502), (502, 40000), (20000, 20000), (40000, 503), (501, 40000),
                  (19999, 20001)]
    chains: list[tuple[str, tuple[tuple[int, bytes], ...]]] = [
        ("", ()), ("hop", ((0, ext8()),)), ("hop+dst", ((0, ext8(1)), (60, ext8()))),
        ("routing", ((43, ext8(2)),)), ("ah", ((51, ah()),)),
        ("atomic-frag", ((44, fragment()),)), ("frag", ((44, fragment(8, True)),)),
        ("frag0-more", ((44, fragment(0, True)),)), ("mobility", ((135, ext8()),)),
        ("16-ext", tuple((60, ext8()) for _ in range(MAX_IPV6_EXTENSIONS))),
        ("17-ext", tuple((60, ext8()) for _ in range(MAX_IPV6_EXTENSIONS + 1))),
    ]
    for tags in tag_sets:
        t = f"vlan{len(tags)}" + ("-9100" if 0x9100 in tags else "")
        for proto in (6, 17):
            for sport, dport in port_pairs:
                where = f"{t} {proto} {sport}>{dport}"
                yield f"v4 {where}", ethernet(0x0800, ipv4(proto, l4(proto, sport, dport,
                                                                      mark())), tags)
                yield f"v4-options {where}", ethernet(0x0800, ipv4(
                    proto, l4(proto, sport, dport, mark()), options=b"\x01" * 8), tags)
                for name, chain in chains:
                    yield f"v6{'-' + name if name else ''} {where}", ethernet(
                        0x86DD, ipv6(proto, l4(proto, sport, dport, mark()), chain), tags)
        yield f"v4-fragment {t}", ethernet(0x0800, ipv4(6, mark(), frag=0x20 | 0x0040), tags)
        yield f"v4-first-fragment {t}", ethernet(0x0800, ipv4(
            6, l4(6, 40000, 502, mark()), frag=0x2000), tags)
        yield f"v4-icmp {t}", ethernet(0x0800, ipv4(1, b"\x08\0\0\0" + mark()), tags)
        yield f"v6-icmp {t}", ethernet(0x86DD, ipv6(58, b"\x80\0\0\0" + mark()), tags)
        yield f"v6-hop-icmp {t}", ethernet(0x86DD, ipv6(58, b"\x80\0\0\0" + mark(),
                                                        ((0, ext8()),)), tags)
        yield f"v6-no-next {t}", ethernet(0x86DD, ipv6(59, mark()), tags)
        yield f"arp {t}", ethernet(0x0806, b"\0\1\x08\0\6\4\0\1" + mark() + b"\0" * 10, tags)
        yield f"arp-short {t}", ethernet(0x0806, b"\0\1\x08\0\6\4\0\1" + mark()[:4], tags)
        yield f"rarp {t}", ethernet(0x8035, b"\0\1\x08\0\6\4\0\3" + mark() + b"\0" * 10, tags)
    whole = ethernet(0x0800, ipv4(6, l4(6, 40000, 502, mark())))
    for cut in (14, 20, 33, 34, 36, 37, 38, 40):  # the ports end at byte 38
        yield f"v4 cut at {cut}", whole[:cut]
    whole6 = ethernet(0x86DD, ipv6(6, l4(6, 40000, 502, mark()), ((0, ext8()),)))
    for cut in (20, 54, 60, 62, 63, 65, 66, 70):  # the ports end at byte 66
        yield f"v6 cut at {cut}", whole6[:cut]


PORTS_END = {"v4": 38, "v6": 66}  # where the ports of the cut frames above end


FRAMES = list(catalogue())


def ours(ports: frozenset[int] = PORTS) -> list[bpf.Instruction]:
    return bpf.port_filter(ports)


def decoder_says(frame: bytes, ports: frozenset[int] = PORTS) -> bool | None:
    """True: replay makes an event or anomaly of ours; False: not ours; None: cut short."""
    if decode_arp(0.0, 1, frame) is not None:  # ARP, readable or not: the pipeline takes it
        return True
    result = decode(1, frame)
    if isinstance(result, Decoded):
        return result.sport in ports or result.dport in ports
    if result.anomaly in PORTLESS:
        return True
    if result.anomaly in (_A.NOT_TCP_UDP, _A.NOT_IP):
        return False
    return None  # truncated: nothing in the frame says it is ours


def test_catalogue_covers_every_verdict() -> None:
    verdicts = [decoder_says(f) for _, f in FRAMES]
    assert verdicts.count(True) > 100 and verdicts.count(False) > 100 and None in verdicts
    assert len({f for _, f in FRAMES}) == len(FRAMES)


def test_filter_agrees_with_the_replay_decoder_frame_by_frame() -> None:
    program = ours()
    disagreements = []
    for name, frame in FRAMES:
        expected = decoder_says(frame)
        got = bpfvm.run(program, frame) > 0
        if expected is None:  # cut short: kept exactly when its ports (ours) are there
            expected = len(frame) >= PORTS_END[name.split()[0]]
        if got != expected:
            disagreements.append(f"{name}: filter {'keeps' if got else 'drops'}")
    assert not disagreements, "\n".join(disagreements)


def _tcpdump(expression: str) -> list[bpf.Instruction]:
    require_tool("tcpdump")
    out = subprocess.run(["tcpdump", "-dd", "-y", "EN10MB", expression], capture_output=True,
                         text=True, check=True).stdout
    return [_instruction(line) for line in out.splitlines() if line.strip()]


def _instruction(line: str) -> bpf.Instruction:
    """One ``{ code, jt, jf, k },`` line of ``tcpdump -dd``."""
    code, jt, jf, k = (int(v, 0) for v in line.strip(" {},").split(","))
    return code, jt, jf, k


def _port_expression(ports: frozenset[int]) -> str:
    return "(tcp or udp) and (" + " or ".join(f"port {p}" for p in sorted(ports)) + ")"


def _comparable_with_tcpdump(name: str) -> bool:
    """tcpdump's ``port`` drops IPv4 fragments and looks past no IPv6 extension header."""
    kind, tags = name.split()[:2]
    return kind in {"v4", "v4-options", "v6", "v4-icmp", "v6-icmp", "arp", "arp-short", "rarp",
                    "v6-no-next"} \
        and tags in {"vlan0", "vlan1", "vlan2", "vlan1-9100"}


def test_filter_agrees_with_tcpdump_on_the_same_ports() -> None:
    p = f"({_port_expression(PORTS)} or arp)"
    # libpcap's vlan keyword moves every later offset by one tag, hence the nesting.
    theirs = _tcpdump(f"{p} or (vlan and ({p} or (vlan and {p})))")
    program = ours()
    compared = 0
    for name, frame in FRAMES:
        if not _comparable_with_tcpdump(name):
            continue
        compared += 1
        assert (bpfvm.run(program, frame) > 0) == (bpfvm.run(theirs, frame) > 0), name
    assert compared >= 120


def test_many_ports_and_ranges_lift_the_old_cap_of_50() -> None:
    scattered = frozenset(range(1000, 60000, 97))  # 609 separate ports
    program = ours(scattered)
    assert len(program) <= bpf.MAX_INSTRUCTIONS
    frame = ethernet(0x0800, ipv4(6, l4(6, 40001, 1000 + 97 * 300, b"x")))
    assert bpfvm.run(program, frame) > 0
    assert bpfvm.run(program, ethernet(0x0800, ipv4(6, l4(6, 40001, 1001, b"x")))) == 0
    run = frozenset(range(10000, 20001))  # one range costs one test more than one port
    assert len(ours(run)) == len(ours(frozenset({10000}))) + 2
    for port, kept in ((9999, False), (10000, True), (15000, True), (20000, True),
                       (20001, False)):
        frame = ethernet(0x86DD, ipv6(17, l4(17, 40000, port, b"x")))
        assert (bpfvm.run(ours(run), frame) > 0) is kept, port
    with pytest.raises(ValueError, match="4096"):
        ours(frozenset(range(0, 65536, 2)))
    with pytest.raises(ValueError):
        ours(frozenset())


def test_every_jump_lands_inside_the_program() -> None:
    for ports in (PORTS, frozenset(range(1000, 60000, 97))):
        program = ours(ports)
        for index, (code, jt, jf, k) in enumerate(program):
            if code == bpf.JA:
                assert index + 1 + k < len(program)
            elif code & 0x07 == 0x05:
                assert 0 <= jt <= 255 and 0 <= jf <= 255
                assert index + 1 + max(jt, jf) < len(program)
        assert program[-1][0] == bpf.RET_K and program[-1][3] == bpf.SNAPLEN


def test_a_user_expression_is_compiled_by_libpcap_and_applied_after_ours() -> None:
    user = bpf.compile_expression("not host 10.0.0.9")
    program = bpf.port_filter(PORTS, user)
    ok = ethernet(0x0800, ipv4(6, l4(6, 40000, 502, b"x")))
    blocked = bytearray(ok)
    blocked[14 + 12:14 + 16] = bytes([10, 0, 0, 9])  # source address
    other = ethernet(0x0800, ipv4(6, l4(6, 40000, 80, b"x")))
    assert bpfvm.run(program, ok) > 0
    assert bpfvm.run(program, bytes(blocked)) == 0
    assert bpfvm.run(program, other) == 0  # the user's filter cannot widen ours
    with pytest.raises(ValueError, match="not a valid filter expression"):
        bpf.compile_expression("host and and")
    assert bpf.v_expression("  ") == ""
    with pytest.raises(ValueError):
        bpf.v_expression(5)


KERNEL_PEER = r"""
import json, socket, struct, sys, select
from mamori.sensor.capture import bpf
frames = [bytes.fromhex(h) for h in json.loads(sys.stdin.read())]
rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
rx.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE: hold every frame sent
bpf.attach(rx, bpf.port_filter({502, 20000}))
rx.bind(("mmb1", 3))
tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
tx.bind(("mmb0", 0))
sentinel = bytes.fromhex(sys.argv[1])
for frame in frames + [sentinel]:
    tx.send(frame)
seen = []
while select.select([rx], [], [], 5)[0]:
    data = rx.recv(65536)
    if data == sentinel:
        break
    seen.append(data.hex())
print(json.dumps(seen))
"""


def _kernel_view(frame: bytes) -> bytes:
    """Linux takes the outer 802.1Q/802.1ad tag off a received frame before any tap."""
    if len(frame) >= 18 and frame[12:14] in (b"\x81\x00", b"\x88\xa8"):
        return frame[:12] + frame[16:]
    return frame


@pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and packet sockets need root")
def test_the_kernel_runs_the_program_as_the_interpreter_does() -> None:
    require_tool("ip")
    ns = f"mmbpf{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        def inside(*args: str) -> None:
            subprocess.run(["ip", "netns", "exec", ns, *args], check=True)
        inside("ip", "link", "add", "mmb0", "type", "veth", "peer", "name", "mmb1")
        for dev in ("mmb0", "mmb1"):
            inside("sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1")
            inside("ip", "link", "set", dev, "up")
        frames = [f for _, f in FRAMES]
        sentinel = ethernet(0x0800, ipv4(6, l4(6, 40000, 502, b"sentinel")))
        out = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", KERNEL_PEER, sentinel.hex()],
            input=json.dumps([f.hex() for f in frames]), capture_output=True, text=True,
            check=True, cwd=PROJECT, timeout=60).stdout
        kept = {bytes.fromhex(h) for h in json.loads(out)}
        program = ours()
        mismatches = []
        for name, frame in FRAMES:
            view = _kernel_view(frame)
            if (view in kept) != (bpfvm.run(program, view) > 0):
                mismatches.append(name)
        assert not mismatches, (len(mismatches), mismatches)
        assert len(kept) > 100
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_the_capture_filter_option_is_checked_at_load_with_its_line(tmp_path: Path) -> None:
    from mamori.sensor import config as cfg

    good = tmp_path / "good.toml"
    good.write_text('[capture]\nfilter = "net 10.1.0.0/16 and not host 10.1.0.9"\n')
    assert cfg.load(str(good)).get("capture", "filter") == \
        "net 10.1.0.0/16 and not host 10.1.0.9"
    bad = tmp_path / "bad.toml"
    bad.write_text('[capture]\ninterfaces = ["eth1"]\nfilter = "port nope"\n')
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.load(str(bad))
    message = str(caught.value)
    assert str(bad) in message and ":3" in message and "filter" in message, message
    assert "nope" in message, message  # libpcap's own reason
