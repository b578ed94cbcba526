"""Signed rule bundles through the real CLI: build, install, refuse, roll back (issue 17).

Every refusal is checked for what an operator and the centre see: exit 1 and one
line naming the reason, the active bundle unchanged, the reason counted, and an S7
health alert in the local store. A bundle's rules are shown to be the ones loaded by
replaying the bundled sample with detection.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest
from nacl.signing import SigningKey

from mamori.sensor.detection.bundle import build
from tests.conftest import PROJECT

MAMORI = str(Path(sys.executable).parent / "mamori")
SAMPLE = PROJECT / "samples" / "modbus_demo.pcap"
V2_PACK = """\
pack: site.v2
rules:
  - id: site.v2.listen_only
    precursor: M1
    title: Listen only, by the site's bundle
    severity: critical
    attack: [T0814]
    match: {proto: modbus, type: request, fc: 8, sub: 4}
"""


class Site:
    """A sensor's config and state, and the centre's signing key, in a tmp dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / "state"
        self.trusted = root / "trusted"
        self.config = root / "sensor.toml"
        self.config.write_text(f'[sensor]\nstate_dir = "{self.state}"\n\n[detection]\n'
                               f'trusted_rule_keys = "{self.trusted}"\n')
        self.centre = root / "centre"
        done = self.mamori("rules", "keygen", "centre", "--dir", self.centre)
        assert done.returncode == 0, done.stderr
        self.trusted.mkdir()
        (self.trusted / "centre.pub").write_text((self.centre / "centre.pub").read_text())

    def mamori(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([MAMORI, *map(str, args)], capture_output=True, text=True,
                              cwd=self.root, timeout=120)

    def bundle(self, version: int, *packs: Path, name: str | None = None) -> Path:
        out = self.root / (name or f"v{version}.mrb")
        done = self.mamori("rules", "bundle", "--key", self.centre / "centre.sign",
                           "--version", str(version), "--comment", f"test {version}",
                           "-o", out, *packs)
        assert done.returncode == 0, done.stderr
        return out

    def status(self) -> dict[str, Any]:
        done = self.mamori("rules", "status", "--json", "--config", self.config)
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))

    def install(self, bundle: Path) -> subprocess.CompletedProcess[str]:
        return self.mamori("rules", "install", bundle, "--config", self.config)

    def replay_rules(self) -> set[str]:
        alerts = self.root / "alerts.jsonl"
        done = self.mamori("replay", "--no-progress", "--config", self.config,
                           "--alerts", alerts, SAMPLE)
        assert done.returncode == 0, done.stderr
        return {json.loads(line)["rule"] for line in alerts.read_text().splitlines()}

    def health_alerts(self) -> list[dict[str, Any]]:
        done = self.mamori("alerts", "--json", "--config", self.config)
        assert done.returncode == 0, done.stderr
        rows = [json.loads(line) for line in done.stdout.splitlines()]
        return [r for r in rows if r["rule"] == "mamori.sensor.rule_bundle_refused"]


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)


def v2_pack(site: Site) -> Path:
    pack = site.root / "v2" / "site.yaml"
    pack.parent.mkdir(exist_ok=True)
    pack.write_text(V2_PACK)
    return pack.parent


def test_an_installed_bundle_is_what_the_sensor_loads(site: Site) -> None:
    shipped = site.replay_rules()
    assert "mamori.modbus.listen_only" in shipped
    assert site.install(site.bundle(1)).returncode == 0  # the shipped packs, signed
    assert site.status()["active"]["version"] == 1
    assert site.replay_rules() == shipped
    done = site.install(site.bundle(2, v2_pack(site)))
    assert done.returncode == 0, done.stderr
    status = site.status()
    assert status["active"]["version"] == 2 and status["previous"] == 1
    assert site.replay_rules() == {"site.v2.listen_only"}
    check = site.mamori("rules", "check", "--config", site.config)
    assert check.returncode == 0 and "ok: 1 rules" in check.stdout, check


def test_a_bundle_that_does_not_load_is_not_built(site: Site) -> None:
    broken = v2_pack(site) / "site.yaml"
    broken.write_text(V2_PACK.replace("severity: critical", "severity: dire"))
    done = site.mamori("rules", "bundle", "--key", site.centre / "centre.sign", "--version",
                       "3", "-o", site.root / "x.mrb", broken.parent)
    assert done.returncode == 1 and "severity: 'dire'" in done.stderr, done.stderr
    assert not (site.root / "x.mrb").exists()


def _repack(raw: bytes, **changes: object) -> bytes:
    outer = msgpack.unpackb(raw, raw=False)
    outer.update(changes)
    return bytes(msgpack.packb(outer))


