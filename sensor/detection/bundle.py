"""Signed rule bundles: rule packs that reach thousands of sensors without a way in.

A rule change must not mean copying files onto each box, and an unsigned push would
let anyone who reaches a sensor decide what it stops seeing. A bundle is a set of
rule packs with a manifest signed by an Ed25519 key (PyNaCl); a sensor applies it
only if the key is one it trusts, every file matches the manifest, the version is
newer than the one it runs, and the packs load. Otherwise it refuses, counts the
reason and raises a health alert: it never applies half a bundle.

A bundle file (``*.mrb``) is one msgpack map; ``manifest`` is the signed bytes::

    {"format": "mamori-rule-bundle",
     "manifest": msgpack {"format": "mamori-rule-bundle", "schema": 1,
                          "version": int >= 1, "created": unix time, "comment": str,
                          "key": 32-byte Ed25519 public key,
                          "files": [[name, size, sha256 hex], ...]},
     "signature": 64-byte Ed25519 signature of the manifest bytes,
     "files": {name: bytes}}

On the sensor, under ``<state_dir>/rules``::

    bundles/<version>/   the packs of each installed bundle, and its bundle.mrb
    active -> bundles/N  what the sensor loads (a symlink, switched atomically)
    previous -> bundles/M  what it falls back to when the active packs fail to load
    state.json           refusal counts by reason, the last refusal, and what became
                         of the last bundles a collector pushed (mamori.sensor.detection.rulepush)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import msgpack
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from mamori.parsers.alerts import Alert, Severity

FORMAT = "mamori-rule-bundle"
SCHEMA = 1
MAX_BUNDLE_BYTES = 16 << 20  # a bundle is text; anything larger is refused unread
MAX_FILES = 256
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\.ya?ml$")  # no paths, no dot files
REFUSAL_RULE = "mamori.sensor.rule_bundle_refused"
PUSHED_KEPT = 32  # outcomes of pushed bundles remembered, so a re-offer is not re-tried


class Refusal(Enum):
    """Why a bundle was not applied; the name is what the counters and alerts carry."""

    MALFORMED = "not a rule bundle, or one this sensor cannot read"
    UNKNOWN_KEY = "signed by a key this sensor does not trust"
    BAD_SIGNATURE = "the signature does not match the manifest"
    TAMPERED = "a file differs from the signed manifest, or is missing or extra"
    DOWNGRADE = "not newer than the bundle this sensor runs"
    INVALID_RULES = "the packs do not load"


class BundleRefused(Exception):
    """A bundle that must not be applied; ``reason`` says which check refused it."""

    def __init__(self, reason: Refusal, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}")


@dataclass(frozen=True, slots=True)
class Bundle:
    """A bundle whose signature and file hashes have been checked."""

    version: int
    created: float
    comment: str
    key: bytes  # the signer's public key
    files: dict[str, bytes] = field(repr=False)
    raw: bytes = field(repr=False)  # the bundle file as received, kept with the packs

    @property
    def key_id(self) -> str:
        return key_id(self.key)


def refusal_alert(refused: BundleRefused, source: str, count: int) -> Alert:
    """S7: a bundle was refused; the sensor runs what it ran before."""
    now = time.time()
    return Alert(rule=REFUSAL_RULE, precursor="S7", severity=Severity.HIGH, attack=(),
                 title=f"Rule bundle refused: {refused.reason.value}", proto="sensor",
                 first_ts=now, last_ts=now,
                 evidence={"reason": refused.reason.name, "detail": refused.detail[:200],
                           "source": source, "refusals": count})


def key_id(public: bytes) -> str:
    """A short, stable name for a public key: 16 hex digits of its SHA-256."""
    return hashlib.sha256(public).hexdigest()[:16]


# -- keys -----------------------------------------------------------------------------


def generate_key(name: str, directory: Path) -> tuple[Path, Path]:
    """``NAME.sign`` (the secret seed, mode 0600) and ``NAME.pub``; refuses to overwrite."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"{name!r}: a key name is letters, digits, '_', '.' and '-'")
    directory.mkdir(parents=True, exist_ok=True)
    secret, public = directory / f"{name}.sign", directory / f"{name}.pub"
    for path in (secret, public):
        if path.exists():
            raise FileExistsError(f"{path}: exists; not overwriting a signing key")
    key = SigningKey.generate()
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(bytes(key).hex() + "\n")
    public.write_text(bytes(key.verify_key).hex() + "\n", encoding="ascii")
    return secret, public


