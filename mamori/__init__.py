"""Mamori, a passive sensor for Modbus/TCP and DNP3 networks.

The source tree keeps ``parsers/`` (pure sans-IO protocol code), ``sensor/`` (everything
with I/O, time and processes) and ``rules/`` (declarative rule packs) at its top; they
install as ``mamori.parsers``, ``mamori.sensor`` and ``mamori.rules`` (setup.py's
package-dir mapping), so site-packages gets one ``mamori`` and no generic ``sensor`` or
``parsers``. In a checkout, this folder's three links give the same names without an
install (``PYTHONPATH`` set to the checkout, as the tests' subprocesses do).
"""
