"""The sensor's metrics, read from the running daemon at scrape time.

Nothing here counts on the hot path: the collector reads the counters the daemon
keeps anyway (``InterfaceHealth``, ``PipelineStats``, the detector's stats, the
disk-full counters, the forwarder's links) when Prometheus asks. The only counter
added for it is :class:`EventKinds`, a consumer that counts each batch of events by
class in one C-level ``Counter.update`` (no per-event Python code), installed only
when metrics are served.

Store and journal figures come from SQLite over a read-only connection opened per
scrape (the store's own connection belongs to the daemon's thread, the journal's is
behind the forwarder's lock). A part that fails (a store being replaced, a locked
file) is left out of that scrape and counted in ``mamori_metrics_errors_total``;
the scrape itself never fails for it.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from mamori.parsers.alerts import Severity
from mamori.parsers.events import Event
from mamori.sensor.forwarding.journal import count_backlog

log = logging.getLogger("mamori.metrics")


class EventKinds:
    """A daemon consumer: events seen, by class (``mamori_events_total{kind}``)."""

    def __init__(self) -> None:
        self.counts: Counter[type] = Counter()

    def consume(self, events: list[Event]) -> None:
        self.counts.update(map(type, events))

    def tick(self, now: float) -> None:
        pass

    def close(self) -> None:
        pass

    def snapshot(self) -> dict[str, int]:
        """By class name; ``dict()`` of the counter is one C call under the GIL."""
        return {cls.__name__: n for cls, n in dict(self.counts).items()}


def read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=2.0)


def file_bytes(path: Path) -> int:
    """A SQLite file's size on disk with its WAL (what the disk actually holds)."""
    total = 0
    for part in (path, path.with_name(path.name + "-wal")):
        with contextlib.suppress(FileNotFoundError):
            total += part.stat().st_size
    return total


def counter(name: str, doc: str, value: float) -> Metric:
    return CounterMetricFamily(name, doc, value=value)


def gauge(name: str, doc: str, value: float) -> Metric:
    return GaugeMetricFamily(name, doc, value=value)


def by_label(name: str, doc: str, label: str, counts: Mapping[Any, float]) -> Metric:
    """A counter family with one sample per key of ``counts`` (sorted, as text)."""
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, n in sorted(counts.items(), key=lambda item: str(item[0])):
        family.add_metric([str(key)], n)
    return family


Part = Callable[[], Iterable[Metric]]


class PartErrors:
    """Runs each part of a scrape; a failing one is logged (once per kind of error) and
    counted, and the others still answer."""

    def __init__(self) -> None:
        self.errors: Counter[str] = Counter()
        self._said: set[tuple[str, str]] = set()

    def run(self, parts: dict[str, Part]) -> Iterator[Metric]:
        for name, part in parts.items():
            try:
                metrics = list(part())
            except Exception as err:
                self.errors[name] += 1
                said = (name, type(err).__name__)
                if said not in self._said and len(self._said) < 64:
                    self._said.add(said)
                    log.warning("metrics: %s left out of the scrape: %s", name, err)
                continue
            yield from metrics
        family = CounterMetricFamily("mamori_metrics_errors",
                                     "Scrapes that left a part out because reading it "
                                     "failed (see the log)", labels=["part"])
        for name in parts:
            family.add_metric([name], self.errors[name])
        yield family


def store_metrics(path: Path) -> Iterator[Metric]:
    """Alerts in the local store by precursor and severity, and the file's size."""
    alerts = GaugeMetricFamily("mamori_store_alerts",
                               "Alerts (aggregates) in the local store",
                               labels=["precursor", "severity"])
    occurrences = GaugeMetricFamily("mamori_store_alert_occurrences",
                                    "Occurrences the store's alerts aggregate (sum of "
                                    "their counts)", labels=["precursor", "severity"])
    db = read_only(path)
    try:
        rows = db.execute("SELECT precursor, severity, COUNT(*), COALESCE(SUM(count), 0) "
                          "FROM alerts GROUP BY precursor, severity").fetchall()
        assets = int(db.execute("SELECT COUNT(*) FROM assets").fetchone()[0])
    finally:
        db.close()
    for precursor, severity, n, total in rows:
        try:
            label = Severity(int(severity)).label
        except ValueError:
            label = str(severity)
        alerts.add_metric([str(precursor), label], int(n))
        occurrences.add_metric([str(precursor), label], int(total))
    yield alerts
    yield occurrences
    yield gauge("mamori_store_assets", "Assets in the local store's inventory", assets)
    yield gauge("mamori_store_bytes", "Size of the local store on disk (file and WAL)",
                file_bytes(path))


