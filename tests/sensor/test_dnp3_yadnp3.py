"""Issue 3: the DNP3 pipeline on a real opendnp3 (yadnp3) master and outstation.

Both stacks run on loopback TCP on a free port (configured as Mamori's DNP3 port);
tcpdump captures ``lo``; the capture is replayed through the pipeline and, once,
through the ``mamori replay --events`` CLI. What the stacks themselves reported
(their callbacks) is the oracle for what the sensor must have decoded: the
startup sequence, an integrity poll (READ class 1/2/3/0 and its static data),
a direct operate of a g12v1 CROB with its echoed status, and unsolicited
responses (FC 130, UNS set) with the master's confirms, all with link addresses.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mamori.parsers.dnp3.events import (
    ClassData,
    ControlRelayOutput,
    DNP3Application,
    DNP3Request,
    DNP3Response,
    DNP3Unsolicited,
    IinWrite,
)
from mamori.parsers.pipeline import PipelineConfig
from mamori.parsers.stream import Direction
from mamori.sensor.capture.replay import replay_files
from tests.conftest import captured_on_lo, unavailable
from tests.peers import dnp3_peer

MASTER, OUTSTATION = dnp3_peer.MASTER_ADDR, dnp3_peer.OUTSTATION_ADDR
CROB_INDEX = 3
EVENTS = 2  # binary input changes reported unsolicited


@dataclass
class Run:
    pcap: Path
    port: int
    events: list[Any]
    stacks_unsolicited: int  # unsolicited fragments the master's SOE handler saw
    crobs: list[tuple[int, int]]  # what the outstation's command handler executed
    operate_summary: str
    poll_result: str


def _make_run(tmp: Path) -> Run | None:
    port = dnp3_peer.free_port()
    pcap = tmp / "dnp3.pcap"
    with dnp3_peer.capture(pcap, port), dnp3_peer.Stacks(port) as stacks:
        poll = stacks.integrity_poll()
        operate = stacks.direct_operate(CROB_INDEX, "LATCH_ON")
        stacks.emit_events(EVENTS)
        dnp3_peer.wait_for(lambda: stacks.unsolicited_seen() >= EVENTS,
                           what="unsolicited responses at the master")
        unsolicited = stacks.unsolicited_seen()
        with stacks.seen.lock:
            crobs = list(stacks.seen.crobs)
    if pcap.stat().st_size < 500:
        unavailable("tcpdump captured nothing on lo")
    if not dnp3_peer.capture_complete(pcap):
        return None  # tcpdump itself missed a frame: made again
    events: list[Any] = []
    replay_files([pcap], PipelineConfig(modbus_ports=frozenset(), dnp3_ports=frozenset({port})),
                 extra_sinks=[events.extend])
    return Run(pcap, port, events, unsolicited, crobs, operate, poll)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return captured_on_lo(_make_run, tmp_path_factory, "yadnp3")


def _apps(run: Run, cls: type = DNP3Application, fc: int | None = None) -> list[Any]:
    return [e for e in run.events
            if isinstance(e, cls) and (fc is None or getattr(e, "fc", None) == fc)]


def _headers(ev: Any) -> list[tuple[int, int, int]]:
    return [(h.group, h.variation, h.qualifier) for h in ev.objects]


def _from_master(ev: Any) -> None:
    assert (ev.link_src, ev.link_dst) == (MASTER, OUTSTATION)
    assert ev.direction is Direction.TO_SERVER


def _from_outstation(ev: Any) -> None:
    assert (ev.link_src, ev.link_dst) == (OUTSTATION, MASTER)
    assert ev.direction is Direction.TO_CLIENT


def test_nothing_malformed_on_a_real_stack(run: Run) -> None:
    kinds = {type(e).__name__ for e in run.events}
    assert "DNP3AnomalyEvent" not in kinds, [e for e in run.events
                                              if type(e).__name__ == "DNP3AnomalyEvent"]
    assert {"DNP3Request", "DNP3Response", "DNP3Unsolicited"} <= kinds


def test_startup_sequence(run: Run) -> None:
    """opendnp3's master: DISABLE_UNSOLICITED g60v2-4, clear IIN1.7 (WRITE g80v1), ENABLE."""
    fcs = [e.fc for e in _apps(run, DNP3Request) if e.fc != 0]
    assert fcs[:4] == [21, 2, 1, 20]
    (disable,) = _apps(run, DNP3Request, 21)
    _from_master(disable)
    assert _headers(disable) == [(60, 2, 6), (60, 3, 6), (60, 4, 6)]
    assert [d.event_class for h in disable.objects for d in h.details
            if isinstance(d, ClassData)] == [1, 2, 3]
    (clear,) = _apps(run, DNP3Request, 2)
    assert _headers(clear) == [(80, 1, 0)]
    assert (clear.objects[0].start, clear.objects[0].stop) == (7, 7)
    assert clear.objects[0].details == (IinWrite(index=7, value=False),)
    (enable,) = _apps(run, DNP3Request, 20)
    assert _headers(enable) == _headers(disable)


