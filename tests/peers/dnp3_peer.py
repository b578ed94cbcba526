"""A real DNP3 master and outstation (yadnp3, the opendnp3 Python bindings) on loopback TCP.

:class:`Stacks` runs both ends in this process: the outstation is a TCP server on
``127.0.0.1:PORT``, the master a TCP client, each a genuine opendnp3 stack doing
its own startup sequence (disable unsolicited, integrity poll, enable unsolicited).
Tests drive the master (polls, controls, arbitrary function codes) and the
outstation (events, application IIN bits), and capture the wire with
:func:`tests.peers.modbus_peer.capture`. :func:`raw_link_frame` builds a link-layer
frame for the few things no stack sends on request (a burst of link resets).

Every wait is bounded; a stack that does not answer fails the test, it never hangs it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from mamori.parsers.dnp3.crc import crc_bytes  # the sensor's CRC, tested against the spec vectors
from tests.peers.capture import CaptureStats, capture, capture_complete
from tests.peers.modbus_peer import HOST
from tests.ports import free_port

__all__ = ["HOST", "CaptureStats", "ScriptedOutstation", "Stacks", "StartupStalled", "capture",
           "capture_complete", "free_port", "raw_link_frame", "send_raw", "wait_for"]

MASTER_ADDR = 1
OUTSTATION_ADDR = 1024
TIMEOUT = 10.0  # seconds for any single wait
STACK_TIMEOUT = 8  # seconds: the stacks' response and confirm timeouts (see Stacks)


def _opendnp3() -> Any:
    import opendnp3

    return opendnp3




def wait_for(predicate: Callable[[], bool], timeout: float = TIMEOUT, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what or predicate}")


class StartupStalled(TimeoutError):
    """The master's start-up sequence did not finish: a race inside opendnp3, not the sensor.

    Seen on a loaded host (1 or 2 of 40 restarts with four busy loops on two cores,
    the full suite once in CI), when a new master connects to an outstation that
    already served one: the master's first request (DISABLE_UNSOLICITED) and the
    outstation's null unsolicited response (CON set) cross on the wire. The
    outstation answers the request and the master confirms the unsolicited response,
    but the outstation never takes that confirmation: it holds the next request
    (the integrity poll READ) until its own unsolicited confirm timeout, 8 s later,
    the moment the master's response timeout fails the poll and the master retries.
    Traffic made that way is not the traffic a test describes, so it is made again
    (:func:`tests.conftest.captured_on_lo`); it is never waited out.
    """


@dataclass
class Observed:
    """What the two stacks reported, guarded by one lock (callbacks come from C++ threads)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    tasks: list[tuple[str, str]] = field(default_factory=list)  # (task type, result)
    fragments: list[bool] = field(default_factory=list)  # per response: unsolicited?
    crobs: list[tuple[int, int]] = field(default_factory=list)  # (index, op type)
    class_assignments: list[tuple[str, str, int, int]] = field(default_factory=list)
    iin: list[int] = field(default_factory=list)  # IIN1 << 8 | IIN2 as the master saw it

    def count_tasks(self, kind: str | None = None) -> int:
        with self.lock:
            return sum(1 for t, _ in self.tasks if kind is None or t == kind)


