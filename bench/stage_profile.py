"""Where a replay's time goes: microseconds per packet for each stage of the sensor.

``bench_replay.py`` runs ``mamori replay`` in this process with a clock wrapped
around the function that opens each stage, so the product's hot path carries no
timing code: the wrappers exist only here, set on the classes and modules for the
one profiled run and taken off after it. The stages::

    read        capture file -> frame batches        capfile.read_capture_batches
    decode      frame -> Ethernet/IP/TCP header       packet.decode
    flow+TCP    flow table, handshakes, reassembly    Pipeline.packet, TcpReassembler.segment
    parse       bytes -> Modbus/DNP3 events           ModbusParser / DNP3Parser receive, gap, eof
    detection   rules, thresholds, aggregates, ...    Detector.process, Detector.tick
    inventory   assets, pairs, baseline, learning     Inventory.observe, Inventory.tick
    output      event counts, flushes, alert files    EventTally, Session, ReplayDetection.finish
    setup       configuration, rule packs, store      ReplayDetection.from_args (once a run)

Time is exclusive: a stage's clock stops while a stage it calls runs (reassembly
calls the parser; detection calls the inventory). What no stage covers (start-up,
the replay loop, rule loading) is ``other``. Each wrapped call costs the clock
itself, measured on an empty function before the run and taken off each stage per
call, so the figures are close to those of an unwrapped run; their sum is checked
against the run's wall time. A stage whose function cannot be wrapped (a class
compiled by mypyc takes no new attributes, and its calls within a compiled module
bypass the module's namespace) is reported as not measured, and its time falls to
the stage that calls it. ``setup`` is paid once a run, not per packet: the
figure is what it adds per packet of this capture.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import time
from collections.abc import Callable, Iterator
from typing import Any

STAGES = ("read", "decode", "flow+TCP", "parse", "detection", "inventory", "output", "setup")

# (stage, module, attribute path) of every function that opens a stage
_TARGETS: tuple[tuple[str, str, str], ...] = (
    ("decode", "mamori.parsers.pipeline", "decode"),
    ("flow+TCP", "mamori.parsers.pipeline", "Pipeline.packet"),
    ("flow+TCP", "mamori.parsers.pipeline", "Pipeline.finish"),
    ("flow+TCP", "mamori.parsers.tcp", "TcpReassembler.segment"),
    ("parse", "mamori.parsers.modbus", "ModbusParser.receive"),
    ("parse", "mamori.parsers.modbus", "ModbusParser.gap"),
    ("parse", "mamori.parsers.modbus", "ModbusParser.eof"),
    ("parse", "mamori.parsers.dnp3", "DNP3Parser.receive"),
    ("parse", "mamori.parsers.dnp3", "DNP3Parser.gap"),
    ("parse", "mamori.parsers.dnp3", "DNP3Parser.eof"),
    ("detection", "mamori.sensor.detection.engine", "Detector.process"),
    ("detection", "mamori.sensor.detection.engine", "Detector.tick"),
    ("detection", "mamori.sensor.detection.engine", "Detector.alerts"),
    ("inventory", "mamori.sensor.detection.inventory", "Inventory.observe"),
    ("inventory", "mamori.sensor.detection.inventory", "Inventory.tick"),
    ("output", "mamori.sensor.capture.replay", "EventTally.__call__"),
    ("output", "mamori.sensor.detection.session", "Session.feed"),
    ("output", "mamori.sensor.detection.session", "Session.flush"),
    ("output", "mamori.sensor.detection.session", "Session.close"),
    ("output", "mamori.sensor.detection.cli", "ReplayDetection.finish"),
    ("setup", "mamori.sensor.detection.cli", "ReplayDetection.from_args"),
)


class StageClock:
    """Exclusive time and calls per stage, over nested wrapped calls."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.calls = dict.fromkeys(STAGES, 0)
        self.unmeasured: list[str] = []
        self._inner = [0.0]  # per open call: time its wrapped callees took

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        seconds, calls, inner, clock = self.seconds, self.calls, self._inner, time.perf_counter

        def timed(*args: Any, **kwargs: Any) -> Any:
            inner.append(0.0)
            start = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = clock() - start
                seconds[stage] += spent - inner.pop()
                calls[stage] += 1
                inner[-1] += spent
        return timed

    def wrap_generator(self, stage: str, fn: Callable[..., Iterator[Any]]
                       ) -> Callable[..., Iterator[Any]]:
        """Each step of the generator ``fn`` returns is timed as one call."""
        def timed(*args: Any, **kwargs: Any) -> Iterator[Any]:
            step = self.wrap(stage, _next)
            it = fn(*args, **kwargs)
            while True:
                try:
                    item = step(it)
                except StopIteration:
                    return
                yield item
        return timed

    def overhead(self, rounds: int = 200_000) -> float:
        """Seconds one wrapped call adds, measured on an empty function of three
        arguments (what the wrapped functions mostly take)."""
        probe = StageClock()

        def empty(a: object, b: object, c: object) -> None:
            return None
        wrapped = probe.wrap("read", empty)
        clock = time.perf_counter
        start = clock()
        for _ in range(rounds):
            empty(1, 2, 3)
        bare = clock() - start
        start = clock()
        for _ in range(rounds):
            wrapped(1, 2, 3)
        return max((clock() - start - bare) / rounds, 0.0)