def _read_hex(path: Path, size: int, what: str) -> bytes:
    try:
        text = path.read_text(encoding="ascii").strip()
        value = bytes.fromhex(text)
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"{path}: not a {what} (expected {size * 2} hex digits)") from None
    if len(value) != size:
        raise ValueError(f"{path}: not a {what} (expected {size * 2} hex digits)")
    return value


def read_signing_key(path: Path) -> SigningKey:
    if path.stat().st_mode & 0o077:
        raise ValueError(f"{path}: a signing key must not be readable by others (chmod 600)")
    return SigningKey(_read_hex(path, 32, "signing key"))


def trusted_keys(directory: Path) -> dict[str, bytes]:
    """The public keys in ``directory`` (``*.pub``), by key id; absent directory: none."""
    keys: dict[str, bytes] = {}
    if not directory.is_dir():
        return keys
    for path in sorted(directory.glob("*.pub")):
        public = _read_hex(path, 32, "public key")
        keys[key_id(public)] = public
    return keys


# -- building and reading -------------------------------------------------------------


def build(packs: Iterable[Path], key: SigningKey, version: int, comment: str = "",
          now: float | None = None) -> bytes:
    """The bundle file for ``packs`` (rule pack files), signed with ``key``."""
    if version < 1:
        raise ValueError("a bundle version is a whole number from 1 up")
    files: dict[str, bytes] = {}
    for path in packs:
        if not _NAME.match(path.name):
            raise ValueError(f"{path}: a pack's name is letters, digits, '_.-' and .yaml")
        if path.name in files:
            raise ValueError(f"{path}: two packs named {path.name}")
        files[path.name] = path.read_bytes()
    if not files:
        raise ValueError("no rule packs to bundle")
    if len(files) > MAX_FILES:
        raise ValueError(f"{len(files)} packs: a bundle holds at most {MAX_FILES}")
    manifest = msgpack.packb({
        "format": FORMAT, "schema": SCHEMA, "version": version,
        "created": time.time() if now is None else now, "comment": comment,
        "key": bytes(key.verify_key),
        "files": [[name, len(data), hashlib.sha256(data).hexdigest()]
                  for name, data in sorted(files.items())],
    })
    signature = key.sign(manifest).signature
    raw = msgpack.packb({"format": FORMAT, "manifest": manifest, "signature": signature,
                         "files": files})
    if len(raw) > MAX_BUNDLE_BYTES:
        raise ValueError(f"bundle of {len(raw)} bytes is over {MAX_BUNDLE_BYTES}")
    return bytes(raw)


