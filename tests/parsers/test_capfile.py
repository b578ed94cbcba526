"""CaptureFileParser against tshark on real captures, then hand-built and damaged files."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mamori.parsers.capfile import CaptureFileError, CaptureFileParser, CaptureRecord
from tests.conftest import corpus_path, require_tool

PCAPNG = "nDPI/tests/cfgs/default/pcap/dnp3.pcap"  # the corpus's one pcapng
ETHER = "suricata-verify/tests/modbus/modbus.pcap"  # linktype 1
NULL = "ICS-Security-Tools/pcaps/dnp3/opendnp3-3/conformance/8.11.2.5/dump.pcap"  # linktype 0
RAWIP4 = "suricata-verify/tests/dnp3/dnp3-flood/input.pcap"  # linktype 228
BIG = "generated/modbus_big.pcap"  # 120008 frames, more than one 1 MiB chunk

needs_tshark = pytest.mark.usefixtures("tshark")
corpus_file = corpus_path


def tshark_frames(path: Path) -> list[tuple[int, int, int, int]]:
    """(frame number, epoch in ns, captured length, interface id) per frame, per tshark."""
    out = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.number",
         "-e", "frame.time_epoch", "-e", "frame.cap_len", "-e", "frame.interface_id"],
        capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        number, epoch, caplen, iface = line.split("\t")
        sec, _, frac = epoch.partition(".")  # empty for an SPB, which has no time
        ns = int(sec) * 10**9 + int(frac.ljust(9, "0")[:9]) if epoch else -1
        rows.append((int(number), ns, int(caplen), int(iface or 0)))
    return rows


def parse(data: bytes, chunk: int = 1 << 20, **caps: int) -> list[CaptureRecord]:
    """Feed ``data`` in ``chunk``-sized pieces; return the records; close()."""
    parser = CaptureFileParser(**caps)
    records: list[CaptureRecord] = []
    for i in range(0, len(data), chunk):
        parser.receive(data[i:i + chunk])
        records.extend(parser.records())
    records.extend(parser.records())
    parser.close()
    return records


def parse_until_error(data: bytes, chunk: int) -> tuple[list[CaptureRecord], CaptureFileError]:
    """Feed everything; return the good records and the error that must follow them."""
    parser = CaptureFileParser()
    records: list[CaptureRecord] = []
    with pytest.raises(CaptureFileError) as info:
        for i in range(0, len(data), chunk):
            parser.receive(data[i:i + chunk])
            records.extend(parser.records())
        records.extend(parser.records())
        parser.close()
    return records, info.value


def assert_matches_tshark(records: list[CaptureRecord], path: Path, ns_file: bool) -> None:
    expected = tshark_frames(path)
    assert len(records) == len(expected)
    for rec, (number, epoch_ns, caplen, iface) in zip(records, expected, strict=True):
        assert rec.frame == number
        assert len(rec.data) == caplen
        assert rec.iface == iface
        # The float nearest to the exact time, whatever the resolution of the file.
        assert rec.ts == epoch_ns / 10**9, (number, rec.ts, epoch_ns)
        if not ns_file:
            assert round(rec.ts * 1e6) == epoch_ns // 1000, (number, rec.ts, epoch_ns)


# -- real captures ----------------------------------------------------------------------


@needs_tshark
@pytest.mark.corpus
@pytest.mark.parametrize(("rel", "linktype"), [
    (ETHER, 1), (NULL, 0), (RAWIP4, 228), (PCAPNG, 1), (BIG, 1)])
def test_corpus_matches_tshark(rel: str, linktype: int) -> None:
    path = corpus_file(rel)
    records = parse(path.read_bytes())
    assert_matches_tshark(records, path, ns_file=False)
    assert {r.linktype for r in records} == {linktype}


@pytest.mark.corpus
@pytest.mark.parametrize("rel", [ETHER, PCAPNG])
def test_one_byte_at_a_time_equals_whole(rel: str) -> None:
    data = corpus_file(rel).read_bytes()
    assert parse(data, chunk=1) == parse(data)


@pytest.mark.corpus
@pytest.mark.parametrize("rel", [ETHER, PCAPNG])
def test_tuples_equal_records(rel: str) -> None:
    data = corpus_file(rel).read_bytes()
    parser = CaptureFileParser()
    parser.receive(data)
    tuples = parser.records_tuples()
    parser.close()
    assert tuples == [(r.ts, r.linktype, r.data, r.frame) for r in parse(data)]


@pytest.mark.corpus
def test_record_offsets_point_at_records() -> None:
    data = corpus_file(ETHER).read_bytes()
    for rec in parse(data):
        incl = struct.unpack_from("<I", data, rec.offset + 8)[0]
        assert data[rec.offset + 16:rec.offset + 16 + incl] == rec.data
    data = corpus_file(PCAPNG).read_bytes()
    for rec in parse(data):
        assert struct.unpack_from("<I", data, rec.offset)[0] == 6  # an EPB starts there


# -- variants written by editcap / mergecap ---------------------------------------------


@needs_tshark
@pytest.mark.corpus
@pytest.mark.parametrize(("rel", "fmt"), [
    (ETHER, "pcapng"), (ETHER, "nsecpcap"), (PCAPNG, "pcap"), (PCAPNG, "nsecpcap"),
    (NULL, "pcapng"), (RAWIP4, "nsecpcap")])
def test_editcap_variants(tmp_path: Path, rel: str, fmt: str) -> None:
    require_tool("editcap")
    src = corpus_file(rel)
    out = tmp_path / f"variant.{fmt}"
    subprocess.run(["editcap", "-F", fmt, str(src), str(out)], check=True, capture_output=True)
    records = parse(out.read_bytes())
    assert_matches_tshark(records, out, ns_file=fmt.startswith("nsec"))
    original = parse(src.read_bytes())
    assert [r.data for r in records] == [r.data for r in original]
    assert [r.linktype for r in records] == [r.linktype for r in original]


@needs_tshark
@pytest.mark.corpus
def test_mergecap_multi_interface_pcapng(tmp_path: Path) -> None:
    require_tool("mergecap")
    inputs = [corpus_file(rel) for rel in (ETHER, NULL, RAWIP4)]
    out = tmp_path / "merged.pcapng"
    subprocess.run(["mergecap", "-F", "pcapng", "-w", str(out), *map(str, inputs)],
                   check=True, capture_output=True)
    records = parse(out.read_bytes())
    assert_matches_tshark(records, out, ns_file=False)
    assert {r.linktype for r in records} == {0, 1, 228}
    assert len({r.iface for r in records}) == 3
    by_link = {lt: sorted(r.data for r in records if r.linktype == lt) for lt in (0, 1, 228)}
    for path, lt in zip(inputs, (1, 0, 228), strict=True):
        assert by_link[lt] == sorted(r.data for r in parse(path.read_bytes()))


def byte_swap_pcap(data: bytes) -> bytes:
    """Rewrite a little-endian pcap with big-endian headers (frames untouched)."""
    out = bytearray(struct.pack(">IHHiIII", *struct.unpack_from("<IHHiIII", data, 0)))
    pos = 24
    while pos < len(data):
        header = struct.unpack_from("<IIII", data, pos)
        out += struct.pack(">IIII", *header)
        out += data[pos + 16:pos + 16 + header[2]]
        pos += 16 + header[2]
    return bytes(out)


@needs_tshark
@pytest.mark.corpus
@pytest.mark.parametrize("rel", [ETHER, NULL])
def test_big_endian_pcap(tmp_path: Path, rel: str) -> None:
    data = corpus_file(rel).read_bytes()
    swapped = byte_swap_pcap(data)
    assert swapped[:4] == b"\xa1\xb2\xc3\xd4"
    out = tmp_path / "big_endian.pcap"
    out.write_bytes(swapped)
    records = parse(swapped)
    assert_matches_tshark(records, out, ns_file=False)  # tshark reads it the same way
    assert records == parse(data)


def test_big_endian_nanosecond_pcap_by_hand() -> None:
    data = bytes.fromhex(
        "a1b23c4d"  # magic, big-endian, nanosecond timestamps
        "0002" "0004"  # version 2.4
        "00000000"  # thiszone
        "00000000"  # sigfigs
        "0000ffff"  # snaplen 65535
        "00000065"  # linktype 101 (raw IP), no FCS bits
        "00000005"  # ts_sec 5
        "1dcd6500"  # ts_nsec 500000000
        "00000003"  # incl_len 3
        "0000003c"  # orig_len 60
        "450000"  # the frame, cut to 3 bytes
    )
    [rec] = parse(data)
    assert (rec.ts, rec.linktype, rec.data, rec.orig_len, rec.frame) == (5.5, 101, b"E\0\0", 60, 1)
    assert (rec.iface, rec.offset) == (0, 24)


def test_fcs_bits_do_not_leak_into_the_linktype() -> None:
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535,
                         0x10000000 | (2 << 29) | 1)  # F bit, 2 words (4 bytes) of FCS, Ethernet
    parser = CaptureFileParser()
    parser.receive(header + struct.pack("<IIII", 1, 2, 4, 4) + b"abcd")
    [rec] = parser.records()
    assert rec.linktype == 1
    assert parser.fcs_len == 4
    assert parser.format == "pcap"


# -- hand-built pcapng: SPB, power-of-two resolution, two sections ---------------------

SPB_PCAPNG = bytes.fromhex(
    # --- section 1, little-endian ---
    # SHB
    "0a0d0d0a"  # block type: section header
    "1c000000"  # total length 28
    "4d3c2b1a"  # byte-order magic, little-endian
    "0100" "0000"  # version 1.0
    "ffffffffffffffff"  # section length: unknown
    "1c000000"  # total length again
    # IDB, interface 0
    "01000000"  # block type: interface description
    "20000000"  # total length 32
    "0100"  # linktype 1, Ethernet
    "0000"  # reserved
    "06000000"  # snaplen 6
    "0900" "0100"  # option if_tsresol, 1 byte
    "94000000"  # 0x94: 2^-20 seconds per tick, 3 bytes padding
    "0000" "0000"  # opt_endofopt
    "20000000"  # total length again
    # EPB, frame 1
    "06000000"  # block type: enhanced packet
    "28000000"  # total length 40
    "00000000"  # interface 0
    "00000000"  # timestamp high
    "00005800"  # timestamp low: 0x580000 ticks = 5.5 s
    "05000000"  # captured length 5
    "05000000"  # original length 5
    "0102030405000000"  # data, 3 bytes padding
    "28000000"  # total length again
    # NRB, skipped
    "04000000"  # block type: name resolution
    "10000000"  # total length 16
    "0000" "0000"  # nrb_record_end
    "10000000"  # total length again
    # SPB, frame 2
    "03000000"  # block type: simple packet
    "18000000"  # total length 24
    "06000000"  # original length 6
    "a1a2a3a4a5a60000"  # data (6 bytes), 2 bytes padding
    "18000000"  # total length again
    # SPB, frame 3, cut to the snaplen
    "03000000"  # block type: simple packet
    "18000000"  # total length 24
    "64000000"  # original length 100
    "b1b2b3b4b5b60000"  # the 6 bytes that were kept (snaplen), 2 bytes padding
    "18000000"  # total length again
    # --- section 2, big-endian ---
    # SHB
    "0a0d0d0a"  # block type: section header (a palindrome)
    "0000001c"  # total length 28
    "1a2b3c4d"  # byte-order magic, big-endian
    "0001" "0000"  # version 1.0
    "ffffffffffffffff"  # section length: unknown
    "0000001c"  # total length again
    # IDB, interface 0 of this section
    "00000001"  # block type: interface description
    "00000014"  # total length 20
    "00e4"  # linktype 228, raw IPv4
    "0000"  # reserved
    "00000000"  # snaplen 0
    "00000014"  # total length again (no options: microseconds)
    # EPB, frame 4
    "00000006"  # block type: enhanced packet
    "00000024"  # total length 36
    "00000000"  # interface 0
    "00000000"  # timestamp high
    "0016e360"  # timestamp low: 1500000 µs = 1.5 s
    "00000004"  # captured length 4
    "00000014"  # original length 20
    "45000014"  # data
    "00000024"  # total length again
)


def test_hand_built_pcapng_with_spb_and_two_sections() -> None:
    records = parse(SPB_PCAPNG)
    assert [(r.frame, r.ts, r.linktype, r.data, r.orig_len, r.iface) for r in records] == [
        (1, 5.5, 1, bytes.fromhex("0102030405"), 5, 0),
        (2, 5.5, 1, bytes.fromhex("a1a2a3a4a5a6"), 6, 0),  # SPB: previous packet's time
        (3, 5.5, 1, bytes.fromhex("b1b2b3b4b5b6"), 100, 0),
        (4, 1.5, 228, bytes.fromhex("45000014"), 20, 0),
    ]
    assert [r.offset for r in records] == [60, 116, 140, 212]
    assert parse(SPB_PCAPNG, chunk=1) == records


@needs_tshark
def test_hand_built_pcapng_reads_the_same_in_tshark(tmp_path: Path) -> None:
    out = tmp_path / "spb.pcapng"
    out.write_bytes(SPB_PCAPNG)
    rows = tshark_frames(out)
    records = parse(SPB_PCAPNG)
    assert [(n, c) for n, _, c, _ in rows] == [(r.frame, len(r.data)) for r in records]
    for rec, (_, epoch_ns, _, _) in zip(records, rows, strict=True):
        if epoch_ns >= 0:  # tshark gives an SPB no time; we carry the previous one
            assert round(rec.ts * 1e9) == epoch_ns
    assert [ns for _, ns, _, _ in rows] == [5_500_000_000, -1, -1, 1_500_000_000]


def test_nanosecond_pcapng_resolution() -> None:
    shb = struct.pack("<IIIHHqI", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1, 28)
    idb = struct.pack("<IIHHIHHBxxxHHI", 1, 32, 1, 0, 0, 9, 1, 9, 0, 0, 32)  # if_tsresol=9
    ticks = 1_700_000_000_123_456_789
    epb = struct.pack("<IIIIIII", 6, 32, 0, ticks >> 32, ticks & 0xFFFFFFFF, 0, 0) + \
        struct.pack("<I", 32)
    [rec] = parse(shb + idb + epb)
    assert rec.ts == ticks / 10**9
    assert rec.data == b""


# -- damage -----------------------------------------------------------------------------


def block_spans(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, length, type) of every block of a little-endian pcapng."""
    spans, pos = [], 0
    while pos < len(data):
        btype, blen = struct.unpack_from("<II", data, pos)
        spans.append((pos, blen, btype))
        pos += blen
    return spans


