"""DNP3Parser on hand-built vectors: every byte commented, CRCs included."""

from __future__ import annotations

import pytest

from mamori.parsers.dnp3 import (
    AnalogOutput,
    ClassData,
    ControlRelayOutput,
    DeviceAttribute,
    DNP3Anomaly,
    DNP3AnomalyEvent,
    DNP3Application,
    DNP3LinkEvent,
    DNP3Parser,
    DNP3Request,
    DNP3Response,
    DNP3Unsolicited,
    FileObject,
    IinWrite,
    TimeValue,
    event_fields,
)
from mamori.parsers.dnp3.crc import crc_bytes, dnp3_crc
from mamori.parsers.dnp3.objects import BIT1, BIT2, FREE, OBJECT_SPECS, lookup
from mamori.parsers.dnp3.transport import Problem, TransportReassembler
from mamori.parsers.stream import Direction, FlowId, Transport
from tests.dnp3link import link_frame as frame

TCP = FlowId(Transport.TCP, "10.0.0.1", 40000, "10.0.0.2", 20000)
UDP = FlowId(Transport.UDP, "10.0.0.1", 40000, "10.0.0.2", 20000)
UP = Direction.TO_SERVER
DOWN = Direction.TO_CLIENT

# Link-status request from master 1 to outstation 4: the well-known vector.
LINK_STATUS_REQ = bytes(
    [
        0x05, 0x64,  # start bytes
        0x05,        # LEN: control + addresses only
        0xC9,        # DIR=1 PRM=1 FCB=0 FCV=0, function 9 REQUEST_LINK_STATUS
        0x04, 0x00,  # destination 4
        0x01, 0x00,  # source 1
        0x53, 0x3B,  # header CRC
    ]
)  # fmt: skip

# Integrity poll: READ class 0, master 1 -> outstation 4.
READ_CLASS0 = bytes(
    [
        0x05, 0x64,  # start bytes
        0x0B,        # LEN = 5 + 6 bytes of user data
        0xC4,        # DIR=1 PRM=1, function 4 UNCONFIRMED_USER_DATA
        0x04, 0x00,  # destination 4
        0x01, 0x00,  # source 1
        0x01, 0x30,  # header CRC
        0xC0,        # transport: FIN FIR seq 0
        0xC0,        # application control: FIR FIN seq 0
        0x01,        # FC 1 READ
        0x3C, 0x01,  # group 60 variation 1 (class 0)
        0x06,        # qualifier: no prefix, all objects
        0xFF, 0x50,  # block CRC
    ]
)  # fmt: skip

# Its response: two binary inputs with flags, IIN1.7 device restart set.
RESPONSE_G1V2 = bytes(
    [
        0x05, 0x64,  # start bytes
        0x11,        # LEN = 5 + 12
        0x44,        # DIR=0 PRM=1, function 4
        0x01, 0x00,  # destination 1
        0x04, 0x00,  # source 4
        0x98, 0x17,  # header CRC
        0xC0,        # transport: FIN FIR seq 0
        0xC0,        # application control: FIR FIN seq 0
        0x81,        # FC 129 RESPONSE
        0x80, 0x00,  # IIN1 = 0x80 (device restart), IIN2 = 0
        0x01, 0x02,  # group 1 variation 2 (binary input with flags)
        0x00,        # qualifier 0x00: 1-byte start/stop
        0x00, 0x01,  # start 0, stop 1
        0x81, 0x01,  # two flag bytes
        0x97, 0x47,  # block CRC
    ]
)  # fmt: skip


def master(app: bytes, transport: int = 0xC0, dst: int = 4, src: int = 1) -> bytes:
    return frame(0xC4, dst, src, bytes([transport]) + app)


def outstation(app: bytes, transport: int = 0xC0, dst: int = 1, src: int = 4) -> bytes:
    return frame(0x44, dst, src, bytes([transport]) + app)


def feed(parser: DNP3Parser, direction: Direction, data: bytes, ts: float = 1.0) -> list[object]:
    return list(parser.receive(direction, data, ts))


def anomalies(events: list[object]) -> list[DNP3Anomaly]:
    return [e.kind for e in events if isinstance(e, DNP3AnomalyEvent)]


# ---------------------------------------------------------------- CRC


