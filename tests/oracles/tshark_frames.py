"""tshark's single wrong frames in four corpus captures, found by hand, with the bytes.

These tables can match no file but the capture they were written for, so they are the
differential tests' knowledge, not ``mamori verify``'s: the tool applies only the general
rules of mamori.sensor.verify.known, and the tests hand these notes to it
(``frame_notes``) and apply them in tests/sensor/test_modbus_vs_tshark.py and
test_dnp3_vs_tshark.py. Each table is keyed by (the capture's SHA-256, frame number):
a capture is known by its bytes, wherever it lies. Each entry says what tshark shows,
what the bytes are, and tshark's expert message; the kinds of entry are those of
``FrameNotes``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Final, TypeVar

from mamori.sensor.verify.known import Extra, FrameNotes, SeqSkipped


def capture_digest(path: Path) -> str:
    """The SHA-256 of a capture file, the key of the frame tables below."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# Captures with entries (one corpus path each; byte-identical copies share the digest).
MB2: Final = "afe60d2b5019a81c69ab8f4b7b39aeb7573efbf1fef5f180bf78e5b347c55d88"
"""ICS-Security-Tools/pcaps/ModbusTCP/mb2.pcap"""
BIG: Final = "36c374a8d3cf66daf40c9a6ccfa586a480400c0c51476a1c83b7f4fc7382ca57"
"""zeek/Traces/modbus/modbusBig.pcap"""
FUZZ72: Final = "9c10fe386ebd89f3bd96e2eb5b8c20f16d6c1a3c014752c3bcb42fbed9ae3ebb"
"""zeek/Traces/modbus/fuzz-72.pcap"""
DNP3_EXAMPLE: Final = "d9b22ee7b5ece4a78d8f9995aff20d55bfb315752ce136f97c77eb5ce73511bf"
"""icsnpp-dnp3/testing/traces/dnp3_example.pcap"""

T = TypeVar("T")
FrameKey = tuple[str, int]  # (capture digest, frame number)


def listed(table: Mapping[FrameKey, T], digest: str) -> dict[int, T]:
    """The entries of one capture, by frame."""
    return {frame: value for (capture, frame), value in table.items() if capture == digest}


# (capture, frame) -> why tshark's dissection of the whole frame is wrong: dropped.
TSHARK_ERRORS: Final[dict[FrameKey, str]] = {
    (DNP3_EXAMPLE, 311): (
        "dnp3_example.pcap frame 311: tshark shows a CONFIRM built from 49 zero bytes "
        "('Reassembled DNP 3.0 Application Layer message (49 bytes): 00 00 ...'), a "
        "reassembly-table mix-up. The frame's user data is 05 64 1a 44 64 00 05 00 | c0 "
        "(transport FIR FIN seq 0) | c8 81 00 00 0c 01 17 01 02 ...: a RESPONSE (AC 0xc8, "
        "FC 0x81, IIN 0000) with g12v1 qualifier 0x17 count 1, which is what Mamori reports."
    ),
}

