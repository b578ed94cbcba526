"""Writes and checks ``rules/checked.sha256`` (``make rules-manifest``; see ``checked``).

Apart from ``checked`` because it runs the loader, which imports ``checked``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mamori.sensor.detection import checked
from mamori.sensor.detection.loader import (
    SCHEMA_FILE,
    SHIPPED_RULES,
    RuleError,
    load_rules,
    pack_files,
)
from mamori.sensor.detection.settings import set_names


def expected(rules_dir: Path) -> str:
    """The manifest ``rules_dir``'s packs should have, after checking all of them in full
    (raises the loader's ``RuleError`` when one fails)."""
    load_rules([rules_dir], set_names(), trust_checked=False)
    packs = [(p.name, p.read_text(encoding="utf-8")) for p in pack_files([rules_dir])]
    return checked.render(SCHEMA_FILE.read_text(encoding="utf-8"), packs)


def main(argv: list[str]) -> int:
    """Write the shipped packs' manifest; with ``--check``, only say whether it is current."""
    try:
        want = expected(SHIPPED_RULES)
    except RuleError as err:
        print(f"shipped rule packs do not pass:\n{err}", file=sys.stderr)
        return 1
    path = SHIPPED_RULES / checked.MANIFEST_NAME
    if argv == ["--check"]:
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current != want:
            print(f"{path.name} is stale: run `make rules-manifest`", file=sys.stderr)
            return 1
        return 0
    path.write_text(want, encoding="utf-8")
    return 0
