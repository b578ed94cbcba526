"""A SCADA master that polls several pymodbus servers on one connection each, until stopped.

``python -m tests.peers.poller PERIOD HOST...`` (run inside a namespace): it
connects to port 502 of every host, prints ``polling`` once all are connected,
then reads ten holding registers of unit 1 from each, every PERIOD seconds,
until SIGTERM. A read that fails (an attacker in the middle dropping a frame)
is retried on the next cycle; the connections are never reopened, so a test
sees one long-lived flow per server, as in a plant.
"""

from __future__ import annotations

import signal
import sys
import threading


def poll(period: float, hosts: list[str]) -> None:
    import pymodbus.client as pymodbus_client

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    clients = []
    for host in hosts:
        client = pymodbus_client.ModbusTcpClient(host, port=502, timeout=1, retries=0)
        if not client.connect():
            raise SystemExit(f"cannot connect to {host}:502")
        clients.append(client)
    print("polling", flush=True)
    while not stop.is_set():
        for client in clients:
            try:
                client.read_holding_registers(0, count=10, device_id=1)
            except Exception as err:  # a lost answer: the next cycle tries again
                print(f"poll failed: {err}", file=sys.stderr, flush=True)
        stop.wait(period)
    for client in clients:
        client.close()


if __name__ == "__main__":
    poll(float(sys.argv[1]), sys.argv[2:])
