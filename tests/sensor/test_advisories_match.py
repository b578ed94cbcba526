"""Matching observed identity against real advisories: confidence, ranges, normalisation."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from mamori.parsers.alerts import Alert
from mamori.parsers.pipeline import PipelineConfig
from mamori.sensor.advisories.live import alerts_for
from mamori.sensor.advisories.matcher import Confidence, Match, Matcher
from mamori.sensor.advisories.normalise import default_tables, load_tables
from mamori.sensor.advisories.versions import parse_range, parse_versions, version_key
from mamori.sensor.capture.replay import replay_files
from mamori.sensor.detection.inventory import Inventory
from tests.conftest import corpus_captures, corpus_path

SCHEME = default_tables().scheme
M340 = "ICSA-23-201-01"  # Modicon M340 CPU (part numbers BMXP34*) < SV3.51
TMW = "ICSA-20-105-02"  # Triangle MicroWorks DNP3 Outstation Libraries >= 3.16.00 | <= 3.25.01




def _modbus(vendor: str | None, code: str | None, revision: str | None,
            **more: str) -> dict[str, Any]:
    identity = {"unit1.VendorName": vendor, "unit1.ProductCode": code,
                "unit1.MajorMinorRevision": revision} | {f"unit1.{k}": v for k, v in more.items()}
    return {"ip": "10.1.1.5", "first_seen": 1.0, "last_seen": 2.0,
            "identity": {k: v for k, v in identity.items() if v is not None}}


def _by_id(matches: list[Match]) -> dict[str, Match]:
    return {m.advisory_id: m for m in matches}


def test_in_range_is_exact(matcher: Matcher) -> None:
    found = _by_id(matcher.match_asset(_modbus("Schneider Electric", "BMX P34 2020", "v3.40")))
    m = found[M340]
    assert m.confidence is Confidence.EXACT and m.confidence.affected
    assert m.ranges == ("< SV3.51",)
    assert "CVE-2022-45788" in m.cves and m.cvss == 7.5
    assert m.evidence["identity"] == {"unit1.VendorName": "Schneider Electric",
                                      "unit1.ProductCode": "BMX P34 2020",
                                      "unit1.MajorMinorRevision": "v3.40"}
    assert m.evidence["version"] == "v3.40"


@pytest.mark.parametrize("revision", ["V03.60", "3.51", "SV3.51", "v4.0"])
def test_out_of_range_does_not_match(matcher: Matcher, revision: str) -> None:
    found = _by_id(matcher.match_asset(_modbus("Schneider Electric", "BMX P34 2020", revision)))
    assert M340 not in found  # not even as vendor-only: the advisory says it is not affected
    assert found  # other M340 advisories say "all versions"


@pytest.mark.parametrize("revision", ["v3.4", "V03.40", "3.40.0", "SV3.40", "Rev 3.40",
                                      "FW 3.40"])
def test_revision_spellings(matcher: Matcher, revision: str) -> None:
    found = _by_id(matcher.match_asset(_modbus("Schneider Electric", "BMX P34 2020", revision)))
    assert found[M340].confidence is Confidence.EXACT


@pytest.mark.parametrize("vendor", ["Telemecanique", "Schneider Electric Software, LLC",
                                    "SCHNEIDER ELECTRIC", "Schneider Electric Industries SAS"])
def test_vendor_aliases(matcher: Matcher, vendor: str) -> None:
    base = matcher.match_asset(_modbus("Schneider Electric", "BMX P34 2020", "v3.40"))
    alias = matcher.match_asset(_modbus(vendor, "BMX P34 2020", "v3.40"))
    assert [(m.advisory_id, m.confidence) for m in alias] == \
        [(m.advisory_id, m.confidence) for m in base]


def test_vendor_from_url_and_product_code(matcher: Matcher) -> None:
    url = _by_id(matcher.match_asset(_modbus(
        None, "BMX P34 2020", "v3.40", VendorUrl="http://www.schneider-electric.com")))
    code_only = _by_id(matcher.match_asset(_modbus(None, "BMXP342020", "v3.40")))
    assert url[M340].confidence is code_only[M340].confidence is Confidence.EXACT


def test_unknown_version_is_product_only(matcher: Matcher) -> None:
    m = _by_id(matcher.match_asset(_modbus("Schneider Electric", "BMX P34 2020", None)))[M340]
    assert m.confidence is Confidence.PRODUCT and not m.confidence.affected


def test_vendor_only_is_never_affected(matcher: Matcher) -> None:
    matches = matcher.match_asset(_modbus("Schneider Electric", "Widget 9000", "1.0"))
    assert matches and {m.confidence for m in matches} == {Confidence.VENDOR}
    assert not any(m.confidence.affected for m in matches)
    assert alerts_for(matches, set(), 0.0) == []


def test_unknown_device_matches_nothing(matcher: Matcher) -> None:
    assert matcher.match_asset(_modbus("Mamori Test Works", "MTW-PLC-1", "2.4.1",
                                       ProductName="Pump station controller",
                                       ModelName="PSC-200")) == []
    assert matcher.match_asset({"ip": "10.0.0.1", "identity": {}}) == []


@pytest.mark.parametrize(("version", "affected"), [("3.20.00", True), ("3.16.00", True),
                                                   ("3.25.01", True), ("3.26.00", False),
                                                   ("3.15", False)])
def test_dnp3_device_attributes(matcher: Matcher, version: str, affected: bool) -> None:
    asset = {"ip": "10.1.1.9", "identity": {
        "link10.g0v252": "Triangle MicroWorks, Inc.",
        "link10.g0v250": "DNP3 Outstation Libraries", "link10.g0v242": version}}
    found = _by_id(matcher.match_asset(asset))
    if affected:
        assert found[TMW].confidence is Confidence.EXACT
        assert found[TMW].evidence["scope"] == "link10"
    else:
        assert TMW not in found


def test_alerts_once_per_asset_and_advisory(matcher: Matcher) -> None:
    matches = matcher.match_asset(_modbus("Schneider Electric", "BMX P34 2020", "v3.40"))
    alerts = alerts_for(matches, set(), 5.0)

    def key(a: Alert) -> tuple[str, str]:
        assert a.dst is not None
        return a.dst, a.evidence["advisory"]

    keys = Counter(key(a) for a in alerts)
    assert keys[("10.1.1.5", M340)] == 1 and max(keys.values()) == 1
    assert all(a.severity.label == "low" for a in alerts)
    assert alerts_for(matches, set(keys), 6.0) == []  # [(ip, advisory)] already alerted


def test_counts_by_confidence(matcher: Matcher, capsys: pytest.CaptureFixture[str]) -> None:
    """The test identities' match counts by confidence (printed for the closing note)."""
    assets = [_modbus("Schneider Electric", "BMX P34 2020", "v3.40"),
              _modbus("Schneider Electric", "BMX P34 2020", "V03.60"),
              _modbus("Schneider Electric", "TM221CE16R", "1.4.0", ProductName="M221"),
              _modbus("Schneider Electric", "Widget 9000", "1.0"),
              _modbus("Mamori Test Works", "MTW-PLC-1", "2.4.1")]
    counts = Counter(m.confidence.value for a in assets for m in matcher.match_asset(a))
    with capsys.disabled():
        print(f"\nmatches by confidence on the test identities: {dict(counts)}")
    assert counts["exact"] >= 8 and counts["vendor"] > counts["exact"]


