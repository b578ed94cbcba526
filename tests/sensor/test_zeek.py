"""Zeek logs as a source: the reader (TSV, JSON, bad lines), the mapping, the follower.

Hand-written logs use Zeek's exact header layout; each row's comment says what the
wire held. The corpus acceptance test is test_zeek_corpus.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TypeVar

import pytest

from mamori.parsers.dnp3.events import (
    ControlRelayOutput,
    DNP3AnomalyEvent,
    DNP3Request,
    DNP3Response,
    DNP3Unsolicited,
)
from mamori.parsers.modbus.events import ModbusRequest, ModbusResponse
from mamori.parsers.modbus.pdu import Diagnostics, ReadBitsResponse, ReadDeviceIdResponse
from mamori.parsers.pipeline import PipelineConfig
from mamori.parsers.stream import FlowId, Transport
from mamori.sensor.alerting.eventlog import event_to_dict
from mamori.sensor.capture.replay import replay_files
from mamori.sensor.capture.zeek import (
    UNKNOWN,
    LoggedPdu,
    ZeekLineDecoder,
    ZeekLogFollower,
    ZeekLogProblem,
    ZeekRecord,
    read_zeek_log,
    read_zeek_logs,
    replay_zeek_logs,
)
from tests.conftest import corpus_path

T = TypeVar("T")


def one(cls: type[T], event: object) -> T:
    """``event``, which must be a ``cls`` (the readers return any event)."""
    assert isinstance(event, cls), event
    return event


def cols(text: str) -> list[str]:
    """Column names or types, space-separated as in the #fields line."""
    return text.split()


HEADER = """#separator \\x09
#set_separator\t,
#empty_field\t(empty)
#unset_field\t-
#path\t{path}
#open\t2024-12-10-09-00-07
#fields\t{fields}
#types\t{types}
"""

MODBUS_FIELDS = cols(
    "ts uid id.orig_h id.orig_p id.resp_h id.resp_p tid unit func pdu_type exception"
)
MODBUS_TYPES = cols("time string addr port addr port count count string string string")
DNP3_FIELDS = cols("ts uid id.orig_h id.orig_p id.resp_h id.resp_p fc_request fc_reply iin")
DNP3_TYPES = ["time", "string", "addr", "port", "addr", "port", "string", "string", "count"]
DETAILED_FIELDS = cols(
    "ts uid id.orig_h id.orig_p id.resp_h id.resp_p tid unit func address quantity request_values "
    "response_values modbus_detailed_link_id matched request_subfunction_code "
    "response_subfunction_code request_data response_data exception_code mei_type"
)
DETAILED_TYPES = cols(
    "time string addr port addr port count count string count count vector[count] vector[count] "
    "string bool string string string string string string"
)


def write_log(path: Path, log: str, fields: list[str], types: list[str],
              rows: list[list[str]]) -> Path:
    text = HEADER.format(path=log, fields="\t".join(fields), types="\t".join(types))
    text += "".join("\t".join(row) + "\n" for row in rows)
    path.write_text(text + "#close\t2024-12-10-09-00-08\n")
    return path


CONN = ["CabC1", "10.0.0.9", "3082", "10.0.0.3", "502"]
DCONN = ["CdnP3", "10.0.0.8", "2789", "10.0.0.3", "20000"]


# ---------------------------------------------------------------- reader


def test_reader_types_unset_empty_and_escapes() -> None:
    decoder = ZeekLineDecoder("x.log")
    lines = HEADER.format(path="x", fields="ts\tn\tv\ts\tb",
                          types="time\tcount\tvector[count]\tstring\tbool").splitlines()
    for line in lines:
        assert decoder.feed_line(line) is None
    record = decoder.feed_line("1.5\t-\t(empty)\ta\\x09b\tT")
    assert isinstance(record, ZeekRecord)
    assert record.path == "x"
    assert record.fields == {"ts": 1.5, "n": None, "v": (), "s": "a\tb", "b": True}
    record = decoder.feed_line("XXXXXXXXXX.XXXXXX\t7\t1,2\t(empty)\tF")
    assert isinstance(record, ZeekRecord)
    assert record.fields == {"ts": None, "n": 7, "v": (1, 2), "s": "", "b": False}