def test_crc_known_vectors() -> None:
    # 05 64 05 C0 01 00 00 04 | E9 21: reset link states (a widely quoted vector)
    assert crc_bytes(bytes.fromhex("056405C001000004")) == bytes.fromhex("E921")
    assert dnp3_crc(bytes.fromhex("056405C001000004")) == 0x21E9
    # READ class 0 user data, as captured in the opendnp3 conformance traces
    assert crc_bytes(bytes.fromhex("C0C0013C0106")) == bytes.fromhex("FF50")
    assert crc_bytes(LINK_STATUS_REQ[:8]) == LINK_STATUS_REQ[8:]


def test_crc_odd_lengths_match_bytewise() -> None:
    from mamori.parsers.dnp3.crc import CRC_TABLE

    data = bytes(range(37))
    for end in range(len(data) + 1):
        crc = 0
        for byte in data[:end]:
            crc = (crc >> 8) ^ CRC_TABLE[(crc ^ byte) & 0xFF]
        assert dnp3_crc(data, 0, end) == crc ^ 0xFFFF


def test_vectors_have_the_crcs_the_builder_computes() -> None:
    assert frame(0xC4, 4, 1, bytes.fromhex("C0C0013C0106")) == READ_CLASS0
    assert frame(0x44, 1, 4, RESPONSE_G1V2[10:22]) == RESPONSE_G1V2


# ---------------------------------------------------------------- link


def test_link_only_frame() -> None:
    (event,) = feed(DNP3Parser(TCP), UP, LINK_STATUS_REQ)
    assert isinstance(event, DNP3LinkEvent)
    assert (event.link_src, event.link_dst, event.function) == (1, 4, 9)
    assert event.function_name == "REQUEST_LINK_STATUS"
    assert event.prm and event.dir
    fields = event_fields(event)
    assert fields["type"] == "link" and fields["fc"] == 9 and fields["transport"] == "tcp"


def test_secondary_link_status() -> None:
    data = frame(0x0B, 1, 4, b"")  # DIR=0 PRM=0 function 11 LINK_STATUS
    (event,) = feed(DNP3Parser(TCP), DOWN, data)
    assert isinstance(event, DNP3LinkEvent)
    assert event.function_name == "LINK_STATUS" and not event.prm


def test_bad_header_crc_then_resync() -> None:
    bad = bytearray(READ_CLASS0)
    bad[8] ^= 0xFF
    events = feed(DNP3Parser(TCP), UP, bytes(bad) + READ_CLASS0)
    assert anomalies(events) == [DNP3Anomaly.BAD_HEADER_CRC]
    assert [type(e) for e in events if not isinstance(e, DNP3AnomalyEvent)] == [DNP3Request]


def test_bad_block_crc_drops_frame_keeps_sync() -> None:
    bad = bytearray(READ_CLASS0)
    bad[-1] ^= 0x01
    events = feed(DNP3Parser(TCP), UP, bytes(bad) + READ_CLASS0)
    assert anomalies(events) == [DNP3Anomaly.BAD_BLOCK_CRC]
    assert isinstance(events[0], DNP3AnomalyEvent)
    assert events[0].link_src == 1
    assert isinstance(events[1], DNP3Request)


def test_length_too_small() -> None:
    header = bytes([0x05, 0x64, 0x04, 0xC9, 4, 0, 1, 0])
    events = feed(DNP3Parser(TCP), UP, header + crc_bytes(header) + READ_CLASS0)
    assert anomalies(events) == [DNP3Anomaly.LENGTH_TOO_SMALL]
    assert isinstance(events[-1], DNP3Request)


def test_garbage_reported_once_until_resync() -> None:
    parser = DNP3Parser(TCP)
    events = feed(parser, UP, b"GET / HTTP/1.1\r\n") + feed(parser, UP, b"Host: x\r\n")
    assert anomalies(events) == [DNP3Anomaly.NON_DNP3_DATA]
    events = feed(parser, UP, READ_CLASS0 + b"junk")
    assert isinstance(events[0], DNP3Request)
    assert anomalies(events) == [DNP3Anomaly.NON_DNP3_DATA]


