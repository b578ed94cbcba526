"""DNP3 application layer (IEEE 1815 clause 4.2): header and object-header walk.

Wire layout of a fragment::

    AC (FIR 0x80 | FIN 0x40 | CON 0x20 | UNS 0x10 | SEQ 0x0F) | FC
    [IIN1 | IIN2]                       responses only (FC 129, 130, 131)
    object header*: GROUP | VAR | QUALIFIER | range | objects

Qualifier: bit 7 reserved; object prefix code = bits 6-4 (0 none, 1/2/3 index of
1/2/4 bytes, 4/5/6 object size of 1/2/4 bytes, 7 reserved); range code = bits 3-0
(0/1/2 start-stop of 1/2/4 bytes, 3/4/5 virtual start-stop, 6 none, 7/8/9 count
of 1/2/4 bytes, 0xB 1-byte count of size-prefixed free-format objects).

The walker sizes objects from ``objects.OBJECT_SPECS`` and skips point data
without looking at it; only the few groups that matter for detection are
decoded into ``details``. On the first header it cannot size it stops, reports
why and keeps the headers decoded so far.
"""

from __future__ import annotations

from struct import Struct
from typing import NamedTuple

from mamori.parsers.dnp3.events import (
    FUNCTION_NAMES,
    AnalogOutput,
    ClassData,
    ControlRelayOutput,
    Detail,
    DeviceAttribute,
    DNP3Anomaly,
    FileObject,
    IinWrite,
    ObjectHeader,
    TimeValue,
)
from mamori.parsers.dnp3.objects import (
    ATTRIBUTE,
    BIT1,
    BIT2,
    BY_VARIATION,
    KNOWN_GROUPS,
    KNOWN_HEADERS,
    OBJECT_SIZES,
    STATUS_LIST,
)

Problem = tuple[DNP3Anomaly, str]

RESPONSE_FCS = frozenset({129, 130, 131})
# Requests whose object headers carry object data (the others name points only).
DATA_REQUEST_FCS = frozenset({2, 3, 4, 5, 6, 25, 26, 27, 28, 29, 30, 31, 32, 33})
FREEZE_AT_TIME_FCS = frozenset({11, 12})
# Requests that are never answered by a RESPONSE.
NO_RESPONSE_FCS = frozenset({0, 6, 8, 10, 12, 33})

MAX_DETAILS = 64  # decoded details kept per object header

_INT = {1: Struct("<B"), 2: Struct("<H"), 4: Struct("<I")}
_CROB = Struct("<BBIIB")
_I32S = Struct("<iB")
_I16S = Struct("<hB")
_F32S = Struct("<fB")
_F64S = Struct("<dB")
_U32 = Struct("<I")
_U16 = Struct("<H")

_OP_TYPES = ("NUL", "PULSE_ON", "PULSE_OFF", "LATCH_ON", "LATCH_OFF")
_TCC = ("NUL", "CLOSE", "TRIP", "RESERVED")
_FILE_MODES = ("NULL", "READ", "WRITE", "APPEND")


class AppFragment(NamedTuple):
    control: int
    fc: int
    iin: int | None
    objects: tuple[ObjectHeader, ...]


def parse_fragment(
    frag: bytes, max_objects: int, max_points: int, problems: list[Problem]
) -> AppFragment | None:
    """Decode one fragment. ``None`` (with a problem) if it has no usable header."""
    n = len(frag)
    if n < 2:
        problems.append((DNP3Anomaly.TRUNCATED_FRAGMENT, f"{n} bytes, no application header"))
        return None
    control = frag[0]
    fc = frag[1]
    if fc not in FUNCTION_NAMES:
        problems.append((DNP3Anomaly.UNKNOWN_FUNCTION_CODE, f"FC {fc}"))
        return None
    iin = None
    pos = 2
    if fc in RESPONSE_FCS:
        if n < 4:
            problems.append((DNP3Anomaly.TRUNCATED_FRAGMENT, "response without IIN"))
            return None
        iin = frag[2] << 8 | frag[3]
        pos = 4
    objects = walk_objects(frag, pos, fc, max_objects, max_points, problems)
    return AppFragment(control, fc, iin, objects)


