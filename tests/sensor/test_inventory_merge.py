"""A second capture replayed into an existing store adds to the inventory (issue 12 item 6).

The same real Modbus capture, mapped onto two different host pairs, is replayed
into one ``--store`` twice over: ``mamori assets --json`` must list the union,
the hosts of the first capture keep what was learned about them, and replaying a
capture again changes nothing (the merge is idempotent: the daemon saves the
same inventory every minute).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mamori.sensor.alerting.store import Store
from mamori.sensor.cli import main
from tests.conftest import corpus_path
from tests.pcaprewrite import rewrite

ARKIME = "arkime/tests/pcap/modbus.pcap"
A_HOSTS = ("10.1.0.1", "10.1.0.2")  # client, server
B_HOSTS = ("10.2.0.1", "10.2.0.2")


def _replay(capture: Path, store: Path, config: Path,
            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--no-progress", "--config", str(config), "--store", str(store),
                 str(capture)]) == 0
    capsys.readouterr()


def _without_count(pairs: list[dict[str, Any]], hosts: tuple[str, str]
                   ) -> list[dict[str, Any]]:
    return [{k: v for k, v in p.items() if k != "count"} for p in pairs
            if (p["client"], p["server"]) == hosts]


def _assets(store: Path, capsys: pytest.CaptureFixture[str],
            *extra: str) -> list[dict[str, Any]]:
    assert main(["assets", "--store", str(store), "--json", *extra]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.mark.parametrize("learning", ["0", "7d"], ids=["learning", "enforcing"])
def test_second_replay_adds_to_the_inventory(tmp_path: Path, learning: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Learning: the second run starts with an empty inventory (nothing is imported).

    Enforcing (the capture spans more than the 7-day learning period): the second
    run imports the first's baseline and sees the second capture's hosts as new.
    """
    source = corpus_path(ARKIME)
    capture_a = rewrite(source, tmp_path / "a.pcap", *A_HOSTS)
    capture_b = rewrite(source, tmp_path / "b.pcap", *B_HOSTS)
    store = tmp_path / "mamori.db"
    config = tmp_path / "sensor.toml"
    config.write_text(f'[detection]\nlearning_period = "{learning}"\n', encoding="utf-8")

    _replay(capture_a, store, config, capsys)
    first = {a["ip"]: a for a in _assets(store, capsys)}
    assert set(first) == set(A_HOSTS)
    first_pairs = _assets(store, capsys, "--pairs")
    assert {(p["client"], p["server"]) for p in first_pairs} == {A_HOSTS}

    _replay(capture_b, store, config, capsys)
    union = {a["ip"]: a for a in _assets(store, capsys)}
    assert set(union) == set(A_HOSTS) | set(B_HOSTS)
    for ip in A_HOSTS:  # what was learned about the first capture's hosts is kept
        assert union[ip] == first[ip]
    assert "outstation" in union[B_HOSTS[1]]["roles"]
    assert "master" in union[B_HOSTS[0]]["roles"]
    pairs = _assets(store, capsys, "--pairs")
    assert {(p["client"], p["server"]) for p in pairs} == {A_HOSTS, B_HOSTS}
    assert [p for p in pairs if (p["client"], p["server"]) == A_HOSTS] == first_pairs

    # The same capture again: nothing new, nothing lost, and a count is not added
    # to itself: a run counts what the first counted. Enforcing, the imported
    # baseline carries a learned pair's count on, so that one was seen twice as often.
    _replay(capture_a, store, config, capsys)
    again = {a["ip"]: a for a in _assets(store, capsys)}
    assert set(again) == set(union)
    assert again[A_HOSTS[0]]["roles"] == first[A_HOSTS[0]]["roles"]
    pairs = _assets(store, capsys, "--pairs")
    assert _without_count(pairs, A_HOSTS) == _without_count(first_pairs, A_HOSTS)
    counts = [p["count"] for p in pairs if (p["client"], p["server"]) == A_HOSTS]
    carried = learning != "0"
    assert counts == [int(str(p["count"])) * (2 if carried and p["learned"] else 1)
                      for p in first_pairs]


