"""decode(): hand-built frames with every byte commented, fuzzing, and tshark on the corpus."""

from __future__ import annotations

import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mamori.parsers.capfile import CaptureFileParser
from mamori.parsers.packet import (
    Decoded,
    DecodeProblem,
    PacketAnomaly,
    decode,
    ip_to_str,
    mac_to_str,
)
from tests.conftest import corpus_path

H = bytes.fromhex

ETH_HDR = H(
    "0a0b0c0d0e0f"  # destination MAC
    "010203040506"  # source MAC
)
IPV4_TCP = H(
    "45"  # version 4, IHL 5 (20 bytes)
    "00"  # DSCP/ECN
    "002c"  # total length 44 = 20 IP + 20 TCP + 4 payload
    "1234"  # identification
    "4000"  # flags DF, fragment offset 0
    "40"  # TTL 64
    "06"  # protocol TCP
    "0000"  # header checksum (not checked)
    "c0a80001"  # source 192.168.0.1
    "c0a80002"  # destination 192.168.0.2
    "c350"  # source port 50000
    "01f6"  # destination port 502
    "00000064"  # sequence number 100
    "000000c8"  # acknowledgement number 200
    "50"  # data offset 5 (20 bytes)
    "18"  # flags PSH|ACK
    "ffff"  # window
    "0000"  # checksum
    "0000"  # urgent pointer
    "deadbeef"  # payload
)
IPV4_UDP = H(
    "45"  # version 4, IHL 5
    "00"  # DSCP/ECN
    "0020"  # total length 32 = 20 IP + 8 UDP + 4 payload
    "0001"  # identification
    "0000"  # no flags, offset 0
    "40"  # TTL
    "11"  # protocol UDP
    "0000"  # checksum
    "0a000001"  # source 10.0.0.1
    "0a000002"  # destination 10.0.0.2
    "4e20"  # source port 20000
    "4e21"  # destination port 20001
    "000c"  # UDP length 12 = 8 header + 4 payload
    "0000"  # checksum
    "05640501"  # payload
)
IPV6_TCP = H(
    "60000000"  # version 6, traffic class 0, flow label 0
    "0018"  # payload length 24 = 20 TCP + 4 payload
    "06"  # next header TCP
    "40"  # hop limit
    "20010db8000000000000000000000001"  # source 2001:db8::1
    "20010db8000000000000000000000002"  # destination 2001:db8::2
    "4e20"  # source port 20000
    "d431"  # destination port 54321
    "00000001"  # sequence number 1
    "00000000"  # acknowledgement number 0
    "50"  # data offset 5
    "02"  # flags SYN
    "ffff"  # window
    "0000"  # checksum
    "0000"  # urgent pointer
    "cafef00d"  # payload
)

TCP_EXPECTED = Decoded(6, H("c0a80001"), H("c0a80002"), 50000, 502, 100, 200, 0x18,
                       H("deadbeef"), H("010203040506"), H("0a0b0c0d0e0f"), None)


def test_ethernet_ipv4_tcp() -> None:
    frame = ETH_HDR + H("0800") + IPV4_TCP  # ethertype IPv4
    assert decode(1, frame) == TCP_EXPECTED
    assert type(decode(1, frame)) is Decoded


def test_ethernet_padding_and_fcs_are_trimmed() -> None:
    frame = ETH_HDR + H("0800") + IPV4_UDP + bytes(14) + H("11223344")  # pad to 60, FCS
    result = decode(1, frame)
    assert isinstance(result, Decoded)
    assert (result.proto, result.sport, result.dport, result.payload) == (
        17, 20000, 20001, H("05640501"))
    assert (result.seq, result.ack, result.flags) == (0, 0, 0)


def test_single_vlan() -> None:
    frame = ETH_HDR + H(
        "8100"  # TPID 802.1Q
        "2064"  # PCP 1, VLAN id 100
        "0800"  # ethertype IPv4
    ) + IPV4_TCP
    assert decode(1, frame) == TCP_EXPECTED._replace(vlan=100)


@pytest.mark.parametrize("outer", ["88a8", "9100", "8100"])
def test_qinq_reports_the_outer_vlan(outer: str) -> None:
    frame = ETH_HDR + H(
        outer  # TPID of the service tag
        + "000a"  # outer VLAN id 10
        "8100"  # TPID 802.1Q, customer tag
        "0fff"  # inner VLAN id 4095
        "86dd"  # ethertype IPv6
    ) + IPV6_TCP
    result = decode(1, frame)
    assert isinstance(result, Decoded)
    assert result.vlan == 10
    assert (ip_to_str(result.src), result.sport, result.flags, result.payload) == (
        "2001:db8::1", 20000, 2, H("cafef00d"))