def _next(it: Iterator[Any]) -> Any:
    return next(it)


def _resolve(module: str, path: str) -> tuple[Any, str]:
    owner: Any = importlib.import_module(module)
    *parents, name = path.split(".")
    for part in parents:
        owner = getattr(owner, part)
    return owner, name


@contextlib.contextmanager
def patched(clock: StageClock) -> Iterator[None]:
    """The stage wrappers in place for the duration; the originals back after."""
    undo: list[tuple[Any, str, Any]] = []
    try:
        for stage, module, path in _TARGETS:
            owner, name = _resolve(module, path)
            original = owner.__dict__[name] if name in getattr(owner, "__dict__", {}) \
                else getattr(owner, name)
            wrapped: Any = classmethod(clock.wrap(stage, original.__func__)) \
                if isinstance(original, classmethod) else clock.wrap(stage, original)
            try:
                setattr(owner, name, wrapped)
            except (TypeError, AttributeError):  # a compiled class: not measured
                clock.unmeasured.append(f"{module}.{path}")
                continue
            if _compiled(module):  # its calls inside the module skip the wrapper
                clock.unmeasured.append(f"{module}.{path} (compiled module)")
            undo.append((owner, name, original))
        # the replay loop's reader, as the replay module imported it
        replay_mod: Any = importlib.import_module("mamori.sensor.capture.replay")
        reader = replay_mod.__dict__["read_capture_batches"]
        replay_mod.read_capture_batches = clock.wrap_generator("read", reader)
        undo.append((replay_mod, "read_capture_batches", reader))
        yield
    finally:
        for owner, name, original in reversed(undo):
            setattr(owner, name, original)


def _compiled(module: str) -> bool:
    return str(getattr(importlib.import_module(module), "__file__", "")).endswith(".so")


def profile_replay(argv: list[str], packets: int) -> tuple[dict[str, float], float, list[str]]:
    """Run ``mamori replay argv`` here with stage clocks; (µs per packet by stage,
    incl. ``other``; wall µs per packet; what could not be measured)."""
    from mamori.sensor.cli import main

    clock = StageClock()
    cost = clock.overhead()
    sink = io.StringIO()
    start = time.perf_counter()
    with patched(clock), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        rc = main(["replay", *argv])
    wall = time.perf_counter() - start
    if rc != 0:
        raise RuntimeError(f"mamori replay {' '.join(argv)} exited {rc}: {sink.getvalue()}")
    per: dict[str, float] = {}
    for stage in STAGES:
        per[stage] = max(clock.seconds[stage] - clock.calls[stage] * cost, 0.0)
    per["other"] = max(wall - sum(per.values()), 0.0)
    return {k: v / packets * 1e6 for k, v in per.items()}, wall / packets * 1e6, \
        clock.unmeasured