def _qualifier(qualifier: int) -> tuple[int, int, int, Struct | None, int] | None:
    """(prefix code, prefix width, range code, range Struct, range width in bytes) of a
    qualifier, or ``None`` if it is reserved (bit 7, prefix code 7, range codes 0xA and
    0xC-0xF)."""
    prefix_code = (qualifier >> 4) & 7
    range_code = qualifier & 0x0F
    if qualifier & 0x80 or prefix_code == 7 or range_code in (0xA, 0xC, 0xD, 0xE, 0xF):
        return None
    width = (0, 1, 2, 4, 1, 2, 4)[prefix_code]
    fmt = ("<BB", "<HH", "<II", "<BB", "<HH", "<II", "", "<B", "<H", "<I", "", "<B")[range_code]
    range_struct = Struct(fmt) if fmt else None
    return prefix_code, width, range_code, range_struct, range_struct.size if range_struct else 0


# Every qualifier decoded once, at import: the walker does one look-up per header.
_QUALIFIERS = tuple(_qualifier(q) for q in range(256))


def _all_objects() -> dict[int, ObjectHeader]:
    """The headers of qualifier 0x06 (all objects: no range, no prefix) that are the
    same object every time, by group << 8 | variation: the class polls (g60v1-v4,
    with their class, valid in any function) and the "any variation" reads of static
    data (g1v0, g30v0, ...; valid only where no object data follows). They are
    immutable, so every fragment shares them."""
    table = {g << 8: ObjectHeader(g, 0, 0x06, None, None, None, 0) for g in KNOWN_GROUPS if g}
    for v in range(1, 5):
        table[60 << 8 | v] = ObjectHeader(60, v, 0x06, None, None, None, 0, (ClassData(v - 1),))
    return table


_ALL_OBJECTS = _all_objects()


# The decoders read the header they describe; their details are then set through the
# slot, as construction would (the dataclass is frozen). getattr: mypyc before 1.10
# takes ``type.__dict__`` for a dict and rejects the mappingproxy it is at run time.
_SET_DETAILS = getattr(ObjectHeader, "__dict__")["details"].__set__  # noqa: B009


def _gv(group: int, variation: int, qualifier: int) -> str:
    return f"g{group}v{variation} q0x{qualifier:02X}"


