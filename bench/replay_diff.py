"""Did a speed-up change what the sensor says? Alerts, events and summaries, before and after.

Replays a fixed set of corpus captures (Modbus and DNP3, clean, malformed and
generated, the 120,008-packet benchmark capture among them) with detection on,
writing each run's ``--alerts`` and ``--events`` JSON lines and its summary. Run
``record`` before a change and ``compare`` after it: every alert (rule, peers,
count, first and last time, evidence, id) and every event must come out byte for
byte the same; the summaries too, less their elapsed time and rate.

    .venv/bin/python bench/replay_diff.py record OUTSIDE/before
    ... change the code ...
    .venv/bin/python bench/replay_diff.py compare OUTSIDE/before

Keep the directory outside the project (a few tens of MB of JSON lines).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"
MAMORI = str(ROOT / ".venv" / "bin" / "mamori")

_DNP3_INTEROP = ["--dnp3-ports", "20031,20032,20033,20034"]
CAPTURES: tuple[tuple[str, list[str]], ...] = (
    ("ICS-Security-Tools/pcaps/ModbusTCP/Modbus/modbus_test.pcap", []),
    ("ICS-Security-Tools/pcaps/ModbusTCP/Modbus/modbus_test_2.pcap", []),
    ("ICS-Security-Tools/pcaps/ModbusTCP/ModbusTCP.pcap", []),
    ("ICS-Security-Tools/pcaps/ModbusTCP/mb2.pcap", []),
    ("zeek/Traces/modbus/modbusBig.pcap", []),
    ("zeek/Traces/modbus/modbus-and-non-modbus-p502.pcap", []),
    ("arkime/tests/pcap/modbus.pcap", []),
    ("icsnpp-dnp3/testing/traces/dnp3_example.pcap", []),
    ("nDPI/tests/cfgs/default/pcap/dnp3.pcap", []),
    ("ICS-Security-Tools/pcaps/openics/DNP3-Malformed.pcap", []),
    ("suricata-verify/tests/dnp3/dnp3-eve/input.pcap", []),
    ("suricata-verify/tests/dnp3/dnp3-too-long-reassembly-request/input.pcap", []),
    ("ICS-Security-Tools/pcaps/dnp3/opendnp3-3/conformance/8.11.2.5/dump.pcap", []),
    ("zeek/Traces/dnp3/dnp3.pcap", []),
    ("generated/yadnp3.pcap", ["--dnp3-ports", "20030"]),
    ("generated/dnp3_interop_dnp3sim.pcap", _DNP3_INTEROP),
    ("generated/dnp3_interop_py1815master.pcap", _DNP3_INTEROP),
    ("generated/modbus_big.pcap", ["--modbus-ports", "15020"]),
)
_VARYING = ("elapsed", "rate")  # summary lines that change from run to run


def record(out: Path) -> list[str]:
    """Replay every capture into ``out``; the captures that failed, said."""
    out.mkdir(parents=True, exist_ok=True)
    problems = []
    for i, (relative, ports) in enumerate(CAPTURES, 1):
        capture = CORPUS / relative
        if not capture.exists():
            problems.append(f"{relative}: not in the corpus")
            continue
        stem = out / f"{i:02d}"
        run = subprocess.run(
            [MAMORI, "replay", "--no-progress", *ports, "--alerts", f"{stem}.alerts.jsonl",
             "--events", f"{stem}.events.jsonl", str(capture)],
            capture_output=True, text=True, check=False)
        summary = [line for line in (run.stdout + run.stderr).splitlines()
                   if not line.startswith(_VARYING)]
        Path(f"{stem}.summary").write_text("\n".join(summary) + "\n", encoding="utf-8")
        if run.returncode != 0:
            problems.append(f"{relative}: exit {run.returncode}")
    return problems


def compare(before: Path) -> list[str]:
    """Replay again and name every output that differs from ``before``'s."""
    with tempfile.TemporaryDirectory() as tmp:
        now = Path(tmp)
        problems = record(now)
        for old in sorted(before.iterdir()):
            new = now / old.name
            if not new.exists() or new.read_bytes() != old.read_bytes():
                problems.append(f"{old.name} differs")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("record", "compare"))
    ap.add_argument("directory", type=Path)
    args = ap.parse_args()
    problems = record(args.directory) if args.mode == "record" else compare(args.directory)
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"{len(CAPTURES)} captures: "
              + ("recorded" if args.mode == "record" else "alerts, events and summaries "
                 "identical"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