def test_vlan_depth_is_capped() -> None:
    frame = ETH_HDR + H("8100" "0001") * 9 + H("0800") + IPV4_TCP  # nine tags
    assert decode(1, frame) == DecodeProblem(PacketAnomaly.VLAN_TOO_DEEP, "more than 8 VLAN tags")
    frame = ETH_HDR + H("8100" "0001") * 8 + H("0800") + IPV4_TCP  # eight is fine
    assert isinstance(decode(1, frame), Decoded)


def test_linux_sll() -> None:
    frame = H(
        "0000"  # packet type: to us
        "0001"  # ARPHRD_ETHER
        "0006"  # address length 6
        "0102030405060000"  # source address, padded to 8
        "0800"  # protocol IPv4
    ) + IPV4_TCP
    assert decode(113, frame) == TCP_EXPECTED._replace(dst_mac=None)


def test_linux_sll2() -> None:
    frame = H(
        "0800"  # protocol IPv4
        "0000"  # reserved
        "00000002"  # interface index 2
        "0001"  # ARPHRD_ETHER
        "04"  # packet type: outgoing
        "06"  # address length 6
        "0102030405060000"  # source address, padded to 8
    ) + IPV4_TCP
    assert decode(276, frame) == TCP_EXPECTED._replace(dst_mac=None)


def test_linux_sll_without_ethernet_address() -> None:
    frame = H(
        "0000"  # packet type
        "0304"  # ARPHRD_LOOPBACK... any non-Ethernet hardware
        "0000"  # address length 0
        "0000000000000000"  # no address
        "86dd"  # protocol IPv6
    ) + IPV6_TCP
    result = decode(113, frame)
    assert isinstance(result, Decoded) and result.src_mac is None and result.dst_mac is None


@pytest.mark.parametrize(("header", "body"), [
    ("02000000", IPV4_TCP),  # AF_INET, little-endian host
    ("00000002", IPV4_TCP),  # AF_INET, big-endian host
    ("1e000000", IPV6_TCP),  # AF_INET6 = 30 (macOS), little-endian
    ("00000018", IPV6_TCP),  # AF_INET6 = 24 (NetBSD/OpenBSD), big-endian
    ("1c000000", IPV6_TCP),  # AF_INET6 = 28 (FreeBSD), little-endian
])
def test_bsd_null(header: str, body: bytes) -> None:
    result = decode(0, H(header) + body)
    assert isinstance(result, Decoded)
    assert result.src_mac is None and result.vlan is None
    assert result.payload in (H("deadbeef"), H("cafef00d"))


def test_openbsd_loop_is_big_endian() -> None:
    assert decode(108, H("00000002") + IPV4_TCP) == TCP_EXPECTED._replace(
        src_mac=None, dst_mac=None)
    assert decode(108, H("02000000") + IPV4_TCP) == DecodeProblem(
        PacketAnomaly.NOT_IP, "address family 33554432")


@pytest.mark.parametrize("linktype", [101, 12, 14, 228])
def test_raw_ipv4(linktype: int) -> None:
    assert decode(linktype, IPV4_TCP) == TCP_EXPECTED._replace(src_mac=None, dst_mac=None)


@pytest.mark.parametrize("linktype", [101, 12, 14, 229])
def test_raw_ipv6(linktype: int) -> None:
    result = decode(linktype, IPV6_TCP)
    assert isinstance(result, Decoded)
    assert (ip_to_str(result.src), ip_to_str(result.dst)) == ("2001:db8::1", "2001:db8::2")


def test_raw_ipv4_linktype_rejects_ipv6() -> None:
    result = decode(228, IPV6_TCP)
    assert isinstance(result, DecodeProblem) and result.anomaly is PacketAnomaly.BAD_IP_VERSION


def test_ipv4_with_options() -> None:
    packet = H(
        "46"  # version 4, IHL 6 (24 bytes)
        "00"  # DSCP/ECN
        "0030"  # total length 48 = 24 IP + 20 TCP + 4 payload
        "1234"  # identification
        "0000"  # flags, offset
        "40"  # TTL
        "06"  # protocol TCP
        "0000"  # checksum
        "c0a80001"  # source
        "c0a80002"  # destination
        "94040000"  # option: router alert (type 148, length 4, value 0)
    ) + IPV4_TCP[20:]
    assert decode(228, packet) == TCP_EXPECTED._replace(src_mac=None, dst_mac=None)