def _classes(o: Any, seen: Observed, iin: dict[str, bool]) -> tuple[Any, Any, Any, Any]:
    """The four callback objects, built lazily so importing this module needs no yadnp3."""

    class SOE(o.ISOEHandler):  # type: ignore[misc]
        def BeginFragment(self, info: Any) -> None:
            with seen.lock:
                seen.fragments.append(bool(info.unsolicited))

        def EndFragment(self, info: Any) -> None:
            pass

        def Process(self, info: Any, values: Any) -> None:
            pass

    class MasterApp(o.IMasterApplication):  # type: ignore[misc]
        def OnReceiveIIN(self, field_: Any) -> None:
            with seen.lock:
                seen.iin.append(field_.LSB << 8 | field_.MSB)  # opendnp3: LSB is IIN1

        def OnTaskStart(self, kind: Any, task_id: Any) -> None:
            pass

        def OnTaskComplete(self, info: Any) -> None:
            with seen.lock:
                seen.tasks.append((info.type.name, info.result.name))

        def OnOpen(self) -> None:
            pass

        def OnClose(self) -> None:
            pass

        def AssignClassDuringStartup(self) -> bool:
            return False

        def Now(self) -> Any:
            return o.UTCTimestamp(int(time.time() * 1000))

    class Commands(o.ICommandHandler):  # type: ignore[misc]
        def Begin(self) -> None:
            pass

        def End(self) -> None:
            pass

        def Select(self, command: Any, index: int) -> Any:
            # iin["refuse_select"]: the point is locked (local control, interlock), so the
            # outstation answers the SELECT with a status and the master never operates
            return o.CommandStatus.LOCAL if iin.get("refuse_select") else \
                o.CommandStatus.SUCCESS

        def Operate(self, command: Any, index: int, handler: Any, op: Any) -> Any:
            if isinstance(command, o.ControlRelayOutputBlock):
                with seen.lock:
                    seen.crobs.append((index, int(command.opType.value)))
            return o.CommandStatus.SUCCESS

    class OutstationApp(o.IOutstationApplication):  # type: ignore[misc]
        def SupportsWriteAbsoluteTime(self) -> bool:
            return False

        def WriteAbsoluteTime(self, timestamp: Any) -> bool:
            return False

        def SupportsWriteTimeAndInterval(self) -> bool:
            return False

        def SupportsAssignClass(self) -> bool:
            return True

        def RecordClassAssignment(self, kind: Any, clazz: Any, start: int,
                                  stop: int) -> None:
            with seen.lock:
                seen.class_assignments.append((kind.name, clazz.name, start, stop))

        def GetApplicationIIN(self) -> Any:
            app = o.ApplicationIIN()
            app.deviceTrouble = iin.get("device_trouble", False)
            app.configCorrupt = iin.get("config_corrupt", False)
            app.localControl = iin.get("local_control", False)
            app.needTime = False
            return app

        def ColdRestartSupport(self) -> Any:
            return o.RestartMode.UNSUPPORTED

        def WarmRestartSupport(self) -> Any:
            return o.RestartMode.UNSUPPORTED

        def ColdRestart(self) -> int:
            return 0

        def WarmRestart(self) -> int:
            return 0

        def OnConfirmProcessed(self, *confirm: Any) -> None:
            pass

        def Now(self) -> Any:
            return o.DNPTime(int(time.time() * 1000))

    return SOE(), MasterApp(), Commands(), OutstationApp()


