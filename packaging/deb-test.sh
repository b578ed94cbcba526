#!/bin/sh
# Installs the built .deb into a fresh debootstrap chroot (bookworm minbase + systemd)
# and checks it there: the CLI runs, parsers/ is the compiled one, the default configs (sensor.toml, collector.toml)
# validate, the user and the state directories exist, the web page serves on Debian's
# own uvicorn and starlette (deb-web-check.py), the collector starts with its shipped
# config as its unit runs it, logrotate accepts /etc/logrotate.d/mamori, the units are
# enabled (the collector: can be), and systemd-analyze verify/security pass (verify:
# any message fails; security: exposure <= 2.0 per unit).
# The debootstrap output is cached as $CACHE/bookworm-minbase-HASH.tar (CACHE: lib.sh).
set -eu
cd "$(dirname "$0")/.."
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
. firmware_images/lib.sh
STEP=deb-test
TIMINGS=${TIMINGS:-build/timings.txt}
deb=$(ls build/deb/mamori_*_"$(dpkg --print-architecture)".deb | tail -n1)
root=build/deb-test/root
mkdir -p "$CACHE" build/deb-test

timed debootstrap-minbase cached_debootstrap "$CACHE/bookworm-minbase.tar" minbase systemd

cleanup() { chroot_umount "$root"; }
trap cleanup EXIT INT TERM
chroot_umount "$root"
rm -rf "$root"; mkdir -p "$root"
timed deb-test-extract tar -C "$root" -xf "$CACHED_TARBALL"
chroot_mount "$root"
cp "$deb" "$root/tmp/mamori.deb"
cp samples/modbus_demo.pcap "$root/tmp/demo.pcap"
cp packaging/deb-web-check.py "$root/tmp/web-check.py"
install_deb() {
    chroot "$root" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -qq --no-install-recommends \
        /tmp/mamori.deb logrotate > build/deb-test/apt.log 2>&1 || { tail -n 40 build/deb-test/apt.log; return 1; }
}
timed deb-test-install install_deb

fail=0
check() {
    desc=$1; shift
    if out=$(chroot "$root" "$@" 2>&1); then
        echo "ok   $desc"
    else
        echo "FAIL $desc"; echo "$out" | sed 's/^/     /'; fail=1
    fi
}
check "mamori --version: $(chroot "$root" mamori --version 2>&1)" mamori --version
check "default config validates" mamori check-config --config /etc/mamori/sensor.toml
check "collector config validates" mamori check-config --config /etc/mamori/collector.toml
for conf in /etc/mamori/sensor.toml /etc/mamori/collector.toml /etc/logrotate.d/mamori; do
    check "$conf is a conffile" grep -qx "$conf" /var/lib/dpkg/info/mamori.conffiles
done
check "logrotate -d /etc/logrotate.d/mamori" sh -c \
    'out=$(logrotate -d /etc/logrotate.d/mamori 2>&1) && ! echo "$out" | grep -qi error'
check "user mamori exists" getent passwd mamori
check "/var/lib/mamori is mamori's, 0750" sh -c \
    '[ "$(stat -c %U:%a /var/lib/mamori)" = mamori:750 ]'
check "/var/lib/mamori/keys is mamori's, 0700" sh -c \
    '[ "$(stat -c %U:%a /var/lib/mamori/keys)" = mamori:700 ]'
# parsers/ and the detection hot path ship compiled (mypyc): the .so wins the import over
# the .py beside it.
for mod in parsers.tcp parsers.pipeline parsers.packet parsers.modbus.parser \
        parsers.dnp3.parser sensor.detection.engine sensor.detection.matcher \
        sensor.detection.inventory; do
    check "mamori.$mod is compiled" python3 -c \
        "import mamori.$mod as m; assert m.__file__.endswith('.so'), m.__file__"
done
check "replay the sample as user mamori" runuser -u mamori -- mamori replay --no-progress /tmp/demo.pcap
check "shipped rule packs pass the schema (Debian's jsonschema)" mamori rules check
# The installed packs match their manifest (rules/checked.sha256), so start-up loads
# them without importing jsonschema.
check "shipped packs load at start-up without jsonschema" python3 -c \
    "import sys; from mamori.sensor.detection.settings import load_configured_rules as l; assert len(l(None)) > 50 and 'jsonschema' not in sys.modules"
