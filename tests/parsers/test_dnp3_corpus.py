"""DNP3Parser against public captures, with tshark as the field-level oracle.

Payloads are pulled per packet with tshark (duplicate TCP segments dropped by
sequence number) and fed to one parser per conversation. For clean captures the
flattened sequence of function codes, IINs and object headers must equal
tshark's; for malformed captures the right anomalies must come out and nothing
may raise.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

import pytest

from mamori.parsers.dnp3 import DNP3AnomalyEvent, DNP3Application, DNP3Parser
from mamori.parsers.stream import Direction, FlowId, Transport
from tests.conftest import corpus_path

PORTS = {20000, 20001, 20030, 20031, 20032, 20033, 20034}

pytestmark = [
    pytest.mark.corpus,
    pytest.mark.tshark,
    pytest.mark.usefixtures("tshark"),
]

CLEAN = [
    "zeek/Traces/dnp3/dnp3_read.pcap",
    "zeek/Traces/dnp3/dnp3_read_p20001.pcap",
    "zeek/Traces/dnp3/dnp3_write.pcap",
    "zeek/Traces/dnp3/dnp3_select_operate.pcap",
    "zeek/Traces/dnp3/dnp3_file_read.pcap",
    "zeek/Traces/dnp3/dnp3_file_write.pcap",
    "zeek/Traces/dnp3/dnp3_file_del.pcap",
    "zeek/Traces/dnp3/dnp3_del_measure.pcap",
    "zeek/Traces/dnp3/dnp3_en_spon.pcap",
    "zeek/Traces/dnp3/dnp3_rec_time.pcap",
    "zeek/Traces/dnp3/dnp3_link_only.pcap",
    "zeek/Traces/dnp3/dnp3_udp_read.pcap",
    "zeek/Traces/dnp3/dnp3_udp_write.pcap",
    "zeek/Traces/dnp3/dnp3_udp_select_operate.pcap",
    "zeek/Traces/dnp3/dnp3_udp_en_spon.pcap",
    "suricata-verify/tests/dnp3/dnp3-eve/input.pcap",
    "suricata-verify/tests/dnp3/dnp3-flood/input.pcap",
    "suricata-verify/tests/dnp3/dnp3-toclient-start/dnp3_toclient_start.pcap",
    "ICS-Security-Tools/pcaps/dnp3/select_operate_and_responses.pcap",
    "ICS-Security-Tools/pcaps/dnp3/unsolcited_response_and_confirm.pcap",
    "ICS-Security-Tools/pcaps/dnp3/write_iin_and_response.pcap",
    "ICS-Security-Tools/pcaps/dnp3/cold_restart_and_response.pcap",
    "ICS-Security-Tools/pcaps/dnp3/direct_operate_analog_output.pcap",
    "ICS-Security-Tools/pcaps/dnp3/opendnp3-3/conformance/8.6.5.4/dump.pcap",
    "generated/dnp3_interop_dnp3outstation.pcap",
]


def payloads(path: Path) -> list[tuple[float, str, int, int, int, bytes]]:
    rows = []
    for proto in ("tcp", "udp"):
        seq = ["-e", "tcp.seq"] if proto == "tcp" else ["-e", "frame.number"]
        cmd = ["tshark", "-r", str(path), "-Y", f"{proto}.payload", "-T", "fields"]
        cmd += ["-e", "frame.time_epoch", "-e", f"{proto}.srcport", "-e", f"{proto}.dstport"]
        cmd += [*seq, "-e", f"{proto}.payload"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            ts, sport, dport, number, payload = line.split("\t")
            if int(sport) in PORTS or int(dport) in PORTS:
                rows.append(
                    (float(ts), proto, int(sport), int(dport), int(number), bytes.fromhex(payload))
                )
    rows.sort(key=lambda row: row[0])
    return rows


def run(path: Path) -> list[object]:
    """Every event of the capture, one parser per conversation, eof at the end."""
    parsers: dict[tuple[str, int, int], DNP3Parser] = {}
    next_seq: dict[tuple[str, int, int], int] = {}
    events: list[object] = []
    for ts, proto, sport, dport, number, data in payloads(path):
        if dport in PORTS and not (sport in PORTS and (proto, dport, sport) in parsers):
            key, direction = (proto, sport, dport), Direction.TO_SERVER
        else:
            key, direction = (proto, dport, sport), Direction.TO_CLIENT
        if proto == "tcp":  # drop retransmitted / duplicated segments
            stream = (proto, sport, dport)
            if number < next_seq.get(stream, 0):
                continue
            next_seq[stream] = number + len(data)
        parser = parsers.get(key)
        if parser is None:
            transport = Transport.TCP if proto == "tcp" else Transport.UDP
            parser = parsers[key] = DNP3Parser(FlowId(transport, "c", key[1], "s", key[2]))
        events += parser.receive(direction, data, ts)
    for parser in parsers.values():
        for direction in Direction:
            events += parser.eof(direction, 0.0)
    return events


def tshark_view(path: Path) -> tuple[list[int], list[int], list[tuple[int, int, int]]]:
    cmd = ["tshark", "-r", str(path)]
    for port in PORTS:
        cmd += ["-d", f"tcp.port=={port},dnp3", "-d", f"udp.port=={port},dnp3"]
    cmd += ["-T", "fields", "-E", "occurrence=a", "-E", "aggregator=,"]
    for field in ("dnp3.al.func", "dnp3.al.iin", "dnp3.al.obj", "dnp3.al.objq.prefix"):
        cmd += ["-e", field]
    cmd += ["-e", "dnp3.al.objq.range"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    funcs: list[int] = []
    iins: list[int] = []
    objects: list[tuple[int, int, int]] = []
    for line in out.splitlines():
        fc, iin, obj, prefix, rng = line.split("\t")
        funcs += [int(x) for x in fc.split(",") if x]
        iins += [int(x, 16) for x in iin.split(",") if x]
        if obj:
            objects += zip(
                [int(x, 16) for x in obj.split(",")],
                [int(x) for x in prefix.split(",")],
                [int(x) for x in rng.split(",")],
                strict=True,
            )
    return funcs, iins, objects


def mine_view(events: list[object]) -> tuple[list[int], list[int], list[tuple[int, int, int]]]:
    apps = [e for e in events if isinstance(e, DNP3Application)]
    return (
        [e.fc for e in apps],
        [e.iin for e in apps if e.iin is not None],
        [
            (o.group << 8 | o.variation, (o.qualifier >> 4) & 7, o.qualifier & 0x0F)
            for e in apps
            for o in e.objects
        ],
    )


def kinds(events: list[object]) -> Counter[str]:
    return Counter(e.kind.name for e in events if isinstance(e, DNP3AnomalyEvent))


@pytest.mark.parametrize("name", CLEAN)
def test_clean_capture_matches_tshark(name: str) -> None:
    path = corpus_path(name)
    events = run(path)
    assert mine_view(events) == tshark_view(path)
    assert not kinds(events) - Counter({"UNEXPECTED_DIRECTION": 99})


def test_yadnp3_matches_tshark_up_to_its_g50v4_gap() -> None:
    path = corpus_path("generated/yadnp3.pcap")
    events = run(path)
    funcs, iins, objects = mine_view(events)
    shark_funcs, shark_iins, shark_objects = tshark_view(path)
    assert (funcs, iins) == (shark_funcs, shark_iins)
    # tshark 4.0 stops at g50v4 (0x3204); we go on to g110v1 after it
    assert [o for o in objects if o[0] != 0x6E01] == shark_objects
    assert not kinds(events)
    latencies = [e.latency for e in events if isinstance(e, DNP3Application) and e.latency]
    assert latencies and all(0 <= x < 5 for x in latencies)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ICS-Security-Tools/pcaps/openics/DNP3-RequestLinkStatus.pcap", {"BAD_HEADER_CRC"}),
        ("ICS-Security-Tools/pcaps/openics/DNP3-Read.pcap", {"NON_DNP3_DATA"}),
        (
            "ICS-Security-Tools/pcaps/dnp3/direct_operate_crob_malform_but_good_crc.pcap",
            {"TRUNCATED_FRAGMENT"},
        ),
        (
            "ICS-Security-Tools/pcaps/openics/DNP3-Malformed.pcap",
            {"TRUNCATED_FRAGMENT", "INVALID_RANGE", "RESERVED_QUALIFIER", "UNKNOWN_OBJECT"},
        ),
        (
            "ICS-Security-Tools/pcaps/dnp3/opendnp3-3/conformance/6.6.2.4/dump.pcap",
            {"BAD_HEADER_CRC"},
        ),
        (
            "suricata-verify/tests/dnp3/dnp3-too-long-reassembly-request/input.pcap",
            {"REASSEMBLY_TOO_LONG"},
        ),
        (
            "suricata-verify/tests/dnp3/dnp3-too-long-reassembly-response/input.pcap",
            {"REASSEMBLY_TOO_LONG"},
        ),
        ("zeek/Traces/dnp3/dnp3.pcap", {"UNKNOWN_OBJECT", "RESERVED_QUALIFIER"}),
        ("zeek/Traces/dnp3/dnp3-flowbuffer-overflow-assert.pcap", set()),
        ("arkime/tests/pcap/dnp3_synthetic.pcap", {"TOO_MANY_POINTS"}),
        ("nDPI/tests/cfgs/default/pcap/dnp3.pcap", {"UNKNOWN_OBJECT"}),
        ("generated/dnp3_interop_nfmmaster.pcap", {"TRUNCATED_FRAGMENT"}),
    ],
)
def test_malformed_capture_anomalies(name: str, expected: set[str]) -> None:
    path = corpus_path(name)
    found = kinds(run(path))
    assert expected <= set(found), found


def test_flood_capture_is_flooded_with_a_small_table() -> None:
    path = corpus_path("suricata-verify/tests/dnp3/dnp3-flood/input.pcap")
    # 33 unanswered SELECTs; keys are (master, outstation, 4-bit seq), so 16 at most per pair
    parser = DNP3Parser(FlowId(Transport.TCP, "c", 1, "s", 20000), max_outstanding=8)
    events: list[object] = []
    for ts, _proto, _sport, dport, _n, data in payloads(path):
        direction = Direction.TO_SERVER if dport in PORTS else Direction.TO_CLIENT
        events += parser.receive(direction, data, ts)
    assert kinds(events) == Counter({"FLOODED": 1})