def walk_objects(
    frag: bytes, pos: int, fc: int, max_objects: int, max_points: int, problems: list[Problem]
) -> tuple[ObjectHeader, ...]:
    """The object headers from ``frag[pos]`` on. Each header is sized from
    ``objects.OBJECT_SIZES`` and its objects are skipped; the decoded groups
    (``_DECODERS``) and the class headers also get their ``details``."""
    n = len(frag)
    headers: list[ObjectHeader] = []
    fc_data = fc in DATA_REQUEST_FCS or fc in RESPONSE_FCS
    freeze_at_time = fc in FREEZE_AT_TIME_FCS
    qualifiers = _QUALIFIERS
    sizes = OBJECT_SIZES
    decoders = _DECODERS
    while pos < n:
        if len(headers) >= max_objects:
            problems.append((DNP3Anomaly.TOO_MANY_OBJECTS, f"over {max_objects} object headers"))
            break
        if n - pos < 3:
            problems.append((DNP3Anomaly.TRUNCATED_FRAGMENT, f"object header at offset {pos}"))
            break
        group = frag[pos]
        variation = frag[pos + 1]
        qualifier = frag[pos + 2]
        pos += 3
        key = group << 8 | variation
        decoded = qualifiers[qualifier]
        if decoded is None:
            headers.append(ObjectHeader(group, variation, qualifier, None, None, None, 0))
            problems.append((DNP3Anomaly.RESERVED_QUALIFIER, _gv(group, variation, qualifier)))
            break
        prefix_code, prefix_width, range_code, range_struct, need = decoded
        carries = (
            fc_data
            or prefix_code >= 4
            or group == 120
            or (group == 50 and freeze_at_time)
        )
        if qualifier == 0x06:  # all objects: the header is all there is
            shared = _ALL_OBJECTS.get(key)
            if shared is not None and (variation or not carries):
                headers.append(shared)
                continue
        # ---- range
        start: int | None = None
        stop: int | None = None
        count: int | None = None
        if range_struct is not None:
            if n - pos < need:
                problems.append(
                    (DNP3Anomaly.TRUNCATED_FRAGMENT, f"{_gv(group, variation, qualifier)} range")
                )
                break
            if range_code <= 5:
                first, last = range_struct.unpack_from(frag, pos)
                # plain locals first: Debian's mypy 1.0.1 (the .deb's mypyc build) narrows
                # no declared Optional from a tuple's items
                start, stop, points = first, last, last - first + 1
                count = points
                if points < 1:
                    headers.append(ObjectHeader(group, variation, qualifier, start, stop, count,
                                                prefix_width))
                    problems.append((DNP3Anomaly.INVALID_RANGE,
                                     f"{_gv(group, variation, qualifier)} start {start} "
                                     f"stop {stop}"))
                    break
            else:
                points = range_struct.unpack_from(frag, pos)[0]
                count = points
            pos += need
            if points > max_points:
                headers.append(ObjectHeader(group, variation, qualifier, start, stop, count,
                                            prefix_width))
                problems.append((DNP3Anomaly.TOO_MANY_POINTS,
                                 f"{_gv(group, variation, qualifier)} count {count}"))
                break
        if not carries:  # a header that names points, without their data
            problem: Problem | None = None
            if key not in KNOWN_HEADERS:
                problem = (DNP3Anomaly.UNKNOWN_OBJECT, _gv(group, variation, qualifier))
            elif prefix_code:
                if count is None:
                    problem = (DNP3Anomaly.QUALIFIER_MISMATCH,
                               f"{_gv(group, variation, qualifier)} in FC {fc}")
                else:
                    pos += count * prefix_width  # a list of point indexes
                    if pos > n:
                        problem = (DNP3Anomaly.TRUNCATED_FRAGMENT,
                                   f"{_gv(group, variation, qualifier)} indexes")
            details: tuple[Detail, ...] = ()
            if group == 60 and 1 <= variation <= 4 and problem is None:
                details = (ClassData(variation - 1),)
            headers.append(ObjectHeader(group, variation, qualifier, start, stop, count,
                                        prefix_width, details))
            if problem is not None:
                problems.append(problem)
                break
            continue
        size = sizes.get(key)
        if size is None:
            headers.append(ObjectHeader(group, variation, qualifier, start, stop, count,
                                        prefix_width))
            problems.append((DNP3Anomaly.UNKNOWN_OBJECT, _gv(group, variation, qualifier)))
            break
        objects = count or 0
        end: int | None
        if prefix_code >= 4 or size in (ATTRIBUTE, STATUS_LIST):
            end = _walk_sized(frag, pos, objects, prefix_width, prefix_code >= 4, size)
        elif size >= 0:
            end = pos + objects * (prefix_width + size)
        elif size in (BIT1, BIT2):
            if prefix_width:
                end = pos + objects * (prefix_width + 1)
            else:
                end = pos + (objects * (1 if size == BIT1 else 2) + 7) // 8
        elif size == BY_VARIATION:
            end = pos + objects * (prefix_width + variation)
        else:  # FREE without a size prefix
            headers.append(ObjectHeader(group, variation, qualifier, start, stop, count,
                                        prefix_width))
            problems.append((DNP3Anomaly.QUALIFIER_MISMATCH,
                             f"{_gv(group, variation, qualifier)} needs a size prefix"))
            break
        if end is None or end > n:
            headers.append(ObjectHeader(group, variation, qualifier, start, stop, count,
                                        prefix_width))
            gv = _gv(group, variation, qualifier)
            problems.append((DNP3Anomaly.TRUNCATED_FRAGMENT, f"{gv} objects" if end is None
                             else f"{gv} needs {end - pos} bytes"))
            break
        header = ObjectHeader(group, variation, qualifier, start, stop, count, prefix_width)
        decoder = decoders.get(group)
        if decoder is not None:
            if key != 12 << 8 | 3:  # g12v3, the pattern mask, has nothing to decode
                details = decoder(frag, pos, header, fc)
                if details:  # the header is not out yet: this completes its construction
                    _SET_DETAILS(header, details)
        elif group == 60 and 1 <= variation <= 4:
            header = ObjectHeader(group, variation, qualifier, start, stop, count,
                                  prefix_width, (ClassData(variation - 1),))
        headers.append(header)
        pos = end
    return tuple(headers)


def _walk_sized(
    frag: bytes, pos: int, objects: int, prefix_width: int, size_prefix: bool, size: int
) -> int | None:
    """End offset of ``objects`` objects whose size is read from the wire, or None."""
    n = len(frag)
    unpack = _INT[prefix_width].unpack_from if prefix_width else None
    for _ in range(objects):
        if pos + prefix_width > n:
            return None
        if size_prefix and unpack is not None:
            pos += prefix_width + unpack(frag, pos)[0]
            continue
        pos += prefix_width
        if size == ATTRIBUTE:  # data type, length, value
            if pos + 2 > n:
                return None
            pos += 2 + frag[pos + 1]
        elif size == STATUS_LIST:  # delay(4), count(1), count * (code, length, text)
            if pos + 5 > n:
                return None
            entries = frag[pos + 4]
            pos += 5
            for _ in range(entries):
                if pos + 2 > n:
                    return None
                pos += 2 + frag[pos + 1]
        else:
            pos += size
    return pos if pos <= n else None


