"""Forwarding subcommands: ``mamori keys``, ``mamori collect`` and ``mamori audit``.

``sensor.cli`` discovers ``register_commands``; ``python -m sensor.forwarding_cli`` runs
the same commands on their own (tests and a collector-only install use that).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from sensor import config as cfg
from sensor import forwarding_options  # noqa: F401  (registers [forward] and [collect])
from sensor.advisories import cli as advisories_cli
from sensor.paths import check_output, describe, describe_mkdir, foreign_sqlite

if TYPE_CHECKING:
    from sensor.collector.server import CollectorSettings


def register_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    keys = subparsers.add_parser("keys", help="CURVE key pairs for sensors and collectors")
    keys_cmds = keys.add_subparsers(dest="keys_command", metavar="ACTION")
    keys_cmds.required = True
    gen = keys_cmds.add_parser("generate", help="create NAME.pub and NAME.secret (mode 0600)")
    gen.add_argument("name", metavar="NAME")
    gen.add_argument("--dir", type=Path, default=None,
                     help="where to write them (default: STATE_DIR/keys)")
    _config_flags(gen, ["sensor"])
    gen.set_defaults(func=cmd_keys_generate)

    collect = subparsers.add_parser(
        "collect", help="run the collector (or 'collect status')",
        description="Accept alerts from sensors whose public keys are in the allow-list "
                    "directory, store them, acknowledge them and re-publish them.")
    _config_flags(collect, ["sensor", "collect"])
    collect.add_argument("--duration", type=cfg.seconds_flag, default=None,
                         help="stop after this many seconds (tests, demos)")
    collect.set_defaults(func=cmd_collect)
    collect_cmds = collect.add_subparsers(dest="collect_command", metavar="ACTION")
    status = collect_cmds.add_parser("status", help="per sensor: last seq, lag, heartbeat")
    _config_flags(status, ["sensor", "collect"])
    status.add_argument("--json", action="store_true", help="one JSON document")
    status.add_argument("--jetstream", action="store_true",
                        help="only the JetStream publisher: connected, how far behind")
    status.set_defaults(func=cmd_collect_status)
    advisories_cli.add_collect_command(collect_cmds, _config_flags)  # issue 18

    audit = subparsers.add_parser("audit", help="what this sensor forwarded, to whom, when")
    _config_flags(audit, ["sensor"])
    audit.add_argument("--since", default="24h", help="how far back (e.g. 1h, 7d; default 24h)")
    audit.add_argument("--json", action="store_true", help="JSON lines")
    audit.set_defaults(func=cmd_audit)


def _config_flags(parser: argparse.ArgumentParser, sections: list[str]) -> None:
    parser.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help="the TOML configuration (default: built-in defaults)")
    cfg.add_flags(parser, sections)


def _config(args: argparse.Namespace, prog: str) -> cfg.Config | None:
    try:
        return cfg.load(args.config, cfg.flag_overrides(args))
    except cfg.ConfigError as err:
        print(f"mamori {prog}: {err}", file=sys.stderr)
        return None


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from sensor.keys import KeyFileError, generate

    directory = args.dir
    if directory is None:
        config = _config(args, "keys")
        if config is None:
            return 2
        directory = Path(config.get("sensor", "state_dir")) / "keys"
    try:
        public, secret = generate(args.name, directory)
    except KeyFileError as err:
        print(f"mamori keys: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"mamori keys: {describe_mkdir(err)}", file=sys.stderr)
        return 1
    print(f"public key: {public} (give this to the collector's allow-list)")
    print(f"secret key: {secret} (mode 0600; keep it on this box)")
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    import zmq

    from sensor.collector.jetstream import NatsUnavailable
    from sensor.collector.server import CollectorServer, CollectorSettings
    from sensor.keys import KeyFileError

    config = _config(args, "collect")
    if config is None:
        return 2
    settings = CollectorSettings.from_config(config)
    problem = _unbindable(settings.listen + ((settings.publish,) if settings.publish else ()))
    if problem is None and settings.jsonl:
        problem = check_output(Path(settings.jsonl))
    if problem is None and not settings.dsn:
        problem = foreign_sqlite(settings.db, "streams", "a collector store")
    if problem is not None:
        print(f"mamori collect: {problem}", file=sys.stderr)
        return 2
    try:
        server = CollectorServer(settings)
    except _storage_errors(settings) as err:
        print(f"mamori collect: {_storage_problem(settings, err)}", file=sys.stderr)
        return 2
    try:
        server.bind()
    except (KeyFileError, OSError, zmq.ZMQError, NatsUnavailable) as err:
        if isinstance(err, zmq.ZMQError):  # lost a race for a port the probe found free
            message = f"cannot listen on {', '.join(settings.listen)}: {_zmq_reason(err)}"
        else:
            message = describe(err) if isinstance(err, OSError) else str(err)
        print(f"mamori collect: {message}", file=sys.stderr)
        with contextlib.suppress(Exception):  # half-bound: close what there is
            server.close()
        return 2
    stop = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True  # only wake the loop; it shuts down between rounds

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    deadline = None if args.duration is None else time.monotonic() + args.duration
    print(f"mamori collect: listening on {', '.join(server.settings.listen)} "
          f"({len(server.allow)} sensor keys)", file=sys.stderr, flush=True)
    try:
        server.run(lambda: stop or (deadline is not None and time.monotonic() > deadline))
    finally:
        server.close()
    print(f"mamori collect: stopped; {dict(server.counters)}", file=sys.stderr)
    return 0


def _zmq_reason(err: Exception) -> str:
    """``Address already in use``: the errno's text, without pyzmq's ``(addr=...)`` tail."""
    import zmq

    errno = getattr(err, "errno", None)
    return zmq.strerror(errno) if isinstance(errno, int) else str(err)


def _unbindable(endpoints: Sequence[str]) -> str | None:
    """``endpoint: reason`` for the first endpoint that cannot be bound, or None.

    The collector's own bind raises a bare ``ZMQError: Address already in use`` that
    does not say which of its endpoints is taken, so each is tried here first, all
    held at once (a listen endpoint repeated as the publish one is found too), and
    released before the collector binds them for real.
    """
    import zmq

    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sockets: list[zmq.Socket[bytes]] = []
    try:
        for endpoint in endpoints:
            sock = ctx.socket(zmq.PUB)
            sock.linger = 0
            sockets.append(sock)
            try:
                sock.bind(endpoint)
            except zmq.ZMQError as err:
                return f"cannot listen on {endpoint}: {_zmq_reason(err)}"
        return None
    finally:
        for sock in sockets:
            sock.close(0)
        ctx.term()


def _storage_errors(settings: CollectorSettings) -> tuple[type[Exception], ...]:
    """What opening the collector store raises when it cannot (not a programming error)."""
    errors: tuple[type[Exception], ...] = (sqlite3.Error, OSError)
    if settings.dsn:
        try:
            import psycopg
        except ImportError:
            return (*errors, ImportError)  # reported as "PostgreSQL needs psycopg"
        errors = (*errors, psycopg.Error)
    return errors


def _storage_problem(settings: CollectorSettings, err: Exception) -> str:
    """An error opening the collector store, naming the store (never the DSN: a password)."""
    if isinstance(err, ImportError):
        return "[collect] dsn is set, but psycopg (PostgreSQL) is not installed"
    if settings.dsn:
        return f"PostgreSQL ([collect] dsn): {err}".strip()
    if isinstance(err, OSError):
        return describe_mkdir(err) if err.filename is not None else \
            f"{settings.db}: {err.strerror or err}"
    text = str(err)
    return text if settings.dsn or str(settings.db) in text else f"{settings.db}: {text}"


def cmd_collect_status(args: argparse.Namespace) -> int:
    from sensor.collector.federation import relay_routes
    from sensor.collector.jetstream import status_report as jetstream_status
    from sensor.collector.server import CollectorSettings
    from sensor.collector.storage import open_storage

    config = _config(args, "collect status")
    if config is None:
        return 2
    s = CollectorSettings.from_config(config)
    if not s.dsn and not s.db.exists():
        print(f"mamori collect status: {s.db}: no collector store yet", file=sys.stderr)
        return 1
    if not s.dsn and (problem := foreign_sqlite(s.db, "streams", "a collector store")):
        print(f"mamori collect status: {problem}", file=sys.stderr)
        return 2
    try:
        storage = open_storage(s.db, s.dsn)
    except _storage_errors(s) as err:
        print(f"mamori collect status: {_storage_problem(s, err)}", file=sys.stderr)
        return 2
    try:
        rows = [] if args.jetstream else storage.status()
        routes = {} if args.jetstream else relay_routes(storage)
        stream = None if s.jetstream is None else jetstream_status(s.jetstream, storage)
    finally:
        storage.close()
    now = time.time()
    if args.jetstream:
        print(json.dumps(stream) if args.json else _jetstream_line(stream))
        return 0
    if args.json:
        docs = [r.to_dict(now) for r in rows]
        for doc in docs:  # federation: which relay brought this sensor's messages
            if (route := routes.get(doc["sensor"])) is not None:
                doc.update({"name": route.name, "via": route.via_name,
                            "via_key": route.via, "path": list(route.path)})
        print(json.dumps(docs, indent=1))
        return 0
    print(f"{'sensor':<24} {'key':<12} {'site':<20} {'epoch':>5} {'last seq':>9} {'lag':>9} "
          f"{'heartbeat':>10} {'skew':>7} {'behind':>6} {'lost':>5} {'complete':>9}  "
          "owed, rejected")
    for r in rows:
        beat = "never" if r.heartbeat_ts is None else _ago(now - r.heartbeat_ts)
        lag = "-" if not r.last_ts else _ago(r.lag(now))
        skew = "-" if r.skew is None else f"{r.skew:+.1f}s"
        done = "never" if r.complete_ts is None else _ago(now - r.complete_ts)
        owed = " ".join(f"epoch {e}: {stored}/{last}" for e, stored, last in r.owed)
        rejected = ", ".join(f"{k}={v}" for k, v in sorted(r.rejected.items()))
        site = "/".join(r.reported.get(k, "") for k in ("sector", "site")).strip("/") or "-"
        name = r.name if r.reported.get("name") in (None, r.name) else \
            f"{r.name} ({r.reported['name']})"
        if (route := routes.get(r.sensor)) is not None:
            name = f"{route.name} via {route.via_name}"
        print(f"{name[:24]:<24} {r.sensor[:10] + '..' if r.sensor else '-':<12} "
              f"{site[:20]:<20} {r.epoch:>5} {r.last_seq:>9} {lag:>9} {beat:>10} {skew:>7} "
              f"{r.outstanding:>6} {r.lost:>5} {done:>9}  "
              f"{'; '.join(x for x in (owed, rejected) if x) or '-'}")
    if stream is not None:
        print(_jetstream_line(stream))
    return 0


def _jetstream_line(state: dict[str, Any] | None) -> str:
    if state is None:
        return "jetstream: off ([collect] nats_servers is empty)"
    link = f"connected to {state.get('server') or '?'}" if state["connected"] \
        else "NOT connected"
    line = (f"jetstream: {link}, stream {state['stream']}, behind {state['behind']} "
            f"messages, published {state.get('published', 0)}")
    extra = [x for x in (state.get("note"), state.get("last_error") and
                         f"last error: {state['last_error']}") if x]
    return line + (f" ({'; '.join(extra)})" if extra else "")


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def cmd_audit(args: argparse.Namespace) -> int:
    from sensor.forwarder import ForwarderSettings
    from sensor.journal import AlertJournal

    config = _config(args, "audit")
    if config is None:
        return 2
    try:
        since = time.time() - cfg.parse_duration(args.since)
    except ValueError as err:
        print(f"mamori audit: --since: {err}", file=sys.stderr)
        return 2
    path = ForwarderSettings.from_config(config).journal
    if not path.exists():
        print(f"mamori audit: {path}: nothing forwarded yet", file=sys.stderr)
        return 1
    if (problem := foreign_sqlite(path, "epochs", "a forwarding journal")) is not None:
        print(f"mamori audit: {problem}", file=sys.stderr)
        return 2
    try:
        journal = AlertJournal(path)
        try:
            rows = journal.audit(since)
        finally:
            journal.close()
    except sqlite3.Error as err:  # a directory, a file that is not a journal, read-only
        print(f"mamori audit: {path}: not a usable journal: {err}", file=sys.stderr)
        return 1
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print(f"{'hour (UTC)':<17} {'collector':<28} {'kind':<9} {'sent':>7} {'resent':>6} "
          f"{'bytes':>9}  fields")
    for row in rows:
        hour = time.strftime("%Y-%m-%d %H:00", time.gmtime(row["hour"]))
        print(f"{hour:<17} {row['collector'][:28]:<28} {row['kind']:<9} {row['messages']:>7} "
              f"{row['retransmits']:>6} {row['bytes']:>9}  {','.join(row['fields']) or '-'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mamori")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    register_commands(commands)
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
