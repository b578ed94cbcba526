"""What the DNP3 parser emits: link events, application fragments, anomalies.

Every event is a frozen, slotted dataclass (built with ``fast_init``, as Modbus's
are) carrying the ``FlowId`` and the ``Direction`` the pipeline gave the parser.
Application fragments come as ``DNP3Request`` (from the master), ``DNP3Response``
(FC 129 and 131) and ``DNP3Unsolicited`` (FC 130); all three are
``DNP3Application`` and differ only in their class, so rules may test either the
base or the kind.

Point values never appear here except inside the decoded ``details`` of the
few object groups that matter for detection (controls, time, file transfer,
IIN writes, device attributes); those are local-only data.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from mamori.parsers.fastinit import fast_init
from mamori.parsers.stream import Direction, FlowId, Transport


class DNP3Anomaly(enum.Enum):
    """Malformed or suspicious input. The names are what JSON and rules carry."""

    BAD_HEADER_CRC = "link header CRC mismatch"
    BAD_BLOCK_CRC = "link user-data block CRC mismatch"
    LENGTH_TOO_SMALL = "link LEN below 5"
    NON_DNP3_DATA = "bytes that are not a DNP3 link frame"
    TRUNCATED_FRAME = "link frame cut short by end of datagram or stream"
    UNEXPECTED_DIRECTION = "link DIR bit disagrees with the transport direction"
    UNKNOWN_LINK_FUNCTION = "reserved link function code (any user data is ignored)"
    FIRST_SEGMENT_MISSING = "transport segment without FIR and no fragment in progress"
    TRANSPORT_SEQUENCE_ERROR = "transport sequence number out of order"
    REASSEMBLY_TOO_LONG = "reassembled fragment over the size cap"
    UNFINISHED_FRAGMENT = "transport reassembly pending at end of stream"
    UNKNOWN_FUNCTION_CODE = "application function code not defined"
    UNKNOWN_OBJECT = "object group/variation not defined"
    RESERVED_QUALIFIER = "reserved prefix or range code"
    QUALIFIER_MISMATCH = "qualifier cannot carry this object"
    INVALID_RANGE = "range stop below start"
    TRUNCATED_FRAGMENT = "application data ends inside a header or object"
    TOO_MANY_OBJECTS = "more object headers than the cap"
    TOO_MANY_POINTS = "more points in one object header than the cap"
    FLOODED = "outstanding request or reassembly table full"
    GAP = "bytes lost in the stream"


# ---------------------------------------------------------------- object details


@fast_init
@dataclass(frozen=True, slots=True)
class ControlRelayOutput:
    """g12v1/g12v2 control relay output block (CROB / pattern control block)."""

    index: int | None
    code: int
    op_type: str  # NUL, PULSE_ON, PULSE_OFF, LATCH_ON, LATCH_OFF, or UNDEFINED_n
    tcc: str  # NUL, CLOSE, TRIP, RESERVED
    clear: bool
    queue: bool
    count: int
    on_time_ms: int
    off_time_ms: int
    status: int


@fast_init
@dataclass(frozen=True, slots=True)
class AnalogOutput:
    """g41 analog output block: commanded value plus control status."""

    index: int | None
    value: float
    status: int


@fast_init
@dataclass(frozen=True, slots=True)
class TimeValue:
    """g50v1 (absolute), g50v2 (with interval), g50v3 (last recorded), g50v4 (indexed)."""

    ms_since_epoch: int
    interval: int | None = None
    units: int | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class ClassData:
    """g60v1..v4: class 0 (static) to class 3."""

    event_class: int


@fast_init
@dataclass(frozen=True, slots=True)
class FileObject:
    """g70 file-transfer object: what is done to which file."""

    variation: int
    operation: str  # AUTHENTICATE, OPEN_READ, OPEN_WRITE, OPEN_APPEND, STATUS, ...
    name: str | None = None
    handle: int | None = None
    size: int | None = None
    block: int | None = None
    status: int | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class IinWrite:
    """g80v1: one internal-indication bit written (index 7 = IIN1.7 device restart)."""

    index: int
    value: bool


@fast_init
@dataclass(frozen=True, slots=True)
class DeviceAttribute:
    """g0: device attribute (variation = attribute id, e.g. 252 vendor, 250 product)."""

    attribute: int
    data_type: int
    value: str | int | float | None


Detail = (
    ControlRelayOutput
    | AnalogOutput
    | TimeValue
    | ClassData
    | FileObject
    | IinWrite
    | DeviceAttribute
)


@fast_init
@dataclass(frozen=True, slots=True)
class ObjectHeader:
    """One object header of a fragment.

    ``start``/``stop`` are set for range qualifiers (0-5), ``count`` for every
    qualifier that fixes a number of objects (range or count); qualifier 0x06
    (all objects) leaves all three ``None``. ``prefix_size`` is the width in
    bytes of the per-object index or size prefix (0 when none).
    """

    group: int
    variation: int
    qualifier: int
    start: int | None
    stop: int | None
    count: int | None
    prefix_size: int
    details: tuple[Detail, ...] = ()


# ---------------------------------------------------------------- events


@fast_init
@dataclass(frozen=True, slots=True)
class DNP3LinkEvent:
    """A link frame without application data: resets, tests, link status, ACK/NACK."""

    ts: float
    flow: FlowId
    direction: Direction
    link_src: int
    link_dst: int
    control: int
    function: int
    function_name: str
    prm: bool
    dir: bool


@fast_init
@dataclass(frozen=True, slots=True)
class DNP3Application:
    """One reassembled application fragment.

    ``iin`` is IIN1 << 8 | IIN2 for responses, else ``None``. ``paired_fc`` is
    the function code this fragment answers: for a response the request's FC,
    for a CONFIRM the FC of the response it confirms. ``latency`` is the time
    since that message, for the first fragment of a pairing only. ``frame`` is
    the number of the captured frame that completed the fragment (0: not known);
    the pipeline sets it, since the parser never sees frames.
    """

    ts: float
    flow: FlowId
    direction: Direction
    link_src: int
    link_dst: int
    app_control: int
    seq: int
    fc: int
    iin: int | None
    objects: tuple[ObjectHeader, ...]
    latency: float | None = None
    paired_fc: int | None = None
    frame: int = field(default=0, compare=False, repr=False)  # set by the pipeline

    @property
    def fc_name(self) -> str:
        return function_name(self.fc)

    @property
    def fir(self) -> bool:
        return bool(self.app_control & 0x80)

    @property
    def fin(self) -> bool:
        return bool(self.app_control & 0x40)

    @property
    def con(self) -> bool:
        return bool(self.app_control & 0x20)

    @property
    def uns(self) -> bool:
        return bool(self.app_control & 0x10)


@fast_init
@dataclass(frozen=True, slots=True)
class DNP3Request(DNP3Application):
    """A fragment from the master (every FC below 129)."""


@fast_init
@dataclass(frozen=True, slots=True)
class DNP3Response(DNP3Application):
    """FC 129 RESPONSE or 131 AUTHENTICATE_RESP from the outstation."""


@fast_init
@dataclass(frozen=True, slots=True)
class DNP3Unsolicited(DNP3Application):
    """FC 130 UNSOLICITED_RESPONSE: normal DNP3, tracked for storms and confirms."""


@fast_init
@dataclass(frozen=True, slots=True)
class DNP3AnomalyEvent:
    ts: float
    flow: FlowId
    direction: Direction
    kind: DNP3Anomaly
    link_src: int | None = None
    link_dst: int | None = None
    fc: int | None = None
    detail: str = ""


DNP3Event = DNP3LinkEvent | DNP3Request | DNP3Response | DNP3Unsolicited | DNP3AnomalyEvent

# ---------------------------------------------------------------- names (data)

FUNCTION_NAMES: dict[int, str] = {
    0: "CONFIRM",
    1: "READ",
    2: "WRITE",
    3: "SELECT",
    4: "OPERATE",
    5: "DIRECT_OPERATE",
    6: "DIRECT_OPERATE_NR",
    7: "IMMED_FREEZE",
    8: "IMMED_FREEZE_NR",
    9: "FREEZE_CLEAR",
    10: "FREEZE_CLEAR_NR",
    11: "FREEZE_AT_TIME",
    12: "FREEZE_AT_TIME_NR",
    13: "COLD_RESTART",
    14: "WARM_RESTART",
    15: "INITIALIZE_DATA",
    16: "INITIALIZE_APPL",
    17: "START_APPL",
    18: "STOP_APPL",
    19: "SAVE_CONFIG",
    20: "ENABLE_UNSOLICITED",
    21: "DISABLE_UNSOLICITED",
    22: "ASSIGN_CLASS",
    23: "DELAY_MEASURE",
    24: "RECORD_CURRENT_TIME",
    25: "OPEN_FILE",
    26: "CLOSE_FILE",
    27: "DELETE_FILE",
    28: "GET_FILE_INFO",
    29: "AUTHENTICATE_FILE",
    30: "ABORT_FILE",
    31: "ACTIVATE_CONFIG",
    32: "AUTHENTICATE_REQ",
    33: "AUTH_REQ_NO_ACK",
    129: "RESPONSE",
    130: "UNSOLICITED_RESPONSE",
    131: "AUTHENTICATE_RESP",
}

PRIMARY_LINK_FUNCTIONS: dict[int, str] = {
    0: "RESET_LINK_STATES",
    1: "RESET_USER_PROCESS",
    2: "TEST_LINK_STATES",
    3: "CONFIRMED_USER_DATA",
    4: "UNCONFIRMED_USER_DATA",
    9: "REQUEST_LINK_STATUS",
}

SECONDARY_LINK_FUNCTIONS: dict[int, str] = {
    0: "ACK",
    1: "NACK",
    11: "LINK_STATUS",
    14: "NOT_FUNCTIONING",
    15: "NOT_SUPPORTED",
}


def function_name(fc: int) -> str:
    return FUNCTION_NAMES.get(fc, f"UNKNOWN_{fc}")


def is_known_link_function(prm: bool, function: int) -> bool:
    return function in (PRIMARY_LINK_FUNCTIONS if prm else SECONDARY_LINK_FUNCTIONS)


def link_function_name(prm: bool, function: int) -> str:
    table = PRIMARY_LINK_FUNCTIONS if prm else SECONDARY_LINK_FUNCTIONS
    return table.get(function, f"{'PRI' if prm else 'SEC'}_UNKNOWN_{function}")


# ---------------------------------------------------------------- JSON


def event_fields(event: DNP3Event) -> dict[str, object]:
    """The JSON-ready dict of one event for ``--events`` (pure, no I/O)."""
    src, sport, dst, dport = event.flow.endpoints(event.direction)
    out: dict[str, object] = {
        "ts": event.ts,
        "proto": "dnp3",
        "type": "",
        "src": src,
        "sport": sport,
        "dst": dst,
        "dport": dport,
        "transport": "udp" if event.flow.transport is Transport.UDP else "tcp",
        "link_src": event.link_src,
        "link_dst": event.link_dst,
        "fc": None,
        "fc_name": None,
        "iin": None,
        "objects": [],
        "anomaly": None,
        "detail": "",
        "latency": None,
    }
    if isinstance(event, DNP3Application):
        if isinstance(event, DNP3Unsolicited):
            out["type"] = "unsolicited"
        elif isinstance(event, DNP3Response):
            out["type"] = "response"
        else:
            out["type"] = "request"
        out["fc"] = event.fc
        out["fc_name"] = event.fc_name
        out["iin"] = event.iin
        out["latency"] = event.latency
        out["objects"] = [
            {
                "group": o.group,
                "variation": o.variation,
                "qualifier": o.qualifier,
                "start": o.start,
                "stop": o.stop,
                "count": o.count,
            }
            for o in event.objects
        ]
    elif isinstance(event, DNP3LinkEvent):
        out["type"] = "link"
        out["fc"] = event.function
        out["fc_name"] = event.function_name
    else:
        out["type"] = "anomaly"
        out["fc"] = event.fc
        out["fc_name"] = None if event.fc is None else function_name(event.fc)
        out["anomaly"] = event.kind.name
        out["detail"] = event.detail
    return out
