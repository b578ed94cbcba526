"""Thousands of simulated sensors from a few processes, against a real collector.

Each simulated sensor is what a collector sees of a real one: its own CURVE key pair
(its public key in the collector's allow-list), its own ZeroMQ DEALER connection with
the forwarder's socket options, an epoch whose seq 1 is the start record, heartbeats
every ``--heartbeat`` s (first at a random phase, carrying the last seq assigned), a
trickle of alerts (one every ``--alert-interval`` s per sensor) and the forwarder's
go-back-N: unacknowledged messages are kept, resent on a replay request and after
``--ack-timeout`` without acks. ``--drop`` leaves out that share of first sends on
purpose, so the collector has gaps to find (from the next message or heartbeat) and
repair; a stream counts as complete only when the collector acknowledged all of it.

What it does not simulate: the sensor's journal on disk (the outbox is memory), so it
measures the collector, not sensor disks.

A worker process holds ``--sensors / --procs`` sensors in one ZeroMQ context (with
``max_sockets`` raised: one socket per sensor) and one poller. Per sensor it reports
the handshake time (connect until the socket is writable: with ``ZMQ_IMMEDIATE``
that is once CURVE and the collector's ZAP check are done) and the
time to the first ack (handshake + storage commit + the way back).

    python bench/sim_sensors.py --endpoint tcp://127.0.0.1:7700 \\
        --server-key collector.pub --keys-dir keys/sensors --sensors 1000 --procs 2

prints one JSON document: per worker and in total, sensors complete, messages sent,
resent and deliberately dropped, handshake and first-ack percentiles.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import zmq

PROJECT = Path(__file__).resolve().parents[1]
if str(PROJECT) not in sys.path:
    sys.path.insert(0, str(PROJECT))

from mamori.parsers.alerts import Alert, Severity  # noqa: E402
from mamori.parsers.wire import (  # noqa: E402
    Ack,
    Kind,
    ReplayRequest,
    WireError,
    alert_body,
    decode_control,
    encode,
)

HEARTBEAT, ALERT = 0, 1  # timer kinds


def make_keys(n: int, keys_dir: Path, secrets: Path, prefix: str = "sim") -> None:
    """``n`` key pairs: ``PREFIX{i}.pub`` in the collector's allow-list directory, the
    secrets (one Z85 line each, mode 0600) in one file for the workers."""
    keys_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        public, secret = zmq.curve_keypair()
        (keys_dir / f"{prefix}{i}.pub").write_text(
            f"# simulated sensor {prefix}{i}\n{public.decode()}\n")
        lines.append(secret.decode())
    fd = os.open(secrets, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines) + "\n")


def raise_fd_limit(want: int) -> int:
    """Soft RLIMIT_NOFILE up to ``want`` (never past the hard limit); the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _alert(i: int, now: float) -> list[Any]:
    return alert_body(Alert(
        "mamori.modbus.write_unknown_master", "M3", Severity.HIGH, ("T0855",),
        "Modbus write from a new master", "modbus", now, now, src="10.20.1.15",
        sport=50412, dst="10.20.2.7", dport=502, unit=1, evidence={"fc": 6}, id=i))


