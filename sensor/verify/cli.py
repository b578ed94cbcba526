"""``mamori verify``: Mamori's parsing against tshark's, field by field.

``mamori verify FILE...`` exits 0 on full agreement, 1 on any disagreement, 2 for
usage errors and when its tools are missing. It needs tshark and pyshark (the
``verify`` extra: ``pip install 'mamori[verify]'``); Debian ships tshark but not
pyshark, so the Debian package only Suggests tshark, and ``verify`` says in one line
what is missing and how to get it. (Zeek logs are
replayed by ``mamori replay --zeek-logs DIR``, which also runs the rules.)
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
from pathlib import Path
from typing import Any

from mamori.parsers.pipeline import PipelineConfig
from mamori.sensor import config as cfg
from mamori.sensor.paths import check_input


def register_commands(commands: Any) -> None:
    verify = commands.add_parser(
        "verify", help="compare Mamori's parsing of a capture with tshark's, field by field",
        description="Dissect each capture with tshark (through pyshark) and with Mamori, "
                    "and print per field how often they agree, every disagreement with its "
                    "frame number, and a verdict. Known tshark errors are not counted.")
    verify.add_argument("files", nargs="+", metavar="FILE.pcap", type=Path)
    cfg.add_value_flag(verify, "ports", "modbus")  # --modbus-ports, as in the schema
    cfg.add_value_flag(verify, "ports", "dnp3")
    verify.add_argument("--limit", type=int, default=20, metavar="N",
                        help="disagreements listed per field (default 20)")
    verify.set_defaults(func=_cmd_verify)


def missing_tools() -> str | None:
    """What ``verify`` lacks, and how to get it, in one line; None when all is there."""
    lacking = [name for name, present in (
        ("tshark", shutil.which("tshark") is not None),
        ("pyshark", importlib.util.find_spec("pyshark") is not None)) if not present]
    if not lacking:
        return None
    how = []
    if "tshark" in lacking:
        how.append("apt install tshark")
    if "pyshark" in lacking:
        how.append("pip install 'mamori[verify]' (on the Debian package, which cannot "
                   "have it: pip install pyshark, in a venv or with --user)")
    return f"needs {' and '.join(lacking)}, not installed: {'; '.join(how)}"


def _cmd_verify(args: argparse.Namespace) -> int:
    from mamori.sensor.verify.tshark import verify_capture

    for path in args.files:
        if (problem := check_input(path)) is not None:
            print(f"mamori verify: {problem}", file=sys.stderr)
            return 2
    if (missing := missing_tools()) is not None:
        print(f"mamori verify: {missing}", file=sys.stderr)
        return 2
    try:
        config = PipelineConfig(modbus_ports=args.modbus_ports, dnp3_ports=args.dnp3_ports)
    except ValueError as err:
        print(f"mamori verify: {err}", file=sys.stderr)
        return 2
    status = 0
    for path in args.files:
        report = verify_capture(path, config)
        print(report.render(limit=args.limit))
        if not report.agreed:
            status = 1
    return status
