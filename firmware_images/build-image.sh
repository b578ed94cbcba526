#!/bin/sh
# Builds the Mamori appliance: a bootable UEFI x86-64 raw disk image, without loop
# devices or a vfat driver (the build host may have neither):
#   debootstrap bookworm (cached) -> install the .deb -> configure -> mkfs.ext4 -d for the
#   root and the data partition, mkfs.fat -C + mtools for the ESP (systemd-boot, kernel,
#   initrd) -> sfdisk writes the GPT into the image file -> dd splices the partitions in.
#
# Layout (GPT):  1 ESP (FAT32, 128 MiB)  2 mamori-root (ext4, mounted read-only)
#                3 mamori-data (ext4, $DATA_MB MiB, writable: /etc/mamori, /var/lib/mamori,
#                  the journal; see docs/appliance.md)
#
# Variables: CAPTURE_IFACES (sensor instances to enable, default enp0s4: the boot
# test's NIC), MGMT_IFACE (DHCP management interface; empty = none, every Ethernet
# port is passive), ROOT_PASSWORD_HASH (crypt(3) hash for console login; default:
# root locked), SITE_DIR (files copied into /etc/mamori on the data partition, e.g. a
# site sensor.toml and collector.pub), DATA_MB, OUT.
set -eu
cd "$(dirname "$0")/.."
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export LC_ALL=C
. firmware_images/lib.sh
STEP=image
TIMINGS=${TIMINGS:-build/timings.txt}
CAPTURE_IFACES=${CAPTURE_IFACES:-enp0s4}
MGMT_IFACE=${MGMT_IFACE:-}
ROOT_PASSWORD_HASH=${ROOT_PASSWORD_HASH:-}
DATA_MB=${DATA_MB:-256}
ESP_MB=128
B=build/image
OUT=${OUT:-$B/mamori-bookworm-amd64.img}
IMAGE_PACKAGES="systemd,systemd-sysv,udev,dbus,kmod,iproute2,linux-image-amd64,initramfs-tools,systemd-boot-efi,openssh-server,systemd-timesyncd,less,procps"
IMAGE_APT="python3-zmq python3-msgpack python3-systemd"

deb=$(ls build/deb/mamori_*_amd64.deb 2>/dev/null | tail -n1 || true)
[ -n "$deb" ] || { echo "build-image: no build/deb/mamori_*_amd64.deb (the image is x86-64): run make deb first" >&2; exit 1; }
rootfs=$B/rootfs
data=$B/data
mkdir -p "$CACHE" "$B"

timed debootstrap-image cached_debootstrap "$CACHE/bookworm-image.tar" minbase \
    "$IMAGE_PACKAGES" "$IMAGE_APT"

cleanup() { chroot_umount "$rootfs"; }
trap cleanup EXIT INT TERM
chroot_umount "$rootfs"
rm -rf "$rootfs" "$data"
mkdir -p "$rootfs" "$data"
timed image-extract tar -C "$rootfs" -xf "$CACHED_TARBALL"