class Stacks:
    """An opendnp3 outstation (TCP server) and master (TCP client) on ``127.0.0.1:port``.

    ``unsolicited`` lets the outstation report events unsolicited (the master
    enables it at startup). ``iin`` holds the application IIN bits the
    outstation reports (device_trouble, config_corrupt, local_control); tests
    may change it while the stacks run.
    """

    def __init__(self, port: int, *, unsolicited: bool = True,
                 master_addr: int = MASTER_ADDR, outstation_addr: int = OUTSTATION_ADDR,
                 points: int = 10, outstation: bool = True, source: str = "0.0.0.0") -> None:
        self.port = port
        self.source = source  # the master's local address (another loopback IP: another host)
        self.with_outstation = outstation
        self.unsolicited = unsolicited
        self.master_addr = master_addr
        self.outstation_addr = outstation_addr
        self.points = points
        self.iin: dict[str, bool] = {}
        self.seen = Observed()
        self._o = _opendnp3()
        self._manager: Any = None
        self.master: Any = None
        self.outstation: Any = None
        self._callbacks: tuple[Any, ...] = ()

    # -- lifecycle --------------------------------------------------------------------

    def __enter__(self) -> Stacks:
        o = self._o
        soe, master_app, commands, outstation_app = _classes(o, self.seen, self.iin)
        self._callbacks = (soe, master_app, commands, outstation_app)  # keep them alive
        self._manager = o.DNP3Manager(2)
        try:
            if self.with_outstation:
                self._add_outstation(commands, outstation_app)
            client = self._manager.AddTCPClient(
                "master", o.levels.NOTHING, o.ChannelRetry.Default(),
                [o.IPEndpoint(HOST, self.port)], self.source, None)
            mconf = o.MasterStackConfig()
            mconf.master.disableUnsolOnStartup = True
            # Long enough that a loaded machine never makes the stacks retry: a retried
            # integrity poll or unsolicited report is other traffic than the tests
            # describe (seen with 2 s, the full suite beside a live benchmark: a third
            # poll, a third unsolicited report). Nothing waits on these when all goes well.
            mconf.master.responseTimeout = o.TimeDuration.Seconds(STACK_TIMEOUT)
            mconf.link.LocalAddr = self.master_addr
            mconf.link.RemoteAddr = self.outstation_addr
            self.master = client.AddMaster("master", soe, master_app, mconf)
            if self.outstation is not None:
                self.outstation.Enable()
            self.master.Enable()
            startup = "ENABLE_UNSOLICITED" if self.unsolicited else "STARTUP_INTEGRITY_POLL"
            try:
                wait_for(lambda: self.seen.count_tasks(startup) > 0, what=f"master {startup}")
            except TimeoutError as stalled:
                with self.seen.lock:
                    done = list(self.seen.tasks)
                raise StartupStalled(f"{stalled}; tasks done: {done}") from stalled
        except BaseException:
            self.close()
            raise
        return self

    def _add_outstation(self, commands: Any, outstation_app: Any, host: str = HOST) -> None:
        o = self._o
        server = self._manager.AddTCPServer(
            "outstation", o.levels.NOTHING, o.ServerAcceptMode.CloseExisting,
            o.IPEndpoint(host, self.port), None)
        oconf = o.OutstationStackConfig(o.DatabaseConfig(self.points))
        oconf.outstation.params.allowUnsolicited = self.unsolicited
        oconf.outstation.params.unsolConfirmTimeout = o.TimeDuration.Seconds(STACK_TIMEOUT)
        oconf.outstation.params.solConfirmTimeout = o.TimeDuration.Seconds(STACK_TIMEOUT)
        oconf.outstation.eventBufferConfig = o.EventBufferConfig.AllTypes(100)  # default: 0
        oconf.link.LocalAddr = self.outstation_addr
        oconf.link.RemoteAddr = self.master_addr
        self.outstation = server.AddOutstation("outstation", commands, outstation_app, oconf)

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._manager is not None:
            if self.master is not None:  # no reconnect attempts into the closing server
                self.master.Disable()
            self._manager.Shutdown()
            self._manager = None

    # -- master -----------------------------------------------------------------------

    def _run(self, start: Callable[[], None], what: str) -> str:
        """Start one user task and wait (bounded) for its completion; returns the result."""
        before = self.seen.count_tasks("USER_TASK")
        start()
        wait_for(lambda: self.seen.count_tasks("USER_TASK") > before, what=what)
        with self.seen.lock:
            return [r for t, r in self.seen.tasks if t == "USER_TASK"][-1]

    def integrity_poll(self) -> str:
        """READ g60v2, g60v3, g60v4, g60v1 (class 1, 2, 3, 0)."""
        o = self._o
        soe = self._callbacks[0]
        return self._run(lambda: self.master.ScanClasses(o.ClassField.AllClasses(), soe),
                         "integrity poll")

    def read_attributes(self) -> tuple[str, dict[int, str]]:
        """READ g0v254 (all device attributes); the task result and what opendnp3 decoded."""
        o: Any = self._o
        decoded: dict[int, str] = {}

        class Attributes(o.ISOEHandler):  # type: ignore[misc]
            def BeginFragment(self, info: Any) -> None:
                pass

            def EndFragment(self, info: Any) -> None:
                pass

            def Process(self, info: Any, values: Any) -> None:
                pass

            def OnDeviceAttribute(self, info: Any, set_: int, variation: int,
                                  value: Any) -> None:
                decoded[int(variation)] = str(value.stringValue)

        soe = Attributes()
        result = self._run(lambda: self.master.ScanAllObjects(o.GroupVariationID(0, 254), soe),
                           "device attribute read")
        return result, decoded

    def direct_operate(self, index: int, op: str = "LATCH_ON") -> str:
        """DIRECT_OPERATE one g12v1 CROB; returns the command task summary."""
        return self._command("DirectOperate", index, op)

    def select_and_operate(self, index: int, op: str = "LATCH_ON") -> str:
        """SELECT then (if the outstation accepts) OPERATE one g12v1 CROB."""
        return self._command("SelectAndOperate", index, op)

    def _command(self, method: str, index: int, op: str) -> str:
        o = self._o
        done = threading.Event()
        summary: list[str] = []

        def on_result(result: Any) -> None:
            summary.append(result.summary.name)
            done.set()

        crob = o.ControlRelayOutputBlock(getattr(o.OperationType, op))
        getattr(self.master, method)(crob, index, on_result)
        if not done.wait(TIMEOUT):
            raise TimeoutError(f"{method} got no result")
        return summary[0]

    def perform(self, fc: int, headers: Sequence[Any] = ()) -> str:
        """Send any function code with the given object headers (``PerformFunction``)."""
        o = self._o
        return self._run(lambda: self.master.PerformFunction(
            f"fc{fc}", o.FunctionCode(fc), list(headers)), f"function {fc}")

    def header_all(self, group: int, variation: int) -> Any:
        return self._o.Header.AllObjects(group, variation)

    def header_range(self, group: int, variation: int, start: int, stop: int) -> Any:
        return self._o.Header.Range16(group, variation, start, stop)

    # -- outstation -------------------------------------------------------------------

    def emit_events(self, count: int, gap: float = 0.05) -> None:
        """Change binary inputs ``count`` times: one class-1 event each, ``gap`` s apart."""
        o = self._o
        for i in range(count):
            builder = o.UpdateBuilder()
            builder.Update(o.Binary(bool(i % 2 == 0)), i % self.points, o.EventMode.Force)
            self.outstation.Apply(builder.Build())
            time.sleep(gap)

    def link_resets(self, count: int, link_src: int | None = None, gap: float = 0.05) -> bytes:
        """``count`` RESET_LINK_STATES frames to the outstation on a connection of their own.

        opendnp3 3.x masters never reset the link, so the frames are built here; the
        outstation is the real stack and answers each with an ACK. The master is
        disabled meanwhile (one connection per outstation), then enabled again.
        """
        src = self.master_addr if link_src is None else link_src
        self.master.Disable()
        time.sleep(0.2)
        try:
            return send_raw(self.port, [raw_link_frame(0, self.outstation_addr, src)] * count,
                            gap=gap)
        finally:
            self.master.Enable()

    def unsolicited_seen(self) -> int:
        with self.seen.lock:
            return sum(self.seen.fragments)


