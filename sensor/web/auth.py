"""Login: a token file created at install, a session cookie, and CSRF tokens.

The token file holds one random secret (``mamori web token`` writes it with mode
0600). An operator logs in with their name and that token; the name is what the
audit table records for an acknowledgement. Scripts use ``Authorization: Bearer
<token>`` on GET requests instead of a session.

Sessions live in memory (a restart logs everyone out, which is fine for a box that
restarts rarely), capped in number, and expire. The cookie is HttpOnly and
SameSite=Strict; each session has its own CSRF token for the one POST form.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path

SESSION_COOKIE = "mamori_session"
MAX_SESSIONS = 256
MAX_OPERATOR_LEN = 64


class TokenFileError(Exception):
    """The token file is missing, empty or readable by others (names the file)."""


def create_token_file(path: Path, force: bool = False) -> None:
    """Write a fresh random token, mode 0600 from the first byte (no umask race)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{path.name}.tmp")
    if path.exists() and not force:
        raise TokenFileError(f"{path}: exists (use --force to replace it)")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(token + "\n")
    os.replace(tmp, path)


def read_token_file(path: Path) -> str:
    """The token; refuses a file that group or others can read, as ssh does with keys."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise TokenFileError(f"{path}: no token file (create it with 'mamori web token')"
                             ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise TokenFileError(f"{path}: cannot read the token: {err}") from None
    if stat.S_IMODE(mode) & 0o077:
        raise TokenFileError(f"{path}: mode {stat.S_IMODE(mode):04o} lets others read the "
                             "token; chmod 600 it")
    if len(text) < 16:
        raise TokenFileError(f"{path}: token too short (16 characters at least)")
    return text


def valid_operator(name: str) -> str | None:
    """The operator's name, trimmed, if it is printable and short; else None."""
    name = " ".join(name.split())
    if not name or len(name) > MAX_OPERATOR_LEN or not name.isprintable():
        return None
    return name


@dataclass(slots=True)
class Session:
    operator: str
    csrf: str
    expires: float


class Authenticator:
    """Checks the token and keeps the sessions."""

    def __init__(self, token: str, lifetime: float) -> None:
        self._token = token.encode()
        self.lifetime = lifetime
        self._sessions: dict[str, Session] = {}

    def token_ok(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.strip().encode(), self._token)

    def login(self, operator: str, token: str) -> str | None:
        """A new session id, or None when the token is wrong."""
        if not self.token_ok(token):
            return None
        now = time.time()
        self._expire(now)
        while len(self._sessions) >= MAX_SESSIONS:
            oldest = min(self._sessions, key=lambda k: self._sessions[k].expires)
            del self._sessions[oldest]
        sid = secrets.token_urlsafe(32)
        self._sessions[sid] = Session(operator, secrets.token_urlsafe(24), now + self.lifetime)
        return sid

    def session(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        found = self._sessions.get(sid)
        if found is None:
            return None
        if found.expires < time.time():
            del self._sessions[sid]
            return None
        return found

    def logout(self, sid: str | None) -> None:
        if sid:
            self._sessions.pop(sid, None)

    def bearer_ok(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        return self.token_ok(header[len("Bearer "):])

    def _expire(self, now: float) -> None:
        for sid in [k for k, s in self._sessions.items() if s.expires < now]:
            del self._sessions[sid]
