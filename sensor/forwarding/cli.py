"""Forwarding subcommands: ``mamori keys``, ``mamori collect`` and ``mamori audit``.

``mamori.sensor.cli`` discovers ``register_commands``;
``python -m mamori.sensor.forwarding.cli`` runs the same commands on their own (tests
and a collector-only install use that).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from mamori.sensor import config as cfg
from mamori.sensor.paths import check_output, describe, describe_mkdir, foreign_sqlite

if TYPE_CHECKING:
    pass


CollectExtra = Callable[[Any, Callable[[argparse.ArgumentParser, list[str]], None]], None]


def register_commands(subparsers: argparse._SubParsersAction,  # type: ignore[type-arg]
                      collect_extras: Sequence[CollectExtra] = ()) -> None:
    """``keys``, ``collect`` and its actions, ``audit``, ...; ``collect_extras`` add
    actions of other capabilities under ``collect`` (the assembly passes
    ``mamori collect advisories``), each given the subparsers and the config flags."""
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
    _config_flags(collect, ["sensor", "collect", "metrics"])
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
    push = collect_cmds.add_parser(
        "push-rules", help="offer a signed rule bundle to sensors",
        description="Store a signed rule bundle (mamori rules bundle) and offer it to the "
                    "sensors over their forwarding channel; each verifies it against its "
                    "own trusted keys. A sensor that is offline gets it when it returns.")
    _config_flags(push, ["sensor", "collect"])
    push.add_argument("bundle", type=Path, metavar="FILE.mrb")
    push.add_argument("--sensors", nargs="+", default=None, metavar="KEY|NAME",
                      help="allow-list names (NAME.pub) or Z85 keys (default: every sensor)")
    push.set_defaults(func=cmd_push_rules)
    for extra in collect_extras:  # issue 18: mamori collect advisories
        extra(collect_cmds, _config_flags)

    audit = subparsers.add_parser(
        "audit", help="what this sensor forwarded, to whom, when (or 'audit verify')",
        description="Without --destination: messages per hour, collector and field set. "
                    "With it: every message sent to that collector, with its policy, the "
                    "policy's hash and the fields withheld and pseudonymised.")
    _audit_flags(audit)
    audit.set_defaults(func=cmd_audit)
    audit_cmds = audit.add_subparsers(dest="audit_command", metavar="ACTION")
    verify = audit_cmds.add_parser("verify", help="check the audit chain; name the first "
                                                  "altered row")
    _config_flags(verify, ["sensor"])
    verify.set_defaults(func=cmd_audit_verify)
    resolve = audit_cmds.add_parser("resolve", help="what a pseudonym stands for (on this "
                                                    "box only)")
    _config_flags(resolve, ["sensor"])
    resolve.add_argument("pseudonym", metavar="PSEUDONYM", help="pn:HEX as a collector shows it")
    resolve.add_argument("--json", action="store_true", help="one JSON document")
    resolve.set_defaults(func=cmd_audit_resolve)


def _audit_flags(audit: argparse.ArgumentParser) -> None:
    _config_flags(audit, ["sensor"])
    audit.add_argument("--since", default="24h",
                       help="how far back: a duration (1h, 7d; default 24h) or an ISO time")
    audit.add_argument("--until", default=None,
                       help="up to: a duration ago or an ISO time (default: now)")
    audit.add_argument("--destination", default=None, metavar="ENDPOINT",
                       help="one collector (its endpoint): every message sent to it")
    audit.add_argument("--json", action="store_true", help="JSON lines")


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
    from mamori.sensor.forwarding.keys import KeyFileError, generate

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

    from mamori.sensor.collector.jetstream import NatsUnavailable
    from mamori.sensor.collector.server import CollectorServer, CollectorSettings
    from mamori.sensor.collector.storage import storage_errors, storage_problem
    from mamori.sensor.forwarding.keys import KeyFileError

    config = _config(args, "collect")
    if config is None:
        return 2
    settings = CollectorSettings.from_config(config)
    problem = _unbindable(settings.listen + ((settings.publish,) if settings.publish else ()))
    if problem is None and settings.jsonl:
        problem = check_output(Path(settings.jsonl))
    if problem is None and not settings.dsn:
        problem = foreign_sqlite(settings.db, "streams", "a collector store")
    if problem is None:
        problem = _metrics_problem(config)
    if problem is not None:
        print(f"mamori collect: {problem}", file=sys.stderr)
        return 2
    try:
        server = CollectorServer(settings)
    except storage_errors(settings) as err:
        print(f"mamori collect: {storage_problem(settings, err)}", file=sys.stderr)
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
    try:
        metrics = _serve_metrics(config, server)
    except ValueError as err:  # MetricsSetupError: the port is taken
        print(f"mamori collect: {err}", file=sys.stderr)
        server.close()
        return 2
    stop = False
    hup = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop, hup
        if signum == signal.SIGHUP:
            hup = True  # reloaded by the loop, between rounds
        else:
            stop = True  # only wake the loop; it shuts down between rounds

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    deadline = None if args.duration is None else time.monotonic() + args.duration

    def should_stop() -> bool:
        nonlocal hup
        if hup:
            hup = False
            server.reload()
        return stop or (deadline is not None and time.monotonic() > deadline)

    print(f"mamori collect: listening on {', '.join(server.settings.listen)} "
          f"({len(server.allow)} sensor keys)", file=sys.stderr, flush=True)
    try:
        server.run(should_stop)
    finally:
        if metrics is not None:
            metrics.close()
        server.close()
    print(f"mamori collect: stopped; {dict(server.counters)}", file=sys.stderr)
    return 0


def _metrics_problem(config: cfg.Config) -> str | None:
    """``[metrics] listen`` refused by the binding rules (checked before any socket)."""
    if not config.get("metrics", "listen"):
        return None
    from mamori.sensor.metrics.server import MetricsSetupError, checked_address

    try:
        checked_address(config)
    except MetricsSetupError as err:
        return str(err)
    return None


def _serve_metrics(config: cfg.Config, server: Any) -> Any:
    """The collector's ``/metrics`` endpoint, in its own thread (None when off)."""
    if not config.get("metrics", "listen"):
        return None
    from mamori.sensor.metrics.collector_metrics import CollectorMetrics
    from mamori.sensor.metrics.server import serve

    return serve(config, [CollectorMetrics(server)])


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