def test_unexpected_direction_reported_once() -> None:
    parser = DNP3Parser(TCP)
    events = feed(parser, DOWN, READ_CLASS0 + READ_CLASS0)  # master frames towards the client
    assert anomalies(events) == [DNP3Anomaly.UNEXPECTED_DIRECTION]
    assert sum(isinstance(e, DNP3Request) for e in events) == 2


def test_reserved_link_function() -> None:
    events = feed(DNP3Parser(TCP), UP, frame(0xC5, 4, 1, bytes.fromhex("C0C0013C0106")))
    assert anomalies(events) == [DNP3Anomaly.UNKNOWN_LINK_FUNCTION]
    assert isinstance(events[1], DNP3LinkEvent) and events[1].function_name == "PRI_UNKNOWN_5"


# ---------------------------------------------------------------- chunking


STREAM = READ_CLASS0 + LINK_STATUS_REQ + READ_CLASS0


def summary(events: list[object]) -> list[tuple[str, int | None]]:
    out: list[tuple[str, int | None]] = []
    for e in events:
        if isinstance(e, DNP3Application):
            out.append((type(e).__name__, e.fc))
        elif isinstance(e, DNP3LinkEvent):
            out.append(("link", e.function))
        elif isinstance(e, DNP3AnomalyEvent):
            out.append((e.kind.name, e.fc))
    return out


def test_whole_byte_by_byte_and_every_split_agree() -> None:
    whole = summary(feed(DNP3Parser(TCP), UP, STREAM))
    assert whole == [("DNP3Request", 1), ("link", 9), ("DNP3Request", 1)]
    parser = DNP3Parser(TCP)
    bytewise: list[object] = []
    for i in range(len(STREAM)):
        bytewise += feed(parser, UP, STREAM[i : i + 1])
    assert summary(bytewise) == whole
    for cut in range(1, len(STREAM)):
        parser = DNP3Parser(TCP)
        events = feed(parser, UP, STREAM[:cut]) + feed(parser, UP, STREAM[cut:])
        assert summary(events) == whole, cut


def test_udp_datagram_with_two_frames_and_a_cut_one() -> None:
    parser = DNP3Parser(UDP)
    events = feed(parser, UP, READ_CLASS0 + LINK_STATUS_REQ + READ_CLASS0[:7])
    assert summary(events) == [("DNP3Request", 1), ("link", 9), ("TRUNCATED_FRAME", None)]
    assert isinstance(events[0], DNP3Request)
    assert event_fields(events[0])["transport"] == "udp"
    # the cut frame is not carried into the next datagram
    assert summary(feed(parser, UP, READ_CLASS0)) == [("DNP3Request", 1)]


def test_eof_reports_partial_frame_and_fragment() -> None:
    parser = DNP3Parser(TCP)
    feed(parser, UP, master(bytes.fromhex("C0013C0106"), transport=0x40))  # FIR, no FIN
    feed(parser, UP, READ_CLASS0[:12])
    events: list[object] = list(parser.eof(UP, 2.0))
    kinds = anomalies(events)
    assert kinds == [DNP3Anomaly.TRUNCATED_FRAME, DNP3Anomaly.UNFINISHED_FRAGMENT]
    assert len(events) == len(kinds)  # nothing but anomalies


def test_gap_discards_partial_state() -> None:
    parser = DNP3Parser(TCP)
    feed(parser, UP, READ_CLASS0[:12])
    (gap,) = parser.gap(UP, 100, 2.0)
    assert isinstance(gap, DNP3AnomalyEvent) and gap.kind is DNP3Anomaly.GAP
    # mid-frame pickup after a gap is expected: no NON_DNP3_DATA, just the next frame
    events = feed(parser, UP, READ_CLASS0[5:] + READ_CLASS0)
    assert summary(events) == [("DNP3Request", 1)]


# ---------------------------------------------------------------- transport


def test_multi_segment_fragment() -> None:
    app = bytes([0xC0, 0x02]) + bytes([0x32, 0x01, 0x07, 0x01]) + bytes(range(6))  # write g50v1
    parser = DNP3Parser(TCP)
    first = master(app[:5], transport=0x40 | 5)  # FIR, seq 5
    second = master(app[5:], transport=0x80 | 6)  # FIN, seq 6
    assert feed(parser, UP, first) == []
    (event,) = feed(parser, UP, second)
    assert isinstance(event, DNP3Request) and event.fc == 2
    (header,) = event.objects
    assert header.details == (TimeValue(int.from_bytes(bytes(range(6)), "little")),)