def test_tcp_options_are_skipped() -> None:
    packet = IPV4_TCP[:2] + H("0034") + IPV4_TCP[4:32] + H(  # total length 52
        "70"  # data offset 7 (28 bytes)
        "12"  # flags SYN|ACK
        "ffff" "0000" "0000"  # window, checksum, urgent
        "020405b4"  # option MSS 1460
        "01010402"  # NOP NOP SACK-permitted
    ) + H("deadbeef")
    result = decode(228, packet)
    assert isinstance(result, Decoded)
    assert (result.flags, result.payload) == (0x12, H("deadbeef"))


def test_ipv4_total_length_zero_means_captured_length() -> None:
    packet = IPV4_TCP[:2] + H("0000") + IPV4_TCP[4:]  # TSO: total length 0
    result = decode(228, packet)
    assert isinstance(result, Decoded) and result.payload == H("deadbeef")


@pytest.mark.parametrize(("flags_offset", "detail"), [
    ("2000", "IPv4 fragment, offset 0, more follow"),  # MF, first fragment
    ("0003", "IPv4 fragment, offset 24"),  # last fragment
    ("2001", "IPv4 fragment, offset 8, more follow"),  # middle fragment
])
def test_ipv4_fragments(flags_offset: str, detail: str) -> None:
    packet = IPV4_TCP[:6] + H(flags_offset) + IPV4_TCP[8:]
    assert decode(228, packet) == DecodeProblem(PacketAnomaly.IP_FRAGMENT, detail)


def test_ipv6_extension_headers() -> None:
    packet = H(
        "60000000"  # version 6
        "0024"  # payload length 36 = 8 hop-by-hop + 16 dest opts + 8 UDP + 4 payload
        "00"  # next header: hop-by-hop options
        "40"  # hop limit
        "fe800000000000000000000000000001"  # source fe80::1
        "ff020000000000000000000000000001"  # destination ff02::1
        "3c"  # hop-by-hop: next header destination options
        "00"  # length 0 (8 bytes)
        "050200000100"  # router alert (type 5, len 2, value 0), PadN (type 1, len 0)
        "11"  # destination options: next header UDP
        "01"  # length 1 (16 bytes)
        "0000000000000000000000000000"  # 14 x Pad1 (options are not interpreted)
        "4e20"  # source port 20000
        "4e20"  # destination port 20000
        "000c"  # UDP length 12
        "0000"  # checksum
        "05640000"  # payload
    )
    result = decode(229, packet)
    assert isinstance(result, Decoded)
    assert (result.proto, ip_to_str(result.src), ip_to_str(result.dst), result.payload) == (
        17, "fe80::1", "ff02::1", H("05640000"))


def ipv6_fragment(offset_flags: str) -> bytes:
    return H(
        "60000000"  # version 6
        "0020"  # payload length 32 = 8 fragment + 24 TCP
        "2c"  # next header: fragment
        "40"  # hop limit
        "20010db8000000000000000000000001"  # source
        "20010db8000000000000000000000002"  # destination
        "06"  # fragment: next header TCP
        "00"  # reserved
        + offset_flags  # fragment offset (13 bits) | res (2) | M
        + "0000abcd"  # identification
    ) + IPV6_TCP[40:]


def test_ipv6_fragment() -> None:
    result = decode(229, ipv6_fragment("0001"))  # offset 0, more fragments
    assert result == DecodeProblem(PacketAnomaly.IP_FRAGMENT,
                                   "IPv6 fragment, offset 0, more follow")
    result = decode(229, ipv6_fragment("0010"))  # offset 16, last
    assert result == DecodeProblem(PacketAnomaly.IP_FRAGMENT, "IPv6 fragment, offset 16")


def test_ipv6_atomic_fragment_is_whole() -> None:
    result = decode(229, ipv6_fragment("0000"))  # offset 0, no more: RFC 6946
    assert isinstance(result, Decoded) and result.payload == H("cafef00d")


def test_ipv6_extension_chain_is_capped() -> None:
    hops = H("00" "00" "000000000000") * 17  # 17 hop-by-hop headers, each says "next: hbh"
    packet = H("60000000") + len(hops).to_bytes(2, "big") + H("00" "40") + bytes(32) + hops
    result = decode(229, packet)
    assert isinstance(result, DecodeProblem)
    assert result.anomaly is PacketAnomaly.IPV6_TOO_MANY_EXTENSIONS