def cmd_collect_status(args: argparse.Namespace) -> int:
    from mamori.sensor.collector.federation import relay_routes
    from mamori.sensor.collector.jetstream import status_report as jetstream_status
    from mamori.sensor.collector.server import CollectorSettings
    from mamori.sensor.collector.storage import open_storage, storage_errors, storage_problem

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
    except storage_errors(s) as err:
        print(f"mamori collect status: {storage_problem(s, err)}", file=sys.stderr)
        return 2
    try:
        rows = [] if args.jetstream else storage.status()
        instances = {r.sensor: _instances(storage, r.sensor) for r in rows if r.sensor}
        routes = {} if args.jetstream else relay_routes(storage)
        stream = None if s.jetstream is None else jetstream_status(s.jetstream, storage)
    finally:
        storage.close()
    now = time.time()
    if args.jetstream:
        print(json.dumps(stream) if args.json else _jetstream_line(stream))
        return 0
    if args.json:
        docs = [{**r.to_dict(now), "instances": instances.get(r.sensor, [])} for r in rows]
        for doc in docs:  # federation: which relay brought this sensor's messages
            if (route := routes.get(doc["sensor"])) is not None:
                doc.update({"name": route.name, "via": route.via_name,
                            "via_key": route.via, "path": list(route.path)})
        print(json.dumps(docs, indent=1))
        return 0
    print(f"{'sensor':<24} {'key':<12} {'site':<20} {'epoch':>5} {'last seq':>9} {'lag':>9} "
          f"{'heartbeat':>10} {'skew':>7} {'behind':>6} {'lost':>5} {'complete':>9}  "
          "rules; owed, rejected")
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
              f"{r.outstanding:>6} {r.lost:>5} {done:>9}  {_rules_cell(r.rules)}; "
              f"{'; '.join(x for x in (owed, rejected) if x) or '-'}")
        for one in instances.get(r.sensor, []):
            lag = "-" if one["last_ts"] is None else _ago(now - one["last_ts"])
            named = "" if one["instance"] in ("", one["interface"]) else \
                f" (instance {one['instance']})"
            print(f"  interface {one['interface'] or '?'}{named}: epoch {one['epoch']}, "
                  f"last seq {one['last_seq']}, lag {lag}, {one['epochs']} epochs")
    if stream is not None:
        print(_jetstream_line(stream))
    return 0