# Missed by both, so not listed: mb2.pcap frame 3674 (FIN retransmission of server bytes
# 371..670) is the only capture of 371..384 = 57 e9 00 00 00 07 ff 04 04 00 00 00 00, the
# response to 22505. tshark skips it as a retransmission; Mamori already gave 371..384 up
# as a GAP at the server's FIN (frame 3032), because the client's direction had ended
# (parsers/tcp.py _settle), 0.61 s before the retransmission came.
TSHARK_SEQ_SKIPPED: Final[dict[FrameKey, SeqSkipped]] = {
    (MB2, 1131): SeqSkipped(1, "!GAP", (
        "mb2.pcap frame 1131: Seq 139 Len 60 (relative) from 141.81.0.10:60689; frame 1014 "
        "carried only 139..151 (57 e9 00 00 00 06 ff 04 01 8f 00 02: tid 22505 fc 4). "
        "tshark flags the whole segment '(suspected) retransmission' and dissects none of "
        "it, so the 48 new bytes 151..199 are lost to it: 57 ea 00 00 00 06 ff 04 00 01 00 "
        "63 (tid 22506 fc 4 ref 1 count 99), 57 eb .. 00 29 00 02 (22507), 57 ec .. 08 ab "
        "00 16 (22508), 57 ed .. 08 d2 00 02 (22509). The server answers all four in "
        "frame 3008, which tshark does dissect."
    )),
    (MB2, 13176): SeqSkipped(1, "!GAP", (
        "mb2.pcap frame 13176: Seq 5232 Len 269 from 141.81.0.24:502; frame 13142 carried "
        "5232..5471 (the 239-byte response 9823). tshark flags '(suspected) retransmission' "
        "and skips the 30 new bytes 5471..5501: 26 60 00 00 00 0b ff 04 08 .. (tid 9824 "
        "fc 4) and 26 61 00 00 00 07 ff 02 04 7c a3 c8 01 (tid 9825 fc 2). The client's "
        "next frame 13177 ACKs 5501, the end of those bytes."
    )),
    (BIG, 3150): SeqSkipped(0, "!GAP", (
        "modbusBig.pcap frame 3150: SPAN reordering: the client's ACK 1490727 (frame 3149) "
        "was captured 0.714 ms before the 10 bytes 1490717..1490727 it acknowledges (frame "
        "3150: c4 ce 00 00 00 04 ff 01 01 01 = response tid 50382 fc 1, 1 byte, coil 0 "
        "on, to request frame 3147). tshark flags 3149 'ACKed segment that wasn't "
        "captured' and 3150 'Spurious Retransmission' and never dissects those bytes; "
        "Mamori waits ack_grace (0.2 s) before declaring an acknowledged hole lost and "
        "decodes them."
    )),
    (FUZZ72, 2): SeqSkipped(0, "MIDSTREAM_PICKUP", (
        "fuzz-72.pcap frame 2: server segment 00 00 00 00 00 03 01 9c 01 (exception 01 to "
        "fc 28) whose seq 0x7075f6c0 differs from the SYN's 0x8a75f6c0 (frame 1) only in "
        "the top byte: the client's ACK in frame 3 is 0x8a75f6c9, exactly those 9 bytes, "
        "so the client got them. tshark calls it 'out-of-order' (3858759680 relative) and "
        "skips it. Mamori drops frame 1 (TRUNCATED_IP, see DROPPED) and picks the stream "
        "up here."
    )),
    (FUZZ72, 19): SeqSkipped(0, "RESYNC", (
        "fuzz-72.pcap frame 19: 00 00 00 00 00 03 01 af 01: exception 01 to fc 47 (the "
        "client's fc 47 is frame 18), Seq 177. tshark flags it a retransmission because "
        "frame 12's fuzzed Seq 131153 moved its idea of the stream's end; Mamori ignored "
        "that jump."
    )),
    (FUZZ72, 21): SeqSkipped(0, "RESYNC", (
        "fuzz-72.pcap frame 21: 00 00 00 00 00 03 01 b3 01: exception 01 to fc 51, Seq 213; "
        "tshark: 'Retransmission' (same frame 12 cause)."
    )),
    (FUZZ72, 25): SeqSkipped(0, "RESYNC", (
        "fuzz-72.pcap frame 25: 00 00 00 00 00 03 01 b6 01: exception 01 to fc 54 (request "
        "frame 24), Seq 240; tshark: 'Spurious Retransmission'. (Frames 26, 27 and 32, "
        "exceptions to fc 58, 59 and 66, are missed by both: Mamori took frame 12's Seq "
        "131153 after its hole timeout, so they lie behind it.)"
    )),
    (FUZZ72, 30): SeqSkipped(0, "SEQ_JUMP", (
        "fuzz-72.pcap frame 30: 00 00 00 00 00 06 01 40 00 00 00 00: request fc 64, "
        "between fc 63 (frame 29, Seq 409..421) and fc 65 (frame 31, Seq 433). Its Seq "
        "2147484069 is 421 with bit 31 flipped by the fuzzer; tshark: 'Spurious "
        "Retransmission', skipped."
    )),
}


