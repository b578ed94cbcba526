"""The cost of keeping packets behind alerts (issue 20): replay with the ring on and off.

Two figures, each a ratio of median wall times taken in alternating rounds (the
machine is shared; absolute numbers do not compare between runs):

* ``pipeline``: frames through ``Pipeline.packet`` in this process, without and with
  a ``PacketRing`` at the default caps (64 KiB per flow, 32 MiB, 60 s): the hot-path
  cost of one ``add`` per frame on a protocol port;
* ``replay --store``: the whole ``mamori replay`` with detection and a store, with
  ``[packets] enabled = false`` and with the defaults (ring, pcaps, retention).

    .venv/bin/python bench/bench_packetring.py            # generated/modbus_big.pcap
    .venv/bin/python bench/bench_packetring.py --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mamori.parsers.packetring import PacketRing  # noqa: E402
from mamori.parsers.pipeline import Pipeline, PipelineConfig  # noqa: E402
from mamori.sensor.capture.pcapfile import read_capture_batches  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpus"
MAMORI = str(ROOT / ".venv" / "bin" / "mamori")


def pipeline_time(frames: list[tuple[float, int, bytes, int]], config: PipelineConfig,
                  ring: bool) -> tuple[float, int]:
    pipeline = Pipeline(config)
    pipeline.ring = PacketRing() if ring else None
    packet = pipeline.packet
    start = time.perf_counter()
    for ts, linktype, data, number in frames:
        packet(ts, linktype, data, number)
    pipeline.finish()
    elapsed = time.perf_counter() - start
    return elapsed, pipeline.ring.bytes if pipeline.ring is not None else 0


def replay_time(capture: Path, port: int, workdir: Path, enabled: bool, n: int) -> float:
    conf = workdir / f"sensor-{enabled}.toml"
    conf.write_text(f"[packets]\nenabled = {'true' if enabled else 'false'}\n")
    store = workdir / f"run{n}-{enabled}" / "mamori.db"
    cmd = [MAMORI, "replay", "--no-progress", "--modbus-ports", str(port), "--config",
           str(conf), "--store", str(store), str(capture)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--capture", type=Path, default=CORPUS / "generated" / "modbus_big.pcap")
    ap.add_argument("--port", type=int, default=15020)
    args = ap.parse_args()
    if not args.capture.exists():
        print(f"no capture at {args.capture}", file=sys.stderr)
        return 2
    frames = [f for _, batch in read_capture_batches(args.capture) for f in batch]
    config = PipelineConfig(modbus_ports=frozenset({args.port}))
    pipe: dict[bool, list[float]] = {False: [], True: []}
    held = 0
    pipeline_time(frames, config, True)  # warm up
    for _ in range(args.rounds):
        for ring in (False, True):
            elapsed, bytes_held = pipeline_time(frames, config, ring)
            pipe[ring].append(elapsed)
            held = max(held, bytes_held)
    runs: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.rounds):
            for enabled in (False, True):
                runs[enabled].append(replay_time(args.capture, args.port, Path(tmp), enabled, n))
        pcaps = len(list(Path(tmp).glob(f"run{args.rounds - 1}-True/pcaps/*.pcap")))
    off, on = statistics.median(pipe[False]), statistics.median(pipe[True])
    print(f"capture  {args.capture.name} ({len(frames)} frames), {args.rounds} rounds, "
          f"median wall time")
    print(f"pipeline          ring off {off:7.3f} s   ring on {on:7.3f} s   "
          f"ratio on/off {on / off:.3f}   ring held {held / 1024:,.0f} KiB at the end")
    off, on = statistics.median(runs[False]), statistics.median(runs[True])
    print(f"replay --store    off      {off:7.3f} s   on      {on:7.3f} s   "
          f"ratio on/off {on / off:.3f}   ({pcaps} pcaps per run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
