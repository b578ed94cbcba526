"""Simulated sensors for the ingest benchmarks: many CURVE links from one process.

Each simulated sensor has its own key in the collector's allow-list and its own DEALER
socket, so every link is a real CURVE handshake and every frame is really encrypted.
What a real sensor does around the link (detection, the SQLite journal and its fsync)
is left out: the subject is the collector. A sensor speaks the real wire protocol:
epoch 1, seqs from 1, a window of unacknowledged frames, go-back-N on a replay
request, done when the collector acknowledged its last seq.

    python bench/ingest_sim.py CONF.json

CONF.json: {"endpoint", "server_key" (Z85), "secrets" [Z85 secret per sensor],
"alerts" per sensor, "rate" aggregate alerts/s (0 = as fast as acks allow),
"window", "timeout"}. Prints one JSON line: sent, acked, first_send, last_ack.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

import zmq  # noqa: E402

from mamori.parsers.alerts import Alert, Severity  # noqa: E402
from mamori.parsers.wire import Ack, Kind, ReplayRequest, alert_body, decode_control, encode  # noqa: E402


def frame(seq: int, ts: float) -> bytes:
    """One alert as a sensor sends it (a Modbus write from an unknown master)."""
    alert = Alert("mamori.modbus.write_unknown_master", "M3", Severity.HIGH, ("T0855",),
                  "Modbus write from a new master", "modbus", ts, ts, src="10.20.1.15",
                  sport=50412, dst="10.20.2.7", dport=502, unit=1,
                  evidence={"fc": 6, "addr": 40001}, id=seq)
    return encode(1, seq, ts, Kind.ALERT, alert_body(alert))


class Link:
    """One simulated sensor."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], conf: dict[str, Any],
                 secret: str) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.curve_secretkey = secret.encode()
        self.sock.curve_publickey = zmq.curve_public(secret.encode())
        self.sock.curve_serverkey = conf["server_key"].encode()
        self.sock.linger = 0
        self.sock.sndhwm = self.sock.rcvhwm = 0
        self.sock.connect(conf["endpoint"])
        self.total = int(conf["alerts"])
        self.next = 1  # the next seq to send
        self.acked = 0

    @property
    def done(self) -> bool:
        return self.acked >= self.total

    def read(self) -> None:
        while True:
            try:
                msg = decode_control(self.sock.recv(zmq.NOBLOCK))
            except zmq.Again:
                return
            if isinstance(msg, Ack):
                self.acked = max(self.acked, msg.seq)
                self.next = max(self.next, self.acked + 1)
            elif isinstance(msg, ReplayRequest):  # go-back-N from the first missing seq
                self.next = max(self.acked + 1, min(self.next, msg.first))


def run(conf: dict[str, Any]) -> dict[str, Any]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    links = [Link(ctx, conf, secret) for secret in conf["secrets"]]
    window, rate = int(conf["window"]), float(conf["rate"])
    made = time.time()
    canned = [frame(i, made) for i in range(1, 1 + max(link.total for link in links))]
    poller = zmq.Poller()
    for link in links:
        poller.register(link.sock, zmq.POLLIN)
    by_sock = {link.sock: link for link in links}
    start = time.time()
    deadline = start + float(conf["timeout"])
    sent = 0
    last_ack = start
    while not all(link.done for link in links) and time.time() < deadline:
        for link in links:
            due = link.total if not rate else min(
                link.total, int((time.time() - start) * rate / len(links)) + 1)
            upto = min(due, link.acked + window)
            while link.next <= upto:
                # At a set rate the frame carries its send time (for latency); flat out
                # the frames are made beforehand so the simulator is not the limit.
                data = frame(link.next, time.time()) if rate else canned[link.next - 1]
                link.sock.send(data, zmq.NOBLOCK)
                link.next += 1
                sent += 1
        for sock, _ in poller.poll(1 if rate else 5):
            by_sock[sock].read()
            last_ack = time.time()
    result = {"sent": sent, "acked": sum(link.acked for link in links), "first_send": start,
              "last_ack": last_ack}
    for link in links:
        link.sock.close(0)
    ctx.term()
    return result


if __name__ == "__main__":
    print(json.dumps(run(json.loads(Path(sys.argv[1]).read_text()))), flush=True)