check "rule bundles sign and verify with Debian's PyNaCl" sh -c \
    'cd /tmp && mamori rules keygen t --dir /tmp/k && cp /tmp/k/t.pub /etc/mamori/trusted-rule-keys/ && mamori rules bundle --key /tmp/k/t.sign --version 1 -o /tmp/b.mrb && runuser -u mamori -- mamori rules install /tmp/b.mrb && runuser -u mamori -- mamori rules status | grep -q "active bundle: 1"'
# What mamori-keygen.service runs (Debian's pyzmq must have CURVE).
check "keys generate as user mamori" runuser -u mamori -- \
    mamori keys generate sensor --dir /var/lib/mamori/keys
check "secret key is mamori's, 0600" sh -c \
    '[ "$(stat -c %U:%a /var/lib/mamori/keys/sensor.secret)" = mamori:600 ]'
# The web page on Debian's own python3-uvicorn/python3-starlette, over a store of the
# sample (deb-web-check.py says what it checks).
web_libs=$(chroot "$root" python3 -c \
    'import starlette, uvicorn; print("starlette", starlette.__version__, "uvicorn", uvicorn.__version__)' 2>&1)
check "web page as user mamori on $web_libs: serves, 404/400/414/431, stops on SIGTERM" \
    runuser -u mamori -- python3 /tmp/web-check.py /tmp/demo.pcap
# The collector as mamori-collector.service runs it (ExecStartPre, then ExecStart) with
# the shipped /etc/mamori/collector.toml, for 2 s: keys made, listening, SIEM file open.
# (Endpoints on a free loopback port: the chroot shares this machine's network.)
# shellcheck disable=SC2016
check "collector starts with /etc/mamori/collector.toml as its unit runs it" sh -c '
    install -d -o mamori -g mamori -m 0750 /var/log/mamori /var/lib/mamori-collector
    pre=$(sed -n "s/^ExecStartPre=//p" /lib/systemd/system/mamori-collector.service)
    start=$(sed -n "s/^ExecStart=//p" /lib/systemd/system/mamori-collector.service)
    runuser -u mamori -- sh -c "$pre" &&
    runuser -u mamori -- $start --listen "tcp://127.0.0.1:*" --publish "" --duration 2 \
        > /tmp/collect.log 2>&1 &&
    grep -q "listening on" /tmp/collect.log && grep -q "stopped" /tmp/collect.log &&
    [ -s /var/lib/mamori-collector/keys/collector.pub ] &&
    [ -e /var/log/mamori/collector-alerts.jsonl ]'
for unit in mamori.target mamori-keygen.service; do
    check "$unit enabled" systemctl is-enabled "$unit"
done
check "mamori-collector not enabled by the package" sh -c \
    '! systemctl is-enabled --quiet mamori-collector.service'
check "mamori-collector can be enabled" systemctl enable mamori-collector.service
check "mamori-sensor@eth1 can be enabled" systemctl enable mamori-sensor@eth1.service
check "mamori-sensor@eth1 enabled" systemctl is-enabled mamori-sensor@eth1.service
units="mamori-sensor@eth1.service mamori-collector.service mamori-keygen.service mamori.target"
# verify: warnings count as failures (systemd-analyze exits 0 on some of them).
# shellcheck disable=SC2086
if out=$(chroot "$root" systemd-analyze verify --man=no $units 2>&1) && [ -z "$out" ]; then
    echo "ok   systemd-analyze verify $units"
else
    echo "FAIL systemd-analyze verify"; echo "$out" | sed 's/^/     /'; fail=1
fi
for unit in mamori-sensor@eth1.service mamori-collector.service mamori-keygen.service; do
    score=$(chroot "$root" systemd-analyze security --offline=yes --no-pager "$unit" 2>/dev/null \
            | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
    if chroot "$root" systemd-analyze security --offline=yes --threshold=20 --no-pager "$unit" \
            >/dev/null 2>&1; then
        echo "ok   $unit exposure $score <= 2.0"
    else
        echo "FAIL $unit exposure $score > 2.0"; fail=1
    fi
done
if [ "$fail" = 0 ]; then echo "deb-test: all checks passed"; else echo "deb-test: FAILED"; fi
exit "$fail"
