"""Publishing what the collector accepted to a NATS JetStream stream.

The collector's loop is synchronous ZeroMQ; the NATS client (``nats-py``, the ``nats``
extra) is asyncio. It runs in a thread of its own with its own event loop, and the
collector only ever tells it "these streams moved" (``notify``, a dict merged under a
lock and a wake-up): it never waits for NATS, so an outage neither blocks nor slows
ingest.

Nothing is lost either, because the publisher does not take messages from the
collector: it reads them from the collector's storage, which holds every accepted
message, behind a cursor of its own: per (sensor, epoch) stream, the highest seq that
JetStream acknowledged. The cursor lives in a small SQLite file and moves only after
the acks; a publisher that dies between an ack and the cursor write publishes again,
and JetStream drops the copy because every message carries
``Nats-Msg-Id: SENSOR_KEY:EPOCH:SEQ`` (within the stream's duplicate window). After an
outage it simply catches up from where the cursor is.

Subjects (tokens sanitised by :func:`token`)::

    PREFIX.alert.SECTOR.SITE.SENSOR.SEVERITY.PRECURSOR
    PREFIX.asset.SECTOR.SITE.SENSOR
    PREFIX.health.SECTOR.SITE.SENSOR.EVENT

SENSOR is the collector's allow-list name of the key (authenticated); SECTOR and SITE
are what the sensor's configuration says (its start record, else its last heartbeat).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mamori.parsers.wire import Kind
from mamori.sensor import config as cfg
from mamori.sensor.collector.cursordb import open_cursor_db
from mamori.sensor.collector.storage import SqlStorage, open_storage

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")
BATCH = 500  # messages read from storage and published per stream per round
STATE_EVERY = 0.5  # seconds between cursor/status writes
STALE = 30.0  # a status older than this is not the running publisher's (connects take ~10 s)


def token(value: Any) -> str:
    """One subject token: letters, digits, '_' and '-' kept, anything else '_';
    missing or empty -> '_'. So no '.', '*', '>' or whitespace can reach a subject."""
    text = "" if value is None else str(value)
    return _UNSAFE.sub("_", text)[:64] or "_"


@dataclass(frozen=True, slots=True)
class JetStreamSettings:
    """The ``[collect] nats_*`` options, resolved against the state dir."""

    servers: tuple[str, ...]
    stream: str
    prefix: str
    replicas: int
    creds: Path | None
    user: str
    password: str
    cursor: Path
    max_age: float
    duplicate_window: float

    @classmethod
    def from_section(cls, s: dict[str, Any], base: Path) -> JetStreamSettings | None:
        """None when no server is configured (JetStream off)."""
        if not s["nats_servers"]:
            return None
        return cls(tuple(s["nats_servers"]), s["nats_stream"], s["nats_subject_prefix"],
                   s["nats_replicas"], base / s["nats_creds"] if s["nats_creds"] else None,
                   s["nats_user"], s["nats_password"], base / s["nats_cursor"],
                   s["nats_max_age"], s["nats_duplicate_window"])

    @classmethod
    def from_config(cls, config: cfg.Config,
                    state_dir: Path | None = None) -> JetStreamSettings | None:
        base = state_dir or Path(config.get("sensor", "state_dir"))
        return cls.from_section(config.section("collect"), base)


class NatsUnavailable(RuntimeError):
    """nats-py is not installed (the ``nats`` extra) but NATS servers are configured."""


def require_client() -> None:
    try:
        import nats  # noqa: F401
    except ImportError:
        raise NatsUnavailable("[collect] nats_servers is set but the NATS client is not "
                              "installed (pip install 'mamori[nats]')") from None


def subject(prefix: str, kind: int, sensor: str, said: dict[str, Any],
            body: dict[str, Any]) -> str:
    where = f"{token(said.get('sector'))}.{token(said.get('site'))}.{token(sensor)}"
    if kind == Kind.ALERT:
        return (f"{prefix}.alert.{where}.{token(body.get('severity'))}."
                f"{token(body.get('precursor'))}")
    if kind == Kind.ASSET:
        return f"{prefix}.asset.{where}"
    return f"{prefix}.health.{where}.{token(body.get('event') or body.get('precursor'))}"


_KIND_NAME = {int(Kind.ALERT): "alert", int(Kind.ASSET): "asset", int(Kind.HEALTH): "health"}


# -- the cursor file ----------------------------------------------------------------------


class CursorStore:
    """Per stream, the highest seq JetStream acknowledged; and the publisher's status."""

    def __init__(self, path: Path, readonly: bool = False) -> None:
        self._conn = open_cursor_db(path, [
            "cursor (sensor TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL, "
            "PRIMARY KEY (sensor, epoch))",
            "state (key TEXT PRIMARY KEY, value TEXT NOT NULL)"], readonly)

    def load(self) -> dict[tuple[str, int], int]:
        return {(r[0], int(r[1])): int(r[2]) for r in self._conn.execute(
            "SELECT sensor, epoch, seq FROM cursor")}

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self._conn.execute("SELECT key, value FROM state"):
            with contextlib.suppress(ValueError):
                out[key] = json.loads(value)
        return out

    def save(self, moved: dict[tuple[str, int], int], state: dict[str, Any]) -> None:
        self._conn.executemany(
            "INSERT INTO cursor VALUES (?, ?, ?) ON CONFLICT (sensor, epoch) DO UPDATE "
            "SET seq = excluded.seq WHERE excluded.seq > cursor.seq",
            [(s, e, q) for (s, e), q in moved.items()])
        self._conn.executemany("INSERT OR REPLACE INTO state VALUES (?, ?)",
                               [(k, json.dumps(v)) for k, v in state.items()])
        self._conn.commit()

    def close(self) -> None:
        self._conn.close()


