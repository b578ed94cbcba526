"""The benchmarks: scripts run by path (``python bench/bench_replay.py modbus``).

A package so its modules have one name each, ``bench.NAME``: the scripts import one another
that way (``from bench.ingest_sim import frame``, with the project root on ``sys.path``), and
mypy checks them under those names beside ``tests`` and ``mamori``.
"""
