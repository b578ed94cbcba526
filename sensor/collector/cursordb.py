"""The small SQLite files in which a collector's readers of its own storage (the
JetStream publisher, the federation relay) remember how far the other side has
acknowledged.

Both want the same trade-off: WAL, and no fsync per update (``synchronous=NORMAL``),
because a cursor update lost to a power cut only means sending again, and the
receiving side drops the copies (JetStream by ``Nats-Msg-Id``, an upper-tier collector
by in-order acceptance).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path


def open_cursor_db(path: Path, tables: Sequence[str], readonly: bool = False
                   ) -> sqlite3.Connection:
    """``path`` opened (read-only for status commands), with ``tables`` (each
    ``NAME (COLUMNS...)``) created if missing."""
    if readonly:
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=5)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    for table in tables:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {table}")
    conn.commit()
    return conn