def _unpack(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = msgpack.unpackb(raw, raw=False, strict_map_key=True,
                                max_bin_len=MAX_BUNDLE_BYTES, max_str_len=1 << 20,
                                max_array_len=MAX_FILES * 4, max_map_len=MAX_FILES + 8)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as err:
        raise BundleRefused(Refusal.MALFORMED, f"{what}: {err}") from None
    if not isinstance(value, dict) or value.get("format") != FORMAT:
        raise BundleRefused(Refusal.MALFORMED, f"{what} is not a {FORMAT}")
    return value


def verify(raw: bytes, trusted: dict[str, bytes]) -> Bundle:
    """The bundle in ``raw`` if a trusted key signed it and every file matches.

    Checks, in this order: the outer form, the key (before any signature work), the
    signature over the manifest, then each file against the signed size and hash.
    """
    if len(raw) > MAX_BUNDLE_BYTES:
        raise BundleRefused(Refusal.MALFORMED, f"{len(raw)} bytes, over {MAX_BUNDLE_BYTES}")
    outer = _unpack(raw, "bundle")
    manifest_raw, signature, files = (outer.get("manifest"), outer.get("signature"),
                                      outer.get("files"))
    if not (isinstance(manifest_raw, bytes) and isinstance(signature, bytes)
            and isinstance(files, dict)):
        raise BundleRefused(Refusal.MALFORMED, "manifest, signature or files missing")
    manifest = _unpack(manifest_raw, "manifest")
    if manifest.get("schema") != SCHEMA:
        raise BundleRefused(Refusal.MALFORMED, f"manifest schema {manifest.get('schema')!r}"
                                               f" (this sensor reads {SCHEMA})")
    public = manifest.get("key")
    if not isinstance(public, bytes) or len(public) != 32:
        raise BundleRefused(Refusal.MALFORMED, "manifest has no Ed25519 public key")
    if key_id(public) not in trusted or trusted[key_id(public)] != public:
        raise BundleRefused(Refusal.UNKNOWN_KEY, f"key {key_id(public)}")
    try:
        VerifyKey(public).verify(manifest_raw, signature)
    except (BadSignatureError, ValueError):
        raise BundleRefused(Refusal.BAD_SIGNATURE, f"key {key_id(public)}") from None
    version, created, comment = (manifest.get("version"), manifest.get("created"),
                                 manifest.get("comment", ""))
    listed = manifest.get("files")
    if not (isinstance(version, int) and version >= 1 and isinstance(created, int | float)
            and isinstance(comment, str) and isinstance(listed, list) and listed):
        raise BundleRefused(Refusal.MALFORMED, "manifest fields of the wrong type")
    expected: dict[str, tuple[int, str]] = {}
    for entry in listed:
        if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
                and _NAME.match(entry[0]) and isinstance(entry[1], int)
                and isinstance(entry[2], str)):
            raise BundleRefused(Refusal.MALFORMED, f"manifest entry {entry!r}")
        expected[entry[0]] = (entry[1], entry[2])
    extra = sorted(set(files) - set(expected))
    missing = sorted(set(expected) - set(files))
    if extra or missing:
        raise BundleRefused(Refusal.TAMPERED, f"extra {extra}, missing {missing}")
    for name, (size, digest) in expected.items():
        data = files[name]
        if not isinstance(data, bytes) or len(data) != size \
                or hashlib.sha256(data).hexdigest() != digest:
            raise BundleRefused(Refusal.TAMPERED, f"{name} does not match the manifest")
    return Bundle(version, float(created), comment, public, dict(files), raw)


# -- the sensor's installed bundles ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Installed:
    version: int
    path: Path
    key_id: str
    comment: str
    created: float


