"""Read a pcap or pcapng file from disk through the sans-IO ``CaptureFileParser``.

The file is read in 1 MiB chunks, so memory stays flat however large the
capture is. A damaged file yields every good record first; then the
``CaptureFileError`` names the file and the byte offset of the damage. Errors
opening or reading the file (``OSError``) pass through unchanged: they are not
about the file's contents.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from mamori.parsers.capfile import CaptureFileError, CaptureFileParser, RecordTuple

__all__ = ["CHUNK_SIZE", "read_capture_batches", "read_capture_tuples"]

CHUNK_SIZE = 1 << 20


def read_capture_batches(
    path: str | os.PathLike[str],
) -> Iterator[tuple[int, list[RecordTuple]]]:
    """``(bytes read so far, records)`` per chunk: the replay hot path.

    Records are ``(ts, linktype, data, frame)`` tuples. A batch per chunk lets the
    caller loop over a plain list and report progress once per chunk, not per packet.
    """
    parser = CaptureFileParser()
    done = 0
    with open(path, "rb") as f:
        try:
            while chunk := f.read(CHUNK_SIZE):
                done += len(chunk)
                parser.receive(chunk)
                yield done, parser.records_tuples()
            yield done, parser.records_tuples()
            parser.close()
        except CaptureFileError as err:
            raise _named(err, path) from None


def read_capture_tuples(path: str | os.PathLike[str]) -> Iterator[RecordTuple]:
    """Every record as ``(ts, linktype, data, frame)``."""
    for _, batch in read_capture_batches(path):
        yield from batch


def _named(err: CaptureFileError, path: str | os.PathLike[str]) -> CaptureFileError:
    return CaptureFileError(f"{os.fspath(path)}: {err}", err.offset)