@pytest.mark.corpus
@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_truncated_pcap_gives_good_records_then_error(chunk: int) -> None:
    data = corpus_file(RAWIP4).read_bytes()
    full = parse(data)
    ends = {24} | {r.offset + 16 + len(r.data) for r in full}
    fifth = full[4]
    cuts = [1, 3, 4, 23, 25, 39, fifth.offset + 5, fifth.offset + 16,
            fifth.offset + 17, fifth.offset + 16 + len(fifth.data) - 1, len(data) - 1]
    for cut in cuts:
        assert cut not in ends
        records, err = parse_until_error(data[:cut], chunk)
        good = [r for r in full if r.offset + 16 + len(r.data) <= cut]
        assert records == good, cut
        at = 0 if cut < 24 else max(e for e in ends if e <= cut)
        assert err.offset == at, cut
        assert f"at byte {at}" in str(err)
    # Cuts on a record boundary are a clean, shorter file.
    for cut in (24, fifth.offset, len(data)):
        assert parse(data[:cut]) == [r for r in full if r.offset < cut]


@pytest.mark.corpus
def test_truncated_pcap_message() -> None:
    data = corpus_file(RAWIP4).read_bytes()
    first = parse(data)[0]
    _, err = parse_until_error(data[:24 + 16 + 12], 1 << 20)
    assert str(err) == (f"truncated packet record at byte 24: header says {len(first.data)} "
                        "bytes, 12 present")
    _, err = parse_until_error(data[:30], 1 << 20)
    assert str(err) == "truncated packet record header at byte 24: 16 bytes needed, 6 present"
    _, err = parse_until_error(data[:10], 1 << 20)
    assert err.offset == 0 and "24 bytes needed, 10 present" in str(err)


