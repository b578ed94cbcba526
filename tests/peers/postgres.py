"""A throwaway PostgreSQL cluster in a temporary directory, on a Unix socket only.

Needs Debian's ``postgresql`` (the server binaries under /usr/lib/postgresql/*/bin).
As root, the server runs as the ``postgres`` user (it refuses to run as root). Tests
pass ``fsync=False`` for speed; the ingest benchmark keeps fsync on, since an ack
there must mean "on disk".
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


@contextlib.contextmanager
def postgres_cluster(bindir: Path, fsync: bool = False) -> Iterator[str]:
    """Start a cluster, yield its DSN, stop it and delete it."""
    root = Path(tempfile.mkdtemp(prefix="mamori-pg-"))
    data = root / "data"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres",
                    "-A", "trust", "--no-sync"], check=True, capture_output=True, timeout=60)
    options = f"-k {root} -p {port} -c listen_addresses=''"
    if not fsync:
        options += " -c fsync=off"
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-t", "30",
                    "-l", str(root / "log"), "-o", options, "start"],
                   check=True, capture_output=True, timeout=60)
    try:
        yield f"host={root} port={port} dbname=postgres user=postgres"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