class SimSensor:
    """One simulated sensor: a socket and the forwarder's go-back-N state."""

    __slots__ = ("acked", "alerts", "first_ack", "handshake", "index", "last_progress",
                 "max_sent", "name", "outbox", "sent", "seq", "skip", "sock", "started")

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], index: int, secret: bytes,
                 server_key: bytes, endpoint: str) -> None:
        self.index = index
        self.name = f"sim{index}"
        self.sock: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
        self.sock.curve_secretkey = secret
        self.sock.curve_publickey = zmq.curve_public(secret)
        self.sock.curve_serverkey = server_key
        for option, value in ((zmq.LINGER, 0), (zmq.IMMEDIATE, 1), (zmq.SNDHWM, 2064),
                              (zmq.RCVHWM, 10_000), (zmq.RECONNECT_IVL, 100),
                              (zmq.RECONNECT_IVL_MAX, 2000), (zmq.HEARTBEAT_IVL, 2000),
                              (zmq.HEARTBEAT_TIMEOUT, 6000)):
            self.sock.setsockopt(option, value)
        self.started = time.monotonic()
        self.sock.connect(endpoint)
        self.seq = 0  # last seq assigned (epoch 1)
        self.sent = 0  # go-back-N cursor: highest seq sent
        self.max_sent = 0  # highest seq ever sent (or deliberately dropped)
        self.acked = 0
        self.outbox: dict[int, bytes] = {}  # unacknowledged, by seq
        self.skip: set[int] = set()  # seqs whose first send is left out (fault injection)
        self.handshake: float | None = None
        self.first_ack: float | None = None
        self.last_progress = self.started
        self.alerts = 0

    def add(self, kind: Kind, body: Any, now: float, drop: bool = False) -> None:
        self.seq += 1
        self.outbox[self.seq] = encode(1, self.seq, now, kind, body)
        if drop:
            self.skip.add(self.seq)

    def heartbeat(self, now: float, up: float) -> None:
        frame = encode(1, self.seq, now, Kind.HEARTBEAT,
                       {"up": round(up, 3), "clock": now, "name": self.name})
        with contextlib.suppress(zmq.Again):
            self.sock.send(frame, zmq.NOBLOCK)

    def pump(self, counts: dict[str, int]) -> None:
        """Send what the cursor has not sent yet, in order, until the socket refuses."""
        while self.sent < self.seq:
            seq = self.sent + 1
            frame = self.outbox.get(seq)
            if frame is None:  # acknowledged meanwhile (an ack past a rewind)
                self.sent = seq
                continue
            first_time = seq > self.max_sent
            if first_time and seq in self.skip:
                self.skip.discard(seq)
                counts["dropped"] += 1  # "lost on the way": the collector must notice
            else:
                try:
                    self.sock.send(frame, zmq.NOBLOCK)
                except zmq.Again:
                    return
                counts["sent" if first_time else "resent"] += 1
            self.sent = seq
            self.max_sent = max(self.max_sent, seq)

    def control(self, counts: dict[str, int]) -> None:
        for _ in range(1000):
            try:
                frame = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = decode_control(frame)
            except WireError:
                counts["control_errors"] += 1
                continue
            if isinstance(msg, Ack):
                if msg.epoch != 1:
                    continue
                if self.first_ack is None:
                    self.first_ack = time.monotonic() - self.started
                if msg.seq > self.acked:
                    for seq in range(self.acked + 1, msg.seq + 1):
                        self.outbox.pop(seq, None)
                    self.acked = msg.seq
                    self.last_progress = time.monotonic()
                self.sent = max(self.sent, self.acked)
            elif (isinstance(msg, ReplayRequest) and msg.epoch == 1
                  and msg.first <= self.sent):  # sent, lost on the way
                counts["replays"] += 1
                self.sent = max(self.acked, msg.first - 1)
                self.last_progress = time.monotonic()


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    ordered = sorted(values)
    return {"p50": round(statistics.median(ordered), 4),
            "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 4),
            "max": round(ordered[-1], 4)}


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Run sensors ``args.first .. args.first + args.count - 1`` until done."""
    secrets = Path(args.secrets).read_text().split()
    mine = secrets[args.first:args.first + args.count]
    raise_fd_limit(4 * len(mine) + 256)
    rng = random.Random(args.seed * 1_000_003 + args.first)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    ctx.max_sockets = len(mine) + 64  # default 1023: one socket per simulated sensor
    server_key = Path(args.server_key).read_text().split()[-1].encode()
    counts = {"sent": 0, "resent": 0, "dropped": 0, "replays": 0, "control_errors": 0,
              "timeouts": 0}
    sensors: list[SimSensor] = []
    timers: list[tuple[float, int, int]] = []
    poller = zmq.Poller()
    t0 = time.monotonic()
    gap = 1.0 / args.connect_rate if args.connect_rate else 0.0
    next_connect = t0
    stop_alerts = t0 + args.duration
    deadline = stop_alerts + args.drain
    by_sock: dict[zmq.Socket[bytes], SimSensor] = {}
    busy: set[int] = set()  # sensors holding unacknowledged messages
    while True:
        now = time.monotonic()
        made = 0  # at most 100 new sockets a round, so the others' handshakes are served
        while len(sensors) < len(mine) and now >= next_connect and made < 100:
            made += 1
            s = SimSensor(ctx, args.first + len(sensors), mine[len(sensors)].encode(),
                          server_key, args.endpoint)
            s.add(Kind.HEALTH, {"event": "start", "epoch": 1, "name": s.name}, time.time())
            sensors.append(s)
            busy.add(len(sensors) - 1)
            by_sock[s.sock] = s
            poller.register(s.sock, zmq.POLLIN | zmq.POLLOUT)  # POLLOUT: handshake done
            heapq.heappush(timers, (now + rng.uniform(0, args.heartbeat), HEARTBEAT,
                                    len(sensors) - 1))
            if args.alert_interval > 0:
                heapq.heappush(timers, (now + rng.uniform(0, args.alert_interval), ALERT,
                                        len(sensors) - 1))
            next_connect += gap
        draining = now >= stop_alerts
        while timers and timers[0][0] <= now:
            _, kind, index = heapq.heappop(timers)
            s = sensors[index]
            if kind == HEARTBEAT:
                s.heartbeat(time.time(), now - s.started)
                heapq.heappush(timers, (now + args.heartbeat, HEARTBEAT, index))
            elif not draining:
                s.alerts += 1
                s.add(Kind.ALERT, _alert(s.alerts, time.time()), time.time(),
                      drop=rng.random() < args.drop)
                busy.add(index)
                heapq.heappush(timers, (now + args.alert_interval, ALERT, index))
        for sock, events in poller.poll(20):
            s = by_sock[sock]
            if events & zmq.POLLOUT and s.handshake is None:
                s.handshake = time.monotonic() - s.started
                s.last_progress = time.monotonic()
                poller.modify(sock, zmq.POLLIN)
            if events & zmq.POLLIN:
                s.control(counts)
        now = time.monotonic()
        for index in list(busy):
            s = sensors[index]
            if not s.outbox:
                busy.discard(index)
                continue
            if s.handshake is None:  # not connected yet: nothing to try
                continue
            if now - s.last_progress > args.ack_timeout:
                counts["timeouts"] += 1
                s.sent = s.acked  # go back to the first unacknowledged message
                s.last_progress = now
            if s.sent < s.seq:
                s.pump(counts)
        if draining and len(sensors) == len(mine) and (not busy or now > deadline):
            break
    for s in sensors:  # the last word: everything is acknowledged, as Forwarder.close does
        if not s.outbox:
            s.heartbeat(time.time(), time.monotonic() - s.started)
    time.sleep(1.0)  # let the last heartbeats leave before the sockets close
    complete = sum(1 for s in sensors if not s.outbox and s.acked == s.seq)
    result = {
        "sensors": len(sensors), "complete": complete, **counts,
        "messages": sum(s.seq for s in sensors),
        "unacked": sum(len(s.outbox) for s in sensors),
        "last_seq": {s.name: s.seq for s in sensors},
        "handshake": [s.handshake for s in sensors if s.handshake is not None],
        "first_ack": [s.first_ack for s in sensors if s.first_ack is not None],
        "elapsed": round(time.monotonic() - t0, 2),
    }
    for s in sensors:
        s.sock.close(0)
    ctx.term()
    return result


def run(endpoint: str, server_key: Path, secrets: Path, sensors: int, procs: int,
        duration: float, *, heartbeat: float = 10.0, alert_interval: float = 30.0,
        drop: float = 0.0, ack_timeout: float = 5.0, drain: float = 60.0,
        connect_rate: float = 0.0, seed: int = 1) -> dict[str, Any]:
    """Start ``procs`` workers holding ``sensors`` between them; their merged report."""
    per = -(-sensors // procs)
    children = []
    for first in range(0, sensors, per):
        children.append(subprocess.Popen(
            [sys.executable, __file__, "--worker", "--endpoint", endpoint, "--server-key",
             str(server_key), "--secrets", str(secrets), "--first", str(first),
             "--count", str(min(per, sensors - first)), "--duration", str(duration),
             "--heartbeat", str(heartbeat), "--alert-interval", str(alert_interval),
             "--drop", str(drop), "--ack-timeout", str(ack_timeout), "--drain", str(drain),
             "--connect-rate", str(connect_rate / procs if connect_rate else 0),
             "--seed", str(seed)], stdout=subprocess.PIPE, text=True))
    parts = []
    for child in children:
        out, _ = child.communicate(timeout=duration + drain + 600)
        if child.returncode != 0:
            raise RuntimeError(f"simulator worker failed ({child.returncode})")
        parts.append(json.loads(out))
    total: dict[str, Any] = {k: sum(p[k] for p in parts) for k in (
        "sensors", "complete", "sent", "resent", "dropped", "replays", "control_errors",
        "timeouts", "messages", "unacked")}
    total["last_seq"] = {k: v for p in parts for k, v in p["last_seq"].items()}
    total["handshake"] = _percentiles([x for p in parts for x in p["handshake"]])
    total["first_ack"] = _percentiles([x for p in parts for x in p["first_ack"]])
    total["connected"] = sum(len(p["handshake"]) for p in parts)
    total["elapsed"] = max(p["elapsed"] for p in parts)
    return total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoint", required=True)
    p.add_argument("--server-key", required=True, help="the collector's .pub file")
    p.add_argument("--keys-dir", help="write the sensors' .pub files here (the allow-list)")
    p.add_argument("--secrets", help="the secrets file (written with --keys-dir)")
    p.add_argument("--sensors", type=int, default=1000)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--duration", type=float, default=30.0, help="seconds of alert trickle")
    p.add_argument("--heartbeat", type=float, default=10.0)
    p.add_argument("--alert-interval", type=float, default=30.0, help="per sensor; 0 = none")
    p.add_argument("--drop", type=float, default=0.0, help="share of first sends left out")
    p.add_argument("--ack-timeout", type=float, default=5.0)
    p.add_argument("--drain", type=float, default=60.0, help="max seconds to get all acked")
    p.add_argument("--connect-rate", type=float, default=0.0, help="connects/s; 0 = at once")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    secrets = Path(args.secrets or "sim-secrets.txt")
    if args.keys_dir:
        make_keys(args.sensors, Path(args.keys_dir), secrets)
    report = run(args.endpoint, Path(args.server_key), secrets, args.sensors, args.procs,
                 args.duration, heartbeat=args.heartbeat, alert_interval=args.alert_interval,
                 drop=args.drop, ack_timeout=args.ack_timeout, drain=args.drain,
                 connect_rate=args.connect_rate, seed=args.seed)
    report.pop("last_seq")
    print(json.dumps(report, indent=1))
    return 0 if report["complete"] == args.sensors else 1


if __name__ == "__main__":
    sys.exit(main())