@pytest.mark.corpus
@pytest.mark.parametrize("chunk", [1, 1000, 1 << 20])
def test_truncated_pcapng_gives_good_records_then_error(chunk: int) -> None:
    data = corpus_file(PCAPNG).read_bytes()
    full = parse(data)
    spans = block_spans(data)
    length = {o: n for o, n, _ in spans}
    cuts = [5, 13, 30, spans[1][0] + 3, spans[2][0] + 9, spans[2][0] + 30, spans[100][0] + 40,
            len(data) - 1]
    for cut in cuts:
        records, err = parse_until_error(data[:cut], chunk)
        assert records == [r for r in full if r.offset + length[r.offset] <= cut], cut
        start = max(o for o, _, _ in spans if o <= cut)
        assert err.offset == start, cut
        assert f"at byte {start}" in str(err)


def corrupt_at(data: bytes, pos: int, fmt: str, value: int) -> bytes:
    buf = bytearray(data)
    struct.pack_into(fmt, buf, pos, value)
    return bytes(buf)


@pytest.mark.corpus
def test_pcapng_damage_is_reported_after_the_good_records() -> None:
    data = corpus_file(PCAPNG).read_bytes()
    full = parse(data)
    spans = block_spans(data)
    off, blen, _ = spans[10]  # the 9th EPB (SHB and IDB come first)
    cases = {
        "trailing length": corrupt_at(data, off + blen - 4, "<I", blen + 4),
        "block length": corrupt_at(data, off + 4, "<I", blen + 2),
        "interface": corrupt_at(data, off + 8, "<I", 3),
        "caplen": corrupt_at(data, off + 20, "<I", blen),
    }
    for name, bad in cases.items():
        records, err = parse_until_error(bad, 4096)
        assert records == full[:8], name
        assert err.offset == off, name
    _, err = parse_until_error(cases["interface"], 1 << 20)
    assert "interface 3 is not defined" in str(err)
    _, err = parse_until_error(cases["trailing length"], 1 << 20)
    assert "trailing length" in str(err)


