"""Regenerate ``samples/modbus_demo.pcap`` from a real pymodbus exchange.

The demo capture is ours, made by real stacks, not copied from the public corpus.
It runs a pymodbus server on loopback, captures it with tcpdump, and drives
a scripted session from two clients:

* an engineering workstation polling holding and input registers, writing set
  points, reading the device identification (FC 43/14) and the server id (FC 17);
* a second client that sweeps unit ids, probes unsupported function codes and
  illegal addresses (exceptions 01 and 02), then forces the device into
  listen-only mode (FC 8 sub 4) and restarts communications (FC 8 sub 1):
  the disruption precursors the sensor is built to see.

Needs root (tcpdump on ``lo``) and the test extras (pymodbus). Usage::

    .venv/bin/python samples/make_modbus_sample.py samples/modbus_demo.pcap

``--serve PORT [HOST]`` and ``--drive PORT [HOST]`` run either side alone (the
end-to-end test places them in two network namespaces).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PORT = 502
HOST = "127.0.0.1"


def serve(port: int, host: str = HOST, units: tuple[int, ...] = (1, 2),
          revision: str = "2.4.1") -> None:
    """Run a pymodbus server with device identification until killed.

    The tests' traffic peers (tests/peers/modbus_peer.py) run this same server with
    more units and a chosen firmware revision (B5 is about a changed revision).
    """
    from pymodbus import ModbusDeviceIdentification
    from pymodbus.server import StartAsyncTcpServer
    from pymodbus.simulator import SimData, SimDevice
    from pymodbus.simulator.simutils import DataType

    def device(unit: int) -> SimDevice:
        return SimDevice(id=unit, simdata=(
            [SimData(0, count=200, values=0, datatype=DataType.BITS)],
            [SimData(0, count=200, values=1, datatype=DataType.BITS)],
            [SimData(0, count=200, values=100, datatype=DataType.REGISTERS)],
            [SimData(0, count=200, values=7, datatype=DataType.REGISTERS)],
        ))

    context = [device(unit) for unit in units]
    identity = ModbusDeviceIdentification(info_name={
        "VendorName": "Mamori Test Works",
        "ProductCode": "MTW-PLC-1",
        "MajorMinorRevision": revision,
        "VendorUrl": "https://example.invalid/plc",
        "ProductName": "Pump station controller",
        "ModelName": "PSC-200",
    })
    asyncio.run(StartAsyncTcpServer(context=context, identity=identity, address=(host, port)))


def drive(port: int, host: str = HOST) -> None:
    """The scripted client session (see the module docstring)."""
    from pymodbus.client import ModbusTcpClient

    scada = ModbusTcpClient(host, port=port, timeout=2)
    scada.connect()
    for cycle in range(20):
        scada.read_holding_registers(0, count=10, device_id=1)
        scada.read_input_registers(100, count=4, device_id=1)
        scada.read_coils(0, count=16, device_id=1)
        if cycle % 5 == 0:
            scada.write_register(10, 1200 + cycle, device_id=1)
            scada.write_registers(20, [1, 2, 3], device_id=1)
            scada.write_coil(3, True, device_id=1)
        time.sleep(0.05)
    scada.read_device_information(read_code=1, object_id=0, device_id=1)
    scada.report_device_id(device_id=1)
    scada.close()

    intruder = ModbusTcpClient(host, port=port, timeout=0.5, retries=0)
    intruder.connect()
    for unit in range(1, 6):
        intruder.read_holding_registers(0, count=1, device_id=unit)
    with contextlib.suppress(Exception):
        intruder.read_holding_registers(5000, count=10, device_id=1)
    for address in (300, 400, 500, 600, 700):
        with contextlib.suppress(Exception):
            intruder.read_input_registers(address, count=2, device_id=1)
    intruder.read_device_information(read_code=1, object_id=0, device_id=1)
    intruder.write_registers(0, [0xDEAD, 0xBEEF], device_id=1)
    intruder.diag_query_data(b"\x12\x34", device_id=1)
    intruder.diag_clear_counters(device_id=1)
    intruder.diag_force_listen_only(device_id=1, no_response_expected=True)
    intruder.diag_restart_communication(True, device_id=1)
    intruder.close()


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.pcap"
        dump = subprocess.Popen(
            ["tcpdump", "-i", "lo", "-U", "-w", str(raw), f"tcp port {PORT}"],
            stderr=subprocess.DEVNULL)
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(PORT)])
        try:
            time.sleep(2.0)
            drive(PORT)
            time.sleep(1.0)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(10)
            time.sleep(0.5)
            dump.send_signal(signal.SIGINT)
            dump.wait(10)
        out.write_bytes(raw.read_bytes())
    print(f"wrote {out} ({os.path.getsize(out)} bytes)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) in (3, 4) and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]), sys.argv[3] if len(sys.argv) == 4 else HOST)
    elif len(sys.argv) in (3, 4) and sys.argv[1] == "--drive":
        drive(int(sys.argv[2]), *sys.argv[3:])
    else:
        sys.exit(main())