# -- the corpus: what real captures announce, and what that matches -------------------

def replay_inventory(paths: list[Path], ports: PipelineConfig) -> Inventory:
    """The sensor's own inventory fed by a replay: identity kept as the daemon keeps it.

    The inventory alone, not the whole detector: identity is all matching reads,
    and the rules have nothing to say about it.
    """
    inventory = Inventory()

    def sink(events: list[Any]) -> None:
        for event in events:
            inventory.observe(event)

    replay_files(paths, ports, extra_sinks=[sink])
    return inventory


CORPUS_PORTS = PipelineConfig(modbus_ports=frozenset({502, 5020, 15020}),
                              dnp3_ports=frozenset({20000, 20030}))


@pytest.mark.corpus
def test_corpus_identities_match_nothing_absurd(matcher: Matcher,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Every corpus capture through the inventory; its identity strings against the index.

    The corpus carries few identity strings and none of a product in the CISA set
    (a Modbus simulator's "Wingpath Limited" server id, test servers, two DNP3
    attribute counts), so the right answer is: no device reported as affected or
    possibly affected, and the fields are listed for the closing note.
    """
    captures = corpus_captures()
    if not captures:
        pytest.skip("no corpus captures")
    fields: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    seen: list[str] = []
    for path in captures:
        for asset in replay_inventory([path], CORPUS_PORTS).assets.values():
            if not asset.identity:
                continue
            fields.update(k.partition(".")[2] for k in asset.identity)
            seen.append(f"{path.name} {asset.ip} {asset.identity}")
            for m in matcher.match_asset(asset.to_dict()):
                counts[m.confidence.value] += 1
                assert not m.confidence.affected, (path, m)
                assert m.confidence is Confidence.VENDOR, (path, m)
    with capsys.disabled():
        print(f"\ncorpus: {len(captures)} captures, {len(seen)} assets with identity, "
              f"fields {dict(fields)}; matches by confidence {dict(counts)}")
        for line in seen:
            print(f"  {line}")
    assert seen  # the corpus does carry identity: FC 43/14, FC 17 and DNP3 group 0
    assert {"VendorName", "server_id_data"} <= set(fields)


@pytest.mark.corpus
def test_corpus_zeek_logs_identities(matcher: Matcher, capsys: pytest.CaptureFixture[str]
                                     ) -> None:
    """Every Zeek/ICSNPP log directory of the corpus through the sensor's Zeek source.

    The identity they carry comes from modbus_read_device_identification.log and
    ICSNPP dnp3_objects (group 0); the corpus's baselines hold neither for a device
    of the CISA set, so nothing may be reported as affected or possibly affected.
    """
    from mamori.sensor.capture.zeek.source import replay_zeek_logs

    dirs = sorted({p.parent for p in corpus_path("").rglob("*.log")})
    assert dirs
    rows = with_identity = 0
    for directory in dirs:
        inventory = Inventory()

        def sink(events: list[Any], inventory: Inventory = inventory) -> None:
            for event in events:
                inventory.observe(event)

        rows += replay_zeek_logs(directory, extra_sinks=[sink]).packets
        for asset in inventory.assets.values():
            if asset.identity:
                with_identity += 1
                for m in matcher.match_asset(asset.to_dict()):
                    assert m.confidence is Confidence.VENDOR, (directory, m)
    with capsys.disabled():
        print(f"\ncorpus Zeek/ICSNPP logs: {len(dirs)} directories, {rows} rows, "
              f"{with_identity} assets with identity")
    assert rows > 1000


# -- ranges and versions on their own ----------------------------------------------------

def _assert_contains(rng: Any, text: str, inside: list[str], outside: list[str]) -> None:
    for v in inside:
        key = version_key(v, SCHEME)
        assert key is not None and rng.contains(key), (text, v)
    for v in outside:
        key = version_key(v, SCHEME)
        assert key is not None and not rng.contains(key), (text, v)


@pytest.mark.parametrize(("text", "inside", "outside"), [
    ("vers:all/<V3.5.20", ["3.5.19", "V3.5.2", "1"], ["3.5.20", "3.10"]),
    ("<= 4.00.02", ["4.0.2", "3.99"], ["4.0.3", "4.1"]),
    ("All versions < V2.0 SP1", ["2.0", "1.9"], ["2.0 SP1", "2.0 SP2", "2.1"]),
    (">= V7.80 < V9.30", ["7.80", "9.29"], ["7.79", "9.30"]),
    ("< 1.99 | 2.20 | 2.40", ["1.98", "2.20", "2.40"], ["1.99", "2.30", "2.41"]),
    (">= 8.0.0 | <= 8.5.1", ["8.0", "8.5.1"], ["7.9", "8.5.2"]),
    ("V2.1 and prior", ["2.1", "1.0"], ["2.1.1"]),
    ("vers:all/*", ["0.1", "99"], []),
])
def test_range_containment(text: str, inside: list[str], outside: list[str]) -> None:
    rng = parse_range(text, SCHEME)
    assert rng is not None
    _assert_contains(rng, text, inside, outside)


@pytest.mark.parametrize("text", [
    "All versions installed in conjunction with SIMATIC WinCC < V7.3 Update",
    "All_versions_with_installed_WebRH", "<= 5.12.2 | all microsoft windows operating systems",
    "< VX.2.11"])
def test_prose_ranges_are_unreadable_not_guessed(text: str) -> None:
    assert parse_range(text, SCHEME) is None


def test_product_version_lists() -> None:
    rng = parse_versions("7.30 | 7.40", SCHEME)
    assert rng is not None
    assert [rng.contains(k) for k in (version_key(v, SCHEME) or () for v in
                                      ("7.30", "7.35", "7.40.0"))] == [True, False, True]


def test_numbers_compare_as_numbers() -> None:
    rng = parse_range("< 2.10", SCHEME)
    nine = version_key("2.9", SCHEME)
    assert rng is not None and nine is not None and rng.contains(nine)  # univers says no


def test_tables_load_and_resolve() -> None:
    tables = load_tables(Path(__file__).resolve().parents[2] / "sensor" / "advisories"
                         / "tables.toml")
    assert tables.vendor("Allen-Bradley") == "Rockwell Automation"
    assert tables.vendor("Moxa Inc.") == "Moxa"
    assert tables.vendors("Red Lion, AutomationDirect") >= {"Red Lion", "AutomationDirect"}
    assert tables.vendor_of_url("https://download.schneider-electric.com/x") == \
        "Schneider Electric"
    assert tables.identity["MajorMinorRevision"] == "version"


# -- precision on a labelled sample ------------------------------------------------------

LABELS = Path(__file__).with_name("advisory_labels.toml")


def test_precision_on_labelled_sample(matcher: Matcher, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    """Devices labelled by hand against the advisories' text: what "affected" is worth.

    Precision of the affected (exact) reports must be 1.0: an operator acts on them.
    Possibly affected (product) reports and misses are counted and printed; recall
    has a floor, so that a matcher that reports nothing cannot pass.
    """
    import tomllib

    devices = tomllib.loads(LABELS.read_text(encoding="utf-8"))["device"]
    tp = fp = fn = possible = possible_true = 0
    lines = []
    for device in devices:
        truth = set(device["affected"])
        found = matcher.match_asset({"ip": "10.9.9.9", "identity": device["identity"]})
        exact = {m.advisory_id for m in found if m.confidence is Confidence.EXACT}
        product = {m.advisory_id for m in found if m.confidence is Confidence.PRODUCT}
        tp += len(exact & truth)
        fp += len(exact - truth)
        fn += len(truth - exact - product)
        possible += len(product)
        possible_true += len(product & truth)
        lines.append(f"  {device['name']}: exact {len(exact & truth)}/{len(truth)}"
                     + (f", false {sorted(exact - truth)}" if exact - truth else "")
                     + (f", possibly {sorted(product)}" if product else "")
                     + (f", missed {sorted(truth - exact - product)}"
                        if truth - exact - product else ""))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn + possible_true) if tp + fn + possible_true else 0.0
    with capsys.disabled():
        print(f"\nlabelled sample: {len(devices)} devices, {tp + fn + possible_true} true "
              f"(device, advisory) pairs; affected reports {tp + fp}, precision "
              f"{precision:.2f}, recall {recall:.2f}; possibly affected {possible} "
              f"({possible_true} true); missed {fn}")
        for line in lines:
            print(line)
    assert fp == 0, lines
    assert recall >= 0.8, lines


@pytest.mark.parametrize(("text", "inside", "outside"), [
    ("12.7.*", ["12.7", "12.7.0", "12.7.9"], ["12.6.9", "12.8", "13.7"]),
    ("13.0.X", ["13.0.1", "13"], ["12.9", "13.1"]),
    ("12.4.1-12.4.11", ["12.4.1", "12.4.10", "12.4.11"], ["12.4.0", "12.4.12", "12.5"]),
    ("12.2.* | 13.1.*", ["12.2.4", "13.1.0"], ["12.3", "13.0.9", "13.2"]),
])
def test_product_version_series_and_spans(text: str, inside: list[str],
                                          outside: list[str]) -> None:
    rng = parse_versions(text, SCHEME)
    assert rng is not None
    _assert_contains(rng, text, inside, outside)


def test_catalogue_number_is_no_span() -> None:
    rng = parse_versions("1766-L32AWA", SCHEME)
    key = version_key("1766.32", SCHEME)
    assert rng is None or (key is not None and not rng.contains(key))
    assert parse_versions("12.4.11-12.4.1", SCHEME) is None  # a span that runs backwards


@pytest.mark.parametrize(("name", "prefix"), [
    ("M340 CPUs BMX P34x", "BMXP34"), ("Series PFC200: (750-82xx/xxx-xxx)", "75082"),
    ("EFD-22xx", "EFD22"), ("SIMATIC S7-1200 CPU family V4.x", None), ("9000X Drive", None)])
def test_part_number_placeholders(name: str, prefix: str | None) -> None:
    """Trailing x placeholders in a part number act like "BMXP34*"; a version or a short
    number does not."""
    from mamori.sensor.advisories.matcher import _PLACEHOLDER
    from mamori.sensor.advisories.normalise import compact_key

    found = [compact_key(m).upper() for m in _PLACEHOLDER.findall(name)]
    assert [f for f in found if len(f) >= 5] == ([prefix] if prefix else [])
