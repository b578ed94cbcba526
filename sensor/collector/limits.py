"""The operating-system and ZeroMQ limits a collector for thousands of sensors needs.

Every sensor holds one TCP connection to the collector's ROUTER, and each is a file
descriptor in ZeroMQ's I/O thread; the default soft ``RLIMIT_NOFILE`` of 1024 stops a
collector near a thousand sensors (ZeroMQ then refuses connections, and the sensors
keep retrying). The systemd unit sets ``LimitNOFILE``; a collector started otherwise
raises its soft limit towards the hard one itself and says so when that is not enough.
Under the unit the ``@resources`` system-call filter forbids ``setrlimit``, so the unit's
value is the one that counts (``docs/scale.md``).

ZeroMQ's own ``max_sockets`` (1023 by default) counts sockets, not connections: the
collector has five, so it needs no change; a process simulating thousands of sensors
does (``bench/sim_sensors.py``). The listen backlog (``ZMQ_BACKLOG``, 100 by default)
is raised so that thousands of sensors reconnecting at once after a collector restart
are queued by the kernel instead of being refused and retried seconds later.
"""

from __future__ import annotations

import contextlib
import resource

import zmq

FD_RESERVE = 256  # storage and its WAL, SIEM file, sockets' mailboxes, NATS, monitor
LISTEN_BACKLOG = 4096  # the kernel caps it at net.core.somaxconn (4096 on current kernels)

# The ROUTER's own ZMTP heartbeat. Sensors ping every 2 s (that is how they notice a
# dead collector quickly) and the collector answers each ping; were it to ping every
# connection every 2 s as well, 10,000 sensors would cost another 10,000 encrypted
# messages a second in the I/O threads. A collector only needs to notice a dead sensor
# eventually (to free its descriptor): ping every 30 s, drop after 90 s of silence, and
# let TCP keepalive catch half-open connections as a last resort.
ROUTER_HEARTBEAT_IVL_MS = 30_000
ROUTER_HEARTBEAT_TIMEOUT_MS = 90_000
# CURVE handshakes run at a few hundred a second per core (measured: about 250/s on the
# shared 2-core bench machine). After a collector restart 10,000 sensors reconnect
# within seconds; with ZeroMQ's default 30 s handshake limit the ones still queued are
# dropped and retry, which feeds the storm. Two minutes lets the queue drain.
HANDSHAKE_IVL_MS = 120_000
ROUTER_OPTIONS: tuple[tuple[int, int], ...] = (
    (zmq.HEARTBEAT_IVL, ROUTER_HEARTBEAT_IVL_MS),
    (zmq.HEARTBEAT_TIMEOUT, ROUTER_HEARTBEAT_TIMEOUT_MS),
    (zmq.BACKLOG, LISTEN_BACKLOG),
    (zmq.HANDSHAKE_IVL, HANDSHAKE_IVL_MS),
    (zmq.TCP_KEEPALIVE, 1), (zmq.TCP_KEEPALIVE_IDLE, 120), (zmq.TCP_KEEPALIVE_INTVL, 30),
)


def fds_needed(sensors: int) -> int:
    """Descriptors for ``sensors`` connections and the collector's own files."""
    return sensors + FD_RESERVE


def ensure_fd_limit(sensors: int) -> str | None:
    """Raise the soft RLIMIT_NOFILE for ``sensors`` if the hard limit allows; a warning
    naming the limit when it stays too low, else None."""
    need = fds_needed(sensors)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return None
    target = need if hard == resource.RLIM_INFINITY else min(hard, max(need, 65536))
    with contextlib.suppress(OSError, ValueError):  # EPERM under the unit's filter
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft >= need:
        return None
    return (f"{sensors} sensor keys need about {need} file descriptors but the limit is "
            f"{soft}: raise LimitNOFILE (systemd) or ulimit -n")