def test_transport_errors() -> None:
    parser = DNP3Parser(TCP)
    events = feed(parser, UP, master(bytes.fromhex("C0013C0106"), transport=0x81))
    assert anomalies(events) == [DNP3Anomaly.FIRST_SEGMENT_MISSING]
    feed(parser, UP, master(b"\xc0\x01", transport=0x40 | 1))
    events = feed(parser, UP, master(b"\x3c\x01\x06", transport=0x80 | 3))
    assert anomalies(events) == [DNP3Anomaly.TRANSPORT_SEQUENCE_ERROR]


def test_default_cap_is_one_transport_sequence_cycle() -> None:
    """64 segments of 249 bytes (seq 0-63) pass; a 65th, reusing seq 0, is too long."""
    parser = DNP3Parser(TCP)
    app = bytes([0xC0, 0x02]) + bytes(64 * 249)  # 15938 bytes: 65 segments
    events = feed(parser, UP, b"".join(segments(app)))
    assert anomalies(events) == [DNP3Anomaly.REASSEMBLY_TOO_LONG]
    app = bytes([0xC0, 0x02]) + bytes(64 * 249 - 2)  # 64 segments: reassembled
    events = feed(parser, UP, b"".join(segments(app)))
    assert DNP3Anomaly.REASSEMBLY_TOO_LONG not in anomalies(events)
    assert [e.fc for e in events if isinstance(e, DNP3Request)] == [2]


def test_reassembly_too_long() -> None:
    parser = DNP3Parser(TCP, max_fragment=300)
    events: list[object] = []
    for seq in range(3):
        tpdu = (0x40 if seq == 0 else 0) | (0x80 if seq == 2 else 0) | seq
        events += feed(parser, UP, master(bytes(200), transport=tpdu))
    assert anomalies(events) == [DNP3Anomaly.REASSEMBLY_TOO_LONG]


def test_reassembly_table_cap() -> None:
    parser = DNP3Parser(TCP, max_pending=2)
    events: list[object] = []
    for src in range(3):
        events += feed(parser, UP, master(b"\xc0\x01", transport=0x40, src=src))
    assert anomalies(events) == [DNP3Anomaly.FLOODED]


# ---------------------------------------------------------------- application


def test_request_response_pairing_and_json() -> None:
    parser = DNP3Parser(TCP)
    (request,) = feed(parser, UP, READ_CLASS0, ts=10.0)
    assert isinstance(request, DNP3Request)
    assert (request.seq, request.fc, request.fc_name, request.iin) == (0, 1, "READ", None)
    (obj,) = request.objects
    assert (obj.group, obj.variation, obj.qualifier, obj.count) == (60, 1, 6, None)
    assert obj.details == (ClassData(0),)
    (response,) = feed(parser, DOWN, RESPONSE_G1V2, ts=10.25)
    assert isinstance(response, DNP3Response)
    assert response.iin == 0x8000 and response.paired_fc == 1
    assert response.latency == pytest.approx(0.25)
    fields = event_fields(response)
    assert fields == {
        "ts": 10.25,
        "proto": "dnp3",
        "type": "response",
        "src": "10.0.0.2",
        "sport": 20000,
        "dst": "10.0.0.1",
        "dport": 40000,
        "transport": "tcp",
        "link_src": 4,
        "link_dst": 1,
        "fc": 129,
        "fc_name": "RESPONSE",
        "iin": 0x8000,
        "objects": [
            {"group": 1, "variation": 2, "qualifier": 0, "start": 0, "stop": 1, "count": 2}
        ],
        "anomaly": None,
        "detail": "",
        "latency": pytest.approx(0.25),
    }


def test_unsolicited_and_confirm() -> None:
    parser = DNP3Parser(TCP)
    # AC: FIR FIN CON UNS seq 3; FC 130; IIN 0x0000; no objects
    (uns,) = feed(parser, DOWN, outstation(bytes([0xF3, 0x82, 0x00, 0x00])), ts=1.0)
    assert isinstance(uns, DNP3Unsolicited) and event_fields(uns)["type"] == "unsolicited"
    # CONFIRM: AC FIR FIN UNS seq 3, FC 0
    (confirm,) = feed(parser, UP, master(bytes([0xD3, 0x00])), ts=1.5)
    assert isinstance(confirm, DNP3Request)
    assert confirm.paired_fc == 130 and confirm.latency == pytest.approx(0.5)