@pytest.mark.parametrize(("packet", "anomaly"), [
    (H("35") + IPV4_TCP[1:], PacketAnomaly.BAD_IP_VERSION),  # version 3
    (H("44") + IPV4_TCP[1:], PacketAnomaly.BAD_IP_HEADER_LENGTH),  # IHL 4
    (IPV4_TCP[:2] + H("0010") + IPV4_TCP[4:], PacketAnomaly.BAD_IP_TOTAL_LENGTH),  # 16 < 20
    (IPV4_TCP[:2] + H("0050") + IPV4_TCP[4:], PacketAnomaly.TRUNCATED_IP),  # 80 > 44 captured
    (IPV4_TCP[:2] + H("0020") + IPV4_TCP[4:], PacketAnomaly.TRUNCATED_TCP),  # 12 bytes of TCP
    (IPV4_TCP[:32] + H("40") + IPV4_TCP[33:], PacketAnomaly.BAD_TCP_OFFSET),  # offset 4
    (IPV4_TCP[:32] + H("f0") + IPV4_TCP[33:], PacketAnomaly.BAD_TCP_OFFSET),  # 60 > 24
    (IPV4_UDP[:2] + H("001a") + IPV4_UDP[4:], PacketAnomaly.TRUNCATED_UDP),  # 6 bytes of UDP
    (IPV4_UDP[:24] + H("0007") + IPV4_UDP[26:], PacketAnomaly.BAD_UDP_LENGTH),  # below 8
    (IPV4_UDP[:24] + H("0100") + IPV4_UDP[26:], PacketAnomaly.BAD_UDP_LENGTH),  # past the IP
    (IPV4_TCP[:9] + H("01") + IPV4_TCP[10:], PacketAnomaly.NOT_TCP_UDP),  # ICMP
    (IPV6_TCP[:6] + H("3a") + IPV6_TCP[7:], PacketAnomaly.NOT_TCP_UDP),  # ICMPv6
    (IPV6_TCP[:4] + H("0040") + IPV6_TCP[6:], PacketAnomaly.TRUNCATED_IP),  # 64 > 24
])
def test_malformed_and_foreign_packets(packet: bytes, anomaly: PacketAnomaly) -> None:
    linktype = 229 if packet[0] >> 4 == 6 else 228
    result = decode(linktype, packet)
    assert isinstance(result, DecodeProblem), result
    assert result.anomaly is anomaly, result


def test_not_ip_and_unsupported_linktype() -> None:
    arp = ETH_HDR + H("0806") + bytes(28)  # ethertype ARP, body not interpreted
    assert decode(1, arp) == DecodeProblem(PacketAnomaly.NOT_IP, "ethertype 0x0806")
    llc = ETH_HDR + H("0026") + bytes(38)  # 802.3 length field, LLC
    assert decode(1, llc) == DecodeProblem(PacketAnomaly.NOT_IP, "ethertype 0x0026")
    result = decode(105, bytes(40))  # 802.11
    assert result == DecodeProblem(PacketAnomaly.UNSUPPORTED_LINKTYPE, "link type 105")


def test_is_anomaly_marks_only_real_anomalies() -> None:
    not_ours = {PacketAnomaly.NOT_IP, PacketAnomaly.NOT_TCP_UDP}
    for member in PacketAnomaly:
        assert member.is_anomaly is (member not in not_ours)


VALID_FRAMES = [
    (1, ETH_HDR + H("0800") + IPV4_TCP),
    (1, ETH_HDR + H("88a8000a" "8100000b" "86dd") + IPV6_TCP),
    (0, H("02000000") + IPV4_UDP),
    (113, H("0000000100060102030405060000" "0800") + IPV4_TCP),
    (276, H("0800000000000002000104060102030405060000") + IPV4_UDP),
    (229, ipv6_fragment("0000")),
    (228, IPV4_TCP),
]


@pytest.mark.parametrize(("linktype", "frame"), VALID_FRAMES)
def test_every_truncation_is_a_problem_not_an_exception(linktype: int, frame: bytes) -> None:
    assert isinstance(decode(linktype, frame), Decoded)
    for cut in range(len(frame)):
        result = decode(linktype, frame[:cut])
        assert isinstance(result, DecodeProblem), (cut, result)
        assert result.anomaly.is_anomaly, (cut, result)