def test_integrity_poll(run: Run) -> None:
    assert run.poll_result == "SUCCESS"
    polls = _apps(run, DNP3Request, 1)
    assert len(polls) == 2  # the startup integrity poll and the one the test asked for
    for poll in polls:
        _from_master(poll)
        assert poll.fir and poll.fin and not poll.uns
        assert _headers(poll) == [(60, 2, 6), (60, 3, 6), (60, 4, 6), (60, 1, 6)]
        assert all(h.start is None and h.count is None for h in poll.objects)
    answers = [e for e in _apps(run, DNP3Response) if e.paired_fc == 1]
    assert len(answers) == len(polls)
    for answer in answers:
        _from_outstation(answer)
        assert answer.fc == 129 and answer.latency is not None and answer.latency >= 0
        static = {(h.group, h.variation): (h.qualifier, h.start, h.stop, h.count)
                  for h in answer.objects}
        # DatabaseConfig(10): ten of each type, static variations 1/2, 3/2, 20/1, 30/1 ...
        for group, variation in ((1, 2), (3, 2), (20, 1), (30, 1)):
            assert static[(group, variation)] == (0, 0, 9, 10), (group, variation)
    assert all(a.iin is not None and not a.iin & 0xFF00 for a in answers)  # IIN1 all clear


def test_restart_indication_until_cleared(run: Run) -> None:
    """IIN1.7 (device restart) rides every outstation fragment until the master clears it."""
    (clear,) = _apps(run, DNP3Request, 2)
    before = [e for e in run.events if isinstance(e, (DNP3Response, DNP3Unsolicited))
              and e.ts < clear.ts]
    after = [e for e in run.events if isinstance(e, (DNP3Response, DNP3Unsolicited))
             and e.ts > clear.ts]
    assert before and all(e.iin is not None and e.iin & 0x8000 for e in before)
    assert after and all(e.iin is not None and not e.iin & 0x8000 for e in after)


def test_direct_operate_crob(run: Run) -> None:
    assert run.operate_summary == "SUCCESS"
    assert run.crobs == [(CROB_INDEX, 3)]  # the outstation executed LATCH_ON on index 3
    (request,) = _apps(run, DNP3Request, 5)
    _from_master(request)
    assert _headers(request) == [(12, 1, 0x28)]  # 2-byte index prefix, 2-byte count
    header = request.objects[0]
    assert header.count == 1 and header.prefix_size == 2
    (crob,) = header.details
    assert isinstance(crob, ControlRelayOutput)
    assert (crob.index, crob.op_type, crob.tcc, crob.clear, crob.count) == (
        CROB_INDEX, "LATCH_ON", "NUL", False, 1)
    assert (crob.on_time_ms, crob.off_time_ms, crob.status) == (100, 100, 0)
    (response,) = [e for e in _apps(run, DNP3Response) if e.paired_fc == 5]
    _from_outstation(response)
    assert response.seq == request.seq
    assert _headers(response) == [(12, 1, 0x28)]
    (echo,) = response.objects[0].details
    assert echo == crob  # echoed with status 0 = SUCCESS
    assert response.iin is not None and not response.iin & 0x00FF  # no IIN2 error bits


def test_unsolicited_responses(run: Run) -> None:
    unsolicited = _apps(run, DNP3Unsolicited)
    for ev in unsolicited:
        _from_outstation(ev)
        assert ev.fc == 130 and ev.uns and ev.con and ev.fir and ev.fin
    null, *reports = unsolicited
    assert null.objects == () and null.iin is not None and null.iin & 0x8000  # start-up
    assert len(reports) == run.stacks_unsolicited == EVENTS
    for ev in reports:
        assert _headers(ev) == [(2, 1, 0x28)]  # binary input event, index-prefixed
        assert ev.objects[0].count == 1
    confirms = [e for e in _apps(run, DNP3Request, 0) if e.uns]
    for ev in unsolicited:  # each confirmed by the master with UNS and the same sequence
        assert any(c.seq == ev.seq and c.ts >= ev.ts for c in confirms), ev
    for confirm in confirms:
        _from_master(confirm)
        assert confirm.objects == () and confirm.paired_fc == 130


def test_cli_replay_events(run: Run, tmp_path: Path) -> None:
    """The same capture through ``mamori replay --events``: the JSON carries the same."""
    out = tmp_path / "events.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "mamori.sensor.cli", "replay", "--no-progress",
         "--dnp3-ports", str(run.port), "--events", str(out), str(run.pcap)],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    dnp3 = [r for r in rows if r["proto"] == "dnp3" and r["type"] != "link"]
    assert len(dnp3) == len(_apps(run))
    operate = [r for r in dnp3 if r["fc"] == 5]
    assert len(operate) == 1
    assert operate[0]["link_src"] == MASTER and operate[0]["link_dst"] == OUTSTATION
    assert operate[0]["dport"] == run.port
    assert [(o["group"], o["variation"], o["qualifier"]) for o in operate[0]["objects"]] == [
        (12, 1, 0x28)]
    uns = [r for r in dnp3 if r["type"] == "unsolicited"]
    assert len(uns) == len(_apps(run, DNP3Unsolicited))
    assert all(r["fc"] == 130 and r["link_src"] == OUTSTATION for r in uns)
    assert "value" not in json.dumps(operate[0])  # control details stay out of the log
