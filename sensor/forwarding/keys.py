"""CURVE key pairs on disk: ``NAME.pub`` (shareable) and ``NAME.secret`` (mode 0600).

Each file holds one Z85 key (40 characters) on a line; lines starting with ``#`` are
comments. The collector's allow-list is a directory of ``*.pub`` files: the file
name (without ``.pub``) is the sensor's display name, the key is its identity. The
secret file is created with ``O_EXCL`` and mode 0600 from the start, so it is never
readable by others, not even for a moment.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import zmq

_Z85_KEY = re.compile(r"^[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


_MAX_KEY_FILE = 4096  # a key file is a comment line and 40 characters


class KeyFileError(ValueError):
    """A key file is missing, malformed or unsafe; the message names the file."""


@dataclass(frozen=True, slots=True)
class KeyPair:
    public: bytes  # Z85, 40 bytes
    secret: bytes


def is_z85_key(text: str) -> bool:
    return bool(_Z85_KEY.match(text))


def generate(name: str, directory: Path) -> tuple[Path, Path]:
    """Create ``NAME.pub`` and ``NAME.secret`` in ``directory``; never overwrites."""
    if not _NAME.match(name):
        raise KeyFileError(f"{name!r} is not a key name (letters, digits, _ . -; max 64)")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    public, secret = zmq.curve_keypair()
    pub_path, sec_path = directory / f"{name}.pub", directory / f"{name}.secret"
    for path in (pub_path, sec_path):
        if path.exists():
            raise KeyFileError(f"{path}: already exists; not overwriting a key")
    _write(sec_path, secret, f"# mamori CURVE secret key for {name}: keep private\n", 0o600)
    _write(pub_path, public, f"# mamori CURVE public key for {name}\n", 0o644)
    return pub_path, sec_path


def _write(path: Path, key: bytes, header: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(header + key.decode("ascii") + "\n")
    os.chmod(path, mode)  # the umask may have narrowed it; never widened beyond mode


def read_key(path: Path, secret: bool = False) -> bytes:
    """The Z85 key in ``path``. A secret key readable by group or others is refused."""
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):  # /dev/zero would be read forever
            raise KeyFileError(f"{path}: not a regular file, not a key file")
        with path.open("rb") as stream:
            data = stream.read(_MAX_KEY_FILE + 1)
    except OSError as err:
        raise KeyFileError(f"{path}: cannot read key: {err.strerror or err}") from None
    if len(data) > _MAX_KEY_FILE:
        raise KeyFileError(f"{path}: not a Z85 CURVE key (larger than {_MAX_KEY_FILE} bytes)")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: not a Z85 CURVE key (not ASCII text)") from None
    if secret and mode & 0o077:
        raise KeyFileError(f"{path}: secret key is accessible by others (chmod 600)")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if len(lines) != 1 or not is_z85_key(lines[0]):
        raise KeyFileError(f"{path}: not a Z85 CURVE key")
    return lines[0].encode("ascii")


def load_pair(secret_path: Path) -> KeyPair:
    """The pair from ``NAME.secret``; the public half is derived, not trusted from disk."""
    secret = read_key(secret_path, secret=True)
    return KeyPair(zmq.curve_public(secret), secret)


def resolve_key(value: str, base: Path) -> bytes:
    """A config value that is either a Z85 key or a path to a ``.pub`` file."""
    if is_z85_key(value):
        return value.encode("ascii")
    path = Path(value)
    return read_key(path if path.is_absolute() else base / path)


def load_allow_list(directory: Path) -> dict[bytes, str]:
    """Public key -> sensor name for every ``*.pub`` in ``directory``. Bad files are errors."""
    keys: dict[bytes, str] = {}
    if not directory.is_dir():
        raise KeyFileError(f"{directory}: key directory does not exist")
    for path in sorted(directory.glob("*.pub")):
        keys[read_key(path)] = path.stem
    return keys
