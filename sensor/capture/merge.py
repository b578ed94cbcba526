"""The workers' records back into one time order, as one capture process would see them.

Each worker sends its records (one per frame that gave events or a frame for the
packet ring) in the order it read them, with a watermark: "every frame the kernel
stamped before T has been read". A record is released once every worker's
watermark has passed its time, and released records come out sorted by packet
time (ties: worker order), so detection sees the interleaving a single socket
would have given::

    worker 0  ──(t=1.0)──(t=1.4)────────── mark 1.6 ┐
    worker 1  ──(t=1.2)─────────(t=1.9)─── mark 2.0 ┼─▶ min mark 1.6: release 1.0 1.2 1.4
    worker 2  ──────────────────────────── mark 1.7 ┘   (1.9 waits for 0 and 2)

A worker that has no frame advances its watermark from the wall clock (the kernel's
stamps are the wall clock): a frame stamped at t is handed over at the latest when
its ring block retires, one block timeout later, so wall time minus twice the block
timeout and a margin is safe (``mamori.sensor.capture.worker``). A worker that is
down or restarting leaves its slot's mark where it was; the pool moves it on from
the wall clock after a grace (``advance``), so one dead worker cannot hold the
others' events back without bound. A record that arrives behind the released time
(a kernel stamp out of order, a restarted worker's backlog) is released at once.

The records held are capped (``MAX_HELD``). A worker that is alive but stalled (stopped,
starved, stuck in one frame) holds its mark still while the others keep sending;
until the pool finds it hung and restarts it, the oldest records beyond the cap are
released anyway, in time order (``forced``), and the stalled worker's records that
then come behind them are released at once and counted late. The order between
workers is given up for those records; none is lost, and memory stays bounded.

No I/O here; ``mamori.sensor.capture.workers`` feeds it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

Record = tuple[float, Any, Sequence[Any]]  # packet time, ring entry or None, events

#: Records held at most. In steady state the merge holds what the workers read in one
#: watermark lag (0.3 s with the default block timeout): 75,000 records at 250,000
#: frames a second, each frame giving events. The cap leaves that room more than
#: twice over; a record of a few events is a few hundred bytes, so the cap is tens of
#: megabytes at most.
MAX_HELD = 200_000


class Merge:
    """Per-worker queues and watermarks; ``release`` gives what is safe, in time order."""

    def __init__(self, workers: int, max_held: int = MAX_HELD) -> None:
        self.queues: list[deque[Record]] = [deque() for _ in range(workers)]
        self.marks = [float("-inf")] * workers
        self.max_held = max_held
        self.released = float("-inf")  # the highest time released so far
        self.late = 0  # records that came behind it (released at once, counted)
        self.forced = 0  # records released over the cap, before every mark passed them

    def add(self, worker: int, records: Sequence[Record], mark: float) -> None:
        self.queues[worker].extend(records)
        if mark > self.marks[worker]:
            self.marks[worker] = mark

    def advance(self, worker: int, mark: float) -> None:
        """Move a slot's mark without records (a worker down, or stopped: infinity)."""
        if mark > self.marks[worker]:
            self.marks[worker] = mark

    @property
    def limit(self) -> float:
        """The lowest watermark: every record at or before it can be released."""
        return min(self.marks)

    def held(self) -> int:
        return sum(len(q) for q in self.queues)

    def release(self) -> list[Record]:
        """Every record at or before the lowest watermark, then the oldest of what is
        still held beyond ``max_held``; sorted by time."""
        limit = self.limit
        out: list[Record] = []
        for queue in self.queues:
            while queue and (queue[0][0] <= limit or queue[0][0] <= self.released):
                record = queue.popleft()
                if record[0] < self.released:
                    self.late += 1
                out.append(record)
        excess = self.held() - self.max_held
        if excess > 0:
            self._force(excess, out)
        if len(self.queues) > 1:
            out.sort(key=_time)  # stable: ties keep worker order
        if out and out[-1][0] > self.released:
            self.released = out[-1][0]
        return out

    def _force(self, count: int, out: list[Record]) -> None:
        """Move the ``count`` oldest held records to ``out`` (the cap is exceeded)."""
        self.forced += count
        queues = [q for q in self.queues if q]
        for _ in range(count):
            oldest = min(queues, key=_head_time)
            out.append(oldest.popleft())
            if not oldest:
                queues.remove(oldest)

    def drain(self) -> list[Record]:
        """Everything held, in time order (the end of the run)."""
        for index in range(len(self.marks)):
            self.marks[index] = float("inf")
        return self.release()


def _time(record: Record) -> float:
    return record[0]


def _head_time(queue: deque[Record]) -> float:
    return queue[0][0]
