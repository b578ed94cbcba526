"""The shipped rule packs known to pass the schema, so that start-up need not walk them again.

Why: every ``mamori replay``, daemon start and rule reload loads the shipped packs,
and checking them against ``rules/schema.yaml`` with ``jsonschema`` cost about a
quarter of the command's whole start-up: 0.086 s to import it (with attrs,
referencing and rpds) and 0.02 s to walk the 85 rules, against 0.35 s for a replay
of a tiny capture. The shipped packs are the same text on every sensor, and the
tests check each against the schema with ``jsonschema``. So the package carries the
SHA-256 of each pack's text with that of the schema they were checked under
(``rules/checked.sha256``), and the loader skips the schema walk for a pack whose
text has one of those digests, when the schema's text still has the recorded one.
Every other pack, an operator's own, a signed bundle's, a shipped pack edited in
place, is checked in full, and so is everything when the manifest is missing, does
not parse, or was made for another schema. The semantic checks run on every pack
whatever the manifest says, and ``mamori rules check`` ignores it.

The manifest, written by :func:`main` (``make rules-manifest``) once the shipped
packs passed the full check::

    # comment lines
    schema <sha256 of schema.yaml>
    <sha256 of a pack>  <its file name>

A digest covers the text as the loader reads it (UTF-8, newlines translated), so
what is trusted is exactly what is parsed.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterable
from pathlib import Path

MANIFEST_NAME = "checked.sha256"
_HEADER = ("# SHA-256 of the shipped rule packs that pass schema.yaml, and of that schema.\n"
           "# Written by `make rules-manifest`; the loader skips the schema walk for them.\n")


def digest(text: str) -> str:
    """The SHA-256 of ``text`` as UTF-8, in hex."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def trusted(rules_dir: Path, schema_text: str) -> frozenset[str]:
    """The digests of packs known to pass ``schema_text``; empty unless the manifest in
    ``rules_dir`` is readable, well formed and was written for this very schema."""
    try:
        lines = (rules_dir / MANIFEST_NAME).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return frozenset()
    entries = [line.split() for line in lines if line.strip() and not line.startswith("#")]
    if not entries or entries[0] != ["schema", digest(schema_text)]:
        return frozenset()
    packs = entries[1:]
    if any(len(entry) != 2 or not _is_digest(entry[0]) for entry in packs):
        return frozenset()
    return frozenset(entry[0] for entry in packs)


def _is_digest(word: str) -> bool:
    return len(word) == 64 and all(c in "0123456789abcdef" for c in word)


def render(schema_text: str, packs: Iterable[tuple[str, str]]) -> str:
    """The manifest for ``packs`` (file name, text), all of which passed ``schema_text``."""
    body = "".join(f"{digest(text)}  {name}\n" for name, text in sorted(packs))
    return f"{_HEADER}schema {digest(schema_text)}\n{body}"


def expected(rules_dir: Path) -> str:
    """The manifest ``rules_dir``'s packs should have, after checking all of them in full
    (raises the loader's ``RuleError`` when one fails)."""
    # Imported here, not at the top: the loader imports this module.
    from mamori.sensor.detection.loader import SCHEMA_FILE, load_rules, pack_files
    from mamori.sensor.detection.settings import set_names

    load_rules([rules_dir], set_names(), trust_checked=False)
    packs = [(p.name, p.read_text(encoding="utf-8")) for p in pack_files([rules_dir])]
    return render(SCHEMA_FILE.read_text(encoding="utf-8"), packs)


def main(argv: list[str]) -> int:
    """Write the shipped packs' manifest; with ``--check``, only say whether it is current."""
    from mamori.sensor.detection.loader import SHIPPED_RULES, RuleError

    try:
        want = expected(SHIPPED_RULES)
    except RuleError as err:
        print(f"shipped rule packs do not pass:\n{err}", file=sys.stderr)
        return 1
    path = SHIPPED_RULES / MANIFEST_NAME
    if argv == ["--check"]:
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current != want:
            print(f"{path.name} is stale: run `make rules-manifest`", file=sys.stderr)
            return 1
        return 0
    path.write_text(want, encoding="utf-8")
    return 0