def test_merge_unions_what_each_save_saw(tmp_path: Path) -> None:
    """Row-level merge: sets union, times widen, identity and ranges combine."""
    asset = {"ip": "10.9.0.1", "mac": None, "roles": ["outstation"], "units": [1],
             "links": [], "identity": {"vendor": "A"}, "first_seen": 100.0,
             "last_seen": 200.0, "learned": True}
    pair = {"proto": "modbus", "client": "10.9.0.2", "server": "10.9.0.1", "port": 502,
            "unit": 1, "link_master": None, "link_outstation": None, "functions": ["3"],
            "ranges": {"3": [0, 9]}, "period": 1.0, "count": 40, "first_seen": 100.0,
            "last_seen": 200.0, "learned": True}
    with Store(tmp_path / "s.db") as store:
        store.save_inventory([asset], [pair], None)
        store.save_inventory(
            [asset | {"mac": "02:00:00:00:00:01", "roles": ["master"], "units": [2],
                      "identity": {"model": "B"}, "first_seen": 150.0, "last_seen": 300.0,
                      "learned": False}],
            [pair | {"functions": ["6"], "ranges": {"3": [5, 20], "6": [1, 1]},
                     "period": None, "count": 7, "first_seen": 250.0, "last_seen": 300.0,
                     "learned": False}], None)
        [merged_asset] = store.assets()
        [merged_pair] = store.pairs()
    assert merged_asset == {"ip": "10.9.0.1", "mac": "02:00:00:00:00:01",
                            "roles": ["master", "outstation"], "units": [1, 2], "links": [],
                            "identity": {"model": "B", "vendor": "A"}, "identity_seen": {},
                            "first_seen": 100.0, "last_seen": 300.0, "learned": True}
    assert merged_pair["functions"] == ["3", "6"]
    assert merged_pair["ranges"] == {"3": [0, 20], "6": [1, 1]}
    assert merged_pair["period"] == 1.0
    assert merged_pair["count"] == 40
    assert (merged_pair["first_seen"], merged_pair["last_seen"]) == (100.0, 300.0)
    assert merged_pair["learned"] is True


def _seen(first_frame: int, first: float, last_frame: int, last: float) -> dict[str, Any]:
    return {"first_frame": first_frame, "first_seen": first, "last_frame": last_frame,
            "last_seen": last}


def test_merge_keeps_the_first_and_last_frames_of_each_identity_value(tmp_path: Path) -> None:
    """The same value keeps its earliest and latest sighting; a changed value starts afresh."""
    asset = {"ip": "10.9.0.1", "mac": None, "roles": ["outstation"], "units": [1],
             "links": [], "identity": {"unit1.VendorName": "A", "unit1.MajorMinorRevision": "1"},
             "identity_seen": {"unit1.VendorName": _seen(12, 100.0, 40, 140.0),
                               "unit1.MajorMinorRevision": _seen(12, 100.0, 40, 140.0)},
             "first_seen": 100.0, "last_seen": 200.0, "learned": True}
    later = asset | {
        "identity": {"unit1.VendorName": "A", "unit1.MajorMinorRevision": "2"},
        "identity_seen": {"unit1.VendorName": _seen(3, 300.0, 9, 310.0),
                          "unit1.MajorMinorRevision": _seen(3, 300.0, 9, 310.0)},
        "first_seen": 300.0, "last_seen": 310.0}
    with Store(tmp_path / "s.db") as store:
        store.save_inventory([asset], [], None)
        store.save_inventory([later], [], None)
        store.save_inventory([later], [], None)  # idempotent, as the daemon saves again
        [mid] = store.assets()
        store.save_inventory([asset | {"identity_seen": {}}], [], None)  # an older writer
        [merged] = store.assets()
    assert mid["identity_seen"] == {"unit1.VendorName": _seen(12, 100.0, 9, 310.0),
                                    "unit1.MajorMinorRevision": _seen(3, 300.0, 9, 310.0)}
    assert merged["identity_seen"] == {
        "unit1.VendorName": _seen(12, 100.0, 9, 310.0),
        # the revision went back to "1" in the last save, which carried no sightings
        # and so the sightings of "2" no longer describe the value held
    }
    assert merged["identity"]["unit1.MajorMinorRevision"] == "1"


NEWER = "ICS-Security-Tools/pcaps/dnp3/direct_operate_analog_output.pcap"  # 2015-04-20
OLDER = "ICS-Security-Tools/pcaps/dnp3/direct_operate_crob_malform_but_good_crc.pcap"  # -04-17


