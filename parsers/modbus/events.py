"""What the Modbus parser emits: requests, responses and anomalies.

Events are frozen, slotted dataclasses and deliberately small: they are built
once per message on the hot path. The function-code specific content is the
``pdu`` object (see :mod:`mamori.parsers.modbus.pdu`), decoded eagerly so that
malformed content is reported at once; ``sub``, ``address`` and ``quantity``
are lifted onto the event because rules match on them for every code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from mamori.parsers.fastinit import fast_init
from mamori.parsers.modbus.pdu import Pdu  # at run time too: compiled, the fields' types resolve
from mamori.parsers.stream import Direction, FlowId


class ModbusAnomaly(Enum):
    """Why a message or a stretch of bytes is suspicious.

    The member *name* is what events, JSON and rule packs carry, so names are
    stable; the value is a short human description.
    """

    # Framing (MBAP).
    INVALID_PROTOCOL_ID = "MBAP protocol id is not 0"
    INVALID_LENGTH = "MBAP length below 2 (no room for unit id and function code)"
    ADU_TOO_LONG = "MBAP length above 254 (ADU over 260 bytes)"
    RESYNC = "bytes skipped to find the next plausible MBAP header"
    NON_MODBUS_DATA = "max_buffer bytes discarded without a plausible MBAP header"
    GAP = "bytes of the stream were lost; the parser resynchronises"
    TRUNCATED = "stream ended with a partial ADU buffered"
    # PDU content.
    INVALID_FUNCTION_CODE = "function code 0, or a request with the exception bit set"
    INVALID_EXCEPTION_CODE = "exception code outside 1-6, 8, 10, 11"
    MALFORMED_PDU = "PDU too short, too long or internally inconsistent for its function code"
    BYTE_COUNT_MISMATCH = "byte count disagrees with the payload or the quantity"
    INVALID_QUANTITY = "quantity outside the range the function code allows"
    INVALID_COIL_VALUE = "write single coil value not 0x0000 or 0xFF00"
    INVALID_SUB_FUNCTION = "diagnostics sub-function not defined"
    # Transactions.
    UNSOLICITED_RESPONSE = "response with no outstanding request"
    VALUE_MISMATCH = "response inconsistent with its request"
    TID_REUSE = "new request while the same transaction id and unit are outstanding"
    FLOODED = "outstanding requests reached max_outstanding; new ones are not tracked"


@fast_init
@dataclass(frozen=True, slots=True)
class ModbusRequest:
    """One request ADU (client → server).

    ``fc`` is the function code byte. ``sub`` is the FC 8 sub-function or the
    FC 43 MEI type, else ``None``. ``address``/``quantity`` are the data range
    the request touches where the function code has one (FC 23: the read
    range; the write range is on ``pdu``). ``pdu`` is the decoded PDU, or a
    :class:`~mamori.parsers.modbus.pdu.RawPdu` for vendor codes and PDUs too short to
    decode (an anomaly event then follows).
    """

    ts: float
    flow: FlowId
    tid: int
    unit: int
    fc: int
    sub: int | None
    address: int | None
    quantity: int | None
    pdu: Pdu


@fast_init
@dataclass(frozen=True, slots=True)
class ModbusResponse:
    """One response ADU (server → client).

    ``fc`` has the exception bit cleared; ``exception`` holds the exception
    code when it was set, else ``None``. ``address``/``quantity``/``sub`` come
    from the response where it carries them, otherwise from the paired request.
    ``latency`` is seconds since the paired request; ``unsolicited`` is true
    when no request was outstanding for (tid, unit). ``frame`` is the number of
    the captured frame that completed the ADU (0: not known, as from Zeek logs);
    the parser never sees frames, so the sensor's pipeline sets it.
    """

    ts: float
    flow: FlowId
    tid: int
    unit: int
    fc: int
    sub: int | None
    address: int | None
    quantity: int | None
    pdu: Pdu
    exception: int | None
    latency: float | None
    unsolicited: bool
    frame: int = field(default=0, compare=False, repr=False)


@fast_init
@dataclass(frozen=True, slots=True)
class ModbusAnomalyEvent:
    """Something malformed or suspicious; ``tid``/``unit``/``fc`` when a header was read."""

    ts: float
    flow: FlowId
    direction: Direction
    kind: ModbusAnomaly
    tid: int | None
    unit: int | None
    fc: int | None
    detail: str


ModbusEvent = ModbusRequest | ModbusResponse | ModbusAnomalyEvent