def _refusals(site: Site) -> list[tuple[str, bytes]]:
    """(reason, bundle bytes) for every way a bundle must be refused."""
    good = site.bundle(5, v2_pack(site)).read_bytes()
    outer = msgpack.unpackb(good, raw=False)
    stranger = SigningKey.generate()
    unknown = build([v2_pack(site) / "site.yaml"], stranger, 6)
    signature = bytearray(outer["signature"])
    signature[0] ^= 1
    changed = V2_PACK.replace("sub: 4", "sub: 1").encode()  # same size: only the hash tells
    invalid_pack = site.root / "bad" / "bad.yaml"
    invalid_pack.parent.mkdir()
    invalid_pack.write_text(V2_PACK.replace("fc: 8", "fc: 'x-y'"))
    invalid = build([invalid_pack], _centre_key(site), 7)
    return [
        ("MALFORMED", b"\x00not a bundle"),
        ("MALFORMED", good[: len(good) // 2]),
        ("UNKNOWN_KEY", unknown),
        ("BAD_SIGNATURE", _repack(good, signature=bytes(signature))),
        ("TAMPERED", _repack(good, files={"site.yaml": changed})),
        ("TAMPERED", _repack(good, files={**outer["files"], "extra.yaml": V2_PACK.encode()})),
        ("DOWNGRADE", site.bundle(2, v2_pack(site), name="old.mrb").read_bytes()),
        ("DOWNGRADE", site.bundle(4, v2_pack(site), name="same.mrb").read_bytes()),
        ("INVALID_RULES", invalid),
    ]


def _centre_key(site: Site) -> SigningKey:
    return SigningKey(bytes.fromhex((site.centre / "centre.sign").read_text().strip()))


def test_every_bad_bundle_is_refused_counted_and_alerted(site: Site) -> None:
    assert site.install(site.bundle(4, v2_pack(site))).returncode == 0
    cases = _refusals(site)
    expected: dict[str, int] = {}
    for n, (reason, raw) in enumerate(cases):
        path = site.root / f"case{n}.mrb"
        path.write_bytes(raw)
        done = site.install(path)
        assert done.returncode == 1, (reason, done.stdout)
        (line,) = done.stderr.splitlines()
        assert f"refused ({reason})" in line and str(path) in line, (reason, line)
        assert "Traceback" not in done.stderr
        expected[reason] = expected.get(reason, 0) + 1
        status = site.status()
        assert status["active"]["version"] == 4, (reason, status)
        assert status["refused"] == expected, (reason, status)
    alerts = site.health_alerts()
    assert len(alerts) == len(cases)
    assert {a["precursor"] for a in alerts} == {"S7"}
    assert sorted(a["evidence"]["reason"] for a in alerts) == sorted(
        r for r, _ in cases)
    assert site.replay_rules() == {"site.v2.listen_only"}  # still detecting with bundle 4


def test_changed_files_on_disk_roll_back_and_detection_goes_on(site: Site) -> None:
    assert site.install(site.bundle(1)).returncode == 0
    assert site.install(site.bundle(2, v2_pack(site))).returncode == 0
    installed = site.state / "rules" / "bundles" / "2" / "site.yaml"
    installed.write_text(V2_PACK.replace("fc: 8", "fc: 16"))  # someone edits it by hand
    rules = site.replay_rules()
    assert "mamori.modbus.listen_only" in rules and "site.v2.listen_only" not in rules
    status = site.status()
    assert status["active"]["version"] == 1 and status["previous"] is None
    assert status["refused"] == {"TAMPERED": 1}
    assert not installed.exists()  # never loaded again
    # Bundle 1 tampered as well: nothing to roll back to, so the shipped packs.
    for pack in (site.state / "rules" / "bundles" / "1").glob("*.yaml"):
        pack.write_text(pack.read_text() + "\n# edited\n")
    assert "mamori.modbus.listen_only" in site.replay_rules()
    status = site.status()
    assert status["active"] is None and status["refused"] == {"TAMPERED": 2}
    assert site.install(site.bundle(3, v2_pack(site))).returncode == 0  # moves on again


def test_rollback_by_hand(site: Site) -> None:
    assert site.mamori("rules", "rollback", "--config", site.config).returncode == 1
    assert site.install(site.bundle(1)).returncode == 0
    assert site.install(site.bundle(2, v2_pack(site))).returncode == 0
    done = site.mamori("rules", "rollback", "--config", site.config)
    assert done.returncode == 0 and "bundle 1 active" in done.stdout, done
    assert "mamori.modbus.listen_only" in site.replay_rules()


def test_the_size_and_file_caps_are_enforced_past_their_limits(tmp_path: Path) -> None:
    from mamori.sensor.detection.bundle import (
        MAX_BUNDLE_BYTES,
        MAX_FILES,
        BundleRefused,
        Refusal,
        verify,
    )

    key = SigningKey.generate()
    packs = []
    for i in range(MAX_FILES + 1):
        pack = tmp_path / f"p{i}.yaml"
        pack.write_text(V2_PACK.replace("site.v2", f"site.p{i}"))
        packs.append(pack)
    with pytest.raises(ValueError, match=f"at most {MAX_FILES}"):
        build(packs, key, 1)
    trusted = {"k": bytes(key.verify_key)}
    with pytest.raises(BundleRefused) as refused:
        verify(b"\x90" * (MAX_BUNDLE_BYTES + 1), trusted)
    assert refused.value.reason is Refusal.MALFORMED
    # A manifest listing more files than the cap is refused by the reader's own limits.
    big = msgpack.packb({"format": "mamori-rule-bundle", "manifest": b"", "signature": b"",
                         "files": {f"p{i}.yaml": b"" for i in range(MAX_FILES * 2)}})
    with pytest.raises(BundleRefused) as refused:
        verify(bytes(big), trusted)
    assert refused.value.reason is Refusal.MALFORMED
    assert refused.value.detail.startswith("bundle: "), refused.value.detail  # not the manifest
