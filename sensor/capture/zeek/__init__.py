"""Zeek (and CISA ICSNPP) logs as an input: the same events as the packet path.

``read_zeek_logs`` and ``replay_zeek_logs`` read a directory once;
``ZeekLogFollower`` follows a live Zeek's logs. See docs/zeek.md.
"""

from mamori.sensor.capture.zeek.mapping import UNKNOWN, LoggedPdu, ZeekEventMapper
from mamori.sensor.capture.zeek.reader import ZeekLineDecoder, ZeekLogProblem, ZeekRecord, read_log
from mamori.sensor.capture.zeek.source import (
    ZeekLogFollower,
    read_zeek_log,
    read_zeek_logs,
    replay_zeek_logs,
    zeek_log_files,
)

__all__ = [
    "UNKNOWN",
    "LoggedPdu",
    "ZeekEventMapper",
    "ZeekLineDecoder",
    "ZeekLogFollower",
    "ZeekLogProblem",
    "ZeekRecord",
    "read_log",
    "read_zeek_log",
    "read_zeek_logs",
    "replay_zeek_logs",
    "zeek_log_files",
]
