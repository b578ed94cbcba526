"""Readable names for what the page shows: function codes, sub-functions, exceptions,
DNP3 object groups, internal indications and identity keys.

The codes' names are defined once, in ``parsers/`` (snake_case for Modbus, IEEE 1815
upper case for DNP3, because they travel into JSON and rule packs); this module only
turns them into the words an operator reads ("Write Single Register", "Cold Restart").
Labels are those of the stored pair documents, as in :mod:`mamori.sensor.web.fcclass`:
``"6"``, ``"8/4"`` (FC 8 sub-function 4), ``"43/14"`` (MEI type 14), ``"g12"``.
"""

from __future__ import annotations

import re
from typing import Final

from mamori.parsers.dnp3.events import FUNCTION_NAMES as DNP3_FUNCTION_NAMES
from mamori.parsers.dnp3.objects import OBJECT_TABLE
from mamori.parsers.modbus.tables import (
    DEVICE_ID_OBJECT_NAMES,
    DIAGNOSTIC_SUB_FUNCTIONS,
    EXCEPTION_NAMES,
    MEI_CANOPEN_GENERAL_REFERENCE,
    MEI_READ_DEVICE_ID,
)
from mamori.parsers.modbus.tables import FUNCTION_NAMES as MODBUS_FUNCTION_NAMES

# Words the tables abbreviate or that title case gets wrong.
_WORDS: Final[dict[str, str]] = {
    "nr": "No Ack", "immed": "Immediate", "appl": "Application", "config": "Configuration",
    "req": "Request", "resp": "Response", "umas": "UMAS", "id": "ID", "ascii": "ASCII",
    "iop": "IOP", "fifo": "FIFO", "plus": "Plus", "u84": "U84", "584": "584", "984": "984",
}

_SMALL: Final = frozenset({"and", "or", "of", "at", "to"})

MEI_NAMES: Final[dict[int, str]] = {
    MEI_READ_DEVICE_ID: "Read Device Identification",
    MEI_CANOPEN_GENERAL_REFERENCE: "CANopen General Reference",
}

# IEEE 1815 group 0 device attributes (the variation is the attribute number).
DNP3_ATTRIBUTE_NAMES: Final[dict[int, str]] = {
    209: "Secure authentication version",
    210: "Security statistics per association",
    211: "User-specific attributes supported",
    212: "Master-defined data set prototypes",
    213: "Outstation-defined data set prototypes",
    214: "Master-defined data sets",
    215: "Outstation-defined data sets",
    240: "Maximum transmit fragment size",
    241: "Maximum receive fragment size",
    242: "Software version",
    243: "Hardware version",
    244: "Owner name",
    245: "Location",
    246: "User-assigned ID",
    247: "Device name",
    248: "Serial number",
    249: "DNP3 subset and conformance",
    250: "Product name and model",
    252: "Manufacturer",
}

# ``iin`` is IIN1 << 8 | IIN2 (mamori.parsers.dnp3.events.DNP3Application).
IIN_BITS: Final[dict[int, str]] = {
    8: "IIN1.0 all stations", 9: "IIN1.1 class 1 events", 10: "IIN1.2 class 2 events",
    11: "IIN1.3 class 3 events", 12: "IIN1.4 need time", 13: "IIN1.5 local control",
    14: "IIN1.6 device trouble", 15: "IIN1.7 device restart",
    0: "IIN2.0 function code not supported", 1: "IIN2.1 object unknown",
    2: "IIN2.2 parameter error", 3: "IIN2.3 event buffer overflow",
    4: "IIN2.4 already executing", 5: "IIN2.5 configuration corrupt",
    6: "IIN2.6 reserved", 7: "IIN2.7 reserved",
}


def _title(name: str) -> str:
    words = [w for w in re.split(r"[_\s]+", name.strip().lower()) if w]
    return " ".join(w if i and w in _SMALL else _WORDS.get(w, w.capitalize())
                    for i, w in enumerate(words))


def fc_name(proto: str, fc: int) -> str:
    """``("modbus", 6)`` → "Write Single Register"; "" for a code with no name."""
    if proto == "modbus":
        name = MODBUS_FUNCTION_NAMES.get(fc & 0x7F)
        if name is None:
            return ""
        return _title(name) + (" (exception)" if fc & 0x80 else "")
    if proto == "dnp3":
        dnp3 = DNP3_FUNCTION_NAMES.get(fc)
        return _title(dnp3) if dnp3 is not None else ""
    return ""


def sub_name(fc: int, sub: int) -> str:
    """Modbus FC 8 sub-function or FC 43 MEI type name; "" if none."""
    if fc == 8:
        name = DIAGNOSTIC_SUB_FUNCTIONS.get(sub)
        return _title(name) if name is not None else ""
    if fc == 43:
        return MEI_NAMES.get(sub, "")
    return ""


def exception_name(code: int) -> str:
    name = EXCEPTION_NAMES.get(code)
    return _title(name) if name is not None else ""


def group_name(group: int) -> str:
    """DNP3 object group name ("binary output command"); "" if not in IEEE 1815's table."""
    entry = OBJECT_TABLE.get(group)
    return entry[0] if entry else ""


def iin_names(iin: int) -> list[str]:
    """The internal-indication bits set in ``iin``, IIN1 first."""
    return [IIN_BITS[b] for b in (*range(8, 16), *range(0, 8)) if iin >> b & 1]


def label_name(proto: str, label: str) -> str:
    """A pair document's function label in words.

    ``"3"`` → "Read Holding Registers", ``"8/4"`` → "Diagnostics: Force Listen Only
    Mode", ``"43/14"`` → "Encapsulated Interface Transport: Read Device
    Identification", ``"g12"`` → "Objects: binary output command".
    """
    if label.startswith("g") and label[1:].isdigit():
        name = group_name(int(label[1:]))
        return f"Objects: {name}" if name else "Objects"
    head, _, tail = label.partition("/")
    if not head.isdigit():
        return ""
    name = fc_name(proto, int(head))
    if tail.isdigit():
        sub = sub_name(int(head), int(tail))
        if sub:
            return f"{name}: {sub}" if name else sub
    return name


def identity_label(key: str) -> tuple[str, str]:
    """An inventory identity key as (where, what): ``"unit1.VendorName"`` →
    ("unit 1", "Vendor name"); ``"link10.g0v252"`` → ("link 10", "Manufacturer")."""
    m = re.fullmatch(r"unit(\d+)\.(\w+)", key)
    if m is not None:
        name = m.group(2)
        if name == "server_id":
            what = "Server ID (FC 17)"
        elif name == "server_id_data":
            what = "Server ID data (FC 17)"
        else:
            known = name in DEVICE_ID_OBJECT_NAMES.values()
            what = re.sub(r"(?<!^)(?=[A-Z])", " ", name).capitalize() if known else name
        return f"unit {m.group(1)}", what
    m = re.fullmatch(r"link(\d+)\.g0v(\d+)", key)
    if m is not None:
        attr = int(m.group(2))
        return f"link {m.group(1)}", DNP3_ATTRIBUTE_NAMES.get(attr, f"attribute g0v{attr}")
    return "", key
