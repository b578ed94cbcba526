"""The ``[forward]`` and ``[collect]`` configuration options, without their machinery.

They live apart from the forwarder and the collector so that the schema
(``mamori.sensor.schema``) can hold every option without importing ZeroMQ:
``mamori replay`` should not pay for a socket library it never uses. ``OPTIONS``
and ``CHECKS`` are the whole of it, in schema order.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mamori.parsers.wire import ALERT_FIELDS, DEFAULT_DENY_FIELDS, MAX_MESSAGE_BYTES
from mamori.sensor import configkit as cfg
from mamori.sensor.forwarding.policy import DEFAULT_POLICY, PolicySpec, parse_policies
from mamori.sensor.forwarding.pseudonym import key_problem
from mamori.sensor.paths import check_creatable, describe_mkdir, foreign_sqlite


@dataclass(frozen=True, slots=True)
class CollectorSpec:
    """Where one collector listens, the public key its CURVE server must prove, and the
    forwarding policy that decides what it is sent."""

    endpoint: str
    server_key: str  # Z85 key, or a path to a .pub file (relative to the state dir)
    policy: str = DEFAULT_POLICY

    def as_config(self) -> dict[str, str]:
        """The TOML table that configures this entry (``check-config --dump``)."""
        return {"endpoint": self.endpoint, "server_key": self.server_key,
                "policy": self.policy}


class EntryError(ValueError):
    """A problem in the N-th collectors entry; ``at`` points the config line at it."""

    def __init__(self, at: tuple[str | int, ...], message: str) -> None:
        self.at = at
        super().__init__(message)


def v_collectors(value: Any) -> tuple[CollectorSpec, ...]:
    if not isinstance(value, list):
        raise ValueError("must be a list of {endpoint, server_key[, policy]} tables")
    out: list[CollectorSpec] = []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or not {"endpoint", "server_key"} <= set(item) \
                or not set(item) <= {"endpoint", "server_key", "policy"}:
            raise EntryError((index,), f"{item!r} must have endpoint and server_key, "
                                       "and may name a policy")
        endpoint, key = item["endpoint"], item["server_key"]
        if not isinstance(endpoint, str) or not endpoint.startswith(("tcp://", "ipc://")):
            raise EntryError((index, "endpoint"),
                             f"{endpoint!r} is not a tcp:// or ipc:// endpoint")
        if not isinstance(key, str) or not key:
            raise EntryError((index, "server_key"),
                             "server_key must be a Z85 key or a .pub file path")
        policy = item.get("policy", DEFAULT_POLICY)
        if not isinstance(policy, str) or not policy:
            raise EntryError((index, "policy"), "policy must name a [forward.policies.NAME]")
        if any(spec.endpoint == endpoint for spec in out):
            raise EntryError((index, "endpoint"), f"{endpoint} is listed twice (one "
                             "stream per collector: two would interleave their seqs)")
        out.append(CollectorSpec(endpoint, key, policy))
    return tuple(out)


def v_policies(value: Any) -> dict[str, PolicySpec]:
    return parse_policies(value)


def v_fields(value: Any) -> tuple[str, ...]:
    names = cfg.v_str_list(value)
    for name in names:
        if name != "*" and name.split(".", 1)[0] not in ALERT_FIELDS:
            raise ValueError(f"{name!r} is not an alert field ({', '.join(ALERT_FIELDS)})")
    return tuple(sorted(set(names)))  # sorted: the same set dumps and reloads equal


INSTANCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,63}")


def v_instance(value: Any) -> str:
    text = cfg.v_str(value)
    if text and not INSTANCE.fullmatch(text):
        raise ValueError(f"{text!r} is not an instance name (an interface name: letters, "
                         "digits, _ . : @ -; max 64)")
    return text


def forwarding_problem(config: cfg.Config, err: Exception) -> str:
    """What starting the forwarder raised, naming the file (SQLite names none)."""
    if isinstance(err, sqlite3.Error):
        return f"{config.state_path('forward', 'journal')}: {err}"
    if isinstance(err, OSError):
        return describe_mkdir(err)
    return str(err)


def journal_path(config: cfg.Config) -> Path:
    """The forwarding journal: ``[forward] journal``, or, left at its default on a
    box that runs one daemon per interface (``[sensor] instance``, the unit's %I),
    ``forward/INSTANCE/journal.db``: each instance has its own epoch stream."""
    instance = str(config.get("sensor", "instance"))
    if instance and config.sources.get(("forward", "journal"), "default") == "default":
        return Path(config.get("sensor", "state_dir")) / "forward" / instance / "journal.db"
    return config.state_path("forward", "journal")


FORWARD_OPTIONS: tuple[cfg.Option, ...] = (
    cfg.Option("sensor", "instance", "", v_instance,
               "which of several daemons on one box this is (mamori-sensor@IF passes the "
               "interface): its own journal and epochs, named to the collectors",
               "--instance"),
    cfg.Option("forward", "collectors", (), v_collectors,
               "collectors to forward to: a list of {endpoint, server_key[, policy]} tables"),
    cfg.Option("forward", "policies", {}, v_policies,
               "named forwarding policies, [forward.policies.NAME] (docs/forwarding-policy.md)"),
    cfg.Option("forward", "pseudonym_key", Path("keys/pseudonym.key"), cfg.v_path,
               "site-held HMAC key for pseudonymising policies; created 0600 if missing"),
    cfg.Option("forward", "audit_max_rows", 1_000_000, cfg.v_int_range(1000, 2**40),
               "audit chain rows kept; older ones are pruned behind a verified anchor"),
    cfg.Option("forward", "pseudonyms_max", 100_000, cfg.v_int_range(100, 100_000_000),
               "pseudonyms remembered for 'mamori audit resolve' (least recent go first)"),
    cfg.Option("forward", "secret_key", Path("keys/sensor.secret"), cfg.v_path,
               "this sensor's CURVE secret key (relative to the state dir)"),
    cfg.Option("forward", "journal", Path("forward/journal.db"), cfg.v_path,
               "the outbound journal (relative to the state dir)"),
    cfg.Option("forward", "journal_max_bytes", 64 * 1024 * 1024,
               cfg.v_int_range(64 * 1024, 2**40),
               "journal budget; acknowledged messages go first, unacknowledged raise S4"),
    cfg.Option("forward", "heartbeat_interval", 10.0, cfg.v_seconds,
               "seconds between heartbeats to each collector"),
    cfg.Option("forward", "ack_timeout", 5.0, cfg.v_seconds,
               "resend from the first unacknowledged message after this long without acks"),
    cfg.Option("forward", "window", 2000, cfg.v_int_range(1, 1_000_000),
               "messages in flight per collector before waiting for an ack"),
    cfg.Option("forward", "unreachable_after", 300.0, cfg.v_seconds,
               "raise S6 when a collector has been unreachable for this long"),
    cfg.Option("forward", "allow_fields", ("*",), v_fields,
               "alert fields that may leave the box ('*' = all, 'evidence.fc' = one key)"),
    cfg.Option("forward", "deny_fields", DEFAULT_DENY_FIELDS, v_fields,
               "alert fields that never leave the box (wins over allow_fields)"),
)


def v_endpoints(value: Any) -> tuple[str, ...]:
    """One endpoint or a list of them (a ``--listen`` flag gives one)."""
    items = cfg.v_str_list([value] if isinstance(value, str) else value)
    if not items:
        raise ValueError("at least one endpoint is needed")
    return items


COLLECT_OPTIONS: tuple[cfg.Option, ...] = (
    cfg.Option("collect", "listen", ("tcp://*:7700",), v_endpoints,
               "endpoints the collector binds for sensors", "--listen"),
    cfg.Option("collect", "secret_key", Path("keys/collector.secret"), cfg.v_path,
               "the collector's CURVE secret key (relative to the state dir)"),
    cfg.Option("collect", "keys_dir", Path("keys/sensors"), cfg.v_path,
               "allow-list: one NAME.pub per sensor (relative to the state dir)", "--keys-dir"),
    cfg.Option("collect", "db", Path("collector/collector.db"), cfg.v_path,
               "SQLite store, used when no DSN is given (relative to the state dir)", "--db"),
    cfg.Option("collect", "dsn", "", cfg.v_str,
               "PostgreSQL DSN (e.g. 'host=/run/postgresql dbname=mamori'); empty = SQLite",
               "--dsn"),
    cfg.Option("collect", "publish", "tcp://127.0.0.1:7701", cfg.v_str,
               "local PUB endpoint re-publishing accepted alerts as JSON; empty = off",
               "--publish"),
    cfg.Option("collect", "jsonl", "", cfg.v_str,
               "append accepted alerts as JSON lines to this file (for a SIEM); empty = off",
               "--jsonl"),
    cfg.Option("collect", "max_message_bytes", MAX_MESSAGE_BYTES,
               cfg.v_int_range(1024, 16 * 1024 * 1024),
               "larger messages are rejected before they are unpacked"),
    cfg.Option("collect", "replay_interval", 1.0, cfg.v_seconds,
               "minimum time between two replay requests for the same stream"),
    cfg.Option("collect", "max_clock_skew", 30.0, cfg.v_seconds,
               "a sensor whose clock differs from the collector's by more is reported (S5)"),
    cfg.Option("collect", "retention", 0.0, cfg.v_seconds,
               "forget messages received longer ago (e.g. '90d'; PostgreSQL drops whole "
               "days); 0 = keep everything"),
    cfg.Option("collect", "io_threads", 2, cfg.v_int_range(1, 64),
               "ZeroMQ I/O threads (CURVE and TCP of all sensor links; about one per "
               "5,000 sensors, at most one per core)"),
    cfg.Option("collect", "relay_keys_dir", "", cfg.v_str,
               "federation: one NAME.pub per lower-tier collector trusted to relay "
               "(relative to the state dir); empty = relayed messages refused"),
    cfg.Option("collect", "upstream", "", cfg.v_str,
               "federation: relay everything accepted to this upper-tier collector "
               "(tcp://host:port); empty = off"),
    cfg.Option("collect", "upstream_key", "", cfg.v_str,
               "the upper-tier collector's public key: Z85 or a .pub path"),
    cfg.Option("collect", "upstream_cursor", Path("collector/federation.db"), cfg.v_path,
               "what the upper tier acknowledged, per stream (relative to the state dir)"),
    cfg.Option("collect", "upstream_window", 5000, cfg.v_int_range(1, 1_000_000),
               "relayed messages in flight before waiting for the upper tier's acks"),
    cfg.Option("collect", "upstream_heartbeat", 10.0, cfg.v_seconds,
               "seconds between relaying each sensor's latest heartbeat upward"),
    cfg.Option("collect", "upstream_ack_timeout", 5.0, cfg.v_seconds,
               "resend from the upper tier's last ack after this long without acks"),
)


def check_upstream(config: cfg.Config) -> list[cfg.Problem]:
    """An upstream needs the upper tier's key."""
    if config.get("collect", "upstream") and not config.get("collect", "upstream_key"):
        return [cfg.Problem("collect", "upstream_key",
                            "needed when [collect] upstream is set (the upper tier's key)")]
    if (up := config.get("collect", "upstream")) and not up.startswith(("tcp://", "ipc://")):
        return [cfg.Problem("collect", "upstream", f"{up!r} is not a tcp:// or ipc:// endpoint")]
    return []




def _key_file(path: Path, *, secret: bool = False) -> str | None:
    """Why the key file at ``path`` cannot be used, or None: what start-up would find.

    Missing, a directory, unreadable, not a Z85 key, or a secret key others can read.
    """
    from mamori.sensor.forwarding.keys import KeyFileError, read_key  # ZeroMQ: only with forwarding

    try:
        if not path.exists():
            return f"{path}: no such key file (mamori keys generate)"
        if path.is_dir():
            return f"{path}: is a directory, not a key file"
    except OSError as err:  # a directory on the way that we may not enter
        return f"{path}: cannot read the key file: {err.strerror or err}"
    try:
        read_key(path, secret=secret)
    except KeyFileError as err:
        return str(err)
    return None


def check_key_files(config: cfg.Config) -> list[cfg.Problem]:
    """Forwarding configured: every collector's server_key file and our secret key are usable."""
    collectors: tuple[CollectorSpec, ...] = config.get("forward", "collectors")
    if not collectors:
        return []
    from mamori.sensor.forwarding.keys import is_z85_key  # ZeroMQ: only with forwarding

    base = Path(config.get("sensor", "state_dir"))
    problems = []
    for index, spec in enumerate(collectors):
        if is_z85_key(spec.server_key):
            continue
        path = Path(spec.server_key)
        why = _key_file(path if path.is_absolute() else base / path)
        if why is not None:
            problems.append(cfg.Problem("forward", "collectors",
                                        f"server_key of {spec.endpoint}: {why}",
                                        at=("forward", "collectors", index, "server_key")))
    secret = config.state_path("forward", "secret_key")
    why = _key_file(secret, secret=True)
    if why is not None:
        where = ("forward", "secret_key") if config.sources.get(
            ("forward", "secret_key"), "default") != "default" else ("forward", "collectors")
        problems.append(cfg.Problem("forward", "secret_key", why, at=where))
    return problems


def pseudonym_key_path(config: cfg.Config, spec: PolicySpec) -> Path:
    """The key file a pseudonymising policy uses, resolved against the state dir."""
    path = spec.pseudonym_key or Path(config.get("forward", "pseudonym_key"))
    return path if path.is_absolute() else Path(config.get("sensor", "state_dir")) / path


def check_policies(config: cfg.Config) -> list[cfg.Problem]:
    """Every collector names a defined policy; every pseudonym key is usable."""
    policies: dict[str, PolicySpec] = config.get("forward", "policies")
    problems = []
    used = set()
    for index, spec in enumerate(config.get("forward", "collectors")):
        if spec.policy != DEFAULT_POLICY and spec.policy not in policies:
            known = ", ".join([DEFAULT_POLICY, *sorted(policies)])
            problems.append(cfg.Problem(
                "forward", "collectors", f"{spec.endpoint}: no policy {spec.policy!r} "
                f"(defined: {known})", at=("forward", "collectors", index, "policy")))
        used.add(spec.policy)
    for name, spec in sorted(policies.items()):
        if spec.pseudonymise and name in used:
            why = key_problem(pseudonym_key_path(config, spec))
            if why is not None:
                key = "pseudonym_key" if spec.pseudonym_key else "pseudonymise"
                problems.append(cfg.Problem("forward", "policies", f"{name}: {why}",
                                            at=("forward", "policies", name, key)))
    return problems


def check_journal(config: cfg.Config) -> list[cfg.Problem]:
    """Forwarding configured: the journal can be created, or is a journal already."""
    if not config.get("forward", "collectors"):
        return []
    path = journal_path(config)
    problem = check_creatable(path) or foreign_sqlite(path, "epochs", "a forwarding journal")
    return [cfg.Problem("forward", "journal", problem,
                        at=None if config.sources.get(("forward", "journal"), "default")
                        != "default" else ("forward", "collectors"))] if problem else []


CHECKS: tuple[cfg.CrossCheck, ...] = (
    cfg.CrossCheck.of(check_upstream, [("collect", "upstream"), ("collect", "upstream_key")]),
    cfg.CrossCheck.of(check_journal, [("sensor", "state_dir"), ("sensor", "instance"),
                                      ("forward", "collectors"), ("forward", "journal")]),
    cfg.CrossCheck.of(check_policies, [("sensor", "state_dir"), ("forward", "collectors"),
                                       ("forward", "policies"), ("forward", "pseudonym_key")]),
    cfg.CrossCheck.of(check_key_files, [("sensor", "state_dir"), ("forward", "collectors"),
                                        ("forward", "secret_key")]),
)


def v_nats_servers(value: Any) -> tuple[str, ...]:
    """NATS server URLs (``nats://host:4222`` or ``tls://...``); empty = JetStream off."""
    items = cfg.v_str_list(value)
    for url in items:
        if not url.startswith(("nats://", "tls://")) or len(url) <= len("nats://"):
            raise ValueError(f"{url!r} is not a nats:// or tls:// URL")
    return items


def v_stream_name(value: Any) -> str:
    name = cfg.v_nonempty_str(value)
    if any(c in name for c in ". *>\t\n/\\") or not name.isprintable():
        raise ValueError(f"{name!r} is not a JetStream stream name (no '.', '*', '>', "
                         "'/', whitespace)")
    return name


NATS_OPTIONS: tuple[cfg.Option, ...] = (
    cfg.Option("collect", "nats_servers", (), v_nats_servers,
               "NATS servers to publish to JetStream (empty = off; the PUB socket stays)"),
    cfg.Option("collect", "nats_stream", "MAMORI", v_stream_name,
               "the JetStream stream the collector creates and publishes to"),
    cfg.Option("collect", "nats_subject_prefix", "mamori", v_stream_name,
               "first subject token: PREFIX.alert.SECTOR.SITE.SENSOR.SEVERITY.PRECURSOR"),
    cfg.Option("collect", "nats_replicas", 1, cfg.v_int_range(1, 5),
               "stream replicas (3 on a three-node cluster)"),
    cfg.Option("collect", "nats_creds", "", cfg.v_str,
               "NATS credentials file (.creds, relative to the state dir); empty = none"),
    cfg.Option("collect", "nats_user", "", cfg.v_str, "NATS user name; empty = none"),
    cfg.Option("collect", "nats_password", "", cfg.v_str, "NATS password for nats_user"),
    cfg.Option("collect", "nats_cursor", Path("collector/jetstream.db"), cfg.v_path,
               "what was published and acked, per stream (relative to the state dir)"),
    cfg.Option("collect", "nats_max_age", 0.0, cfg.v_seconds,
               "drop stream messages older than this (0 = keep)"),
    cfg.Option("collect", "nats_duplicate_window", 600.0, cfg.v_seconds,
               "JetStream drops a re-published message (same Nats-Msg-Id) within this"),
)

OPTIONS: tuple[cfg.Option, ...] = (*FORWARD_OPTIONS, *COLLECT_OPTIONS, *NATS_OPTIONS)
