"""``mamori replay``: run capture files through the pipeline and summarise.

Replay is deterministic: time comes from the packets, so the same file gives the
same events, in the same order, every time. That makes it the sensor's test
harness as much as an analyst's tool.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from mamori.parsers.capfile import CaptureFileError
from mamori.parsers.events import Event
from mamori.parsers.packetring import PacketRing
from mamori.parsers.pipeline import Pipeline, PipelineConfig
from mamori.sensor.alerting.eventlog import JsonLinesWriter, event_to_dict
from mamori.sensor.capture.pcapfile import read_capture_batches
from mamori.sensor.paths import OutputError


def output_error(stream: IO[str], err: OSError) -> OutputError:
    """The OutputError for a failed write to ``stream`` (named by its file name)."""
    name = getattr(stream, "name", None)
    where = "standard output" if stream is sys.stdout else \
        name if isinstance(name, str) else "output"
    return OutputError(f"{where}: cannot write: {err.strerror or err}")


Sink = Callable[[list[Event]], None]


def fan_out(sinks: Sequence[Sink]) -> Sink | None:
    """One sink that hands each batch to every one of ``sinks``, in order (None: none).

    The one fan-out of events to their consumers: replay's extra sinks, the Zeek log
    replay's, and the session's consumers (mamori.sensor.detection.session)."""
    chain = tuple(sinks)
    if not chain:
        return None
    if len(chain) == 1:
        return chain[0]

    def each(events: list[Event]) -> None:
        for sink in chain:
            sink(events)

    return each


class EventsOut:
    """``mamori replay --events``: every event as a JSON line; a failed write ends the
    replay (OutputError naming the file; the daemon's ``--events`` counts it instead)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self._writer = JsonLinesWriter(stream)

    def consume(self, events: list[Event]) -> None:
        try:
            self._writer.write(events)
        except BrokenPipeError:
            raise  # `--events - | head`: the reader left; main() ends quietly
        except OSError as err:
            raise output_error(self.stream, err) from None

    def tick(self, now: float) -> None:
        del now

    def close(self) -> None:
        """The stream is its opener's to close."""


@dataclass
class ReplaySummary:
    files: int = 0
    packets: int = 0
    bytes: int = 0
    flows: int = 0
    messages: Counter[str] = field(default_factory=Counter)  # "modbus request fc=3"
    anomalies: Counter[str] = field(default_factory=Counter)  # "modbus UNSOLICITED_RESPONSE"
    errors: list[str] = field(default_factory=list)  # damaged files, with byte offsets
    elapsed: float = 0.0
    unit: str = "packets"  # what ``packets`` counts: "records" for Zeek log rows

    @property
    def packets_per_second(self) -> float:
        return self.packets / self.elapsed if self.elapsed > 0 else 0.0

    def render(self) -> str:
        lines = [
            f"files      {self.files}",
            f"{self.unit:<10} {self.packets}",
            f"bytes      {self.bytes}",
            f"flows      {self.flows}",
            f"elapsed    {self.elapsed:.3f} s",
            f"rate       {self.packets_per_second:,.0f} {self.unit}/s",
        ]
        if self.messages:
            lines.append("messages")
            lines.extend(f"  {key:<40} {n}" for key, n in sorted(self.messages.items()))
        if self.anomalies:
            lines.append("anomalies")
            lines.extend(f"  {key:<40} {n}" for key, n in sorted(self.anomalies.items()))
        if self.errors:
            lines.append("errors")
            lines.extend(f"  {err}" for err in self.errors)
        return "\n".join(lines)


class EventTally:
    """Counts events by protocol, type and function code or anomaly kind.

    The label of an event depends only on its class, ``fc`` and ``kind``, so it is
    worked out once per distinct triple and cached: the hot path never flattens
    an event just to count it.
    """

    def __init__(self, summary: ReplaySummary, sink: Callable[[list[Event]], None] | None) -> None:
        self._summary = summary
        self._sink = sink
        self._labels: dict[tuple[type, object, object], tuple[Counter[str], str]] = {}

    def __call__(self, events: Sequence[Event]) -> None:
        labels = self._labels
        for event in events:
            key = (event.__class__, getattr(event, "fc", None), getattr(event, "kind", None))
            entry = labels.get(key)
            if entry is None:
                entry = labels[key] = self._label(event)
            entry[0][entry[1]] += 1
        if self._sink is not None:
            self._sink(events if isinstance(events, list) else list(events))

    def _label(self, event: Event) -> tuple[Counter[str], str]:
        fields = event_to_dict(event)
        if fields["type"] == "anomaly":
            return self._summary.anomalies, f"{fields['proto']} {fields['anomaly']}"
        label = f"{fields['proto']} {fields['type']}"
        fc = fields.get("fc")
        return self._summary.messages, label if "fc" not in fields else f"{label} fc={fc}"


class _Progress:
    """A one-line progress bar on a TTY, throttled to a few updates a second."""

    def __init__(self, stream: IO[str], total: int, name: str) -> None:
        self._stream = stream
        self._total = max(total, 1)
        self._name = name
        self._next = 0.0

    def update(self, done: int, packets: int) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + 0.2
        frac = min(done / self._total, 1.0)
        bar = "#" * int(frac * 30)
        self._stream.write(f"\r{self._name[:30]:<30} [{bar:<30}] {frac:6.1%} {packets:>10,} pkts")
        self._stream.flush()

    def done(self) -> None:
        self._stream.write("\r" + " " * 90 + "\r")
        self._stream.flush()


_PROGRESS_MIN_BYTES = 8 * 1024 * 1024


def replay_files(
    paths: Iterable[str | os.PathLike[str]],
    config: PipelineConfig,
    *,
    events_out: IO[str] | None = None,
    extra_sinks: Iterable[Callable[[list[Event]], None]] = (),
    progress: IO[str] | None = None,
    ring: PacketRing | None = None,
    batched: bool = False,
) -> ReplaySummary:
    """Replay each file through one pipeline (flows may span files, as with rotation).

    ``ring`` keeps each flow's recent frames for the pcaps behind alerts (issue 20).
    ``batched``: the sinks get the events of a whole chunk of the file in one call
    (in packet order, as one list) instead of one call per packet, which saves
    each consumer its per-call cost. Only for sinks that look at nothing but the
    events: not with ``ring`` (an alert's pcap is cut from the ring as the alert
    opens, so the ring must not be ahead of the events), nor with a session that
    stores or forwards (its flushes fall due at the last event of each call).
    """
    if batched and ring is not None:
        raise ValueError("batched replay cannot keep a packet ring in step with alerts")
    summary = ReplaySummary()
    pipeline = Pipeline(config)
    pipeline.ring = ring
    sinks = list(extra_sinks)
    if events_out is not None:
        sinks.insert(0, EventsOut(events_out).consume)
    tally = EventTally(summary, fan_out(sinks))
    packet = pipeline.packet
    started = time.perf_counter()
    for path in paths:
        summary.files += 1
        bar: _Progress | None = None
        try:
            size = os.path.getsize(path)
            bar = _Progress(progress, size, Path(path).name) if (
                progress is not None and size >= _PROGRESS_MIN_BYTES) else None
            for done, batch in read_capture_batches(path):
                pending: list[Event] = []
                take = pending.extend if batched else tally  # a chunk, or each packet's
                for ts, linktype, data, frame in batch:
                    events = packet(ts, linktype, data, frame)
                    if events:
                        take(events)
                if pending:
                    tally(pending)
                if bar is not None:
                    bar.update(done, pipeline.stats.packets)
        except CaptureFileError as err:
            summary.errors.append(str(err))
        except OSError as err:  # unreadable, a directory, an I/O error mid-file
            summary.errors.append(f"{os.fspath(path)}: cannot read: {err.strerror or err}")
        finally:
            if bar is not None:
                bar.done()
    tally(pipeline.finish())
    summary.elapsed = time.perf_counter() - started
    summary.packets = pipeline.stats.packets
    summary.bytes = pipeline.stats.bytes
    summary.flows = pipeline.stats.flows_created
    return summary


def progress_stream() -> IO[str] | None:
    """stderr when it is a terminal, else nothing (no bar in logs or pipes)."""
    return sys.stderr if sys.stderr.isatty() else None