def cmd_push_rules(args: argparse.Namespace) -> int:
    import hashlib

    from mamori.sensor.collector.server import CollectorSettings
    from mamori.sensor.collector.storage import open_storage, storage_errors, storage_problem
    from mamori.sensor.detection.bundle import MAX_BUNDLE_BYTES, BundleRefused, verify_self
    from mamori.sensor.forwarding.keys import KeyFileError, load_allow_list

    config = _config(args, "collect push-rules")
    if config is None:
        return 2
    s = CollectorSettings.from_config(config)
    try:
        with args.bundle.open("rb") as source:
            raw = source.read(MAX_BUNDLE_BYTES + 1)
        bundle = verify_self(raw)  # whole and signed; which keys count is each sensor's say
        allow = {key.decode(): name for key, name in load_allow_list(s.keys_dir).items()}
    except BundleRefused as refused:
        return _push_fail(f"{args.bundle}: not offered ({refused.reason.name}): {refused}")
    except (OSError, KeyFileError) as err:
        return _push_fail(describe(err) if isinstance(err, OSError) else str(err))
    by_name = {name: key for key, name in allow.items()}
    sensors = []
    for wanted in args.sensors or sorted(allow, key=allow.__getitem__):
        key = wanted if wanted in allow else by_name.get(wanted)
        if key is None:
            return _push_fail(f"{wanted}: no such sensor in the allow-list {s.keys_dir}")
        sensors.append(key)
    if not sensors:
        return _push_fail(f"{s.keys_dir}: no sensors in the allow-list")
    if not s.dsn and (problem := foreign_sqlite(s.db, "streams", "a collector store")):
        return _push_fail(problem)
    try:
        storage = open_storage(s.db, s.dsn)
    except storage_errors(s) as err:
        return _push_fail(storage_problem(s, err))
    sha = hashlib.sha256(raw).hexdigest()
    try:
        storage.offer_rules(sha, bundle.version, raw, sensors, time.time())
    except storage_errors(s) as err:
        return _push_fail(storage_problem(s, err))
    finally:
        storage.close()
    names = ", ".join(allow[k] for k in sensors)
    print(f"bundle {bundle.version} (key {bundle.key_id}, {len(raw)} bytes, sha256 "
          f"{sha[:16]}) offered to {len(sensors)} sensor(s): {names}")
    return 0


def _push_fail(message: str) -> int:
    print(f"mamori collect push-rules: {message}", file=sys.stderr)
    return 1


def _rules_cell(rules: dict[str, Any]) -> str:
    """The rules column: the version running, and the offer's fate when there is one."""
    running = rules.get("running")
    cell = "-" if running is None else str(running) if running else "none"
    if "offered" in rules and not (rules["state"] == "applied" and running == rules["offered"]):
        detail = f" {rules['detail']}" if rules.get("detail") else ""
        cell += f" (offer {rules['offered']}: {rules['state']}{detail})"
    return cell


def _instances(storage: Any, sensor: str) -> list[dict[str, Any]]:
    """The daemons behind one sensor key, told apart by their epochs' start records.

    Per-interface units (mamori-sensor@eth1, @eth2) share the box's key; each has its
    own epoch stream and says in its start record which interface it is. Per
    interface: its latest epoch, how far that is stored gap-free, the time of its
    last stored message, and how many epochs it had. Empty when no start record of
    this key names an interface (one daemon per box, or an older sensor).
    """
    latest: dict[tuple[str, str], tuple[int, int]] = {}
    counts: Counter[tuple[str, str]] = Counter()
    for (key, epoch), contig in sorted(storage.contigs().items()):
        if key != sensor:
            continue
        first = storage.messages_after(sensor, epoch, 0, 1, 1)
        start = json.loads(first[0][4]) if first else {}
        if not isinstance(start, dict) or start.get("event") != "start":
            start = {}
        who = (str(start.get("interface", "")), str(start.get("instance", "")))
        latest[who] = (epoch, contig)
        counts[who] += 1
    if all(who == ("", "") for who in latest):
        return []
    out = []
    for (interface, instance), (epoch, contig) in sorted(latest.items()):
        last = storage.messages_after(sensor, epoch, contig - 1, contig, 1) if contig else []
        out.append({"interface": interface, "instance": instance, "epoch": epoch,
                    "last_seq": contig, "last_ts": last[0][2] if last else None,
                    "epochs": counts[(interface, instance)]})
    return out


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


def _audit_db(prog: str, args: argparse.Namespace) -> tuple[sqlite3.Connection | None, int]:
    """The journal, opened read-only (the running sensor owns it), or why not."""
    config = _config(args, prog)
    if config is None:
        return None, 2
    path = config.state_path("forward", "journal")
    if not path.exists():
        print(f"mamori {prog}: {path}: nothing forwarded yet", file=sys.stderr)
        return None, 1
    if (problem := foreign_sqlite(path, "epochs", "a forwarding journal")) is not None:
        print(f"mamori {prog}: {problem}", file=sys.stderr)
        return None, 2
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    except sqlite3.Error as err:
        print(f"mamori {prog}: {path}: not a usable journal: {err}", file=sys.stderr)
        return None, 1
    if "audit_log" not in tables:
        db.close()
        print(f"mamori {prog}: {path}: this journal has no audit chain yet (written by an "
              "older version; start the sensor once)", file=sys.stderr)
        return None, 1
    return db, 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from mamori.sensor.forwarding.audit import verify

    db, status = _audit_db("audit verify", args)
    if db is None:
        return status
    try:
        verdict = verify(db)
    except sqlite3.Error as err:
        print(f"mamori audit verify: cannot read the chain: {err}", file=sys.stderr)
        return 1
    finally:
        db.close()
    span = f"rows {verdict.first}..{verdict.first + verdict.rows - 1}" if verdict.rows \
        else "no rows"
    if not verdict.ok:
        print(f"mamori audit verify: FAILED at row {verdict.bad_row}: {verdict.reason} "
              f"({verdict.rows} rows before it verify)", file=sys.stderr)
        return 1
    pruned = f" (rows before {verdict.first} pruned)" if verdict.first > 1 else ""
    print(f"audit chain intact: {span}{pruned}; head {verdict.head}")
    return 0


