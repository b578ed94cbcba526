"""What CPython's cyclic garbage collector costs a replay, and which objects it walks.

Why: ``sensor/gcpolicy.py`` already spaces young collections 50,000 net allocations
apart, yet on captures with a connection per exchange the collector still shows in
``perf`` (gc_collect_main, visit_decref, visit_reachable). A young collection walks
every object that is still alive since the last one, so its cost is set by what
survives: the per-connection state a closed flow keeps until ``max_closed_flows``
newer ones push it out. This prints, for one ``mamori replay`` with detection on,
the collections per generation with their wall time against the whole run, and the
types of the objects the last young collection of the run promoted (past start-up,
where the rule packs' parse nodes are young too), so the state worth slimming shows by name.

    .venv/bin/python bench/bench_gc.py CAPTURE --dnp3-ports 20032
    make compiled && .venv/bin/python bench/bench_gc.py CAPTURE --modbus-ports 15020 \\
        --compiled build/compiled/lib.linux-x86_64-cpython-311

Counting the promoted objects takes a pass over them inside the collector's callback;
it runs in a second, separate replay so that the timed one carries no such cost.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_replay import CHILD_ENV  # noqa: E402  (bytecode caches, as an install has)

#: The child: ``mamori replay`` as the console script runs it (``program`` sets the
#: collector the way a sensor process has it), with a collector callback. argv[1] is
#: "time" or "types"; the rest is the replay's command line. One JSON line on stderr.
CHILD = r"""
import collections, gc, json, sys, time
from mamori.sensor.cli import program
mode, argv = sys.argv[1], sys.argv[2:]
gens = [[0, 0.0, 0] for _ in range(3)]
started = [0.0]
promoted = []
def watch(phase, info):
    if phase == "start":
        started[0] = time.perf_counter()
        return
    gen = gens[info["generation"]]
    gen[0] += 1
    gen[1] += time.perf_counter() - started[0]
    gen[2] += info["collected"]
    if mode == "types" and info["generation"] == 0:  # the last one counts: past start-up
        promoted[:] = [collections.Counter(type(o).__qualname__ for o in gc.get_objects(1))]
gc.callbacks.append(watch)
begin = time.perf_counter()
program(argv)
wall = time.perf_counter() - begin
top = promoted[0].most_common(16) if promoted else []
print(json.dumps({"wall": wall, "gens": gens, "promoted": top,
                  "promoted_total": sum(promoted[0].values()) if promoted else 0}),
      file=sys.stderr)
"""


def run(mode: str, replay: list[str], compiled: Path | None) -> dict[str, object]:
    env = {**CHILD_ENV, "PYTHONPATH": str((compiled or ROOT).resolve())}
    done = subprocess.run([sys.executable, "-c", CHILD, mode, "replay", "--no-progress",
                           *replay], env=env, cwd=tempfile.gettempdir(), check=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    result: dict[str, object] = json.loads(done.stderr.strip().splitlines()[-1])
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture", type=Path)
    ap.add_argument("--compiled", metavar="LIB", type=Path,
                    help="run the mypyc build in this library directory")
    args, replay = ap.parse_known_args()
    replay.append(str(args.capture.resolve()))
    run("time", replay, args.compiled)  # warm the page cache and the bytecode caches
    timed = run("time", replay, args.compiled)
    typed = run("types", replay, args.compiled)
    wall = float(timed["wall"])  # type: ignore[arg-type]
    gens: list[list[float]] = timed["gens"]  # type: ignore[assignment]
    spent = sum(g[1] for g in gens)
    print(f"replay {args.capture.name} ({'compiled' if args.compiled else 'pure'}): "
          f"{wall:.3f} s, of which the collector {spent * 1000:.1f} ms "
          f"({100 * spent / wall:.1f}%)")
    for number, (count, seconds, collected) in enumerate(gens):
        print(f"  generation {number}: {int(count)} collections, {seconds * 1000:.1f} ms, "
              f"{int(collected)} objects freed")
    print(f"promoted by the last young collection: {typed['promoted_total']} objects")
    for name, count in typed["promoted"]:  # type: ignore[attr-defined]
        print(f"  {count:>8}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
