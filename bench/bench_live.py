"""The highest tcpreplay rate the live daemon takes with zero kernel drops, per worker count.

A SPAN port in network namespaces (tests/netns.py): ``mamori run`` on ``cap0`` with
detection on, tcpreplay pinned to CPU 1 sending a capture onto the wire at a fixed
rate. With one worker (``--workers 1``, everything in the daemon's process) the
daemon is pinned to CPU 0; with more (``[capture] workers``, docs/workers.md) the
daemon and its workers are left to the scheduler, since pinning them to one core
would measure nothing but that core. For each rate the daemon reports its kernel counters in its
systemd STATUS line (read from a NOTIFY_SOCKET this script binds); a rate passes
when every frame was received and the kernel dropped none.

The capture is generated/modbus_big.pcap (120,008 packets, mapped onto the lab's
test hosts) replayed ``--loops`` times, with a small ring (``--ring-mb``) so a rate
the daemon cannot sustain shows up as drops within the run instead of being
absorbed by a ring larger than the whole replay.

``--flows N`` replays instead a capture of N concurrent Modbus connections
between the lab's two hosts (client ports 20000 up, reads answered in turn on
each), which a flow hash can spread over workers; modbus_big is ONE connection,
so every frame of it lands on the same worker whatever their number.

Before the sensor runs, the script measures the generator's ceiling: tcpreplay
``--topspeed`` of the same capture with nothing reading cap0, counted by cap0's
rx_packets. No sensor can be offered more than that on this machine.

``--compiled LIB`` runs the daemon (and so its workers, which inherit its
environment) from a mypyc build's library directory, the variant the .deb ships
(``make compiled`` builds one: ``parsers/`` and the detection hot path), the way
bench/bench_replay.py's ``--compiled`` does: ``python -P -c`` with ``PYTHONPATH``
set to LIB. The script first checks that LIB really imports compiled modules.

    .venv/bin/python bench/bench_live.py [--rates 20000,40000,...] [--loops 3] \
        [--workers 1,2] [--flows 2000] [--compiled build/compiled/lib.*]

Needs root, iproute2 and tcpreplay.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.netns import CLIENT_IP, SERVER_IP, SpanLab, available  # noqa: E402
from tests.stormcap import Frame, concurrent_polls, write_pcap  # noqa: E402

MAMORI = str(ROOT / ".venv" / "bin" / "mamori")
#: ``mamori`` from whichever tree ``PYTHONPATH`` names first (``--compiled``).
LAUNCH = "import sys; from mamori.sensor.cli import program; sys.exit(program(sys.argv[1:]))"
#: Modules a mypyc build compiles (setup.py): each must load from an extension module.
PROBE = ("import mamori.parsers.tcp as m, mamori.sensor.detection.engine as e, "
         "mamori.sensor.detection.inventory as i; "
         "assert all(x.__file__.endswith('.so') for x in (m, e, i)), "
         "(m.__file__, e.__file__, i.__file__)")
CAPTURE = ROOT.parent / "shared" / "corpus" / "generated" / "modbus_big.pcap"
STATUS = re.compile(r"STATUS=(\d+) frames, (\d+) dropped")


PORT = 15020


def flow_frames(flows: int, rounds: int, gap: float = 0.00002) -> Iterator[Frame]:
    """``flows`` connections opened, ``rounds`` reads on each in turn, then every FIN."""
    conns = [(CLIENT_IP, 20000 + i, SERVER_IP) for i in range(flows)]
    return concurrent_polls(conns, PORT, rounds, 1_700_000_000.0, gap)


def ceiling(lab: SpanLab, capture: Path, loops: int, pin: bool) -> tuple[int, float]:
    """(frames cap0 received, seconds) for tcpreplay --topspeed with no reader at all."""
    before = lab.counter("rx_packets")
    start = time.monotonic()
    lab.ns(lab.tap, *(["taskset", "-c", "1"] if pin else []), "tcpreplay", "-q", "-i",
           "gen0", "--topspeed", f"--loop={loops}", str(capture), timeout=3600)
    elapsed = time.monotonic() - start
    return lab.counter("rx_packets") - before, elapsed


def compiled_launch(lib: Path) -> tuple[list[str], dict[str, str]]:
    """The daemon's command prefix and environment for a mypyc build at ``lib``.

    ``-P`` keeps the working directory (perhaps this checkout, whose ``mamori/`` is
    pure Python) off the front of ``sys.path``; workers start with ``-P`` too and
    inherit ``PYTHONPATH``, so they run the same build.
    """
    env = {"PYTHONPATH": str(lib.resolve())}
    probe = subprocess.run([sys.executable, "-P", "-c", PROBE], env={**os.environ, **env},
                           capture_output=True, text=True)
    if probe.returncode != 0:
        raise SystemExit(f"--compiled {lib}: not a compiled build: {probe.stderr.strip()}")
    return [sys.executable, "-P", "-c", LAUNCH], env


def trial(lab: SpanLab, work: Path, capture: Path, rate: int, loops: int,
          ring_mb: int, pin: bool = True, workers: int = 1,
          launch: tuple[list[str], dict[str, str]] = ([MAMORI], {}),
          ) -> tuple[int, int, int, float]:
    """(frames sent, frames seen, kernel drops, seconds) for one rate."""
    config = work / "sensor.toml"
    config.write_text(
        f'[sensor]\nstate_dir = "{work}/state-{workers}-{rate}"\n\n[capture]\n'
        f'interfaces = ["cap0"]\nring_mb = {ring_mb}\nworkers = {workers}\n\n'
        f'[ports]\nmodbus = [15020]\n\n[health]\nstats_interval = 0.5\n')
    notify_path = work / f"notify-{workers}-{rate}"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(0.2)
    # Read the socket all the time, as systemd does: an unread datagram queue (10 deep
    # by default) would block the daemon's sd_notify calls and stall its capture loop.
    messages: list[str] = []
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            try:
                messages.append(notify.recv(4096).decode())
            except TimeoutError:
                continue

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    command, extra = launch
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path), **extra)
    prefix = ["taskset", "-c", "0"] if pin and workers == 1 else []
    sensor = lab.popen(lab.sensor, [*prefix, *command, "run", "--config", str(config)],
                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = (0, 0)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any("READY=1" in m for m in messages):
            time.sleep(0.1)
        before = lab.counter("rx_packets")
        start = time.monotonic()
        lab.ns(lab.tap, *(["taskset", "-c", "1"] if pin else []), "tcpreplay", "-q", "-i",
               "gen0", f"--pps={rate}", f"--loop={loops}", str(capture), timeout=3600)
        elapsed = time.monotonic() - start
        sent = lab.counter("rx_packets") - before
        settle = time.monotonic() + 30
        while time.monotonic() < settle:
            for message in list(messages):
                for frames, dropped in STATUS.findall(message):
                    last = (int(frames), int(dropped))
            if last[0] + last[1] >= sent:
                break
            time.sleep(0.25)
    finally:
        sensor.terminate()
        sensor.wait(30)
        stop.set()
        listener.join(5)
        notify.close()
    return sent, last[0], last[1], elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="10000,20000,40000,60000,80000,120000,160000")
    ap.add_argument("--loops", type=int, default=3)
    ap.add_argument("--ring-mb", type=int, default=4)
    ap.add_argument("--no-pin", action="store_true", help="let the scheduler place both")
    ap.add_argument("--workers", default="1",
                    help="worker counts to measure, e.g. 1,2 ([capture] workers)")
    ap.add_argument("--flows", type=int, default=0,
                    help="replay N concurrent connections instead of modbus_big")
    ap.add_argument("--rounds", type=int, default=20, help="reads per connection (--flows)")
    ap.add_argument("--compiled", metavar="LIB", type=Path,
                    help="run the daemon from this mypyc build's library directory")
    args = ap.parse_args()
    why = available()
    if why is not None:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    launch = ([MAMORI], {}) if args.compiled is None else compiled_launch(args.compiled)
    print(f"daemon: {'pure Python' if args.compiled is None else f'compiled ({args.compiled})'}")
    lab = SpanLab(prefix="mmbench").setup()
    best: dict[int, int] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            if args.flows:
                capture = work / "flows.pcap"
                packets = write_pcap(capture, flow_frames(args.flows, args.rounds))
                print(f"capture: {args.flows:,} concurrent connections, {packets:,} packets")
            else:
                capture = lab.rewrite(CAPTURE, work / "big.pcap")
                print(f"capture: {CAPTURE.name} (one connection)")
            for _ in range(2):
                got, secs = ceiling(lab, capture, args.loops, not args.no_pin)
                print(f"generator ceiling, no reader: {got:,} frames in {secs:.1f} s "
                      f"= {got / secs:,.0f} packets/s", flush=True)
            print(f"{'workers':>7} {'pps asked':>10} {'sent':>9} {'seen':>9} {'drops':>7} "
                  f"{'pps real':>9}")
            for workers in (int(w) for w in args.workers.split(",")):
                best[workers] = 0
                for rate in (int(r) for r in args.rates.split(",")):
                    sent, seen, drops, secs = trial(lab, work, capture, rate, args.loops,
                                                    args.ring_mb, not args.no_pin, workers,
                                                    launch)
                    print(f"{workers:>7} {rate:>10} {sent:>9} {seen:>9} {drops:>7} "
                          f"{sent / secs:>9,.0f}", flush=True)
                    if drops == 0 and seen >= sent:
                        best[workers] = max(best[workers], int(sent / secs))
                    else:
                        break
    finally:
        lab.close()
    for workers, rate in best.items():
        print(f"highest rate with 0 drops, {workers} worker(s): {rate:,} packets/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