# --- the package and the configuration ---------------------------------------------
configure_rootfs() {
    chroot_mount "$rootfs"
    cp "$deb" "$rootfs/tmp/mamori.deb"
    DEBIAN_FRONTEND=noninteractive chroot "$rootfs" apt-get install -y -qq --no-install-recommends \
        /tmp/mamori.deb > "$B/apt.log" 2>&1 || { tail -n 40 "$B/apt.log" >&2; return 1; }
    rm -f "$rootfs/tmp/mamori.deb"
    if [ -n "${SITE_DIR:-}" ] && [ -f "$SITE_DIR/sensor.toml" ]; then
        # A site configuration must pass the sensor's own validation before it ships.
        cp "$SITE_DIR/sensor.toml" "$rootfs/tmp/site.toml"
        chroot "$rootfs" mamori check-config --config /tmp/site.toml
        rm -f "$rootfs/tmp/site.toml"
    fi
    cp -a firmware_images/overlay/. "$rootfs/"
    echo mamori > "$rootfs/etc/hostname"
    printf '127.0.0.1\tlocalhost\n127.0.1.1\tmamori\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
        > "$rootfs/etc/hosts"
    if [ -n "$MGMT_IFACE" ]; then
        printf '# Management interface: DHCP.\n[Match]\nName=%s\n\n[Network]\nDHCP=yes\n' \
            "$MGMT_IFACE" > "$rootfs/etc/systemd/network/10-mamori-mgmt.network"
    fi
    if [ -n "$ROOT_PASSWORD_HASH" ]; then
        chroot "$rootfs" usermod -p "$ROOT_PASSWORD_HASH" root
    fi
    sys() { chroot "$rootfs" systemctl "$@" >/dev/null 2>&1; }
    sys enable systemd-networkd.service
    sys enable mamori-boot-check.service
    for iface in $CAPTURE_IFACES; do sys enable "mamori-sensor@$iface.service"; done
    # sshd off by default (docs/appliance.md says how to turn it on); no shared host keys.
    sys disable ssh.service
    rm -f "$rootfs"/etc/ssh/ssh_host_*
    # A read-only root: no first-boot prompts, no package timers writing to /var.
    sys mask systemd-firstboot.service apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer
    : > "$rootfs/etc/machine-id"
    rm -f "$rootfs/var/lib/dbus/machine-id"
    chroot "$rootfs" apt-get clean
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/debconf/*-old "$rootfs"/tmp/*
    chroot_umount "$rootfs"
}
timed image-configure configure_rootfs

# --- the writable data partition: what it holds, and the bind mounts onto it ----------
split_data() {
    uid=$(awk -F: '$1 == "mamori" { print $3 }' "$rootfs/etc/passwd")
    gid=$(awk -F: '$1 == "mamori" { print $3 }' "$rootfs/etc/group")
    mkdir -p "$data/etc" "$data/lib" "$data/log"
    cp -a "$rootfs/etc/mamori" "$data/etc/mamori"
    if [ -n "${SITE_DIR:-}" ]; then
        cp -r "$SITE_DIR"/. "$data/etc/mamori/"
        chown -R 0:0 "$data/etc/mamori"
    fi
    cp -a "$rootfs/var/lib/mamori" "$data/lib/mamori"
    cp -a "$rootfs/var/lib/systemd" "$data/lib/systemd"
    mkdir -p "$data/lib/private" "$rootfs/var/lib/private" "$rootfs/data"
    chmod 0700 "$data/lib/private" "$rootfs/var/lib/private"
    cp -a "$rootfs/var/log/." "$data/log/"
    mkdir -p "$data/log/journal"
    chown "$uid:$gid" "$data/lib/mamori"
    chmod 0750 "$data/lib/mamori"
}
timed image-data split_data

ESP_UUID=$(cat /proc/sys/kernel/random/uuid)
ROOT_UUID=$(cat /proc/sys/kernel/random/uuid)
DATA_UUID=$(cat /proc/sys/kernel/random/uuid)
cat > "$rootfs/etc/fstab" <<FSTAB
# Read-only root; everything that must change lives on the data partition.
PARTUUID=$ROOT_UUID  /     ext4  ro,noatime,errors=remount-ro  0 1
PARTUUID=$DATA_UUID  /data ext4  rw,noatime,nodev,nosuid,noexec 0 2
/data/etc/mamori     /etc/mamori      none bind,x-systemd.requires-mounts-for=/data 0 0
/data/lib/mamori     /var/lib/mamori  none bind,x-systemd.requires-mounts-for=/data 0 0
/data/lib/systemd    /var/lib/systemd none bind,x-systemd.requires-mounts-for=/data 0 0
/data/lib/private    /var/lib/private none bind,x-systemd.requires-mounts-for=/data 0 0
/data/log            /var/log         none bind,x-systemd.requires-mounts-for=/data 0 0
tmpfs                /tmp     tmpfs mode=1777,nosuid,nodev,size=64M 0 0
tmpfs                /var/tmp tmpfs mode=1777,nosuid,nodev,size=32M 0 0
FSTAB

# --- file systems, built from directories ---------------------------------------------
mib_of() { du -sm --apparent-size "$1" | cut -f1; }
make_filesystems() {
    root_mb=$(( $(mib_of "$rootfs") * 13 / 10 + 64 ))
    rm -f "$B/root.ext4" "$B/data.ext4" "$B/esp.fat"
    mkfs.ext4 -q -F -L mamori-root -d "$rootfs" "$B/root.ext4" "${root_mb}M"
    mkfs.ext4 -q -F -L mamori-data -d "$data" "$B/data.ext4" "${DATA_MB}M"
    # ESP: systemd-boot, kernel and initrd from the chroot, two loader entries.
    kernel=$(ls "$rootfs"/boot/vmlinuz-* | sort -V | tail -n1)
    initrd=$(ls "$rootfs"/boot/initrd.img-* | sort -V | tail -n1)
    mkfs.fat -F 32 -n ESP -C "$B/esp.fat" $((ESP_MB * 1024)) >/dev/null
    export MTOOLS_SKIP_CHECK=1
    mmd -i "$B/esp.fat" ::/EFI ::/EFI/BOOT ::/EFI/systemd ::/loader ::/loader/entries
    boot_efi="$rootfs/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
    mcopy -i "$B/esp.fat" "$boot_efi" ::/EFI/BOOT/BOOTX64.EFI
    mcopy -i "$B/esp.fat" "$boot_efi" ::/EFI/systemd/systemd-bootx64.efi
    mcopy -i "$B/esp.fat" "$kernel" ::/vmlinuz
    mcopy -i "$B/esp.fat" "$initrd" ::/initrd.img
    opts="root=PARTUUID=$ROOT_UUID ro console=tty0 console=ttyS0,115200n8 panic=10"
    printf 'default mamori.conf\ntimeout 0\nconsole-mode keep\neditor no\n' > "$B/loader.conf"
    printf 'title Mamori sensor\nlinux /vmlinuz\ninitrd /initrd.img\noptions %s\n' \
        "$opts" > "$B/mamori.conf"
    printf 'title Mamori boot test\nlinux /vmlinuz\ninitrd /initrd.img\noptions %s mamori.boottest=1\n' \
        "$opts" > "$B/mamori-boottest.conf"
    mcopy -i "$B/esp.fat" "$B/loader.conf" ::/loader/loader.conf
    mcopy -i "$B/esp.fat" "$B/mamori.conf" "$B/mamori-boottest.conf" ::/loader/entries/
}
timed image-filesystems make_filesystems

# --- the disk: GPT by sfdisk on the image file, partitions spliced in with dd ------------
assemble() {
    mib() { echo $(( ($(stat -c %s "$1") + 1048575) / 1048576 )); }
    esp=$(mib "$B/esp.fat") root=$(mib "$B/root.ext4") dat=$(mib "$B/data.ext4")
    total=$((1 + esp + root + dat + 1))
    rm -f "$OUT.tmp"
    truncate -s "${total}M" "$OUT.tmp"
    s=2048  # sectors of 512 bytes: 1 MiB
    sfdisk -q --no-reread --no-tell-kernel "$OUT.tmp" <<GPT
label: gpt
unit: sectors
first-lba: 2048
start=$s, size=$((esp * 2048)), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=$ESP_UUID, name="esp"
start=$((s + esp * 2048)), size=$((root * 2048)), type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid=$ROOT_UUID, name="mamori-root"
start=$((s + (esp + root) * 2048)), size=$((dat * 2048)), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=$DATA_UUID, name="mamori-data"
GPT
    dd if="$B/esp.fat" of="$OUT.tmp" bs=1M seek=1 conv=notrunc,sparse status=none
    dd if="$B/root.ext4" of="$OUT.tmp" bs=1M seek=$((1 + esp)) conv=notrunc,sparse status=none
    dd if="$B/data.ext4" of="$OUT.tmp" bs=1M seek=$((1 + esp + root)) conv=notrunc,sparse status=none
    mv "$OUT.tmp" "$OUT"
    rm -f "$B/esp.fat" "$B/root.ext4" "$B/data.ext4"
    sfdisk -l "$OUT"
}
timed image-assemble assemble
echo "image: $OUT ($(du -h --apparent-size "$OUT" | cut -f1), $(du -h "$OUT" | cut -f1) on disk)"
