"""The collector's fast ingest path gives what the slow one gave: the alert document
decoded without an Alert, its JSON (orjson or json), the published line spliced from
the stored text, and one batch write for many messages."""

from __future__ import annotations

import contextlib
import json
import random
import sqlite3
import time
from pathlib import Path

import pytest

from mamori.parsers.wire import (
    MAX_ADDRESS_TEXTS,
    FieldPolicy,
    Kind,
    WireError,
    alert_json,
    decode,
    encode,
)
from mamori.sensor.collector import storage
from mamori.sensor.collector.server import _stored, published_line
from mamori.sensor.collector.storage import SqliteStorage, StoredMessage, dumps, message_rows
from tests.sensor.test_wire import T0, sample_alerts


def frames() -> list[bytes]:
    out = []
    for seq, alert in enumerate(sample_alerts(), 1):
        body, _ = FieldPolicy(deny=()).apply(alert)  # every field, register values too
        out.append(encode(1, seq, T0, Kind.ALERT, body))
    return out


@pytest.mark.parametrize("data", frames())
def test_the_alert_document_is_alert_json_of_the_decoded_alert(data: bytes) -> None:
    doc = decode(data, documents=True).body
    assert doc == alert_json(decode(data).body)
    assert json.loads(dumps(doc)) == json.loads(json.dumps(doc))


def test_mutated_frames_fail_the_same_way_on_both_paths() -> None:
    rng = random.Random(16)
    good = frames()
    for _ in range(3000):
        data = bytearray(rng.choice(good))
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        outcomes: list[tuple[str, int | str, int, Kind | None]] = []
        for documents in (False, True):
            try:
                env = decode(bytes(data), documents=documents)
                outcomes.append(("ok", env.epoch, env.seq, env.kind))
            except WireError as err:
                outcomes.append(("error", err.reason, 0, None))
        assert outcomes[0] == outcomes[1], bytes(data).hex()
        with contextlib.suppress(WireError):
            env = decode(bytes(data), documents=True)
            if env.kind is Kind.ALERT:
                assert env.body == alert_json(decode(bytes(data)).body)


def test_the_address_cache_changes_nothing_but_the_cost() -> None:
    """With the collector's address-text cache, every frame decodes as without it and
    every refusal keeps its reason, whether the cache knows the address or not."""
    texts: dict[bytes, str] = {}
    rng = random.Random(17)
    good = frames()
    for sent in good:  # the cache filled first, so mutants of known addresses hit it
        decode(sent, documents=True, texts=texts)
    assert texts and all(len(k) in (4, 16) for k in texts)
    for _ in range(3000):
        data = bytearray(rng.choice(good))
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        outcomes: list[tuple[str, object]] = []
        for cache in (None, texts, texts):  # without, then missing, then known
            try:
                outcomes.append(("ok", decode(bytes(data), documents=True, texts=cache)))
            except WireError as err:
                outcomes.append(("error", err.reason))
        assert outcomes[0] == outcomes[1] == outcomes[2], bytes(data).hex()
    assert all(texts[k] == decode(encode(1, 1, T0, Kind.ALERT, _with_src(k)),
                                  documents=True).body["src"] for k in texts)


def _with_src(address: bytes) -> list[object]:
    body, _ = FieldPolicy(deny=()).apply(sample_alerts()[0])
    body[10] = address
    return body


def test_the_address_cache_stops_growing_at_its_cap() -> None:
    texts: dict[bytes, str] = {}
    for n in range(MAX_ADDRESS_TEXTS * 10):  # far past the cap: made anew, not remembered
        address = (0x0A000000 + n).to_bytes(4, "big")
        doc = decode(encode(1, 1, T0, Kind.ALERT, _with_src(address)), documents=True,
                     texts=texts).body
        assert doc["src"] == f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
    assert len(texts) == MAX_ADDRESS_TEXTS
    for bad in (b"\x01\x02", b"\x00" * 15):  # never cached, refused the same each time
        for _ in range(2):
            with pytest.raises(WireError) as err:
                decode(encode(1, 1, T0, Kind.ALERT, _with_src(bad)), documents=True,
                       texts=texts)
            assert err.value.reason == "bad_body"