# ---------------------------------------------------------------- raw link frames


def raw_link_frame(function: int, dst: int, src: int, *, prm: bool = True,
                   master: bool = True, fcb: bool = False, fcv: bool = False,
                   user_data: bytes = b"") -> bytes:
    """One DNP3 link frame with valid header and block CRCs (IEEE 1815 §9.2)."""
    control = (0x80 if master else 0) | (0x40 if prm else 0) | (0x20 if fcb else 0) \
        | (0x10 if fcv else 0) | (function & 0x0F)
    header = bytes([0x05, 0x64, 5 + len(user_data), control]) + dst.to_bytes(2, "little") \
        + src.to_bytes(2, "little")
    out = bytearray(header + crc_bytes(header))
    for i in range(0, len(user_data), 16):
        block = user_data[i:i + 16]
        out += block + crc_bytes(block)
    return bytes(out)


def send_raw(port: int, frames: Sequence[bytes], *, gap: float = 0.05,
             source: str = HOST) -> bytes:
    """Connect, send each frame ``gap`` seconds apart, return what came back (bounded)."""
    received = bytearray()
    with socket.create_connection((HOST, port), timeout=TIMEOUT,
                                  source_address=(source, 0)) as sock:
        sock.settimeout(0.3)
        for frame in frames:
            sock.sendall(frame)
            time.sleep(gap)
            with suppress(TimeoutError):
                received += sock.recv(4096)
    return bytes(received)