def test_outstanding_flood() -> None:
    parser = DNP3Parser(TCP, max_outstanding=4)
    events: list[object] = []
    for seq in range(6):
        events += feed(parser, UP, master(bytes([0xC0 | seq, 0x01, 0x3C, 0x01, 0x06])))
    assert anomalies(events) == [DNP3Anomaly.FLOODED]


def test_both_pairing_tables_hold_their_cap_far_past_it() -> None:
    """100 requests and 100 confirmable responses, 25 times a cap of 4: each table stays
    at the cap (the oldest entries go) and FLOODED is reported once."""
    parser = DNP3Parser(TCP, max_outstanding=4)
    events: list[object] = []
    for n in range(100):
        src = 10 + n  # a new master link address each time: no key repeats
        events += feed(parser, UP, master(bytes([0xC0 | n % 16, 0x01, 0x3C, 0x01, 0x06]),
                                          src=src))
        events += feed(parser, DOWN, outstation(bytes([0xE0 | n % 16, 0x81, 0x00, 0x00]),
                                                dst=src + 1000))
    assert anomalies(events) == [DNP3Anomaly.FLOODED]
    assert len(parser._outstanding) == 4 and len(parser._confirms) == 4


def test_crob_select() -> None:
    app = bytes(
        [
            0xC1, 0x03,              # AC FIR FIN seq 1, FC 3 SELECT
            0x0C, 0x01, 0x28,        # g12v1 CROB, qualifier 0x28: 2-byte index, 2-byte count
            0x01, 0x00,              # count 1
            0x07, 0x00,              # point index 7
            0x41,                    # code: TCC CLOSE (0x40), op PULSE_ON (1)
            0x01,                    # count 1
            0x64, 0x00, 0x00, 0x00,  # on time 100 ms
            0x2C, 0x01, 0x00, 0x00,  # off time 300 ms
            0x00,                    # status
        ]
    )  # fmt: skip
    (event,) = feed(DNP3Parser(TCP), UP, master(app))
    assert isinstance(event, DNP3Request)
    (header,) = event.objects
    assert (header.count, header.prefix_size) == (1, 2)
    assert header.details == (
        ControlRelayOutput(7, 0x41, "PULSE_ON", "CLOSE", False, False, 1, 100, 300, 0),
    )


def test_analog_output_direct_operate() -> None:
    app = bytes(
        [
            0xC2, 0x05,              # AC seq 2, FC 5 DIRECT_OPERATE
            0x29, 0x03, 0x17,        # g41v3 float, qualifier 0x17: 1-byte index, 1-byte count
            0x01,                    # count 1
            0x02,                    # index 2
            0x00, 0x00, 0x20, 0x41,  # 10.0 (float32 LE)
            0x00,                    # status
        ]
    )  # fmt: skip
    (event,) = feed(DNP3Parser(TCP), UP, master(app))
    assert isinstance(event, DNP3Application)
    assert event.objects[0].details == (AnalogOutput(2, 10.0, 0),)


def test_clear_restart_iin_write() -> None:
    app = bytes([0xC0, 0x02, 0x50, 0x01, 0x00, 0x07, 0x07, 0x00])  # WRITE g80v1 [7..7] = 0
    (event,) = feed(DNP3Parser(TCP), UP, master(app))
    assert isinstance(event, DNP3Application)
    assert event.objects[0].details == (IinWrite(7, False),)


def test_file_open() -> None:
    name = b"cfg.xml"
    body = (
        (26).to_bytes(2, "little")  # file name offset
        + len(name).to_bytes(2, "little")  # file name size
        + bytes(6)  # time of creation
        + (0x1FF).to_bytes(2, "little")  # permissions
        + bytes(4)  # authentication key
        + (0).to_bytes(4, "little")  # file size
        + (2).to_bytes(2, "little")  # operational mode 2 = WRITE
        + (1024).to_bytes(2, "little")  # maximum block size
        + (9).to_bytes(2, "little")  # request id
        + name
    )
    app = bytes([0xC4, 0x19, 0x46, 0x03, 0x5B, 0x01]) + len(body).to_bytes(2, "little") + body
    (event,) = feed(DNP3Parser(TCP), UP, master(app))
    assert isinstance(event, DNP3Application)
    assert event.objects[0].details == (FileObject(3, "OPEN_WRITE", "cfg.xml", size=0),)