def test_spb_too_short_for_its_packet() -> None:
    shb = struct.pack("<IIIHHqI", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1, 28)
    idb = struct.pack("<IIHHII", 1, 20, 1, 0, 0, 20)  # Ethernet, no snaplen
    spb = struct.pack("<IIII", 3, 20, 100, 0) + struct.pack("<I", 20)  # 100 bytes claimed, 4 held
    records, err = parse_until_error(shb + idb + spb, 1 << 20)
    assert records == []
    assert err.offset == 48
    assert "do not fit the block" in str(err)


def test_pcapng_with_packet_before_any_interface() -> None:
    shb = struct.pack("<IIIHHqI", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1, 28)
    spb = struct.pack("<IIII", 3, 16, 0, 16)
    records, err = parse_until_error(shb + spb, 1 << 20)
    assert records == []
    assert err.offset == 28
    assert "interface 0 is not defined" in str(err)


@pytest.mark.parametrize("data", [b"GARBAGE!" * 10, b"\x00" * 64, b"%PDF-1.7\n" * 5])
def test_garbage_magic(data: bytes) -> None:
    _, err = parse_until_error(data, 3)
    assert str(err) == "not a pcap or pcapng file"
    assert err.offset == 0


def test_empty_and_tiny_files() -> None:
    _, err = parse_until_error(b"", 1)
    assert "empty file" in str(err) and err.offset == 0
    _, err = parse_until_error(b"\xd4\xc3", 1)
    assert "truncated file header" in str(err) and err.offset == 0


