"""Capture workers without a wire: the time merge, the message framing, the setting.

The live behaviour (fanout, restarts, identical alerts) is in test_live_workers.py.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pickle
import pkgutil
import socket
import struct
import sys
import textwrap
import time
import types
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

import mamori.parsers
from mamori.parsers.modbus.events import ModbusRequest, ModbusResponse
from mamori.parsers.packetring import PacketRing, RingTap
from mamori.parsers.pipeline import Pipeline, PipelineConfig, PipelineStats
from mamori.parsers.stream import Direction, FlowId, Transport
from mamori.parsers.tcp import TcpAnomaly, TcpAnomalyEvent
from mamori.parsers.wire import FieldPolicy
from mamori.sensor import config as cfg
from mamori.sensor.capture.merge import MAX_HELD, Merge, Record
from mamori.sensor.capture.pcapfile import read_capture_tuples
from mamori.sensor.capture.workers import _sum
from mamori.sensor.capture.workerwire import MAX_MESSAGE, Channel, ChannelError, reducers
from mamori.sensor.daemon.run import Sensor
from mamori.sensor.daemon.settings import MAX_WORKERS, workers
from tests.conftest import corpus_path


def test_merge_releases_up_to_the_lowest_watermark_in_time_order() -> None:
    merge = Merge(3)
    merge.add(0, [(1.0, None, ["a"]), (1.4, None, ["c"])], 1.6)
    merge.add(1, [(1.2, None, ["b"]), (1.9, None, ["e"])], 2.0)
    assert merge.release() == []  # worker 2 has said nothing yet
    merge.add(2, [], 1.7)
    assert [r[2] for r in merge.release()] == [["a"], ["b"], ["c"]]
    assert merge.held() == 1  # 1.9 waits for workers 0 and 2
    merge.add(0, [(1.8, None, ["d"])], 2.5)
    merge.advance(2, 3.0)
    assert [r[2] for r in merge.release()] == [["d"], ["e"]]
    assert merge.late == 0


def test_merge_releases_a_late_record_at_once_and_counts_it() -> None:
    merge = Merge(2)
    merge.add(0, [(5.0, None, ["x"])], 6.0)
    merge.add(1, [], 6.0)
    assert len(merge.release()) == 1
    merge.add(1, [(4.0, None, ["late"])], 4.5)  # a restarted worker's backlog
    assert [r[2] for r in merge.release()] == [["late"]]
    assert merge.late == 1


def test_merge_ties_keep_worker_order_and_drain_takes_everything() -> None:
    merge = Merge(2)
    merge.add(1, [(2.0, None, ["one"])], 2.0)
    merge.add(0, [(2.0, None, ["zero"]), (9.0, None, ["end"])], 2.0)
    assert [r[2] for r in merge.release()] == [["zero"], ["one"]]
    assert [r[2] for r in merge.drain()] == [["end"]]


def test_a_stalled_worker_holds_no_more_than_the_cap_far_past_it() -> None:
    """Worker 1 is alive but stalled: its mark never moves while worker 0 sends five
    times the cap, in the batches a worker sends. What is held stays at the cap after
    every release, what comes out is in time order and each record once; the stalled
    worker's backlog, when it comes, is released at once and counted late; nothing
    is lost."""
    merge = Merge(2)
    merge.add(1, [], -1.0)  # before every record
    batch, total, step = 1000, 5 * MAX_HELD, 0.001
    out: list[Record] = []
    for first in range(0, total, batch):
        records = [((first + i) * step, None, (first + i,)) for i in range(batch)]
        merge.add(0, records, (first + batch) * step)
        out.extend(merge.release())
        assert merge.held() <= MAX_HELD
    assert merge.held() == MAX_HELD
    assert merge.forced == total - MAX_HELD
    backlog = [(0.5 + i * step, None, ("stalled", i)) for i in range(3)]
    merge.add(1, backlog, 0.6)  # the stalled worker wakes with frames from long ago
    late = merge.release()
    assert [r[2] for r in late] == [r[2] for r in backlog]
    assert merge.late == 3
    out.extend(merge.drain())
    assert [r[2][0] for r in out] == list(range(total))  # all of worker 0, in order


def _pair() -> tuple[Channel, Channel]:
    a, b = socket.socketpair()
    return Channel(a), Channel(b)


def test_events_cross_the_channel_unchanged() -> None:
    frames = list(read_capture_tuples(str(corpus_path("suricata-verify/tests/modbus/modbus.pcap"))))
    pipeline = Pipeline(PipelineConfig())
    records: list[Record] = []
    for n, (ts, linktype, data, *_) in enumerate(frames, 1):
        events = pipeline.packet(ts, linktype, data, n)
        if events:
            records.append((ts, ((6, b"\n\0\0\1", 502, b"\n\0\0\2", 40000), ts, linktype, data),
                            events))
    records.append((0.0, None, pipeline.finish()))
    assert sum(len(r[2]) for r in records) > 50
    sender, receiver = _pair()
    sender.send(("batch", 1.0, records, [(len(frames), 0, 0.0)], (pipeline.stats, 3)))
    message = receiver.receive(5)
    assert message is not None
    assert message[2] == records
    assert [type(e) for r in message[2] for e in r[2]] == [type(e) for r in records
                                                         for e in r[2]]
    assert message[4][0] == pipeline.stats
    # the fast path covers the events, TcpAnomalyEvent (with its checking
    # __post_init__) too, and one crossed above
    table = reducers()
    assert {ModbusRequest, ModbusResponse, FlowId, TcpAnomalyEvent} <= set(table)
    assert any(type(e) is TcpAnomalyEvent for r in message[2] for e in r[2])



def test_a_ring_tap_hands_on_exactly_what_the_ring_would_keep() -> None:
    # the worker's pipeline gets a RingTap (a PacketRing, as the compiled pipeline
    # insists); its calls fed to a real ring keep what a pipeline's own ring keeps
    frames = list(read_capture_tuples(str(corpus_path("suricata-verify/tests/modbus/modbus.pcap"))))
    direct, tapped = Pipeline(PipelineConfig()), Pipeline(PipelineConfig())
    direct.ring, tap, fed = PacketRing(), RingTap(), PacketRing()
    tapped.ring = tap
    calls = 0
    for n, (ts, linktype, data, *_) in enumerate(frames, 1):
        assert direct.packet(ts, linktype, data, n) == tapped.packet(ts, linktype, data, n)
        if tap.taken is not None:
            fed.add(*tap.taken)
            tap.taken, calls = None, calls + 1
    assert calls > 50 and len(tap) == 0  # the tap keeps nothing itself
    assert len(fed) == len(direct.ring) > 0
    for key in list(direct.ring._flows):
        assert fed.frames(key) == direct.ring.frames(key)
    assert fed.stats == direct.ring.stats

def _parsers_dataclasses() -> list[type]:
    """Every dataclass defined in a module of ``mamori.parsers``, all of them imported."""
    found = []
    for info in pkgutil.walk_packages(mamori.parsers.__path__, "mamori.parsers."):
        module = importlib.import_module(info.name)
        found += [v for v in vars(module).values() if isinstance(v, type)
                  and dataclasses.is_dataclass(v) and v.__module__ == info.name]
    return found


#: The parsers' classes with a ``__post_init__``: each only checks its values, so
#: calling the class again on loading (the dispatch table's way) changes nothing.
#: A new one must be added here, with an instance crossing in the test below.
CHECKING_POST_INITS = {PipelineConfig, TcpAnomalyEvent, FieldPolicy}


def test_every_frozen_dataclass_of_the_parsers_crosses_by_the_table() -> None:
    # mypyc's native frozen dataclasses cannot load by the default pickling at all
    # (its __setstate__ assigns through the frozen __setattr__): none may be left out
    classes = _parsers_dataclasses()
    frozen = {c for c in classes if getattr(c, "__dataclass_params__").frozen}  # noqa: B009
    assert {PipelineConfig, ModbusRequest, FlowId, FieldPolicy} <= frozen
    table = reducers()
    assert sorted(c.__qualname__ for c in frozen - set(table)) == []
    assert {c for c in classes if hasattr(c, "__post_init__")} == CHECKING_POST_INITS


def test_classes_with_a_checking_post_init_cross_unchanged() -> None:
    flow = FlowId(Transport.TCP, "10.0.0.1", 40000, "10.0.0.2", 502, "02:00:00:00:00:01",
                  "02:00:00:00:00:02", 1)
    sent = (PipelineConfig(modbus_ports=frozenset({15020, 502}), dnp3_ports=frozenset({20000}),
                           max_flows=7, tcp_idle_timeout=1.5, max_handshakes=9),
            TcpAnomalyEvent(1.25, flow, Direction.TO_SERVER, TcpAnomaly.GAP, 12, "hole"),
            FieldPolicy(allow=("src", "dst"), deny=()))
    assert {type(o) for o in sent} == CHECKING_POST_INITS
    sender, receiver = _pair()
    sender.send(("config", *sent))
    message = receiver.receive(5)
    assert message is not None
    assert message[1:] == sent
    assert [type(o) for o in message[1:]] == [type(o) for o in sent]


LATE = "mamori.parsers._late_probe"


def test_a_parsers_module_imported_after_the_channel_joins_the_table() -> None:
    """A lazily imported module's classes cross by the table: its default route is shut."""
    sender, receiver = _pair()
    sender.send(("batch", 0.0, [], [], None))  # the table built without the module
    module = types.ModuleType(LATE)
    sys.modules[LATE] = module  # before the class: dataclasses looks its module up
    try:
        exec(textwrap.dedent("""
            from dataclasses import dataclass

            @dataclass(frozen=True, slots=True)
            class Late:
                ts: float
                name: str

                def __reduce_ex__(self, protocol):  # what a native class's route amounts to
                    raise TypeError("no default pickling")
            """), module.__dict__)
        late = module.Late(2.5, "late")
        with pytest.raises(TypeError, match="no default"):
            pickle.dumps(late, protocol=5)
        sender.send(("batch", 1.0, [(2.5, None, [late])], [], None))
        assert receiver.receive(5) == ("batch", 0.0, [], [], None)
        message = receiver.receive(5)
    finally:
        del sys.modules[LATE]
    assert message is not None and message[2] == [(2.5, None, [late])]