class SensorMetrics:
    """The custom collector of ``mamori run`` (``sensor`` None: the store alone, for
    stand-alone ``mamori web``)."""

    def __init__(self, sensor: Any, store: Path, events: EventKinds | None = None) -> None:
        self.sensor = sensor
        self.store = store
        self.events = events
        self._errors = PartErrors()

    def collect(self) -> Iterator[Metric]:
        parts: dict[str, Part] = {"store": lambda: store_metrics(self.store)}
        if self.sensor is not None:
            parts = {"capture": self._capture, "pipeline": self._pipeline,
                     "detection": self._detection, "outputs": self._outputs,
                     "forwarding": self._forwarding, **parts}
        yield from self._errors.run(parts)

    def _capture(self) -> Iterator[Metric]:
        s = self.sensor
        yield gauge("mamori_uptime_seconds", "Seconds since the daemon started",
                    round(time.time() - s.started, 3))
        names = ["interface"]
        frames = CounterMetricFamily("mamori_capture_frames",
                                     "Frames read from the capture ring", labels=names)
        size = CounterMetricFamily("mamori_capture_bytes",
                                   "Bytes of the frames read from the capture ring",
                                   labels=names)
        received = CounterMetricFamily(
            "mamori_capture_kernel_received", "Frames the kernel queued for the sensor, as "
            "of the last [health] stats_interval read", labels=names)
        dropped = CounterMetricFamily(
            "mamori_capture_kernel_dropped", "Frames the kernel dropped because the ring "
            "was full (S1), as of the last stats_interval read", labels=names)
        frozen = CounterMetricFamily(
            "mamori_capture_kernel_freezes", "Times the kernel ring filled up, as of the "
            "last stats_interval read", labels=names)
        last = GaugeMetricFamily("mamori_capture_last_frame_timestamp_seconds",
                                 "When the last frame arrived (packet time)", labels=names)
        silent = GaugeMetricFamily("mamori_capture_silent",
                                   "1 while S3 (no traffic for silence_alert) holds",
                                   labels=names)
        for h in list(s.health.values()):
            stats = h.stats
            frames.add_metric([h.name], h.frames)
            size.add_metric([h.name], getattr(h, "bytes", 0))
            received.add_metric([h.name], stats.received if stats is not None else 0)
            dropped.add_metric([h.name], h.dropped)
            frozen.add_metric([h.name], stats.frozen if stats is not None else 0)
            last.add_metric([h.name], h.last_frame)
            silent.add_metric([h.name], 1 if h.silent else 0)
        yield from (frames, size, received, dropped, frozen, last, silent)

    def _pipeline(self) -> Iterator[Metric]:
        p = self.sensor.pipeline
        st = p.stats
        yield counter("mamori_packets", "Frames through the pipeline (all interfaces)",
                      st.packets)
        yield counter("mamori_packet_bytes", "Bytes through the pipeline (all interfaces)",
                      st.bytes)
        yield counter("mamori_packets_ignored", "IP packets on no configured port",
                      st.ignored)
        yield counter("mamori_packets_not_ip", "Frames that are not IP (ARP, LLDP, ...)",
                      st.not_ip)
        yield by_label("mamori_decode_problems",
                       "Frames whose L2-L4 headers did not decode, by problem", "problem",
                       dict(st.problems))
        yield gauge("mamori_flows", "Flows in the flow table now", p.active_flows)
        yield counter("mamori_flows_created", "Flows created", st.flows_created)
        yield counter("mamori_flows_expired", "Flows expired (idle or ended)",
                      st.flows_expired)
        yield counter("mamori_flows_evicted", "Flows evicted from a full flow table",
                      st.flows_evicted)
        if self.events is not None:
            yield by_label("mamori_events", "Protocol events by kind (class)", "kind",
                           self.events.snapshot())

    def _detection(self) -> Iterator[Metric]:
        detector = self.sensor.session.detector
        if detector is None:
            return
        st = detector.stats
        yield counter("mamori_detection_events", "Events the detector processed", st.events)
        yield counter("mamori_detection_rule_hits", "Rule matches", st.hits)
        yield counter("mamori_detection_alerts", "Alert aggregates opened by the detector",
                      st.alerts)
        yield counter("mamori_detection_storm_folded",
                      "Occurrences folded into storm aggregates", st.storm_folded)
        yield by_label("mamori_detection_derived",
                       "Derived findings by kind (sequences, link layer)", "kind",
                       dict(st.derived))
        yield by_label("mamori_detection_state_evicted",
                       "Entries a full detection table forgot (its cap bit)", "table",
                       dict(st.evicted))

    def _outputs(self) -> Iterator[Metric]:
        outputs = self.sensor.outputs
        if outputs is None:
            return
        state = outputs.status()
        yield gauge("mamori_store_full", "1 while the store refuses writes (disk full, S4)",
                    1 if state["store_full"] else 0)
        yield counter("mamori_alerts_unstored", "Alert writes the store refused (held or "
                      "dropped)", int(state["unstored"]))
        yield counter("mamori_alerts_dropped", "Alerts never stored: the held queue was "
                      "full", int(state["dropped"]))
        yield gauge("mamori_alerts_held", "Alerts held in memory for the store",
                    int(state["held"]))
        if outputs.store is not None:
            yield counter("mamori_store_ids_forgotten", "Alert-to-row mappings the store "
                          "forgot at its cap (least recently written)",
                          outputs.store.ids_forgotten)

    def _forwarding(self) -> Iterator[Metric]:
        fw = self.sensor.forwarder
        if fw is None:
            return
        journal = fw.journal
        names = ["collector"]
        backlog = GaugeMetricFamily("mamori_forward_backlog_messages",
                                    "Journaled messages the collector has not acknowledged",
                                    labels=names)
        db = read_only(journal.path)
        try:
            for collector in journal.collectors:
                backlog.add_metric([collector], count_backlog(
                    db, collector, journal.takes_shared(collector)))
        finally:
            db.close()
        yield backlog
        connected = GaugeMetricFamily("mamori_forward_connected",
                                      "1 while the link to the collector is up",
                                      labels=names)
        inflight = GaugeMetricFamily("mamori_forward_inflight_messages",
                                     "Messages sent and not yet acknowledged (the window)",
                                     labels=names)
        rewinds = CounterMetricFamily("mamori_forward_rewinds",
                                      "Times sending went back to resend (go-back-N)",
                                      labels=names)
        for link in fw.link_state():
            connected.add_metric([link["collector"]], 1 if link["connected"] else 0)
            inflight.add_metric([link["collector"]], link["inflight"])
            rewinds.add_metric([link["collector"]], link["rewinds"])
        yield from (connected, inflight, rewinds)
        yield gauge("mamori_forward_journal_bytes", "Size of the forwarding journal on disk "
                    "(file and WAL)", file_bytes(journal.path))
        yield by_label("mamori_forward_unjournaled",
                       "Writes the journal could not make (disk full), by what", "what",
                       dict(fw.unjournaled))


def sensor_collectors(sensor: Any, store: Path) -> list[Any]:
    """What the daemon's registry serves: its counters, and the event kinds when the
    daemon counts them (``sensor.event_kinds``, set by build_sensor)."""
    return [SensorMetrics(sensor, store, getattr(sensor, "event_kinds", None))]

