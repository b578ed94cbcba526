#!/bin/sh
# Boot test: boots a copy of the appliance image in qemu (q35, TCG, OVMF UEFI, serial
# console) with the "Mamori boot test" loader entry, whose kernel command line enables
# mamori-boot-check.service. That unit prints MAMORI-BOOT-OK once mamori-sensor@IFACE is
# active, then powers off. Asserts the marker, that the parsers and the detection hot
# path it runs are mypyc's compiled modules, that the capture interface sent nothing
# (tx_packets=0) and that the root file system is read-only.
# With REPLAY=FILE.pcap (default: samples/modbus_demo.pcap; REPLAY= for none) the capture
# NIC is a UDP tunnel on loopback: replay_udp.py sends the capture into it once the sensor
# is active, the guest waits until the sensor has counted every Modbus/DNP3 frame, and
# the test asserts that count and that the guest OS sent nothing back (tx_packets=0 in
# the guest, no datagram on the host side once the kernel started; frames the UEFI
# firmware sends before that are reported, not failed). Without REPLAY the NIC sits on an isolated qemu
# hub. No host network is reachable either way.
set -eu
cd "$(dirname "$0")/.."
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
. firmware_images/lib.sh
STEP=image-test
TIMINGS=${TIMINGS:-build/timings.txt}
IMAGE=${IMAGE:-build/image/mamori-bookworm-amd64.img}
TIMEOUT=${BOOT_TIMEOUT:-900}
REPLAY=${REPLAY-samples/modbus_demo.pcap}
T=build/image-test
OVMF_CODE=${OVMF_CODE:-/usr/share/OVMF/OVMF_CODE_4M.fd}
OVMF_VARS=${OVMF_VARS:-/usr/share/OVMF/OVMF_VARS_4M.fd}
[ -f "$IMAGE" ] || { echo "boot_test: no $IMAGE: run make image first" >&2; exit 1; }
[ -f "$OVMF_CODE" ] || { echo "boot_test: no $OVMF_CODE: apt-get install ovmf" >&2; exit 1; }
mkdir -p "$T"
rm -f "$T/disk.img" "$T/serial.log"
cp --sparse=always "$IMAGE" "$T/disk.img"
cp "$OVMF_VARS" "$T/vars.fd"
# Select the boot-test entry on the copy's ESP (partition 1 starts at 1 MiB).
printf 'default mamori-boottest.conf\ntimeout 0\nconsole-mode keep\neditor no\n' > "$T/loader.conf"
export MTOOLS_SKIP_CHECK=1
mcopy -o -i "$T/disk.img@@1M" "$T/loader.conf" ::/loader/loader.conf
want=""
netdev="hubport,id=cap0,hubid=0"
if [ -n "$REPLAY" ]; then
    want=$(python3 firmware_images/replay_udp.py --pcap "$REPLAY" --count-only)
    # The boot-test entry learns how many frames the sensor must count.
    mtype -i "$T/disk.img@@1M" ::/loader/entries/mamori-boottest.conf | tr -d '\r' \
        | sed "s/^options .*/& mamori.boottest.frames=$want/" > "$T/entry.conf"
    mcopy -o -i "$T/disk.img@@1M" "$T/entry.conf" ::/loader/entries/mamori-boottest.conf
    ports=$(python3 -c 'import socket
for _ in range(2):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1]); s.close()' | tr '\n' ' ')
    set -- $ports
    guest_in=$1 guest_out=$2
    netdev="socket,id=cap0,udp=127.0.0.1:$guest_out,localaddr=127.0.0.1:$guest_in"
    rm -f "$T/replay.json"
    python3 firmware_images/replay_udp.py --pcap "$REPLAY" --serial "$T/serial.log" \
        --send-to "$guest_in" --listen "$guest_out" --timeout "$TIMEOUT" \
        --result "$T/replay.json" > "$T/replay.log" 2>&1 &
    replay_pid=$!
fi

boot() {
    timeout --foreground "$TIMEOUT" qemu-system-x86_64 \
        -machine q35 -accel tcg -cpu max -smp 2 -m 1536 \
        -drive if=pflash,format=raw,unit=0,readonly=on,file="$OVMF_CODE" \
        -drive if=pflash,format=raw,unit=1,file="$T/vars.fd" \
        -drive file="$T/disk.img",format=raw,if=virtio \
        -nic none \
        -netdev "$netdev" \
        -device virtio-net-pci,netdev=cap0,addr=0x4,mac=52:54:00:4d:4d:01 \
        -nographic -no-reboot < /dev/null > "$T/serial.log" 2>&1
}
rc=0
timed boot boot || rc=$?
if [ -n "$REPLAY" ]; then
    wait "$replay_pid" || true
    cat "$T/replay.json" 2>/dev/null || cat "$T/replay.log"
fi
tr -d '\r' < "$T/serial.log" | grep -a 'MAMORI-BOOT' || true
if [ "$rc" = 124 ]; then echo "boot_test: qemu still running after ${TIMEOUT}s" >&2; fi
fail=0
grep -aq 'MAMORI-BOOT-OK' "$T/serial.log" || { echo "FAIL: no MAMORI-BOOT-OK marker"; fail=1; }
grep -aq 'MAMORI-BOOT-FAIL' "$T/serial.log" && { echo "FAIL: MAMORI-BOOT-FAIL reported"; fail=1; }
grep -a 'MAMORI-BOOT-OK' "$T/serial.log" | grep -aq 'tx_packets=0 ' \
    || { echo "FAIL: the capture interface transmitted"; fail=1; }
grep -a 'MAMORI-BOOT-OK' "$T/serial.log" | grep -aq 'root=ro' \
    || { echo "FAIL: root file system not read-only"; fail=1; }
grep -a 'MAMORI-BOOT-OK' "$T/serial.log" | grep -aq 'compiled=yes' \
    || { echo "FAIL: the image's parsers and detection hot path are not the compiled ones"; fail=1; }
if [ -n "$REPLAY" ]; then
    grep -a 'MAMORI-BOOT-OK' "$T/serial.log" | grep -aq " frames=$want " \
        || { echo "FAIL: the sensor did not count the $want replayed Modbus/DNP3 frames"; fail=1; }
    grep -q '"guest_transmitted_os": 0}' "$T/replay.json" 2>/dev/null \
        || { echo "FAIL: the guest OS transmitted on the capture link (or no replay result)"; fail=1; }
    if ! grep -q '"guest_transmitted_firmware": 0,' "$T/replay.json" 2>/dev/null; then
        echo "note: the UEFI firmware transmitted on the capture NIC before the OS started" \
             "(see docs/appliance.md: disable the firmware network stack on capture ports)"
    fi
fi
if [ "$fail" = 0 ]; then
    echo "boot_test: passed (serial log: $T/serial.log)"
else
    echo "boot_test: FAILED; last lines of $T/serial.log:"; tail -n 60 "$T/serial.log"
fi
exit "$fail"
