"""ARP decoding against tshark, on ARP made by real hosts in network namespaces.

Two namespaces joined by a veth pair: one datagram (an ARP request and reply) and
arpspoof's forged replies, captured once on the Ethernet interface and once on
``any`` (Linux cooked capture, SLL2: the sender's MAC only); the Ethernet frames
are also written again behind two 802.1Q tags (QinQ; this kernel has no
VLAN devices). Every ARP frame is decoded by ``mamori.parsers.l2.decode_arp`` and
compared field by field with tshark's dissection of the same file; damaged ARP
is an ``ArpProblem``, never an exception.
"""

from __future__ import annotations

import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mamori.parsers.l2 import ArpEvent, ArpOp, ArpProblem, decode_arp
from mamori.sensor.capture.pcapfile import read_capture_tuples
from tests import netns
from tests.conftest import require_tool, unavailable
from tests.peers.modbus_peer import terminate
from tests.stormcap import write_pcap

A, B = "mrl-a", "mrl-b"
IP_A, IP_B = "10.251.0.1", "10.251.0.2"
FIELDS = ("frame.number", "arp.opcode", "arp.src.hw_mac", "arp.src.proto_ipv4",
          "arp.dst.hw_mac", "arp.dst.proto_ipv4", "vlan.id")


def _ns(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return netns.sh("ip", "netns", "exec", ns, *args, check=check)


def _setup() -> None:
    _teardown()
    for ns in (A, B):
        netns.sh("ip", "netns", "add", ns)
    netns.sh("ip", "link", "add", "mrlv0", "type", "veth", "peer", "name", "mrlv1")
    for dev, ns, ip in (("mrlv0", A, IP_A), ("mrlv1", B, IP_B)):
        netns.sh("ip", "link", "set", dev, "netns", ns)
        _ns(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        _ns(ns, "ip", "link", "set", "lo", "up")
        _ns(ns, "ip", "addr", "add", f"{ip}/24", "dev", dev)
        _ns(ns, "ip", "link", "set", dev, "up")


def _teardown() -> None:
    for ns in (A, B):
        netns.sh("ip", "netns", "del", ns, check=False)
    netns.sh("ip", "link", "del", "mrlv0", check=False)  # if setup failed before moving it


def _tcpdump(out: Path, iface: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["ip", "netns", "exec", A, "tcpdump", "-i", iface, "-U",
                             "--immediate-mode", "-w", str(out), "arp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if b"listening" in line or not line:
            break
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    time.sleep(0.3)  # the last frames reach the file
    terminate(proc, signal.SIGINT)


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    why = netns.available()
    if why:
        unavailable(why)
    for tool in ("tcpdump", "tshark", "arpspoof"):
        require_tool(tool)
    tmp = tmp_path_factory.mktemp("arp")
    paths = {"ethernet": tmp / "eth.pcap", "cooked": tmp / "any.pcap",
             "tagged": tmp / "tagged.pcap"}
    _setup()
    try:
        dumps = [_tcpdump(paths["ethernet"], "mrlv0"), _tcpdump(paths["cooked"], "any")]
        # One datagram to B: A's kernel asks for B's MAC and B answers (no ping here).
        _ns(A, sys.executable, "-c", "import socket; socket.socket(socket.AF_INET, "
            f"socket.SOCK_DGRAM).sendto(b'x', ('{IP_B}', 9))")
        deadline = time.monotonic() + 10
        while "lladdr" not in _ns(A, "ip", "neigh", "show", IP_B).stdout:
            assert time.monotonic() < deadline, f"{IP_B} never answered ARP"
            time.sleep(0.1)
        spoof = subprocess.Popen(["ip", "netns", "exec", B, "arpspoof", "-i", "mrlv1", "-t",
                                  IP_A, "10.251.0.9"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(2.5)
        spoof.send_signal(signal.SIGINT)
        spoof.wait(15)
        for proc in dumps:
            _stop(proc)
    finally:
        _teardown()
    write_pcap(paths["tagged"], [
        (ts, data[:12] + b"\x81\x00\x00\x07\x81\x00\x00\x64" + data[12:])
        for ts, _, data, _ in read_capture_tuples(paths["ethernet"])])
    return paths


def _tshark(path: Path) -> dict[int, tuple[str, ...]]:
    out = subprocess.run(["tshark", "-r", str(path), "-Y", "arp", "-T", "fields",
                          *(x for f in FIELDS for x in ("-e", f))],
                         capture_output=True, text=True, check=True).stdout
    rows = {}
    for line in out.splitlines():
        cells = line.split("\t")
        rows[int(cells[0])] = tuple(cells[1:])
    return rows


@pytest.mark.parametrize("kind", ["ethernet", "tagged", "cooked"])
def test_every_arp_frame_decodes_as_tshark_dissects_it(kind: str,
                                                       captures: dict[str, Path]) -> None:
    path = captures[kind]
    theirs = _tshark(path)
    ours: dict[int, ArpEvent] = {}
    for ts, linktype, data, number in read_capture_tuples(path):
        found = decode_arp(ts, linktype, data)
        assert not isinstance(found, ArpProblem), (number, found)
        if found is not None:
            ours[number] = found
    assert set(ours) == set(theirs)
    for frame, ev in ours.items():
        op, smac, sip, tmac, tip, vlan = theirs[frame]
        assert (ev.kind.value, ev.sender_mac, ev.sender_ip, ev.target_mac, ev.target_ip) == \
            (int(op), smac, sip, tmac, tip), frame
        if kind == "cooked":
            assert ev.dst_mac is None and ev.src_mac is not None
        else:
            # (not always the sender MAC: arpspoof's own requests carry a zero one)
            assert ev.src_mac is not None and ev.dst_mac is not None
            # tshark lists both tags' ids; ours is the outermost one
            assert ev.vlan == (int(vlan.split(",")[0]) if vlan else None), frame
            assert (ev.vlan is not None) == (kind == "tagged")
    assert {ArpOp.REQUEST, ArpOp.REPLY} <= {ev.kind for ev in ours.values()}
    forged = [ev for ev in ours.values() if ev.sender_ip == "10.251.0.9"]
    assert len(forged) >= 2 and all(ev.kind is ArpOp.REPLY for ev in forged)


def _arp_frame(htype: int = 1, ptype: int = 0x0800, hlen: int = 6, plen: int = 4,
               op: int = 1) -> bytes:
    return (b"\xff" * 6 + b"\x02\0\0\0\0\x01" + b"\x08\x06"
            + struct.pack("!HHBBH", htype, ptype, hlen, plen, op)
            + b"\x02\0\0\0\0\x01" + bytes([10, 0, 0, 1]) + bytes(6) + bytes([10, 0, 0, 1]))


def test_a_gratuitous_announcement_is_recognised() -> None:
    ev = decode_arp(1.0, 1, _arp_frame())
    assert isinstance(ev, ArpEvent) and ev.gratuitous and ev.kind is ArpOp.REQUEST


@pytest.mark.parametrize(("fields", "words"), [
    ({"htype": 6}, "hardware type 6"), ({"ptype": 0x86DD}, "protocol 0x86dd"),
    ({"hlen": 8}, "lengths 8/4"), ({"op": 3}, "operation 3"), ({"op": 0}, "operation 0")])
def test_arp_for_something_else_is_a_problem(fields: dict[str, int], words: str) -> None:
    found = decode_arp(0.0, 1, _arp_frame(**fields))
    assert isinstance(found, ArpProblem) and words in found.detail


def test_arp_cut_short_anywhere_is_a_problem_or_not_arp() -> None:
    whole = _arp_frame()
    for cut in range(len(whole)):
        found = decode_arp(0.0, 1, whole[:cut])
        if cut < 14:
            assert found is None
        else:
            assert isinstance(found, ArpProblem) and "28 bytes" in found.detail, cut


def test_frames_that_are_not_arp_are_none() -> None:
    ipv4 = b"\xff" * 6 + b"\x02\0\0\0\0\x01" + b"\x08\x00" + bytes(40)
    assert decode_arp(0.0, 1, ipv4) is None
    assert decode_arp(0.0, 101, _arp_frame()[14:]) is None  # raw IP has no ethertype
    deep = b"\xff" * 12 + b"\x81\x00\x00\x01" * 9 + b"\x08\x06" + _arp_frame()[14:]
    assert decode_arp(0.0, 1, deep) is None  # the packet decoder reports the deep stack


@settings(max_examples=2000, deadline=None)
@given(st.sampled_from([1, 113, 276, 0, 101]), st.binary(max_size=80))
def test_any_bytes_never_raise(linktype: int, data: bytes) -> None:
    found = decode_arp(0.0, linktype, data)
    assert found is None or isinstance(found, ArpEvent | ArpProblem)
    tagged = decode_arp(0.0, 1, b"\xff" * 12 + b"\x81\x00\x00\x64\x08\x06" + data)
    assert isinstance(tagged, ArpEvent | ArpProblem)  # behind a tag, ARP is always read