@pytest.mark.parametrize("value", [
    {"evidence": {"raw": b"\x00\xff", "nested": [b"\x01", {"k": b"\x02"}]}},
    {"title": "Überwachung \u2603 \"quoted\" \\ back\nslash", "x": None, "f": 0.1},
    {"big": 2**70, "neg": -(2**63)},  # past 64 bits orjson refuses: json takes over
    {"t": 1e16, "s": 1e-7, "n": -0.0},
])
def test_dumps_is_the_json_of_json_whichever_encoder(value: dict[str, object]) -> None:
    text = dumps(value)
    expected = json.dumps(value, default=lambda b: b.hex())
    assert json.loads(text) == json.loads(expected)
    saved = storage._orjson
    storage._orjson = None  # the path of a distribution without orjson
    try:
        assert json.loads(dumps(value)) == json.loads(expected)
    finally:
        storage._orjson = saved


def test_the_published_line_is_the_document_with_its_origin() -> None:
    for data in frames():
        env = decode(data, documents=True)
        msg = _stored("KEY\"1", env, time.time())
        origin = '"sensor":"n\\u00e4me","sensor_key":"KEY\\"1"'
        line = json.loads(published_line(msg, origin))
        assert line == {**env.body, "sensor": "n\u00e4me", "sensor_key": 'KEY"1',
                        "epoch": 1, "seq": env.seq, "sent_ts": T0}


def test_a_batch_keeps_the_latest_of_each_alert_id_and_every_message(tmp_path: Path) -> None:
    now = time.time()
    msgs = [StoredMessage("K", 1, seq, int(Kind.ALERT), now, now, {"id": 7, "n": seq}, "7",
                          seq, now) for seq in (3, 1, 2)]
    rows, alerts = message_rows(msgs)
    assert [r[2] for r in rows] == [3, 1, 2]
    assert [(a[3], json.loads(a[6])["n"]) for a in alerts] == [(3, 3)]
    st = SqliteStorage(tmp_path / "c.db")
    try:
        st.store_batch(msgs)
        st.store_batch(msgs)  # a resend of the whole batch: no duplicates
        st.commit()
        assert st.sequence("K") == [(1, 1), (1, 2), (1, 3)]
        assert st.alerts("K") == [{"id": 7, "n": 3}]
    finally:
        st.close()


def test_variants_the_general_path_accepts_give_the_same_document() -> None:
    """Integer times, a missing title or attack list skip the one-expression check of
    decode_alert_doc; they must come out as the exact-typed body does."""
    body, _ = FieldPolicy().apply(sample_alerts()[1])
    body[8] = body[9] = 1715678467.0
    exact = decode(encode(1, 1, T0, Kind.ALERT, body), documents=True).body
    for index, value, field, expected in [(8, 1715678467, "first_ts", 1715678467.0),
                                          (9, 1715678467, "last_ts", 1715678467.0),
                                          (6, None, "title", ""), (5, None, "attack", [])]:
        variant = list(body)
        variant[index] = value
        doc = decode(encode(1, 1, T0, Kind.ALERT, variant), documents=True).body
        assert doc == {**exact, field: expected, **({"ts": expected} if index == 8 else {})}
        assert isinstance(doc[field], type(expected))
    for index, bad in [(11, 65536), (13, -1), (14, 256), (15, 1 << 16), (16, "3"), (4, 5),
                       (2, "r" * 129), (3, 3), (7, None), (5, ["T" * 33]), (8, float("nan"))]:
        variant = list(body)
        variant[index] = bad
        with pytest.raises(WireError):
            decode(encode(1, 1, T0, Kind.ALERT, variant), documents=True)


def test_a_new_store_has_large_pages_and_the_same_durability(tmp_path: Path) -> None:
    """PAGE_SIZE for a new file, WAL with a full sync at every commit whatever the page
    size; a file made with SQLite's default pages opens and takes rows as it is."""
    st = SqliteStorage(tmp_path / "new.db")
    try:
        pragma = st._conn.execute
        assert pragma("PRAGMA page_size").fetchone()[0] == SqliteStorage.PAGE_SIZE != 4096
        assert pragma("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert pragma("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        st.close()
    old = sqlite3.connect(tmp_path / "old.db")
    old.execute("PRAGMA journal_mode=WAL")
    old.execute("CREATE TABLE before (x)")
    old.commit()
    old.close()
    st = SqliteStorage(tmp_path / "old.db")
    try:
        assert st._conn.execute("PRAGMA page_size").fetchone()[0] == 4096
        now = time.time()
        st.store_batch([StoredMessage("K", 1, 1, int(Kind.ALERT), now, now, {"id": 1}, "1")])
        st.commit()
        assert st.sequence("K") == [(1, 1)] and st.alerts("K") == [{"id": 1}]
    finally:
        st.close()