def _frames(buffer: bytearray) -> Iterator[tuple[int, int, int, bytes]]:
    """Complete link frames at the front of ``buffer`` (consumed): control, dst, src, data."""
    while len(buffer) >= 10:
        start = buffer.find(b"\x05\x64")
        if start < 0:
            del buffer[:-1]
            return
        del buffer[:start]
        length = buffer[2] - 5
        size = 10 + length + 2 * -(-length // 16)
        if len(buffer) < size:
            return
        frame = bytes(buffer[:size])
        del buffer[:size]
        data = b"".join(frame[i:i + 16] for i in range(10, size, 18))
        yield frame[3], int.from_bytes(frame[4:6], "little"), \
            int.from_bytes(frame[6:8], "little"), data


class ScriptedOutstation:
    """A stand-in outstation on ``127.0.0.1:port`` for what opendnp3 never sends.

    It answers every application request of a real master with an empty RESPONSE
    carrying ``iin`` (IIN1 << 8 | IIN2, e.g. the reserved bits IIN2.6/2.7), a READ
    of group 0 with the device ``attributes`` it was given (opendnp3's outstation
    cannot announce them), and
    after answering a DISABLE_UNSOLICITED it sends one unsolicited g2v1 binary
    event anyway if ``ignore_disable`` (a rogue or broken device). Runs in a thread;
    every socket wait is bounded and :meth:`close` stops it.
    """

    def __init__(self, port: int, *, iin: int = 0, ignore_disable: bool = False,
                 address: int = OUTSTATION_ADDR,
                 attributes: dict[int, str] | None = None) -> None:
        self.port = port
        self.iin = iin
        self.ignore_disable = ignore_disable
        self.address = address
        self.attributes = attributes or {}  # g0 variation -> visible string, for READ g0
        self.requests: list[int] = []  # function codes received
        self._stop = threading.Event()
        self._server = socket.create_server((HOST, port))
        self._server.settimeout(0.2)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ScriptedOutstation:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)
        self._server.close()

    def _send_app(self, sock: socket.socket, dst: int, app: bytes) -> None:
        self._tseq = (getattr(self, "_tseq", -1) + 1) & 0x3F
        tpdu = bytes([0xC0 | self._tseq]) + app
        sock.sendall(raw_link_frame(4, dst, self.address, master=False, user_data=tpdu))

    def _attribute_objects(self) -> bytes:
        """One g0 object per attribute: header (qualifier 0x00, index 0), VSTR type, length."""
        out = b""
        for variation, text in sorted(self.attributes.items(), reverse=True):
            value = text.encode("ascii")[:255]
            out += bytes([0, variation, 0x00, 0, 0, 1, len(value)]) + value
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            with conn:
                self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        buffer = bytearray()
        useq = 0
        iin = self.iin.to_bytes(2, "big")
        while not self._stop.is_set():
            try:
                chunk = conn.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            for control, _dst, src, data in _frames(buffer):
                if control & 0x0F not in (3, 4) or len(data) < 3:
                    continue  # link-only frames need no answer from this stand-in
                app_control, fc = data[1], data[2]
                self.requests.append(fc)
                if fc == 0:
                    continue  # a CONFIRM
                objects = b""
                if fc == 1 and data[3:4] == b"\x00" and self.attributes:
                    objects = self._attribute_objects()
                self._send_app(conn, src,
                               bytes([0xC0 | (app_control & 0x0F), 129]) + iin + objects)
                if fc == 21 and self.ignore_disable:
                    event = bytes([2, 1, 0x28, 1, 0, 0, 0, 0x81])  # g2v1, index 0, ONLINE|1
                    self._send_app(conn, src, bytes([0xF0 | useq, 130]) + iin + event)
                    useq = (useq + 1) & 0x0F


def serve_outstation(host: str, port: int) -> None:
    """An outstation alone on ``host:port`` until SIGTERM, for hosts in a namespace.

    ``python -m tests.peers.dnp3_peer HOST PORT``; prints ``listening`` once it is.
    """
    import signal

    stacks = Stacks(port)
    o = stacks._o
    soe, master_app, commands, outstation_app = _classes(o, stacks.seen, stacks.iin)
    stacks._callbacks = (soe, master_app, commands, outstation_app)
    stacks._manager = o.DNP3Manager(1)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        stacks._add_outstation(commands, outstation_app, host)
        stacks.outstation.Enable()
        print("listening", flush=True)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
    finally:
        stacks.close()


if __name__ == "__main__":
    import sys

    serve_outstation(sys.argv[1], int(sys.argv[2]))