def cmd_audit_resolve(args: argparse.Namespace) -> int:
    from mamori.sensor.forwarding.audit import resolve

    db, status = _audit_db("audit resolve", args)
    if db is None:
        return status
    try:
        found = resolve(db, args.pseudonym)
    finally:
        db.close()
    if found is None:
        print(f"mamori audit resolve: {args.pseudonym}: not a pseudonym this sensor made, "
              "or one forgotten (the map keeps [forward] pseudonyms_max)", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(found))
    else:
        used = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(found["last_seen"]))
        print(f"pn:{found['pseudonym']} = {found['domain']} {found['value']} (key "
              f"{found['key_id']}, last used {used})")
    return 0


def _audit_messages(args: argparse.Namespace, since: float, until: float) -> int:
    """``mamori audit --destination X``: every message the chain has for X."""
    from mamori.sensor.forwarding.audit import rows as chain_rows

    db, status = _audit_db("audit", args)
    if db is None:
        return status
    try:
        rows = chain_rows(db, args.destination, since, until)
    finally:
        db.close()
    _print_rows(rows, args.json, f"{'sent (UTC)':<19} {'epoch':>5} {'seq':>7} {'kind':<9} "
                f"{'policy':<12} {'hash':<12} {'bytes':>5}  withheld / pseudonymised",
                lambda row: (
                    f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(row['ts'])):<19} "
                    f"{row['epoch']:>5} {row['seq']:>7} {row['kind']:<9} "
                    f"{row['policy'][:12]:<12} {row['policy_hash'][:12]:<12} "
                    f"{row['bytes']:>5}  {','.join(row['withheld']) or '-'} / "
                    f"{','.join(row['pseudonymised']) or '-'}"))
    print(f"{len(rows)} messages to {args.destination}", file=sys.stderr)
    return 0


def _print_rows(rows: list[dict[str, Any]], as_json: bool, header: str,
                line: Callable[[dict[str, Any]], str]) -> None:
    """Audit rows as JSON lines, or as a table under ``header``."""
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    print(header)
    for row in rows:
        print(line(row))


def cmd_audit(args: argparse.Namespace) -> int:
    from mamori.sensor.forwarding.journal import AlertJournal
    from mamori.sensor.timefmt import parse_time

    now = time.time()
    times = []
    for flag, text in (("--since", args.since), ("--until", args.until)):
        try:
            when = None if text is None else parse_time(text, now)
            times.append(now if when is None else when)
        except ValueError as err:
            print(f"mamori audit: {flag}: {err}", file=sys.stderr)
            return 2
    since, until = times
    if args.destination is not None:
        return _audit_messages(args, since, until)
    config = _config(args, "audit")
    if config is None:
        return 2
    path = config.state_path("forward", "journal")
    if not path.exists():
        print(f"mamori audit: {path}: nothing forwarded yet", file=sys.stderr)
        return 1
    if (problem := foreign_sqlite(path, "epochs", "a forwarding journal")) is not None:
        print(f"mamori audit: {problem}", file=sys.stderr)
        return 2
    try:
        journal = AlertJournal(path)
        try:
            rows = [r for r in journal.audit(since) if r["first_ts"] <= until]
        finally:
            journal.close()
    except sqlite3.Error as err:  # a directory, a file that is not a journal, read-only
        print(f"mamori audit: {path}: not a usable journal: {err}", file=sys.stderr)
        return 1
    _print_rows(rows, args.json, f"{'hour (UTC)':<17} {'collector':<28} {'kind':<9} "
                f"{'sent':>7} {'resent':>6} {'bytes':>9}  fields",
                lambda row: (
                    f"{time.strftime('%Y-%m-%d %H:00', time.gmtime(row['hour'])):<17} "
                    f"{row['collector'][:28]:<28} {row['kind']:<9} {row['messages']:>7} "
                    f"{row['retransmits']:>6} {row['bytes']:>9}  "
                    f"{','.join(row['fields']) or '-'}"))
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