def test_captures_replayed_newest_first_keep_first_seen_before_last_seen(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Regression: the inventory set last_seen to the latest packet's time, so a
    capture replayed after a newer one (same hosts, 192.168.10.3 -> .4) left every
    asset and pair last seen before it was first seen."""
    newer, older = corpus_path(NEWER), corpus_path(OLDER)
    store = tmp_path / "mamori.db"
    config = tmp_path / "sensor.toml"
    config.write_text("", encoding="utf-8")
    spans = {}
    for capture in (newer, older):  # each alone: where its packets lie in time
        alone = tmp_path / f"{capture.stem}.db"
        _replay(capture, alone, config, capsys)
        spans[capture] = {a["ip"]: (a["first_seen"], a["last_seen"])
                          for a in _assets(alone, capsys)}
    assert main(["replay", "--no-progress", "--config", str(config), "--store", str(store),
                 str(newer), str(older)]) == 0
    capsys.readouterr()
    assets = {a["ip"]: a for a in _assets(store, capsys)}
    assert set(assets) == {"192.168.10.3", "192.168.10.4"}
    for ip, asset in assets.items():
        assert spans[older][ip][1] < spans[newer][ip][0]  # the captures do not overlap
        assert (asset["first_seen"], asset["last_seen"]) == (spans[older][ip][0],
                                                             spans[newer][ip][1])
    with Store(store, readonly=True) as db:
        pairs = db.pairs()
        rows = db._db.execute("SELECT doc, last_seen FROM assets").fetchall()
    assert pairs and all(p["first_seen"] <= p["last_seen"] for p in pairs)
    assert all(json.loads(doc)["last_seen"] == seen for doc, seen in rows)


def test_merge_heals_a_stored_row_last_seen_before_first_seen(tmp_path: Path) -> None:
    """A row saved by a sensor with that bug still says the host was seen at both
    times: the next merge widens it to the span covering all four."""
    broken: dict[str, Any] = {
        "ip": "10.9.0.1", "mac": None, "roles": ["outstation"], "units": [1], "links": [],
        "identity": {}, "first_seen": 200.0, "last_seen": 100.0, "learned": True}
    with Store(tmp_path / "s.db") as store:
        store.save_inventory([broken], [], None)
        store.save_inventory([broken | {"first_seen": 150.0, "last_seen": 160.0}], [], None)
        [merged] = store.assets()
    assert (merged["first_seen"], merged["last_seen"]) == (100.0, 200.0)


POLLED = "ICS-Security-Tools/pcaps/ModbusTCP/ModbusTCP.pcap"  # a plant master, 85 s of polls


def test_an_asset_is_last_seen_at_its_last_request_not_its_first(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The hot path moves a pair's last_seen on every request, an asset's only when it
    opens a flow or a pair: the saved asset takes the span of its pairs."""
    store = tmp_path / "mamori.db"
    config = tmp_path / "sensor.toml"
    config.write_text("", encoding="utf-8")
    _replay(corpus_path(POLLED), store, config, capsys)
    assets = {a["ip"]: a for a in _assets(store, capsys)}
    with Store(store, readonly=True) as db:
        pairs = db.pairs()
    spans: dict[str, list[float]] = {}
    for p in pairs:
        for ip in (p["client"], p["server"]):
            have = spans.setdefault(ip, [p["first_seen"], p["last_seen"]])
            have[0], have[1] = min(have[0], p["first_seen"]), max(have[1], p["last_seen"])
    assert set(spans) <= set(assets)
    for ip, (first, last) in spans.items():
        assert assets[ip]["first_seen"] <= first and assets[ip]["last_seen"] == last, ip
    # the master polled for over a minute after it first opened each flow
    master = assets["141.81.0.10"]
    assert master["last_seen"] - master["first_seen"] > 60


def test_a_pair_the_freeze_demotes_is_not_kept_learned(tmp_path: Path) -> None:
    """The daemon saves every 30 s; a save after the freeze must not keep the earlier
    save's ``learned`` for a pair whose client never became a learned master."""
    from mamori.sensor.detection import Detector, Inventory
    from tests.sensor.test_detection import RULES, read

    inventory = Inventory()
    detector = Detector(RULES, inventory=inventory)
    detector.process([read(float(t)) for t in range(20)])  # 19 cycles: not yet a master
    with Store(tmp_path / "s.db") as store:
        def save() -> None:
            store.save_inventory(inventory.asset_docs(),
                                 [p.to_dict() for p in inventory.pairs.values()],
                                 inventory.export())
        save()
        assert [p["learned"] for p in store.pairs()] == [True]  # learning: all is learned
        inventory.freeze(vouch=False)  # the learning period ran out; nobody vouched
        save()
        [pair] = store.pairs()
        baseline = store.load_baseline()
    assert baseline is not None and baseline["pairs"] == []
    assert pair["learned"] is False  # as the baseline saved with it says