# -- the publisher ------------------------------------------------------------------------


class JetStreamPublisher:
    """A thread with an asyncio loop and a NATS connection, fed from storage."""

    def __init__(self, settings: JetStreamSettings, db: Path, dsn: str = "",
                 open_store: Callable[[Path, str], SqlStorage] = open_storage) -> None:
        self.settings = settings
        self._db, self._dsn, self._open_store = db, dsn, open_store
        self._lock = threading.Lock()
        self._moved: dict[tuple[str, int], int] = {}  # from the collector, not yet merged
        self._health: deque[dict[str, Any]] = deque(maxlen=10_000)  # the collector's own
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        # Read by the collector thread (status); written only by the publisher thread.
        self.connected = False
        self.server = ""
        self.published = 0
        self.duplicates = 0
        self.errors = 0
        self.last_error = ""
        self.behind = 0

    # -- the collector's side (any thread) ------------------------------------------------

    def start(self) -> JetStreamPublisher:
        """Start the thread; fails at once (not in a retry loop) on what a retry
        cannot fix: no client library, no credentials file."""
        require_client()
        creds = self.settings.creds
        if creds is not None and not creds.is_file():
            raise FileNotFoundError(f"[collect] nats_creds: {creds}: no such file")
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,),
                                        name="mamori-jetstream", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def notify(self, moved: dict[tuple[str, int], int],
               health: list[dict[str, Any]] | None = None) -> None:
        """Streams whose gap-free position moved (and are committed); never blocks."""
        with self._lock:
            for stream, contig in moved.items():
                if contig > self._moved.get(stream, 0):
                    self._moved[stream] = contig
            if health:
                self._health.extend(health)
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(wake.set)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wake.set)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def status(self) -> dict[str, Any]:
        return {"connected": self.connected, "server": self.server,
                "stream": self.settings.stream, "published": self.published,
                "duplicates": self.duplicates, "errors": self.errors,
                "last_error": self.last_error, "behind": self.behind}

    # -- the publisher thread -------------------------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._wake = asyncio.Event()
        ready.set()
        try:
            loop.run_until_complete(self._main())
        except Exception as err:  # never take the collector down with it
            self.last_error = f"publisher stopped: {err!r}"
        finally:
            self._loop = None
            loop.close()

    async def _main(self) -> None:
        storage = self._open_store(self._db, self._dsn)
        cursor_file = CursorStore(self.settings.cursor)
        self._cursor = cursor_file.load()
        self._known: dict[tuple[str, int], int] = {}
        self._pending: set[tuple[str, int]] = set()
        self._learn(storage.contigs())
        storage.rollback()
        self._said: dict[tuple[str, int], tuple[str, dict[str, Any]]] = {}
        self._unsaved: dict[tuple[str, int], int] = {}
        nc: Any = None
        last_scan = time.monotonic()
        # Its own task: the status on disk stays fresh while a round waits for acks.
        saver = asyncio.get_running_loop().create_task(self._saver(cursor_file))
        backoff = 0.2
        try:
            while not self._stop.is_set():
                if nc is None or nc.is_closed:
                    nc = await self._connect()
                    if nc is None:
                        await self._sleep(backoff)
                        backoff = min(backoff * 2, 5.0)
                        continue
                    backoff = 0.2
                with self._lock:
                    moved, self._moved = self._moved, {}
                    health = list(self._health)
                    self._health.clear()
                self._learn(moved)
                if time.monotonic() - last_scan > 5.0:  # other collectors on one database
                    self._learn(storage.contigs())
                    storage.rollback()
                    last_scan = time.monotonic()
                ok = await self._publish_health(nc, health)
                progressed = False
                for stream in list(self._pending):
                    if self._stop.is_set() or not ok:
                        break
                    contig = self._known[stream]
                    done, ok = await self._catch_up(nc, storage, stream, contig)
                    progressed |= done
                    if self._cursor.get(stream, 0) >= contig:
                        self._pending.discard(stream)
                storage.rollback()  # no transaction left open between rounds
                self.behind = sum(self._known[s] - self._cursor.get(s, 0)
                                  for s in self._pending)
                self.connected = bool(nc.is_connected) and ok
                if not ok:
                    await self._sleep(0.5)
                elif not self.behind or not progressed:
                    await self._sleep(1.0)
        finally:
            saver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await saver
            self.connected = False
            self._save(cursor_file)
            cursor_file.close()
            storage.close()
            if nc is not None and not nc.is_closed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(nc.close(), 5)

    def _learn(self, contigs: dict[tuple[str, int], int]) -> None:
        for stream, contig in contigs.items():
            if contig > self._known.get(stream, 0):
                self._known[stream] = contig
                if contig > self._cursor.get(stream, 0):
                    self._pending.add(stream)

    async def _sleep(self, seconds: float) -> None:
        assert self._wake is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    async def _saver(self, store: CursorStore) -> None:
        while True:
            await asyncio.sleep(STATE_EVERY)
            self._save(store)

    def _save(self, store: CursorStore) -> None:
        moved, self._unsaved = self._unsaved, {}
        try:
            store.save(moved, {"status": {**self.status(), "updated": time.time()}})
        except sqlite3.Error as err:
            self._unsaved = {**moved, **self._unsaved}
            self._fail(f"{self.settings.cursor}: {err}")

    def _fail(self, message: str) -> None:
        self.errors += 1
        self.last_error = message

    async def _connect(self) -> Any:
        s = self.settings
        options: dict[str, Any] = {
            "servers": list(s.servers), "name": "mamori-collector", "connect_timeout": 2,
            "reconnect_time_wait": 0.5, "max_reconnect_attempts": -1,
            "allow_reconnect": True, "ping_interval": 5, "max_outstanding_pings": 2,
            "error_cb": self._on_error, "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected}
        if s.creds is not None:
            options["user_credentials"] = str(s.creds)
        if s.user:
            options["user"], options["password"] = s.user, s.password
        from nats.aio.client import Client

        nc = Client()
        try:
            # The client retries every server (forever, -1) until the budget runs out;
            # once connected, its own reconnects ride out a node or a whole outage.
            await asyncio.wait_for(nc.connect(**options), 2.5 * len(s.servers) + 1)
            await self._ensure_stream(nc)
        except Exception as err:
            why = self.last_error if isinstance(err, asyncio.TimeoutError) and \
                self.last_error.startswith("nats: ") else repr(err)
            self._fail(f"connect {', '.join(s.servers)}: {why.removeprefix('nats: ')}")
            self.connected = False
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 2)
            return None
        self.connected = True
        self.server = str(nc.connected_url.geturl()) if nc.connected_url else ""
        return nc

    async def _ensure_stream(self, nc: Any) -> None:
        from nats.js.api import StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        s = self.settings
        config = StreamConfig(name=s.stream, subjects=[f"{s.prefix}.>"],
                              num_replicas=s.replicas, storage=StorageType.FILE,
                              duplicate_window=s.duplicate_window, max_age=s.max_age or None)
        js = nc.jetstream(timeout=10)
        try:
            await js.stream_info(s.stream)
        except NotFoundError:
            await js.add_stream(config)
            return
        await js.update_stream(config)

    async def _on_error(self, err: Exception) -> None:
        self._fail(f"nats: {err!s}" if str(err) else f"nats: {err!r}")

    async def _on_disconnected(self) -> None:
        self.connected = False

    async def _on_reconnected(self) -> None:
        self.connected = True

    async def _publish_health(self, nc: Any, docs: list[dict[str, Any]]) -> bool:
        """The collector's own findings (clock skew): live only, not in storage."""
        if not docs:
            return True
        js = nc.jetstream(timeout=5)
        for i, doc in enumerate(docs):
            said = self._identity_cached(str(doc.get("sensor_key", "")))
            subj = subject(self.settings.prefix, int(Kind.HEALTH), str(doc.get("sensor")),
                           said, doc)
            msg_id = f"collector:{doc.get('sensor_key')}:{doc.get('event')}:{doc.get('ts')}"
            try:
                await js.publish(subj, json.dumps(doc).encode(),
                                 headers={"Nats-Msg-Id": msg_id})
            except Exception as err:
                self._fail(f"publish {subj}: {err!r}")
                with self._lock:
                    self._health.extendleft(reversed(docs[i:]))
                return False
        return True

    def _identity_cached(self, sensor: str) -> dict[str, Any]:
        for (key, _), (_, said) in reversed(self._said.items()):
            if key == sensor:
                return said
        return {}

    async def _catch_up(self, nc: Any, storage: SqlStorage, stream: tuple[str, int],
                        contig: int) -> tuple[bool, bool]:
        """Publish the next batch of one stream; (moved the cursor, no error)."""
        sensor, epoch = stream
        after = self._cursor.get(stream, 0)
        rows = storage.messages_after(sensor, epoch, after, contig, BATCH)
        if stream not in self._said:
            if len(self._said) > 100_000:
                self._said.clear()
            self._said[stream] = storage.identity(sensor, epoch)
        name, said = self._said[stream]
        js = nc.jetstream(timeout=5)
        sends = []
        for seq, kind, ts, received, text in rows:
            try:
                body = json.loads(text)
            except ValueError:
                body = {"raw": text}
            if not isinstance(body, dict):
                body = {"value": body}
            if kind == Kind.HEALTH and body.get("event") == "start":
                said = {**said, **{k: body[k] for k in ("name", "site", "sector") if k in body}}
                self._said[stream] = (name, said)
            doc = {**body, "kind": _KIND_NAME.get(kind, str(kind)), "sensor": name,
                   "sensor_key": sensor, "epoch": epoch, "seq": seq, "sent_ts": ts,
                   "received": received, "site": said.get("site"),
                   "sector": said.get("sector")}
            subj = subject(self.settings.prefix, kind, name, said, body)
            sends.append((seq, js.publish(
                subj, json.dumps(doc, separators=(",", ":")).encode(),
                headers={"Nats-Msg-Id": f"{sensor}:{epoch}:{seq}"})))
        results = await asyncio.gather(*(c for _, c in sends), return_exceptions=True)
        upto, failed = after, False
        for (seq, _), result in zip(sends, results, strict=True):
            if isinstance(result, BaseException):
                self._fail(f"publish {sensor[:10]}.. {epoch}:{seq}: {result!r}")
                failed = True
                break
            upto = seq
            if getattr(result, "duplicate", False):
                self.duplicates += 1
            else:
                self.published += 1
        if not failed and len(rows) < BATCH:  # nothing more is stored up to contig
            upto = contig  # (a range the sensor reported lost has no rows)
        if upto > after:
            self._cursor[stream] = upto
            self._unsaved[stream] = upto
        return upto > after, not failed