def test_messages_split_and_joined_anyhow_by_the_stream() -> None:
    sender, receiver = _pair()
    for n in range(50):
        sender.send(("batch", float(n), [], [], None))
    receiver.sock.setblocking(False)
    got: list[tuple[Any, ...]] = []
    while len(got) < 50:
        assert receiver.fill()
        got.extend(receiver.messages())
    assert [m[1] for m in got] == [float(n) for n in range(50)]
    sender.close()
    assert not receiver.fill()  # end of stream: the worker is gone


def test_a_length_beyond_the_cap_is_refused() -> None:
    a, b = socket.socketpair()
    receiver = Channel(b)
    a.sendall(struct.pack("<I", MAX_MESSAGE + 1) + b"x" * 16)
    receiver.sock.setblocking(False)
    receiver.fill()
    with pytest.raises(ChannelError, match="at most"):
        receiver.messages()


@pytest.mark.parametrize("body", [b"\x80\x05garbage", pickle.dumps(["not", "a", "tuple"]),
                                  pickle.dumps(())])
def test_a_message_that_is_no_worker_message_is_refused(body: bytes) -> None:
    a, b = socket.socketpair()
    receiver = Channel(b)
    a.sendall(struct.pack("<I", len(body)) + body)
    receiver.sock.setblocking(False)
    receiver.fill()
    with pytest.raises(ChannelError):
        receiver.messages()


