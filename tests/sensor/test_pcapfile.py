"""read_capture_batches: chunked file reading around the sans-IO parser."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mamori.parsers.capfile import CaptureFileError, CaptureFileParser
from mamori.sensor.capture.pcapfile import CHUNK_SIZE, read_capture_batches, read_capture_tuples
from tests.conftest import corpus_path

corpus_file = corpus_path


def read_batched(path: Path) -> Iterator[tuple[float, int, bytes, int]]:
    """The records of ``read_capture_batches``, one by one (its batches are per chunk)."""
    for _, batch in read_capture_batches(path):
        yield from batch


@pytest.mark.corpus
def test_big_file_spans_many_chunks() -> None:
    path = corpus_file("generated/modbus_big.pcap")
    assert path.stat().st_size > 4 * CHUNK_SIZE
    frames = [frame for *_, frame in read_capture_tuples(path)]
    assert frames == list(range(1, 120009))


@pytest.mark.corpus
@pytest.mark.parametrize("rel", ["nDPI/tests/cfgs/default/pcap/dnp3.pcap",
                                 "suricata-verify/tests/dnp3/dnp3-flood/input.pcap"])
def test_same_records_as_the_parser_fed_whole(rel: str) -> None:
    path = corpus_file(rel)
    parser = CaptureFileParser()
    parser.receive(path.read_bytes())
    expected = parser.records()
    parser.close()
    assert list(read_capture_tuples(str(path))) == [
        (r.ts, r.linktype, r.data, r.frame) for r in expected]
    assert list(read_batched(path)) == [
        (r.ts, r.linktype, r.data, r.frame) for r in expected]


@pytest.mark.corpus
@pytest.mark.parametrize("reader", [read_batched, read_capture_tuples])
def test_truncated_file_error_names_path_and_offset(
    tmp_path: Path, reader: Callable[[Path], Iterator[Any]],
) -> None:
    data = corpus_file("generated/modbus_big.pcap").read_bytes()
    cut = CHUNK_SIZE + 12345  # damage in the second chunk
    out = tmp_path / "cut.pcap"
    out.write_bytes(data[:cut])
    got = []
    with pytest.raises(CaptureFileError) as info:
        for item in reader(out):
            got.append(item)
    parser = CaptureFileParser()
    parser.receive(data[:cut])
    good = parser.records()
    assert len(got) == len(good)
    assert info.value.offset == good[-1].offset + 16 + len(good[-1].data)
    assert str(info.value).startswith(f"{out}: truncated packet record at byte "
                                      f"{info.value.offset}: header says ")


def test_garbage_file(tmp_path: Path) -> None:
    out = tmp_path / "notes.txt"
    out.write_bytes(b"these are not packets\n")
    with pytest.raises(CaptureFileError) as info:
        list(read_capture_tuples(out))
    assert str(info.value) == f"{out}: not a pcap or pcapng file"
    assert info.value.offset == 0


def test_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list(read_capture_tuples(tmp_path / "absent.pcap"))