def test_reader_bad_lines_are_problems_with_file_and_line() -> None:
    decoder = ZeekLineDecoder("modbus.log")
    assert decoder.feed_line("1.0\tfoo") == ZeekLogProblem(
        "modbus.log:1", "data line before any #fields header")
    for line in HEADER.format(path="modbus", fields="ts\tn", types="time\tcount").splitlines():
        decoder.feed_line(line)
    problem = decoder.feed_line("1.0\tnot-a-number")
    assert isinstance(problem, ZeekLogProblem)
    assert str(problem) == "modbus.log:10: field n: 'not-a-number' is not a count"
    assert isinstance(decoder.feed_line("1.0"), ZeekLogProblem)  # short row
    assert isinstance(decoder.feed_line("{not json"), ZeekLogProblem)


# ---------------------------------------------------------------- Modbus


def test_modbus_log_rows_become_requests_and_responses(tmp_path: Path) -> None:
    log = write_log(tmp_path / "modbus.log", "modbus", MODBUS_FIELDS, MODBUS_TYPES, [
        ["100.0", *CONN, "1", "10", "DIAGNOSTICS", "REQ", "-"],  # FC 8 request
        ["100.1", *CONN, "1", "10", "DIAGNOSTICS", "RESP", "-"],
        ["100.2", *CONN, "2", "10", "READ_COILS_EXCEPTION", "RESP", "ILLEGAL_DATA_ADDRESS"],
        ["100.3", *CONN, "0", "1", "unknown-156", "RESP", "ILLEGAL_FUNCTION"],  # 0x9C
        ["100.4", *CONN, "3", "10", "FROBNICATE", "REQ", "-"],  # not a Zeek name: skipped
    ])
    events = read_zeek_log(log)
    flow = FlowId(Transport.TCP, "10.0.0.9", 3082, "10.0.0.3", 502)
    assert events[0] == ModbusRequest(100.0, flow, 1, 10, 8, None, None, None,
                                      LoggedPdu("modbus.log:9"))
    assert isinstance(events[1], ModbusResponse) and events[1].exception is None
    third, fourth = one(ModbusResponse, events[2]), one(ModbusResponse, events[3])
    assert (third.fc, third.exception) == (1, 2)
    assert (fourth.fc, fourth.exception) == (28, 1)
    assert len(events) == 4


def test_bro_modbus_log_without_pdu_type_is_responses(tmp_path: Path) -> None:
    """Bro 2.x wrote modbus.log on replies only, without tid, unit or pdu_type."""
    log = write_log(tmp_path / "modbus.log", "modbus",
                    cols("ts uid id.orig_h id.orig_p id.resp_h id.resp_p func exception"),
                    ["time", "string", "addr", "port", "addr", "port", "string", "string"],
                    [["5.0", *CONN, "READ_HOLDING_REGISTERS", "-"]])
    (event,) = read_zeek_log(log)
    assert isinstance(event, ModbusResponse)
    assert (event.tid, event.unit, event.fc) == (UNKNOWN, UNKNOWN, 3)


def test_modbus_detailed_gives_sub_function_range_and_values(tmp_path: Path) -> None:
    log = write_log(tmp_path / "modbus_detailed.log", "modbus_detailed", DETAILED_FIELDS,
                    DETAILED_TYPES, [
        # FC 8 sub 4 (force listen only mode), data 00 00; the device does not answer
        ["7.0", *CONN, "12", "2", "DIAGNOSTICS", "-", "-", "-", "-", "-", "F",
         "Force Listen Only Mode", "-", "\\x00\\x00", "-", "-", "-"],
        ["8.0", *CONN, "13", "2", "READ_HOLDING_REGISTERS", "600", "10", "-", "-", "-", "T",
         "-", "-", "-", "-", "ILLEGAL_DATA_ADDRESS", "-"],
        ["9.0", *CONN, "14", "2", "READ_COILS", "1", "8", "-", "1,0,0,1,0,1,1,1", "-", "T",
         "-", "-", "-", "-", "-", "-"],
    ])
    events = read_zeek_log(log)
    request = events[0]
    assert isinstance(request, ModbusRequest)
    assert (request.tid, request.unit, request.fc, request.sub) == (12, 2, 8, 4)
    assert request.pdu == Diagnostics(4, b"\x00\x00")
    assert len(events) == 5  # unanswered FC 8, then two request/response pairs
    answer, asked = one(ModbusResponse, events[2]), one(ModbusRequest, events[1])
    assert (answer.fc, answer.exception, asked.address) == (3, 2, 600)
    assert one(ReadBitsResponse, one(ModbusResponse, events[4]).pdu).values == (
        1, 0, 0, 1, 0, 1, 1, 1)


