"""Events the detection layer makes itself: baseline deviations, protocol-state findings, health.

The parsers describe single messages; some precursors only show against
memory (a pair never seen while learning, a Select with no Operate, a polling
cycle that stopped). The inventory and the engine turn those findings into
:class:`DerivedEvent` objects and run them through the same rules as parser
events, so B1-B5, M8, M9, D15 and S3 stay data in ``rules/`` like everything
else. A rule matches them with ``proto: baseline|dnp3|sensor``, ``type:
deviation|anomaly|health`` and ``anomaly: KIND``; the link-layer findings of
:mod:`mamori.sensor.detection.aitm` carry ``proto: network``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class DerivedKind(Enum):
    """Each member's value is ``(proto, type)``; the name is what rules carry."""

    # value: (proto, type, catalogue entry); the entry also keeps values unique
    NEW_PAIR = ("baseline", "deviation", "B1")
    NEW_FUNCTION = ("baseline", "deviation", "B2")  # fc, FC 8 sub-function or DNP3 group
    ADDRESS_RANGE = ("baseline", "deviation", "B3")  # and M9 for write codes
    PERIOD_CHANGE = ("baseline", "deviation", "B4")  # a cyclic exchange sped up or slowed
    PERIOD_STOPPED = ("baseline", "deviation", "B4-stop")  # a cyclic exchange went silent
    IDENTITY_CHANGED = ("baseline", "deviation", "B5")
    NEW_MASTER = ("baseline", "deviation", "M8")
    LINK_BINDING = ("baseline", "deviation", "D15")
    ADDRESS_SWEEP = ("modbus", "anomaly", "M5")  # reads walking up the address space
    NEW_UNIT = ("modbus", "anomaly", "M6")  # first request from a client to a unit id
    VALUE_FLIP = ("modbus", "anomaly", "M11")  # a single write changed a point's value
    OPERATE_WITHOUT_SELECT = ("dnp3", "anomaly", "D7")
    SELECT_WITHOUT_OPERATE = ("dnp3", "anomaly", "D7-select")  # replaced, or timed out
    UNSOLICITED_AFTER_DISABLE = ("dnp3", "anomaly", "D9")
    UNSOLICITED_STORM = ("dnp3", "anomaly", "D9-storm")  # against the learned rate
    SILENCE = ("sensor", "health", "S3")
    # floods and replays: sensor/detection/floods.py and the inventory's request rates
    REQUEST_FLOOD = ("baseline", "deviation", "B6")  # a pair's request rate past its norm
    FRAGMENT_REPLAY = ("dnp3", "anomaly", "D16")  # a request recorded from another host
    SESSION_REPLAY = ("dnp3", "anomaly", "D16-session")  # an old request, seq gone back
    SEQUENCE_ANOMALY = ("dnp3", "anomaly", "D17")  # seq reused or gone back, not a retry
    CONFIRM_UNMATCHED = ("dnp3", "anomaly", "D18")  # a CONFIRM of nothing outstanding
    IDENTICAL_WRITE = ("modbus", "anomaly", "M16")  # a write repeating the one before
    DETECTION_STATE_FULL = ("sensor", "health", "S7")  # a flood/replay table hit its cap
    # link layer (adversary-in-the-middle, ARP host discovery): sensor/detection/aitm.py
    ARP_REQUEST = ("network", "anomaly", "N3")  # one per request; rules count targets
    MAC_CHANGED = ("network", "anomaly", "N4")  # an ICS asset's IP claimed by another MAC
    DUPLICATE_IP = ("network", "anomaly", "N5")  # owner and rival both claim the IP
    ARP_UNSOLICITED = ("network", "anomaly", "N6")  # unasked or gratuitous reply
    FLOW_MAC_CHANGED = ("network", "anomaly", "N7")  # an ICS flow's MAC pair changed

    @property
    def proto(self) -> str:
        return str(self.value[0])

    @property
    def type(self) -> str:
        return str(self.value[1])


@dataclass(frozen=True, slots=True)
class DerivedEvent:
    """One finding. Peers use the same names as alerts; ``detail`` is for humans."""

    ts: float
    kind: DerivedKind
    src: str | None = None
    sport: int | None = None
    dst: str | None = None
    dport: int | None = None
    unit: int | None = None
    link_src: int | None = None
    link_dst: int | None = None
    fc: int | None = None
    sub: int | None = None
    address: int | None = None
    quantity: int | None = None
    detail: str = ""
