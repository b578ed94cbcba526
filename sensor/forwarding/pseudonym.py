"""Keyed pseudonyms: HMAC-SHA256 of an address under a site-held secret, truncated.

A destination that must correlate a repeat attacker across sites, without learning
each site's addressing, gets pseudonyms instead of addresses. The same value under
the same key always gives the same pseudonym (repeats correlate); another key gives
unrelated ones (two destinations cannot join their data). Without the key a
pseudonym cannot be reversed, not even by trying all 256 Modbus unit ids: that is
why a keyed MAC and not a plain hash.

Inputs are domain-separated and canonical, so ``10.0.0.5`` as a source field and
the same address in evidence text give one pseudonym, while unit 5 and link 5 give
two. The sensor keeps what it pseudonymised (bounded, in its state) so that
``mamori audit resolve`` can re-identify a pseudonym for the site, on the box.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import stat
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from mamori.parsers.wire import PSEUDONYM_BYTES

KEY_BYTES = 32
_MAX_KEY_FILE = 4096
MAC = re.compile(r"^[0-9A-Fa-f]{2}([:-])(?:[0-9A-Fa-f]{2}\1){4}[0-9A-Fa-f]{2}$")


class PseudonymKeyError(OSError):
    """The key file is unreadable, unsafe or malformed; the message names the file.

    An OSError: what every caller that starts a forwarder already reports cleanly."""


def key_problem(path: Path) -> str | None:
    """Why ``path`` cannot serve as a pseudonym key (None: usable, or creatable).

    What start-up would find, for ``check-config``: a missing file is fine (it is
    created); an existing one must be a private regular file holding a key.
    """
    try:
        if not path.exists():
            parent = next((p for p in path.parents if p.exists()), None)
            if parent is not None and not parent.is_dir():
                return f"{path}: cannot create: {parent} is a file, not a directory"
            return None
        load_key(path)
    except PseudonymKeyError as err:
        return str(err)
    except OSError as err:
        return f"{path}: {err.strerror or err}"
    return None


def load_key(path: Path, *, create: bool = False) -> bytes:
    """The key in ``path`` (64 hex digits); with ``create``, made (0600) if missing.

    Created with ``O_EXCL`` and mode 0600 from the start, never readable by others;
    an existing key readable by group or others is refused, as CURVE secrets are.
    """
    if create and not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = secrets.token_bytes(KEY_BYTES)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first: read theirs
        except OSError as err:
            raise PseudonymKeyError(f"{path}: cannot create the pseudonym key: "
                                    f"{err.strerror or err}") from None
        else:
            with os.fdopen(fd, "w", encoding="ascii") as out:
                out.write("# mamori pseudonym key: keep private; losing it breaks "
                          "correlation, leaking it re-identifies\n" + key.hex() + "\n")
            os.chmod(path, 0o600)
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise PseudonymKeyError(f"{path}: not a regular file, not a pseudonym key")
        with path.open("rb") as stream:
            data = stream.read(_MAX_KEY_FILE + 1)
    except PseudonymKeyError:
        raise
    except OSError as err:
        raise PseudonymKeyError(f"{path}: cannot read the pseudonym key: "
                                f"{err.strerror or err}") from None
    if mode & 0o077:
        raise PseudonymKeyError(f"{path}: pseudonym key is accessible by others (chmod 600)")
    lines = [ln.strip() for ln in data[:_MAX_KEY_FILE].decode("ascii", "replace").splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    if len(data) > _MAX_KEY_FILE or len(lines) != 1 or not re.fullmatch(
            r"[0-9a-fA-F]{64,128}", lines[0]):
        raise PseudonymKeyError(f"{path}: not a pseudonym key (one line of 64 hex digits)")
    return bytes.fromhex(lines[0])


def key_id(key: bytes) -> str:
    """A short public fingerprint of a key: policies hash it, the resolve map keeps it."""
    return hashlib.sha256(b"mamori pseudonym key id\0" + key).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Mapping:
    """One pseudonym and what it stands for (kept on the box for ``audit resolve``)."""

    pseudonym: str  # hex
    key_id: str
    domain: str  # ip, mac, unit, link, identity
    value: str


class Pseudonymiser:
    """Pseudonyms under one key; hands new mappings over (``take_new``) to be kept.

    ``remembered`` bounds the in-memory set of values already handed over, so a scan
    of a /16 costs a bounded amount of memory; one forgotten is merely handed over
    (and stored) again. A value in constant use is handed over again once
    ``refresh_after`` other mappings have been, so that the bounded map on disk,
    which drops the least recently seen first, never drops the hosts in use.
    """

    def __init__(self, key: bytes, remembered: int = 65536,
                 refresh_after: int = 50_000) -> None:
        self._key = key
        self.key_id = key_id(key)
        self._known: OrderedDict[tuple[str, bytes], tuple[bytes, int]] = OrderedDict()
        self._remembered = remembered
        self._refresh_after = refresh_after
        self._handed = 0  # mappings handed over so far
        self._new: list[Mapping] = []

    def digest(self, domain: str, canonical: bytes, shown: str) -> bytes:
        memo = (domain, canonical)
        known = self._known.get(memo)
        if known is not None:
            self._known.move_to_end(memo)
            if self._handed - known[1] < self._refresh_after:
                return known[0]
            digest = known[0]
        else:
            digest = hmac.new(self._key, domain.encode() + b"\0" + canonical,
                              hashlib.sha256).digest()[:PSEUDONYM_BYTES]
        self._known[memo] = (digest, self._handed)
        if len(self._known) > self._remembered:
            self._known.popitem(last=False)
        self._new.append(Mapping(digest.hex(), self.key_id, domain, shown))
        self._handed += 1
        return digest

    def ip(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
        return self.digest("ip", address.packed, str(address))

    def mac(self, text: str) -> bytes:
        raw = bytes.fromhex(re.sub(r"[:-]", "", text))
        return self.digest("mac", raw, ":".join(f"{b:02x}" for b in raw))

    def number(self, domain: str, value: int) -> bytes:
        return self.digest(domain, str(value).encode(), str(value))

    def text(self, value: str) -> bytes:
        return self.digest("identity", value.encode("utf-8", "surrogatepass"), value)

    def take_new(self) -> list[Mapping]:
        new, self._new = self._new, []
        return new
