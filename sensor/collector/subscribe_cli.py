"""``mamori subscribe``: tail what a collector published to NATS JetStream.

A pull consumer on the collector's stream, filtered by a subject (see
``mamori.sensor.collector.jetstream`` for the layout), printed as JSON lines or a table. With
``--durable NAME`` the consumer lives on the server: run the command again and it goes
on after the last message it acknowledged, even across a restart of either side.
``--from-seq`` and ``--since`` start (or replay) from a stream sequence or a time.

Every message is acknowledged after it was written and flushed, so a subscriber killed
mid-way gets again only what it had not printed; a redelivery of something already
printed in this run (after a server fail-over) is recognised by its stream sequence and
not printed twice.

Exit status: 0 after ``--count`` messages or ``--idle`` seconds without one (or on
SIGINT/SIGTERM), 1 when the servers refuse (credentials, permissions) or cannot be
reached, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import re
import secrets
import signal
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, TextIO

from mamori.sensor import config as cfg

DEFAULT_SERVER = "nats://127.0.0.1:4222"
RECENT = 200_000  # stream sequences remembered to drop redeliveries


_NAME = re.compile(r"[A-Za-z0-9_\-]{1,64}")
_TOKEN = re.compile(r"[^\s.*>]+|\*|>")


def check_subject(text: str) -> None:
    """A NATS subject filter: dot-separated non-empty tokens, '*' a whole token, '>' only
    the last one."""
    tokens = text.split(".")
    for i, tok in enumerate(tokens):
        if not _TOKEN.fullmatch(tok) or (tok == ">" and i != len(tokens) - 1):
            raise ValueError(f"subject {text!r}: token {i + 1} ({tok!r}) is not valid "
                             "(e.g. mamori.alert.energy.>)")


class Refused(Exception):
    """The servers said no, or could not be reached: one line for the operator."""


def register_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "subscribe", help="tail alerts, assets and health from NATS JetStream",
        description="Tail a subject filter of the collector's JetStream stream, e.g. "
                    "'mamori.alert.energy.>' (PREFIX.KIND.SECTOR.SITE.SENSOR...).")
    p.add_argument("subject", nargs="?", default="mamori.>",
                   help="subject filter (default: mamori.>, everything)")
    p.add_argument("--server", action="append", default=None, metavar="URL",
                   help=f"a NATS server, repeatable (default {DEFAULT_SERVER})")
    p.add_argument("--stream", default="MAMORI", help="the stream name (default MAMORI)")
    p.add_argument("--durable", metavar="NAME",
                   help="a durable consumer: resumes where it left off (default: ephemeral)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--from-seq", type=int, metavar="N", help="start at stream sequence N")
    start.add_argument("--since", metavar="TIME",
                       help="start at a time: ISO 8601 (2026-12-04T10:00:00Z) or an age "
                            "(15m, 2h, 7d)")
    start.add_argument("--all", action="store_true", help="replay the whole stream")
    p.add_argument("--user", help="NATS user")
    p.add_argument("--password", help="password for --user")
    p.add_argument("--creds", type=Path, help="NATS credentials file (.creds: JWT + nkey)")
    p.add_argument("--nkey", type=Path, help="nkey seed file (SU...)")
    p.add_argument("--format", choices=("json", "table"), default="json")
    p.add_argument("--count", type=int, default=0, help="exit after N messages")
    p.add_argument("--idle", type=float, default=0.0,
                   help="exit after this many seconds without a message")
    p.add_argument("--batch", type=int, default=256, help="messages per pull (default 256)")
    p.set_defaults(func=cmd_subscribe)


def _start_time(text: str) -> dt.datetime:
    try:
        age = cfg.parse_duration(text)
    except ValueError:
        pass
    else:
        return dt.datetime.fromtimestamp(time.time() - age, dt.UTC)
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since {text!r} is neither a time (ISO 8601) nor an age "
                         "(e.g. 15m)") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def cmd_subscribe(args: argparse.Namespace) -> int:
    try:
        import nats  # noqa: F401
    except ImportError:
        print("mamori subscribe: the NATS client is not installed (pip install "
              "'mamori[nats]')", file=sys.stderr)
        return 2
    try:
        since = _start_time(args.since) if args.since else None
        for path in (args.creds, args.nkey):
            if path is not None and not path.is_file():
                raise ValueError(f"{path}: no such file")
        if args.password and not args.user:
            raise ValueError("--password needs --user")
        if args.from_seq is not None and args.from_seq < 1:
            raise ValueError("--from-seq must be 1 or more")
        if not 1 <= args.batch <= 10_000:
            raise ValueError("--batch must be 1-10000")
        if args.count < 0 or args.idle < 0:
            raise ValueError("--count and --idle cannot be negative")
        check_subject(args.subject)
        if args.durable is not None and not _NAME.fullmatch(args.durable):
            raise ValueError(f"--durable {args.durable!r}: letters, digits, '_' and '-' only")
        if not _NAME.fullmatch(args.stream):
            raise ValueError(f"--stream {args.stream!r}: letters, digits, '_' and '-' only")
    except ValueError as err:
        print(f"mamori subscribe: {err}", file=sys.stderr)
        return 2
    tail = Tail(args, since, sys.stdout)
    try:
        asyncio.run(tail.run())
    except Refused as err:
        print(f"mamori subscribe: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `| head`: the reader left
        with contextlib.suppress(OSError):
            sys.stdout.close()
    return 0


class Tail:
    def __init__(self, args: argparse.Namespace, since: dt.datetime | None,
                 out: TextIO) -> None:
        self.args = args
        self.since = since
        self.out = out
        self.servers: list[str] = args.server or [DEFAULT_SERVER]
        self.refusal: asyncio.Future[str] | None = None
        self.seen: OrderedDict[int, None] = OrderedDict()
        self.printed = 0
        self.stop = False
        self.last_error = ""

    async def _on_error(self, err: Exception) -> None:
        text = str(err) or type(err).__name__
        self.last_error = _describe(err)
        lowered = text.lower()
        refused = any(w in lowered for w in ("authorization", "permissions violation",
                                             "authentication", "user credentials"))
        if refused and self.refusal is not None and not self.refusal.done():
            self.refusal.set_result(text.strip().strip("'"))

    async def _guard(self, what: str, coro: Any, timeout: float) -> Any:
        """Await ``coro`` unless the server refuses us first (it says so only as an
        asynchronous -ERR, so a refused request would otherwise just time out)."""
        assert self.refusal is not None
        task = asyncio.ensure_future(coro)
        done, _ = await asyncio.wait({task, self.refusal}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if self.refusal in done:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise Refused(f"{what}: refused by the server: {self.refusal.result()}")
        if task not in done:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise Refused(f"{what}: no answer in {timeout:.0f} s"
                          + (f" ({self.last_error})" if self.last_error else ""))
        try:
            return task.result()
        except Refused:
            raise
        except Exception as err:
            raise Refused(f"{what}: {_describe(err)}") from None

    async def run(self) -> None:
        from nats.aio.client import Client

        self.refusal = asyncio.get_running_loop().create_future()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._request_stop)
        a = self.args
        options: dict[str, Any] = {
            "servers": self.servers, "name": "mamori-subscribe", "connect_timeout": 2,
            "reconnect_time_wait": 0.5, "max_reconnect_attempts": -1,
            "error_cb": self._on_error, "ping_interval": 5, "max_outstanding_pings": 2}
        if a.user:
            options["user"], options["password"] = a.user, a.password or ""
        if a.creds:
            options["user_credentials"] = str(a.creds)
        if a.nkey:
            options["nkeys_seed"] = str(a.nkey)
        nc = Client()
        where = ", ".join(self.servers)
        try:
            await self._guard(where, nc.connect(**options), 3.0 * len(self.servers) + 2)
            sub = await self._consumer(nc)
            await self._pull(sub)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 5)

    def _request_stop(self) -> None:
        self.stop = True

    async def _consumer(self, nc: Any) -> Any:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        from nats.js.errors import NotFoundError

        a = self.args
        js = nc.jetstream(timeout=5)
        name = a.durable or f"mamori-sub-{secrets.token_hex(6)}"
        what = f"consumer {name} on {a.stream} ({a.subject})"
        starting = a.from_seq is not None or self.since is not None or a.all
        if a.durable:
            try:
                info = await self._guard(what, js.consumer_info(a.stream, name), 10)
            except Refused as err:
                if "not found" not in str(err).lower():
                    raise
            else:
                if info.config.filter_subject not in (a.subject, None):
                    raise Refused(f"{what}: the durable consumer exists with the filter "
                                  f"{info.config.filter_subject}; use another --durable")
                if starting:
                    raise Refused(f"{what}: exists and resumes where it left off; delete it "
                                  "(nats consumer rm) to start it somewhere else")
                return await js.pull_subscribe_bind(name, a.stream)
        policy, extra = DeliverPolicy.NEW, {}
        if a.all:
            policy = DeliverPolicy.ALL
        elif a.from_seq is not None:
            policy, extra = DeliverPolicy.BY_START_SEQUENCE, {"opt_start_seq": a.from_seq}
        elif self.since is not None:
            policy, extra = DeliverPolicy.BY_START_TIME, {"opt_start_time": self.since}
        config = ConsumerConfig(
            name=name, durable_name=a.durable or None, filter_subject=a.subject,
            deliver_policy=policy, ack_policy=AckPolicy.EXPLICIT, ack_wait=30,
            max_ack_pending=max(1000, 4 * a.batch),
            inactive_threshold=None if a.durable else 60.0, **extra)
        try:
            await self._guard(what, js.add_consumer(a.stream, config), 10)
        except Refused as err:
            if isinstance(err.__cause__, NotFoundError) or "stream not found" in str(err):
                raise Refused(f"{what}: no such stream") from None
            raise
        return await js.pull_subscribe_bind(name, a.stream)

    async def _pull(self, sub: Any) -> None:
        from nats.errors import TimeoutError as NatsTimeout

        a = self.args
        assert self.refusal is not None
        if a.format == "table":
            self._line(f"{'time (UTC)':<19} {'kind':<6} {'sev':<8} {'pre':<4} "
                       f"{'sector/site/sensor':<32} {'epoch:seq':>10}  title")
        last = time.monotonic()
        while not self.stop:
            if self.refusal.done():
                raise Refused(f"refused by the server: {self.refusal.result()}")
            try:
                msgs = await sub.fetch(a.batch, timeout=1.0)
            except (TimeoutError, NatsTimeout):
                msgs = []
            except Exception as err:  # a fail-over in progress: ask again
                if getattr(err, "code", None) in (401, 403):
                    raise Refused(_describe(err)) from None
                await asyncio.sleep(0.2)
                msgs = []
            if not msgs:
                if a.idle and time.monotonic() - last > a.idle:
                    return
                continue
            last = time.monotonic()
            for msg in msgs:
                seq = msg.metadata.sequence.stream
                if seq not in self.seen:
                    self.seen[seq] = None
                    if len(self.seen) > RECENT:
                        self.seen.popitem(last=False)
                    self._show(msg.subject, seq, msg.data)
                    self.printed += 1
            self.out.flush()
            for msg in msgs:  # written and flushed: only now may the server forget them
                with contextlib.suppress(Exception):
                    await msg.ack()
            if a.count and self.printed >= a.count:
                return

    def _show(self, subject: str, seq: int, data: bytes) -> None:
        try:
            doc = json.loads(data)
        except ValueError:
            doc = {"raw": data.decode("utf-8", "replace")}
        if not isinstance(doc, dict):
            doc = {"value": doc}
        doc["subject"], doc["stream_seq"] = subject, seq
        if self.args.format == "json":
            self._line(json.dumps(doc, separators=(",", ":")))
            return
        ts = doc.get("ts") or doc.get("sent_ts")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) \
            if isinstance(ts, int | float) else "-"
        where = "/".join(str(doc.get(k) or "_") for k in ("sector", "site", "sensor"))
        self._line(f"{when:<19} {doc.get('kind', '?')!s:<6} "
                   f"{doc.get('severity') or '-'!s:<8} {doc.get('precursor') or '-'!s:<4} "
                   f"{where[:32]:<32} {doc.get('epoch')!s:>4}:{doc.get('seq')!s:<5}  "
                   f"{doc.get('title') or doc.get('event') or ''}")

    def _line(self, text: str) -> None:
        self.out.write(text + "\n")


def _describe(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return " ".join(text.split())[:300]

