"""Communication map benchmark: build, filter, lay out and draw the map of N assets.

Uses the synthetic plant of the map tests (``tests/web/mapsite.py``: masters in one
/24, twenty outstations per /24, mixed protocols, alerts, a frozen baseline) and times
``map_for`` in process, best of ROUNDS, for each size. The figure that matters on
these shared machines is the ratio: milliseconds per asset at each size against the
smallest, which stays near 1 while the work is linear in assets and edges.

    .venv/bin/python bench/bench_map.py [--sizes 300,1000,2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from mamori.sensor.web.commap import MapFilter, map_for  # noqa: E402
from tests.web.mapsite import make_site  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="300,1000,2000")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    base: float | None = None
    for size in sizes:
        site = make_site(size)
        peers = [(a.src, a.dst, a.proto, int(a.severity)) for a in site.alerts]
        best = float("inf")
        svg = ""
        for _ in range(max(1, args.rounds)):
            started = time.perf_counter()
            svg, _, _ = map_for(site.assets, site.pairs, peers, site.frozen_at, MapFilter())
            best = min(best, time.perf_counter() - started)
        per_asset = best * 1000 / size
        base = per_asset if base is None else base
        print(f"{size:5d} assets {len(site.pairs):5d} pairs: {best * 1000:7.1f} ms, "
              f"{len(svg) // 1024:5d} KiB SVG, {per_asset:.3f} ms/asset "
              f"(x{per_asset / base:.2f} of {sizes[0]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