def test_modbus_detailed_supersedes_modbus_log_in_a_directory(tmp_path: Path) -> None:
    write_log(tmp_path / "modbus.log", "modbus", MODBUS_FIELDS, MODBUS_TYPES,
              [["9.0", *CONN, "14", "2", "READ_COILS", "REQ", "-"]])
    write_log(tmp_path / "modbus_detailed.log", "modbus_detailed", DETAILED_FIELDS,
              DETAILED_TYPES, [["9.0", *CONN, "14", "2", "READ_COILS", "1", "8", "-",
                                "1,0,0,1,0,1,1,1", "-", "T", "-", "-", "-", "-", "-", "-"]])
    events = read_zeek_logs(tmp_path)
    assert [type(e) for e in events] == [ModbusRequest, ModbusResponse]


def test_read_device_identification_becomes_the_fc43_pdu(tmp_path: Path) -> None:
    fields = cols(
        "ts uid id.orig_h id.orig_p id.resp_h id.resp_p is_orig source_h source_p destination_h "
        "destination_p modbus_detailed_link_id tid unit func request_response mei_type "
        "conformity_level_code conformity_level device_id_code object_id_code object_id "
        "object_value"
    )
    types = cols(
        "time string addr port addr port bool addr port addr port string count count string "
        "string string string string count string string string"
    )
    ends = ["10.0.0.9", "3082", "10.0.0.3", "502"]
    back = ["10.0.0.3", "502", "10.0.0.9", "3082"]
    write_log(tmp_path / "modbus_read_device_identification.log",
              "modbus_read_device_identification", fields, types, [
        ["9.0", *CONN, "T", *ends, "L1", "23", "1", "ENCAP_INTERFACE_TRANSPORT", "REQUEST",
         "READ-DEVICE-IDENTIFICATION", "-", "-", "1", "0", "VendorName", "-"],
        ["9.1", *CONN, "F", *back, "L1", "23", "1", "ENCAP_INTERFACE_TRANSPORT", "RESPONSE",
         "READ-DEVICE-IDENTIFICATION", "0x01", "Basic Identification (Stream)", "1", "0",
         "VendorName", "Schneider"],
        ["9.1", *CONN, "F", *back, "L1", "23", "1", "ENCAP_INTERFACE_TRANSPORT", "RESPONSE",
         "READ-DEVICE-IDENTIFICATION", "0x01", "Basic Identification (Stream)", "1", "1",
         "ProductCode", "BMX P34"],
    ])
    write_log(tmp_path / "modbus.log", "modbus", MODBUS_FIELDS, MODBUS_TYPES, [
        ["9.0", *CONN, "23", "1", "ENCAP_INTERFACE_TRANSPORT", "REQ", "-"],
        ["9.1", *CONN, "23", "1", "ENCAP_INTERFACE_TRANSPORT", "RESP", "-"],
    ])
    logged_request, logged_response = read_zeek_logs(tmp_path)
    request = one(ModbusRequest, logged_request)
    response = one(ModbusResponse, logged_response)
    assert (request.fc, request.sub) == (43, 14)
    assert isinstance(response.pdu, ReadDeviceIdResponse)
    assert {o.name: o.value for o in response.pdu.objects} == {
        "VendorName": "Schneider", "ProductCode": "BMX P34"}
    assert response.pdu.conformity_level == 1


# ---------------------------------------------------------------- DNP3


def test_dnp3_log_rows(tmp_path: Path) -> None:
    log = write_log(tmp_path / "dnp3.log", "dnp3", DNP3_FIELDS, DNP3_TYPES, [
        ["20.5", *DCONN, "READ", "RESPONSE", "36866"],  # IIN 0x9002
        ["21.0", *DCONN, "COLD_RESTART", "-", "-"],  # never answered
        ["22.0", *DCONN, "-", "UNSOLICITED_RESPONSE", "0"],
        ["23.0", *DCONN, "unknown-112", "-", "-"],  # FC 0x70 is undefined
    ])
    events = read_zeek_log(log)
    assert [type(e).__name__ for e in events] == [
        "DNP3Request", "DNP3Response", "DNP3Request", "DNP3Unsolicited", "DNP3AnomalyEvent"]
    read, restart = one(DNP3Request, events[0]), one(DNP3Request, events[2])
    response, anomaly = one(DNP3Response, events[1]), one(DNP3AnomalyEvent, events[4])
    unsolicited = events[3]
    assert (read.fc, read.ts, read.link_src, read.objects) == (1, 20.5, UNKNOWN, ())
    assert (response.fc, response.iin) == (129, 0x9002)
    assert (restart.fc, restart.ts) == (13, 21.0)
    assert isinstance(unsolicited, DNP3Unsolicited) and unsolicited.uns
    assert (anomaly.kind.name, anomaly.fc) == ("UNKNOWN_FUNCTION_CODE", 112)


