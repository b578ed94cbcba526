#!/usr/bin/python3
"""Boot test traffic: replay a capture into the guest's capture NIC, count what it sends.

qemu connects the guest's capture interface to a UDP tunnel on loopback
(``-netdev socket,udp=127.0.0.1:OUT,localaddr=127.0.0.1:IN``): every datagram sent to
IN arrives on the wire of the guest's NIC as one Ethernet frame, and every frame the
guest transmits on that NIC arrives here on OUT. This script waits for the guest's
``MAMORI-SENSOR-READY`` line on the serial log, sends each frame of the capture once,
keeps listening until the guest powers off (or the time is up), then writes a JSON
summary: frames sent, frames the kernel filter should pass to the sensor (TCP/UDP on
the Modbus and DNP3 ports), and frames the guest transmitted, split into those sent
before the Linux kernel started (the UEFI firmware's own network stack: OVMF does IPv6
duplicate-address detection on every NIC) and those sent by the OS, which must be none.

Standard library only; reads classic pcap with Ethernet frames.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import time
from pathlib import Path


def read_pcap(path: Path) -> list[bytes]:
    data = path.read_bytes()
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise SystemExit(f"{path}: not a classic pcap file")
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    if linktype != 1:
        raise SystemExit(f"{path}: link type {linktype}, need Ethernet (1)")
    frames, offset = [], 24
    while offset + 16 <= len(data):
        incl = struct.unpack(endian + "IIII", data[offset:offset + 16])[2]
        frames.append(data[offset + 16:offset + 16 + incl])
        offset += 16 + incl
    return frames


def on_ports(frame: bytes, ports: set[int]) -> bool:
    """IPv4/IPv6 TCP or UDP with either port in ``ports`` (one VLAN tag allowed)."""
    ethertype, at = struct.unpack("!H", frame[12:14])[0], 14
    if ethertype == 0x8100:
        ethertype, at = struct.unpack("!H", frame[16:18])[0], 18
    if ethertype == 0x0800:
        ihl = (frame[at] & 0x0F) * 4
        proto, l4 = frame[at + 9], at + ihl
    elif ethertype == 0x86DD:
        proto, l4 = frame[at + 6], at + 40
    else:
        return False
    if proto not in (6, 17) or len(frame) < l4 + 4:
        return False
    sport, dport = struct.unpack("!HH", frame[l4:l4 + 4])
    return sport in ports or dport in ports


def _last_line(log: Path) -> str:
    """The serial console's last line: when in the boot a frame was sent."""
    if not log.exists():
        return ""
    lines = log.read_bytes().replace(b"\r", b"").strip().splitlines()
    return lines[-1][-120:].decode("utf-8", "replace") if lines else ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pcap", type=Path, required=True)
    ap.add_argument("--count-only", action="store_true",
                    help="print the number of frames the sensor should see, and exit")
    ap.add_argument("--serial", type=Path)
    ap.add_argument("--send-to", type=int, help="qemu's localaddr port")
    ap.add_argument("--listen", type=int, help="qemu's udp= port")
    ap.add_argument("--ports", default="502,20000")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--result", type=Path)
    args = ap.parse_args()
    frames = read_pcap(args.pcap)
    ports = {int(p) for p in args.ports.split(",")}
    if args.count_only:
        print(sum(on_ports(f, ports) for f in frames))
        return 0
    if args.serial is None or args.send_to is None or args.listen is None or not args.result:
        ap.error("--serial, --send-to, --listen and --result are needed to replay")
    deadline = time.monotonic() + args.timeout
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", args.listen))
    rx.settimeout(0.5)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    guest_frames: list[dict[str, object]] = []
    started = time.monotonic()

    def drain() -> None:
        try:
            while True:
                frame = rx.recv(65536)
                booted = args.serial.exists() and b"Linux version" in args.serial.read_bytes()
                guest_frames.append({"t": round(time.monotonic() - started, 1),
                                     "phase": "os" if booted else "firmware",
                                     "serial_line": _last_line(args.serial),
                                     "frame": frame[:80].hex()})
        except TimeoutError:
            pass

    ready = False
    while time.monotonic() < deadline and not ready:
        drain()
        ready = args.serial.exists() and b"MAMORI-SENSOR-READY" in args.serial.read_bytes()
    if ready:
        for frame in frames:
            tx.sendto(frame, ("127.0.0.1", args.send_to))
            time.sleep(0.002)
    while time.monotonic() < deadline:
        drain()
        if args.serial.exists() and b"reboot: Power down" in args.serial.read_bytes():
            break
    result = {"ready": ready, "sent": len(frames) if ready else 0,
              "expected_sensor_frames": sum(on_ports(f, ports) for f in frames),
              "guest_frames": guest_frames[:20],
              "guest_transmitted_firmware": sum(f["phase"] == "firmware" for f in guest_frames),
              "guest_transmitted_os": sum(f["phase"] == "os" for f in guest_frames)}
    args.result.write_text(json.dumps(result) + "\n", encoding="utf-8")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