def test_device_attribute_response() -> None:
    app = bytes([0xC0, 0x81, 0x00, 0x00, 0x00, 0xFC, 0x07, 0x01, 0x01, 0x04]) + b"ACME"
    (event,) = feed(DNP3Parser(TCP), DOWN, outstation(app))  # g0v252 vendor name, VSTR "ACME"
    assert isinstance(event, DNP3Application)
    assert event.objects[0].details == (DeviceAttribute(252, 1, "ACME"),)


def test_unknown_object_keeps_earlier_headers() -> None:
    app = bytes([0xC0, 0x01, 0x3C, 0x02, 0x06, 0xFE, 0x01, 0x06, 0x3C, 0x03, 0x06])
    events = feed(DNP3Parser(TCP), UP, master(app))
    assert anomalies(events) == [DNP3Anomaly.UNKNOWN_OBJECT]
    request = events[0]
    assert isinstance(request, DNP3Request)
    assert [(o.group, o.variation) for o in request.objects] == [(60, 2), (254, 1)]
    assert isinstance(events[1], DNP3AnomalyEvent)
    assert events[1].fc == 1


# READ g30v1, qualifier 0x02 (4-byte start/stop), start 0, stop 0x1FFFF
READ_G30_131072_POINTS = bytes([0xC0, 0x01, 0x1E, 0x01, 0x02]) + bytes(4) + b"\xff\xff\x01\x00"


@pytest.mark.parametrize(
    ("app", "kind"),
    [
        (bytes([0xC0, 0x22]), DNP3Anomaly.UNKNOWN_FUNCTION_CODE),
        (bytes([0xC0, 0x01, 0x3C, 0x01, 0x0C]), DNP3Anomaly.RESERVED_QUALIFIER),
        (bytes([0xC0, 0x01, 0x01, 0x02, 0x00, 0x05, 0x01]), DNP3Anomaly.INVALID_RANGE),
        (bytes([0xC0, 0x02, 0x0C, 0x01, 0x17, 0x01, 0x00, 0x01]), DNP3Anomaly.TRUNCATED_FRAGMENT),
        (bytes([0xC0, 0x02, 0x46, 0x05, 0x07, 0x01]), DNP3Anomaly.QUALIFIER_MISMATCH),
        (READ_G30_131072_POINTS, DNP3Anomaly.TOO_MANY_POINTS),
        (bytes([0xC0]), DNP3Anomaly.TRUNCATED_FRAGMENT),
    ],
)  # fmt: skip
def test_application_anomalies(app: bytes, kind: DNP3Anomaly) -> None:
    assert anomalies(feed(DNP3Parser(TCP), UP, master(app))) == [kind]


def test_too_many_objects() -> None:
    app = bytes([0xC0, 0x01]) + bytes([0x3C, 0x02, 0x06]) * 5
    events = feed(DNP3Parser(TCP, max_objects=3), UP, master(app))
    assert anomalies(events) == [DNP3Anomaly.TOO_MANY_OBJECTS]
    assert isinstance(events[0], DNP3Application)
    assert len(events[0].objects) == 3


# ---------------------------------------------------------------- size table


def test_size_table_spot_checks() -> None:
    def size(group: int, variation: int) -> int:
        spec = lookup(group, variation)
        assert spec is not None
        return spec.size

    assert size(1, 1) == BIT1 and size(3, 1) == BIT2 and size(10, 1) == BIT1
    assert size(80, 1) == BIT1 and size(12, 1) == 11 and size(41, 1) == 5
    assert size(30, 5) == 5 and size(32, 8) == 15 and size(50, 4) == 11
    assert size(70, 3) == FREE and size(120, 1) == FREE and size(120, 3) == 6
    assert lookup(1, 0) is None and lookup(254, 1) is None
    assert len(OBJECT_SPECS) > 1200


