"""Bounded tables for per-source detection state.

Every table the detector keys by something an attacker chooses (source
address, flow, pair, point) must stop growing under a storm of distinct
values: 30,000 rogue masters must not become 30,000 entries in each of a
dozen dicts. :class:`LruTable` is an ``OrderedDict`` that forgets its least
recently used entry past a limit and counts what it forgot, so the detector
can say the cap was hit (principle 2: never blind without saying so) instead
of silently clearing a whole table, which would also throw away the state of
the legitimate hosts.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")

log = logging.getLogger("mamori.detection")

DEFAULT_MAX_STATE = 4096  # entries per per-source table (threshold groups, protocol state)


class LruTable(OrderedDict[K, V]):
    """A dict that keeps at most ``limit`` entries, evicting the least recently used.

    ``put`` inserts or refreshes; ``touch`` marks an entry used. Plain item
    assignment bypasses the bound; the engine uses it only where it does what ``put``
    would (``engine._put``). The compiled
    detection modules call ``move_to_end`` where they mean ``touch``: this class stays
    Python (see setup.py), so each call of one of its methods from compiled code runs
    an interpreted frame, and ``touch`` is one per message on several paths. ``evicted``
    counts every entry forgotten since creation; ``name`` says which table in
    the one log line written when the table first overflows.
    """

    def __init__(self, limit: int, name: str) -> None:
        super().__init__()
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.name = name
        self.evicted = 0

    def put(self, key: K, value: V) -> None:
        if key in self:
            self.move_to_end(key)
        self[key] = value
        while len(self) > self.limit:
            self.popitem(last=False)
            if self.evicted == 0:
                log.warning("detection state %s full (%d entries): forgetting the least "
                            "recently used", self.name, self.limit)
            self.evicted += 1

    def touch(self, key: K) -> None:
        self.move_to_end(key)