#: A PDU tshark does not dissect even with sequence analysis off; the row is built from
#: the frame's bytes.
MAMORI_EXTRA: Final[dict[FrameKey, Extra]] = {
    (FUZZ72, 7): Extra(0, 1, 34, "RESYNC", (
        "fuzz-72.pcap frame 7: frame 6 is 00 00 00 00 00 04 01 21 00 00 | 00 00: the "
        "fuzzed length 4 makes a 10-byte ADU (fc 33) and leaves 2 bytes. tshark joins them "
        "with frame 7 ('2 Reassembled TCP Segments (14 bytes): #6(2), #7(12)') into 00 00 "
        "00 00 00 00 | 00 06 01 22 .., a header with length 0, and shows 'Data (14 "
        "bytes)', no Modbus. Mamori reports INVALID_LENGTH, resyncs and finds frame 7's own "
        "ADU 00 00 00 00 00 06 01 22 00 00 00 00: request fc 34, the one between fc 33 "
        "(frame 6) and fc 35 (frame 9)."
    )),
    (FUZZ72, 23): Extra(243, 1, 53, "GAP", (
        "fuzz-72.pcap frame 23: 00 f3 00 00 00 06 01 35 00 00 00 00 (tid 243, fc 53, "
        "between fc 52 in frame 22 and fc 54 in frame 24) with a fuzzed Seq 124 that falls "
        "into the client stream's hole 121..169 (frames 14 and 16). tshark: 'Spurious "
        "Retransmission', and with sequence analysis off 'TCP segment of a reassembled "
        "PDU'. Mamori fills the hole with it; the server's ACKs then release the rest of "
        "the hole as GAPs (see RETIMED)."
    )),
}

#: (capture, frame) -> (the anomaly Mamori reports instead, why): a tshark row Mamori
#: does not report, by design.
DROPPED: Final[dict[FrameKey, tuple[str, str]]] = {
    (FUZZ72, 20): ("TRUNCATED_IP", (
        "fuzz-72.pcap frame 20: IPv4 Total Length 0x8934 = 35124 (header 45 00 89 34 ..., "
        "checksum 0xb964 correct) in a 66-byte frame captured whole: 52 IP bytes. tshark "
        "says 'IPv4 total length exceeds packet length (52 bytes)' (Error) and still "
        "dissects request fc 50. A host's IP layer discards such a datagram (RFC 791 Total "
        "Length; Linux ip_rcv_core drops len > skb->len), so fc 50 never reached the "
        "server; Mamori drops it the same way and reports MALFORMED_FRAME TRUNCATED_IP."
    )),
}

#: (capture, frame) -> (the frame whose time Mamori gives the PDU, right after its own
#: PDUs; why). The evidence Mamori must show there is a GAP.
RETIMED: Final[dict[FrameKey, tuple[int, str]]] = {
    (FUZZ72, frame): (23, (
        "fuzz-72.pcap frames 16, 17, 18, 22: buffered behind the hole 121..169 of the "
        "client stream, these whole ADUs are delivered when frame 23's fuzzed segment "
        "(Seq 124) and the server's ACKs close it (GAPs of 3, 33, 24 and 48 bytes "
        "'acknowledged, never captured'). Mamori delivers a direction in sequence order "
        "with non-decreasing time (parsers/tcp.py module doc), so they carry frame 23's "
        "time; tshark dissects each at arrival."
    ))
    for frame in (16, 17, 18, 22)
}


def frame_notes(path: Path) -> FrameNotes:
    """The notes of the capture at ``path`` (none for a capture not listed here)."""
    digest = capture_digest(path)
    return FrameNotes(errors=listed(TSHARK_ERRORS, digest),
                      seq_skipped=listed(TSHARK_SEQ_SKIPPED, digest),
                      extra=listed(MAMORI_EXTRA, digest), dropped=listed(DROPPED, digest),
                      retimed=listed(RETIMED, digest))
