"""Detection: rule packs (``rules/``) run over parser events, with inventory and baseline.

Public API: :class:`Detector` (engine), :func:`load_rules` / :class:`RuleError`
(loader with located errors), :class:`Inventory` (assets, pairs, baseline),
:class:`DerivedEvent` (deviations and health findings the rules match).
"""

from mamori.sensor.detection.derived import DerivedEvent, DerivedKind
from mamori.sensor.detection.engine import Detector
from mamori.sensor.detection.inventory import BaselineError, BaselineState, Inventory
from mamori.sensor.detection.loader import SHIPPED_RULES, RuleError, RuleProblem, load_rules
from mamori.sensor.detection.model import Rule

__all__ = [
    "SHIPPED_RULES",
    "BaselineError",
    "BaselineState",
    "DerivedEvent",
    "DerivedKind",
    "Detector",
    "Inventory",
    "Rule",
    "RuleError",
    "RuleProblem",
    "load_rules",
]
