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

The manifest, written by ``checked_write`` (``make rules-manifest``) once the shipped
packs passed the full check::

    # comment lines
    schema <sha256 of schema.yaml>
    <sha256 of a pack>  <its file name>

A digest covers the text as the loader reads it (UTF-8, newlines translated), so
what is trusted is exactly what is parsed.
"""

from __future__ import annotations

import hashlib
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