def test_record_over_the_cap() -> None:
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    rec = struct.pack("<IIII", 0, 0, 100, 100) + bytes(100)
    big = struct.pack("<IIII", 0, 0, 5000, 5000)
    parser = CaptureFileParser(max_record=1000)
    parser.receive(header + rec + big)
    assert len(parser.records()) == 1
    with pytest.raises(CaptureFileError, match="too large") as info:
        parser.records()
    assert info.value.offset == 24 + 116
    with pytest.raises(CaptureFileError):
        parser.close()  # the error stays


def test_receive_buffer_cap() -> None:
    parser = CaptureFileParser(max_buffer=100)
    parser.receive(bytes(60))
    with pytest.raises(CaptureFileError, match="buffered"):
        parser.receive(bytes(60))


PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
SHB = struct.pack("<IIIHHqI", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1, 28)


@settings(max_examples=300, deadline=None)
@given(prefix=st.sampled_from([b"", PCAP_HEADER, SHB]), body=st.binary(max_size=400),
       chunk=st.integers(1, 64))
def test_any_bytes_give_records_or_capture_file_error(prefix: bytes, body: bytes,
                                                      chunk: int) -> None:
    data = prefix + body
    parser = CaptureFileParser(max_record=300, max_block=512)
    try:
        for i in range(0, len(data), chunk):
            parser.receive(data[i:i + chunk])
            for rec in parser.records():
                assert len(rec.data) <= 300
        parser.records()
        parser.close()
    except CaptureFileError as err:
        assert 0 <= err.offset <= len(data)
