"""The wire format: round trips, strict rejection of hostile input, and compactness."""

from __future__ import annotations

import contextlib
import json
import random
import statistics

import msgpack
import pytest

from mamori.parsers.alerts import Alert, Severity
from mamori.parsers.wire import (
    ALERT_FIELDS,
    Ack,
    FieldPolicy,
    Kind,
    ReplayRequest,
    WireError,
    decode,
    decode_control,
    encode,
    encode_ack,
    encode_replay,
)

T0 = 1715678467.123456


def sample_alerts() -> list[Alert]:
    """Realistic alerts from the rule catalogue, with their evidence."""
    return [
        Alert("mamori.modbus.write_unknown_master", "M3", Severity.HIGH, ("T0855", "T0836"),
              "Modbus write from a host that never wrote before", "modbus", T0, T0 + 12.5,
              count=7, src="10.20.1.15", sport=50412, dst="10.20.2.7", dport=502, unit=1,
              evidence={"fc": 6, "addr": 40001, "qty": 1, "values": [1234]}, id=4711),
        Alert("mamori.modbus.listen_only", "M1", Severity.CRITICAL, ("T0814", "T0804"),
              "Modbus force listen-only mode", "modbus", T0, T0, src="10.20.1.99",
              sport=41522, dst="10.20.2.8", dport=502, unit=17, evidence={"fc": 8, "sub": 4},
              id=4712),
        Alert("mamori.modbus.unit_sweep", "R2", Severity.MEDIUM, ("T0846",),
              "Modbus unit id sweep", "modbus", T0, T0 + 3.2, count=247, src="10.20.1.99",
              sport=41530, dst="10.20.2.8", dport=502, evidence={"units": 247, "fc": 43},
              id=4713),
        Alert("mamori.dnp3.cold_restart", "D2", Severity.HIGH, ("T0816",),
              "DNP3 cold restart", "dnp3", T0, T0, src="10.30.0.5", sport=20000,
              dst="10.30.0.9", dport=20000, link_src=3, link_dst=10,
              evidence={"fc": 13, "objects": [[0, 0]], "iin": 0}, id=4714),
        Alert("mamori.dnp3.disable_unsolicited", "D4", Severity.HIGH, ("T0815",),
              "DNP3 unsolicited reporting disabled", "dnp3", T0, T0 + 60.0, count=3,
              src="10.30.0.5", sport=20000, dst="10.30.0.9", dport=20000, link_src=3,
              link_dst=10, evidence={"fc": 21, "objects": [[60, 2], [60, 3], [60, 4]]},
              id=4715),
        Alert("mamori.modbus.program_download", "M5", Severity.CRITICAL, ("T0843",),
              "Modbus program download (function 90)", "modbus", T0, T0 + 1.0, count=42,
              src="10.20.1.44", sport=52001, dst="10.20.2.3", dport=502, unit=255,
              evidence={"fc": 90, "bytes": 10240}, id=4716),
    ]


def eve_json(alert: Alert, sid: int) -> str:
    """What Suricata's EVE output writes for the same event (documented EVE alert format,
    one compact line, with the default ``flow`` and app-layer objects)."""
    stamp = "2024-05-14T09:21:07.123456+0000"
    fc = int(alert.evidence.get("fc", 0))
    doc: dict[str, object] = {
        "timestamp": stamp, "flow_id": 1485370922437913, "in_iface": "enp3s0",
        "event_type": "alert", "src_ip": alert.src, "src_port": alert.sport,
        "dest_ip": alert.dst, "dest_port": alert.dport, "proto": "TCP",
        "pkt_src": "wire/pcap", "app_proto": alert.proto,
        "alert": {"action": "allowed", "gid": 1, "signature_id": sid, "rev": 1,
                  "signature": alert.title, "category": "Attempted Administrator Privilege Gain",
                  "severity": 1, "metadata": {"mitre_technique_id": list(alert.attack),
                                              "created_at": ["2024_05_01"]}},
        "flow": {"pkts_toserver": 12, "pkts_toclient": 11, "bytes_toserver": 986,
                 "bytes_toclient": 912, "start": stamp, "src_ip": alert.src,
                 "dest_ip": alert.dst, "src_port": alert.sport, "dest_port": alert.dport},
    }
    if alert.proto == "modbus":
        doc["modbus"] = {"id": 1, "request": {
            "transaction_id": 1, "protocol_id": 0, "unit_id": alert.unit or 0,
            "function_raw": fc, "function_code": "WriteSingleRegister",
            "access_type": "WRITE | SINGLE | HOLDING", "category": "PUBLIC_ASSIGNED",
            "data": [0, 0, 4, 210]}}
    else:
        doc["dnp3"] = {"type": "request", "control": {"dir": True, "pri": True, "fcb": False,
                                                      "fcv": False, "function_code": 4},
                       "src": alert.link_src, "dst": alert.link_dst,
                       "application": {"control": {"fir": True, "fin": True, "con": False,
                                                   "uns": False, "sequence": 3},
                                       "function_code": fc, "objects": [], "complete": True}}
    return json.dumps(doc, separators=(",", ":"))


def wire_alert(alert: Alert, seq: int = 17) -> bytes:
    body, _ = FieldPolicy().apply(alert)
    return encode(3, seq, T0 + 0.5, Kind.ALERT, body)


