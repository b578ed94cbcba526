"""Detection: rule packs (``rules/``) run over parser events, with inventory and baseline.

Public API: :class:`Detector` (engine), :func:`load_rules` / :class:`RuleError`
(loader with located errors), :class:`Inventory` (assets, pairs, baseline),
:class:`DerivedEvent` (deviations and health findings the rules match).
"""

from sensor.detection.derived import DerivedEvent, DerivedKind
from sensor.detection.engine import Detector
from sensor.detection.inventory import BaselineError, BaselineState, Inventory
from sensor.detection.loader import SHIPPED_RULES, RuleError, RuleProblem, load_rules
from sensor.detection.model import Rule

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