def status_report(settings: JetStreamSettings, storage: SqlStorage) -> dict[str, Any]:
    """What ``mamori collect status`` says of the JetStream publisher, from its files."""
    out: dict[str, Any] = {"servers": list(settings.servers), "stream": settings.stream}
    if not settings.cursor.exists():
        return {**out, "connected": False, "behind": sum(storage.contigs().values()),
                "updated": None, "note": "the publisher has not run yet"}
    try:
        store = CursorStore(settings.cursor, readonly=True)
        try:
            cursor, state = store.load(), store.state().get("status", {})
        finally:
            store.close()
    except sqlite3.Error as err:  # being created right now, or not a cursor file
        return {**out, "connected": False, "behind": sum(storage.contigs().values()),
                "updated": None, "note": f"{settings.cursor}: {err}"}
    behind = sum(max(0, c - cursor.get(s, 0)) for s, c in storage.contigs().items())
    updated = state.get("updated") if isinstance(state, dict) else None
    fresh = isinstance(updated, float | int) and time.time() - updated < STALE
    return {**out, "connected": bool(fresh and state.get("connected")), "behind": behind,
            "updated": updated, "server": state.get("server", ""),
            "published": state.get("published", 0), "duplicates": state.get("duplicates", 0),
            "errors": state.get("errors", 0),
            "last_error": state.get("last_error", ""),
            "note": "" if fresh else f"no status for {STALE:.0f} s: is the collector running?"}
