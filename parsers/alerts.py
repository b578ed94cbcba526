"""The alert record: what the detection engine raises, the store keeps and the forwarder sends.

An alert is *aggregated*: the same rule on the same pair within the dedup window
raises ``count`` and moves ``last_ts`` instead of making a new record, so a looping
write cannot make a million alerts. ``key`` identifies that aggregate (rule and
peers); ``id`` is the store's number for it.

It carries metadata only: peers, function codes, object headers, counts, the rule
that fired. Register and point values stay out of ``evidence`` unless the rule is
about a value and the site allows it (principle 5 of the architecture).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Any

from mamori.parsers.fastinit import python_class


@python_class  # mypyc compiles no subclass of str (a Python class, compiled or not)
class Pseudonym(str):
    """A keyed pseudonym standing where an address was (``pn:`` + 24 hex digits).

    A str so that it fits every address field and JSON as it is; its ``pn:`` prefix
    parses as no IP address, MAC or number, so no consumer mistakes it for one. On
    the wire it is a typed msgpack ext (``mamori.parsers.wire``), never a plain string.
    """

    PREFIX = "pn:"

    @classmethod
    def from_digest(cls, digest: bytes) -> Pseudonym:
        return cls(cls.PREFIX + digest.hex())


class Severity(IntEnum):
    INFO = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @classmethod
    def parse(cls, text: str) -> Severity:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            names = ", ".join(m.name.lower() for m in cls)
            raise ValueError(f"{text!r} is not a severity ({names})") from None

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Alert:
    rule: str  # stable rule id, e.g. "mamori.modbus.listen_only"
    precursor: str  # catalogue id, e.g. "M1"
    severity: Severity
    attack: tuple[str, ...]  # ATT&CK for ICS ids, legacy and v19, e.g. ("T0814", "T0804")
    title: str
    proto: str  # "modbus" | "dnp3" | "tcp" | "ip" | "sensor"
    first_ts: float
    last_ts: float
    count: int = 1
    src: str | None = None
    sport: int | None = None
    dst: str | None = None
    dport: int | None = None
    unit: int | Pseudonym | None = None  # Modbus unit id (a pseudonym at a collector)
    link_src: int | Pseudonym | None = None  # DNP3 link addresses
    link_dst: int | Pseudonym | None = None
    evidence: Mapping[str, Any] = field(default_factory=dict)  # fc, sub, objects, iin, ...
    id: int = 0  # the store's number; 0 until stored

    @property
    def key(self) -> tuple[Any, ...]:
        """What makes two alerts "the same" for aggregation: rule and peers."""
        return (self.rule, self.proto, self.src, self.dst, self.dport, self.unit,
                self.link_src, self.link_dst)

    def bumped(self, ts: float, count: int = 1) -> Alert:
        return replace(self, last_ts=max(self.last_ts, ts), count=self.count + count)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (``--alerts OUT.jsonl``, ``mamori alerts --json``)."""
        return {
            "id": self.id, "rule": self.rule, "precursor": self.precursor,
            "severity": self.severity.label, "attack": list(self.attack), "title": self.title,
            "proto": self.proto, "ts": self.first_ts, "first_ts": self.first_ts,
            "last_ts": self.last_ts, "count": self.count, "src": self.src, "sport": self.sport,
            "dst": self.dst, "dport": self.dport, "unit": self.unit, "link_src": self.link_src,
            "link_dst": self.link_dst, "evidence": dict(self.evidence),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Alert:
        return cls(
            rule=str(data["rule"]), precursor=str(data["precursor"]),
            severity=Severity.parse(str(data["severity"])),
            attack=tuple(str(a) for a in data.get("attack", ())), title=str(data["title"]),
            proto=str(data["proto"]), first_ts=float(data["first_ts"]),
            last_ts=float(data["last_ts"]), count=int(data["count"]), src=data.get("src"),
            sport=data.get("sport"), dst=data.get("dst"), dport=data.get("dport"),
            unit=data.get("unit"), link_src=data.get("link_src"),
            link_dst=data.get("link_dst"), evidence=dict(data.get("evidence") or {}),
            id=int(data.get("id") or 0),
        )
