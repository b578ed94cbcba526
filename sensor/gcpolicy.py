"""How a ``mamori`` process sets CPython's cyclic garbage collector.

Why: every event, PDU, flow key and batch the hot path builds is a container the
collector tracks, and CPython starts a collection of the young generation each time
700 more of them exist than were freed, walking every one that is still alive. Nearly
all of them die by reference counting within the packet that made them, so these
collections find almost nothing, and they cost about a tenth of a replay: on the
yadnp3 polling capture looped to 100,010 packets, compiled, 693 young, 62 middle and 5
full collections took the run from 1.32 s to 1.46 s (best of two each way, the same
62 MB peak RSS), and modbus_big's from 0.95 s to 1.04 s.

So a ``mamori`` process (:func:`mamori.sensor.cli.program`, the console script) and
each capture worker (``mamori.sensor.capture.worker``) collect the young generation
only every :data:`YOUNG_THRESHOLD` net allocations. The older generations keep
CPython's thresholds, and cycles are still found and freed, in larger batches: the
collector is never turned off. Code that runs inside another
program (``cli.main`` called by a test) leaves that program's collector alone.
"""

from __future__ import annotations

import gc

#: Net tracked allocations between two young-generation collections (CPython: 700).
#: At 50,000 the run above made 24 young collections, one middle and no full one.
YOUNG_THRESHOLD = 50_000


def tune() -> None:
    """Collect the young generation every :data:`YOUNG_THRESHOLD` net allocations."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
