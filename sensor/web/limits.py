"""Request size limits and integer parameters: what a client can send before we refuse.

Why here and not left to uvicorn: uvicorn's h11 parser stops at 16 KiB of unparsed
head with a plain 400 and closes the socket while the client is still sending, so a
1 MB query string met a connection reset instead of an answer. The page needs none of
that: its longest URL is an alert list with filters (well under 1 KiB). So an overlong
request line is 414 and too many or too large header lines are 431, checked twice:

* :func:`head_problem` on the raw bytes, before h11 parses them (the server's
  protocol, :mod:`mamori.sensor.web.server`), which also reads and discards what the client
  still sends after the refusal so that it reads the answer instead of a reset;
* :class:`RequestLimits` on the ASGI scope, so any server (and the test client) gets
  the same answers.

Integer parameters go to SQLite, whose INTEGER is 64-bit signed: a larger Python int
raises OverflowError there (a 500). :func:`parse_id` accepts only what fits.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from starlette.types import ASGIApp, Receive, Scope, Send

MAX_REQUEST_LINE = 8192  # "GET <target> HTTP/1.1": the page's own URLs are far shorter
MAX_HEAD_BYTES = 16 * 1024  # request line and header lines; h11's own default limit
MAX_HEADERS = 100  # header lines; a browser sends about 20

MAX_ID = 2**63 - 1  # SQLite INTEGER: alert ids (AUTOINCREMENT) never exceed it
_DIGITS = re.compile(r"[0-9]{1,19}")  # ASCII only: int() takes "+1", "1_0", other scripts

REASONS = {414: "URI Too Long", 431: "Request Header Fields Too Large"}


class BadParameter(ValueError):
    """A query parameter is not what the page accepts (the answer is 400)."""


def parse_id(text: str) -> int | None:
    """An alert id (0 <= id <= 2**63-1) from its decimal digits, None if it is not one."""
    if not _DIGITS.fullmatch(text):
        return None
    value = int(text)
    return value if value <= MAX_ID else None


def query_id(params: Mapping[str, str], name: str) -> int | None:
    """An optional id query parameter (``before``, ``after``): None when absent or empty.

    BadParameter for anything else that is not an id: ignoring it silently would show
    a page the operator did not ask for.
    """
    text = str(params.get(name) or "").strip()
    if not text:
        return None
    value = parse_id(text)
    if value is None:
        raise BadParameter(f"{name}: {text[:40]!r} is not an alert id "
                           f"(a whole number from 0 to {MAX_ID})")
    return value


def _head_end(buffer: bytes) -> int:
    """Where the head ends (h11 also takes bare LF line ends), or -1 if not yet."""
    ends = [i for i in (buffer.find(b"\r\n\r\n"), buffer.find(b"\n\n")) if i >= 0]
    return min(ends) if ends else -1


def head_problem(buffer: bytes) -> int | None:
    """414 or 431 if the request head starting ``buffer`` is over a limit, else None.

    ``buffer`` is what arrived of a request that is not parsed yet, perhaps only part
    of its head; a limit is over as soon as the part already is, and never before (a
    head cut anywhere, even between the CR and LF of its blank line, counts the same
    as when it is whole). The request line is counted without its line end.
    """
    end = _head_end(buffer)
    head = buffer if end < 0 else buffer[:end]
    line_end = head.find(b"\n")
    line = head if line_end < 0 else head[:line_end]
    if len(line.removesuffix(b"\r")) > MAX_REQUEST_LINE:
        return 414
    if end < 0:
        head = head.rstrip(b"\r\n")  # a line end that arrived before the next line
    if len(head) > MAX_HEAD_BYTES or head.count(b"\n") > MAX_HEADERS:
        return 431
    return None


def refusal(status: int) -> bytes:
    """The whole HTTP/1.1 response for a refused head; the connection then closes."""
    body = f"{status} {REASONS[status]}\n".encode()
    return (f"HTTP/1.1 {status} {REASONS[status]}\r\n"
            "content-type: text/plain; charset=utf-8\r\n"
            f"content-length: {len(body)}\r\n"
            "connection: close\r\n"
            "cache-control: no-store\r\n"
            "x-content-type-options: nosniff\r\n\r\n").encode() + body


class RequestLimits:
    """414/431 from the ASGI scope: the same limits whatever serves the app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            status = self.problem(scope)
            if status is not None:
                body = f"{status} {REASONS[status]}\n".encode()
                await send({"type": "http.response.start", "status": status,
                            "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                        (b"content-length", str(len(body)).encode()),
                                        (b"connection", b"close")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    @staticmethod
    def problem(scope: Scope) -> int | None:
        """The request line as the client sent it, ``METHOD TARGET HTTP/1.1``, and headers."""
        path = scope.get("raw_path") or str(scope.get("path", "")).encode("utf-8", "replace")
        query = scope.get("query_string", b"")
        target = len(path) + (len(query) + 1 if query else 0)
        line = len(str(scope.get("method", ""))) + 1 + target + len(" HTTP/1.1")
        if line > MAX_REQUEST_LINE:
            return 414
        headers = scope.get("headers", [])
        size = line + sum(len(k) + len(v) + 4 for k, v in headers)  # CRLF, "name: value"
        if len(headers) > MAX_HEADERS or size > MAX_HEAD_BYTES:
            return 431
        return None