class BundleStore:
    """The installed bundles under ``<state_dir>/rules``; see the module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bundles = root / "bundles"

    # reading

    def _link(self, name: str) -> Installed | None:
        path = self._target(name)
        if path is None:
            return None
        try:
            bundle = verify_installed(path)
        except (OSError, BundleRefused):
            return None
        return Installed(bundle.version, path, bundle.key_id, bundle.comment, bundle.created)

    def active(self) -> Installed | None:
        return self._link("active")

    def check_active(self) -> BundleRefused | None:
        """Why the active bundle must not be loaded (changed on disk, unreadable), or None."""
        path = self._target("active")
        if path is None:
            return None
        try:
            verify_installed(path)
        except BundleRefused as refused:
            return refused
        except OSError as err:
            return BundleRefused(Refusal.TAMPERED, f"{path}: {err.strerror or err}")
        return None

    def previous(self) -> Installed | None:
        return self._link("previous")

    def state(self) -> dict[str, Any]:
        try:
            doc = json.loads((self.root / "state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {"refused": {}}
        return doc if isinstance(doc, dict) else {"refused": {}}

    # writing

    def record_refusal(self, refused: BundleRefused, source: str) -> dict[str, Any]:
        doc = self.state()
        counts = doc.setdefault("refused", {})
        counts[refused.reason.name] = int(counts.get(refused.reason.name, 0)) + 1
        doc["last_refusal"] = {"reason": refused.reason.name, "detail": refused.detail,
                               "source": source, "ts": time.time()}
        self._write_state(doc)
        return doc

    def record_push(self, sha256: str, outcome: str, detail: str = "",
                    source: str = "") -> None:
        """What became of a pushed bundle (``applied``, ``refused``, ``failed``): kept
        for the last ``PUSHED_KEPT`` bundles, so a restarted sensor neither fetches nor
        alerts again for one it already dealt with."""
        doc = self.state()
        pushed = [p for p in doc.get("pushed", []) if isinstance(p, dict)
                  and p.get("sha256") != sha256]
        pushed.append({"sha256": sha256, "outcome": outcome, "detail": detail,
                       "source": source, "ts": time.time()})
        doc["pushed"] = pushed[-PUSHED_KEPT:]
        self._write_state(doc)

    def pushed(self) -> list[dict[str, Any]]:
        """The outcomes ``record_push`` kept, oldest first."""
        return [p for p in self.state().get("pushed", []) if isinstance(p, dict)
                and isinstance(p.get("sha256"), str) and isinstance(p.get("outcome"), str)]

    def _write_state(self, doc: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / "state.json.tmp"
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, self.root / "state.json")

    def install(self, raw: bytes, trusted: dict[str, bytes],
                validate: Callable[[Path], None]) -> Installed:
        """Verify, unpack, validate with ``validate(dir)`` and make the bundle active.

        ``validate`` raises (any exception) when the packs do not load. Nothing the
        sensor loads changes until the ``active`` link is replaced, in one rename.
        """
        bundle = verify(raw, trusted)
        current = self.active()
        if current is not None and bundle.version <= current.version:
            raise BundleRefused(Refusal.DOWNGRADE,
                                f"version {bundle.version}, active {current.version}")
        self.bundles.mkdir(parents=True, exist_ok=True)
        staging = self.bundles / f".staging-{os.getpid()}-{bundle.version}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            for name, data in bundle.files.items():
                _write_synced(staging / name, data)
            _write_synced(staging / "bundle.mrb", bundle.raw)
            try:
                validate(staging)
            except Exception as err:  # whatever the loader raises, the bundle is refused
                raise BundleRefused(Refusal.INVALID_RULES, str(err).splitlines()[0]) from None
            final = self.bundles / str(bundle.version)
            shutil.rmtree(final, ignore_errors=True)  # a leftover of a refused or lost try
            os.rename(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if current is not None:
            _switch(self.root / "previous", current.path)
        _switch(self.root / "active", final)
        self._prune(keep={bundle.version} | ({current.version} if current else set()))
        return Installed(bundle.version, final, bundle.key_id, bundle.comment, bundle.created)

    def roll_back(self) -> Installed:
        """Make the previous bundle active again (when the active one stopped loading).

        The bundle rolled back from is deleted: it is never loaded again, and a newer
        version must be installed to move forward.
        """
        previous = self.previous()
        if previous is None:
            raise FileNotFoundError(f"{self.root}: no previous bundle to roll back to")
        current = self._target("active")
        _switch(self.root / "active", previous.path)
        with contextlib.suppress(FileNotFoundError):
            (self.root / "previous").unlink()
        if current is not None and current != previous.path:
            shutil.rmtree(current, ignore_errors=True)
        return previous

    def _target(self, name: str) -> Path | None:
        link = self.root / name
        return self.root / os.readlink(link) if link.is_symlink() else None

    def deactivate(self) -> None:
        """Back to the shipped packs: the active bundle failed and none precedes it."""
        current = self._target("active")
        for name in ("active", "previous"):
            with contextlib.suppress(FileNotFoundError):
                (self.root / name).unlink()
        if current is not None:
            shutil.rmtree(current, ignore_errors=True)

    def _prune(self, keep: set[int]) -> None:
        for path in self.bundles.iterdir():
            if path.name.isdigit() and int(path.name) not in keep:
                shutil.rmtree(path, ignore_errors=True)


def verify_self(raw: bytes) -> Bundle:
    """``raw`` checked against the key its own manifest names: whole, untampered and
    signed by that key, whoever holds it. Not trust: where no trusted keys are (an
    installed bundle read back, a collector before it offers one) this is what can
    be checked."""
    if len(raw) > MAX_BUNDLE_BYTES:
        raise BundleRefused(Refusal.MALFORMED, f"{len(raw)} bytes, over {MAX_BUNDLE_BYTES}")
    outer = _unpack(raw, "bundle")
    manifest = _unpack(outer.get("manifest", b""), "manifest")
    public = manifest.get("key", b"")
    return verify(raw, {key_id(public): public} if isinstance(public, bytes) else {})


def verify_installed(path: Path) -> Bundle:
    """An installed bundle read back: its kept bundle file and packs still agree.

    The signature is not re-checked against the trusted keys (they may have been
    rotated since), but the packs on disk must still be the signed ones.
    """
    bundle = verify_self(path.joinpath("bundle.mrb").read_bytes())
    for name, data in bundle.files.items():
        if (path / name).read_bytes() != data:
            raise BundleRefused(Refusal.TAMPERED, f"{path / name} changed after install")
    return bundle


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def _switch(link: Path, target: Path) -> None:
    """Point ``link`` at ``target`` in one rename (readers see the old or the new)."""
    tmp = link.with_name(link.name + ".new")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(os.path.relpath(target, link.parent), tmp)
    os.replace(tmp, link)
    fd = os.open(link.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

