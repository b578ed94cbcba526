"""The Starlette application: routes, login, security headers.

Why Starlette + Jinja2 (+ uvicorn to serve): Starlette is a small ASGI toolkit
(routing, forms, static files, a test client) with one runtime dependency (anyio);
Jinja2 autoescapes every template value, which matters when rule titles, identity
strings and peer addresses come off the wire. The map is SVG rendered here, and the
only JavaScript is static files of our own (live updates, map zoom): nothing is
fetched from a CDN, and the CSP allows nothing but this origin.

Every page needs a login session (cookie) or, for GET, ``Authorization: Bearer``.
The only state-changing request is acknowledging an alert: POST, session only, with
the session's CSRF token and a same-origin check.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mamori.parsers.alerts import Severity
from mamori.sensor.timefmt import parse_time
from mamori.sensor.web.assetview import MAX_ASSET_KEY, asset_view
from mamori.sensor.web.attack import attack_name
from mamori.sensor.web.audit import AuditError, OperatorAudit
from mamori.sensor.web.auth import SESSION_COOKIE, Authenticator, Session, valid_operator
from mamori.sensor.web.commap import MAP_CHOICES, MapFilter, map_for, parse_map_filter
from mamori.sensor.web.data import AlertFilter, AlertRow, StoreReader
from mamori.sensor.web.downloads import alerts_csv, assets_csv
from mamori.sensor.web.evidence import evidence_rows
from mamori.sensor.web.fcclass import classify
from mamori.sensor.web.health import HealthSource
from mamori.sensor.web.limits import BadParameter, RequestLimits, parse_id, query_id
from mamori.sensor.web.pcaps import pcap_response, read_pcap
from mamori.sensor.web.timeline import Timeline
from mamori.sensor.web.timeline import render_svg as timeline_render
from mamori.sensor.web.timeline import window as timeline_window
from mamori.sensor.web.vulnerable import VulnerableView

HERE = Path(__file__).parent

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), usb=(), serial=()"),
]


class SecurityHeaders:
    """Adds the security headers to every response; ``no-store`` except static files."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", [])
                           if h[0].lower() != b"cache-control" or not static]
                headers += SECURITY_HEADERS
                headers.append((b"cache-control",
                                b"max-age=3600" if static else b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, wrapped)


@dataclass
class WebContext:
    """What the views need; built once by :func:`create_app`."""

    reader: StoreReader
    auth: Authenticator
    audit: OperatorAudit | None
    health: HealthSource
    sensor_name: str = "mamori"
    page_size: int = 50
    guidance: dict[str, str] = field(default_factory=dict)  # rule id -> operator guidance
    ack_problem: str | None = None
    vulnerable: VulnerableView | None = None  # CSAF matches of the assets (issue 18)
    # /metrics: the Prometheus text and its content type (mamori.sensor.metrics); no login
    metrics: Callable[[], tuple[bytes, str]] | None = None
    pcap_dir: Path | None = None  # where alert pcaps are (issue 20); None: not served


def _ts(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(float(value), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def asset_url(ip: str) -> str:
    """The asset page of ``ip`` (IPv6 colons and a pseudonym's too, percent-encoded)."""
    return f"/assets/{quote(str(ip), safe='')}"


def _environment() -> jinja2.Environment:
    # auto_reload off: a compiled template is never checked against its file again, so
    # the page keeps working once ``mamori run`` dropped privileges and cannot read its
    # own installation (a venv under a private home directory, issue 19).
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             auto_reload=False)
    env.filters["ts"] = _ts
    env.globals["asset_url"] = asset_url
    env.globals["attack_name"] = attack_name
    env.globals["severities"] = [s.label for s in Severity]
    return env


@dataclass(frozen=True, slots=True)
class StaticAsset:
    body: bytes
    media_type: str
    etag: str


STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}


def static_assets() -> dict[str, StaticAsset]:
    """The page's CSS and JavaScript, read once at start (a few KiB): served from
    memory, so no file is opened after the daemon dropped privileges."""
    out: dict[str, StaticAsset] = {}
    for path in sorted((HERE / "static").iterdir()):
        if path.suffix in STATIC_TYPES:
            body = path.read_bytes()
            out[path.name] = StaticAsset(body, STATIC_TYPES[path.suffix],
                                         f'"{hashlib.sha256(body).hexdigest()[:32]}"')
    return out


def parse_filter(params: Any, now: float | None = None, *, fold_health: bool = False
                 ) -> tuple[AlertFilter, dict[str, str], list[str]]:
    """The filter from query parameters, the raw values to echo, and problems to show.

    ``health=hide`` folds the low-severity sensor-health alerts, ``health=show`` shows
    them; without it ``fold_health`` decides (the alert list folds them, the API and
    the CSV keep every alert, as scripts expect). A precursor filter that names a
    health precursor (``S2``) always shows them: that is what was asked for.
    """
    now = time.time() if now is None else now
    raw = {k: str(params.get(k, "")).strip()[:100]
           for k in ("severity", "precursor", "since", "until", "asset", "state", "health")}
    problems: list[str] = []
    severity = None
    if raw["severity"]:
        try:
            severity = Severity.parse(raw["severity"])
        except ValueError as err:
            problems.append(str(err))
    times: dict[str, float | None] = {}
    for key in ("since", "until"):
        try:
            times[key] = parse_time(raw[key], now)
        except ValueError as err:
            problems.append(f"{key}: {err}")
            times[key] = None
    state = raw["state"] if raw["state"] in ("open", "acked") else None
    if raw["health"] not in ("", "hide", "show"):
        problems.append(f"health: {raw['health']!r} is not hide or show")
        raw["health"] = ""
    hide = raw["health"] == "hide" or (fold_health and raw["health"] != "show")
    if raw["precursor"].startswith("S"):
        hide = False
    filt = AlertFilter(min_severity=severity, precursor=raw["precursor"] or None,
                       since=times["since"], until=times["until"],
                       asset=raw["asset"] or None, state=state, hide_health=hide)
    return filt, raw, problems


def _alert_json(row: AlertRow) -> dict[str, Any]:
    a = row.alert
    return {"id": a.id, "severity": a.severity.label, "precursor": a.precursor,
            "title": a.title, "proto": a.proto, "src": _peer(a.src, a.sport),
            "dst": _peer(a.dst, a.dport), "count": a.count, "last_seen": _ts(a.last_ts),
            "open": row.open, "url": f"/alerts/{a.id}",
            "src_url": asset_url(a.src) if a.src else None,
            "dst_url": asset_url(a.dst) if a.dst else None}


def _peer(ip: str | None, port: int | None) -> str:
    if ip is None:
        return ""
    return f"{ip}:{port}" if port is not None else ip


Handler = Callable[[Request, "Auth"], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Auth:
    """Who made the request: a session (browser) or the bearer token (scripts)."""

    session: Session | None

    @property
    def operator(self) -> str:
        return self.session.operator if self.session else "bearer token"


def create_app(ctx: WebContext) -> Starlette:
    """The ASGI app over ``ctx``; the caller serves it (uvicorn, or a test client)."""
    env = _environment()
    for name in env.list_templates(filter_func=lambda n: n.endswith(".html")):
        env.get_template(name)  # compiled now: no file read on a request, errors at start
    statics = static_assets()

    async def static_file(request: Request) -> Response:
        asset = statics.get(request.path_params["name"])
        if asset is None:
            return Response("Not Found", status_code=404, media_type="text/plain")
        if request.headers.get("if-none-match") == asset.etag:
            return Response(status_code=304, headers={"etag": asset.etag})
        return Response(asset.body, media_type=asset.media_type,
                        headers={"etag": asset.etag, "cache-control": "no-cache"})

    def render(request: Request, auth: Auth | None, name: str, status: int = 200,
               **values: Any) -> HTMLResponse:
        template = env.get_template(name)
        html = template.render(
            sensor_name=ctx.sensor_name, path=request.url.path,
            operator=auth.operator if auth else None,
            csrf=auth.session.csrf if auth and auth.session else "", **values)
        return HTMLResponse(html, status_code=status)

    def authenticate(request: Request) -> Auth | None:
        session = ctx.auth.session(request.cookies.get(SESSION_COOKIE))
        if session is not None:
            return Auth(session)
        if request.method == "GET" and ctx.auth.bearer_ok(request.headers.get("authorization")):
            return Auth(None)
        return None

    def protected(handler: Handler, api: bool = False) -> Callable[[Request],
                                                                   Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            auth = authenticate(request)
            if auth is None:
                if api or request.method != "GET":
                    return JSONResponse({"error": "login required"}, status_code=401,
                                        headers={"www-authenticate": "Bearer"})
                return RedirectResponse("/login", status_code=303)
            return await handler(request, auth)
        return endpoint

    def same_origin(request: Request) -> bool:
        """A POST from our own pages. Browsers say so in Sec-Fetch-Site; with
        ``Referrer-Policy: no-referrer`` their Origin is "null", so that is the fallback."""
        site = request.headers.get("sec-fetch-site")
        if site is not None:
            return site in ("same-origin", "none")
        origin = request.headers.get("origin")
        if origin is None or origin == "null":
            return True  # not a browser (tests, curl); the CSRF token still applies
        return origin == f"{request.url.scheme}://{request.headers.get('host', '')}"

    # -- login --------------------------------------------------------------------------

    async def login_form(request: Request) -> Response:
        return render(request, None, "login.html", error=None)

    async def login(request: Request) -> Response:
        form = await _form(request)
        operator = valid_operator(str(form.get("operator", "")))
        token = str(form.get("token", ""))
        cross = not same_origin(request)
        sid = ctx.auth.login(operator, token) if operator and not cross else None
        if sid is None:
            await asyncio.sleep(1.0)  # slows guessing; the token has 256 bits anyway
            error = ("Cross-site login refused." if cross else
                     "Enter your name (up to 64 characters)." if operator is None
                     else "Wrong token.")
            return render(request, None, "login.html", status=401, error=error)
        response = RedirectResponse("/alerts", status_code=303)
        response.set_cookie(SESSION_COOKIE, sid, max_age=int(ctx.auth.lifetime),
                            httponly=True, samesite="strict", path="/",
                            secure=request.url.scheme == "https")
        return response

    async def logout(request: Request, auth: Auth) -> Response:
        form = await _form(request)
        if auth.session is None or str(form.get("csrf", "")) != auth.session.csrf:
            return JSONResponse({"error": "bad form"}, status_code=403)
        ctx.auth.logout(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # -- alerts -------------------------------------------------------------------------

    def timeline_svg(filt: AlertFilter) -> tuple[Timeline, str]:
        win = timeline_window(ctx.reader.newest_first_ts(filt), filt.since, filt.until,
                              time.time())
        tl = Timeline.from_rows(win, ctx.reader.hourly(filt, win.start, win.hours))
        return tl, timeline_render(tl)  # every text in it escaped there

    async def alerts(request: Request, auth: Auth) -> Response:
        filt, raw, problems = parse_filter(request.query_params, fold_health=True)
        status = 200
        try:
            before = query_id(request.query_params, "before")
        except BadParameter as err:  # the page still shows, saying what was wrong
            before, status = None, 400
            problems.append(str(err))
        rows, more = ctx.reader.alert_page(filt, before, ctx.page_size)
        query = urlencode({k: v for k, v in raw.items() if v})
        # what the live poll asks for: the list as shown, fold included (the CSV link
        # carries the explicit filters only: a download keeps every alert unless asked)
        shown = {**{k: v for k, v in raw.items() if v},
                 **({"health": "hide"} if filt.hide_health else {})}
        newest = ctx.reader.max_id()
        hidden = ctx.reader.health_hidden(filt)
        show_health = urlencode({**{k: v for k, v in raw.items() if v}, "health": "show"})
        tl, svg = timeline_svg(filt)
        return render(request, auth, "alerts.html", status=status, rows=rows, more=more,
                      raw=raw, problems=problems, query=query, list_query=urlencode(shown),
                      before=before, after=max([newest, *(r.alert.id for r in rows)]),
                      precursors=ctx.reader.precursors(), counts=ctx.reader.counts(),
                      health_hidden=hidden, show_health=show_health, timeline=tl,
                      timeline_svg=svg)

    async def alert_detail(request: Request, auth: Auth) -> Response:
        alert_id = _path_id(request)
        row = None if alert_id is None else ctx.reader.alert(alert_id)
        if row is None:
            return render(request, auth, "missing.html", status=404,
                          what=f"alert {str(request.path_params['alert_id'])[:40]}")
        return render(request, auth, "alert.html", row=row, a=row.alert,
                      guidance=ctx.guidance.get(row.alert.rule, ""),
                      acks=ctx.reader.acks(row.alert.id), ack_problem=ctx.ack_problem,
                      evidence=evidence_rows(row.alert.proto, row.alert.evidence),
                      pcap=ctx.pcap_dir is not None and ctx.reader.pcap(row.alert.id) is not None)

    async def alert_pcap(request: Request, auth: Auth) -> Response:
        alert_id = _path_id(request)
        found = (f"alert {str(request.path_params['alert_id'])[:40]}" if alert_id is None
                 else await run_in_threadpool(read_pcap, ctx.reader, ctx.pcap_dir, alert_id))
        if isinstance(found, str):
            return render(request, auth, "missing.html", status=404, what=found)
        assert alert_id is not None
        return pcap_response(found, alert_id)

    async def acknowledge(request: Request, auth: Auth) -> Response:
        form = await _form(request)
        if (auth.session is None or not same_origin(request)
                or str(form.get("csrf", "")) != auth.session.csrf):
            return JSONResponse({"error": "bad form (CSRF)"}, status_code=403)
        alert_id = _path_id(request)
        if alert_id is None:
            return JSONResponse({"error": "no such alert"}, status_code=404)
        if ctx.audit is None:
            return JSONResponse({"error": ctx.ack_problem or "read-only"}, status_code=409)
        try:
            ctx.audit.ack(alert_id, auth.session.operator,
                          request.client.host if request.client else None)
        except AuditError as err:
            return JSONResponse({"error": str(err)}, status_code=409)
        return RedirectResponse(f"/alerts/{alert_id}", status_code=303)

    async def api_alerts(request: Request, auth: Auth) -> Response:
        filt, _, problems = parse_filter(request.query_params)
        if problems:
            return JSONResponse({"error": "; ".join(problems)}, status_code=400)
        try:
            after = query_id(request.query_params, "after") or 0
        except BadParameter as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        rows = ctx.reader.alerts_after(filt, after)
        return JSONResponse({"alerts": [_alert_json(r) for r in rows],
                             "counts": ctx.reader.counts()})

    async def alerts_download(request: Request, auth: Auth) -> Response:
        filt, _, problems = parse_filter(request.query_params)
        if problems:
            return JSONResponse({"error": "; ".join(problems)}, status_code=400)
        return alerts_csv(ctx.reader, filt)

    async def assets_download(request: Request, auth: Auth) -> Response:
        return assets_csv(ctx.reader)

    # -- inventory and map --------------------------------------------------------------

    async def assets(request: Request, auth: Auth) -> Response:
        pairs = ctx.reader.pairs()
        functions: dict[str, set[str]] = {}
        for p in pairs:
            for ip in (p["client"], p["server"]):
                functions.setdefault(ip, set()).update(
                    f"{p['proto']} {f}" for f in p.get("functions", ()))
        for p in pairs:
            p["classes"] = classify(str(p["proto"]), p.get("functions", ()))
        assets = ctx.reader.assets()
        view = ctx.vulnerable
        devices = await run_in_threadpool(view.devices, assets) if view is not None else []
        return render(request, auth, "assets.html", assets=assets, pairs=pairs,
                      functions={ip: sorted(fs, key=_fc_sort) for ip, fs in functions.items()},
                      vulnerable=devices, vulnerable_ips={d.ip for d in devices},
                      advisory_problem=view.problem if view is not None else None)

    async def asset_page(request: Request, auth: Auth) -> Response:
        ip = str(request.path_params["ip"])
        doc = ctx.reader.asset(ip) if len(ip) <= MAX_ASSET_KEY else None
        if doc is None:
            return render(request, auth, "missing.html", status=404,
                          what=f"asset {ip[:MAX_ASSET_KEY]}")
        view = asset_view(doc, ctx.reader.asset_pairs(ip), ctx.reader.baseline())
        filt = AlertFilter(asset=ip)
        rows, more = ctx.reader.alert_page(filt, None, ctx.page_size)
        tl, svg = timeline_svg(filt)
        vulnerable = ctx.vulnerable
        devices = (await run_in_threadpool(vulnerable.devices, [doc])
                   if vulnerable is not None else [])
        return render(request, auth, "asset.html", x=doc, v=view, rows=rows, more=more,
                      alerts_query=urlencode({"asset": ip}), timeline=tl, timeline_svg=svg,
                      vulnerable=devices)

    def map_svg(filt: MapFilter, frozen_at: float | None, page: bool
                ) -> tuple[str, int, int]:
        counted = AlertFilter(min_severity=filt.min_severity, since=filt.since(time.time()))
        return map_for(ctx.reader.assets(), ctx.reader.pairs(),
                       ctx.reader.open_peers(counted), frozen_at, filt, page)

    async def map_page(request: Request, auth: Auth) -> Response:
        filt, problems = parse_map_filter(request.query_params)
        frozen_at = ctx.reader.baseline_frozen_at()
        svg, matched, drawn = await run_in_threadpool(map_svg, filt, frozen_at, True)
        return render(request, auth, "map.html", status=400 if problems else 200, svg=svg,
                      filt=filt, problems=problems, matched=matched, drawn=drawn,
                      query=urlencode(filt.query()), choices=MAP_CHOICES,
                      frozen=frozen_at is not None)

    async def map_image(request: Request, auth: Auth) -> Response:
        filt, problems = parse_map_filter(request.query_params)
        if problems:
            return JSONResponse({"error": "; ".join(problems)}, status_code=400)
        svg, _, _ = await run_in_threadpool(map_svg, filt, ctx.reader.baseline_frozen_at(),
                                            False)
        return Response(svg, media_type="image/svg+xml")

    # -- health -------------------------------------------------------------------------

    async def health(request: Request, auth: Auth) -> Response:
        return render(request, auth, "health.html", h=ctx.health())

    async def api_health(request: Request, auth: Auth) -> Response:
        return JSONResponse(ctx.health())

    async def root(request: Request, auth: Auth) -> Response:
        return RedirectResponse("/alerts", status_code=303)

    routes = [
        Route("/", protected(root)),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", protected(logout), methods=["POST"]),
        Route("/alerts", protected(alerts)),
        # Not {alert_id:int}: its int() of 5000 digits raises (a 500); see _path_id.
        Route("/alerts/{alert_id}", protected(alert_detail)),
        Route("/alerts/{alert_id}/ack", protected(acknowledge), methods=["POST"]),
        Route("/alerts/{alert_id}/pcap", protected(alert_pcap)),
        Route("/assets", protected(assets)),
        Route("/assets/{ip}", protected(asset_page)),
        Route("/alerts.csv", protected(alerts_download)),
        Route("/assets.csv", protected(assets_download)),
        Route("/map", protected(map_page)),
        Route("/map.svg", protected(map_image)),
        Route("/health", protected(health)),
        Route("/api/alerts", protected(api_alerts, api=True)),
        Route("/api/health", protected(api_health, api=True)),
        Route("/static/{name}", static_file),
    ]
    if ctx.metrics is not None:  # counters only, for a scraper: no session, no token
        metrics = ctx.metrics

        async def metrics_text(request: Request) -> Response:
            body, media_type = await run_in_threadpool(metrics)
            return Response(body, media_type=media_type)
        routes.append(Route("/metrics", metrics_text, methods=["GET"]))
    app = Starlette(routes=routes)
    # add_middleware puts the newest outermost: the limits' refusals get the headers too.
    app.add_middleware(RequestLimits)
    app.add_middleware(SecurityHeaders)
    return app


MAX_FORM_BYTES = 4096


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form (all ours are small), without python-multipart."""
    if request.headers.get("content-type", "").split(";")[0].strip() != \
            "application/x-www-form-urlencoded":
        return {}
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return {}
    return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}


def _path_id(request: Request) -> int | None:
    """The ``{alert_id}`` of the path; None (so 404) past SQLite's 64-bit INTEGER.

    Anything but ASCII digits is no alert id either (also 404, as before).
    """
    return parse_id(str(request.path_params["alert_id"]))


def _fc_sort(label: str) -> tuple[str, int, str]:
    proto, _, fc = label.partition(" ")
    head = fc.split("/", 1)[0]
    return (proto, int(head) if head.isdigit() else 999, fc)

