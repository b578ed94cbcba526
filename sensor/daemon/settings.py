"""The daemon's configuration keys: capture interfaces, the user it drops to, health.

``OPTIONS``, put in the schema by ``mamori.sensor.schema``. Apart from ``run`` so the
schema can be assembled without the daemon, and the daemon can load the whole
configuration (SIGHUP) without a circle.
"""

from __future__ import annotations

import os

from mamori.sensor import configkit as cfg
from mamori.sensor.capture import bpf

MAX_WORKERS = 64
# Fewer cores than this and 0 ("auto") means one process: on 2 cores the daemon
# merging the workers' events, the workers and whatever else runs share too little
# (bench/bench_live.py: 1 worker took ~58,700 packets/s without a drop, 2 workers
# only ~39,500; docs/workers.md, "Measured").
AUTO_MIN_CORES = 4

OPTIONS: tuple[cfg.Option, ...] = (
    cfg.Option("capture", "interfaces", (), cfg.v_str_list,
               "interfaces to capture on (SPAN/TAP ports, no IP address)", "--interface"),
    cfg.Option("capture", "promiscuous", True, cfg.v_bool,
               "put the capture interfaces in promiscuous mode"),
    cfg.Option("capture", "filter", "", bpf.v_expression,
               "a tcpdump expression narrowing what is captured on the Modbus/DNP3 ports"
               " (e.g. 'net 10.1.0.0/16'); empty: everything on those ports"),
    cfg.Option("capture", "ring_mb", 64, cfg.v_int_range(1, 4096),
               "kernel receive ring per interface, in MiB (shared among the workers' sockets)"),
    cfg.Option("capture", "workers", 0, cfg.v_int_range(0, MAX_WORKERS),
               "capture worker processes sharing each interface by flow (PACKET_FANOUT);"
               " 0 (auto): one per core the daemon may run on when it may run on 4 or more,"
               " else 1; 1: no worker, all in the daemon"),
    cfg.Option("sensor", "user", "mamori", cfg.v_nonempty_str,
               "user to switch to after opening the capture sockets when started as root"),
    cfg.Option("health", "silence_alert", 300.0, cfg.v_seconds,
               "raise S3 when an interface has carried no traffic for this long"),
    cfg.Option("health", "stats_interval", 10.0, cfg.v_seconds,
               "how often kernel capture counters are read"),
)


def workers(configured: int) -> int:
    """``[capture] workers`` resolved: 0 is the cores this process may use, if 4 or more."""
    if configured:
        return configured
    cores = len(os.sched_getaffinity(0))
    return min(cores, MAX_WORKERS) if cores >= AUTO_MIN_CORES else 1