def test_icsnpp_objects_and_controls_join_their_fragments() -> None:
    folder = corpus_path("icsnpp-dnp3/testing/baseline/analyzer.basic")
    events = read_zeek_logs(folder)
    operates = [e for e in events if isinstance(e, DNP3Request) and e.fc == 4]
    assert operates and all(e.objects[0].group == 12 for e in operates)
    crob = operates[0].objects[0].details[0]
    assert isinstance(crob, ControlRelayOutput)
    assert (crob.op_type, crob.tcc, crob.on_time_ms, crob.count) == ("PULSE_OFF", "CLOSE",
                                                                     500, 1)
    responses = [e for e in events if isinstance(e, DNP3Response) and e.objects
                 and e.objects[0].group == 1]
    assert [(o.group, o.variation, o.start, o.stop) for o in responses[0].objects] == [
        (1, 2, 0, 119), (10, 2, 0, 33), (30, 2, 0, 19), (40, 2, 0, 19)]


def test_udp_from_conn_log(tmp_path: Path) -> None:
    write_log(tmp_path / "conn.log", "conn", ["ts", "uid", "id.orig_h", "proto"],
              ["time", "string", "addr", "enum"], [["1.0", "CdnP3", "10.0.0.8", "udp"]])
    write_log(tmp_path / "dnp3.log", "dnp3", DNP3_FIELDS, DNP3_TYPES,
              [["1.0", *DCONN, "READ", "-", "-"]])
    (event,) = read_zeek_logs(tmp_path)
    assert one(DNP3Request, event).flow.transport is Transport.UDP


# ---------------------------------------------------------------- JSON


def test_json_logs_give_the_same_events_as_tsv(tmp_path: Path) -> None:
    tsv = tmp_path / "tsv"
    tsv.mkdir()
    rows = [["1.25", *CONN, "5", "1", "DIAGNOSTICS", "REQ", "-"],
            ["1.5", *CONN, "5", "1", "DIAGNOSTICS_EXCEPTION", "RESP", "ILLEGAL_FUNCTION"]]
    write_log(tsv / "modbus.log", "modbus", MODBUS_FIELDS, MODBUS_TYPES, rows)
    js = tmp_path / "json"
    js.mkdir()
    with (js / "modbus.log").open("w") as out:
        for row in rows:
            obj: dict[str, Any] = {}
            for name, kind, value in zip(MODBUS_FIELDS, MODBUS_TYPES, row, strict=True):
                if value == "-":
                    continue  # Zeek's JSON writer leaves unset fields out
                obj[name] = float(value) if kind == "time" else (
                    int(value) if kind in ("port", "count") else value)
            if obj["ts"] == 1.5:
                obj["ts"] = "1970-01-01T00:00:01.500000Z"  # LogAscii::json_timestamps ISO
            out.write(json.dumps(obj) + "\n")

    def strip(event: Any) -> dict[str, Any]:
        fields = event_to_dict(event)
        fields.pop("where", None)
        return fields

    assert [strip(e) for e in read_zeek_logs(js)] == [strip(e) for e in read_zeek_logs(tsv)]


# ---------------------------------------------------------------- rules


def _rule_fc8_sub4(event: Any) -> bool:
    """Force listen only mode: the detection rule's condition, on the event's fields."""
    return isinstance(event, ModbusRequest) and event.fc == 8 and event.sub == 4


def _rule_cold_restart(event: Any) -> bool:
    return isinstance(event, DNP3Request) and event.fc == 13