# ---------------------------------------------------------------- corpus-found cases


def test_read_g0v0_is_an_unknown_object() -> None:
    """opendnp3 conformance 8.6.3.2: the outstation answers this READ with IIN2.1."""
    app = bytes(
        [
            0xC0,  # application control: FIR FIN, seq 0
            0x01,  # FC 1 READ
            0x00,  # group 0 (device attributes)
            0x00,  # variation 0: undefined for group 0 (variations are attribute numbers)
            0x06,  # qualifier: no prefix, range code 6 (all objects)
        ]
    )
    events = feed(DNP3Parser(TCP), UP, master(app))
    assert anomalies(events) == [DNP3Anomaly.UNKNOWN_OBJECT]
    request = events[0]
    assert isinstance(request, DNP3Request)
    assert [(o.group, o.variation, o.qualifier) for o in request.objects] == [(0, 0, 6)]


def segments(app: bytes, src: int = 1) -> list[bytes]:
    """``app`` cut into 249-byte transport segments, each in its own link frame."""
    out = []
    chunks = [app[i : i + 249] for i in range(0, len(app), 249)]
    for seq, chunk in enumerate(chunks):
        tpdu = (0x40 if seq == 0 else 0) | (0x80 if seq == len(chunks) - 1 else 0) | seq & 0x3F
        out.append(master(chunk, transport=tpdu, src=src))
    return out


# suricata-verify dnp3-max-points: one WRITE of 65535 binary inputs, an 8201-byte fragment
WRITE_G1V1_65535 = (
    bytes(
        [
            0xC0,  # application control: FIR FIN, seq 0
            0x02,  # FC 2 WRITE
            0x01,  # group 1 (binary input)
            0x01,  # variation 1 (packed bits)
            0x01,  # qualifier: no prefix, range code 1 (2-byte start and stop)
            0x00, 0x00,  # start 0
            0xFE, 0xFF,  # stop 65534: 65535 points
        ]
    )
    + bytes(8192)  # 65535 bits of point data, packed: ceil(65535 / 8) = 8192 bytes
)  # fmt: skip


def test_fragment_over_8k_is_reassembled() -> None:
    """IEEE 1815 lets a device raise its fragment size over the usual 2048 octets."""
    assert len(WRITE_G1V1_65535) == 8201
    events = feed(DNP3Parser(TCP), UP, b"".join(segments(WRITE_G1V1_65535)))
    assert anomalies(events) == []
    (request,) = events
    assert isinstance(request, DNP3Request)
    assert (request.fc, request.objects[0].start, request.objects[0].stop) == (2, 0, 65534)


def test_pending_bytes_budget_evicts_the_oldest() -> None:
    parser = DNP3Parser(TCP, max_fragment=1000, max_pending_bytes=1000)
    first = segments(bytes([0xC0, 0x02]) + bytes(700), src=1)
    second = segments(bytes([0xC0, 0x02]) + bytes(700), src=2)
    events = feed(parser, UP, first[0] + first[1] + b"".join(second))  # src 1 unfinished
    assert DNP3Anomaly.FLOODED in anomalies(events)
    assert [e.link_src for e in events if isinstance(e, DNP3Request)] == [2]


def test_transport_drop_direction_drops_only_that_direction() -> None:
    """Empty table: nothing, a fresh list each call (the early return must not hand out a
    shared one); with partial fragments both ways, only the named direction's go."""
    table = TransportReassembler(max_fragment=2048, max_pending=16)
    first = table.drop_direction(UP)
    assert first == []
    first.append((0, 0))
    assert table.drop_direction(UP) == []
    problems: list[Problem] = []
    up_key, down_key = UP << 32 | 1 << 16 | 4, DOWN << 32 | 4 << 16 | 1
    assert table.segment(up_key, bytes([0x40, 1, 2, 3]), problems) is None  # FIR, no FIN
    assert table.segment(down_key, bytes([0x40, 9, 9]), problems) is None
    assert problems == []
    assert table.drop_direction(UP) == [(up_key, 3)]
    assert table.pending_count == 1
    assert table.drop_direction(UP) == []
    assert table.drop_direction(DOWN) == [(down_key, 2)]
    assert table.pending_count == 0
