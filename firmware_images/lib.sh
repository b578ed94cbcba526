# Shared helpers for the packaging and image scripts (sourced, not executed). Their
# variables start with an underscore so that they never clobber the callers'.
# No mirror host is written into this repository: the Debian mirror is read from the
# build machine's own apt configuration at build time (or from $MAMORI_MIRROR).

# Where debootstrap results are cached: build/cache (gitignored) unless MAMORI_CACHE_DIR
# points elsewhere (e.g. a directory that outlives CI's fresh clones).
CACHE=${MAMORI_CACHE_DIR:-build/cache}

log() { printf '%s [%s] %s\n' "$(date +%H:%M:%S)" "${STEP:-build}" "$*" >&2; }

# timed NAME CMD...: run CMD and append "NAME seconds" to $TIMINGS (if set).
timed() {
    _name=$1; shift
    _t0=$(date +%s)
    _rc=0
    "$@" || _rc=$?
    _t1=$(date +%s)
    log "$_name took $((_t1 - _t0)) s"
    if [ -n "${TIMINGS:-}" ]; then echo "$_name $((_t1 - _t0))" >> "$TIMINGS"; fi
    return $_rc
}

# apt_uris SUITE_PATTERN: the first URI the build machine's apt uses for a suite.
apt_uri() {
    _pattern=$1
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v pat="$_pattern" '
            /^[[:space:]]*$/ { if (uri != "" && suites ~ pat && types ~ /deb( |$)/) { print uri; exit } uri=""; suites=""; types=""; next }
            /^URIs:/ { uri=$2 } /^Suites:/ { suites=$0 } /^Types:/ { types=$0 }
            END { if (uri != "" && suites ~ pat) print uri }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk -v pat="$_pattern" '$1 == "deb" && $3 ~ pat { u=$2; if (u ~ /^\[/) u=$3; print u; exit }' "$f"
    done
}

# Sets MIRROR and SECURITY_MIRROR (may be empty: then debootstrap's default is used
# and the security source is derived from it).
find_mirrors() {
    MIRROR=${MAMORI_MIRROR:-$(apt_uri '(^|[ :])bookworm( |$)' | head -n1)}
    SECURITY_MIRROR=${MAMORI_SECURITY_MIRROR:-$(apt_uri 'bookworm-security' | head -n1)}
    if [ -z "$SECURITY_MIRROR" ] && [ -n "$MIRROR" ]; then
        SECURITY_MIRROR="${MIRROR%/debian}/debian-security"
    fi
}

# write_sources ROOT: bookworm, bookworm-updates and bookworm-security, deb822 style.
write_sources() {
    _ws=$1
    rm -f "$_ws/etc/apt/sources.list"
    mkdir -p "$_ws/etc/apt/sources.list.d"
    cat > "$_ws/etc/apt/sources.list.d/debian.sources" <<SRC
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
}

# cached_debootstrap TARBALL VARIANT INCLUDES [APT_PACKAGES]: debootstrap bookworm once
# (with updates and security applied), keep it as a tarball. debootstrap resolves no
# virtual packages, so anything that needs them goes in APT_PACKAGES (installed by apt).
cached_debootstrap() {
    _variant=$2 _includes=$3 _extra=${4:-}
    # The package lists are part of the cache key.
    _tarball="${1%.tar}-$(printf '%s %s %s' "$_variant" "$_includes" "$_extra" | cksum | cut -d' ' -f1).tar"
    CACHED_TARBALL=$_tarball
    # A cache older than MAMORI_CACHE_DAYS (default 7) is rebuilt: images must carry
    # current security updates.
    if [ -s "$_tarball" ] && [ -z "$(find "$_tarball" -mtime +"${MAMORI_CACHE_DAYS:-7}")" ]; then
        log "debootstrap cache hit: $_tarball"
        return 0
    fi
    find_mirrors
    _work="$_tarball.d"
    rm -rf "$_work"; mkdir -p "$_work" "$(dirname "$_tarball")"
    log "debootstrap bookworm ($_variant) into $_work"
    # shellcheck disable=SC2086
    debootstrap --variant="$_variant" --include="$_includes" bookworm "$_work" $MIRROR >"$_tarball.log" 2>&1 \
        || { tail -n 30 "$_tarball.log" >&2; return 1; }
    write_sources "$_work"
    chroot "$_work" apt-get update -qq
    chroot_mount "$_work"
    DEBIAN_FRONTEND=noninteractive chroot "$_work" apt-get -y -qq dist-upgrade >/dev/null
    if [ -n "$_extra" ]; then
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive chroot "$_work" apt-get -y -qq --no-install-recommends \
            install $_extra >/dev/null
    fi
    chroot_umount "$_work"
    chroot "$_work" apt-get clean
    tar -C "$_work" --numeric-owner -cf "$_tarball.tmp" . && mv "$_tarball.tmp" "$_tarball"
    rm -rf "$_work"
}

# chroot mounts for running maintainer scripts; undo with chroot_umount.
chroot_mount() {
    _cr=$1
    mount -t proc proc "$_cr/proc"
    mount -t sysfs sys "$_cr/sys"
    mount --bind /dev "$_cr/dev"
    mount -t devpts devpts "$_cr/dev/pts" 2>/dev/null || true
}
chroot_umount() {
    _cr=$1
    for _m in dev/pts dev sys proc; do umount -l "$_cr/$_m" 2>/dev/null || true; done
    # Never go on (to rm -rf, mkfs) while the host's /dev is still bound in.
    [ -d "$_cr" ] || return 0
    _abs=$(cd "$_cr" && pwd -P)
    if grep -q " $_abs/" /proc/mounts; then
        log "still mounted under $_abs"; return 1
    fi
}
