"""The Prometheus text endpoint of the sensor (``mamori run``) and the collector.

``settings`` declares the ``[metrics]`` keys (no prometheus_client import);
``server`` checks the address and serves ``/metrics`` in its own thread;
``sensor_metrics`` and ``collector_metrics`` are the custom collectors that read the
live counters at scrape time. The metric list is in ``docs/metrics.md``.
"""
