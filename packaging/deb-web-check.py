#!/usr/bin/python3
"""The installed package's web page on Debian's own python3-uvicorn and python3-starlette.

Run by deb-test.sh inside the chroot, as user mamori, with a capture to replay
(``web-check.py CAPTURE``): replays it into a fresh store, starts ``mamori web`` on a
free loopback port over that store, checks that it serves
and refuses what it must (issue 12: 404/400 for ids past SQLite's INTEGER, 414 for a
1 MB query string, 431 for too many headers), and that SIGTERM stops it. Prints one
line per check; exits 1 if any failed.
"""

from __future__ import annotations

import http.client
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

HUGE = "99999999999999999999999"


def raw(port: int, data: bytes) -> int | str:
    """Send ``data`` whole, read until the server closes; the answer's status."""
    answer = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
            sock.sendall(data)
            while chunk := sock.recv(65536):
                answer += chunk
    except OSError as err:
        return f"{err} after {len(answer)} bytes of answer"
    found = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
    return int(found.group(1)) if found else f"no HTTP answer: {answer[:80]!r}"


def get(port: int, path: str, token: str) -> int | str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException) as err:
        return f"{type(err).__name__}: {err}"
    finally:
        conn.close()


def main() -> int:
    import starlette
    import uvicorn

    print(f"     starlette {starlette.__version__}, uvicorn {uvicorn.__version__}")
    tmp = Path(tempfile.mkdtemp(prefix="mamori-web-check-"))
    token_file, store = tmp / "token", tmp / "mamori.db"
    subprocess.run(["mamori", "replay", "--no-progress", "--store", str(store), sys.argv[1]],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["mamori", "web", "token", "--token-file", str(token_file)],
                   check=True, stdout=subprocess.DEVNULL)
    token = token_file.read_text().strip()
    proc = subprocess.Popen(["mamori", "web", "--port", "0", "--store", str(store),
                             "--token-file", str(token_file)], stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    said = []
    port = 0
    for line in proc.stderr:
        said.append(line)
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if found:
            port = int(found.group(1))
            break
    if not port:
        proc.wait()
        print("FAIL mamori web did not start:\n" + "".join(said[-15:]))
        return 1
    headers = "".join(f"X-Filler-{i}: {i}\r\n" for i in range(200))
    checks = [
        ("GET /api/health", get(port, "/api/health", token), 200),
        ("GET /alerts", get(port, "/alerts", token), 200),
        (f"GET /alerts/{HUGE}", get(port, f"/alerts/{HUGE}", token), 404),
        (f"GET /alerts?before={HUGE}", get(port, f"/alerts?before={HUGE}", token), 400),
        (f"GET /api/alerts?after={HUGE}", get(port, f"/api/alerts?after={HUGE}", token), 400),
        ("a 1 MB query string",
         raw(port, b"GET /alerts?asset=" + b"A" * 1_000_000 + b" HTTP/1.1\r\n\r\n"), 414),
        ("200 headers", raw(port, f"GET /alerts HTTP/1.1\r\n{headers}\r\n".encode()), 431),
    ]
    proc.terminate()
    try:
        rc = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = None
    log = proc.stderr.read()
    checks.append(("SIGTERM stops it within 10 s", rc, 0))
    failed = False
    for what, got, want in checks:
        print(f"     {'ok  ' if got == want else 'FAIL'} {what}: {got} (want {want})")
        failed |= got != want
    if "Traceback" in log:
        print("     FAIL the server logged a traceback:")
        failed = True
    if failed:
        print("".join(said) + log[-3000:])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
