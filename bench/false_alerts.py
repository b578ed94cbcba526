"""False alerts at medium or above on benign captures, through the ``mamori`` CLI only.

Each capture is judged three ways, each a fresh store:

* ``learn``: one replay with the defaults (the sensor is learning all along);
* ``freeze``: replay into a store, ``mamori baseline freeze``, replay again (the
  second run enforces what the first learned; both runs' alerts count);
* ``learn-for``: one replay with ``--learn-for`` half the capture's span (skipped
  when the CLI has no such option, as before issue 15).

Only the command line is used, so the same script measures another checkout:
``cd OTHER && python /path/to/bench/false_alerts.py CAPTURE...`` runs that
checkout's ``sensor`` package (the current directory comes first on the path).

    python bench/false_alerts.py ../shared/corpus/zeek/Traces/modbus/modbusSmall.pcap ...
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

PORTS = ["--modbus-ports", "502,15020", "--dnp3-ports", "20000,20030"]
LOUD = {"medium", "high", "critical"}


def _mamori(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "mamori.sensor.cli", *args], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"mamori {' '.join(args)}: exit {done.returncode}: "
                         f"{done.stderr.strip().splitlines()[-1:]}")
    return done.stdout


def _loud(alerts: Path) -> Counter[str]:
    rows = [json.loads(line) for line in alerts.read_text(encoding="utf-8").splitlines()]
    return Counter(r["rule"] for r in rows if r["severity"] in LOUD)


def _span(capture: Path) -> float:
    from mamori.parsers.capfile import CaptureFileParser  # this checkout's reader

    parser = CaptureFileParser()
    parser.receive(capture.read_bytes())
    times = [r.ts for r in parser.records()]
    parser.close()
    return max(times) - min(times) if times else 0.0


def judge(capture: Path, tmp: Path, learn_for: bool) -> dict[str, Counter[str]]:
    out: dict[str, Counter[str]] = {}
    alerts = tmp / "alerts.jsonl"
    _mamori("replay", str(capture), "--no-progress", *PORTS, "--alerts", str(alerts))
    out["learn"] = _loud(alerts)
    store = tmp / "freeze.db"
    _mamori("replay", str(capture), "--no-progress", *PORTS, "--store", str(store),
            "--alerts", str(alerts))
    first = _loud(alerts)
    _mamori("baseline", "freeze", "--store", str(store))
    _mamori("replay", str(capture), "--no-progress", *PORTS, "--store", str(store),
            "--alerts", str(alerts))
    out["freeze"] = first + _loud(alerts)
    if learn_for:
        half = max(_span(capture) / 2, 0.001)
        _mamori("replay", str(capture), "--no-progress", *PORTS, "--learn-for",
                f"{half:.3f}s", "--alerts", str(alerts))
        out["learn-for"] = _loud(alerts)
    return out


def main(captures: list[str]) -> int:
    learn_for = "--learn-for" in _mamori("replay", "--help")
    total: Counter[str] = Counter()
    for name in captures:
        with tempfile.TemporaryDirectory() as tmp:
            result = judge(Path(name), Path(tmp), learn_for)
        for mode, loud in result.items():
            total[mode] += sum(loud.values())
            print(f"{Path(name).name:32} {mode:9} {sum(loud.values()):4}  "
                  f"{dict(sorted(loud.items())) or ''}")
    print("total    " + "  ".join(f"{mode} {n}" for mode, n in total.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