def test_rules_fire_on_log_input_as_on_packets(tmp_path: Path) -> None:
    """A log with FC 8 sub 4 and a DNP3 cold restart: the same rule conditions hold on
    the log's events as on the packet path's (cold_restart_and_response.pcap)."""
    write_log(tmp_path / "modbus_detailed.log", "modbus_detailed", DETAILED_FIELDS,
              DETAILED_TYPES, [["7.0", *CONN, "12", "2", "DIAGNOSTICS", "-", "-", "-", "-", "-",
                                "T", "Force Listen Only Mode", "-", "\\x00\\x00", "-", "-",
                                "-"]])
    write_log(tmp_path / "dnp3.log", "dnp3", DNP3_FIELDS, DNP3_TYPES,
              [["8.0", *DCONN, "COLD_RESTART", "RESPONSE", "0"]])
    events = read_zeek_logs(tmp_path)
    assert [e for e in events if _rule_fc8_sub4(e)]
    assert [e for e in events if _rule_cold_restart(e)]
    captured: list[Any] = []
    replay_files([corpus_path("ICS-Security-Tools/pcaps/dnp3/cold_restart_and_response.pcap")],
                 PipelineConfig(), extra_sinks=[captured.extend])
    assert [e for e in captured if _rule_cold_restart(e)]


# ---------------------------------------------------------------- replay


def test_replay_zeek_logs_summary_and_errors(tmp_path: Path) -> None:
    log = write_log(tmp_path / "modbus.log", "modbus", MODBUS_FIELDS, MODBUS_TYPES,
                    [["1.0", *CONN, "5", "1", "READ_COILS", "REQ", "-"]])
    with log.open("a") as out:
        out.write("garbage\n")
    seen: list[Any] = []
    summary = replay_zeek_logs(tmp_path, extra_sinks=[seen.extend])
    assert (summary.files, summary.packets, summary.flows) == (1, 1, 1)
    assert summary.messages == {"modbus request fc=1": 1}
    assert summary.errors == ["modbus.log:11: 1 columns, the header has 11"]
    assert len(seen) == 1


# ---------------------------------------------------------------- follower


def test_follower_reads_appended_lines_partial_lines_and_rotation(tmp_path: Path) -> None:
    log = write_log(tmp_path / "dnp3.log", "dnp3", DNP3_FIELDS, DNP3_TYPES,
                    [["1.0", *DCONN, "READ", "-", "-"]])
    follower = ZeekLogFollower(tmp_path)  # like tail -f: what is there is skipped
    assert follower.poll() == []
    with log.open("a") as out:
        out.write("\t".join(["2.0", *DCONN, "COLD_RESTART", "-", "-"]) + "\n")
        out.write("\t".join(["3.0", *DCONN, "WARM_RES"]))  # half a line, still written
    (restart,) = follower.poll()
    assert one(DNP3Request, restart).fc == 13
    with log.open("a") as out:
        out.write("\t".join(["", "-", "-"]).replace("\t", "TART\t", 1) + "\n")
    (warm,) = follower.poll()
    assert (one(DNP3Request, warm).fc, warm.ts) == (14, 3.0)
    # Zeek rotates: the old file is renamed after a last row, a new one starts
    with log.open("a") as out:
        out.write("\t".join(["4.0", *DCONN, "STOP_APPL", "-", "-"]) + "\n")
    os.rename(log, tmp_path / "dnp3.2024-12-10-10-00-00.log")
    write_log(tmp_path / "dnp3.log", "dnp3", DNP3_FIELDS, DNP3_TYPES,
              [["5.0", *DCONN, "START_APPL", "-", "-"]])
    assert [one(DNP3Request, e).fc for e in follower.poll()] == [18, 17]
    # copytruncate: the file shrinks in place and starts again with a header
    write_log(tmp_path / "dnp3.log", "dnp3", DNP3_FIELDS, DNP3_TYPES,
              [["6.0", *DCONN, "READ", "-", "-"]])
    assert [one(DNP3Request, e).fc for e in follower.poll()] == [1]
    assert follower.problems == []
    follower.close()


def test_follower_from_start_and_bad_lines(tmp_path: Path) -> None:
    log = write_log(tmp_path / "modbus.log", "modbus", MODBUS_FIELDS, MODBUS_TYPES,
                    [["1.0", *CONN, "5", "1", "READ_COILS", "REQ", "-"]])
    with log.open("a") as out:
        out.write("1.0\tbroken\n")
    follower = ZeekLogFollower(tmp_path, from_start=True)
    assert len(follower.poll()) == 1
    assert [p.where for p in follower.problems] == ["modbus.log:11"]


@pytest.mark.parametrize("text", ["", "#fields\tts\n", "\x00\xff\n" * 3, "{}\n[1]\n"])
def test_reader_never_raises_on_junk(tmp_path: Path, text: str) -> None:
    path = tmp_path / "dnp3.log"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    read_zeek_log(path)
    ZeekLogFollower(tmp_path, from_start=True).poll()
