"""Advisory import and matching benchmark on the real CISA CSAF set.

Imports every document of ``../shared/csaf`` into a fresh index (read, bound,
validate, one transaction each) and, in the same run, times the floor any
importer pays: reading and ``json.loads`` of the same files. The ratio of the
two is the figure that matters on these shared, noisy machines. Then it builds
the matcher from the index and matches the labelled test devices repeatedly.

    .venv/bin/python bench/bench_advisories.py [--csaf DIR] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import tomllib
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from mamori.sensor.advisories.csaf import CsafError, document_files, read_document  # noqa: E402
from mamori.sensor.advisories.index import AdvisoryIndex  # noqa: E402
from mamori.sensor.advisories.matcher import Matcher  # noqa: E402
from mamori.sensor.advisories.normalise import default_tables  # noqa: E402

LABELS = PROJECT / "tests" / "sensor" / "advisory_labels.toml"


def _json_floor(files: list[Path]) -> float:
    started = time.perf_counter()
    for path in files:
        json.loads(path.read_bytes())
    return time.perf_counter() - started


def _import(files: list[Path], db: Path) -> tuple[float, int, int]:
    started = time.perf_counter()
    rejected = 0
    with AdvisoryIndex(db) as index:
        for path in files:
            try:
                index.put(read_document(path))
            except CsafError:
                rejected += 1
        count = index.count()
    return time.perf_counter() - started, count, rejected


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csaf", type=Path, default=PROJECT.parent / "shared" / "csaf")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    files = list(document_files([args.csaf]))
    if not files:
        print(f"no CSAF documents under {args.csaf}", file=sys.stderr)
        return 1
    floors, imports = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            floors.append(_json_floor(files))
            took, count, rejected = _import(files, Path(tmp) / f"adv{r}.db")
            imports.append(took)
        with AdvisoryIndex(Path(tmp) / "adv0.db", readonly=True) as index:
            started = time.perf_counter()
            products = list(index.affected_products())
            matcher = Matcher(products, default_tables())
            build = time.perf_counter() - started
    devices = tomllib.loads(LABELS.read_text(encoding="utf-8"))["device"]
    assets = [{"ip": "10.0.0.1", "identity": d["identity"]} for d in devices]
    started = time.perf_counter()
    rounds = 20
    for _ in range(rounds):
        for asset in assets:
            matcher.match_asset(asset)
    per_match = (time.perf_counter() - started) / (rounds * len(assets))
    floor, took = statistics.median(floors), statistics.median(imports)
    print(f"documents {len(files)}, advisories indexed {count}, rejected {rejected}, "
          f"affected products {len(products)}")
    print(f"import: {took:.2f} s median of {args.rounds} ({len(files) / took:.0f} docs/s); "
          f"json.loads floor {floor:.2f} s; ratio import/floor {took / floor:.1f}")
    print(f"matcher build {build:.2f} s; one device matched in {per_match * 1000:.2f} ms "
          f"({len(assets)} labelled devices x {rounds})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
