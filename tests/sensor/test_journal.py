"""The outbound journal: epochs, durable seqs, cumulative acks, bounded size."""

from __future__ import annotations

from pathlib import Path

from mamori.parsers.wire import Kind, decode
from mamori.sensor.forwarding.journal import AlertJournal, Eviction


def test_epochs_seqs_and_acks(tmp_path: Path) -> None:
    j = AlertJournal(tmp_path / "j.db", ["a", "b"])
    assert j.start_epoch() == 1
    assert [j.append(Kind.HEALTH, {"n": i})[0] for i in range(3)] == [1, 2, 3]
    j.close()
    j = AlertJournal(tmp_path / "j.db", ["a", "b"])
    assert j.start_epoch() == 2 and j.append(Kind.HEALTH, {})[0] == 1
    rows = j.pending("a", 0, 10)
    assert [(r.epoch, r.seq) for r in rows] == [(1, 1), (1, 2), (1, 3), (2, 1)]
    assert decode(rows[1].frame).body == {"n": 1}  # the exact frame that is sent
    assert j.ack("a", 1, 2) and not j.ack("a", 1, 1)
    assert [(r.epoch, r.seq) for r in j.pending("a", 0, 10)] == [(1, 3), (2, 1)]
    assert j.stats()["unacked"] == 4  # b has acked nothing
    j.ack("b", 1, 3)
    assert j.stats()["unacked"] == 2
    assert j.locate("a", 1, 2) == (rows[1].id, 1)
    j.close()


def test_eviction_takes_acked_first_then_reports_unacked(tmp_path: Path) -> None:
    j = AlertJournal(tmp_path / "j.db", ["a"], max_bytes=64 * 1024)
    j.start_epoch()
    body = {"pad": "x" * 900}
    for _ in range(50):
        _, ev = j.append(Kind.HEALTH, body)
        assert ev == []
    j.ack("a", 1, 50)
    lost: list[Eviction] = []
    for _ in range(120):
        lost += j.append(Kind.HEALTH, body)[1]
    assert lost and lost[0].first == 51  # every acked message went before any unacked
    assert j.stats()["bytes"] <= 64 * 1024
    assert j.stats()["evicted_unacked"] == sum(e.count for e in lost)
    first_kept = j.pending("a", 0, 1)[0].seq
    assert j.locate("a", 1, 51) == (j.pending("a", 0, 1)[0].id, first_kept - 1)
    j.close()
