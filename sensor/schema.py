"""The whole configuration schema, assembled from every capability's own declarations.

Each capability lists its keys as data (``OPTIONS``) and its cross-key checks
(``CHECKS``) in a module that registers nothing; this is the one place that puts
them together, in this fixed order, which is the order of ``check-config --dump``
and of the flags in ``--help``. Importing a module never changes the schema: every
command knows every key, whatever it happened to import.

The modules named here import only ``mamori.sensor.configkit`` (and their own
capability's pieces), never ``mamori.sensor.config``, which imports this module:
``tests/test_layering.py`` holds that line.
"""

from __future__ import annotations

from collections.abc import Iterable

from mamori.sensor import configkit
from mamori.sensor.alerting import settings as store_settings
from mamori.sensor.alerting import siem
from mamori.sensor.capture import packet_evidence
from mamori.sensor.configkit import CrossCheck, Option
from mamori.sensor.daemon import settings as daemon_settings
from mamori.sensor.detection import settings as detection_settings
from mamori.sensor.forwarding import options as forwarding_options
from mamori.sensor.metrics import settings as metrics_settings
from mamori.sensor.web import settings as web_settings


def assemble(*parts: Iterable[Option]) -> tuple[Option, ...]:
    """The options in order; a key declared twice is a programming error, said at once."""
    out: list[Option] = []
    seen: set[tuple[str, str]] = set()
    for part in parts:
        for option in part:
            if (option.section, option.key) in seen:
                raise AssertionError(f"duplicate config option {option.name}")
            seen.add((option.section, option.key))
            out.append(option)
    return tuple(out)


SCHEMA: tuple[Option, ...] = assemble(
    configkit.CORE_OPTIONS,  # [sensor] identity and state_dir, [ports], [limits]
    siem.OPTIONS,  # [output], and [collect]'s SIEM outputs
    metrics_settings.OPTIONS,  # [metrics]
    daemon_settings.OPTIONS,  # [capture], [sensor] user, [health]
    web_settings.OPTIONS,  # [web]
    packet_evidence.OPTIONS,  # [packets]
    detection_settings.OPTIONS,  # [detection], [sets], [maintenance]
    store_settings.OPTIONS,  # [store]
    forwarding_options.OPTIONS,  # [sensor] instance, [forward], [collect]
)

CHECKS: tuple[CrossCheck, ...] = (
    *configkit.CORE_CHECKS,
    *siem.CHECKS,
    *packet_evidence.CHECKS,
    *forwarding_options.CHECKS,
)