def test_median_alert_is_at_most_a_fifth_of_eve_json() -> None:
    alerts = sample_alerts()
    ours = statistics.median(len(wire_alert(a)) for a in alerts)
    eve = statistics.median(len(eve_json(a, 2250000 + i)) for i, a in enumerate(alerts))
    assert ours / eve <= 0.2, (ours, eve)


@pytest.mark.parametrize("alert", sample_alerts(), ids=lambda a: a.rule)
def test_alert_round_trip_under_the_default_policy(alert: Alert) -> None:
    env = decode(wire_alert(alert))
    assert (env.epoch, env.seq, env.kind) == (3, 17, Kind.ALERT)
    got = env.body
    assert isinstance(got, Alert)
    assert "values" not in got.evidence  # register values stay on the box
    expected = {k: v for k, v in alert.evidence.items() if k != "values"}
    assert got == Alert(**{**{f: getattr(alert, f) for f in ALERT_FIELDS},
                           "evidence": expected})


def test_policy_allow_list_keeps_required_fields_and_named_evidence() -> None:
    alert = sample_alerts()[0]
    body, fields = FieldPolicy(allow=("src", "evidence.fc"), deny=()).apply(alert)
    got = decode(encode(1, 1, T0, Kind.ALERT, body)).body
    assert got.src == "10.20.1.15" and got.dst is None and got.title == ""
    assert dict(got.evidence) == {"fc": 6}
    assert "dst" not in fields and "evidence.fc" in fields and "rule" in fields
    with pytest.raises(ValueError, match="required"):
        FieldPolicy(deny=("rule",))


def test_control_messages_round_trip() -> None:
    assert decode_control(encode_ack(Ack(2, 99))) == Ack(2, 99)
    assert decode_control(encode_replay(ReplayRequest(2, 5, 9))) == ReplayRequest(2, 5, 9)


HOSTILE = [
    (b"", "not_msgpack"),
    (b"\xc1", "not_msgpack"),  # never-used msgpack byte
    (b"\x91" * 5000 + b"\xc0", "not_msgpack"),  # nested 5000 deep
    (msgpack.packb([1, 2, 3]), "bad_envelope"),
    (msgpack.packb({"v": 1}), "bad_envelope"),
    (msgpack.packb([3, 1, 1, T0, 1, []]), "bad_version"),  # newer than this collector
    (msgpack.packb([0, 1, 1, T0, 4, {}]), "bad_version"),
    (msgpack.packb([True, 1, 1, T0, 4, {}]), "bad_version"),
    # a pseudonym is version 2; a version-1 frame carrying one is lying about itself
    (msgpack.packb([1, 1, 1, T0, 4, {"ip": msgpack.ExtType(1, b"p" * 12)}]), "bad_type"),
    (msgpack.packb([2, 1, 1, T0, 4, {"ip": msgpack.ExtType(1, b"p" * 11)}]), "not_msgpack"),
    (msgpack.packb([2, 1, 1, T0, 4, {"ip": msgpack.ExtType(1, b"p" * 13)}]), "not_msgpack"),
    (msgpack.packb([1, -1, 1, T0, 4, {}]), "bad_type"),  # negative epoch
    (msgpack.packb([1, 1, "1", T0, 4, {}]), "bad_type"),  # seq as a string
    (msgpack.packb([1, 1, 1, float("nan"), 4, {}]), "bad_type"),
    (msgpack.packb([1, 1, 1, T0, 99, {}]), "unknown_kind"),
    (msgpack.packb([1, 1, 1, T0, True, {}]), "unknown_kind"),
    (msgpack.packb([1, 1, 0, T0, 1, []]), "bad_type"),  # journaled kind with seq 0
    (msgpack.packb([1, 1, 1, T0, 1, [1, 2]]), "bad_body"),  # short alert
    (msgpack.packb([1, 1, 1, T0, 4, [1]]), "bad_body"),  # health must be a map
    (msgpack.packb([1, 1, 1, T0, 4, {1: 2}]), "not_msgpack"),  # strict_map_key
    (msgpack.packb([1, 1, 1, T0, 4, {"x": "y" * 5000}]), "not_msgpack"),  # max_str_len
    (msgpack.packb([1, 1, 1, T0, 4, {"x": msgpack.ExtType(5, b"12")}]), "not_msgpack"),
    (b"\x96\x01\x01\x01", "not_msgpack"),  # truncated
    (msgpack.packb([1, 1, 1, T0, 4, {}]) + b"\x00", "not_msgpack"),  # trailing data
    (b"\x00" * 70_000, "too_large"),
]


@pytest.mark.parametrize(("data", "reason"), HOSTILE)
def test_hostile_input_is_a_counted_wire_error(data: bytes, reason: str) -> None:
    with pytest.raises(WireError) as err:
        decode(data)
    assert err.value.reason == reason


def test_wrongly_typed_alert_fields_are_rejected() -> None:
    good, _ = FieldPolicy().apply(sample_alerts()[0])
    for index, bad in [(0, -1), (2, 5), (4, 9), (5, "T0800"), (10, b"\x01\x02"),
                       (11, 70000), (17, [1])]:
        body = list(good)
        body[index] = bad
        with pytest.raises(WireError):
            decode(encode(1, 1, T0, Kind.ALERT, body))


def test_random_mutations_never_raise_anything_but_wire_error() -> None:
    rng = random.Random(5)
    frames = [wire_alert(a) for a in sample_alerts()]
    for _ in range(3000):
        data = bytearray(rng.choice(frames))
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        with contextlib.suppress(WireError):
            decode(bytes(data))