@pytest.mark.parametrize(("value", "words"), [
    (str(MAX_WORKERS + 1), f"out of range 0-{MAX_WORKERS}"),
    ("-1", "out of range"),
    ('"many"', "whole number"),
    ("true", "whole number"),
    ("2.5", "whole number"),
])
def test_a_bad_workers_value_names_file_line_and_key(tmp_path: Path, value: str,
                                                     words: str) -> None:
    path = tmp_path / "sensor.toml"
    path.write_text(f'[capture]\ninterfaces = ["eth1"]\n\nworkers = {value}\n')
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(path)
    assert err.value.file == str(path)
    assert err.value.line == 4
    assert err.value.key == "[capture] workers"
    assert words in str(err.value)


def test_workers_default_to_the_cores_this_process_may_use_from_four_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    conf = cfg.load(None)
    assert conf.get("capture", "workers") == 0
    for cores, expected in ((1, 1), (2, 1), (3, 1), (4, 4), (12, 12),
                            (MAX_WORKERS + 8, MAX_WORKERS)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid, n=cores: set(range(n)))
        assert workers(0) == expected, cores
    assert workers(1) == 1 and workers(2) == 2 and workers(MAX_WORKERS) == MAX_WORKERS


def test_heartbeat_and_snapshot_count_the_workers() -> None:
    sensor = Sensor(cfg.load(None), None)
    slots = [SimpleNamespace(alive=True, frames=10, restarts=0),
             SimpleNamespace(alive=False, frames=4, restarts=2)]
    merge = Merge(2)
    merge.add(0, [(1.0, None, ())], 1.0)
    sensor.workers = cast(Any, SimpleNamespace(running=1, restarts=2, flows=7, slots=slots,
                                               merge=merge))
    values = sensor.health_for_heartbeat()
    assert values["workers"] == 1.0 and values["worker_restarts"] == 2.0
    assert values["flows"] == 7.0
    snap = sensor.snapshot()
    assert snap["flows"] == 7
    assert snap["workers"][1] == {"running": False, "frames": 4, "restarts": 2}
    assert snap["merge"] == {"held": 1, "late": 0, "forced": 0}


