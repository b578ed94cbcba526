"""Zeek and ICSNPP log rows → the same events the packet path emits.

Architecture principle 6 (one model, many sources): a rule written against
``ModbusRequest``/``DNP3Request`` must fire whether the sensor saw the packets or only
Zeek's logs. A log row carries less than the wire, so each event holds what the row
says and marks the rest as unknown, never guessed:

- ``UNKNOWN`` (-1) stands for an integer the log lacks (Modbus ``tid``/``unit`` in old
  logs, DNP3 link addresses, application sequence, object qualifier). No wire value is
  negative, so it cannot be mistaken for one; in particular it is not 0, which would be
  a Modbus broadcast.
- ``pdu`` is a decoded PDU class when the ICSNPP row holds every field of it, else a
  :class:`LoggedPdu` that names the row (``modbus.log:12``) the event came from.
- A Modbus exception whose code the log does not give has ``exception = 0``.

What each log gives (rows in, events out) is the table in docs/zeek.md.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from mamori.parsers.dnp3.events import FUNCTION_NAMES as DNP3_FUNCTION_NAMES
from mamori.parsers.dnp3.events import (
    ControlRelayOutput,
    DNP3Anomaly,
    DNP3AnomalyEvent,
    DNP3Request,
    DNP3Response,
    DNP3Unsolicited,
    ObjectHeader,
)
from mamori.parsers.events import Event
from mamori.parsers.modbus.events import ModbusRequest, ModbusResponse
from mamori.parsers.modbus.pdu import (
    DeviceIdObject,
    Diagnostics,
    ExceptionPdu,
    Pdu,
    ReadBitsResponse,
    ReadDeviceIdRequest,
    ReadDeviceIdResponse,
    ReadRegistersResponse,
    ReadRequest,
    WriteMultipleCoilsRequest,
    WriteMultipleRegistersRequest,
    WriteMultipleResponse,
    WriteSingleCoil,
    WriteSingleRegister,
)
from mamori.parsers.modbus.tables import COIL_OFF, COIL_ON, MEI_READ_DEVICE_ID
from mamori.parsers.stream import Direction, FlowId, Transport
from mamori.sensor.capture.zeek import names
from mamori.sensor.capture.zeek.reader import ZeekRecord

UNKNOWN: Final = -1

#: Bounds for the ICSNPP joins, so a log that never pairs cannot grow memory.
MAX_PENDING: Final = 10_000
MAX_UDP_UIDS: Final = 65_536  # UDP connection ids remembered from conn.log, newest kept

#: The logs this module maps; others in a directory are ignored.
MODBUS_LOGS: Final = ("modbus", "modbus_detailed", "modbus_read_device_identification")
DNP3_LOGS: Final = ("dnp3", "dnp3_objects", "dnp3_control")


@dataclass(frozen=True, slots=True)
class LoggedPdu(Pdu):
    """The PDU was not on the wire we saw: the event comes from the log row ``where``."""

    where: str


def _get(fields: dict[str, Any], dotted: str) -> Any:
    """``id.orig_h`` flat (TSV, Zeek JSON) or nested (``{"id": {"orig_h": ..}}``)."""
    if dotted in fields:
        return fields[dotted]
    head, _, rest = dotted.partition(".")
    inner = fields.get(head)
    return inner.get(rest) if isinstance(inner, dict) and rest else None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _ints(value: Any) -> tuple[int, ...] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = tuple(value.split(","))
    if not isinstance(value, tuple | list):
        return None
    out = tuple(_int(v) for v in value)
    return None if any(v is None for v in out) else tuple(v for v in out if v is not None)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value not in ("", "-") else None


class ZeekEventMapper:
    """Maps records, in the order given, to events; keeps the ICSNPP join state.

    ``transports`` maps a connection uid to UDP when conn.log said so (``note_udp``;
    the newest ``MAX_UDP_UIDS``: a followed conn.log names every UDP connection of
    the site, DNS included, for years); every other flow is TCP (Modbus/TCP always
    is; Zeek's dnp3.log does not say which).
    Counters in ``stats`` say what was skipped and why (``docs/zeek.md``).
    """

    def __init__(self) -> None:
        self.transports: OrderedDict[str, Transport] = OrderedDict()
        self.stats: Counter[str] = Counter()
        self.modbus_detailed_seen = False
        self._last_ts: dict[str, float] = {}
        # ICSNPP DNP3 fragments waiting for their dnp3.log row:
        # (uid, is_orig, fc) -> deque of (ts, headers)
        self._dnp3_objects: dict[tuple[str, bool, int], deque[tuple[float | None,
                                                                    list[ObjectHeader]]]]
        self._dnp3_objects = defaultdict(deque)
        self._pending_objects = 0
        self._group_key: tuple[Any, ...] | None = None
        # ICSNPP read-device-identification PDUs waiting for their modbus row:
        # (uid, tid, unit, is_request) -> pdu
        self._device_id: dict[tuple[str, int, int, bool], Pdu | None] = {}
        self._device_rows: dict[tuple[str, int, int, float | None], list[DeviceIdObject]] = {}
        # modbus_detailed rows with matched unset: first of (uid, tid, unit, fc) is the request
        self._unmatched: set[tuple[str, int, int, int]] = set()

    # ------------------------------------------------------------------ entry

    def note_udp(self, uid: str) -> None:
        """conn.log says ``uid`` is UDP; past ``MAX_UDP_UIDS`` the oldest is forgotten
        (counted: a DNP3 row of that connection would then be taken as TCP)."""
        transports = self.transports
        transports[uid] = Transport.UDP
        transports.move_to_end(uid)
        if len(transports) > MAX_UDP_UIDS:
            transports.popitem(last=False)
            self.stats["conn: UDP connection ids forgotten (cap)"] += 1

    def map(self, record: ZeekRecord) -> list[Event]:
        """Events for one record (enrichment-only logs return none)."""
        path = record.path
        flow = self._flow(record)
        if flow is None:
            self.stats[f"{path}: row without connection id"] += 1
            return []
        if path == "modbus":
            if self.modbus_detailed_seen:
                self.stats["modbus: rows superseded by modbus_detailed"] += 1
                return []
            return self._modbus(record, flow)
        if path == "modbus_detailed":
            self.modbus_detailed_seen = True
            return self._modbus_detailed(record, flow)
        if path == "modbus_read_device_identification":
            self._device_identification(record)
            return []
        if path == "dnp3":
            return self._dnp3(record, flow)
        if path in ("dnp3_objects", "dnp3_control"):
            self._dnp3_detail(record)
            return []
        self.stats[f"{path}: log not mapped"] += 1
        return []

    def map_all(self, records: Iterable[ZeekRecord]) -> list[Event]:
        out: list[Event] = []
        for record in records:
            out.extend(self.map(record))
        return out

    # ------------------------------------------------------------------ common

    def _ts(self, record: ZeekRecord, key: str = "ts") -> float:
        """The row's time; a row without one (btest canonicalised) takes the previous
        row's, so the order of the file is kept and no time is invented."""
        value = record.fields.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            self._last_ts[record.source] = float(value)
            return float(value)
        self.stats[f"{record.path}: rows without a time"] += 1
        return self._last_ts.get(record.source, 0.0)

    def _flow(self, record: ZeekRecord) -> FlowId | None:
        f = record.fields
        client, server = _get(f, "id.orig_h"), _get(f, "id.resp_h")
        cport, sport = _int(_get(f, "id.orig_p")), _int(_get(f, "id.resp_p"))
        if not isinstance(client, str) or not isinstance(server, str) or cport is None \
                or sport is None:
            return None
        uid = f.get("uid")
        transport = self.transports.get(uid, Transport.TCP) if isinstance(uid, str) \
            else Transport.TCP
        return FlowId(transport, client, cport, server, sport)

    # ------------------------------------------------------------------ Modbus

    def _modbus(self, record: ZeekRecord, flow: FlowId) -> list[Event]:
        """modbus.log: one message per row (Zeek >= 6: ``pdu_type`` REQ/RESP); before
        that, Bro wrote a row only for each response, at the response's time."""
        f = record.fields
        func = _text(f.get("func"))
        decoded = names.modbus_function(func) if func else None
        if decoded is None:
            self.stats[f"modbus: unknown func {func!r}"] += 1
            return []
        fc, exception_bit = decoded
        tid = _int(f.get("tid"))
        unit = _int(f.get("unit"))
        ts = self._ts(record)
        tid = UNKNOWN if tid is None else tid
        unit = UNKNOWN if unit is None else unit
        where = f"{record.source}:{record.line}"
        request = _text(f.get("pdu_type")) == "REQ"
        exc_name = _text(f.get("exception"))
        exception = names.modbus_exception(exc_name) if exc_name else None
        uid = str(f.get("uid"))
        if request:
            pdu = self._device_id.pop((uid, tid, unit, True), None) or LoggedPdu(where)
            return [ModbusRequest(ts, flow, tid, unit, fc, _sub(fc, pdu), None, None, pdu)]
        if exception_bit or exception is not None:
            code = exception if exception is not None else 0
            return [ModbusResponse(ts, flow, tid, unit, fc, None, None, None,
                                   ExceptionPdu(code), code, None, False)]
        pdu = self._device_id.pop((uid, tid, unit, False), None) or LoggedPdu(where)
        return [ModbusResponse(ts, flow, tid, unit, fc, _sub(fc, pdu), None, None, pdu,
                               None, None, False)]

    def _modbus_detailed(self, record: ZeekRecord, flow: FlowId) -> list[Event]:
        """ICSNPP modbus_detailed.log: one row per transaction it paired (``matched``
        T, at the request's time; the response's time is not logged, so the response
        event gets the same time and no latency), or one row per message of a
        function it does not pair (``matched`` unset: first the request, then the
        response, told apart by order per tid)."""
        f = record.fields
        func = _text(f.get("func"))
        decoded = names.modbus_function(func) if func else None
        if decoded is None:
            self.stats[f"modbus_detailed: unknown func {func!r}"] += 1
            return []
        fc, exception_bit = decoded
        ts = self._ts(record)
        tid = _int(f.get("tid"))
        unit = _int(f.get("unit"))
        tid = UNKNOWN if tid is None else tid
        unit = UNKNOWN if unit is None else unit
        uid = str(f.get("uid"))
        where = f"{record.source}:{record.line}"
        address = _int(f.get("address"))
        quantity = _int(f.get("quantity"))
        req_values = _ints(f.get("request_values"))
        rsp_values = _ints(f.get("response_values"))
        exc_name = _text(f.get("exception_code"))
        exception = names.modbus_exception(exc_name) if exc_name else None
        if exception_bit and exception is None:
            exception = 0
        req_sub = _text(f.get("request_subfunction_code"))
        rsp_sub = _text(f.get("response_subfunction_code"))
        sub = names.diagnostic_sub_function(req_sub or rsp_sub or "") if fc == 8 else None
        if fc == 43 and (_text(f.get("mei_type")) or "").lower().startswith("read device"):
            sub = MEI_READ_DEVICE_ID
        matched = f.get("matched")
        want_request = want_response = True
        if matched is None:
            key = (uid, tid, unit, fc)
            if key in self._unmatched or exception is not None:
                self._unmatched.discard(key)
                want_request = False
            else:
                if len(self._unmatched) < MAX_PENDING:
                    self._unmatched.add(key)
                want_response = False
        elif matched is False:
            # unpaired: a response if the row holds anything only a response has
            if exception is not None or rsp_values or _text(f.get("response_data")):
                want_request = False
            else:
                want_response = False
        events: list[Event] = []
        if want_request:
            pdu = self._device_id.pop((uid, tid, unit, True), None) or _request_pdu(
                fc, address, quantity, req_values, sub,
                _data(f.get("request_data")), where)
            events.append(ModbusRequest(ts, flow, tid, unit, fc, sub, address, quantity, pdu))
        if want_response:
            if exception is not None:
                rpdu: Pdu = ExceptionPdu(exception)
            else:
                rpdu = self._device_id.pop((uid, tid, unit, False), None) or _response_pdu(
                    fc, address, quantity, req_values, rsp_values, sub,
                    _data(f.get("response_data")), where)
            events.append(ModbusResponse(ts, flow, tid, unit, fc,
                                         None if exception is not None else sub,
                                         None if exception is not None else address,
                                         None if exception is not None else quantity,
                                         rpdu, exception, None, False))
        return events

    def _device_identification(self, record: ZeekRecord) -> None:
        """ICSNPP modbus_read_device_identification.log: a REQUEST row, then one
        RESPONSE row per object; they become the PDU of the FC 43 event of the same
        (uid, tid, unit) in modbus_detailed.log or modbus.log."""
        f = record.fields
        uid = str(f.get("uid"))
        tid, unit = _int(f.get("tid")), _int(f.get("unit"))
        if tid is None or unit is None or len(self._device_id) >= MAX_PENDING:
            self.stats["modbus_read_device_identification: rows not joined"] += 1
            return
        read_code = _int(f.get("device_id_code"))
        object_code = _int(f.get("object_id_code"))
        if object_code is None and _text(f.get("object_id")):
            object_code = names.DEVICE_ID_OBJECTS.get(str(f["object_id"]).lower())
        if (_text(f.get("request_response")) or "").upper() == "REQUEST":
            self._device_id[(uid, tid, unit, True)] = ReadDeviceIdRequest(
                UNKNOWN if read_code is None else read_code,
                UNKNOWN if object_code is None else object_code)
            return
        ts = f.get("ts") if isinstance(f.get("ts"), float) else None
        objects = self._device_rows.setdefault((uid, tid, unit, ts), [])
        if object_code is not None:
            objects.append(DeviceIdObject(object_code, str(f.get("object_value") or "")))
        conformity = _int(f.get("conformity_level_code"))
        if conformity is None and isinstance(f.get("conformity_level_code"), str):
            try:
                conformity = int(str(f["conformity_level_code"]), 0)
            except ValueError:
                conformity = None
        self._device_id[(uid, tid, unit, False)] = ReadDeviceIdResponse(
            UNKNOWN if read_code is None else read_code,
            UNKNOWN if conformity is None else conformity,
            UNKNOWN, UNKNOWN, len(objects), tuple(objects))
        if len(self._device_rows) > MAX_PENDING:
            self._device_rows.clear()

    # ------------------------------------------------------------------ DNP3

    def _dnp3(self, record: ZeekRecord, flow: FlowId) -> list[Event]:
        """dnp3.log: Zeek fills one record per connection: a request sets fc_request
        (and ts), a response sets fc_reply, iin and ts, then writes the row. So a row
        with a reply has the *response's* time; the request's own time comes from
        ICSNPP dnp3_objects when that log has the fragment, else the request event
        takes the row's time. A request never answered is written with its own time.
        Link addresses and the application sequence are not logged: ``UNKNOWN``."""
        f = record.fields
        ts = self._ts(record)
        uid = str(f.get("uid"))
        events: list[Event] = []
        req_name = _text(f.get("fc_request"))
        rsp_name = _text(f.get("fc_reply"))
        if req_name:
            fc = names.dnp3_function(req_name)
            if fc is None:
                self.stats[f"dnp3: unknown fc_request {req_name!r}"] += 1
            else:
                req_ts, objects = self._take_objects(uid, True, fc, None if rsp_name else ts)
                events.append(self._dnp3_event(DNP3Request, ts if req_ts is None else req_ts,
                                               flow, Direction.TO_SERVER, fc, None, objects))
        if rsp_name:
            fc = names.dnp3_function(rsp_name)
            if fc is None:
                self.stats[f"dnp3: unknown fc_reply {rsp_name!r}"] += 1
            else:
                iin = _int(f.get("iin"))
                _, objects = self._take_objects(uid, False, fc, ts)
                cls = DNP3Unsolicited if fc == 130 else DNP3Response
                events.append(self._dnp3_event(cls, ts, flow, Direction.TO_CLIENT, fc, iin,
                                               objects))
        return events

    @staticmethod
    def _dnp3_event(cls: type[DNP3Request] | type[DNP3Response] | type[DNP3Unsolicited],
                    ts: float, flow: FlowId, direction: Direction, fc: int, iin: int | None,
                    objects: tuple[ObjectHeader, ...]) -> Event:
        if fc not in DNP3_FUNCTION_NAMES:
            # the packet path reports an undefined FC as this anomaly, not a fragment
            return DNP3AnomalyEvent(ts, flow, direction, DNP3Anomaly.UNKNOWN_FUNCTION_CODE,
                                    None, None, fc, "function code from a Zeek log")
        # FIR|FIN, plus UNS for unsolicited responses: a logged fragment is a whole one
        control = 0xC0 | (0x10 if fc == 130 else 0)
        return cls(ts, flow, direction, UNKNOWN, UNKNOWN, control, UNKNOWN, fc, iin, objects)

    def _dnp3_detail(self, record: ZeekRecord) -> None:
        """ICSNPP dnp3_objects / dnp3_control rows, grouped into fragments.

        Consecutive rows of one (uid, direction, fc, ts) are one fragment's headers;
        each dnp3_control row is one CROB of a g12v1 header.
        """
        f = record.fields
        uid = str(f.get("uid"))
        is_orig = f.get("is_orig") is True
        fc_name = _text(f.get("function_code"))
        fc = names.dnp3_function(fc_name) if fc_name else None
        if fc is None:
            self.stats[f"{record.path}: unknown function_code {fc_name!r}"] += 1
            return
        ts = f.get("ts") if isinstance(f.get("ts"), float) else None
        key = (record.path, uid, is_orig, fc, ts)
        queue = self._dnp3_objects[(uid, is_orig, fc)]
        same = self._group_key == key and bool(queue)
        if not same:
            if self._pending_objects >= MAX_PENDING:
                self.stats[f"{record.path}: fragments dropped (join table full)"] += 1
                return
            queue.append((ts, []))
            self._pending_objects += 1
            self._group_key = key
        headers = queue[-1][1]
        if record.path == "dnp3_control":
            crob = _crob(f)
            if headers and headers[-1].group == 12:
                last = headers[-1]
                headers[-1] = ObjectHeader(12, last.variation, UNKNOWN, None, None,
                                           (last.count or 0) + 1, UNKNOWN, (*last.details, crob))
            else:
                headers.append(ObjectHeader(12, 1, UNKNOWN, None, None, 1, UNKNOWN, (crob,)))
            return
        gv = names.dnp3_object_type(str(f.get("object_type") or ""))
        if gv is None:
            self.stats[f"dnp3_objects: unknown object_type {f.get('object_type')!r}"] += 1
            return
        low, high = _int(f.get("range_low")), _int(f.get("range_high"))
        headers.append(ObjectHeader(gv[0], gv[1], UNKNOWN, low, high,
                                    _int(f.get("object_count")), UNKNOWN))

    def _take_objects(self, uid: str, is_orig: bool, fc: int, ts: float | None
                      ) -> tuple[float | None, tuple[ObjectHeader, ...]]:
        """The headers ICSNPP logged for this fragment, and the fragment's time.

        With times on both sides the group must have the event's time (a response)
        or be no later than the row (a request); without (btest baselines) the
        oldest group of the same (uid, direction, fc) is taken.
        """
        queue = self._dnp3_objects.get((uid, is_orig, fc))
        if not queue:
            return None, ()
        group_ts, headers = queue[0]
        if ts is not None and group_ts is not None and (
                (is_orig and group_ts > ts) or (not is_orig and group_ts != ts)):
            return None, ()
        queue.popleft()
        self._pending_objects -= 1
        if self._group_key is not None and not queue:
            self._group_key = None
        return group_ts, tuple(headers)


def _sub(fc: int, pdu: Pdu) -> int | None:
    return MEI_READ_DEVICE_ID if fc == 43 and isinstance(
        pdu, ReadDeviceIdRequest | ReadDeviceIdResponse) else None


def _data(value: Any) -> bytes | None:
    text = _text(value)
    return None if text is None else text.encode("latin-1", "replace")


def _request_pdu(fc: int, address: int | None, quantity: int | None,
                 values: tuple[int, ...] | None, sub: int | None, data: bytes | None,
                 where: str) -> Pdu:
    if fc in (1, 2, 3, 4) and address is not None and quantity is not None:
        return ReadRequest(address, quantity)
    if fc == 5 and address is not None and values and len(values) == 1:
        return WriteSingleCoil(address, COIL_ON if values[0] else COIL_OFF)
    if fc == 6 and address is not None and values and len(values) == 1:
        return WriteSingleRegister(address, values[0])
    if fc == 15 and address is not None and quantity is not None and values is not None:
        return WriteMultipleCoilsRequest(address, quantity, (len(values) + 7) // 8, values)
    if fc == 16 and address is not None and quantity is not None and values is not None:
        return WriteMultipleRegistersRequest(address, quantity, 2 * len(values), values)
    if fc == 8 and sub is not None and data is not None:
        return Diagnostics(sub, data)
    return LoggedPdu(where)


def _response_pdu(fc: int, address: int | None, quantity: int | None,
                  req_values: tuple[int, ...] | None, values: tuple[int, ...] | None,
                  sub: int | None, data: bytes | None, where: str) -> Pdu:
    if fc in (1, 2) and values is not None:
        return ReadBitsResponse((len(values) + 7) // 8, values)
    if fc in (3, 4) and values is not None:
        return ReadRegistersResponse(2 * len(values), values)
    if fc in (5, 6) and address is not None and values and len(values) == 1:
        if fc == 5:
            return WriteSingleCoil(address, COIL_ON if values[0] else COIL_OFF)
        return WriteSingleRegister(address, values[0])
    if fc in (15, 16) and address is not None and quantity is not None:
        return WriteMultipleResponse(address, quantity)
    if fc == 8 and sub is not None and data is not None:
        return Diagnostics(sub, data)
    return LoggedPdu(where)


def _crob(f: dict[str, Any]) -> ControlRelayOutput:
    op = names.lookup(names.CROB_OPERATIONS, str(f.get("operation_type") or "nul"))
    tcc = names.lookup(names.CROB_TCC, str(f.get("trip_control_code") or "nul"))
    op = 0 if op is None else op
    tcc = 0 if tcc is None else tcc
    clear = f.get("clear_bit") is True
    status_name = _text(f.get("status_code"))
    status = names.lookup(names.CONTROL_STATUS, status_name) if status_name else None
    op_names = ("NUL", "PULSE_ON", "PULSE_OFF", "LATCH_ON", "LATCH_OFF")
    return ControlRelayOutput(
        _int(f.get("index_number")),
        tcc << 6 | (0x20 if clear else 0) | op,
        op_names[op] if op < len(op_names) else f"UNDEFINED_{op}",
        ("NUL", "CLOSE", "TRIP", "RESERVED")[tcc & 3],
        clear,
        False,
        _int(f.get("execute_count")) or 0,
        _int(f.get("on_time")) or 0,
        _int(f.get("off_time")) or 0,
        UNKNOWN if status is None else status,
    )
