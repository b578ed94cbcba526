"""The collector's metrics, read from the running ``CollectorServer`` at scrape time.

The server's loop keeps its counters anyway (``counters``, and per kind and per
reject reason ``kinds`` and ``rejected``, each one C-level update per round); the
scrape copies them on the metrics thread, so ingest never waits for a scrape. No
storage query runs on a scrape: with thousands of sensors a per-sensor count over
the messages table would cost more than the round it delays. The store's size is
the SQLite file's on disk; a PostgreSQL store reports its size through PostgreSQL's
own monitoring instead (``pg_database_size``), so this metric is absent then.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from mamori.parsers.wire import JOURNALED_KINDS, Kind
from mamori.sensor.metrics.sensor_metrics import (
    Part,
    PartErrors,
    by_label,
    counter,
    file_bytes,
    gauge,
)

# counters key -> (metric name, help); every one is a monotonic count of the server's
COUNTERS = {
    "accepted": ("mamori_collector_accepted", "Messages accepted and stored, all kinds"),
    "duplicate": ("mamori_collector_duplicates", "Messages already stored (acked again)"),
    "out_of_order": ("mamori_collector_out_of_order",
                     "Messages past a gap, dropped and asked for again"),
    "lost": ("mamori_collector_lost_messages", "Messages a sensor reported lost (evicted "
             "from its journal before delivery)"),
    "replay_requests": ("mamori_collector_replay_requests", "Replays asked of sensors"),
    "storage_error": ("mamori_collector_storage_errors", "Rounds whose commit failed"),
    "unstored_disk_full": ("mamori_collector_unstored_disk_full",
                           "Messages not stored (and not acked) for a full disk"),
    "unroutable": ("mamori_collector_unroutable", "Replies a sensor's link was gone for"),
    "clock_skew": ("mamori_collector_clock_skew_events",
                   "Times a sensor's clock went past max_clock_skew (S5)"),
    "expired": ("mamori_collector_expired", "Rows removed by [collect] retention"),
}


class CollectorMetrics:
    """The custom collector of ``mamori collect``."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self._errors = PartErrors()

    def collect(self) -> Iterator[Metric]:
        parts: dict[str, Part] = {"ingest": self._ingest, "store": self._store}
        yield from self._errors.run(parts)

    def _ingest(self) -> Iterator[Metric]:
        s = self.server
        counts = dict(s.counters)
        yield gauge("mamori_uptime_seconds", "Seconds since the collector started",
                    round(time.time() - s.started, 3))
        for key, (name, doc) in COUNTERS.items():
            yield counter(name, doc, counts.get(key, 0))
        kinds = CounterMetricFamily("mamori_collector_messages",
                                    "Messages accepted and stored, by kind",
                                    labels=["kind"])
        seen = {int(k): 0 for k in JOURNALED_KINDS}  # 0 before the first: rate() works
        seen.update(dict(s.kinds))
        for kind, n in sorted(seen.items()):
            try:
                label = Kind(kind).name.lower()
            except ValueError:
                label = str(kind)
            kinds.add_metric([label], n)
        yield kinds
        yield by_label("mamori_collector_rejected",
                       "Messages and connections refused, by reason", "reason",
                       dict(s.rejected))
        yield gauge("mamori_collector_sensor_keys",
                    "Keys in the allow-list (sensors and relays)", len(s.allow))
        yield gauge("mamori_collector_sensors_seen",
                    "Sensors that sent a message since the collector started",
                    len(s._routes))
        yield gauge("mamori_collector_sensors_clock_skewed",
                    "Sensors whose clock is past max_clock_skew now", len(s._skewed))

    def _store(self) -> Iterator[Metric]:
        s = self.server
        yield gauge("mamori_collector_storage_full",
                    "1 while the store refuses writes (disk full)", 1 if s.storage_full else 0)
        if not s.settings.dsn:
            yield GaugeMetricFamily("mamori_collector_store_bytes",
                                    "Size of the collector's SQLite store on disk "
                                    "(file and WAL)", value=file_bytes(s.settings.db))
