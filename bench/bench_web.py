"""Web page benchmark: time to first render of the alerts page with 100k alerts stored.

Fills a store with ALERTS alerts (mixed severities, precursors and peers), starts
``mamori web`` on a free loopback port, then measures:

* server time: GET /alerts (first page, a deep page, filtered pages) over HTTP with
  the bearer token, median and max of REPEAT requests;
* browser time to first render: Debian's chromium (Playwright, headless) loads
  /alerts with a login session; we report the Navigation Timing response end,
  first contentful paint and load event, median of REPEAT loads.

    .venv/bin/python bench/bench_web.py [--alerts 100000] [--repeat 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from mamori.parsers.alerts import Alert, Severity  # noqa: E402
from mamori.sensor.alerting.store import Store  # noqa: E402
from mamori.sensor.web.auth import create_token_file  # noqa: E402
from tests.web.conftest import WebProcess  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
PRECURSORS = ["M1", "M2", "M3", "M5", "M7", "M14", "D1", "D3", "D7", "B1", "S2"]


def fill(store: Path, n: int) -> float:
    start = time.perf_counter()
    now = time.time()
    with Store(store, max_bytes=1 << 40) as db:
        db.save_alerts(
            Alert(rule=f"bench.rule{i % 40}", precursor=PRECURSORS[i % len(PRECURSORS)],
                  severity=Severity(i % 5), attack=("T0814", "T0804"),
                  title=f"bench alert {i}", proto="modbus", first_ts=now - (n - i),
                  last_ts=now - (n - i), count=1 + i % 7, src=f"10.0.{i % 50}.{i % 200}",
                  sport=40000 + i % 1000, dst=f"10.1.0.{i % 30}", dport=502, unit=i % 4,
                  evidence={"fc": 8, "sub": 4})
            for i in range(n))
    return time.perf_counter() - start


def http_times(url: str, token: str, path: str, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        req = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {token}"})
        start = time.perf_counter()
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()
            assert resp.status == 200
        out.append((time.perf_counter() - start) * 1000)
    return out


def browser_times(url: str, token: str, repeat: int, profile: Path) -> dict[str, list[float]]:
    from playwright.sync_api import sync_playwright

    got: dict[str, list[float]] = {"response_end": [], "first_contentful_paint": [],
                                   "load_event": []}
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = ctx.new_page()
        page.goto(f"{url}/login")
        page.fill("#operator", "bench")
        page.fill("#token", token)
        page.click("#login")
        page.wait_for_url(f"{url}/alerts")
        for _ in range(repeat):
            page.goto(f"{url}/alerts", wait_until="load")
            timing = json.loads(page.evaluate(
                "JSON.stringify({nav: performance.getEntriesByType('navigation')[0],"
                " paint: performance.getEntriesByName('first-contentful-paint')[0]})"))
            got["response_end"].append(timing["nav"]["responseEnd"])
            got["load_event"].append(timing["nav"]["loadEventEnd"])
            if timing.get("paint"):
                got["first_contentful_paint"].append(timing["paint"]["startTime"])
        ctx.close()
    return got


def _fmt(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"median {statistics.median(values):7.1f} ms   max {max(values):7.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--alerts", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store, token_file = Path(tmp) / "mamori.db", Path(tmp) / "token"
        create_token_file(token_file)
        token = token_file.read_text().strip()
        print(f"filling store: {args.alerts} alerts in {fill(store, args.alerts):.1f} s "
              f"({store.stat().st_size / 1e6:.0f} MB)")
        server = WebProcess(store, token_file)
        try:
            http_times(server.url, token, "/alerts", 2)  # warm up
            for label, path in [
                ("first page", "/alerts"),
                ("deep page (before=500)", "/alerts?before=500"),
                ("severity>=high", "/alerts?severity=high"),
                ("precursor=D7", "/alerts?precursor=D7"),
                ("asset=10.1.0.7", "/alerts?asset=10.1.0.7"),
                ("since=1h, open", "/alerts?since=1h&state=open"),
                ("live poll (api)", f"/api/alerts?after={args.alerts - 5}"),
            ]:
                times = http_times(server.url, token, path, args.repeat)
                print(f"server  {label:<24} {_fmt(times)}")
            if Path(CHROMIUM).exists():
                for label, values in browser_times(server.url, token, args.repeat,
                                                   Path(tmp) / "profile").items():
                    print(f"browser {label:<24} {_fmt(values)}")
            else:
                print("browser: no /usr/bin/chromium (apt-get install chromium)")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
