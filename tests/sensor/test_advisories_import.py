"""CSAF import: the whole real set imports; malformed documents are rejected with a located
error and never half-imported; a newer revision replaces an older one."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest

from mamori.sensor.advisories import csaf
from mamori.sensor.advisories.csaf import CsafError, document_files, read_document
from mamori.sensor.advisories.index import AdvisoryIndex
from tests.conftest import csaf_path

M340 = "ot/2023/icsa-23-201-01.json"  # Schneider Electric, Modicon M340 < SV3.51


def _doc(relative: str = M340) -> dict[str, Any]:
    return dict(json.loads(csaf_path(relative).read_text(encoding="utf-8")))


def _write(tmp_path: Path, doc: Any, name: str = "doc.json") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
    return path


def _rejected(path: Path) -> CsafError:
    with pytest.raises(CsafError) as info:
        read_document(path)
    assert str(path) in str(info.value)
    return info.value


def test_whole_set_imports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = csaf_path()
    files = list(document_files([root]))
    advisories = sorted(root.glob("ot/20*/*.json"))
    assert len(files) == len(advisories) > 2000  # the ROLIE feed is not an advisory
    started = time.perf_counter()
    rejected = []
    with AdvisoryIndex(tmp_path / "adv.db") as index:
        for path in files:
            try:
                index.put(read_document(path))
            except CsafError as err:
                rejected.append(str(err))
        count = index.count()
        products = sum(1 for _ in index.affected_products())
    took = time.perf_counter() - started
    with capsys.disabled():
        print(f"\nCSAF import: {count} advisories, {products} affected products, "
              f"{len(rejected)} rejected in {took:.2f} s")
    assert rejected == []
    assert count == len(files)  # no two files share an advisory id
    assert products > 10000


def test_real_document_content() -> None:
    adv = read_document(csaf_path(M340))
    assert adv.id == "ICSA-23-201-01"
    m340 = [p for p in adv.products if p.name.startswith("Modicon M340")]
    assert [(p.vendor, p.version, p.version_kind) for p in m340] == [
        ("Schneider Electric", "< SV3.51", "range")]
    vuln = adv.vulnerabilities[0]
    assert (vuln.cve, vuln.cvss) == ("CVE-2022-45788", 7.5)
    assert vuln.cvss is not None and 0 < vuln.cvss <= 10
    assert m340[0].product_id in vuln.affected
    assert any(r.details for r in vuln.remediations)


def test_truncated_document_is_located(tmp_path: Path) -> None:
    text = csaf_path(M340).read_text(encoding="utf-8")
    cut = text.index('"vulnerabilities"') + 400
    err = _rejected(_write(tmp_path, text[:cut]))
    assert err.path.startswith("$.vulnerabilities[0]"), err.path
    assert "truncated" in err.message and "line" in err.message


def test_syntax_error_is_located(tmp_path: Path) -> None:
    text = json.dumps(_doc(), indent=1)
    at = text.index('"current_release_date"')
    broken = text[:at] + "," + text[at:]  # a stray comma inside document.tracking
    err = _rejected(_write(tmp_path, broken))
    assert err.path == "$.document.tracking", err.path


@pytest.mark.parametrize(("where", "value", "path", "message"), [
    (("document", "tracking", "version"), 3, "$.document.tracking.version", "expected a string"),
    (("document", "tracking", "id"), None, "$.document.tracking.id", "found null"),
    (("product_tree", "branches"), {}, "$.product_tree.branches", "expected an array"),
    (("vulnerabilities", 0, "scores", 0, "cvss_v3", "baseScore"), "9.8",
     "$.vulnerabilities[0].scores[0].cvss_v3.baseScore", "expected a number"),
    (("vulnerabilities", 0, "scores", 0, "cvss_v3", "baseScore"), True,
     "$.vulnerabilities[0].scores[0].cvss_v3.baseScore", "found a boolean"),
    (("vulnerabilities", 0, "cve"), "CVE-23-1", "$.vulnerabilities[0].cve", "not a CVE id"),
    (("vulnerabilities", 0, "product_status", "known_affected", 0), "CSAFPID-9999",
     "$.vulnerabilities[0].product_status.known_affected[0]", "not in the product tree"),
    (("document", "csaf_version"), "1.2", "$.document.csaf_version", "not CSAF 2.0"),
])
def test_wrong_type_is_located(tmp_path: Path, where: tuple[Any, ...], value: Any, path: str,
                               message: str) -> None:
    doc = _doc()
    node: Any = doc
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    err = _rejected(_write(tmp_path, doc))
    assert err.path == path
    assert message in err.message


def test_huge_string_is_located(tmp_path: Path) -> None:
    doc = _doc()
    doc["vulnerabilities"][0]["notes"][0]["text"] = "A" * (csaf.MAX_STRING + 1)
    err = _rejected(_write(tmp_path, doc))
    assert err.path == "$.vulnerabilities[0].notes[0].text"
    assert "limit" in err.message


def test_huge_file_is_rejected_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    with path.open("wb") as f:
        f.truncate(csaf.MAX_BYTES + 1)
    err = _rejected(path)
    assert err.path == "$" and "limit" in err.message


def test_deep_nesting_is_located(tmp_path: Path) -> None:
    doc = _doc()
    leaf: dict[str, Any] = {"category": "product_name", "name": "x"}
    deep = leaf
    for _ in range(60):  # branches within branches: parses, but over MAX_DEPTH
        deep = {"category": "product_family", "name": "f", "branches": [deep]}
    doc["product_tree"]["branches"].append(deep)
    err = _rejected(_write(tmp_path, doc))
    assert err.path.startswith("$.product_tree.branches[1].branches[0].branches[0]"), err.path
    assert "deeper" in err.message


def test_nesting_beyond_the_json_parser_is_located(tmp_path: Path) -> None:
    text = json.dumps(_doc())
    at = text.index('"notes"')
    bomb = '"x": ' + "[" * 200_000 + "]" * 200_000 + ", "
    err = _rejected(_write(tmp_path, text[:at] + bomb + text[at:]))
    assert err.path.startswith("$.document.x[0][0]"), err.path[:60]
    assert "deeper" in err.message


def test_bad_revision_never_half_imported(tmp_path: Path) -> None:
    doc = _doc()
    with AdvisoryIndex(tmp_path / "adv.db") as index:
        assert index.put(read_document(_write(tmp_path, doc))) == "added"
        before = sorted(p.full_name for p in index.affected_products())
        newer = copy.deepcopy(doc)
        newer["document"]["tracking"]["version"] = "9"
        newer["product_tree"]["branches"][0]["branches"][0]["name"] = "Renamed"
        newer["vulnerabilities"][-1]["remediations"][0]["category"] = "pray"
        err = _rejected(_write(tmp_path, newer, "v9.json"))
        assert err.path.startswith(f"$.vulnerabilities[{len(doc['vulnerabilities']) - 1}]")
        assert sorted(p.full_name for p in index.affected_products()) == before
        assert index.revision("ICSA-23-201-01") == ((int(doc["document"]["tracking"]["version"]),
                                                     0), doc["document"]["tracking"][
            "current_release_date"])


def test_newer_revision_replaces_older_is_kept(tmp_path: Path) -> None:
    doc = _doc()
    with AdvisoryIndex(tmp_path / "adv.db") as index:
        index.put(read_document(_write(tmp_path, doc)))
        newer = copy.deepcopy(doc)
        newer["document"]["tracking"]["version"] = "9"
        newer["vulnerabilities"][0]["cve"] = "CVE-2099-0001"
        assert index.put(read_document(_write(tmp_path, newer, "v9.json"))) == "replaced"
        assert [s.cves for s in index.summaries()] == [("CVE-2099-0001",)]
        assert index.put(read_document(_write(tmp_path, doc, "old.json"))) == "kept"
        assert index.summaries()[0].version == "9"
        assert index.count() == 1


def test_feed_is_skipped_not_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    """The real ROLIE feed, renamed so the name rule does not skip it: skipped by content."""
    from mamori.sensor.advisories.csaf import NotAnAdvisory
    from mamori.sensor.cli import main

    feed = tmp_path / "usb" / "index.json"
    feed.parent.mkdir()
    feed.write_bytes(csaf_path("ot/cisa-csaf-ot-feed-tlp-white.json").read_bytes())
    with pytest.raises(NotAnAdvisory):
        read_document(feed)
    (tmp_path / "usb" / "m340.json").write_bytes(csaf_path(M340).read_bytes())
    config = tmp_path / "sensor.toml"
    config.write_text("", encoding="utf-8")
    status = main(["advisories", "import", str(feed.parent), "--index", str(tmp_path / "a.db"),
                   "--store", str(tmp_path / "none.db"), "--config", str(config)])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "1 new" in out and "1 not advisories" in out and "0 rejected" in out
    assert f"skipped {feed}: $: a ROLIE feed" in err


def test_cli_reports_a_rejected_document_with_its_location(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mamori.sensor.cli import main

    doc = _doc()
    doc["vulnerabilities"][0]["cve"] = "CVE-23-1"
    bad = _write(tmp_path, doc, "bad.json")
    config = tmp_path / "sensor.toml"
    config.write_text("", encoding="utf-8")
    status = main(["advisories", "import", str(bad), "--index", str(tmp_path / "a.db"),
                   "--store", str(tmp_path / "none.db"), "--config", str(config)])
    out, err = capsys.readouterr()
    assert status == 1
    assert err.splitlines() == [f"rejected {bad}: $.vulnerabilities[0].cve: 'CVE-23-1' is "
                                "not a CVE id"]
    assert "0 new" in out and "1 rejected" in out