@settings(max_examples=2000, deadline=None)
@given(linktype=st.sampled_from([0, 1, 12, 14, 101, 108, 113, 228, 229, 276, 105, 65535]),
       frame=st.binary(max_size=120))
def test_any_bytes_never_raise(linktype: int, frame: bytes) -> None:
    result = decode(linktype, frame)
    assert type(result) in (Decoded, DecodeProblem)


@settings(max_examples=500, deadline=None)
@given(data=st.data())
def test_mutated_valid_frames_never_raise(data: st.DataObject) -> None:
    linktype, frame = data.draw(st.sampled_from(VALID_FRAMES))
    pos = data.draw(st.integers(0, len(frame) - 1))
    value = data.draw(st.integers(0, 255))
    mutated = frame[:pos] + bytes([value]) + frame[pos + 1:]
    assert type(decode(linktype, mutated)) in (Decoded, DecodeProblem)


def test_address_helpers() -> None:
    assert ip_to_str(H("c0a80001")) == "192.168.0.1"
    assert ip_to_str(H("20010db8000000000000000000000001")) == "2001:db8::1"
    assert ip_to_str(H("00000000000000000000ffffc0a80001")) == "::ffff:192.168.0.1"
    assert ip_to_str(bytes(16)) == "::"
    assert mac_to_str(H("0a0b0c0d0e0f")) == "0a:0b:0c:0d:0e:0f"


# -- tshark on the corpus ---------------------------------------------------------------

TSHARK_FIELDS = ["frame.protocols", "ip.src", "ipv6.src", "ip.dst", "ipv6.dst",
                 "tcp.srcport", "tcp.dstport", "tcp.len", "tcp.seq_raw", "tcp.ack_raw",
                 "tcp.flags", "udp.srcport", "udp.dstport", "udp.length"]


@pytest.mark.corpus
@pytest.mark.usefixtures("tshark")
@pytest.mark.parametrize("rel", [
    "nDPI/tests/cfgs/default/pcap/dnp3.pcap",  # pcapng, Ethernet
    "ICS-Security-Tools/pcaps/ModbusTCP/mb2.pcap",  # ARP, LLDP, ICMP, UDP
    "ICS-Security-Tools/pcaps/dnp3/opendnp3-3/conformance/8.11.2.5/dump.pcap",  # NULL
    "suricata-verify/tests/dnp3/dnp3-flood/input.pcap",  # raw IPv4
    "suricata-verify/tests/modbus/modbus.pcap",
])
def test_decode_matches_tshark(rel: str) -> None:
    path = corpus_path(rel)
    cmd = ["tshark", "-r", str(path), "-T", "fields", "-E", "occurrence=f"]
    for name in TSHARK_FIELDS:
        cmd += ["-e", name]
    rows = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()
    parser = CaptureFileParser()
    parser.receive(path.read_bytes())
    records = parser.records_tuples()
    parser.close()
    assert len(rows) == len(records)
    decoded = 0
    for (_, linktype, frame, number), row in zip(records, rows, strict=True):
        v = dict(zip(TSHARK_FIELDS, row.split("\t"), strict=True))
        src, dst = v["ip.src"] or v["ipv6.src"], v["ip.dst"] or v["ipv6.dst"]
        expected: tuple[object, ...] | None
        if ":icmp" in v["frame.protocols"]:  # tshark decodes the quoted packet; we do not
            expected = None
        elif v["tcp.srcport"]:
            expected = (6, src, dst, int(v["tcp.srcport"]), int(v["tcp.dstport"]),
                        int(v["tcp.len"]), int(v["tcp.seq_raw"]), int(v["tcp.ack_raw"]),
                        int(v["tcp.flags"], 16) & 0xFF)
        elif v["udp.srcport"]:
            expected = (17, src, dst, int(v["udp.srcport"]), int(v["udp.dstport"]),
                        int(v["udp.length"]) - 8, 0, 0, 0)
        else:
            expected = None
        result = decode(linktype, frame)
        got: tuple[object, ...] | None
        if isinstance(result, Decoded):
            decoded += 1
            got = (result.proto, ip_to_str(result.src), ip_to_str(result.dst), result.sport,
                   result.dport, len(result.payload), result.seq, result.ack, result.flags)
        else:
            assert not result.anomaly.is_anomaly, (number, result)
            got = None
        assert got == expected, number
    assert decoded > 0