# ---------------------------------------------------------------- details


def _objects(
    frag: bytes, pos: int, header: ObjectHeader, size: int
) -> list[tuple[int | None, int]]:
    """(point index, data offset) of fixed-size objects, at most MAX_DETAILS."""
    width = header.prefix_size
    count = min(header.count or 0, MAX_DETAILS)
    out: list[tuple[int | None, int]] = []
    if width and header.qualifier & 0x70 <= 0x30:
        unpack = _INT[width].unpack_from
        for i in range(count):
            at = pos + i * (width + size)
            out.append((unpack(frag, at)[0], at + width))
    else:
        first = header.start
        for i in range(count):
            out.append((None if first is None else first + i, pos + i * size))
    return out


def _decode_crob(frag: bytes, pos: int, header: ObjectHeader, fc: int) -> tuple[Detail, ...]:
    out: list[Detail] = []
    if header.prefix_size and header.qualifier & 0x70 > 0x30:
        return ()
    for index, at in _objects(frag, pos, header, 11):
        code, count, on, off, status = _CROB.unpack_from(frag, at)
        op = code & 0x0F
        out.append(
            ControlRelayOutput(
                index,
                code,
                _OP_TYPES[op] if op < len(_OP_TYPES) else f"UNDEFINED_{op}",
                _TCC[code >> 6],
                bool(code & 0x20),
                bool(code & 0x10),
                count,
                on,
                off,
                status,
            )
        )
    return tuple(out)


_ANALOG = {1: (_I32S, 5), 2: (_I16S, 3), 3: (_F32S, 5), 4: (_F64S, 9)}


def _decode_analog_output(
    frag: bytes, pos: int, header: ObjectHeader, fc: int
) -> tuple[Detail, ...]:
    layout = _ANALOG.get(header.variation)
    if layout is None or (header.prefix_size and header.qualifier & 0x70 > 0x30):
        return ()
    struct, size = layout
    out: list[Detail] = []
    for index, at in _objects(frag, pos, header, size):
        value, status = struct.unpack_from(frag, at)
        out.append(AnalogOutput(index, float(value), status))
    return tuple(out)


# g50 records: the 48-bit time as a u32 and a u16, then the interval (v2, v4) and its
# units (v4); by index-prefix width (0, 1, 2, 4), the prefix skipped as pad bytes, so
# one ``iter_unpack`` reads a whole header's records.
_TIME_FORMATS = {1: "IH", 2: "IHI", 3: "IH", 4: "IHIB"}
_TIME = {
    width: {v: Struct(f"<{width}x{fmt}") for v, fmt in _TIME_FORMATS.items()}
    for width in (0, 1, 2, 4)
}


def _decode_time(frag: bytes, pos: int, header: ObjectHeader, fc: int) -> tuple[Detail, ...]:
    width = header.prefix_size
    record = _TIME[width].get(header.variation)
    if record is None or (width and header.qualifier & 0x70 > 0x30):
        return ()
    count = min(header.count or 0, MAX_DETAILS)
    records = record.iter_unpack(frag[pos : pos + count * record.size])
    v = header.variation
    if v == 2:
        return tuple(TimeValue(lo | hi << 32, interval) for lo, hi, interval in records)
    if v == 4:
        return tuple(TimeValue(lo | hi << 32, interval, units)
                     for lo, hi, interval, units in records)
    return tuple(TimeValue(lo | hi << 32) for lo, hi in records)


def _decode_iin(frag: bytes, pos: int, header: ObjectHeader, fc: int) -> tuple[Detail, ...]:
    if header.start is None or header.prefix_size:
        return ()
    out: list[Detail] = []
    for i in range(min(header.count or 0, MAX_DETAILS)):
        out.append(IinWrite(header.start + i, bool(frag[pos + (i >> 3)] >> (i & 7) & 1)))
    return tuple(out)