def test_pipeline_counters_sum_over_workers() -> None:
    a = PipelineStats(packets=3, bytes=100, first_ts=5.0, last_ts=9.0)
    a.problems["X"] += 2
    b = PipelineStats(packets=4, bytes=50, first_ts=4.0, last_ts=8.0, flows_created=1)
    b.problems["X"] += 1
    total = _sum([a, b, PipelineStats()])
    assert (total.packets, total.bytes, total.flows_created) == (7, 150, 1)
    assert (total.first_ts, total.last_ts) == (4.0, 9.0)
    assert total.problems["X"] == 3


@pytest.mark.skipif(os.geteuid() != 0, reason="packet sockets need CAP_NET_RAW")
def test_frames_from_before_a_socket_joined_its_group_are_not_read_twice() -> None:
    """Until it joins the fanout group, a socket gets its own copy of every frame.

    Two sockets are bound on loopback; five datagrams reach both, then the two join
    one group and five more are shared by flow. Every datagram must be read once.
    """
    from mamori.sensor.capture import fanout
    from mamori.sensor.capture.live import LiveCapture

    port = 20000 + os.getpid() % 20000
    caps = [LiveCapture("lo", frozenset({port}), block_size=1 << 16, block_count=4,
                        block_timeout_ms=20, promiscuous=False) for _ in range(2)]
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        def send(first: int) -> None:
            for n in range(first, first + 5):
                out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                out.sendto(n.to_bytes(2, "big"), ("127.0.0.1", port))  # a flow each
                out.close()

        send(0)
        time.sleep(0.05)
        fanout.join(caps)
        send(5)
        time.sleep(0.2)  # the rings' blocks retire after 20 ms
        payloads = sorted(frame[2][-2:] for cap in caps for frame in cap.read())
    finally:
        sender.close()
        for cap in caps:
            cap.close()
    assert payloads == [n.to_bytes(2, "big") for n in range(10)]