def _sized_objects(frag: bytes, pos: int, header: ObjectHeader) -> list[bytes]:
    """The bodies of size-prefixed objects (the walker already checked the bounds)."""
    width = header.prefix_size
    if not width or header.qualifier & 0x70 <= 0x30:
        return []
    unpack = _INT[width].unpack_from
    out = []
    for _ in range(min(header.count or 0, MAX_DETAILS)):
        size = unpack(frag, pos)[0]
        pos += width
        out.append(frag[pos : pos + size])
        pos += size
    return out


def _text(data: bytes) -> str:
    return data[:255].decode("utf-8", "replace")


def _file_object(variation: int, body: bytes, fc: int) -> FileObject | None:
    n = len(body)
    if variation == 2 and n >= 12:  # authentication: the user name only, never the password
        offset, size = _U16.unpack_from(body, 0)[0], _U16.unpack_from(body, 2)[0]
        return FileObject(2, "AUTHENTICATE", _text(body[offset : offset + size]))
    if variation == 3 and n >= 26:  # file command
        offset, size = _U16.unpack_from(body, 0)[0], _U16.unpack_from(body, 2)[0]
        mode = _U16.unpack_from(body, 20)[0]
        mode_name = _FILE_MODES[mode] if mode < 4 else f"MODE_{mode}"
        if fc == 27:
            operation = "DELETE"
        elif fc == 25:
            operation = "OPEN_" + mode_name
        else:
            operation = "COMMAND_" + mode_name
        name = _text(body[offset : offset + size])
        return FileObject(3, operation, name, size=_U32.unpack_from(body, 16)[0])
    if variation == 4 and n >= 13:  # file command status
        operation = {26: "CLOSE", 30: "ABORT"}.get(fc, "COMMAND_STATUS")
        handle, size = _U32.unpack_from(body, 0)[0], _U32.unpack_from(body, 4)[0]
        return FileObject(4, operation, None, handle, size, status=body[12])
    if variation == 5 and n >= 8:  # file transport: handle, block (bit 31 = last), data
        handle, block = _U32.unpack_from(body, 0)[0], _U32.unpack_from(body, 4)[0]
        return FileObject(5, "TRANSPORT", None, handle, n - 8, block)
    if variation == 6 and n >= 9:  # file transport status
        handle, block = _U32.unpack_from(body, 0)[0], _U32.unpack_from(body, 4)[0]
        return FileObject(6, "TRANSPORT_STATUS", None, handle, None, block, body[8])
    if variation == 7 and n >= 20:  # file descriptor
        offset, size = _U16.unpack_from(body, 0)[0], _U16.unpack_from(body, 2)[0]
        name = _text(body[offset : offset + size])
        return FileObject(7, "DESCRIPTOR", name, size=_U32.unpack_from(body, 6)[0])
    if variation == 8:  # file specification string
        return FileObject(8, "SPECIFICATION", _text(body))
    if variation == 1:
        return FileObject(1, "IDENTIFIER")
    return None


def _decode_file(frag: bytes, pos: int, header: ObjectHeader, fc: int) -> tuple[Detail, ...]:
    out: list[Detail] = []
    for body in _sized_objects(frag, pos, header):
        item = _file_object(header.variation, body, fc)
        if item is not None:
            out.append(item)
    return tuple(out)


def _attribute_value(data_type: int, value: bytes) -> str | int | float | None:
    if data_type == 1:  # VSTR
        return _text(value)
    if data_type == 2 and len(value) <= 8:  # UINT
        return int.from_bytes(value, "little")
    if data_type == 3 and len(value) <= 8:  # INT
        return int.from_bytes(value, "little", signed=True)
    if data_type == 4 and len(value) == 4:  # FLT
        return float(Struct("<f").unpack(value)[0])
    if data_type == 4 and len(value) == 8:
        return float(Struct("<d").unpack(value)[0])
    return value.hex() if value else None


def _decode_attributes(frag: bytes, pos: int, header: ObjectHeader, fc: int) -> tuple[Detail, ...]:
    if header.prefix_size:
        return ()
    out: list[Detail] = []
    for _ in range(min(header.count or 0, MAX_DETAILS)):
        data_type, length = frag[pos], frag[pos + 1]
        value = frag[pos + 2 : pos + 2 + length]
        out.append(DeviceAttribute(header.variation, data_type, _attribute_value(data_type, value)))
        pos += 2 + length
    return tuple(out)


_DECODERS = {
    0: _decode_attributes,
    12: _decode_crob,
    41: _decode_analog_output,
    50: _decode_time,
    70: _decode_file,
    80: _decode_iin,
}

